"""`routing.decisions`: which role answers an event, and why."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from splitpin.schemas.events import Channel
from splitpin.schemas.wire import WireModel

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


FeatureValue = float | int | str | bool


class RoutingDecision(WireModel):
    """Which role answers an event, with every feature and reason that led there.

    Deterministic in its inputs (events, and usage reports for the budget): a replay after
    a crash produces identical bytes. Carrying the features lets thresholds be recalibrated
    by replaying this topic.
    """

    decision_id: str = Field(description="Equal to event_id: one decision per event.")
    event_id: str
    conversation_id: str
    tenant_id: str
    tenant_policy: Literal["configured", "default"] = Field(
        description="configured: the tenant is named in the governance config; default: an "
        "unknown tenant served under budgets.default (tenancy.unknown: default)."
    )
    channel: Channel
    sent_at: AwareDatetime
    session_id: str = Field(description="conversation_id plus the session's first event_id.")
    turn_index: int = Field(ge=0, description="0-based position of this turn in its session.")
    action: Literal["dispatch", "refuse"] = Field(
        description="refuse: no model is called (context overflow, budget spent)."
    )
    tier: Tier
    intent: str | None = None
    confidence: float | None = Field(default=None, ge=0, le=1)
    role: ModelRole
    model: str
    model_version: str
    pinned: bool = Field(default=False, description="A tag or compliance intent fixed the role.")
    reasons: tuple[str, ...]
    tokens: TokenCounts
    prompt_tokens: int | None = Field(
        default=None, ge=0, description="The prompt the role would receive, in its tokenizer."
    )
    compacted_turns: int = Field(
        default=0, ge=0, description="Older turns the prompt carries only as the summary."
    )
    cache_hit_of: str | None = Field(
        default=None, description="event_id whose decision was reused (short-circuit cache)."
    )
    estimated_cost_usd: float = Field(
        default=0.0,
        ge=0,
        description="The budget reservation: the most every call this event may make can "
        "cost (each at its counted input plus margin and its capped max_tokens, priced at "
        "the dearest role of its fallback chain). 0 when refused.",
    )
    features: dict[str, FeatureValue] = Field(default_factory=dict)
    config_version: str | None = Field(
        default=None,
        description="Governance version id (GovernanceConfig.version_id) that produced it.",
    )
