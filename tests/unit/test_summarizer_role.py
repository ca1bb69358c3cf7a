"""Compaction by the summarizer role: one call per change of what fell out of the window,
reused after, cut to the guard's limit, reserved and accounted, extractive on failure.

Real Router, BudgetGate and AnswerPolicy; only the model results are scripted (these are
unit tests of the policy's logic; tests/flow/test_summarizer_calls.py runs the flow).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitpin.core.tokens import count_tokens
from splitpin.operators.answering import (
    AnswerOutput,
    AnswerPolicy,
    CallOutcome,
    CallSpec,
    Dispatch,
)
from splitpin.operators.budget import (
    BudgetGate,
    TenantLedger,
    Verdict,
    build_decision,
    build_dispatch,
)
from splitpin.operators.context_guard import MESSAGE_OVERHEAD_TOKENS
from splitpin.operators.model_calls import CallFailed
from splitpin.operators.summaries import Coverage, SharedCalls, SummaryCache, fit_summary
from splitpin.providers.base import ModelResult, SourceDoc, Usage
from splitpin.schemas.decisions import RoutingDecision
from splitpin.schemas.governance import GovernanceConfig
from splitpin.schemas.metrics import CostRecord
from splitpin.schemas.replies import Citation, Reply
from tests.factories import T0
from tests.routing_helpers import VERIFY_EVERY_ANSWER, Conversation, governance

SOURCE = SourceDoc(
    doc_id="InternalDoc-11",
    title="Card delivery",
    text="Cards arrive within five working days.",
    source="kb:banking77/InternalDoc-11",
    score=0.9,
)
GOV = governance(conversation={"window_tokens": 300}, replies=VERIFY_EVERY_ANSWER)
"""Turns leave the conversation window after ~300 tokens, so a few turns compact."""


VOCABULARY = ("card", "bank", "money", "account", "payment")


def words(n: int, tag: str) -> str:
    """About `n` tokens: common one-token words after a tag that keeps texts distinct."""
    return f"{tag}. " + " ".join(VOCABULARY[i % len(VOCABULARY)] for i in range(n))


Script = Callable[[CallSpec], ModelResult | CallFailed]


def result(spec: CallSpec, text: str | None = None) -> ModelResult:
    summary = spec.purpose == "summary"
    return ModelResult(
        request_id=spec.request_id,
        role=spec.role,
        text=text if text is not None else f"answer from {spec.role} [InternalDoc-11]",
        citations=() if summary else (Citation(doc_id=SOURCE.doc_id, source=SOURCE.source),),
        usage=Usage(tokens_in=200, tokens_out=40),
        latency_ms=3.0,
        model_version=f"local-{spec.role}@test",
        provider="local",
        confidence=0.95,
    )


@dataclass
class Run:
    """One conversation routed, admitted and answered by one long-lived AnswerPolicy."""

    gov: GovernanceConfig = GOV
    conversation: Conversation = field(init=False)
    gate: BudgetGate = field(init=False)
    ledger: TenantLedger = field(default_factory=TenantLedger)
    policy: AnswerPolicy = field(init=False)
    specs: list[CallSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.conversation = Conversation(self.gov)
        self.gate = BudgetGate(self.gov, clock=lambda: 1_000.0)
        self.policy = AnswerPolicy(self.gov, runner=_unused, clock=lambda: T0.timestamp() + 5)

    def say(
        self, text: str, script: Script
    ) -> tuple[Dispatch, Verdict, list[AnswerOutput], list[CallSpec]]:
        routed = self.conversation.say(text)
        assert routed is not None
        verdict = self.gate.admit(self.ledger, routed)
        decision = build_decision(routed, verdict, self.gov)[0]
        assert isinstance(decision, RoutingDecision)
        dispatch = build_dispatch(routed, decision, verdict.plan)
        job, step = self.policy.open(dispatch)
        emitted, specs = list(step.emit), []
        queue = list(step.calls)
        while queue:
            call_id, spec = queue.pop(0)
            specs.append(spec)
            scripted = script(spec)
            sources = spec.sources if spec.sources is not None else (SOURCE,)
            outcome = (
                scripted
                if isinstance(scripted, CallFailed)
                else CallOutcome(spec.request(sources), scripted)
            )
            step = self.policy.advance(job, call_id, outcome)
            emitted.extend(step.emit)
            queue.extend(step.calls)
        assert step.done
        self.specs.extend(specs)
        return dispatch, verdict, emitted, specs


async def _unused(spec: CallSpec) -> CallOutcome:
    raise AssertionError("the test supplies outcomes itself")


def model_summary(text: str) -> Script:
    return lambda spec: result(spec, text if spec.purpose == "summary" else None)


def purposes(specs: list[CallSpec]) -> list[str]:
    return [s.purpose for s in specs]


def prompt_tokens(spec: CallSpec, gov: GovernanceConfig) -> int:
    """The prompt as the guard counts it, in the called role's tokenizer."""
    enc = gov.roles[spec.role].tokenizer
    turns = sum(count_tokens(m.content, enc) + MESSAGE_OVERHEAD_TOKENS for m in spec.messages)
    summary = count_tokens(spec.summary, enc) if spec.summary else 0
    return gov.context.system_prompt_tokens + summary + turns


