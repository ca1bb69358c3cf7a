"""SIGKILL the flow mid-stream, restart it: nothing lost, duplicates byte-identical."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from schemas import RoutingDecision, decode
from splitpin.kafka.producer import CheckedProducer
from splitpin.settings import Settings
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
