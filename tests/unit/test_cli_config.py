"""`splitpin config validate` accepts the shipped file and names the field of a broken one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from splitpin.core.settings import REPO_ROOT


def _validate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "splitpin", "config", "validate", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_shipped_config_is_accepted() -> None:
    result = _validate(str(REPO_ROOT / "config" / "governance.yaml"))
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout and "fast=claude-3-5-haiku-20241022" in result.stdout


def test_broken_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    data = yaml.safe_load((REPO_ROOT / "config" / "governance.yaml").read_text())
    data["budgets"]["tenants"]["acme-bank"]["limit_usd"] = -5
    del data["roles"]["long_context"]["version"]
    path = tmp_path / "governance.yaml"
    path.write_text(yaml.safe_dump(data))
    result = _validate(str(path))
    assert result.returncode == 2
    assert "budgets.tenants.acme-bank.limit_usd" in result.stderr


def _broken(tmp_path: Path, mutate) -> Path:  # type: ignore[no-untyped-def]
    data = yaml.safe_load((REPO_ROOT / "config" / "governance.yaml").read_text())
    mutate(data)
    path = tmp_path / "governance.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        # `run` rejected it when loading the classifier; `config validate` accepted it.
        (
            lambda d: d["routing"].update(compliance_intents=["lost_or_stolen_kard"]),
            "routing.compliance_intents: ['lost_or_stolen_kard']",
        ),
        (
            lambda d: d["roles"]["verifier"].update(context_window=9_000, max_output_tokens=8_192),
            "roles.verifier.context_window",
        ),
        (
            lambda d: d["roles"]["compliance"].update(fallback=["fast"]),
            "roles.compliance.fallback",
        ),
    ],
)
def test_validate_rejects_what_run_rejects(tmp_path: Path, mutate, field: str) -> None:  # type: ignore[no-untyped-def]
    path = _broken(tmp_path, mutate)
    result = _validate(str(path))
    assert result.returncode == 2, result.stdout
    assert field in result.stderr
    # ... and `run` refuses the same file at start-up, naming the same field.
    from splitpin.core.settings import load_settings
    from splitpin.errors import ConfigError
    from splitpin.flows.routing_flow import build_flow

    with pytest.raises(ConfigError) as excinfo:
        build_flow(load_settings(governance_path=path))
    assert field in str(excinfo.value)
