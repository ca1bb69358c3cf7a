"""Budget gate, keyed by tenant: reserve before dispatch, reconcile with actual usage after.

All of a tenant's spend lives in one keyed state, so requests are admitted one at a time:
no concurrent burst can overspend. A request is reserved at its estimated cost (prompt
tokens plus the configured expected output, at the role's prices); when the tenant's
window is spent it is downgraded to the cheapest allowed role that fits and is affordable,
or refused with the reason. CostRecords from `routing.metrics` (actual usage) replace
reservations as they arrive.

Budget windows are measured in event time (`sent_at`), so a replay admits the same way,
given the same usage reports in the same order.
"""

from __future__ import annotations

import math
import pickle
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from bytewax import operators as op
from bytewax.operators import KeyedStream, StatefulLogic

from operators.answering import Dispatch
from operators.context_guard import PromptPlan
from operators.routing import RoutePlan
from providers.base import Message
from schemas.decisions import RoutingDecision
from schemas.governance import GovernanceConfig
from schemas.metrics import CostRecord
from schemas.validation import ValidationFailure
from splitpin import metrics

MAX_OPEN_RESERVATIONS = 10_000
"""Reservations waiting for usage; older ones are forgotten (their estimate stays spent)."""


@dataclass
class TenantLedger:
    window_start: datetime | None = None
    spent_usd: float = 0.0
    """Reserved estimates plus reconciled actuals, in the current window."""
    open_reservations: OrderedDict[str, float] = field(default_factory=OrderedDict)
    reconciled: OrderedDict[str, None] = field(default_factory=OrderedDict)
    """record_ids already applied: a CostRecord re-emitted after a crash is counted once."""


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Literal["allow", "downgrade", "refuse"]
    plan: PromptPlan | None
    cost_usd: float
    reason: str | None = None


@dataclass
class BudgetGate:
    governance: GovernanceConfig

    def admit(self, ledger: TenantLedger, routed: RoutePlan) -> Verdict:
        event = routed.observation.event
        budgets = self.governance.budgets
        tenant = budgets.for_tenant(event.tenant_id)
        self._roll(ledger, event.sent_at)
        remaining = tenant.limit_usd - ledger.spent_usd
        if routed.plan is None:
            return Verdict("refuse", None, 0.0, "context overflow: nothing dispatched")

        replies = self.governance.replies
        verified = (
            not routed.choice.pinned
            and (routed.choice.tier != "trivial" or replies.verify_trivial)
            and tenant.allows(replies.verifier_role)
        )

        def cost(plan: PromptPlan) -> float:
            return self.estimate(plan, verified=verified)

        allowed = tenant.allowed_roles
        chosen = routed.plan
        candidates = [p for p in routed.alternatives if allowed is None or p.role in allowed]
        chosen_allowed = allowed is None or chosen.role in allowed
        if chosen_allowed and cost(chosen) <= remaining:
            return self._reserve(ledger, event.event_id, Verdict("allow", chosen, cost(chosen)))

        affordable = sorted(
            (p for p in candidates if cost(p) <= remaining), key=lambda p: (cost(p), p.role)
        )
        pinned = routed.choice.pinned
        budget_note = (
            f"budget: {event.tenant_id} has ${remaining:.6f} of ${tenant.limit_usd:.2f} left "
            f"in the window from {ledger.window_start:%Y-%m-%dT%H:%M}Z"
        )
        if chosen_allowed:
            why = f"{budget_note}; {chosen.role} would cost ${cost(chosen):.6f}"
        else:
            why = f"role {chosen.role} is not allowed for tenant {event.tenant_id}"
        if affordable and not pinned:
            best = affordable[0]
            verdict = Verdict("downgrade", best, cost(best), f"{why}; downgraded to {best.role}")
            return self._reserve(ledger, event.event_id, verdict)
        if pinned:
            return Verdict("refuse", None, 0.0, f"{why}; the role is pinned")
        if not chosen_allowed:
            why = f"{why}; {budget_note}"
        return Verdict("refuse", None, 0.0, f"{why}; no allowed role is affordable")

    def estimate(self, plan: PromptPlan, *, verified: bool) -> float:
        """The answer at the expected length, plus its verification when one follows."""
        budgets = self.governance.budgets
        role = self.governance.roles[plan.role]
        estimate = role.cost_usd(plan.prompt_tokens, budgets.expected_output_tokens)
        if verified:
            verifier = self.governance.roles[self.governance.replies.verifier_role]
            estimate += verifier.cost_usd(plan.prompt_tokens, budgets.expected_verify_output_tokens)
        return estimate

    def reconcile(self, ledger: TenantLedger, record: CostRecord) -> None:
        """Actual usage replaces the reservation; further calls for the event add to it."""
        if record.record_id in ledger.reconciled:
            return
        ledger.reconciled[record.record_id] = None
        while len(ledger.reconciled) > MAX_OPEN_RESERVATIONS:
            ledger.reconciled.popitem(last=False)
        reserved = ledger.open_reservations.pop(record.event_id, 0.0)
        ledger.spent_usd += record.cost_usd - reserved

    def _reserve(self, ledger: TenantLedger, event_id: str, verdict: Verdict) -> Verdict:
        ledger.spent_usd += verdict.cost_usd
        ledger.open_reservations[event_id] = verdict.cost_usd
        while len(ledger.open_reservations) > MAX_OPEN_RESERVATIONS:
            ledger.open_reservations.popitem(last=False)
        return verdict

    def _roll(self, ledger: TenantLedger, sent_at: datetime) -> None:
        window_s = self.governance.budgets.window_s
        start_s = math.floor(sent_at.timestamp() / window_s) * window_s
        start = datetime.fromtimestamp(start_s, tz=UTC)
        if ledger.window_start is None or start > ledger.window_start:
            ledger.window_start = start
            ledger.spent_usd = 0.0
            ledger.open_reservations.clear()


