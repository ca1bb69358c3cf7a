"""Per-record isolation: a step that raises for one record loses only that record.

Properties over arbitrary item sequences (poison at arbitrary points, Bytewax snapshots
at arbitrary points): every item is either processed or dead-lettered, and the key's
state equals the state of a run that never saw the poison items.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest
from bytewax.operators import StatefulBatchLogic, StatefulLogic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitpin.core import metrics
from splitpin.core.router.classifier import Classifier
from splitpin.core.settings import load_settings
from splitpin.operators import isolation
from splitpin.operators.budget import BudgetGate, TenantLedger, Verdict, _TenantLogic
from splitpin.operators.classify import MemoizedClassifier, classify_each
from splitpin.operators.cost_windows import _wake_at, windowable
from splitpin.operators.ingest import RawRecord
from splitpin.operators.isolation import (
    Failed,
    IsolatedBatchLogic,
    IsolatedLogic,
    Isolation,
    ProcessingError,
)
from splitpin.operators.model_calls import CallTable, JobStep
from splitpin.operators.routing import RoutePlan, Router, _ConversationLogic
from splitpin.schemas.events import ConversationEvent
from tests.factories import event_dict
from tests.unit.test_cost_windows import record as cost_record


def _describe(item: object) -> RawRecord | None:
    return RawRecord(b"k", repr(item).encode(), "events", -1, -1)


DEAD_LETTER = Isolation("dead_letter", _describe)


class PoisonError(Exception):
    pass


# --- a toy logic that half-applies a poison item before raising -------------------------


class Appender(StatefulLogic[tuple[int, bool], int, bytes]):
    """State: the values seen. A poison value is appended, then the logic raises (the
    worst case: half-applied). Value 0 resets the key (DISCARD)."""

    def __init__(self, resume: bytes | None) -> None:
        self.values: list[int] = [] if resume is None else pickle.loads(resume)

    def on_item(self, value: tuple[int, bool]) -> tuple[list[int], bool]:
        number, poison = value
        if number == 0:
            return [0], StatefulLogic.DISCARD
        self.values.append(number)
        if poison:
            raise PoisonError(str(number))
        return [number], StatefulLogic.RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps(self.values)


Op = tuple[str, int, bool]  # ("item", value, poison) | ("snapshot", 0, False)

ops = st.lists(
    st.one_of(
        st.tuples(st.just("item"), st.integers(0, 9), st.booleans()),
        st.just(("snapshot", 0, False)),
    ),
    max_size=60,
)


def _drive(
    build: Callable[[bytes | None], StatefulLogic[Any, Any, bytes]], script: list[Op]
) -> tuple[list[Any], bytes | None]:
    """What Bytewax does with one key: build on the first item, drop on DISCARD."""
    logic: StatefulLogic[Any, Any, bytes] | None = None
    out: list[Any] = []
    for kind, number, poison in script:
        if kind == "snapshot":
            if logic is not None:
                logic.snapshot()
            continue
        if logic is None:
            logic = build(None)
        emitted, discard = logic.on_item((number, poison))
        out.extend(emitted)
        if discard:
            logic = None
    return out, None if logic is None else logic.snapshot()


@settings(max_examples=300, deadline=None)
@given(script=ops, journal=st.integers(1, 8))
def test_a_failing_item_is_dead_lettered_and_leaves_no_trace_in_state(
    script: list[Op], journal: int
) -> None:
    with mock.patch.object(isolation, "MAX_JOURNAL", journal):
        out, state = _drive(
            lambda resume: IsolatedLogic("toy", Appender, resume, DEAD_LETTER), script
        )
    clean = [op for op in script if not (op[0] == "item" and op[2] and op[1] != 0)]
    expected_out, expected_state = _drive(Appender, clean)

    items = [(n, p) for kind, n, p in script if kind == "item"]
    failed = [x for x in out if isinstance(x, Failed)]
    assert len(failed) == sum(1 for n, p in items if p and n != 0)
    assert [x for x in out if not isinstance(x, Failed)] == expected_out
    assert state == expected_state
    assert all(f.letter.reason == "processing_error" for f in failed)
    assert all((f.letter.step, f.letter.error_type) == ("toy", "PoisonError") for f in failed)


def test_stop_reraises_naming_the_step() -> None:
    logic = IsolatedLogic("toy", Appender, None, Isolation("stop", _describe))
    with pytest.raises(ProcessingError, match=r"'toy'.*PoisonError"):
        logic.on_item((5, True))


def test_failures_are_counted_by_step_and_type() -> None:
    before = metrics.PROCESSING_ERRORS.labels("counted", "PoisonError")._value.get()
    logic = IsolatedLogic("counted", Appender, None, DEAD_LETTER)
    logic.on_item((5, True))
    logic.on_item((6, True))
    assert metrics.PROCESSING_ERRORS.labels("counted", "PoisonError")._value.get() == before + 2


def test_a_failing_timer_stops_its_notifications_until_the_next_item() -> None:
    class BadTimer(Appender):
        def notify_at(self) -> datetime | None:
            return datetime.now(UTC)

        def on_notify(self) -> tuple[list[int], bool]:
            self.values.append(-1)
            raise PoisonError("timer")

    logic = IsolatedLogic("timer", BadTimer, None, DEAD_LETTER)
    logic.on_item((3, False))
    out, _discard = logic.on_notify()
    assert [type(x) for x in out] == [Failed]
    assert logic.notify_at() is None
    assert pickle.loads(logic.snapshot()) == [3]
    logic.on_item((4, False))
    assert logic.notify_at() is not None


# --- the real conversation logic, with a router that raises after the state changed -----


class PoisonRouter(Router):
    """Raises on POISON texts: after `_ConversationLogic` has already added the turn."""

    def route(self, state, observation, classification):  # type: ignore[no-untyped-def]
        if "POISON" in observation.event.text:
            raise PoisonError(observation.event.event_id)
        return super().route(state, observation, classification)


TEXTS = ["where is my card?", "hi", "I was charged twice", "POISON please", "thanks, bye"]


@pytest.fixture(scope="module")
def classified_texts(classifier: Classifier) -> dict[str, Any]:
    return dict(zip(TEXTS, classifier.classify_batch(TEXTS), strict=True))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    turns=st.lists(
        st.tuples(st.sampled_from(TEXTS), st.sampled_from(["customer", "agent"])),
        min_size=1,
        max_size=12,
    ),
    snapshot_every=st.integers(1, 5),
)
def test_conversation_state_after_a_poison_turn_is_the_state_without_it(
    classified_texts: dict[str, Any], turns: list[tuple[str, str]], snapshot_every: int
) -> None:
    router = PoisonRouter(load_settings().governance)
    tracker = router.tracker()

    def build(resume: bytes | None) -> _ConversationLogic:
        return _ConversationLogic(router, tracker, resume)

    items = [
        (
            ConversationEvent.model_validate(
                event_dict(f"e-{i}", "c", text=text, role=role, at_s=i * 10)
            ),
            classified_texts[text],
            0.0,
        )
        for i, (text, role) in enumerate(turns)
    ]
    poison = {i for i, (text, _role) in enumerate(turns) if "POISON" in text}

    guarded = IsolatedLogic("conversation", build, None, DEAD_LETTER)
    reference = build(None)
    for i, item in enumerate(items):
        out, _ = guarded.on_item(item)
        if i in poison:
            assert [type(x) for x in out] == [Failed]
        else:
            expected, _ = reference.on_item(item)
            assert [p.observation.event.event_id for p in out] == [
                p.observation.event.event_id for p in expected
            ]
        if i % snapshot_every == 0:
            guarded.snapshot()
    state, _evict_at = pickle.loads(guarded.snapshot())
    expected_state, _ = pickle.loads(reference.snapshot())
    assert state == expected_state


# --- classify: only the poison event of a batch fails -----------------------------------


class RaisingClassifier:
    def __init__(self, real: Classifier) -> None:
        self.real = real

    def classify_batch(self, texts: list[str]) -> list[Any]:
        if any("POISON" in t for t in texts):
            raise PoisonError("classifier")
        return self.real.classify_batch(texts)


def test_a_batch_that_raises_is_retried_one_event_at_a_time(classifier: Classifier) -> None:
    memo = MemoizedClassifier(RaisingClassifier(classifier), 100, 8)  # type: ignore[arg-type]
    events = [
        ConversationEvent.model_validate(event_dict(f"e-{i}", f"c-{i}", text=t))
        for i, t in enumerate(["where is my card?", "POISON", "hi"])
    ]

    def on_error(event: ConversationEvent, exc: Exception) -> Failed:
        return DEAD_LETTER.fail("classify", event, exc)

    out = classify_each(events, memo, on_error)
    assert [type(x).__name__ for x in out] == ["tuple", "Failed", "tuple"]
    assert [x[0].event_id for x in out if isinstance(x, tuple)] == ["e-0", "e-2"]


# --- answering: a job that raises fails alone, not its shard ----------------------------


class FlakyPolicy:
    """One call per job; "open-bad" raises when opened, "advance-bad" when answered."""

    def job_id(self, item: str) -> str:
        return item

    def open(self, item: str) -> tuple[str, JobStep[str, str]]:
        if item == "open-bad":
            raise PoisonError(item)
        return item, JobStep(calls=[("call", item)])

    def advance(self, job: str, call_id: str, outcome: object) -> JobStep[str, str]:
        if job == "advance-bad":
            raise PoisonError(job)
        return JobStep(emit=[f"{job}:answered"], done=True)

    async def run(self, spec: str) -> str:
        return spec

    def timeout_s(self, spec: str) -> float:
        return 5.0


def test_a_job_that_raises_fails_alone() -> None:
    from splitpin.operators.call_executor import CallExecutor

    def on_job_error(
        job_id: str | None, item: str | None, job: str | None, exc: Exception
    ) -> tuple[list[str], Failed]:
        return [f"{job_id}:safe-reply"], DEAD_LETTER.fail("answer", item or job, exc)

    executor = CallExecutor(2)
    try:
        table: CallTable[str, str, str, str, str] = CallTable(
            FlakyPolicy(), executor, on_job_error=on_job_error
        )
        out: list[object] = []
        for item in ["a", "open-bad", "advance-bad", "b"]:
            out.extend(table.add(item))
        out.extend(table.drain())
    finally:
        executor.close()
    texts = sorted(x for x in out if isinstance(x, str))
    assert texts == ["a:answered", "advance-bad:safe-reply", "b:answered", "open-bad:safe-reply"]
    assert sum(isinstance(x, Failed) for x in out) == 2
    assert not table.jobs
    assert not table.pending


def test_without_a_handler_a_job_error_propagates() -> None:
    from splitpin.operators.call_executor import CallExecutor

    executor = CallExecutor(1)
    try:
        table: CallTable[str, str, str, str, str] = CallTable(FlakyPolicy(), executor)
        with pytest.raises(PoisonError):
            table.add("open-bad")
    finally:
        executor.close()


# --- cost windows: inputs Bytewax's windowing cannot place ------------------------------


@pytest.mark.parametrize(
    ("occurred_at", "ok"),
    [
        ("9999-12-31T23:59:59+00:00", False),
        ("9999-12-31T23:59:59-14:00", False),
        ("0001-01-01T00:00:00+14:00", False),
        ("0001-01-01T12:00:00+00:00", False),
        ("0001-01-03T00:00:00+00:00", True),
        ("2026-11-02T09:00:00+00:00", True),
        ("2200-01-01T00:00:00+00:00", True),
    ],
)
def test_windowable_rejects_times_at_the_datetime_limits(occurred_at: str, ok: bool) -> None:
    accounting = load_settings().governance.accounting
    record = cost_record("r-1").model_copy(
        update={"occurred_at": datetime.fromisoformat(occurred_at)}
    )
    assert windowable(record, accounting) is ok


def test_wake_up_time_for_the_last_window_is_clamped() -> None:
    clock = _wake_at(timedelta(seconds=5))
    latest = datetime.max.replace(tzinfo=UTC)
    assert clock.to_system_utc(latest - timedelta(seconds=1)) == latest


# --- the real budget logic, with a gate that raises after reserving ---------------------


class PoisonGate(BudgetGate):
    """Reserves the request's cost in the ledger, then raises for POISON texts."""

    def admit(self, ledger: TenantLedger, routed: RoutePlan) -> Verdict:
        verdict = super().admit(ledger, routed)
        if "POISON" in routed.observation.event.text:
            raise PoisonError(routed.observation.event.event_id)
        return verdict


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    texts=st.lists(st.sampled_from(TEXTS), min_size=1, max_size=12),
    snapshot_every=st.integers(1, 5),
)
def test_tenant_ledger_after_a_poison_request_is_the_ledger_without_it(
    classified_texts: dict[str, Any], texts: list[str], snapshot_every: int
) -> None:
    governance = load_settings().governance
    router = Router(governance)
    conversation = _ConversationLogic(router, router.tracker(), None)
    plans: list[RoutePlan] = []
    for i, text in enumerate(texts):
        event = ConversationEvent.model_validate(event_dict(f"e-{i}", "c", text=text, at_s=i * 10))
        out, _ = conversation.on_item((event, classified_texts[text], 0.0))
        plans.extend(out)

    gate = PoisonGate(governance)

    def build(resume: bytes | None) -> _TenantLogic:
        return _TenantLogic(gate, resume)

    guarded = IsolatedLogic("budget", build, None, DEAD_LETTER)
    reference = build(None)
    for i, plan in enumerate(plans):
        out, _ = guarded.on_item(plan)
        if "POISON" in plan.observation.event.text:
            assert [type(x) for x in out] == [Failed]
            assert out[0].letter.step == "budget"
        else:
            assert out == reference.on_item(plan)[0][:-1] + out[-1:]  # Dispatch times differ
        if i % snapshot_every == 0:
            guarded.snapshot()
    assert pickle.loads(guarded.snapshot()) == pickle.loads(reference.snapshot())


