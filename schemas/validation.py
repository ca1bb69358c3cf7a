"""`replies.validation-failures`: a reply (or request) that was not delivered, and why."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from splitpin.schemas.wire import WireModel


class ValidationFailure(WireModel):
    failure_id: str = Field(description="event_id plus the check: stable across replays.")
    event_id: str
    conversation_id: str
    tenant_id: str
    check: str = Field(description="Which check failed, e.g. citation-sources, context-window.")
    error: str = Field(description="e.g. MissingReference, ContextOverflow.")
    detail: str
    model: str | None = None
    action: Literal["withheld", "rerouted", "replaced", "refused", "released_unverified"]
