"""`replay_file` against a real broker: bytes verbatim, keys, ordering, loud failure."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Message

from splitpin.app.replay import replay_file
from splitpin.core.settings import REPO_ROOT, load_settings
from splitpin.errors import DeliveryError
from splitpin.schemas.events import ConversationEvent
from splitpin.schemas.wire import decode
from tests.factories import event_dict
from tests.kafka_helpers import TopicSettingsFactory, consume_all, free_ports

pytestmark = pytest.mark.integration

SHIPPED = REPO_ROOT / "data" / "sample" / "events.jsonl"


def _value(message: Message) -> bytes:
    value = message.value()
    assert value is not None
    return bytes(value)


def test_lines_arrive_byte_for_byte_and_malformed_ones_unkeyed(
    topic_settings: TopicSettingsFactory, kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = topic_settings(partitions=1)
    lines = [
        orjson.dumps(event_dict("chat-1-001", "chat-1")),
        orjson.dumps(event_dict("chat-2-001", "chat-2", at_s=1)),
        b'{"event_id": "chat-1-002", "conversation_id": "chat-1", "text": "trunc',  # malformed
        b'  {"conversation_id": "chat-2", "extra": 1}  ',  # JSON with padding: kept as-is
        b'["not", "an", "object"]',
        orjson.dumps(event_dict("chat-1-003", "chat-1", at_s=3)),
    ]
    path = tmp_path / "events.jsonl"
    # LF and CRLF endings, a blank line, and no newline at the very end
    path.write_bytes(
        lines[0] + b"\n" + lines[1] + b"\r\n\n" + b"\n".join(lines[2:5]) + b"\n" + lines[5]
    )

    result = replay_file(settings, path, rate=50.0)

    topic = settings.topic("events")
    assert (result.sent, result.keyed, result.unkeyed, result.topic) == (6, 4, 2, topic)
    assert result.skipped_blank == 1
    assert result.seconds >= 5 / 50.0  # six sends paced at 50/s span at least five intervals
    got = consume_all(kafka_bootstrap, topic, expected=6, timeout_s=30)
    assert [_value(m) for m in got] == lines
    assert [m.key() for m in got] == [b"chat-1", b"chat-2", None, b"chat-2", None, b"chat-1"]
    assert decode(ConversationEvent, _value(got[5])).event_id == "chat-1-003"


def test_shipped_sample_keeps_each_conversation_on_one_partition_in_order(
    topic_settings: TopicSettingsFactory, kafka_bootstrap: str
) -> None:
    settings = topic_settings(partitions=3)
    target = settings.topic("replies")  # an explicit topic overrides the events topic
    expected = [line for line in SHIPPED.read_bytes().splitlines() if line.strip()]

    result = replay_file(settings, SHIPPED, topic=target)

    assert (result.sent, result.keyed, result.unkeyed) == (len(expected), len(expected), 0)
    got = consume_all(kafka_bootstrap, target, expected=len(expected), timeout_s=60)
    assert sorted(_value(m) for m in got) == sorted(expected)
    partitions: dict[str, set[int]] = defaultdict(set)
    per_conversation: dict[str, list[str]] = defaultdict(list)
    for message in sorted(got, key=lambda m: (m.partition(), m.offset())):
        event = decode(ConversationEvent, _value(message))
        assert message.key() == event.conversation_id.encode()
        partition = message.partition()
        assert partition is not None
        partitions[event.conversation_id].add(partition)
        per_conversation[event.conversation_id].append(event.event_id)
    assert all(len(p) == 1 for p in partitions.values())
    assert len({p for ps in partitions.values() for p in ps}) == 3, "keys spread over partitions"
    assert all(ids == sorted(ids) for ids in per_conversation.values())
    assert consume_all(kafka_bootstrap, settings.topic("events"), expected=1, timeout_s=2) == []


def test_unreachable_broker_raises_instead_of_losing_events(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    settings = load_settings(
        SPLITPIN_BOOTSTRAP_SERVERS=f"127.0.0.1:{port}",
        delivery_timeout_ms=1_000,
        sink_flush_timeout_s=3.0,
    )
    path = tmp_path / "events.jsonl"
    path.write_bytes(orjson.dumps(event_dict()) + b"\n")
    with pytest.raises(DeliveryError, match=r"not delivered|unacknowledged"):
        replay_file(settings, path)