def test_one_summary_call_per_window_change_then_reused() -> None:
    run = Run()
    script = model_summary("The customer is waiting for a replacement card ordered last week.")
    for n in range(3):  # ~120 tokens each: the first leaves the 300-token window on turn 3
        _, _, _, specs = run.say(words(120, f"t{n}"), script)
    assert purposes(specs)[0] == "summary"
    summary_spec = specs[0]
    assert summary_spec.role == "summarizer" and summary_spec.sources == ()
    assert [m.content for m in summary_spec.messages] == [words(120, "t0")]  # the turn that left
    primary = specs[1]
    assert primary.summary == "The customer is waiting for a replacement card ordered last week."

    # A short turn: nothing more leaves the window, the cached summary is reused, no call.
    dispatch, verdict, _, specs = run.say("and when will it arrive?", script)
    assert "summary" not in purposes(specs)
    assert specs[0].summary == primary.summary != dispatch.summary  # model's, not extractive
    assert "summary" in {b.purpose for b in verdict.calls}  # reserved all the same (released)

    # A long turn pushes another out: one new call, over both turns that left.
    _, _, _, specs = run.say(words(120, "t4"), script)
    assert purposes(specs)[0] == "summary"
    assert [m.content for m in specs[0].messages] == [words(120, "t0"), words(120, "t1")]
    assert sum(s.purpose == "summary" for s in run.specs) == 2


def test_the_summary_call_is_reserved_accounted_and_settled() -> None:
    run = Run()
    script = model_summary("Earlier: a replacement card was ordered.")
    for n in range(2):
        run.say(words(120, f"t{n}"), script)
    _, verdict, out, specs = run.say(words(120, "t2"), script)
    records = {r.record_id.rpartition(":")[2]: r for r in out if isinstance(r, CostRecord)}
    summary = records["summary"]
    assert summary.role == "summarizer" and summary.cost_usd > 0
    bound = next(b for b in verdict.calls if b.purpose == "summary")
    assert bound.tokens_in >= prompt_tokens(specs[0], run.gov)  # its material, counted
    assert bound.max_cost_usd >= summary.cost_usd
    final = next(r for r in out if isinstance(r, Reply) and r.kind == "final")
    assert final.calls == len(records)  # the summary is a call of the job like any other
    last = [r for r in records.values() if r.last_call]
    assert len(last) == 1 and "summary" in last[0].job_calls
    for record in records.values():
        run.gate.reconcile(run.ledger, record)
    assert summary.event_id not in run.ledger.reservations  # every slot settled or released


