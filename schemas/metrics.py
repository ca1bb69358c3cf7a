"""`routing.metrics` (one record per model call) and `routing.metrics.windowed`."""

from __future__ import annotations

from pydantic import AwareDatetime, Field

from splitpin.schemas.decisions import ModelRole
from splitpin.schemas.wire import EventTime, WireModel


class CostRecord(WireModel):
    record_id: str = Field(description="event_id plus the call's ordinal: stable across replays.")
    event_id: str
    tenant_id: str
    role: ModelRole
    model: str
    model_version: str
    tokens_in: int = Field(ge=0)
    tokens_out: int = Field(ge=0)
    cost_usd: float = Field(ge=0)
    latency_ms: float = Field(ge=0)
    occurred_at: EventTime = Field(
        description="Event time of the call: the answered event's sent_at (windows use it)."
    )
    cache_hit: bool = False
    escalated: bool = False
    shadow: bool = False
    emulated: bool = Field(default=False, description="Latency/price emulated by the local fleet.")
    estimated: bool = Field(
        default=False,
        description=(
            "A call cancelled after it started (a hedge's loser): the provider may have billed"
            " the prompt it read, so tokens_in is splitpin's count of it from above and"
            " tokens_out 0 (what it generated before the cancel is not known)."
        ),
    )
    last_call: bool = Field(
        default=False,
        description=(
            "The event's answering job has ended: no call follows. The budget gate releases"
            " the event's reservations for calls that did not happen (or failed)."
        ),
    )
    job_calls: tuple[str, ...] = Field(
        default=(),
        max_length=8,
        description=(
            "With last_call: the call ids (purposes) of every CostRecord of the job, this"
            " one included. Their reservations stay until each record has arrived."
        ),
    )
    config_version: str | None = Field(
        default=None,
        description="Governance version id (GovernanceConfig.version_id) that produced it.",
    )


class WindowedCost(WireModel):
    tenant_id: str
    model: str
    window_start: AwareDatetime
    window_end: AwareDatetime
    calls: int = Field(ge=0)
    tokens_in: int = Field(ge=0)
    tokens_out: int = Field(ge=0)
    cost_usd: float = Field(ge=0)
    latency_p50_ms: float = Field(ge=0)
    latency_p95_ms: float = Field(ge=0)
    escalations: int = Field(ge=0)
    late_records: int = Field(ge=0, default=0)
