"""Hedged calls: delayed and cancellable calls in the executor and the call table, and the
answering policy's "first valid final wins" over every order in which calls can finish."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitpin.operators.answering import (
    AnswerOutput,
    AnswerPolicy,
    CallOutcome,
    CallSpec,
    Dispatch,
)
from splitpin.operators.call_executor import CallExecutor
from splitpin.operators.isolation import Failed
from splitpin.operators.model_calls import CallFailed, CallTable, JobStep, StreamingQuantile
from splitpin.providers.base import Message, ModelResult, SourceDoc, Usage
from splitpin.schemas.governance import GovernanceConfig
from splitpin.schemas.metrics import CostRecord
from splitpin.schemas.replies import Citation, Reply
from tests.factories import T0, decision
from tests.routing_helpers import governance

T = TypeVar("T")


@pytest.fixture
def executor() -> Iterator[CallExecutor]:
    pool = CallExecutor(4)
    yield pool
    pool.close()


def _wait(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


# --- executor: delayed and cancellable calls --------------------------------------------


def test_a_delayed_call_starts_no_earlier_than_its_delay(executor: CallExecutor) -> None:
    started: list[float] = []

    async def call() -> str:
        started.append(time.monotonic())
        return "ok"

    submitted = time.monotonic()
    future = executor.submit(call, delay_s=0.2)
    _wait(lambda: executor.delayed == 1)
    assert executor.queued == 0 and executor.in_flight == 0  # a timer holds no slot
    assert future.result(timeout=5) == "ok"
    assert started[0] - submitted >= 0.19


def test_cancelling_a_timer_means_the_call_never_runs(executor: CallExecutor) -> None:
    ran: list[str] = []

    async def call() -> str:
        ran.append("ran")
        return "ok"

    future = executor.submit(call, delay_s=0.2)
    assert executor.cancel(future) is True
    time.sleep(0.35)
    assert ran == []
    assert (executor.delayed, executor.queued, executor.in_flight) == (0, 0, 0)
    assert executor.started(future) is False  # nothing was sent: nothing can be billed


def test_cancelling_mid_flight_stops_the_task_and_frees_its_slot(executor: CallExecutor) -> None:
    seen: list[str] = []

    async def call() -> str:
        seen.append("started")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return "never"

    future = executor.submit(call, timeout_s=60)
    _wait(lambda: executor.in_flight == 1)
    assert executor.cancel(future) is True
    _wait(lambda: seen == ["started", "cancelled"])
    _wait(lambda: executor.in_flight == 0)
    assert executor.started(future) is True  # it was sent: the provider may bill its input


def test_a_finished_call_cannot_be_cancelled_its_result_stands(executor: CallExecutor) -> None:
    async def call() -> str:
        return "billed"

    future = executor.submit(call)
    assert future.result(timeout=5) == "billed"
    assert executor.cancel(future) is False
    assert future.result() == "billed"


# --- the call table: timers, cancellation, snapshots ------------------------------------


@dataclass
class Race:
    """Call `a` at once and `b` after `delay_s`; the first outcome ends the job."""

    durations: dict[str, float]
    delay_s: float = 0.2
    started: dict[str, float] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)
    settled: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def job_id(self, item: str) -> str:
        return item

    def open(self, item: str) -> tuple[str, JobStep[str, str]]:
        return item, JobStep(calls=[("a", "a")], delayed=[("b", "b", self.delay_s)])

    def advance(self, job: str, call_id: str, outcome: str | CallFailed) -> JobStep[str, str]:
        return JobStep(emit=[f"{job}:{call_id}:{outcome}"], done=True)

    def settle(
        self, job: str, call_id: str, outcome: str | CallFailed, spec: object = None
    ) -> Sequence[str]:
        kind = outcome.reason if isinstance(outcome, CallFailed) else "billed"
        self.settled.append((call_id, kind))
        return [f"settled:{call_id}:{kind}"]

    async def run(self, spec: str) -> str:
        with self.lock:
            self.started[spec] = time.monotonic()
        try:
            await asyncio.sleep(self.durations[spec])
        except asyncio.CancelledError:
            with self.lock:
                self.cancelled.append(spec)
            raise
        return "done"

    def timeout_s(self, spec: str) -> float:
        return 60.0


def test_the_fast_call_wins_before_the_timer_the_hedge_never_starts(
    executor: CallExecutor,
) -> None:
    policy = Race({"a": 0.01, "b": 0.01}, delay_s=0.3)
    table: CallTable[str, str, str, str, str] = CallTable(policy, executor)
    table.add("j")
    out = table.drain()
    assert out == ["j:a:done", "settled:b:cancelled"]
    time.sleep(0.4)
    assert "b" not in policy.started  # the timer was cancelled: no call, no cost
    assert not table.jobs and not table.pending


def test_the_hedge_wins_and_the_slow_call_is_cancelled_in_flight(executor: CallExecutor) -> None:
    policy = Race({"a": 30.0, "b": 0.01}, delay_s=0.1)
    table: CallTable[str, str, str, str, str] = CallTable(policy, executor)
    table.add("j")
    out = table.drain()
    assert out == ["j:b:done", "settled:a:cancelled"]
    _wait(lambda: policy.cancelled == ["a"])
    _wait(lambda: executor.in_flight == 0)
    assert not table.jobs and not table.pending


def test_a_loser_that_already_billed_is_settled_with_its_result(executor: CallExecutor) -> None:
    policy = Race({"a": 0.01, "b": 0.01}, delay_s=0.05)
    table: CallTable[str, str, str, str, str] = CallTable(policy, executor)
    table.add("j")
    _wait(lambda: all(p.future.done() for p in table.pending.values()))
    out = [str(o) for o in table.poll()]  # both finished before the worker looked
    assert len(out) == 2 and out[0].startswith("j:")  # one wins, the other is settled
    loser = "b" if out[0].startswith("j:a") else "a"
    assert out[1] == f"settled:{loser}:billed"


def test_a_snapshot_keeps_a_pending_hedge_and_resume_honours_its_due_time(
    executor: CallExecutor,
) -> None:
    policy = Race({"a": 30.0, "b": 0.01}, delay_s=0.5)
    table: CallTable[str, str, str, str, str] = CallTable(policy, executor)
    table.add("j")
    snapshot = table.snapshot()
    taken = time.monotonic()
    for pending in list(table.pending.values()):
        executor.cancel(pending.future)  # the old process is gone

    resumed_policy = Race({"a": 30.0, "b": 0.01}, delay_s=0.5)
    resumed: CallTable[str, str, str, str, str] = CallTable(resumed_policy, executor)
    resumed.restore(snapshot)
    assert set(resumed.pending) == {("j", "a"), ("j", "b")}
    assert resumed.drain() == ["j:b:done", "settled:a:cancelled"]
    assert resumed_policy.started["b"] - taken >= 0.4  # not started at once: still a timer


def test_the_streaming_quantile_uses_its_prior_then_its_window() -> None:
    estimate = StreamingQuantile(0.9, prior=2.0, window=100, min_samples=10)
    for n in range(9):
        estimate.observe(float(n))
    assert estimate.value() == 2.0
    for n in range(200):
        estimate.observe(float(n % 100))
    assert estimate.value() == 90.0


# --- the answering policy: first valid final wins ---------------------------------------

SOURCES = tuple(
    SourceDoc(
        doc_id=f"InternalDoc-{n}",
        title=f"Article {n}",
        text="text",
        source=f"kb:banking77/InternalDoc-{n}",
        score=0.9,
    )
    for n in (11, 12)
)


class ManualExecutor:
    """Futures the test finishes in the order hypothesis draws (no loop, no thread): the
    call table's logic under every interleaving, which a real loop would only sample."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.submitted: list[tuple[concurrent.futures.Future[Any], float]] = []
        self.race: Callable[[concurrent.futures.Future[Any]], None] = lambda future: None
        """Called as a cancel arrives: the call may finish just then (and have billed)."""

    def submit(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        timeout_s: float | None = None,
        delay_s: float | None = None,
    ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self.submitted.append((future, self.clock() + (delay_s or 0.0)))
        return future

    def cancel(self, future: concurrent.futures.Future[Any]) -> bool:
        self.race(future)
        return future.cancel()

    def started_at(self, future: concurrent.futures.Future[Any]) -> float:
        return next(at for f, at in self.submitted if f is future)

    def started(self, future: concurrent.futures.Future[Any]) -> bool:
        """Sent once its delay has passed (a queue for slots is not modelled here)."""
        return self.clock() >= self.started_at(future)


def _result(spec: CallSpec, kind: str) -> ModelResult:
    doc = "InternalDoc-99" if kind == "bad" else "InternalDoc-11"
    return ModelResult(
        request_id=spec.request_id,
        role=spec.role,
        text=f"answer from {spec.role}",
        citations=(Citation(doc_id=doc, source=f"kb:banking77/{doc}"),),
        usage=Usage(tokens_in=100, tokens_out=20),
        latency_ms=1500.0,
        model_version=f"local-{spec.role}@test",
        provider="local",
        confidence=0.2 if kind == "low" else 0.9,
    )


def _hedging(mode: str, **replies: Any) -> GovernanceConfig:
    return governance(
        replies={"hedging": {"enabled": True, "chat": mode, "email": mode}, **replies}
    )


GOVS = {
    "immediate": _hedging("immediate"),
    "after_quantile": _hedging("after_quantile"),
    "below_confidence": _hedging("immediate", verify="below_confidence"),
}

Outcome = st.sampled_from(["ok", "low", "bad", "fail"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    config=st.sampled_from(sorted(GOVS)),
    channel=st.sampled_from(["chat", "email"]),
    moves=st.lists(
        st.tuples(st.integers(0, 5), Outcome, st.booleans(), st.floats(0, 3)),
        min_size=1,
        max_size=30,
    ),
    late=st.lists(st.booleans(), min_size=6, max_size=6),
)
def test_first_valid_final_wins_whatever_order_the_calls_finish_in(
    config: str, channel: str, moves: list[tuple[int, str, bool, float]], late: list[bool]
) -> None:
    now = [T0.timestamp() + 1.0]
    pool = ManualExecutor(lambda: now[0])
    policy = AnswerPolicy(GOVS[config], runner=_unused, clock=lambda: now[0])
    table: CallTable[Dispatch, Any, CallSpec, CallOutcome, AnswerOutput] = CallTable(
        policy,
        pool,  # type: ignore[arg-type]  # the executor's interface, driven by hand
    )
    messages = (Message(role="user", content="my card has not arrived"),)
    item = Dispatch(decision("e-1", channel=channel), messages, "", dispatched_at=now[0])
    out: list[AnswerOutput | Failed] = list(table.add(item))
    if config == "after_quantile":  # a timer (the fast role's prior, 2 s), not a call
        assert [key[1] for key in table.pending] == ["primary", "verify"]
    billed: set[str] = set()
    calls: dict[int, tuple[str, CallSpec]] = {}  # future id -> what it calls

    def seen() -> None:
        calls.update({id(p.future): (key[1], p.spec) for key, p in table.pending.items()})

    def race(future: concurrent.futures.Future[Any]) -> None:
        """A started call the table cancels may have finished a moment before: billed."""
        finishes = late.pop(0) if late else False
        if id(future) not in calls:  # submitted in this very poll: it cannot have finished
            return
        if finishes and not future.done() and pool.started_at(future) <= now[0]:
            call_id, spec = calls[id(future)]
            future.set_result(CallOutcome(spec.request(SOURCES), _result(spec, "ok")))
            billed.add(call_id)

    pool.race = race
    seen()

    def finish(index: int, kind: str) -> None:
        ready = [
            (key, p)
            for key, p in table.pending.items()
            if not p.future.done() and pool.started_at(p.future) <= now[0]
        ]
        if not ready:
            return
        (_, call_id), pending = ready[index % len(ready)]
        if kind == "fail":
            pending.future.set_exception(TimeoutError("scripted"))
            return
        result = _result(pending.spec, kind)
        pending.future.set_result(CallOutcome(pending.spec.request(SOURCES), result))
        assert call_id not in billed  # a call id bills once (a CostRecord id)
        billed.add(call_id)

    calls_at_final: list[int] = []

    def poll() -> None:
        out.extend(table.poll())
        seen()
        if not calls_at_final and any(isinstance(r, Reply) and r.kind == "final" for r in out):
            calls_at_final.append(len(pool.submitted))

    for index, kind, polls, advance in moves:
        now[0] += advance
        finish(index, kind)
        if polls:
            poll()
    for _ in range(20):  # then everything left finishes, fine, in table order
        if not table.pending:
            break
        now[0] = max(now[0], *(pool.started_at(p.future) for p in table.pending.values()))
        finish(0, "ok")
        poll()

    finals = [r for r in out if isinstance(r, Reply) and r.kind == "final"]
    assert len(finals) == 1  # exactly one final reply
    after_final = out[out.index(finals[0]) + 1 :]
    assert not [r for r in after_final if isinstance(r, Reply)]  # nothing after the final
    assert not table.jobs and not table.pending  # no call outlives its job
    assert not calls_at_final or len(pool.submitted) == calls_at_final[0]  # none after it
    if channel == "email":
        assert not [r for r in out if isinstance(r, Reply) and r.kind == "preliminary"]
    # Both calls accounted: a CostRecord for every call that billed, an estimated one for
    # a call cancelled after it started (the provider may have billed the prompt it read),
    # and the gate's view (the last statement of last_call) names exactly those calls.
    records = [r for r in out if isinstance(r, CostRecord)]
    assert {r.record_id.rpartition(":")[2] for r in records if not r.estimated} == billed
    estimated = {r.record_id.rpartition(":")[2] for r in records if r.estimated}
    assert not estimated & billed, "a call that returned is billed as it returned"
    last = [r for r in records if r.last_call]
    if records:
        assert last, "a finished job states its last call"
        assert set(last[-1].job_calls) == billed | estimated
    # The budget gate releases every slot a last_call leaves out: no record may come later
    # for a call a last_call left out (its cost would escape the window it was reserved in).
    for at, record in enumerate(records):
        if record.last_call:
            later = {r.record_id.rpartition(":")[2] for r in records[at + 1 :]}
            assert later <= set(record.job_calls)


async def _unused(spec: CallSpec) -> CallOutcome:
    raise AssertionError("the test finishes the futures itself")


def test_email_hedges_at_once_and_the_verifier_alone_can_end_the_job() -> None:
    gov = _hedging("immediate")
    policy = AnswerPolicy(gov, runner=_unused, clock=lambda: T0.timestamp() + 2.0)
    messages = (Message(role="user", content="my card has not arrived"),)
    item = Dispatch(decision("e-1", channel="email"), messages, "", dispatched_at=T0.timestamp())
    job, step = policy.open(item)
    assert [c for c, _ in step.calls] == ["primary", "verify"]
    verify = dict(step.calls)["verify"]
    assert verify.hedge == "email" and verify.candidates == ()
    outcome = CallOutcome(verify.request(SOURCES), _result(verify, "ok"))
    done = policy.advance(job, "verify", outcome)
    assert done.done and [r.kind for r in done.emit if isinstance(r, Reply)] == ["final"]
    (record,) = [r for r in done.emit if isinstance(r, CostRecord)]
    assert set(record.job_calls) == {"verify", "primary"}  # the loser keeps its slot ...
    settled = policy.settle(job, "primary", CallFailed("cancelled", "lost the race"))
    (restated,) = settled
    assert isinstance(restated, CostRecord) and restated.record_id == record.record_id
    assert restated.job_calls == ("verify",)  # ... until it is known it never billed


def test_a_hedge_cancelled_in_flight_is_accounted_from_above_and_marked_estimated() -> None:
    """The fast pass stands alone (email, audit policy) while the hedged verifier is at
    work: the verifier is cancelled, but a provider bills the prompt it has read, so the
    job states an estimated record for it, priced from above, and its slot is settled."""
    gov = _hedging("immediate", verify="below_confidence", verify_min_probability=0.5)
    policy = AnswerPolicy(
        gov,
        runner=_unused,
        clock=lambda: T0.timestamp() + 2.0,
        probability=lambda role, confidence, provider: confidence,
    )
    messages = (Message(role="user", content="my card has not arrived"),)
    item = Dispatch(decision("e-1", channel="email"), messages, "", dispatched_at=T0.timestamp())
    job, step = policy.open(item)
    specs = dict(step.calls)
    primary = specs["primary"]
    done = policy.advance(
        job, "primary", CallOutcome(primary.request(SOURCES), _result(primary, "ok"))
    )
    assert done.done, "a confident fast answer is final without the verifier"
    (record,) = [r for r in done.emit if isinstance(r, CostRecord)]
    assert set(record.job_calls) == {"primary", "verify"}
    unstarted = policy.settle(job, "verify", CallFailed("cancelled", "won"), specs["verify"])
    assert [r.estimated for r in unstarted if isinstance(r, CostRecord)] == [False]
    job2, step2 = policy.open(item)
    specs2 = dict(step2.calls)
    policy.advance(job2, "primary", CallOutcome(primary.request(SOURCES), _result(primary, "ok")))
    cancelled = CallFailed("cancelled", "the fast pass stood alone", started=True)
    settled = [
        r
        for r in policy.settle(job2, "verify", cancelled, specs2["verify"])
        if isinstance(r, CostRecord)
    ]
    (estimate,) = settled
    verifier = gov.roles[specs2["verify"].role]
    assert estimate.estimated and estimate.last_call and estimate.record_id == "e-1:verify"
    assert estimate.tokens_out == 0 and estimate.tokens_in >= gov.context.system_prompt_tokens
    assert estimate.cost_usd == pytest.approx(verifier.cost_usd(estimate.tokens_in, 0), abs=1e-9)
    assert set(estimate.job_calls) == {"primary", "verify"}, "both calls have records now"


def test_hedging_off_keeps_the_calls_one_after_the_other() -> None:
    policy = AnswerPolicy(governance(replies={"hedging": {"enabled": False}}), runner=_unused)
    messages = (Message(role="user", content="my card has not arrived"),)
    item = Dispatch(decision("e-1", channel="email"), messages, "", dispatched_at=0.0)
    _, step = policy.open(item)
    assert [c for c, _ in step.calls] == ["primary"] and not step.delayed
