"""The input topic: one message of a support conversation."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, JsonValue, StringConstraints, field_validator

from splitpin.schemas.normalize import normalize_tag, normalize_tenant_id
from splitpin.schemas.wire import (
    VISIBLE_PATTERN,
    EventTime,
    JsonPattern,
    VisibleText,
    WireModel,
    require_visible,
)

Channel = Literal["chat", "email"]
SenderRole = Literal["customer", "agent", "system"]
Identifier = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200, strip_whitespace=True),
    AfterValidator(require_visible),
    JsonPattern(VISIBLE_PATTERN),
]


TenantId = Annotated[Identifier, AfterValidator(normalize_tenant_id)]
"""Matched without case or surrounding space: `ShopCo ` is tenant `shopco` everywhere."""
Tag = Annotated[
    str,
    AfterValidator(normalize_tag),
    StringConstraints(min_length=1, max_length=64),
    AfterValidator(require_visible),
    JsonPattern(VISIBLE_PATTERN),
]
"""Stripped and case-folded, so `"Compliance "` pins exactly like `compliance`."""


class ConversationEvent(WireModel):
    """One chat message or email. Keyed on Kafka by `conversation_id`."""

    event_id: Identifier = Field(description="Idempotency key: a retried event reuses it.")
    conversation_id: Identifier
    tenant_id: TenantId = Field(description="Case and surrounding space are ignored.")
    channel: Channel
    role: SenderRole
    text: VisibleText = Field(
        min_length=1, description="Must hold a visible character (not only spaces or U+200B)."
    )
    sent_at: EventTime = Field(
        description="When the sender sent it: an RFC 3339 date-time with a timezone, within "
        "the configured skew of the record's Kafka timestamp."
    )
    tags: tuple[Tag, ...] = Field(
        default=(),
        description="Case and surrounding space are ignored; e.g. `compliance` pins the route.",
    )
    metadata: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("tags")
    @classmethod
    def _tags_unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """After normalising, `Compliance` and `compliance ` are one tag; first one wins."""
        return tuple(dict.fromkeys(value))
