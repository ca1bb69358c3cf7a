"""A SASL-secured broker, for real: `splitpin broker start` with a SASL_PLAINTEXT (PLAIN)
listener; `topics create`, `replay` and `run` reach it with the right credentials (an event
gets its routing decision) and, with a wrong password, fail fast with a message that says
"authentication failed", names the setting and never prints the password.

A separate LocalBroker on free ports (never the session's shared broker), started and
stopped through the CLI. The clients talk only to its SASL port.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from pydantic import SecretStr

from splitpin.core.kafka.broker import LocalBroker, host_port
from splitpin.core.kafka.client_config import client_config
from splitpin.core.settings import BrokerSettings, KafkaClientSettings, Settings
from splitpin.schemas import RoutingDecision, decode
from tests.factories import T0_PAST_SKEW_S, event_dict
from tests.flow_process import running_flow
from tests.kafka_helpers import free_ports, read_until

pytestmark = pytest.mark.integration

USER = "splitpin"
PASSWORD = "right-Pass-7Qx2"
WRONG = "wrong-Pass-3Zk9"
SLOW_S = 120
"""Every wait a wrong password could hide behind (start-up check, delivery, flush) is set
to this, so failing within FAST_S proves the refusal was recognised, not timed out."""
FAST_S = 45.0


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    port, controller_port, sasl_port = free_ports(3)
    broker_settings = BrokerSettings(
        port=port,
        controller_port=controller_port,
        sasl_port=sasl_port,
        sasl_users={USER: PASSWORD},
        state_dir=tmp_path_factory.mktemp("sasl-broker"),
        start_timeout_s=SLOW_S,
    )
    env = {
        **_base_env(),
        "SPLITPIN_BROKER__PORT": str(port),
        "SPLITPIN_BROKER__CONTROLLER_PORT": str(controller_port),
        "SPLITPIN_BROKER__STATE_DIR": str(broker_settings.state_dir),
        "SPLITPIN_BROKER__START_TIMEOUT_S": str(SLOW_S),
        "SPLITPIN_BROKER__SASL_USERS": orjson.dumps({USER: PASSWORD}).decode(),
    }
    broker = LocalBroker(broker_settings)
    try:
        started = _splitpin(env, "broker", "start", "--sasl-port", str(sasl_port), timeout=180)
        assert started.returncode == 0, started.stderr
        assert f"SASL_PLAINTEXT/PLAIN at {host_port('127.0.0.1', sasl_port)}" in started.stdout
        yield broker
    finally:
        broker.stop()


def _base_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SPLITPIN_") and k != "KAFKA_BOOTSTRAP_SERVERS"
    }


def _settings(broker: LocalBroker, password: str, **overrides: object) -> Settings:
    assert broker.sasl_bootstrap is not None
    values: dict[str, object] = {
        "bootstrap_servers": broker.sasl_bootstrap,
        "topic_prefix": f"s{uuid.uuid4().hex[:10]}.",
        "partitions": 1,
        "max_past_skew_s": T0_PAST_SKEW_S,
        "metrics_port": 0,
        "kafka": KafkaClientSettings(
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="PLAIN",
            sasl_username=USER,
            sasl_password=SecretStr(password),
        ),
    }
    return Settings(**(values | overrides))  # type: ignore[arg-type]


def _splitpin(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "splitpin", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _events_file(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "events.jsonl"
    lines = [orjson.dumps(event_dict(f"sasl-{i}", f"c-sasl-{i}", at_s=i)) for i in range(count)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_right_credentials_topics_replay_and_the_flow_work(
    sasl_broker: LocalBroker, tmp_path: Path
) -> None:
    settings = _settings(sasl_broker, PASSWORD)
    env = settings.child_env(_base_env())

    created = _splitpin(env, "topics", "create")
    assert created.returncode == 0, created.stderr
    assert f"created {settings.topic('events')}" in created.stdout

    replayed = _splitpin(env, "replay", str(_events_file(tmp_path, 3)))
    assert replayed.returncode == 0, replayed.stderr

    log = tmp_path / "flow.log"
    with running_flow(settings, tmp_path / "recovery", log) as flow:
        decisions = read_until(
            settings.bootstrap_servers,
            settings.topic("decisions"),
            lambda got: len(got) >= 3,
            90,
            config=client_config(settings),
        )
        assert flow.poll() is None, log.read_text()[-3000:]
    ids = sorted(decode(RoutingDecision, m.value() or b"").event_id for m in decisions)
    assert ids == ["sasl-0", "sasl-1", "sasl-2"], log.read_text()[-3000:]
    assert PASSWORD not in log.read_text()


def test_a_wrong_password_fails_fast_saying_so(sasl_broker: LocalBroker, tmp_path: Path) -> None:
    good = _settings(sasl_broker, PASSWORD)
    assert _splitpin(good.child_env(_base_env()), "topics", "create").returncode == 0
    wrong = _settings(
        sasl_broker,
        WRONG,
        topic_prefix=good.topic_prefix,  # the topics exist: only the login is wrong
        startup_timeout_s=SLOW_S,
        delivery_timeout_ms=SLOW_S * 1000,
        sink_flush_timeout_s=SLOW_S,
        recovery_dir=tmp_path / "recovery",
    )
    env = wrong.child_env(_base_env())
    events = _events_file(tmp_path, 1)
    commands = {
        "topics create": ["topics", "create"],
        "replay": ["replay", str(events)],
        "run": ["run"],
    }
    # All three at once: each must fail on its own within FAST_S.
    started = time.monotonic()
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "splitpin", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, args in commands.items()
    }
    outcomes: dict[str, tuple[int, float, str]] = {}
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=SLOW_S)
            outcomes[name] = (proc.returncode, time.monotonic() - started, out + err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for name, (code, elapsed, output) in outcomes.items():
        assert code != 0, f"{name} succeeded with a wrong password:\n{output}"
        assert elapsed < FAST_S, f"{name} took {elapsed:.1f}s:\n{output}"
        assert "authentication failed" in output, f"{name}:\n{output}"
        assert "SPLITPIN_KAFKA__SASL_PASSWORD" in output, f"{name}:\n{output}"
        assert WRONG not in output and PASSWORD not in output, f"{name} printed a password"
