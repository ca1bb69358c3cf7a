"""Routing rules (the incident's fix, before the classifier lands).

Only customer turns are routed: agent and system turns update the conversation's state
but nobody expects a model to answer them.
"""

from __future__ import annotations

from operators.conversation_state import TurnObservation
from schemas.decisions import ModelRole, RoutingDecision, Tier
from schemas.governance import GovernanceConfig


def decide(observation: TurnObservation, governance: GovernanceConfig) -> RoutingDecision | None:
    """The role that should answer this turn, with every reason that led there."""
    event = observation.event
    if event.role != "customer":
        return None
    routing = governance.routing
    size = observation.tokens.conversation
    tier: Tier
    role: ModelRole
    if size < routing.fast_max_tokens:
        tier, role = "bounded", "fast"
        comparison = "<"
    else:
        tier, role = "extended", "long_context"
        comparison = ">="
    reasons = [
        f"tokens.conversation={size} {comparison} fast_max_tokens={routing.fast_max_tokens}: "
        f"{tier} -> {role}"
    ]
    pinned_by = next((tag for tag in event.tags if tag in routing.tag_pins), None)
    if pinned_by is not None:
        role = routing.tag_pins[pinned_by]
        reasons.append(f"tag:{pinned_by} pins role {role} regardless of size")
    if observation.new_session and observation.turn_index == 0:
        reasons.append("new session")
    model = governance.roles[role]
    return RoutingDecision(
        decision_id=event.event_id,
        event_id=event.event_id,
        conversation_id=event.conversation_id,
        tenant_id=event.tenant_id,
        channel=event.channel,
        sent_at=event.sent_at,
        session_id=observation.session_id,
        turn_index=observation.turn_index,
        tier=tier,
        role=role,
        model=model.model,
        model_version=model.pinned_id,
        reasons=tuple(reasons),
        tokens=observation.tokens,
    )
