"""`conversations.replies`: revisions of one reply share its reply_id."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from splitpin.schemas.decisions import ModelRole
from splitpin.schemas.events import Channel
from splitpin.schemas.wire import WireModel


class Citation(BaseModel):
    """A document the reply relies on, with the source it was retrieved from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    doc_id: str
    source: str = Field(description="Where the document came from, e.g. a KB title or URI.")


class Reply(WireModel):
    reply_id: str = Field(description="The event_id this reply answers.")
    revision: int = Field(
        ge=0,
        description="0 for the preliminary, 1 for the final (also when no preliminary went "
        "out), so reply_id + revision names one record across recoveries.",
    )
    kind: Literal["preliminary", "final"]
    status: Literal["verified", "unverified", "corrected", "withheld", "refused", "clarify"]
    conversation_id: str
    tenant_id: str
    channel: Channel
    text: str
    citations: tuple[Citation, ...] = ()
    model: str
    model_version: str
    route: ModelRole
    confidence: float = Field(ge=0, le=1)
    tokens_in: int = Field(ge=0)
    tokens_out: int = Field(ge=0)
    cost_usd: float = Field(ge=0)
    latency_ms: float = Field(ge=0, description="From the event's sent_at to emission.")
    supersedes: int | None = Field(
        default=None, description="The revision this one replaces (a final after a preliminary)."
    )
    escalated: bool = Field(
        default=False, description="The fast pass was not trusted (low confidence or failed)."
    )
    calls: int = Field(default=1, ge=0, description="Model calls behind this revision.")
    emulated: bool = Field(
        default=False,
        description="A call behind it was answered by the local fleet: its price (and, with "
        "emulation on, its latency) imitates the configured model's.",
    )
    config_version: str | None = Field(
        default=None,
        description="Governance version id (GovernanceConfig.version_id) that produced it.",
    )
