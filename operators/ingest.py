"""Ingest: raw Kafka bytes in, a validated ConversationEvent or a DeadLetter out.

Never raises on input. Each rejection carries a reason code from DeadLetterReason and a
detail a human can act on, plus the source coordinates so the record can be found and
re-driven after a fix.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import TypeVar

import orjson
from pydantic import ValidationError

from schemas.dead_letter import DeadLetter, DeadLetterReason
from schemas.events import ConversationEvent
from schemas.wire import SUPPORTED_SCHEMA_VERSIONS, WireModel

W = TypeVar("W", bound=WireModel)

_MAX_DETAIL_ERRORS = 5


@dataclass(frozen=True, slots=True)
class RawRecord:
    """What ingest needs of a consumed Kafka record, independent of any client library."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None


def parse_event(raw: RawRecord, max_bytes: int) -> ConversationEvent | DeadLetter:
    """Validate one conversation event; its key, when present, must be its conversation."""
    return parse_record(raw, ConversationEvent, "conversation_id", max_bytes)


def parse_record(raw: RawRecord, model: type[W], key_field: str, max_bytes: int) -> W | DeadLetter:
    """Validate one record; anything malformed becomes a DeadLetter with its reason."""
    value = raw.value or b""
    if len(value) > max_bytes:
        return dead_letter(raw, "oversize", f"value is {len(value)} bytes, limit {max_bytes}")
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return dead_letter(raw, "invalid_utf8", f"byte {exc.start}: {exc.reason}")
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return dead_letter(raw, "not_json", str(exc))
    if not isinstance(data, dict):
        return dead_letter(raw, "not_an_object", f"top-level JSON is {type(data).__name__}")
    if "schema_version" not in data:
        return dead_letter(raw, "schema_violation", "schema_version: field required")
    version = data["schema_version"]
    if version not in SUPPORTED_SCHEMA_VERSIONS or isinstance(version, bool):
        supported = sorted(SUPPORTED_SCHEMA_VERSIONS)
        return dead_letter(
            raw, "unknown_schema_version", f"schema_version {version!r}, supported {supported}"
        )
    try:
        record = model.model_validate(data)
    except ValidationError as exc:
        return dead_letter(raw, "schema_violation", _summarize(exc))
    expected_key = str(getattr(record, key_field))
    if raw.key is not None and raw.key != expected_key.encode():
        detail = f"key {raw.key[:80]!r} != {key_field} {expected_key!r}"
        return dead_letter(raw, "key_mismatch", detail)
    return record


def dead_letter(raw: RawRecord, reason: DeadLetterReason, detail: str) -> DeadLetter:
    return DeadLetter(
        reason=reason,
        detail=detail,
        source_topic=raw.topic,
        source_partition=raw.partition,
        source_offset=raw.offset,
        source_timestamp_ms=raw.timestamp_ms,
        key_b64=_b64(raw.key),
        value_b64=_b64(raw.value),
        value_bytes=len(raw.value or b""),
    )


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
