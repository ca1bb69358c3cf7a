"""`splitpin config validate` accepts the shipped file and names the field of a broken one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from splitpin.settings import REPO_ROOT


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