def build_decision(
    routed: RoutePlan, verdict: Verdict, governance: GovernanceConfig
) -> list[RoutingDecision | ValidationFailure]:
    """The decision record (and a failure record for an overflow) for one routed turn."""
    obs = routed.observation
    event = obs.event
    choice = routed.choice
    plan = verdict.plan
    role_name = plan.role if plan is not None else choice.role
    role = governance.roles[role_name]
    reasons = [*choice.reasons, *routed.reasons]
    if routed.cache_hit_of is not None:
        reasons.append(f"cache: same question as {routed.cache_hit_of}, decision reused")
    if verdict.reason is not None:
        reasons.append(verdict.reason)
    decision = RoutingDecision(
        decision_id=event.event_id,
        event_id=event.event_id,
        conversation_id=event.conversation_id,
        tenant_id=event.tenant_id,
        channel=event.channel,
        sent_at=event.sent_at,
        session_id=obs.session_id,
        turn_index=obs.turn_index,
        action="refuse" if verdict.action == "refuse" else "dispatch",
        tier=choice.tier,
        intent=choice.intent,
        confidence=choice.confidence,
        role=role_name,
        model=role.model,
        model_version=role.pinned_id,
        pinned=choice.pinned,
        reasons=tuple(reasons),
        tokens=obs.tokens,
        prompt_tokens=plan.prompt_tokens if plan is not None else None,
        compacted_turns=(
            plan.compacted_turns + routed.earlier_summarised_turns if plan is not None else 0
        ),
        cache_hit_of=routed.cache_hit_of,
        estimated_cost_usd=round(verdict.cost_usd, 9),
        features=choice.features,
    )
    out: list[RoutingDecision | ValidationFailure] = [decision]
    if routed.overflow is not None:
        overflow = routed.overflow
        out.append(
            ValidationFailure(
                failure_id=f"{event.event_id}:context-window",
                event_id=event.event_id,
                conversation_id=event.conversation_id,
                tenant_id=event.tenant_id,
                check="context-window",
                error="ContextOverflow",
                detail=(
                    f"tokens={overflow.needed_tokens} limit={overflow.limit} for role "
                    f"{overflow.role}: the newest message alone does not fit; not dispatched"
                ),
                model=governance.roles[overflow.role].pinned_id,
                action="refused",
            )
        )
    return out


# --- Bytewax wrapper -------------------------------------------------------------------

BudgetInput = RoutePlan | CostRecord
BudgetOutput = RoutingDecision | ValidationFailure | Dispatch


_MESSAGE_ROLES: dict[str, Literal["user", "assistant"]] = {
    "customer": "user",
    "agent": "assistant",
    "system": "user",
}


def build_dispatch(
    routed: RoutePlan, decision: RoutingDecision, plan: PromptPlan | None
) -> Dispatch:
    """What the model stage needs besides the decision: the planned prompt's turns."""
    included = plan.included_turns if plan is not None else 0
    turns = routed.window[len(routed.window) - included :] if included else ()
    messages = tuple(
        Message(
            role=_MESSAGE_ROLES.get(turn.role, "user"),
            content=turn.text if turn.role != "system" else f"[system] {turn.text}",
        )
        for turn in turns
    )
    summary = plan.summary if plan is not None else ""
    return Dispatch(decision, messages, summary, dispatched_at=time.time())


class _TenantLogic(StatefulLogic[BudgetInput, BudgetOutput, bytes]):
    def __init__(self, gate: BudgetGate, resume: bytes | None) -> None:
        self._gate = gate
        self._ledger = TenantLedger() if resume is None else pickle.loads(resume)

    def on_item(self, value: BudgetInput) -> tuple[list[BudgetOutput], bool]:
        if isinstance(value, CostRecord):
            self._gate.reconcile(self._ledger, value)
            metrics.BUDGET_RECONCILED.inc()
            self._report_remaining(value.tenant_id)
            return [], StatefulLogic.RETAIN
        verdict = self._gate.admit(self._ledger, value)
        tenant_id = value.observation.event.tenant_id
        # Remaining budget depends on how tenants' events from different partitions
        # interleave, which a replay does not reproduce: a gauge, not a decision field.
        self._report_remaining(tenant_id)
        out: list[BudgetOutput] = list(build_decision(value, verdict, self._gate.governance))
        decision = out[0]
        assert isinstance(decision, RoutingDecision)
        out.append(build_dispatch(value, decision, verdict.plan))
        metrics.count(metrics.BUDGET_VERDICTS, verdict.action)
        if value.overflow is not None:
            metrics.OVERFLOWS_PREVENTED.inc()
        return out, StatefulLogic.RETAIN

    def _report_remaining(self, tenant_id: str) -> None:
        limit = self._gate.governance.budgets.for_tenant(tenant_id).limit_usd
        metrics.BUDGET_REMAINING.labels(tenant_id).set(limit - self._ledger.spent_usd)

    def snapshot(self) -> bytes:
        return pickle.dumps(self._ledger, protocol=pickle.HIGHEST_PROTOCOL)


def gate_budgets(
    step_id: str, items: KeyedStream[BudgetInput], gate: BudgetGate
) -> KeyedStream[BudgetOutput]:
    """Keyed by tenant_id upstream: RoutePlans to admit and CostRecords to reconcile."""

    def build(resume: bytes | None) -> _TenantLogic:
        return _TenantLogic(gate, resume)

    return op.stateful(step_id, items, build)