# --- batch logic: a batch with poison is re-applied item by item ------------------------


class BatchAppender(StatefulBatchLogic[tuple[int, bool], int, bytes]):
    """Appends every value of a batch in turn, raising at the first poison (half-applied)."""

    def __init__(self, resume: bytes | None) -> None:
        self.values: list[int] = [] if resume is None else pickle.loads(resume)

    def on_batch(self, values: list[tuple[int, bool]]) -> tuple[list[int], bool]:
        out = []
        for number, poison in values:
            self.values.append(number)
            if poison:
                raise PoisonError(str(number))
            out.append(number)
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps(self.values)


@settings(max_examples=300, deadline=None)
@given(
    batches=st.lists(
        st.one_of(
            st.lists(st.tuples(st.integers(1, 9), st.booleans()), min_size=1, max_size=6),
            st.just([]),  # stands for a snapshot
        ),
        max_size=20,
    ),
    journal=st.integers(1, 8),
)
def test_a_poison_item_in_a_batch_fails_alone_and_leaves_no_trace(
    batches: list[list[tuple[int, bool]]], journal: int
) -> None:
    with mock.patch.object(isolation, "MAX_JOURNAL", journal):
        logic = IsolatedBatchLogic("batch", BatchAppender, None, DEAD_LETTER)
        out: list[Any] = []
        for batch in batches:
            if not batch:
                logic.snapshot()
                continue
            emitted, discard = logic.on_batch(batch)
            assert not discard or not pickle.loads(logic.snapshot())
            out.extend(emitted)
    items = [item for batch in batches for item in batch]
    clean = [n for n, poison in items if not poison]
    assert [x for x in out if not isinstance(x, Failed)] == clean
    assert sum(isinstance(x, Failed) for x in out) == sum(p for _, p in items)
    assert pickle.loads(logic.snapshot()) == clean


def test_an_abandoned_job_still_ends_with_one_final_safe_reply() -> None:
    from splitpin.operators.answering import AnswerJob, AnswerPolicy, Dispatch
    from splitpin.schemas.replies import Reply
    from tests.factories import decision

    governance = load_settings().governance

    async def unused(spec: object) -> object:
        raise AssertionError("no call is made for an abandoned job")

    policy = AnswerPolicy(governance, runner=unused)  # type: ignore[arg-type]
    dispatch = Dispatch(decision("e-9"), (), "", dispatched_at=0.0)
    replies = [x for x in policy.abandon(dispatch, None) if isinstance(x, Reply)]
    assert [(r.kind, r.status, r.text, r.revision) for r in replies] == [
        ("final", "withheld", governance.replies.safe_reply, 1)
    ]
    # After a preliminary went out, the safe final supersedes it.
    preliminary = replies[0].model_copy(update={"kind": "preliminary", "revision": 0})
    job = AnswerJob(dispatch, preliminary=preliminary)
    (final,) = [x for x in policy.abandon(dispatch, job) if isinstance(x, Reply)]
    assert (final.kind, final.revision, final.supersedes) == ("final", 1, 0)
