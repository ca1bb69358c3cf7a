"""Budget gate: reserve, downgrade, refuse, reconcile; a burst never overspends."""

from __future__ import annotations

from operators.budget import BudgetGate, TenantLedger, build_decision
from schemas.decisions import RoutingDecision
from schemas.metrics import CostRecord
from tests.routing_helpers import Conversation, classification, governance


def _gate(limit: float, **tenant: object):  # type: ignore[no-untyped-def]
    gov = governance(
        budgets={"tenants": {"acme-bank": {"limit_usd": limit, **tenant}}, "window_s": 3600}
    )
    return gov, BudgetGate(gov)


def test_requests_are_reserved_until_the_budget_is_spent() -> None:
    gov, gate = _gate(0.01)
    ledger = TenantLedger()
    conversation = Conversation(gov)
    verdicts = [gate.admit(ledger, conversation.say(f"question {i}")) for i in range(20)]  # type: ignore[arg-type]
    actions = [v.action for v in verdicts]
    assert "refuse" in actions
    allowed = [v for v in verdicts if v.action != "refuse"]
    assert sum(v.cost_usd for v in allowed) <= 0.01
    refused = verdicts[actions.index("refuse")]
    assert refused.reason is not None and refused.reason.startswith("budget: acme-bank has $")
    assert refused.reason.endswith("no allowed role is affordable")


def test_a_burst_cannot_overspend() -> None:
    gov, gate = _gate(0.02)
    ledger = TenantLedger()
    plans = [Conversation(gov, f"c-{i}").say("help with my transfer " * 20) for i in range(200)]
    verdicts = [gate.admit(ledger, plan) for plan in plans]  # type: ignore[arg-type]
    assert sum(v.cost_usd for v in verdicts if v.action != "refuse") <= 0.02 + 1e-12
    assert ledger.spent_usd <= 0.02 + 1e-12


def test_over_budget_downgrades_to_the_cheapest_role_that_fits() -> None:
    gov, gate = _gate(1.0)
    conversation = Conversation(gov)
    plan = conversation.say("statement line " * 1500)  # extended -> long_context
    assert plan is not None and plan.plan is not None and plan.alternatives
    long_cost = gate.estimate(plan.plan, verified=True)
    fast = next(p for p in plan.alternatives if p.role == "fast")
    fast_cost = gate.estimate(fast, verified=True)
    assert fast_cost < long_cost
    ledger = TenantLedger()
    gate.admit(ledger, Conversation(gov, "warm").say("hi"))  # opens the window
    ledger.spent_usd = 1.0 - (fast_cost + long_cost) / 2  # room for fast, not for long_context
    verdict = gate.admit(ledger, plan)
    assert verdict.action == "downgrade"
    assert verdict.plan is not None and verdict.plan.role == "fast"
    assert verdict.reason is not None and "downgraded to fast" in verdict.reason


def test_pinned_requests_are_refused_not_downgraded() -> None:
    gov, gate = _gate(0.000001)
    plan = Conversation(gov).say(
        "card stolen", classification("lost_or_stolen_card", compliance=True)
    )
    verdict = gate.admit(TenantLedger(), plan)  # type: ignore[arg-type]
    assert verdict.action == "refuse"
    assert verdict.reason is not None and verdict.reason.endswith("the role is pinned")


def test_disallowed_role_is_replaced_by_an_allowed_one() -> None:
    gov, gate = _gate(10.0, allowed_roles=["fast", "summarizer"])
    plan = Conversation(gov).say("statement line " * 1500)
    verdict = gate.admit(TenantLedger(), plan)  # type: ignore[arg-type]
    assert verdict.action == "downgrade" and verdict.plan is not None
    assert verdict.plan.role == "fast"
    assert verdict.reason is not None and "not allowed for tenant acme-bank" in verdict.reason
    ledger = TenantLedger()
    gate.admit(ledger, Conversation(gov, "warm").say("hi"))
    ledger.spent_usd = 10.0
    refused = gate.admit(ledger, Conversation(gov, "late").say("statement line " * 1500))
    assert refused.action == "refuse" and refused.reason is not None
    assert "not allowed" in refused.reason and "budget: acme-bank has $0.000000" in refused.reason


def test_reconciliation_replaces_the_estimate_with_actual_usage() -> None:
    gov, gate = _gate(1.0)
    ledger = TenantLedger()
    plan = Conversation(gov).say("where is my card")
    verdict = gate.admit(ledger, plan)  # type: ignore[arg-type]
    assert ledger.spent_usd == verdict.cost_usd > 0
    record = CostRecord(
        record_id="c-1-0:0",
        event_id="c-1-0",
        tenant_id="acme-bank",
        role="fast",
        model="claude-3-5-haiku",
        model_version="claude-3-5-haiku-20241022",
        tokens_in=10,
        tokens_out=5,
        cost_usd=0.000002,
        latency_ms=12.0,
        occurred_at=plan.observation.event.sent_at,
    )
    gate.reconcile(ledger, record)
    assert abs(ledger.spent_usd - 0.000002) < 1e-12
    gate.reconcile(ledger, record.model_copy(update={"record_id": "c-1-0:1"}))
    assert abs(ledger.spent_usd - 0.000004) < 1e-12  # a second call for the event adds


def test_a_new_window_starts_from_zero() -> None:
    gov, gate = _gate(0.01)
    ledger = TenantLedger()
    conversation = Conversation(gov)
    first = gate.admit(ledger, conversation.say("question", at_s=0))  # type: ignore[arg-type]
    ledger.spent_usd = 0.01
    assert gate.admit(ledger, conversation.say("another", at_s=60)).action == "refuse"  # type: ignore[arg-type]
    next_hour = gate.admit(ledger, conversation.say("third", at_s=3600))  # type: ignore[arg-type]
    assert first.action == next_hour.action == "allow"


def test_the_reservation_covers_the_verification_that_follows() -> None:
    gov, gate = _gate(1.0)
    routed = Conversation(gov).say("where is my card")
    assert routed is not None and routed.plan is not None
    answer_only = gov.roles["fast"].cost_usd(routed.plan.prompt_tokens, 400)
    verdict = gate.admit(TenantLedger(), routed)
    assert verdict.cost_usd == gate.estimate(routed.plan, verified=True) > answer_only
    small_talk = Conversation(gov, "c-2").say("hi", classification(trivial=True))
    assert small_talk is not None and small_talk.plan is not None
    assert small_talk.choice.tier == "trivial"
    trivial = gate.admit(TenantLedger(), small_talk)
    assert trivial.cost_usd == gate.estimate(small_talk.plan, verified=False)


def test_overflow_becomes_a_refusal_and_a_context_overflow_failure() -> None:
    small = {"context_window": 4_096, "max_output_tokens": 512}
    gov = governance(roles={"fast": small, "long_context": small, "compliance": small})
    gate = BudgetGate(gov)
    plan = Conversation(gov).say("statement line " * 2_000)
    assert plan is not None
    verdict = gate.admit(TenantLedger(), plan)
    decision, failure = build_decision(plan, verdict, gov)
    assert isinstance(decision, RoutingDecision)
    assert decision.action == "refuse" and decision.prompt_tokens is None
    assert failure.error == "ContextOverflow"  # type: ignore[union-attr]
    assert failure.detail.startswith("tokens=")  # type: ignore[union-attr]
    assert "limit=4096" in failure.detail  # type: ignore[union-attr]
