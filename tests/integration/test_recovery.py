"""SIGKILL the flow mid-stream, restart it: nothing lost, duplicate decisions byte-identical.

A lost recovery directory is refused unless `--reset`; a damaged partition is named.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from splitpin.core.kafka.producer import CheckedProducer
from splitpin.core.settings import Settings
from splitpin.schemas import RoutingDecision, decode
from tests.factories import event_dict
from tests.flow_process import kill_hard, running_flow, start_flow
from tests.kafka_helpers import read_until

pytestmark = pytest.mark.integration

EVENTS = 600
CONVERSATIONS = 30


def _events() -> list[tuple[bytes, bytes, str]]:
    out = []
    for i in range(EVENTS):
        conversation = f"conv-{i % CONVERSATIONS:02d}"
        turn = i // CONVERSATIONS
        event_id = f"{conversation}-{turn:03d}"
        text = f"turn {turn}: " + "my card payment was declined again " * (1 + turn % 5)
        data = event_dict(event_id, conversation, text=text, at_s=turn * 20)
        out.append((conversation.encode(), orjson.dumps(data), event_id))
    return out


def _publish_paced(settings: Settings, events: list[tuple[bytes, bytes, str]]) -> None:
    """~300 events/s so the kill lands while input is still arriving."""
    producer = CheckedProducer(settings.bootstrap_servers)
    for n, (key, value, _) in enumerate(events, start=1):
        producer.produce(settings.topic("events"), value, key)
        if n % 30 == 0:
            producer.flush(15)
            time.sleep(0.1)
    producer.flush(15)


def test_sigkill_mid_stream_loses_nothing(topic_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings: Settings = topic_settings(partitions=3)
    events = _events()
    expected_ids = {event_id for _, _, event_id in events}
    recovery_dir = tmp_path / "recovery"
    log = tmp_path / "flow.log"

    publisher = threading.Thread(target=_publish_paced, args=(settings, events))
    first = start_flow(settings, recovery_dir, log)
    publisher.start()
    before_kill = read_until(
        settings.bootstrap_servers, settings.topic("decisions"), lambda got: len(got) >= 150, 60
    )
    kill_hard(first)
    assert len(before_kill) < EVENTS, "the kill must land mid-stream"
    assert any(recovery_dir.glob("part-*.sqlite3")), "snapshots were written before the kill"

    with running_flow(settings, recovery_dir, log) as second:
        publisher.join(timeout=60)

        def covered(got: list) -> bool:  # type: ignore[type-arg]
            return {decode(RoutingDecision, m.value()).event_id for m in got} >= expected_ids

        decisions = read_until(
            settings.bootstrap_servers, settings.topic("decisions"), covered, 120
        )
        assert second.poll() is None, log.read_text()[-3000:]

    by_event: dict[str, list[bytes]] = defaultdict(list)
    for message in decisions:
        by_event[decode(RoutingDecision, message.value()).event_id].append(message.value())
    duplicated = sum(len(copies) - 1 for copies in by_event.values())
    print(
        f"decisions before kill: {len(before_kill)}, after restart: {len(decisions)}, "
        f"re-emitted duplicates: {duplicated}"
    )
    missing = expected_ids - set(by_event)
    assert not missing, f"{len(missing)} events lost, e.g. {sorted(missing)[:5]}"
    for event_id, copies in by_event.items():
        first = orjson.loads(copies[0])
        for copy in copies[1:]:
            other = orjson.loads(copy)
            diff = {k: (first[k], other[k]) for k in first if first[k] != other.get(k)}
            assert copy == copies[0], f"{event_id} re-emitted differently: {diff}"
    # Per-conversation order survives the crash: turn indexes are contiguous from 0.
    turns: dict[str, set[int]] = defaultdict(set)
    for copies in by_event.values():
        decision = decode(RoutingDecision, copies[0])
        turns[decision.conversation_id].add(decision.turn_index)
    assert all(indexes == set(range(len(indexes))) for indexes in turns.values())


def _exit_of(process, timeout_s: float = 60) -> int:  # type: ignore[no-untyped-def]
    return int(process.wait(timeout=timeout_s))


def test_lost_recovery_dir_is_refused_and_reset_proceeds(topic_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings: Settings = topic_settings()
    producer = CheckedProducer(settings.bootstrap_servers)
    now = datetime.now(UTC).isoformat()
    for i in range(60):
        conversation = f"conv-{i % 6}"
        event = event_dict(f"{conversation}-{i:03d}", conversation, sent_at=now)
        producer.produce(settings.topic("events"), orjson.dumps(event), conversation.encode())
    producer.flush(15)
    recovery_dir, log = tmp_path / "recovery", tmp_path / "flow.log"
    with running_flow(settings, recovery_dir, log):
        first = read_until(
            settings.bootstrap_servers, settings.topic("decisions"), lambda m: len(m) >= 60, 90
        )
    assert len(first) >= 60

    shutil.rmtree(recovery_dir)  # the accident
    refused = start_flow(settings, recovery_dir, log)
    assert _exit_of(refused) == 2
    output = log.read_text()
    assert "refusing to start without recovery state" in output
    assert str(recovery_dir) in output and "--reset" in output
    assert settings.topic("decisions") in output
    assert not recovery_dir.exists(), "a refused start creates no state"

    with running_flow(settings, recovery_dir, log, "--reset") as reset:
        again = read_until(
            settings.bootstrap_servers, settings.topic("decisions"), lambda m: len(m) >= 120, 90
        )
        assert reset.poll() is None, log.read_text()[-3000:]
    assert len(again) >= 120, "--reset re-processed the topic from the beginning"


def test_corrupted_partition_is_named(topic_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings: Settings = topic_settings()
    recovery_dir, log = tmp_path / "recovery", tmp_path / "flow.log"
    with running_flow(settings, recovery_dir, log):
        deadline = time.monotonic() + 60
        while not any(recovery_dir.glob("part-*.sqlite3")) and time.monotonic() < deadline:
            time.sleep(0.2)
    partition = next(recovery_dir.glob("part-*.sqlite3"))
    raw = partition.read_bytes()
    partition.write_bytes(raw[:100] + b"\xff" * 4000 + raw[4100:])
    damaged = start_flow(settings, recovery_dir, log)
    assert _exit_of(damaged) == 2
    output = log.read_text()
    assert f"damaged recovery partition {partition}" in output
    assert "panicked" not in output and "--reset" in output
