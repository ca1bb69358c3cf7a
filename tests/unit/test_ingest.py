"""Every malformed input becomes a DeadLetter with a reason; valid ones parse."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import replace
from datetime import timedelta
from typing import Any

import orjson
import pytest

from splitpin.core.settings import load_settings
from splitpin.operators.ingest import (
    IngestLimits,
    RawRecord,
    dead_letter,
    parse_event,
    parse_record,
)
from splitpin.schemas.dead_letter import DeadLetter
from splitpin.schemas.events import ConversationEvent
from splitpin.schemas.governance import TenancyConfig
from splitpin.schemas.metrics import CostRecord
from splitpin.schemas.wire import encode
from tests.factories import T0, event_dict, raw

MAX = 4096
T0_MS = int(T0.timestamp() * 1000)
DAY_S = 86_400.0
LIMITS = IngestLimits(
    max_bytes=MAX,
    max_future_skew_s=DAY_S,
    max_past_skew_s=7 * DAY_S,
    dead_letter_max_bytes=64 * 1024,
    governance=load_settings().governance,
    clock=lambda: T0.timestamp(),  # the factories' events are "now" at T0
)


def _dead(record: RawRecord, limits: IngestLimits = LIMITS) -> DeadLetter:
    result = parse_event(record, limits)
    assert isinstance(result, DeadLetter), result
    return result


def _stamped(data: dict[str, Any], timestamp_ms: int | None = T0_MS) -> RawRecord:
    return RawRecord(b"c-1", orjson.dumps(data), "events", 0, 7, timestamp_ms)


def test_valid_event_parses() -> None:
    event = parse_event(raw(event_dict(tags=("Compliance",))), LIMITS)
    assert isinstance(event, ConversationEvent)
    assert event.tags == ("compliance",)
    assert event.sent_at.utcoffset() is not None


def test_tags_and_tenant_are_normalised_at_the_door() -> None:
    data = event_dict(tags=("Compliance ", " compliance", "VIP", "vip"), tenant_id=" ShopCo")
    event = parse_event(raw(data), LIMITS)
    assert isinstance(event, ConversationEvent)
    assert event.tags == ("compliance", "vip")
    assert event.tenant_id == "shopco"


def test_unknown_tenant_follows_the_configured_policy() -> None:
    governance = LIMITS.governance
    strict = replace(
        LIMITS,
        governance=governance.model_copy(
            update={"tenancy": TenancyConfig(tenants=("acme-bank",), unknown="dead_letter")}
        ),
    )
    letter = _dead(raw(event_dict(tenant_id="Nobody-Co")), strict)
    assert letter.reason == "unknown_tenant"
    assert "nobody-co" in letter.detail
    assert isinstance(
        parse_event(raw(event_dict(tenant_id="ACME-BANK")), strict), ConversationEvent
    )
    lenient = replace(
        LIMITS,
        governance=governance.model_copy(update={"tenancy": TenancyConfig(unknown="default")}),
    )
    assert isinstance(
        parse_event(raw(event_dict(tenant_id="nobody-co")), lenient), ConversationEvent
    )


def test_missing_key_is_accepted_so_outside_tools_can_publish() -> None:
    record = RawRecord(None, orjson.dumps(event_dict()), "events", 0, 0)
    assert isinstance(parse_event(record, LIMITS), ConversationEvent)


def _with(**fields: Any) -> bytes:
    return orjson.dumps({**event_dict(), **fields})


@pytest.mark.parametrize(
    ("value", "reason", "detail_part"),
    [
        (b"not json at all", "not_json", ""),
        (b"\xff\xfe\x00garbage", "invalid_utf8", "byte 0"),
        (b"[1, 2, 3]", "not_an_object", "list"),
        (_with(schema_version=99), "unknown_schema_version", "99"),
        (_with(schema_version=True), "schema_violation", "JSON integer, got bool"),
        (_with(schema_version=1.0), "schema_violation", "JSON integer, got float"),
        (_with(schema_version="1"), "schema_violation", "JSON integer, got str"),
        # Unhashable: these crashed ingest with TypeError before the type was checked.
        (_with(schema_version=[1]), "schema_violation", "JSON integer, got list"),
        (_with(schema_version={"v": 1}), "schema_violation", "JSON integer, got dict"),
        (_with(text=42), "schema_violation", "text"),
        (_with(channel="fax"), "schema_violation", "channel"),
        (_with(text="   "), "schema_violation", "blank"),
        (_with(text="\u200b\u200c\u200d\u2060\ufeff"), "schema_violation", "blank"),
        (_with(text="\u00ad\u202e\x07 \t"), "schema_violation", "blank"),
        (_with(tenant_id="\u200b"), "schema_violation", "tenant_id"),
        (_with(conversation_id="\ufeff"), "schema_violation", "conversation_id"),
        (_with(tags=["\u2060"]), "schema_violation", "tags.0"),
        (_with(sent_at="2026-11-02T09:00:00"), "schema_violation", "timezone"),
        (_with(sent_at=0), "schema_violation", "sent_at"),
        (_with(sent_at=1.5), "schema_violation", "got float"),
        (_with(sent_at="1764151200"), "schema_violation", "RFC 3339"),
        (_with(sent_at="2026-11-02"), "schema_violation", "RFC 3339"),
        (_with(sent_at=["2026-11-02T09:00:00Z"]), "schema_violation", "sent_at"),
        (_with(sent_at="0001-01-01T00:00:00+14:00"), "schema_violation", "UTC"),
        (_with(sent_at="9999-12-31T23:59:59-14:00"), "schema_violation", "UTC"),
        (_with(sent_at="9999-12-31T23:59:59Z"), "event_time_skew", "after"),
        (_with(sent_at="2200-01-01T00:00:00Z"), "event_time_skew", "after"),
        (_with(sent_at="0001-01-01T00:00:00Z"), "event_time_skew", "before"),
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
        (_with(surprise=1), "schema_violation", "surprise"),
    ],
)
def test_malformed_inputs_dead_letter_with_reason(
    value: bytes, reason: str, detail_part: str
) -> None:
    letter = _dead(RawRecord(b"c-1", value, "events", 3, 42, T0_MS))
    assert letter.reason == reason
    assert detail_part in letter.detail
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("events", 3, 42)
    assert letter.source_timestamp_ms == T0_MS
    assert letter.value_b64 is not None
    assert base64.b64decode(letter.value_b64) == value
    assert letter.value_bytes == len(value)
    assert letter.value_sha256 == hashlib.sha256(value).hexdigest()
    assert not letter.truncated


def test_skew_is_measured_against_the_kafka_timestamp_in_both_directions() -> None:
    limit = timedelta(seconds=LIMITS.max_future_skew_s)
    ahead = event_dict(sent_at=(T0 + limit + timedelta(seconds=1)).isoformat())
    letter = _dead(_stamped(ahead))
    assert letter.reason == "event_time_skew"
    assert str((T0 + limit + timedelta(seconds=1)).isoformat()) in letter.detail
    assert T0.isoformat() in letter.detail and "Kafka timestamp" in letter.detail
    assert isinstance(
        parse_event(_stamped(event_dict(sent_at=(T0 + limit).isoformat())), LIMITS),
        ConversationEvent,
    )

    past = timedelta(seconds=LIMITS.max_past_skew_s)
    behind = event_dict(sent_at=(T0 - past - timedelta(seconds=1)).isoformat())
    assert "before" in _dead(_stamped(behind)).detail
    assert isinstance(
        parse_event(_stamped(event_dict(sent_at=(T0 - past).isoformat())), LIMITS),
        ConversationEvent,
    )
    # Replayed a year later: the Kafka timestamp is the reference, not the wall clock.
    year_later = int((T0 + timedelta(days=365)).timestamp() * 1000)
    assert _dead(_stamped(event_dict(), year_later)).reason == "event_time_skew"


def test_without_a_kafka_timestamp_the_wall_clock_is_the_reference() -> None:
    later = replace(LIMITS, clock=lambda: T0.timestamp() + 30 * DAY_S)
    letter = _dead(_stamped(event_dict(), None), later)
    assert letter.reason == "event_time_skew"
    assert "wall clock" in letter.detail
    assert (
        _dead(_stamped(event_dict(), -1), later).reason == "event_time_skew"
    )  # librdkafka's "none"


def _cost(**fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "schema_version": 1,
        "record_id": "e-1:0",
        "event_id": "e-1",
        "tenant_id": "acme-bank",
        "role": "fast",
        "model": "m",
        "model_version": "m-1",
        "tokens_in": 1,
        "tokens_out": 1,
        "cost_usd": 0.0,
        "latency_ms": 1.0,
        "occurred_at": T0.isoformat(),
    }
    return {**data, **fields}


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({}, None),
        ({"schema_version": [1]}, "schema_violation"),
        ({"schema_version": {"x": 1}}, "schema_violation"),
        ({"occurred_at": 1764151200}, "schema_violation"),
        ({"occurred_at": "0001-01-01T00:00:00+14:00"}, "schema_violation"),
        ({"occurred_at": "9999-12-31T23:59:59Z"}, "event_time_skew"),
    ],
)
def test_cost_records_get_the_same_door(fields: dict[str, Any], reason: str | None) -> None:
    record = RawRecord(b"acme-bank", orjson.dumps(_cost(**fields)), "metrics", 0, 0, T0_MS)
    result = parse_record(record, CostRecord, "tenant_id", LIMITS, "occurred_at")
    if reason is None:
        assert isinstance(result, CostRecord)
    else:
        assert isinstance(result, DeadLetter) and result.reason == reason


def test_oversize_is_rejected_before_parsing() -> None:
    big = orjson.dumps(event_dict(text="x" * (MAX + 10)))
    letter = _dead(raw(big))
    assert letter.reason == "oversize"
    assert str(MAX) in letter.detail


@pytest.mark.parametrize("size", [700_000, 1_000_000])
def test_a_dead_letter_of_a_large_record_fits_under_the_limit(size: int) -> None:
    """A value the broker accepts (up to ~1 MB) must not make an unproducible dead letter."""
    limits = replace(LIMITS, max_bytes=2_000_000, dead_letter_max_bytes=512 * 1024)
    value = orjson.dumps(event_dict(text="\u00e9" * (size // 2)))
    letter = _dead(RawRecord(b"c-9", value, "events", 1, 5, T0_MS), limits)
    assert letter.reason == "key_mismatch"
    assert len(encode(letter)) + len(b"c-9") <= limits.dead_letter_max_bytes
    assert letter.truncated
    assert letter.value_bytes == len(value)
    assert letter.value_sha256 == hashlib.sha256(value).hexdigest()
    kept = base64.b64decode(letter.value_b64 or "")
    assert value.startswith(kept) and len(kept) > limits.dead_letter_max_bytes // 2
    assert base64.b64decode(letter.key_b64 or "") == b"c-9"


def test_dead_letter_bounds_detail_key_and_names_for_processing_errors() -> None:
    record = RawRecord(b"k" * 10_000, b"\x00" * 10_000, "events", 0, 0, None)
    letter = dead_letter(
        record,
        "processing_error",
        "\x00" * 50_000,
        max_bytes=4096,
        step="budget",
        error_type="OverflowError",
    )
    kept_key = base64.b64decode(letter.key_b64 or "")
    assert len(encode(letter)) + len(kept_key) <= 4096  # the sink sends the kept key too
    assert letter.truncated and letter.value_bytes == 10_000
    assert (letter.step, letter.error_type) == ("budget", "OverflowError")
    assert len(letter.detail) < 50_000


def test_key_that_disagrees_with_conversation_id_dead_letters() -> None:
    letter = _dead(raw(event_dict(conversation_id="c-1"), key=b"c-2"))
    assert letter.reason == "key_mismatch"
    assert base64.b64decode(letter.key_b64 or "") == b"c-2"


def test_empty_value_is_not_json() -> None:
    letter = _dead(RawRecord(None, None, "events", 0, 0))
    assert letter.reason == "not_json"
    assert letter.value_b64 is None and letter.value_bytes == 0
