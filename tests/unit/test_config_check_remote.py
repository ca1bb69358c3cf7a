"""`splitpin config check --remote` asks every configured endpoint, through the real SDK
clients, which models it serves, and fails when a pinned version is not among them.

The endpoints are tests/model_api_server.py fakes speaking Anthropic's and OpenAI's
`GET /v1/models`, each accepting only its own key (any other gets the API's 401).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from typer.testing import CliRunner, Result

from splitpin.app.cli import app
from splitpin.core.settings import REPO_ROOT
from splitpin.errors import ConfigError
from tests.model_api_server import ModelApiServer

HAIKU = "claude-3-5-haiku-20241022"
SONNET = "claude-3-5-sonnet-20241022"
GPT = "gpt-4.1-2025-04-14"
FLASH = "gemini-2.0-flash-lite-001"
CLAUDE_KEY = "sk-ant-api03-check-SECRET-1"
GPT_KEY = "sk-proj-check-SECRET-2"
SUMMARY_KEY = "sk-summary-check-SECRET-3"
KEYS = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "SUMMARY_KEY")

runner = CliRunner()


@pytest.fixture
def servers() -> Iterator[tuple[ModelApiServer, ModelApiServer, ModelApiServer]]:
    """Claude's endpoint, GPT's, and a second OpenAI-compatible one for the summarizer."""
    with (
        ModelApiServer(api_key=CLAUDE_KEY, served_models=(HAIKU, SONNET, "claude-x")) as claude,
        ModelApiServer(api_key=GPT_KEY, served_models=("gpt-4o", GPT)) as gpt,
        ModelApiServer(api_key=SUMMARY_KEY, served_models=(FLASH,)) as summary,
    ):
        yield claude, gpt, summary


def _config(tmp_path: Path, summary: ModelApiServer, **role_changes: dict[str, Any]) -> Path:
    source = REPO_ROOT / "config" / "governance.yaml"
    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    data["roles"]["summarizer"].update(base_url=summary.openai_url, api_key_env="SUMMARY_KEY")
    for name, changes in role_changes.items():
        data["roles"][name].update(changes)
    path = tmp_path / "governance.yaml"
    # Relative knowledge-base paths resolve against the file's folder: keep the originals.
    for entry in (data.get("knowledge") or {}).get("bases") or []:
        if isinstance(entry, dict) and "path" in entry and not Path(entry["path"]).is_absolute():
            entry["path"] = str(source.parent / entry["path"])
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _env(claude: ModelApiServer, gpt: ModelApiServer, **keys: str | None) -> dict[str, str | None]:
    env: dict[str, str | None] = {
        "ANTHROPIC_API_KEY": CLAUDE_KEY,
        "ANTHROPIC_BASE_URL": claude.anthropic_url,
        "OPENAI_API_KEY": GPT_KEY,
        "OPENAI_BASE_URL": gpt.openai_url,
        "SUMMARY_KEY": SUMMARY_KEY,
    }
    return env | keys


def _check(path: Path, env: dict[str, str | None]) -> tuple[Result, dict[str, Any]]:
    result = runner.invoke(app, ["config", "check", str(path), "--remote", "--json"], env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result, orjson.loads(result.stdout.strip().splitlines()[-1])


def _by_provider(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["provider"], e["key_variable"]): e for e in report["endpoints"]}


def test_every_pin_served_passes_and_each_endpoint_gets_its_own_key(
    tmp_path: Path, servers: tuple[ModelApiServer, ModelApiServer, ModelApiServer]
) -> None:
    claude, gpt, summary = servers
    result, report = _check(_config(tmp_path, summary), _env(claude, gpt))
    assert result.exit_code == 0, result.stdout
    assert report["ok"] is True
    endpoints = _by_provider(report)
    assert {e["status"] for e in endpoints.values()} == {"ok"}
    anthropic = endpoints["anthropic", "ANTHROPIC_API_KEY"]
    assert anthropic["pins"] == {"compliance": SONNET, "fast": HAIKU, "verifier": SONNET}
    assert anthropic["served"] == sorted([HAIKU, SONNET, "claude-x"])
    assert endpoints["openai", "OPENAI_API_KEY"]["pins"] == {"long_context": GPT}
    assert endpoints["openai", "SUMMARY_KEY"]["base_url"] == summary.openai_url
    # One listing per endpoint, through the SDKs' own wire formats, with its own key only.
    assert (claude.keys_seen, gpt.keys_seen, summary.keys_seen) == (
        [CLAUDE_KEY],
        [GPT_KEY],
        [SUMMARY_KEY],
    )
    assert all(key not in result.stdout for key in (CLAUDE_KEY, GPT_KEY, SUMMARY_KEY))


def test_a_pinned_version_the_endpoint_does_not_serve_fails(
    tmp_path: Path, servers: tuple[ModelApiServer, ModelApiServer, ModelApiServer]
) -> None:
    claude, gpt, summary = servers
    path = _config(tmp_path, summary, fast={"version": "claude-3-5-haiku-20990101"})
    result, report = _check(path, _env(claude, gpt))
    assert result.exit_code == 1
    assert report["ok"] is False
    anthropic = _by_provider(report)["anthropic", "ANTHROPIC_API_KEY"]
    assert anthropic["status"] == "missing_pins"
    assert anthropic["missing"] == {"fast": "claude-3-5-haiku-20990101"}
    assert "roles.fast" in anthropic["message"]
    # The other endpoints are still checked, and pass.
    assert _by_provider(report)["openai", "SUMMARY_KEY"]["status"] == "ok"


def test_a_role_without_its_key_is_skipped_with_a_clear_message(
    tmp_path: Path, servers: tuple[ModelApiServer, ModelApiServer, ModelApiServer]
) -> None:
    claude, gpt, summary = servers
    result, report = _check(_config(tmp_path, summary), _env(claude, gpt, SUMMARY_KEY=None))
    assert result.exit_code == 0, result.stdout
    skipped = _by_provider(report)["openai", "SUMMARY_KEY"]
    assert skipped["status"] == "skipped"
    assert "SUMMARY_KEY is not set" in skipped["message"]
    assert summary.keys_seen == []  # not asked at all


def test_a_rejected_key_is_an_error_that_never_prints_the_key(
    tmp_path: Path, servers: tuple[ModelApiServer, ModelApiServer, ModelApiServer]
) -> None:
    claude, gpt, summary = servers
    wrong = "sk-proj-wrong-SECRET-9999"
    result, report = _check(_config(tmp_path, summary), _env(claude, gpt, OPENAI_API_KEY=wrong))
    assert result.exit_code == 1
    failed = _by_provider(report)["openai", "OPENAI_API_KEY"]
    assert failed["status"] == "error"
    assert "AuthenticationError" in failed["message"] and "401" in failed["message"]
    assert wrong not in result.stdout


def test_a_key_with_a_newline_is_refused_naming_the_variable(
    tmp_path: Path, servers: tuple[ModelApiServer, ModelApiServer, ModelApiServer]
) -> None:
    claude, gpt, summary = servers
    env = _env(claude, gpt, SUMMARY_KEY=SUMMARY_KEY + "\n")
    with pytest.raises(ConfigError, match="SUMMARY_KEY") as caught:
        _check(_config(tmp_path, summary), env)
    assert SUMMARY_KEY not in str(caught.value)
    assert summary.keys_seen == []


def test_text_output_names_each_endpoint(
    tmp_path: Path, servers: tuple[ModelApiServer, ModelApiServer, ModelApiServer]
) -> None:
    claude, gpt, summary = servers
    path = _config(tmp_path, summary, long_context={"version": "gpt-9"})
    result = runner.invoke(app, ["config", "check", str(path), "--remote"], env=_env(claude, gpt))
    assert result.exit_code == 1
    assert f"openai {gpt.openai_url} (OPENAI_API_KEY): missing_pins" in result.stdout
    assert "roles.long_context pins gpt-9" in result.stdout
