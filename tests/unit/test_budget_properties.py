"""The budget invariant, attacked with hypothesis: whatever the burst, the interleaving of
admissions and CostRecords (late, duplicated, out of order, for unknown events, a job's
`last_call` record early, late, restated or duplicated), the producer's `sent_at` (year 1
to 9999) and the gate's clock (rolls, jumps, steps back), each window's committed spend
stays at or under the limit, nothing raises, and the remaining-budget gauge stays within
[0, limit]; and once every record of a finished job is in, nothing of it stays reserved.

The only assumption is the one the design states: a call's actual cost is at most what
was reserved for that call (its tokens are at most the reserved input and the max_tokens
sent). Records for calls with no reservation may cost anything: they must change nothing.
"""

from __future__ import annotations

import pickle
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitpin.core.tokens import count_tokens
from splitpin.operators.answering import (
    DRAFT_OVERHEAD_TOKENS,
    AnswerPolicy,
    CallOutcome,
    CallSpec,
    Dispatch,
)
from splitpin.operators.budget import (
    NANOS_PER_USD,
    BudgetGate,
    CallBound,
    TenantLedger,
    build_decision,
    build_dispatch,
)
from splitpin.operators.context_guard import MESSAGE_OVERHEAD_TOKENS
from splitpin.operators.model_calls import CallFailed
from splitpin.operators.routing import RoutePlan
from splitpin.providers.base import ModelResult, SourceDoc, Usage
from splitpin.schemas.decisions import RoutingDecision
from splitpin.schemas.governance import GovernanceConfig
from splitpin.schemas.metrics import CostRecord
from splitpin.schemas.replies import Citation
from tests.routing_helpers import Conversation, classification, governance

WINDOW_S = 3600.0
LIMITS = (0.01, 0.05, 0.1, 0.2, 0.5, 25.0)
GOVERNANCE: dict[float, GovernanceConfig] = {
    limit: governance(budgets={"tenants": {"acme-bank": {"limit_usd": limit}}, "window_s": 3600})
    for limit in LIMITS
}
_SHIPPED = GOVERNANCE[25.0]


def _plans() -> list[RoutePlan]:
    said = [
        ("where is my card", None),
        ("statement line " * 1500, None),  # extended: long_context, fast as an alternative
        ("hi", classification(trivial=True)),
        ("my card was stolen", classification("lost_or_stolen_card", compliance=True)),
    ]
    plans = []
    for n, (text, klass) in enumerate(said):
        routed = Conversation(_SHIPPED, f"p-{n}").say(text, klass)
        assert routed is not None and routed.plan is not None
        plans.append(routed)
    return plans


PLANS = _plans()
OFFSETS = [timezone(timedelta(hours=h)) for h in (-14, 0, 14)]
SENT_AT = st.one_of(
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(OFFSETS),
    ),
    st.sampled_from(
        [
            datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))),
            datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-14))),
            datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
            datetime(2200, 1, 1, tzinfo=UTC),
        ]
    ),
)


@dataclass(frozen=True)
class Admit:
    plan: int
    sent_at: datetime
    reuse_id: bool


@dataclass(frozen=True)
class Record:
    event: int
    """Index into the admitted events; out of range means an event never admitted."""
    purpose: str
    fraction: float
    """Of the call's reserved bound (ignored for calls with no reservation)."""
    unknown_cost: float
    last: bool = False
    """Marked as the job's last record (`job_calls`: every purpose recorded for the event
    anywhere in the run, so it may come before or after its siblings)."""


@dataclass(frozen=True)
class Replay:
    index: int
    """A record already sent, sent again (a duplicate after a crash)."""


@dataclass(frozen=True)
class Tick:
    seconds: float


@dataclass(frozen=True)
class Restart:
    """Snapshot and restore the ledger, as a Bytewax resume does."""


ADMIT = st.builds(Admit, st.integers(0, len(PLANS) - 1), SENT_AT, st.booleans())
OPS = st.one_of(
    ADMIT,
    ADMIT,
    st.builds(
        Record,
        st.integers(0, 60),
        st.sampled_from(["primary", "pinned", "verify", "reroute", "odd"]),
        st.floats(0, 1),
        st.floats(0, 10),
    ),
    st.builds(
        Record,
        st.integers(0, 60),
        st.sampled_from(["primary", "pinned", "verify", "reroute", "odd"]),
        st.floats(0, 1),
        st.floats(0, 10),
        st.booleans(),
    ),
    st.builds(Replay, st.integers(0, 200)),
    st.builds(
        Tick,
        st.one_of(
            st.floats(-2 * WINDOW_S, 3 * WINDOW_S),
            st.sampled_from([0.0, WINDOW_S, 1e10, -1e9]),
        ),
    ),
    st.builds(Restart),
)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _admit(gate: BudgetGate, ledger: TenantLedger, op: Admit, event_id: str) -> Any:
    base = PLANS[op.plan]
    event = base.observation.event.model_copy(update={"event_id": event_id, "sent_at": op.sent_at})
    return gate.admit(ledger, replace(base, observation=replace(base.observation, event=event)))


