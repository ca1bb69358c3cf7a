"""`conversations.dead-letter`: an input that could not be processed, kept whole."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from splitpin.schemas.wire import WireModel

DeadLetterReason = Literal[
    "oversize",
    "invalid_utf8",
    "not_json",
    "not_an_object",
    "unknown_schema_version",
    "schema_violation",
    "key_mismatch",
    "event_time_skew",
    "unknown_tenant",
    "processing_error",
]


class DeadLetter(WireModel):
    """Raw bytes are base64 so any payload survives JSON; the source coordinates locate it."""

    reason: DeadLetterReason
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    source_timestamp_ms: int | None = Field(default=None, description="Kafka record timestamp.")
    key_b64: str | None = None
    value_b64: str | None = None
    value_bytes: int = Field(ge=0, description="Size of the original value.")
    value_sha256: str | None = Field(
        default=None, description="sha256 (hex) of the original value, whole."
    )
    truncated: bool = Field(
        default=False,
        description="key_b64/value_b64 hold only a prefix: the whole record did not fit under "
        "the dead-letter size limit.",
    )
    step: str | None = Field(
        default=None, description="processing_error: the flow step whose logic raised."
    )
    error_type: str | None = Field(
        default=None, description="processing_error: the exception's type name."
    )
