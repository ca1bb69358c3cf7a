"""Every malformed input becomes a DeadLetter with a reason; valid ones parse."""

from __future__ import annotations

import base64

import orjson
import pytest

from operators.ingest import RawRecord, parse_event
from schemas.dead_letter import DeadLetter
from schemas.events import ConversationEvent
from tests.factories import event_dict, raw

MAX = 4096


def _dead(record: RawRecord) -> DeadLetter:
    result = parse_event(record, MAX)
    assert isinstance(result, DeadLetter), result
    return result


def test_valid_event_parses() -> None:
    event = parse_event(raw(event_dict(tags=("Compliance",))), MAX)
    assert isinstance(event, ConversationEvent)
    assert event.tags == ("compliance",)
    assert event.sent_at.utcoffset() is not None


def test_missing_key_is_accepted_so_outside_tools_can_publish() -> None:
    record = RawRecord(None, orjson.dumps(event_dict()), "events", 0, 0)
    assert isinstance(parse_event(record, MAX), ConversationEvent)


@pytest.mark.parametrize(
    ("value", "reason", "detail_part"),
    [
        (b"not json at all", "not_json", ""),
        (b"\xff\xfe\x00garbage", "invalid_utf8", "byte 0"),
        (b"[1, 2, 3]", "not_an_object", "list"),
        (orjson.dumps({**event_dict(), "schema_version": 99}), "unknown_schema_version", "99"),
        (orjson.dumps({**event_dict(), "schema_version": True}), "unknown_schema_version", ""),
        (orjson.dumps({**event_dict(), "text": 42}), "schema_violation", "text"),
        (orjson.dumps({**event_dict(), "channel": "fax"}), "schema_violation", "channel"),
        (orjson.dumps({**event_dict(), "text": "   "}), "schema_violation", "blank"),
        (
            orjson.dumps({**event_dict(), "sent_at": "2026-11-02T09:00:00"}),
            "schema_violation",
            "timezone",
        ),
        (
            orjson.dumps({k: v for k, v in event_dict().items() if k != "tenant_id"}),
            "schema_violation",
            "tenant_id",
        ),
        (
            orjson.dumps({k: v for k, v in event_dict().items() if k != "schema_version"}),
            "schema_violation",
            "schema_version",
        ),
        (orjson.dumps({**event_dict(), "surprise": 1}), "schema_violation", "surprise"),
    ],
)
def test_malformed_inputs_dead_letter_with_reason(
    value: bytes, reason: str, detail_part: str
) -> None:
    letter = _dead(RawRecord(b"c-1", value, "events", 3, 42, 1700))
    assert letter.reason == reason
    assert detail_part in letter.detail
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("events", 3, 42)
    assert letter.source_timestamp_ms == 1700
    assert letter.value_b64 is not None
    assert base64.b64decode(letter.value_b64) == value
    assert letter.value_bytes == len(value)


def test_oversize_is_rejected_before_parsing() -> None:
    big = orjson.dumps(event_dict(text="x" * (MAX + 10)))
    letter = _dead(raw(big))
    assert letter.reason == "oversize"
    assert str(MAX) in letter.detail


def test_key_that_disagrees_with_conversation_id_dead_letters() -> None:
    letter = _dead(raw(event_dict(conversation_id="c-1"), key=b"c-2"))
    assert letter.reason == "key_mismatch"
    assert base64.b64decode(letter.key_b64 or "") == b"c-2"


def test_empty_value_is_not_json() -> None:
    assert _dead(RawRecord(None, None, "events", 0, 0)).reason == "not_json"