def _record(
    event_id: str, purpose: str, cost: float, job_calls: tuple[str, ...] | None = None
) -> CostRecord:
    """A call's record; with `job_calls`, the job's last record."""
    return CostRecord(
        record_id=f"{event_id}:{purpose}",
        event_id=event_id,
        tenant_id="acme-bank",
        role="fast",
        model="m",
        model_version="m-1",
        tokens_in=1,
        tokens_out=1,
        cost_usd=round(cost, 9),
        latency_ms=1.0,
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        last_call=job_calls is not None,
        job_calls=job_calls or (),
    )


def _recorded_purposes(ops: list[Any]) -> dict[str, tuple[str, ...]]:
    """Per event id, every purpose a Record of the run names: what its job's last record
    lists as the job's calls (the event ids are assigned as the test assigns them)."""
    admitted: list[str] = []
    purposes: dict[str, set[str]] = {}
    for n, op in enumerate(ops):
        if isinstance(op, Admit):
            admitted.append(admitted[-1] if op.reuse_id and admitted else f"e-{n}")
        elif isinstance(op, Record):
            event_id = admitted[op.event] if op.event < len(admitted) else f"never-{op.event}"
            purposes.setdefault(event_id, set()).add(op.purpose)
    return {event_id: tuple(sorted(p)) for event_id, p in purposes.items()}


def _check(gate: BudgetGate, ledger: TenantLedger, limit: float) -> None:
    cap = int(limit * NANOS_PER_USD)
    open_by_window: dict[float, int] = {}
    for reservation in ledger.reservations.values():
        assert all(amount >= 0 for amount in reservation.open.values())
        total = sum(reservation.open.values())
        open_by_window[reservation.window_start] = (
            open_by_window.get(reservation.window_start, 0) + total
        )
    for start, spend in ledger.windows.items():
        assert spend.reserved == open_by_window.get(start, 0), "reservations and window agree"
        assert spend.actual >= 0
        assert spend.committed <= cap, f"window {start}: {spend} over {cap}"
    assert 0.0 <= gate.remaining_usd(ledger, "acme-bank") <= limit


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    limit=st.sampled_from(LIMITS),
    start=st.floats(0, 4e9),
    ops=st.lists(OPS, max_size=120),
)
def test_no_window_ever_commits_more_than_the_limit(
    limit: float, start: float, ops: list[Any]
) -> None:
    clock = Clock(start)
    gate = BudgetGate(GOVERNANCE[limit], clock)
    ledger = TenantLedger()
    admitted: list[tuple[str, dict[str, CallBound]]] = []
    sent: list[CostRecord] = []
    job_calls = _recorded_purposes(ops)
    for n, op in enumerate(ops):
        if isinstance(op, Admit):
            event_id = admitted[-1][0] if op.reuse_id and admitted else f"e-{n}"
            verdict = _admit(gate, ledger, op, event_id)
            assert verdict.cost_usd * NANOS_PER_USD <= limit * NANOS_PER_USD + 1
            assert (verdict.action == "refuse") == (not verdict.calls)
            admitted.append((event_id, {c.purpose: c for c in verdict.calls}))
        elif isinstance(op, Record):
            if op.event < len(admitted):
                event_id, bounds = admitted[op.event]
                bound = bounds.get(op.purpose)
                cost = bound.max_cost_usd * op.fraction if bound is not None else 0.0
            else:
                event_id, cost = f"never-{op.event}", op.unknown_cost
            record = _record(event_id, op.purpose, cost, job_calls[event_id] if op.last else None)
            sent.append(record)
            gate.reconcile(ledger, record)
        elif isinstance(op, Replay):
            if sent:
                gate.reconcile(ledger, sent[op.index % len(sent)])
        elif isinstance(op, Tick):
            clock.now += op.seconds
        else:
            ledger = pickle.loads(pickle.dumps(ledger))
        _check(gate, ledger, limit)


