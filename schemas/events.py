"""The input topic: one message of a support conversation."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, JsonValue, StringConstraints, field_validator

from schemas.wire import WireModel

Channel = Literal["chat", "email"]
SenderRole = Literal["customer", "agent", "system"]
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=64, to_lower=True)]


class ConversationEvent(WireModel):
    """One chat message or email. Keyed on Kafka by `conversation_id`."""

    event_id: Identifier = Field(description="Idempotency key: a retried event reuses it.")
    conversation_id: Identifier
    tenant_id: Identifier
    channel: Channel
    role: SenderRole
    text: str = Field(min_length=1)
    sent_at: AwareDatetime = Field(description="When the sender sent it; must carry a timezone.")
    tags: tuple[Tag, ...] = Field(default=(), description="e.g. `compliance` pins the route.")
    metadata: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str) -> str:
        if not value.strip():
            msg = "text is blank"
            raise ValueError(msg)
        return value
