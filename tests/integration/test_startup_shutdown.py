"""`splitpin run` as a child process: fail fast at start-up, stop within a bound on signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from splitpin.core.kafka.admin import create_topics, delete_topics
from splitpin.core.kafka.broker import LocalBroker
from splitpin.core.kafka.producer import CheckedProducer
from splitpin.core.settings import BrokerSettings, Settings
from splitpin.schemas import RoutingDecision, decode
from tests.conftest import unique_settings
from tests.factories import event_dict
from tests.flow_process import flow_env, running_flow, start_flow
from tests.integration.test_model_operator import KEYS, finals_cover, remote_governance
from tests.kafka_helpers import TopicSettingsFactory, free_ports, read_until
from tests.model_api_server import ModelApiServer, grounded

pytestmark = pytest.mark.integration

STARTUP_TIMEOUT_S = 3.0
SHUTDOWN_TIMEOUT_S = 5.0
# The interpreter, the classifier and the governance config load before the checks run.
IMPORT_ALLOWANCE_S = 25.0


def _run_to_exit(env: dict[str, str], timeout_s: float) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "splitpin", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    return done.returncode, done.stderr, time.monotonic() - started


def test_unreachable_broker_exits_within_the_bound(tmp_path: Path) -> None:
    (port,) = free_ports(1)  # nothing listens there
    settings = unique_settings(f"127.0.0.1:{port}", startup_timeout_s=STARTUP_TIMEOUT_S)
    status, stderr, elapsed = _run_to_exit(
        flow_env(settings, tmp_path / "rec"), STARTUP_TIMEOUT_S + IMPORT_ALLOWANCE_S
    )
    assert status == 2, stderr[-2000:]
    assert "SPLITPIN_BOOTSTRAP_SERVERS" in stderr and f"127.0.0.1:{port}" in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "rec").exists(), "nothing is created before the checks pass"
    print(f"unreachable broker: exit {status} after {elapsed:.1f} s")


def test_missing_topic_is_named(topic_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings: Settings = topic_settings(startup_timeout_s=STARTUP_TIMEOUT_S)
    missing = settings.topic("dead_letter")
    delete_topics(settings.bootstrap_servers, [missing])
    status, stderr, _ = _run_to_exit(
        flow_env(settings, tmp_path / "rec"), STARTUP_TIMEOUT_S + IMPORT_ALLOWANCE_S
    )
    assert status == 2, stderr[-2000:]
    assert missing in stderr and "splitpin topics create" in stderr
    assert settings.topic("events") + "," not in stderr  # only the missing one is named


def _event(i: int) -> tuple[bytes, bytes, str]:
    conversation = f"conv-{i % 15:02d}"
    event_id = f"{conversation}-{i:04d}"
    now = datetime.now(UTC).isoformat()
    data = event_dict(event_id, conversation, text=f"my card was declined ({i})", sent_at=now)
    return conversation.encode(), orjson.dumps(data), event_id


def _publish(settings: Settings, ids: list[str], stop: threading.Event, rate: float) -> None:
    producer = CheckedProducer(settings.bootstrap_servers)
    i = 0
    while not stop.is_set():
        key, value, event_id = _event(i)
        producer.produce(settings.topic("events"), value, key)
        producer.flush(15)
        ids.append(event_id)
        i += 1
        time.sleep(1 / rate)


def _decided(settings: Settings, expected: set[str], timeout_s: float) -> set[str]:
    got = read_until(
        settings.bootstrap_servers,
        settings.topic("decisions"),
        lambda ms: {decode(RoutingDecision, m.value()).event_id for m in ms} >= expected,
        timeout_s,
    )
    return {decode(RoutingDecision, m.value()).event_id for m in got}


def _stop_timed(process: subprocess.Popen[bytes], sig: signal.Signals, bound_s: float) -> float:
    started = time.monotonic()
    os.killpg(process.pid, sig)
    try:
        process.wait(timeout=bound_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"{sig.name} ignored for {bound_s:.0f} s")
    return time.monotonic() - started


def test_sigint_during_paced_traffic_stops_within_the_bound(topic_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings: Settings = topic_settings(partitions=3, shutdown_timeout_s=SHUTDOWN_TIMEOUT_S)
    recovery, log = tmp_path / "rec", tmp_path / "flow.log"
    ids: list[str] = []
    stop = threading.Event()
    publisher = threading.Thread(target=_publish, args=(settings, ids, stop, 20.0))
    flow = start_flow(settings, recovery, log)
    publisher.start()
    try:
        read_until(
            settings.bootstrap_servers, settings.topic("replies"), lambda m: len(m) >= 20, 90
        )
        time.sleep(10)  # paced traffic keeps arriving; replies are being answered
        elapsed = _stop_timed(flow, signal.SIGINT, SHUTDOWN_TIMEOUT_S + 10)
    finally:
        stop.set()
        publisher.join(30)
    output = log.read_text()
    print(f"SIGINT after paced traffic: exit {flow.returncode} after {elapsed:.1f} s")
    assert flow.returncode == 0, output[-3000:]
    assert "Traceback" not in output and "panicked" not in output
    with running_flow(settings, recovery, log) as second:
        decided = _decided(settings, set(ids), 120)
        assert second.poll() is None, log.read_text()[-3000:]
    lost = set(ids) - decided
    assert not lost, f"{len(lost)} of {len(ids)} events lost, e.g. {sorted(lost)[:5]}"


def test_sigterm_during_a_broker_outage_stops_within_the_bound(tmp_path: Path) -> None:
    port, controller = free_ports(2)
    broker = LocalBroker(
        BrokerSettings(port=port, controller_port=controller, state_dir=tmp_path / "broker")
    )
    broker.start()
    try:
        settings = unique_settings(broker.bootstrap, shutdown_timeout_s=SHUTDOWN_TIMEOUT_S)
        create_topics(settings)
        recovery, log = tmp_path / "rec", tmp_path / "flow.log"
        producer = CheckedProducer(settings.bootstrap_servers)
        events = [_event(i) for i in range(40)]
        for key, value, _ in events:
            producer.produce(settings.topic("events"), value, key)
        producer.flush(15)
        flow = start_flow(settings, recovery, log)
        _decided(settings, {event_id for _, _, event_id in events}, 90)
        lines_before = len(log.read_text().splitlines())
        broker.stop()
        outage_started = time.monotonic()
        time.sleep(20)  # the flow's clients retry against a dead broker
        outage_lines = log.read_text().splitlines()[lines_before:]
        lines = len(outage_lines)
        print(*outage_lines[:10], sep="\n")
        elapsed = _stop_timed(flow, signal.SIGTERM, SHUTDOWN_TIMEOUT_S + 10)
        print(
            f"broker outage: {lines} stderr lines in {time.monotonic() - outage_started:.0f} s; "
            f"SIGTERM: exit {flow.returncode} after {elapsed:.1f} s"
        )
        assert lines < 20, log.read_text()[-3000:]
        broker.start()
        more = [_event(i) for i in range(40, 60)]
        for key, value, _ in more:
            producer.produce(settings.topic("events"), value, key)
        producer.flush(30)
        with running_flow(settings, recovery, log):
            expected = {event_id for _, _, event_id in events + more}
            assert _decided(settings, expected, 120) >= expected
    finally:
        broker.stop()


def test_sigint_with_model_calls_in_flight_stops_and_restart_answers_all(
    topic_settings: TopicSettingsFactory, tmp_path: Path
) -> None:
    with ModelApiServer() as api:
        api.default = grounded(delay_s=20.0)  # every call is still in flight at the signal
        governance = remote_governance(tmp_path, api, 4)
        settings: Settings = topic_settings(
            partitions=3, governance_path=governance, shutdown_timeout_s=SHUTDOWN_TIMEOUT_S
        )
        recovery, log = tmp_path / "rec", tmp_path / "flow.log"
        producer = CheckedProducer(settings.bootstrap_servers)
        events = [_event(i) for i in range(12)]
        for key, value, _ in events:
            producer.produce(settings.topic("events"), value, key)
        producer.flush(15)
        ids = {event_id for _, _, event_id in events}
        flow = start_flow(settings, recovery, log, **KEYS)
        _decided(settings, ids, 120)
        deadline = time.monotonic() + 60  # a guard against hanging, not a measurement
        while api.count() < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # a snapshot (every 0.5 s) holds the calls in flight
        elapsed = _stop_timed(flow, signal.SIGINT, SHUTDOWN_TIMEOUT_S + 10)
        print(f"SIGINT with {api.count()} calls made: exit {flow.returncode} after {elapsed:.1f} s")
        assert flow.returncode == 0, log.read_text()[-3000:]

        api.default = grounded(delay_s=0.05)
        with running_flow(settings, recovery, log, **KEYS) as second:
            read_until(
                settings.bootstrap_servers, settings.topic("replies"), finals_cover(list(ids)), 120
            )
            assert second.poll() is None, log.read_text()[-3000:]