@settings(max_examples=50, deadline=None)
@given(
    sent_at=st.lists(SENT_AT, min_size=1, max_size=200),
    limit=st.sampled_from(LIMITS),
)
def test_a_burst_with_any_timestamps_spends_at_most_the_limit(
    sent_at: list[datetime], limit: float
) -> None:
    """One burst on one clock instant, stamped however the producer likes, and every call
    costing all it reserved: what was admitted costs at most the limit."""
    gate = BudgetGate(GOVERNANCE[limit], Clock(1_800_000_000.0))
    ledger = TenantLedger()
    spent = 0.0
    for n, stamp in enumerate(sent_at):
        verdict = _admit(gate, ledger, Admit(n % len(PLANS), stamp, False), f"b-{n}")
        # The dearest path: every call at its bound, or a re-plan alone (it replaces them).
        replan = [b for b in verdict.calls if b.purpose == "replan"]
        others = [b for b in verdict.calls if b.purpose != "replan"]
        path = others
        if replan and replan[0].max_cost_usd > sum(b.max_cost_usd for b in others):
            path = replan
        for bound in path:
            gate.reconcile(ledger, _record(f"b-{n}", bound.purpose, bound.max_cost_usd))
            spent += round(bound.max_cost_usd, 9)
        _check(gate, ledger, limit)
    assert spent <= limit + 1e-9


# --- through the real answering policy -------------------------------------------------

SOURCES = (
    SourceDoc(
        doc_id="InternalDoc-11",
        title="Article 11",
        text="text",
        source="kb:banking77/InternalDoc-11",
        score=0.9,
    ),
)
Kind = str
"""valid; invalid (cites a document it was not given); fail; overflow (context length)."""


async def _unused(spec: CallSpec) -> CallOutcome:
    raise AssertionError("the test supplies outcomes itself")


def _provider_input(gov: GovernanceConfig, spec: CallSpec) -> int:
    """The most a provider may count for this request, on the design's assumption: the
    request as splitpin counts it (reserved system prompt and sources, summary, turns,
    drafts), times 1 + input_token_margin."""
    enc = gov.roles[spec.role].tokenizer
    counted = gov.context.system_prompt_tokens
    counted += count_tokens(spec.summary, enc) if spec.summary else 0
    counted += sum(count_tokens(m.content, enc) + MESSAGE_OVERHEAD_TOKENS for m in spec.messages)
    counted += sum(count_tokens(c.text, enc) + DRAFT_OVERHEAD_TOKENS for c in spec.candidates)
    return int(counted * (1 + gov.budgets.input_token_margin))


def _worst_answer(gov: GovernanceConfig, spec: CallSpec, kind: Kind) -> ModelResult:
    """The dearest link of the fallback chain answers with every token max_tokens allows."""
    chain = (spec.role, *gov.roles[spec.role].fallback)
    tokens_in = _provider_input(gov, spec)
    role = max(chain, key=lambda r: gov.roles[r].cost_usd(tokens_in, spec.max_tokens))
    text = " word" * spec.max_tokens  # a draft as long as allowed: the verifier reads it
    doc = "InternalDoc-11" if kind == "valid" else "InternalDoc-99999"
    return ModelResult(
        request_id=spec.request_id,
        role=role,
        text=text,
        citations=(Citation(doc_id=doc, source=f"kb:banking77/{doc}"),),
        usage=Usage(tokens_in=tokens_in, tokens_out=spec.max_tokens),
        latency_ms=1.0,
        model_version=gov.roles[role].pinned_id,
        provider="anthropic",
        confidence=0.9,
    )


