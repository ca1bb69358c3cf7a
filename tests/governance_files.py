"""Governance files for tests: the shipped config as a dict, edited, written where the test
needs it. One place, so every test starts from the same shipped text and points roles at
the scripted model API (tests/model_api_server.py) the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from splitpin.core.settings import REPO_ROOT
from tests.model_api_server import ModelApiServer

SHIPPED = REPO_ROOT / "config" / "governance.yaml"


def shipped_config() -> dict[str, Any]:
    """A fresh, mutable copy of config/governance.yaml."""
    config: dict[str, Any] = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    return config


def save_config(config: dict[str, Any], folder: Path) -> Path:
    """Write `config` as `folder/governance.yaml` (relative KB paths resolve against it)."""
    path = folder / "governance.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def api_url(api: ModelApiServer, provider: str) -> str:
    """The scripted server's endpoint for a role's wire format."""
    return api.anthropic_url if provider == "anthropic" else api.openai_url


def remote_config(api: ModelApiServer, *, max_in_flight: int = 4, **role: Any) -> dict[str, Any]:
    """The shipped config with every role calling `api` in its own wire format
    (`providers.mode: remote`); `role` overrides apply to every role."""
    config = shipped_config()
    for settings in config["roles"].values():
        settings.update(base_url=api_url(api, settings["provider"]), **role)
    config["providers"].update(mode="remote", max_in_flight=max_in_flight)
    return config


def one_role_at_api(api: ModelApiServer, role: str, **overrides: Any) -> dict[str, Any]:
    """The shipped config with only `role` answered by `api` over the OpenAI wire format;
    with `providers.mode: auto` and only OPENAI_API_KEY set, the others stay local."""
    config = shipped_config()
    config["roles"][role].update(provider="openai", base_url=api.openai_url, **overrides)
    config["providers"] = {"mode": "auto"}
    return config
