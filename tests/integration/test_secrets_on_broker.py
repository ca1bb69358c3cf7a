"""A key that ends in a newline (a mounted secret file), through the real flow on a real
broker, with the real SDK clients against the wire-protocol fake: the HTTP library refuses
the header and quotes the key, yet the key reaches no record on any topic and no log line.
`splitpin run` itself refuses such a key at start-up, naming the variable only."""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from splitpin.core.kafka.producer import CheckedProducer
from splitpin.core.kafka.reader import read_to_end
from splitpin.core.redaction import SECRETS, RedactingFilter, variants
from splitpin.core.router.classifier import Classifier
from splitpin.core.settings import REPO_ROOT, Settings
from splitpin.errors import ConfigError
from splitpin.flows.routing_flow import build_flow
from splitpin.flows.sink import CheckedKafkaSink, OutRecord
from splitpin.providers import setup as provider_setup
from splitpin.schemas import decode
from splitpin.schemas.replies import Reply
from splitpin.schemas.validation import ValidationFailure
from tests.factories import event_dict
from tests.governance_files import remote_config, save_config
from tests.model_api_server import ModelApiServer, grounded

pytestmark = pytest.mark.integration

QUESTIONS = ("my card has not arrived yet", "how do I top up by bank transfer")


@pytest.fixture
def api() -> Iterator[ModelApiServer]:
    with ModelApiServer() as server:
        server.default = grounded()
        yield server


def _remote_governance(tmp_path: Path, api: ModelApiServer) -> Path:
    """The shipped config with every role answered by the fake API, over its own SDK.
    Hedging off: racing calls that all fail open the circuit breaker sooner, and the
    failure records then say "circuit open" instead of quoting the refused header."""
    config = remote_config(api, max_in_flight=16, timeout_s=5, retry_budget=1)
    config["replies"]["hedging"]["enabled"] = False
    return save_config(config, tmp_path)


def _forms(*cores: str) -> list[bytes]:
    """Each key's core, and every escaped form of it, as bytes a record could hold."""
    return sorted({form.encode() for core in cores for form in variants(core)}, key=len)


def _everything_on(settings: Settings) -> list[tuple[str, bytes | None, bytes]]:
    return [
        (name, message.key(), message.value() or b"")
        for name, topic in settings.all_topics().items()
        for message in read_to_end(settings.bootstrap_servers, topic)
    ]


def test_a_key_with_a_trailing_newline_reaches_no_topic_and_no_log_line(
    topic_settings: Any,
    classifier: Classifier,
    tmp_path: Path,
    api: ModelApiServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    anthropic_core = f"sk-ant-api03-{secrets.token_hex(16)}"
    openai_core = f"sk-proj-{secrets.token_hex(16)}"
    monkeypatch.setenv("ANTHROPIC_API_KEY", anthropic_core + "\n")
    monkeypatch.setenv("OPENAI_API_KEY", openai_core + "\r\n")
    for name in ("ANTHROPIC_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    settings: Settings = topic_settings(governance_path=_remote_governance(tmp_path, api))
    producer = CheckedProducer(settings.bootstrap_servers)
    ids = []
    for n, (text, channel) in enumerate(
        [(QUESTIONS[0], "chat"), (QUESTIONS[1], "chat"), (QUESTIONS[0], "email")]
    ):
        event = event_dict(f"sec-{n}", f"c-sec-{n}", text=text, channel=channel, at_s=n)
        producer.produce(settings.topic("events"), orjson.dumps(event), f"c-sec-{n}".encode())
        ids.append(f"sec-{n}")
    producer.flush(15)
    # Every log line of the flow, as the CLI's root handlers would write it.
    caplog.set_level(logging.DEBUG)
    caplog.handler.addFilter(RedactingFilter())

    from bytewax.testing import run_main

    # First line of defence: the flow refuses to start, naming the variables, never a value.
    with pytest.raises(ConfigError) as refused:
        build_flow(settings, classifier=classifier, tail=False)
    assert "ANTHROPIC_API_KEY" in str(refused.value) and "OPENAI_API_KEY" in str(refused.value)
    assert anthropic_core not in str(refused.value) and openai_core not in str(refused.value)

    # The layers behind it, should a bad key get past that check: register, do not refuse.
    def register_only(env: Any, names: Any = None) -> None:
        for name in names or ():
            if env.get(name):
                SECRETS.register(env[name])

    monkeypatch.setattr(provider_setup, "check_secret_env", register_only)
    run_main(build_flow(settings, classifier=classifier, tail=False))

    records = _everything_on(settings)
    by_topic: dict[str, list[bytes]] = {}
    for name, _, value in records:
        by_topic.setdefault(name, []).append(value)
    finals = [decode(Reply, v) for v in by_topic.get("replies", [])]
    failures = [decode(ValidationFailure, v) for v in by_topic.get("validation_failures", [])]
    # Not vacuous: every call failed on the refused header and that was recorded.
    assert api.count() == 0, "the malformed header never left the client"
    assert {r.reply_id for r in finals if r.kind == "final"} == set(ids)
    quoted = [f for f in failures if "Illegal header value" in f.detail]
    assert quoted, "the header error (which quoted the key) was recorded"
    assert all("[REDACTED]" in f.detail for f in quoted)
    forms = _forms(anthropic_core, openai_core)
    for name, key, value in records:
        for form in forms:
            assert form not in value, f"{name} carries a form of the key"
            assert key is None or form not in key
    logged = "\n".join([caplog.text, *(r.getMessage() for r in caplog.records)])
    assert "Illegal header value" in logged
    for core in (anthropic_core, openai_core):
        assert core not in logged


def test_the_sink_redacts_what_reaches_it_as_a_last_line(topic_settings: Any) -> None:
    settings: Settings = topic_settings()
    key = f"sk-ant-api03-{secrets.token_hex(16)}\n"
    SECRETS.register(key)
    topic = settings.topic("validation_failures")
    detail = {"detail": f"Illegal header value {('Bearer ' + key).encode()!r}", "raw": key}
    sink = CheckedKafkaSink(
        settings.bootstrap_servers, delivery_timeout_ms=10_000, flush_timeout_s=15
    ).build("out", 0, 1)
    sink.write_batch([OutRecord(topic, b"k", orjson.dumps(detail))])
    sink.close()
    (message,) = read_to_end(settings.bootstrap_servers, topic)
    stored = orjson.loads(message.value() or b"")
    assert key.strip() not in str(stored)
    assert stored["raw"] == "[REDACTED]\n" or stored["raw"] == "[REDACTED]"


def test_run_refuses_a_key_with_a_newline_naming_the_variable_only(
    topic_settings: Any, tmp_path: Path
) -> None:
    settings: Settings = topic_settings()
    core = f"sk-proj-{secrets.token_hex(16)}"
    env = {**settings.child_env(), "OPENAI_API_KEY": core + "\n", "SPLITPIN_METRICS_PORT": "0"}
    env.pop("ANTHROPIC_API_KEY", None)
    done = subprocess.run(
        [sys.executable, "-m", "splitpin", "run", "--until-eof", "--no-recovery"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=120,
        check=False,
    )
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 2, stderr[-2000:]
    assert "OPENAI_API_KEY" in stderr
    assert core not in stderr and core not in done.stdout.decode(errors="replace")
    assert os.environ.get("OPENAI_API_KEY") != core + "\n"  # the parent was not touched
