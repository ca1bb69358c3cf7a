"""Property tests of the door: whatever bytes arrive, ingest answers and never raises.

Every result is an event the later stages can handle (a UTC-convertible instant within the
skew, visible text, normalised tags and tenant) or a dead letter that fits under the limit
and still identifies the whole original value.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitpin.core.settings import load_settings
from splitpin.operators.ingest import IngestLimits, RawRecord, parse_event, parse_record
from splitpin.schemas.dead_letter import DeadLetter
from splitpin.schemas.events import ConversationEvent
from splitpin.schemas.governance import TenancyConfig
from splitpin.schemas.metrics import CostRecord
from splitpin.schemas.normalize import normalize_tenant_id
from splitpin.schemas.wire import decode, encode, has_visible
from tests.factories import T0, event_dict

T0_MS = int(T0.timestamp() * 1000)
_GOVERNANCE = load_settings().governance
LIMITS = IngestLimits(
    max_bytes=200_000,
    max_future_skew_s=86_400.0,
    max_past_skew_s=7 * 86_400.0,
    dead_letter_max_bytes=4096,  # the smallest the settings allow: truncation gets exercised
    governance=_GOVERNANCE.model_copy(
        update={"tenancy": TenancyConfig(tenants=("acme-bank", "shopco"), unknown="dead_letter")}
    ),
    clock=lambda: T0.timestamp(),
)

EXTREME_DATES = [
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59-14:00",
    "9999-12-31T23:59:59.999999Z",
    "9999-12-31T23:59:59Z",
    "2200-01-01T00:00:00Z",
    "0000-00-00T00:00:00Z",
    "2026-02-30T00:00:00Z",
    "2026-11-02T24:00:00Z",
    "2026-11-02T09:00:60Z",
    "2026-11-02T09:00:00+99:99",
    "2026-11-02T09:00:00+23:59",
    "2026-11-02t09:00:00z",
    "2026-11-02 09:00:00Z",
    "2026-11-02T09:00:00Z\n",
    "2026-11-02T09:00:00",
    "1764151200",
    "NaN",
    "Infinity",
    "-0",
    "",
]
NASTY_TEXT = ["\u200b", "\ufeff", "\u2060\u200c\u200d", " \t\n", "\x00", "\u3164", "NaN", "a"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(EXTREME_DATES + NASTY_TEXT)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
near_t0 = st.datetimes(
    min_value=(T0 - timedelta(days=10)).replace(tzinfo=None),
    max_value=(T0 + timedelta(days=3)).replace(tzinfo=None),
    timezones=st.timezones(),
).map(lambda at: at.isoformat())
any_instant = st.datetimes(timezones=st.timezones()).map(lambda at: at.isoformat())

FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "schema_version": st.sampled_from([1, 1.0, True, "1", [1], {"v": 1}, 2, 2**70, None]),
    "event_id": st.text(max_size=20) | st.sampled_from(NASTY_TEXT),
    "conversation_id": st.text(max_size=20) | st.sampled_from(NASTY_TEXT),
    "tenant_id": st.sampled_from(["acme-bank", "ShopCo ", " SHOPCO", "Nobody", "\u200b"])
    | st.text(max_size=12),
    "channel": st.sampled_from(["chat", "email", "Chat", "fax"]),
    "role": st.sampled_from(["customer", "agent", "system", "bot"]),
    "text": st.text(max_size=80) | st.sampled_from(NASTY_TEXT),
    "sent_at": near_t0 | any_instant | st.sampled_from(EXTREME_DATES),
    "tags": st.lists(
        st.text(max_size=8) | st.sampled_from(["Compliance ", "COMPLIANCE", "\u2060", "Straße"]),
        max_size=5,
    ),
    "metadata": st.dictionaries(st.text(max_size=8), json_values, max_size=3),
}


@st.composite
def event_payloads(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with some fields replaced: by plausible values or by any JSON at all."""
    data: dict[str, Any] = event_dict()
    changed = draw(st.lists(st.sampled_from(sorted(FIELD_VALUES)), max_size=3, unique=True))
    for name in changed:
        choice = draw(st.sampled_from(["vary", "vary", "vary", "hostile", "drop"]))
        if choice == "vary":
            data[name] = draw(FIELD_VALUES[name])
        elif choice == "hostile":
            data[name] = draw(json_values)
        elif choice == "drop":
            data.pop(name)
    if draw(st.integers(0, 9)) == 0:
        data.update(draw(st.dictionaries(st.text(max_size=10), json_values, max_size=2)))
    return data


timestamps = st.none() | st.just(T0_MS) | st.integers(min_value=-1, max_value=2**63 - 1)
keys = st.none() | st.binary(max_size=30) | st.just(b"c-1")