def _answer(gov: GovernanceConfig, dispatch: Dispatch, kinds: list[Kind]) -> list[CostRecord]:
    """Drive AnswerPolicy to the end as operators/model_calls.py does: calls run in order, a
    scheduled (hedge) call only once nothing else is left, a cancelled call and every call
    left when the job is done are settled as cancelled (one already sent is estimated by
    the policy: a provider bills the prompt it read). Every CostRecord it emits, a
    restated one (`settle`) replacing the first statement of its id."""
    policy = AnswerPolicy(gov, runner=_unused)
    job, step = policy.open(dispatch)
    records: dict[str, CostRecord] = {}
    queue = list(step.calls)
    scheduled = [(call_id, spec) for call_id, spec, _ in step.delayed]
    n = 0

    def keep(items: Sequence[object]) -> None:
        records.update({i.record_id: i for i in items if isinstance(i, CostRecord)})

    def settle(stopped: set[str]) -> None:
        """A queued call was sent (the provider may bill its prompt); a scheduled one not."""
        nonlocal queue, scheduled
        for started, calls in ((True, queue), (False, scheduled)):
            for gone, spec in calls:
                if gone in stopped:
                    cancelled = CallFailed("cancelled", "no longer needed", started=started)
                    keep(policy.settle(job, gone, cancelled, spec))
        queue = [c for c in queue if c[0] not in stopped]
        scheduled = [c for c in scheduled if c[0] not in stopped]

    while not step.done:
        assert queue or scheduled, "a job that is not done waits for a call"
        call_id, spec = queue.pop(0) if queue else scheduled.pop(0)
        kind = kinds[n % len(kinds)]
        n += 1
        outcome: CallOutcome | CallFailed
        if kind == "fail":
            outcome = CallFailed("timeout", "no answer")
        elif kind == "overflow":  # the provider's context-length error: a re-plan may follow
            outcome = CallOutcome(
                spec.request(SOURCES), None, "context_overflow", "prompt is too long"
            )
        else:
            outcome = CallOutcome(spec.request(SOURCES), _worst_answer(gov, spec, kind))
        step = policy.advance(job, call_id, outcome)
        keep(step.emit)
        # In the operator's order: cancellations, then new calls, then (done) the rest.
        settle(set(step.cancel))
        queue += step.calls
        scheduled += [(c, s) for c, s, _ in step.delayed]
        if step.done:
            settle({c for c, _ in [*queue, *scheduled]})
    return list(records.values())


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    limit=st.sampled_from(LIMITS),
    events=st.lists(
        st.tuples(
            st.integers(0, len(PLANS) - 1),
            st.lists(
                st.sampled_from(["valid", "invalid", "fail", "overflow"]), min_size=3, max_size=3
            ),
            # Ingest admits only sent_at representable in UTC (the records carry it).
            st.datetimes(datetime(1, 1, 2), datetime(9999, 12, 30), timezones=st.just(UTC)),
        ),
        min_size=1,
        max_size=40,
    ),
    delivery=st.sampled_from(["in_order", "late", "shuffled"]),
    rng=st.randoms(use_true_random=False),
)
def test_what_the_answering_policy_actually_spends_stays_within_the_limit(
    limit: float,
    events: list[tuple[int, list[Kind], datetime]],
    delivery: str,
    rng: random.Random,
) -> None:
    """Every call AnswerPolicy makes (primary, verify, re-route after an invalid citation,
    verify after a failure, re-plan after a context-length error), each answered by the
    dearest fallback at its max_tokens: the CostRecords of one window's admissions add up
    to at most the limit. This does not trust the gate's own call list: it runs the policy
    that makes the calls. Usage arrives in order, after the whole burst in reverse, or
    shuffled across events with duplicates, some of it between admissions (a job's
    `last_call` record before its siblings): releasing what a finished job did not use
    never un-counts a call that was made. Once every record is in, an event with records
    holds no reservation (old code kept the verify or re-route it never made)."""
    gov = GOVERNANCE[limit]
    clock = Clock(1_800_000_000.0)
    gate = BudgetGate(gov, clock)
    ledger = TenantLedger()
    spent: dict[str, float] = {}
    pending: list[CostRecord] = []

    def check() -> None:
        """Committed never falls below what the calls made so far cost, arrived or not."""
        _check(gate, ledger, limit)
        made = sum(round(cost * NANOS_PER_USD) for cost in spent.values())
        assert ledger.spend(gate._roll(ledger)).committed >= made, "a made call un-counted"

    def deliver(records: list[CostRecord]) -> None:
        for record in records:
            gate.reconcile(ledger, record)
            check()

    for n, (plan, kinds, stamp) in enumerate(events):
        routed = PLANS[plan]
        event = routed.observation.event.model_copy(update={"event_id": f"a-{n}", "sent_at": stamp})
        routed = replace(routed, observation=replace(routed.observation, event=event))
        verdict = gate.admit(ledger, routed)
        decision = build_decision(routed, verdict, gov)[0]
        assert isinstance(decision, RoutingDecision)
        records = _answer(gov, build_dispatch(routed, decision, verdict.plan), kinds)
        ends = [r for r in records if r.last_call]
        assert len({r.record_id for r in ends}) == len(ends) <= 1, "one job, one end"
        assert all(set(r.job_calls) == {x.record_id.split(":")[-1] for x in records} for r in ends)
        spent |= {r.record_id: r.cost_usd for r in records}  # a restated record counts once
        if delivery == "in_order":
            deliver(records)
        elif delivery == "late":
            pending += records  # usage arrives after the whole burst, in reverse
        else:
            pending += records + rng.sample(records, k=rng.randint(0, len(records)))
            rng.shuffle(pending)
            cut = rng.randint(0, len(pending))
            deliver(pending[:cut])
            pending = pending[cut:]
        check()
    deliver(list(reversed(pending)))
    total = sum(spent.values())
    assert total <= limit + 1e-9, f"spent {total} of {limit}"
    billed = {record_id.rpartition(":")[0] for record_id in spent}
    assert not billed & set(ledger.reservations), "a finished job's unused calls are released"
