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