def test_a_failing_summarizer_falls_back_to_the_extractive_summary() -> None:
    run = Run()

    def failing(spec: CallSpec) -> ModelResult | CallFailed:
        if spec.purpose == "summary":
            return CallFailed("timeout", "no result within 10 s")
        return result(spec)

    for n in range(3):
        dispatch, _, out, specs = run.say(words(120, f"t{n}"), failing)
    assert purposes(specs)[:2] == ["summary", "primary"]
    assert specs[1].summary == dispatch.summary and dispatch.summary.startswith("Summary of")
    assert not [r for r in out if isinstance(r, CostRecord) and r.record_id.endswith(":summary")]
    assert [r.kind for r in out if isinstance(r, Reply)][-1] == "final"
    # Nothing was cached: the next event over the same turns asks again.
    _, _, _, specs = run.say("still there?", failing)
    assert purposes(specs)[0] == "summary"


def test_an_empty_or_overlong_model_summary_never_grows_the_prompt() -> None:
    run = Run()
    for n in range(2):
        run.say(words(120, f"t{n}"), model_summary("x"))
    dispatch, _, _, specs = run.say(words(120, "t2"), model_summary("   "))
    assert specs[1].summary == dispatch.summary  # nothing usable: extractive

    run = Run(governance(conversation={"window_tokens": 300}, context={"summary_max_tokens": 40}))
    for n in range(2):
        run.say(words(120, f"t{n}"), model_summary("x"))
    long = "The customer explained at length. " * 300
    dispatch, verdict, _, specs = run.say(words(120, "t2"), model_summary(long))
    primary = specs[1]
    enc = run.gov.roles[primary.role].tokenizer
    assert 0 < count_tokens(primary.summary, enc) <= dispatch.summary_limit <= 40
    assert long.startswith(primary.summary)
    assert verdict.plan is not None
    assert prompt_tokens(primary, run.gov) <= verdict.plan.max_prompt_tokens


def test_pinned_and_summarizer_less_tenants_keep_the_extractive_summary() -> None:
    gov = governance(
        conversation={"window_tokens": 300},
        budgets={"tenants": {"acme-bank": {"limit_usd": 25.0, "allowed_roles": ["fast"]}}},
    )
    run = Run(gov)
    for n in range(3):
        dispatch, verdict, _, specs = run.say(words(120, f"t{n}"), model_summary("model"))
    assert "summary" not in purposes(specs) and "summary" not in {b.purpose for b in verdict.calls}
    assert specs[0].summary == dispatch.summary

    extractive = Run(
        governance(conversation={"window_tokens": 300}, context={"summarizer": "extractive"})
    )
    for n in range(3):
        _, verdict, _, specs = extractive.say(words(120, f"t{n}"), model_summary("model"))
    assert "summary" not in purposes(specs) and "summary" not in {b.purpose for b in verdict.calls}


# --- properties ------------------------------------------------------------------------


@given(st.text(max_size=400), st.integers(min_value=-5, max_value=200))
@settings(max_examples=300, deadline=None)
def test_fit_summary_never_exceeds_its_limit(text: str, limit: int) -> None:
    for enc in ("cl100k_base", "o200k_base"):
        fitted = fit_summary(text, limit, enc)
        if fitted is None:
            continue
        assert fitted and count_tokens(fitted, enc) <= limit
        if count_tokens(text.strip(), enc) <= limit:
            assert fitted == text.strip()


Op = tuple[str, str, int, int]  # (get|put, conversation, session, turns)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["get", "put"]),
            st.sampled_from(["a", "b", "c", "d"]),
            st.integers(0, 1),
            st.integers(0, 4),
        ),
        max_size=60,
    ),
    st.integers(0, 3),
)
def test_cache_matches_a_reference_model(ops: list[Op], capacity: int) -> None:
    """Only an exact coverage is reused; a late, older summary never replaces a newer one
    of the same session; at most `capacity` conversations are kept, least recent first out."""
    cache = SummaryCache(capacity)
    model: OrderedDict[str, tuple[Coverage, str]] = OrderedDict()
    for n, (kind, conv, session, turns) in enumerate(ops):
        coverage = Coverage(f"s{session}", turns)
        if kind == "get":
            held = model.get(conv)
            expected = held[1] if held is not None and held[0] == coverage else None
            assert cache.get(conv, coverage) == expected
            if expected is not None:
                model.move_to_end(conv)
            continue
        text = f"summary {n}"
        cache.put(conv, coverage, text)
        held = model.get(conv)
        if capacity == 0 or (
            held is not None
            and held[0].session_id == coverage.session_id
            and held[0].turns > coverage.turns
        ):
            continue
        model[conv] = (coverage, text)
        model.move_to_end(conv)
        while len(model) > capacity:
            model.popitem(last=False)
        assert len(cache) == len(model)


