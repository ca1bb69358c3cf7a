"""Ingest: raw Kafka bytes in, a validated ConversationEvent or a DeadLetter out.

Never raises on input. Each rejection carries a reason code from DeadLetterReason and a
detail a human can act on, plus the source coordinates so the record can be found and
re-driven after a fix. What passes is what every later stage can handle: exact JSON types,
visible text, an instant that converts to UTC and lies within the configured skew of the
record's Kafka timestamp, normalised tags and tenant, and a tenant the policy serves.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

import orjson
from pydantic import ValidationError

from splitpin.core.settings import Settings
from splitpin.schemas.dead_letter import DeadLetter, DeadLetterReason
from splitpin.schemas.events import ConversationEvent
from splitpin.schemas.wire import SUPPORTED_SCHEMA_VERSIONS, WireModel, encode

if TYPE_CHECKING:
    from splitpin.schemas.governance import GovernanceConfig

W = TypeVar("W", bound=WireModel)

_MAX_DETAIL_ERRORS = 5
_MAX_DETAIL_CHARS = 1000
"""A detail is for a human: the first errors say what to fix; more would only crowd out the
raw value under the dead-letter size limit."""
_MAX_NAME_CHARS = 200
_DEFAULT_DEAD_LETTER_MAX_BYTES: int = Settings.model_fields["dead_letter_max_bytes"].default


@dataclass(frozen=True, slots=True)
class RawRecord:
    """What ingest needs of a consumed Kafka record, independent of any client library."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class IngestLimits:
    """Everything the door checks against, taken from the settings once per flow."""

    max_bytes: int
    max_future_skew_s: float
    max_past_skew_s: float
    dead_letter_max_bytes: int
    governance: GovernanceConfig = field(repr=False)
    clock: Callable[[], float] = field(default=time.time, repr=False, compare=False)
    """Reference time for records without a Kafka timestamp (bytewax's TestingSource)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> IngestLimits:
        return cls(
            max_bytes=settings.max_event_bytes,
            max_future_skew_s=settings.max_future_skew_s,
            max_past_skew_s=settings.max_past_skew_s,
            dead_letter_max_bytes=settings.dead_letter_max_bytes,
            governance=settings.governance,
        )


def parse_event(raw: RawRecord, limits: IngestLimits) -> ConversationEvent | DeadLetter:
    """Validate one conversation event; its key, when present, must be its conversation,
    and its tenant must be known or served by the configured unknown-tenant policy."""
    result = parse_record(raw, ConversationEvent, "conversation_id", limits, "sent_at")
    if isinstance(result, DeadLetter):
        return result
    if limits.governance.tenant_policy(result.tenant_id) is None:
        detail = (
            f"tenant_id {result.tenant_id!r} is not configured and tenancy.unknown is dead_letter"
        )
        return dead_letter(raw, "unknown_tenant", detail, max_bytes=limits.dead_letter_max_bytes)
    return result


def parse_record(
    raw: RawRecord, model: type[W], key_field: str, limits: IngestLimits, time_field: str
) -> W | DeadLetter:
    """Validate one record; anything malformed becomes a DeadLetter with its reason.

    `time_field` names the record's event time, held to the skew limits.
    """
    cap = limits.dead_letter_max_bytes

    def reject(reason: DeadLetterReason, detail: str) -> DeadLetter:
        return dead_letter(raw, reason, detail, max_bytes=cap)

    value = raw.value or b""
    if len(value) > limits.max_bytes:
        return reject("oversize", f"value is {len(value)} bytes, limit {limits.max_bytes}")
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return reject("invalid_utf8", f"byte {exc.start}: {exc.reason}")
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return reject("not_json", str(exc))
    if not isinstance(data, dict):
        return reject("not_an_object", f"top-level JSON is {type(data).__name__}")
    if "schema_version" not in data:
        return reject("schema_violation", "schema_version: field required")
    version = data["schema_version"]
    # Type first: a list or object is unhashable, and 1.0 or true would compare equal to 1.
    if type(version) is not int:
        return reject(
            "schema_violation",
            f"schema_version: must be a JSON integer, got {type(version).__name__}",
        )
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        supported = sorted(SUPPORTED_SCHEMA_VERSIONS)
        return reject("unknown_schema_version", f"schema_version {version}, supported {supported}")
    try:
        record = model.model_validate(data)
    except ValidationError as exc:
        return reject("schema_violation", _summarize(exc))
    expected_key = str(getattr(record, key_field))
    if raw.key is not None and raw.key != expected_key.encode():
        return reject("key_mismatch", f"key {raw.key[:80]!r} != {key_field} {expected_key!r}")
    skew = _skew_violation(getattr(record, time_field), time_field, raw.timestamp_ms, limits)
    if skew is not None:
        return reject("event_time_skew", skew)
    return record


def _skew_violation(
    at: datetime, name: str, timestamp_ms: int | None, limits: IngestLimits
) -> str | None:
    """Why `at` is too far from the record's Kafka timestamp (or now, without one), else None.

    Event time drives budget and cost windows; bounding it here keeps a producer's clock
    (or a forged year 2200) from freezing or jumping them.
    """
    if timestamp_ms is not None and timestamp_ms >= 0:
        reference_s, against = timestamp_ms / 1000, "the record's Kafka timestamp"
    else:  # librdkafka reports -1 when a record carries no timestamp
        reference_s, against = limits.clock(), "the wall clock"
    ahead_s = at.timestamp() - reference_s
    if ahead_s > limits.max_future_skew_s:
        limit, direction = limits.max_future_skew_s, "after"
    elif -ahead_s > limits.max_past_skew_s:
        limit, direction = limits.max_past_skew_s, "before"
    else:
        return None
    return (
        f"{name} {at.isoformat()} is {abs(ahead_s):.0f}s {direction} {against} "
        f"{_instant(reference_s)} (limit {limit:.0f}s)"
    )


def _instant(posix_s: float) -> str:
    try:
        return datetime.fromtimestamp(posix_s, UTC).isoformat()
    except (OverflowError, ValueError, OSError):
        return f"{posix_s:.3f} (POSIX seconds)"


def dead_letter(
    raw: RawRecord,
    reason: DeadLetterReason,
    detail: str,
    *,
    max_bytes: int = _DEFAULT_DEAD_LETTER_MAX_BYTES,
    step: str | None = None,
    error_type: str | None = None,
) -> DeadLetter:
    """The one constructor of dead letters: encoded, plus the key the sink sends it under
    (the original key, or its kept prefix), it never exceeds `max_bytes`.

    The raw key and value are kept whole when they fit; otherwise as long a prefix of each
    as fits (key first), with `truncated` set. `value_bytes` and `value_sha256` always
    describe the whole original value, so a truncated record can still be matched.
    """
    value = raw.value or b""
    letter = DeadLetter(
        reason=reason,
        detail=_clip(detail, _MAX_DETAIL_CHARS),
        source_topic=raw.topic,
        source_partition=raw.partition,
        source_offset=raw.offset,
        source_timestamp_ms=raw.timestamp_ms,
        key_b64=_b64(raw.key),
        value_b64=_b64(raw.value),
        value_bytes=len(value),
        value_sha256=hashlib.sha256(value).hexdigest(),
        step=None if step is None else _clip(step, _MAX_NAME_CHARS),
        error_type=None if error_type is None else _clip(error_type, _MAX_NAME_CHARS),
    )
    if len(encode(letter)) + len(raw.key or b"") <= max_bytes:
        return letter
    return _truncated(letter, raw, max_bytes)


def _truncated(letter: DeadLetter, raw: RawRecord, max_bytes: int) -> DeadLetter:
    """Shrink `letter` under `max_bytes`: the detail to what leaves room, then the raw bytes."""
    skeleton = letter.model_copy(
        update={
            "key_b64": None if raw.key is None else "",
            "value_b64": None if raw.value is None else "",
            "truncated": True,
        }
    )
    room = max_bytes - len(encode(skeleton))
    if room < 0:  # only a pathological detail (every char escaped) gets here
        detail = _clip(letter.detail.encode("ascii", "backslashreplace").decode(), 200)
        skeleton = skeleton.model_copy(update={"detail": detail})
        room = max_bytes - len(encode(skeleton))
    # base64 is ASCII and never escaped in JSON: n bytes of raw data take 4 * ceil(n / 3).
    # The key gets what the whole value leaves, and at least half the room; it costs its
    # base64 in the letter plus itself as the record's key (7 bytes per 3 kept).
    key_room = max(room // 2, room - len(letter.value_b64 or ""))
    key_keep = None if raw.key is None else raw.key[: max(0, key_room) // 7 * 3]
    room -= len(_b64(key_keep) or "") + len(key_keep or b"")
    value_keep = None if raw.value is None else raw.value[: max(0, room) // 4 * 3]
    return skeleton.model_copy(
        update={
            "key_b64": None if key_keep is None else _b64(key_keep),
            "value_b64": None if value_keep is None else _b64(value_keep),
        }
    )


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text)} chars)"


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _summarize(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    parts = [
        f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
        for err in errors[:_MAX_DETAIL_ERRORS]
    ]
    if len(errors) > _MAX_DETAIL_ERRORS:
        parts.append(f"(+{len(errors) - _MAX_DETAIL_ERRORS} more)")
    return "; ".join(parts)
