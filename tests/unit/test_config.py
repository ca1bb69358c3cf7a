"""Invalid settings or governance config fail at start-up with the field named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from splitpin.core.settings import REPO_ROOT, load_settings
from splitpin.errors import ConfigError
from splitpin.schemas.governance import load_governance

SHIPPED = REPO_ROOT / "config" / "governance.yaml"


def _write(tmp_path: Path, mutate) -> Path:  # type: ignore[no-untyped-def]
    data = yaml.safe_load(SHIPPED.read_text())
    mutate(data)
    path = tmp_path / "governance.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_config_is_valid() -> None:
    config = load_governance(SHIPPED)
    assert config.routing.fast_max_tokens == 2048
    assert config.roles["fast"].version == "claude-3-5-haiku-20241022"
    assert config.roles["long_context"].model == "gpt-4.1"
    assert config.roles["compliance"].model == "claude-3-5-sonnet"


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["roles"]["fast"].update(context_window=-1), "roles.fast.context_window"),
        (lambda d: d["roles"]["fast"].pop("version"), "roles.fast.version"),
        (lambda d: d["roles"].pop("compliance"), "roles.compliance: missing"),
        (lambda d: d["routing"].update(fast_max_tokens="many"), "routing.fast_max_tokens"),
        (lambda d: d["roles"]["fast"].update(tokenizer="gpt2"), "roles.fast.tokenizer"),
        (lambda d: d["conversation"].update(session_gap_s={"chat": 60}), "email"),
        (lambda d: d["roles"]["fast"].update(max_output_tokens=10**7), "max_output_tokens"),
        (lambda d: d.update(surprise=1), "surprise"),
        # Issue 10: a window that cannot hold the maximum output plus the reserved prompt.
        (
            lambda d: d["roles"]["fast"].update(context_window=9_000, max_output_tokens=8_192),
            "roles.fast.context_window: 9000 cannot hold",
        ),
        # Issue 10: a pinned role falling back to an unpinned one.
        (
            lambda d: d["roles"]["compliance"].update(fallback=["fast"]),
            "roles.compliance.fallback: fast not in the compliance roles",
        ),
        (
            lambda d: d["routing"].update(tag_pins={"legal": "verifier"}),
            "routing.compliance_roles: lacks verifier, which routing.tag_pins.legal pins to",
        ),
        (
            lambda d: d["replies"].update(reroute_role="long_context"),
            "routing.compliance_roles: lacks long_context, which replies.reroute_role",
        ),
    ],
)
def test_broken_governance_names_the_field(tmp_path: Path, mutate, field: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as excinfo:
        load_governance(_write(tmp_path, mutate))
    assert field in str(excinfo.value)


def test_unpinned_versions_allowed_when_pins_not_required(tmp_path: Path) -> None:
    def unpin(data: dict) -> None:  # type: ignore[type-arg]
        data["require_version_pins"] = False
        data["roles"]["fast"].pop("version")

    config = load_governance(_write(tmp_path, unpin))
    assert config.roles["fast"].pinned_id == "claude-3-5-haiku"


def test_unreadable_and_non_yaml_governance(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_governance(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("roles: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_governance(bad)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLITPIN_TOPIC_PREFIX", "canary.")
    monkeypatch.setenv("SPLITPIN_TOPICS__DECISIONS", "decisions.v2")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker:29092")
    settings = load_settings()
    assert settings.bootstrap_servers == "broker:29092"
    assert settings.topic("decisions") == "canary.decisions.v2"
    assert settings.topic("events") == "canary.conversations.events"
    assert len(settings.all_topics()) == 10  # 8 of the flow, governance and its audit


def test_invalid_settings_name_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLITPIN_SNAPSHOT_INTERVAL_S", "-1")
    with pytest.raises(ConfigError, match="snapshot_interval_s"):
        load_settings()


def test_child_env_reproduces_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLITPIN_PARTITIONS", "9")  # inherited values must not leak through
    settings = load_settings(
        bootstrap_servers="broker:1",
        topic_prefix="child.",
        snapshot_interval_s=0.5,
        topics={"decisions": "decisions.v2"},
    )
    env = settings.child_env(base={"PATH": "/bin", "KAFKA_BOOTSTRAP_SERVERS": "other:2"})
    assert env["PATH"] == "/bin" and "KAFKA_BOOTSTRAP_SERVERS" not in env
    for name in [n for n in os.environ if n.startswith("SPLITPIN_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reloaded = load_settings()
    assert reloaded.model_dump(exclude={"broker"}) == settings.model_dump(exclude={"broker"})


def test_compliance_roles_default_to_the_pinned_roles(tmp_path: Path) -> None:
    def widen(data: dict) -> None:  # type: ignore[type-arg]
        data["routing"].pop("compliance_roles")
        data["routing"]["tag_pins"] = {"compliance": "compliance", "legal": "verifier"}
        data["roles"]["compliance"]["fallback"] = ["verifier"]

    config = load_governance(_write(tmp_path, widen))
    assert config.compliance_roles() == {"compliance", "verifier"}
    assert config.pinned_roles()["verifier"] == "routing.tag_pins.legal"


def test_a_window_that_holds_the_reserve_is_accepted(tmp_path: Path) -> None:
    reserve = 8_192 + 900 + 512

    def tight(data: dict) -> None:  # type: ignore[type-arg]
        data["roles"]["fast"].update(context_window=reserve + 1, max_output_tokens=8_192)

    assert load_governance(_write(tmp_path, tight)).roles["fast"].context_window == reserve + 1