def _encoded(data: Any) -> bytes:
    """Stdlib json writes what orjson refuses to (NaN, Infinity, ints beyond 64 bits)."""
    return json.dumps(data, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _check_letter(letter: DeadLetter, record: RawRecord, limits: IngestLimits) -> None:
    value = record.value or b""
    key = base64.b64decode(letter.key_b64) if letter.key_b64 is not None else b""
    assert len(encode(letter)) + len(key) <= limits.dead_letter_max_bytes  # as the sink sends it
    assert (record.key or b"").startswith(key)
    assert letter.value_bytes == len(value)
    assert letter.value_sha256 == hashlib.sha256(value).hexdigest()
    kept = base64.b64decode(letter.value_b64 or "")
    assert value.startswith(kept)
    assert letter.truncated or kept == value


def _check_event(event: ConversationEvent, record: RawRecord, limits: IngestLimits) -> None:
    posix = event.sent_at.timestamp()
    assert datetime.fromtimestamp(posix, UTC) == event.sent_at.astimezone(UTC)
    reference = record.timestamp_ms / 1000 if record.timestamp_ms is not None else limits.clock()
    assert -limits.max_past_skew_s <= posix - reference <= limits.max_future_skew_s
    assert has_visible(event.text)
    assert has_visible(event.event_id) and has_visible(event.conversation_id)
    assert event.tenant_id == normalize_tenant_id(event.tenant_id)
    assert limits.governance.tenant_policy(event.tenant_id) is not None
    assert all(tag and tag == tag.strip().casefold() for tag in event.tags)
    assert len(set(event.tags)) == len(event.tags)
    assert decode(ConversationEvent, encode(event)) == event  # normalising is idempotent


def _check(record: RawRecord, limits: IngestLimits = LIMITS) -> ConversationEvent | DeadLetter:
    result = parse_event(record, limits)
    if isinstance(result, DeadLetter):
        _check_letter(result, record, limits)
    else:
        assert isinstance(result, ConversationEvent)
        _check_event(result, record, limits)
    return result


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.none() | st.binary(max_size=5000), key=keys, timestamp_ms=timestamps)
def test_arbitrary_bytes_never_raise(
    value: bytes | None, key: bytes | None, timestamp_ms: int | None
) -> None:
    _check(RawRecord(key, value, "events", 0, 0, timestamp_ms))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=json_values, timestamp_ms=timestamps)
def test_arbitrary_json_never_raises(data: Any, timestamp_ms: int | None) -> None:
    _check(RawRecord(None, _encoded(data), "events", 0, 0, timestamp_ms))


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(data=event_payloads(), key=keys, timestamp_ms=st.none() | st.just(T0_MS))
def test_mutated_events_are_accepted_only_when_every_stage_can_use_them(
    data: dict[str, Any], key: bytes | None, timestamp_ms: int | None
) -> None:
    key = key if key != b"c-1" else str(data.get("conversation_id", "")).strip().encode()
    _check(RawRecord(key, _encoded(data), "events", 0, 0, timestamp_ms))


@settings(max_examples=50, deadline=None)
@given(
    size=st.integers(min_value=4000, max_value=150_000),
    key=st.binary(max_size=20_000),
    cap=st.integers(min_value=4096, max_value=64 * 1024),
)
def test_large_records_make_dead_letters_that_fit(size: int, key: bytes, cap: int) -> None:
    limits = replace(LIMITS, max_bytes=1000, dead_letter_max_bytes=cap)
    letter = _check(RawRecord(key, b"\xc3\xa9" * (size // 2), "events", 0, 0, T0_MS), limits)
    assert isinstance(letter, DeadLetter) and letter.reason == "oversize"


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    fields=st.dictionaries(
        st.sampled_from(["schema_version", "occurred_at", "tenant_id", "tokens_in", "cost_usd"]),
        json_values | st.sampled_from(EXTREME_DATES) | any_instant,
        max_size=3,
    ),
    timestamp_ms=timestamps,
)
def test_cost_records_never_raise(fields: dict[str, Any], timestamp_ms: int | None) -> None:
    data = {
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
        **fields,
    }
    record = RawRecord(None, _encoded(data), "metrics", 0, 0, timestamp_ms)
    result = parse_record(record, CostRecord, "tenant_id", LIMITS, "occurred_at")
    if isinstance(result, DeadLetter):
        _check_letter(result, record, LIMITS)
    else:
        posix = result.occurred_at.timestamp()
        assert datetime.fromtimestamp(posix, UTC) == result.occurred_at.astimezone(UTC)