@given(
    st.lists(
        st.tuples(st.integers(1, 160), st.integers(0, 700), st.booleans()),
        min_size=1,
        max_size=12,
    ),
    st.sampled_from([200, 400]),
    st.sampled_from([24, 512]),
)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_summary_calls_follow_coverage_and_prompts_fit(
    turns: list[tuple[int, int, bool]], window: int, summary_max: int
) -> None:
    """Any conversation, any model summary (empty to far too long), any failures: a call is
    made exactly when the compacted turns changed since the last good summary; every
    prompt fits its role's window and the plan's reserved size."""
    gov = governance(
        conversation={"window_tokens": window}, context={"summary_max_tokens": summary_max}
    )
    run = Run(gov)
    cached: Coverage | None = None
    for n, (size, summary_words, fails) in enumerate(turns):
        text = " ".join(["detail"] * summary_words)

        def script(
            spec: CallSpec, fails: bool = fails, text: str = text
        ) -> ModelResult | CallFailed:
            if spec.purpose == "summary":
                return CallFailed("error", "boom") if fails else result(spec, text)
            return result(spec)

        dispatch, verdict, _, specs = run.say(words(size, f"t{n}"), script)
        decision = dispatch.decision
        coverage = Coverage(decision.session_id, decision.compacted_turns)
        wanted = bool(dispatch.compacted) and bool(dispatch.summary)
        called = "summary" in purposes(specs)
        assert called == (wanted and coverage != cached), (n, coverage, cached)
        if called and not fails and fit_summary(text, dispatch.summary_limit, "o200k_base"):
            cached = coverage
        assert called <= ("summary" in {b.purpose for b in verdict.calls})
        plan = verdict.plan
        assert plan is not None
        for spec in specs:
            if spec.purpose in ("primary", "pinned"):
                role = gov.roles[spec.role]
                assert prompt_tokens(spec, gov) <= plan.max_prompt_tokens
                assert prompt_tokens(spec, gov) + role.max_output_tokens <= role.context_window


def test_a_burst_shares_one_summary_call_and_failures_are_not_reused() -> None:
    """Turns of one conversation opened while its summary call is in flight await that
    call (one call, its cost recorded once) instead of making their own."""

    async def scenario() -> None:
        calls: list[str] = []
        release = asyncio.Event()

        async def call(label: str, ok: bool = True) -> str:
            calls.append(label)
            await release.wait()
            return label if ok else ""

        shared: SharedCalls[str] = SharedCalls(8, ok=bool)
        first = Coverage("s", 1)
        leader = asyncio.ensure_future(shared.run("c", first, lambda: call("one")))
        await asyncio.sleep(0)
        follower = asyncio.ensure_future(shared.run("c", first, lambda: call("two")))
        impatient = asyncio.ensure_future(
            asyncio.wait_for(shared.run("c", first, lambda: call("three")), 0.01)
        )
        with pytest.raises(TimeoutError):
            await impatient  # a follower's deadline does not cancel the shared call
        release.set()
        assert await leader == ("one", False) and await follower == ("one", True)
        assert await shared.run("c", first, lambda: call("four")) == ("one", True)
        assert calls == ["one"]

        later = Coverage("s", 2)  # more turns fell out: a new call
        assert await shared.run("c", later, lambda: call("five", ok=False)) == ("", False)
        # An unusable outcome is not reused: the next job over those turns calls again.
        assert await shared.run("c", later, lambda: call("six")) == ("six", False)
        assert calls == ["one", "five", "six"]

    asyncio.run(scenario())
