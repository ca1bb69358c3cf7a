"""`replies.audit`: the live, measured accuracy of the fast path.

Under `replies.verify: audit`, a deterministic share of the fast answers confident enough
to skip the verifier is verified anyway; each such event writes one AuditSample saying
whether the verifier cited the same sources as the fast answer. Key: the conversation id;
de-duplicate on `event_id` (a crash recovery may re-emit one).
"""

from __future__ import annotations

from pydantic import Field

from splitpin.schemas.decisions import ModelRole
from splitpin.schemas.events import Channel
from splitpin.schemas.wire import WireModel


class AuditSample(WireModel):
    """One audited confident fast answer, compared with the verifier's reading."""

    event_id: str
    conversation_id: str
    tenant_id: str
    channel: Channel
    fast_role: ModelRole
    fast_model: str = Field(description="The model (version) that gave the fast answer.")
    verifier_model: str = Field(description="The model (version) that verified it.")
    agreed: bool = Field(description="The verifier cites exactly the fast answer's sources.")
    fast_doc_ids: tuple[str, ...] = ()
    verifier_doc_ids: tuple[str, ...] = ()
    fast_confidence: float = Field(ge=0, le=1, description="The fast role's raw confidence.")
    fast_probability: float = Field(
        ge=0, le=1, description="Its calibrated probability of being right (the policy's input)."
    )
    config_version: str | None = Field(
        default=None, description="Governance version id that made the audit decision."
    )
