"""Budget gate: reserve what a request may cost, downgrade, refuse, reconcile per window."""

from __future__ import annotations

import pickle
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from splitpin.operators.answering import AnswerPolicy, CallOutcome, CallSpec, Dispatch
from splitpin.operators.budget import (
    BudgetGate,
    CallBound,
    TenantLedger,
    _restore,
    build_decision,
    build_dispatch,
    gauge_tenant,
)
from splitpin.operators.model_calls import CallFailed
from splitpin.operators.routing import RoutePlan
from splitpin.providers.base import ModelResult, SourceDoc, Usage
from splitpin.schemas.decisions import RoutingDecision
from splitpin.schemas.governance import GovernanceConfig
from splitpin.schemas.metrics import CostRecord
from splitpin.schemas.replies import Citation
from tests.routing_helpers import VERIFY_EVERY_ANSWER, Conversation, classification, governance

T_START = 1_800_000_000.0  # a processing-time instant at an hour boundary


class FakeClock:
    """The gate's processing-time clock, moved by the test."""

    def __init__(self, now: float = T_START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _gate(
    limit: float, clock: FakeClock | None = None, **tenant: object
) -> tuple[GovernanceConfig, BudgetGate]:
    gov = governance(
        budgets={"tenants": {"acme-bank": {"limit_usd": limit, **tenant}}, "window_s": 3600},
        replies=VERIFY_EVERY_ANSWER,
    )
    return gov, BudgetGate(gov, clock or FakeClock())


def _say(gov: GovernanceConfig, text: str, conversation: str = "c-1", **kw: Any) -> RoutePlan:
    routed = Conversation(gov, conversation).say(text, **kw)
    assert routed is not None and routed.plan is not None
    return routed


def _record(event_id: str, purpose: str, cost: float, **fields: Any) -> CostRecord:
    values: dict[str, Any] = {
        "record_id": f"{event_id}:{purpose}",
        "event_id": event_id,
        "tenant_id": "acme-bank",
        "role": "fast",
        "model": "claude-3-5-haiku",
        "model_version": "claude-3-5-haiku-20241022",
        "tokens_in": 10,
        "tokens_out": 5,
        "cost_usd": cost,
        "latency_ms": 12.0,
        "occurred_at": datetime(2026, 1, 1, tzinfo=UTC),
    }
    values.update(fields)
    return CostRecord(**values)


def _with_sent_at(routed: RoutePlan, sent_at: datetime) -> RoutePlan:
    event = routed.observation.event.model_copy(update={"sent_at": sent_at})
    return replace(routed, observation=replace(routed.observation, event=event))


def test_requests_are_reserved_until_the_budget_is_spent() -> None:
    gov, gate = _gate(0.05)
    ledger = TenantLedger()
    conversation = Conversation(gov)
    verdicts = [gate.admit(ledger, conversation.say(f"question {i}")) for i in range(20)]  # type: ignore[arg-type]
    actions = [v.action for v in verdicts]
    assert "refuse" in actions and actions[0] == "allow"
    assert sum(v.cost_usd for v in verdicts if v.action != "refuse") <= 0.05
    refused = verdicts[actions.index("refuse")]
    assert refused.reason is not None and refused.reason.startswith("budget: acme-bank has $")
    assert refused.reason.endswith("no allowed role is affordable")


def test_every_call_the_answer_may_make_is_reserved_at_the_max_tokens_it_is_sent() -> None:
    """Old code reserved 400 expected output tokens while sending max_tokens=8192, and
    never reserved the re-route: with long answers a burst spent 3.6x its limit."""
    gov, gate = _gate(10.0)
    routed = _say(gov, "where is my card")
    verdict = gate.admit(TenantLedger(), routed)
    assert verdict.action == "allow"
    assert {c.purpose for c in verdict.calls} == {"primary", "verify", "reroute", "replan"}
    # A re-plan (after a context-length error) replaces the other calls: it reserves only
    # what their sum lacks of its own bound, here nothing.
    together = sum(c.max_cost_usd for c in verdict.calls if c.purpose != "replan")
    replan = next(c for c in verdict.calls if c.purpose == "replan")
    assert replan.role == "long_context" and replan.max_cost_usd < together
    assert verdict.cost_usd == pytest.approx(together, abs=1e-8)
    policy = AnswerPolicy(gov, runner=_no_runner)
    decision = build_decision(routed, verdict, gov)[0]
    assert isinstance(decision, RoutingDecision)
    job, step = policy.open(build_dispatch(routed, decision, verdict.plan))
    (_, primary), *_ = step.calls
    bound: dict[str, CallBound] = {c.purpose: c for c in verdict.calls}
    assert primary.max_tokens == bound["primary"].tokens_out
    assert primary.max_tokens == min(gov.roles["fast"].max_output_tokens, 1024)
    for purpose, role in (("verify", "verifier"), ("reroute", "compliance")):
        _, spec = policy._call(job, purpose, role)  # type: ignore[arg-type]
        assert spec.max_tokens <= bound[purpose].tokens_out
        assert bound[purpose].role == role
    # The verifier also reads the draft: its input bound covers the primary's whole output.
    assert bound["verify"].tokens_in >= routed.plan.prompt_tokens + primary.max_tokens  # type: ignore[union-attr]
    assert decision.estimated_cost_usd == pytest.approx(verdict.cost_usd, abs=1e-9)


async def _no_runner(spec: Any) -> Any:
    raise AssertionError("no call is made in this test")


def test_a_call_is_priced_at_the_dearest_role_of_its_fallback_chain() -> None:
    gov = governance(roles={"fast": {"fallback": ["long_context"]}})
    gate = BudgetGate(gov, FakeClock())
    routed = _say(gov, "where is my card")
    primary = next(c for c in gate.admit(TenantLedger(), routed).calls if c.purpose == "primary")
    dearer = gov.roles["long_context"].cost_usd(primary.tokens_in, primary.tokens_out)
    assert primary.max_cost_usd == pytest.approx(dearer)
    assert dearer > gov.roles["fast"].cost_usd(primary.tokens_in, primary.tokens_out)


def test_pinned_requests_reserve_one_call_and_are_refused_not_downgraded() -> None:
    gov, gate = _gate(10.0)
    routed = _say(gov, "card stolen", klass=classification("lost_or_stolen_card", compliance=True))
    assert [c.purpose for c in gate.admit(TenantLedger(), routed).calls] == ["pinned"]
    gov, gate = _gate(0.000001)
    verdict = gate.admit(TenantLedger(), routed)
    assert verdict.action == "refuse"
    assert verdict.reason is not None and verdict.reason.endswith("the role is pinned")


def test_over_budget_downgrades_to_the_cheapest_role_that_fits() -> None:
    clock = FakeClock()
    gov, gate = _gate(1.0, clock)
    routed = _say(gov, "statement line " * 1500)  # extended -> long_context
    assert routed.plan is not None and routed.alternatives
    fast = next(p for p in routed.alternatives if p.role == "fast")
    long_cost = gate.reservation_usd(routed.plan, pinned=False, tenant_id="acme-bank")
    fast_cost = gate.reservation_usd(fast, pinned=False, tenant_id="acme-bank")
    assert fast_cost < long_cost
    ledger = TenantLedger()
    gate.admit(ledger, _say(gov, "hi", "warm"))  # opens the window
    window = ledger.current
    assert window is not None
    room = (fast_cost + long_cost) / 2  # room for fast, not for long_context
    ledger.spend(window).actual = round((1.0 - room) * 1e9) - ledger.spend(window).reserved
    verdict = gate.admit(ledger, routed)
    assert verdict.action == "downgrade"
    assert verdict.plan is not None and verdict.plan.role == "fast"
    assert verdict.reason is not None and "downgraded to fast" in verdict.reason


def test_disallowed_role_is_replaced_by_an_allowed_one() -> None:
    gov, gate = _gate(10.0, allowed_roles=["fast", "summarizer"])
    verdict = gate.admit(TenantLedger(), _say(gov, "statement line " * 1500))
    assert verdict.action == "downgrade" and verdict.plan is not None
    assert verdict.plan.role == "fast"
    assert verdict.reason is not None and "not allowed for tenant acme-bank" in verdict.reason
    # Neither the verifier nor the compliance role is allowed: neither call is reserved.
    assert [c.purpose for c in verdict.calls] == ["primary"]


def test_the_producers_sent_at_does_not_move_the_window() -> None:
    """Old code put windows on sent_at: a burst stamped an hour apart spent 14x the limit,
    and one event dated 2200 froze the window (year 1 crashed `_roll`)."""
    clock = FakeClock()
    gov, gate = _gate(0.05, clock)
    ledger = TenantLedger()
    base = _say(gov, "where is my card")
    stamps = [
        datetime(2200, 1, 1, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
    ]
    verdicts = []
    for hour in range(40):
        event_id = f"burst-{hour}"
        event = base.observation.event.model_copy(update={"event_id": event_id})
        routed = replace(base, observation=replace(base.observation, event=event))
        sent_at = stamps[hour % 3] if hour < 6 else datetime(2026, 1, 1, hour % 24, tzinfo=UTC)
        verdicts.append(gate.admit(ledger, _with_sent_at(routed, sent_at)))
    spent = sum(v.cost_usd for v in verdicts)
    assert spent <= 0.05 and ledger.spent_usd <= 0.05
    assert any(v.action == "refuse" for v in verdicts)
    clock.now += 3600  # the gate's own clock moves on: a fresh window admits again
    assert gate.admit(ledger, _with_sent_at(base, stamps[0])).action == "allow"


def test_a_late_record_settles_in_its_reservations_window_and_rolls_keep_reservations() -> None:
    """Old code cleared open reservations on a roll and charged late records to the
    current window: the gauge went to -0.664 and a tenant at 8 % of its spend was refused."""
    clock = FakeClock()
    gov, gate = _gate(0.10, clock)
    ledger = TenantLedger()
    first = gate.admit(ledger, _say(gov, "where is my card", "c-a"))
    old_window = ledger.current
    assert old_window is not None
    clock.now += 3600
    second = gate.admit(ledger, _say(gov, "where is my card", "c-b"))
    new_window = ledger.current
    assert new_window is not None and new_window > old_window
    assert ledger.windows[old_window].reserved == round(first.cost_usd * 1e9)  # still open
    before = ledger.windows[new_window].committed
    gate.reconcile(ledger, _record("c-a-0", "primary", 0.001))
    assert ledger.windows[new_window].committed == before  # the current window is untouched
    old = ledger.windows[old_window]
    assert old.actual == 1_000_000
    assert old.committed <= round(first.cost_usd * 1e9)
    gate.reconcile(ledger, _record("c-a-0", "primary", 0.001))  # a duplicate: applied once
    assert ledger.windows[old_window].actual == 1_000_000
    gate.reconcile(ledger, _record("c-a-0", "reroute", 0.002, role="compliance"))
    assert old_window not in ledger.windows  # settled: nothing open there any more
    assert ledger.spent_usd == pytest.approx(second.cost_usd)
    assert 0 <= gate.remaining_usd(ledger, "acme-bank") <= 0.10


def test_reconciliation_replaces_the_reservation_with_actual_usage() -> None:
    gov, gate = _gate(1.0)
    ledger = TenantLedger()
    verdict = gate.admit(ledger, _say(gov, "where is my card"))
    assert ledger.spent_usd == pytest.approx(verdict.cost_usd)
    bound = {c.purpose: c.max_cost_usd for c in verdict.calls}
    gate.reconcile(ledger, _record("c-1-0", "primary", 0.000002))
    assert ledger.spent_usd == pytest.approx(verdict.cost_usd - bound["primary"] + 0.000002)
    gate.reconcile(ledger, _record("c-1-0", "verify", 0.000004, role="verifier"))
    # The re-route may still follow: its reservation stays until its window ends.
    assert ledger.spent_usd == pytest.approx(0.000006 + bound["reroute"])
    gate.reconcile(ledger, _record("unknown-event", "primary", 0.5))  # no reservation: covered
    assert ledger.spent_usd == pytest.approx(0.000006 + bound["reroute"])


def test_the_gauge_stays_within_zero_and_the_limit_and_is_labelled_by_known_tenants() -> None:
    gov, gate = _gate(0.1)
    ledger = TenantLedger()
    verdict = gate.admit(ledger, _say(gov, "where is my card"))
    assert verdict.action != "refuse"
    # A call that cost more than its bound (a provider billing off the books) is counted ...
    gate.reconcile(ledger, _record("c-1-0", "reroute", 0.5))
    assert ledger.spent_usd > 0.1
    # ... and the gauge still reads within [0, limit].
    assert gate.remaining_usd(ledger, "acme-bank") == 0.0
    assert gauge_tenant(gov, "acme-bank") == "acme-bank"
    assert gauge_tenant(gov, " ShopCo ") == "shopco"
    assert gauge_tenant(gov, "tenant-4711") == "other"


def test_the_decision_says_which_tenant_policy_applied() -> None:
    gov, gate = _gate(10.0)
    known = _say(gov, "where is my card")
    unknown = _say(gov, "where is my card", "c-2", tenant_id="tenant-4711")
    for routed, policy in ((known, "configured"), (unknown, "default")):
        decision = build_decision(routed, gate.admit(TenantLedger(), routed), gov)[0]
        assert isinstance(decision, RoutingDecision) and decision.tenant_policy == policy


def test_overflow_becomes_a_refusal_and_a_context_overflow_failure() -> None:
    small = {"context_window": 4_096, "max_output_tokens": 512}
    gov = governance(roles={"fast": small, "long_context": small, "compliance": small})
    gate = BudgetGate(gov, FakeClock())
    plan = Conversation(gov).say("statement line " * 2_000)
    assert plan is not None
    verdict = gate.admit(TenantLedger(), plan)
    decision, failure = build_decision(plan, verdict, gov)
    assert isinstance(decision, RoutingDecision)
    assert decision.action == "refuse" and decision.prompt_tokens is None
    assert decision.estimated_cost_usd == 0.0
    assert failure.error == "ContextOverflow"  # type: ignore[union-attr]
    assert failure.detail.startswith("tokens=")  # type: ignore[union-attr]
    assert "limit=4096" in failure.detail  # type: ignore[union-attr]


def test_the_answering_policy_sends_the_capped_max_tokens() -> None:
    gov = governance(budgets={"max_output_tokens_per_call": 300})
    policy = AnswerPolicy(gov, runner=_no_runner)
    gate = BudgetGate(gov, FakeClock())
    routed = _say(gov, "where is my card")
    verdict = gate.admit(TenantLedger(), routed)
    decision = build_decision(routed, verdict, gov)[0]
    assert isinstance(decision, RoutingDecision)
    dispatch: Dispatch = build_dispatch(routed, decision, verdict.plan)
    _, step = policy.open(dispatch)
    assert [spec.max_tokens for _, spec in step.calls] == [300]
    assert all(c.tokens_out == 300 for c in verdict.calls)


def test_a_replan_dearer_than_the_calls_it_replaces_is_reserved_in_full() -> None:
    """A context-length error on the primary re-plans to long_context; with neither the
    verifier nor compliance allowed, the re-plan costs more than the primary alone."""
    gov, gate = _gate(10.0, allowed_roles=["fast", "long_context"])
    ledger = TenantLedger()
    verdict = gate.admit(ledger, _say(gov, "where is my card"))
    bound = {c.purpose: c.max_cost_usd for c in verdict.calls}
    assert set(bound) == {"primary", "replan"} and bound["replan"] > bound["primary"]
    assert verdict.cost_usd == pytest.approx(bound["replan"], abs=1e-8)
    gate.reconcile(ledger, _record("c-1-0", "replan", round(bound["replan"], 9)))
    assert ledger.spent_usd == pytest.approx(round(bound["replan"], 9), abs=1e-9)
    assert not ledger.reservations  # a re-plan ends the event


def test_a_snapshot_from_before_per_window_ledgers_keeps_its_spend() -> None:
    """A recovery snapshot written by the previous ledger (one event-time window, one
    spent_usd) resumes with that spend counted in the current window, never forgotten."""
    _, gate = _gate(1.0)
    old = TenantLedger()
    old.__dict__.clear()
    old.__dict__.update(
        window_start=datetime(2026, 1, 1, tzinfo=UTC),
        spent_usd=0.3,
        open_reservations=OrderedDict({"e-1": 0.1}),
        reconciled=OrderedDict(),
    )
    ledger = _restore(gate, pickle.dumps(old))
    assert ledger.spent_usd == pytest.approx(0.3)
    assert gate.remaining_usd(ledger, "acme-bank") == pytest.approx(0.7)


# --- releasing what a finished job did not use ---------------------------------------

SOURCES = (
    SourceDoc(
        doc_id="InternalDoc-11",
        title="Article 11",
        text="text",
        source="kb:banking77/InternalDoc-11",
        score=0.9,
    ),
)
Script = Callable[[CallSpec], ModelResult | CallFailed]


def _cited(spec: CallSpec, tokens_in: int = 900, tokens_out: int = 60) -> ModelResult:
    """A short, valid answer (cites the attached article), like most real ones."""
    return ModelResult(
        request_id=spec.request_id,
        role=spec.role,
        text="Your card is on its way; see the article.",
        citations=(Citation(doc_id="InternalDoc-11", source="kb:banking77/InternalDoc-11"),),
        usage=Usage(tokens_in=tokens_in, tokens_out=tokens_out),
        latency_ms=5.0,
        model_version=f"{spec.role}@test",
        provider="anthropic",
        confidence=0.9,
    )


def _answered(
    gov: GovernanceConfig, gate: BudgetGate, ledger: TenantLedger, routed: RoutePlan, script: Script
) -> tuple[str, list[CostRecord]]:
    """Admit one event and run the real AnswerPolicy to its end: the verdict's action and
    every CostRecord the job emitted, in order."""
    verdict = gate.admit(ledger, routed)
    decision = build_decision(routed, verdict, gov)[0]
    assert isinstance(decision, RoutingDecision)
    policy = AnswerPolicy(gov, runner=_no_runner)
    job, step = policy.open(build_dispatch(routed, decision, verdict.plan))
    records = [r for r in step.emit if isinstance(r, CostRecord)]
    queue = list(step.calls)
    while queue:
        call_id, spec = queue.pop(0)
        got = script(spec)
        outcome = got if isinstance(got, CallFailed) else CallOutcome(spec.request(SOURCES), got)
        step = policy.advance(job, call_id, outcome)
        records += [r for r in step.emit if isinstance(r, CostRecord)]
        queue += step.calls
    assert step.done
    return verdict.action, records


def _nanos(records: list[CostRecord]) -> int:
    return sum(round(r.cost_usd * 1e9) for r in {r.record_id: r for r in records}.values())


def test_the_last_record_of_a_verified_answer_releases_the_unused_reroute() -> None:
    """Old code kept the re-route slot ($0.0188 of the $0.0465 a short question reserves)
    counted until the window ended, though the verified answer needed no re-route."""
    gov, gate = _gate(1.0)
    ledger = TenantLedger()
    _, records = _answered(gov, gate, ledger, _say(gov, "where is my card"), _cited)
    primary, verify = records
    assert (primary.last_call, verify.last_call) == (False, True)
    assert verify.job_calls == ("primary", "verify")
    for record in records:
        gate.reconcile(ledger, record)
    assert not ledger.reservations
    assert ledger.spend(gate._roll(ledger)).committed == _nanos(records)


def test_a_last_record_that_overtakes_its_siblings_keeps_their_reservations() -> None:
    gov, gate = _gate(1.0)
    ledger = TenantLedger()
    verdict = gate.admit(ledger, _say(gov, "where is my card"))
    bound = {c.purpose: c.nanos for c in verdict.calls}
    last = _record("c-1-0", "verify", 0.003, last_call=True, job_calls=("primary", "verify"))
    gate.reconcile(ledger, last)
    window = ledger.spend(gate._roll(ledger))
    assert window.committed == 3_000_000 + bound["primary"]  # the primary still counts
    gate.reconcile(ledger, last)  # duplicated: nothing more
    assert window.committed == 3_000_000 + bound["primary"]
    gate.reconcile(ledger, _record("c-1-0", "primary", 0.001))
    assert window.committed == 4_000_000 and not ledger.reservations


def test_a_job_whose_last_call_failed_states_its_last_record_again_marked() -> None:
    """The verifier timed out on an email: the safe reply goes out with no record of its
    own, so the primary's record is stated again as the last one, and releases."""
    gov, gate = _gate(1.0)
    ledger = TenantLedger()
    routed = _say(gov, "where is my card")
    event = routed.observation.event.model_copy(update={"channel": "email"})
    routed = replace(routed, observation=replace(routed.observation, event=event))

    def verifier_times_out(spec: CallSpec) -> ModelResult | CallFailed:
        return CallFailed("timeout", "no result") if spec.purpose == "verify" else _cited(spec)

    _, records = _answered(gov, gate, ledger, routed, verifier_times_out)
    first, again = records
    assert first.record_id == again.record_id == "c-1-0:primary"
    assert (first.last_call, again.last_call, again.job_calls) == (False, True, ("primary",))
    assert again.model_copy(update={"last_call": False, "job_calls": ()}) == first
    for record in (first, again, again):
        gate.reconcile(ledger, record)
    assert not ledger.reservations
    assert ledger.spend(gate._roll(ledger)).committed == _nanos(records)


@pytest.mark.parametrize("limit", [0.25, 1.0])
def test_a_tenant_gets_the_answers_its_spend_allows(limit: float) -> None:
    """Identical short questions, one after another in one window, each answered and
    verified with short answers, its usage reconciled before the next: how many are
    answered (not refused) with the last record's release and without it (old code).
    `pytest -s` prints the figures."""
    questions = 200
    counts: dict[bool, int] = {}
    spend: dict[bool, int] = {}
    for release in (False, True):
        gov, gate = _gate(limit)
        ledger = TenantLedger()
        answered = 0
        for n in range(questions):
            routed = _say(gov, "where is my card", f"q-{n}")
            action, records = _answered(gov, gate, ledger, routed, _cited)
            answered += action != "refuse"
            for record in records:
                if not release:  # what old code wrote: no mark, no restated record
                    record = record.model_copy(update={"last_call": False, "job_calls": ()})
                gate.reconcile(ledger, record)
        counts[release] = answered
        spend[release] = ledger.spend(gate._roll(ledger)).actual
        assert spend[release] <= round(limit * 1e9)
    print(
        f"\nbudget release: limit ${limit:.2f}, {questions} short questions: "
        f"{counts[False]} answered without the release, {counts[True]} with it "
        f"(actual spend ${spend[False] / 1e9:.6f} -> ${spend[True] / 1e9:.6f})"
    )
    assert counts[True] > 2 * counts[False]
