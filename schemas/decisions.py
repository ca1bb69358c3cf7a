"""`routing.decisions`: which role answers an event, and why."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.events import Channel
from schemas.wire import WireModel

Tier = Literal["trivial", "bounded", "extended"]
ModelRole = Literal["fast", "long_context", "compliance", "verifier", "summarizer"]


class TokenCounts(BaseModel):
    """Token counts in the routing encoding, so thresholds can be recalibrated by replay."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    encoding: str
    turn: int = Field(ge=0, description="This event's text.")
    conversation: int = Field(ge=0, description="Every turn of the current session.")
    window: int = Field(ge=0, description="Turns kept verbatim in the recent window.")
    compacted: int = Field(ge=0, description="Older turns of the session outside the window.")


class RoutingDecision(WireModel):
    """Deterministic in its inputs: a replay after a crash produces identical bytes."""

    decision_id: str = Field(description="Equal to event_id: one decision per event.")
    event_id: str
    conversation_id: str
    tenant_id: str
    channel: Channel
    sent_at: AwareDatetime
    session_id: str = Field(description="conversation_id plus the session's first event_id.")
    turn_index: int = Field(ge=0, description="0-based position of this turn in its session.")
    tier: Tier
    intent: str | None = None
    confidence: float | None = Field(default=None, ge=0, le=1)
    role: ModelRole
    model: str
    model_version: str
    reasons: tuple[str, ...]
    tokens: TokenCounts
