"""Every stateful stage's plain logic, driven by arbitrary sequences of valid events.

Issue 9: single valid-looking records (a far-future or year-1 `sent_at`) crashed stateful
stages and, through the snapshot, every restart. Whatever ingest lets through, these
stages must not raise, and must account for each input: the conversation state observes
every event or counts it as a retry; the cost windows emit every distinct call exactly
once in total; an answering job ends with exactly one final reply whatever its calls do.
(The budget gate's properties are in test_budget_properties.py.)
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from splitpin.operators.answering import AnswerPolicy, CallOutcome, CallSpec, Dispatch
from splitpin.operators.conversation_state import ConversationState
from splitpin.operators.cost_windows import (
    WINDOW_ALIGN,
    CostWindow,
    CountedWindows,
    WindowItem,
    windowable,
)
from splitpin.operators.model_calls import CallFailed
from splitpin.operators.routing import Router
from splitpin.providers.base import Message, ModelResult, SourceDoc, Usage
from splitpin.schemas.events import ConversationEvent
from splitpin.schemas.metrics import CostRecord
from splitpin.schemas.replies import Citation, Reply
from tests.factories import decision, event_dict
from tests.routing_helpers import SHIPPED, classification

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

OFFSETS = [timezone(timedelta(hours=h)) for h in (-14, -5, 0, 5, 14)] + [UTC]
EXTREME = [
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(1, 1, 1, 14, tzinfo=timezone(timedelta(hours=14))),
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(2200, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 9, 59, 59, tzinfo=timezone(timedelta(hours=-14))),
    datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
]
TEXTS = [
    "I am still waiting on my card?",
    "hi",
    "thanks!",
    "Can I get a refund for this charge? " * 40,
    "I want to dispute a transaction and report fraud",
    "日本語のテキスト 🙂",
]


def _representable(moment: datetime) -> bool:
    try:
        moment.astimezone(UTC)
        moment.timestamp()
    except (OverflowError, ValueError):
        return False
    return True


sent_ats = st.one_of(
    st.sampled_from(EXTREME),
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(OFFSETS),
    ),
    st.integers(-3600 * 24 * 40, 3600 * 24 * 40).map(
        lambda s: datetime(2026, 12, 4, tzinfo=UTC) + timedelta(seconds=s)
    ),
).filter(_representable)


@st.composite
def events(draw: st.DrawFn) -> ConversationEvent:
    """A valid ConversationEvent; small id spaces so retries and shared conversations occur."""
    data = event_dict(
        f"e-{draw(st.integers(0, 8))}",
        f"c-{draw(st.integers(0, 2))}",
        text=draw(st.sampled_from(TEXTS)),
        channel=draw(st.sampled_from(["chat", "email"])),
        role=draw(st.sampled_from(["customer", "customer", "agent", "system"])),
        tags=tuple(draw(st.lists(st.sampled_from(["compliance", "vip", "x"]), max_size=2))),
        tenant_id=draw(st.sampled_from(["acme-bank", "shopco", "someone-else"])),
        sent_at=draw(sent_ats).isoformat(),
    )
    try:
        return ConversationEvent.model_validate(data)
    except ValidationError:  # the schema refuses it at the door: not a valid event
        assume(False)
        raise


classifications = st.builds(
    classification,
    confidence=st.floats(0, 1),
    trivial=st.booleans(),
    out_of_scope=st.booleans(),
    compliance=st.booleans(),
)


# --- conversation state + routing -----------------------------------------------------


@PROPERTY
@given(st.lists(st.tuples(events(), classifications), min_size=1, max_size=25))
def test_conversation_state_and_routing_account_for_every_event(
    sequence: list[tuple[ConversationEvent, Any]],
) -> None:
    router = Router(SHIPPED)
    tracker = router.tracker()
    states: dict[str, ConversationState] = {}
    seen: set[tuple[str, str]] = set()
    observed = duplicates = routed = 0
    for event, classified in sequence:
        key = (event.conversation_id, event.event_id)
        state, observation = tracker.observe(states.get(event.conversation_id), event)
        states[event.conversation_id] = state
        if observation is None:
            assert key in seen, f"{key} counted as a retry but never observed"
            duplicates += 1
            continue
        assert key not in seen, f"{key} observed twice"
        seen.add(key)
        observed += 1
        tokens = observation.tokens
        assert observation.turn_index >= 0
        assert tokens.conversation >= tokens.turn >= 0 and tokens.window >= 0
        plan = router.route(state, observation, classified)
        if event.role != "customer":
            assert plan is None
            continue
        assert plan is not None
        routed += 1
        assert (plan.plan is None) == (plan.overflow is not None)
        if "compliance" in event.tags:
            assert plan.choice.pinned
            assert plan.choice.role == SHIPPED.routing.tag_pins["compliance"]
        if plan.choice.pinned and plan.plan is not None:
            assert plan.plan.role == plan.choice.role, "a pin is never lifted by the guard"
    assert observed + duplicates == len(sequence)
    assert observed == len(seen)
    assert routed == sum(1 for e, _ in sequence if e.role == "customer") - _customer_retries(
        sequence
    )


def _customer_retries(sequence: list[tuple[ConversationEvent, Any]]) -> int:
    seen: set[tuple[str, str]] = set()
    retries = 0
    for event, _ in sequence:
        key = (event.conversation_id, event.event_id)
        retries += key in seen and event.role == "customer"
        seen.add(key)
    return retries


# --- cost windows ---------------------------------------------------------------------

ACCOUNTING = SHIPPED.accounting
LENGTH = timedelta(seconds=ACCOUNTING.window_s)


@st.composite
def cost_records(draw: st.DrawFn) -> CostRecord:
    return CostRecord(
        record_id=f"r-{draw(st.integers(0, 30))}",
        event_id="e",
        tenant_id="acme-bank",
        role="fast",
        model="m",
        model_version="m-1",
        tokens_in=draw(st.integers(0, 5000)),
        tokens_out=draw(st.integers(0, 2000)),
        cost_usd=draw(st.floats(0, 5, allow_nan=False)),
        latency_ms=draw(st.floats(0, 10_000, allow_nan=False)),
        occurred_at=draw(sent_ats),
        escalated=draw(st.booleans()),
    )


def _window_id(record: CostRecord) -> int:
    return (record.occurred_at.astimezone(UTC) - WINDOW_ALIGN) // LENGTH


@PROPERTY
@given(
    st.lists(
        st.lists(st.tuples(cost_records(), st.booleans()), min_size=1, max_size=8),
        min_size=1,
        max_size=6,
    )
)
def test_cost_windows_count_every_distinct_call_once(
    batches: list[list[tuple[CostRecord, bool]]],
) -> None:
    """Batches as Bytewax delivers them: closed accumulators and late records, any dates.

    A record the flow would not window (`windowable`, dead-lettered before the operator)
    is left out; for every other one, the sums over all emitted windows equal the sums
    over the distinct record_ids that came in, and nothing raises.
    """
    counted = CountedWindows(LENGTH)
    first: dict[str, CostRecord] = {}
    emitted = []
    for batch in batches:
        closed: dict[int, CostWindow] = {}
        items: list[WindowItem] = []
        for record, late in batch:
            if not windowable(record, ACCOUNTING):
                continue
            # A record_id is one call: its copies carry the same window (replays).
            record = first.setdefault(record.record_id, record)
            if late:
                items.append((_window_id(record), record))
            else:
                closed.setdefault(_window_id(record), CostWindow()).add(record)
        items += list(closed.items())
        emitted += counted.on_batch(items)
    assert sum(w.calls for w in emitted) == len(first)
    assert math.isclose(
        sum(w.cost_usd for w in emitted),
        math.fsum(r.cost_usd for r in first.values()),
        rel_tol=1e-9,
        abs_tol=1e-9,
    )
    for window in emitted:
        assert window.window_end - window.window_start == LENGTH
        assert window.latency_p50_ms <= window.latency_p95_ms


@pytest.mark.parametrize("moment", EXTREME)
def test_cost_windows_never_raise_for_an_extreme_call(moment: datetime) -> None:
    record = CostRecord(
        record_id="r",
        event_id="e",
        tenant_id="acme-bank",
        role="fast",
        model="m",
        model_version="m-1",
        tokens_in=1,
        tokens_out=1,
        cost_usd=0.1,
        latency_ms=1.0,
        occurred_at=moment,
    )
    if not windowable(record, ACCOUNTING):
        return  # dead-lettered (processing_error) before the windowing operator
    out = CountedWindows(LENGTH).on_batch([(_window_id(record), CostWindow().add(record))])
    assert [w.calls for w in out] == [1]


# --- answering ------------------------------------------------------------------------

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
DOCS = [None, "InternalDoc-11", "InternalDoc-12", "InventedDoc-99"]


def _source_of(doc: str) -> str:
    return next((s.source for s in SOURCES if s.doc_id == doc), "kb:nowhere")


outcomes = st.one_of(
    st.tuples(st.just("ok"), st.sampled_from(DOCS), st.one_of(st.none(), st.floats(0, 1))),
    st.tuples(st.just("failed"), st.sampled_from(["timeout", "error"]), st.none()),
    st.tuples(st.just("error"), st.sampled_from(["server", "context_overflow"]), st.none()),
)


@st.composite
def dispatches(draw: st.DrawFn) -> Dispatch:
    role = draw(st.sampled_from(["fast", "long_context", "compliance", "trivial"]))
    pinned = role == "compliance" or draw(st.booleans())
    role_name = "fast" if role == "trivial" else role
    config = SHIPPED.roles[role_name]  # type: ignore[index]
    made = decision(
        f"e-{draw(st.integers(0, 99))}",
        channel=draw(st.sampled_from(["chat", "email"])),
        tenant_id=draw(st.sampled_from(["acme-bank", "shopco"])),
        sent_at=draw(sent_ats),
        action=draw(st.sampled_from(["dispatch", "dispatch", "refuse"])),
        tier="trivial" if role == "trivial" else "bounded",
        role=role_name,
        model=config.model,
        model_version=config.pinned_id,
        pinned=pinned,
    )
    messages = (Message(role="user", content=draw(st.sampled_from(TEXTS))),)
    return Dispatch(made, messages, "", dispatched_at=1.0)


async def _unused(spec: CallSpec) -> CallOutcome:
    raise AssertionError("the test supplies outcomes itself")


def _outcome(spec: CallSpec, scripted: tuple[str, Any, Any]) -> CallOutcome | CallFailed:
    kind, what, confidence = scripted
    request = spec.request(spec.sources if spec.sources is not None else SOURCES)
    if kind == "failed":
        return CallFailed(what, "scripted")
    if kind == "error":
        return CallOutcome(request, None, error_kind=what, error="scripted")
    citations = () if what is None else (Citation(doc_id=what, source=_source_of(what)),)
    result = ModelResult(
        request_id=spec.request_id,
        role=spec.role,
        text=f"answer citing {what}",
        citations=citations,
        usage=Usage(tokens_in=100, tokens_out=20),
        latency_ms=5.0,
        model_version=f"local-{spec.role}@test",
        provider="local",
        confidence=confidence,
    )
    return CallOutcome(request, result)


@PROPERTY
@given(dispatches(), st.lists(outcomes, min_size=8, max_size=8))
def test_every_answer_job_ends_with_exactly_one_final_reply(
    dispatch: Dispatch, script: list[tuple[str, Any, Any]]
) -> None:
    policy = AnswerPolicy(SHIPPED, runner=_unused, clock=lambda: 2.0)
    job, step = policy.open(dispatch)
    emitted = list(step.emit)
    # As operators/model_calls.py: calls in order, a scheduled (hedge) call once nothing
    # else is left, cancelled calls dropped, and nothing advanced after the job is done.
    queue = list(step.calls)
    scheduled = [(c, s) for c, s, _ in step.delayed]
    calls = 0
    while (queue or scheduled) and not step.done:
        call_id, spec = queue.pop(0) if queue else scheduled.pop(0)
        assert calls < len(script), "the job keeps calling: no bound on its chain"
        step = policy.advance(job, call_id, _outcome(spec, script[calls]))
        calls += 1
        emitted += step.emit
        queue = [c for c in queue if c[0] not in step.cancel] + list(step.calls)
        scheduled = [c for c in scheduled if c[0] not in step.cancel]
        scheduled += [(c, s) for c, s, _ in step.delayed]
    assert step.done
    replies = [item for item in emitted if isinstance(item, Reply)]
    finals = [r for r in replies if r.kind == "final"]
    assert len(finals) == 1, [(r.kind, r.status) for r in replies]
    assert replies[-1] is finals[0], "nothing follows the final revision"
    assert all(r.reply_id == dispatch.decision.event_id for r in replies)
    preliminaries = [r for r in replies if r.kind == "preliminary"]
    assert len(preliminaries) <= 1
    if preliminaries:
        assert dispatch.decision.channel == "chat" and not dispatch.decision.pinned
        assert finals[0].supersedes == preliminaries[0].revision
    if dispatch.decision.action == "refuse":
        assert calls == 0 and finals[0].status == "refused"
    records = [item for item in emitted if isinstance(item, CostRecord)]
    costs = Counter(record.record_id for record in records)
    # A job whose finishing step made no call re-emits its last record marked last_call
    # (same record_id) so the budget gate releases the unused slots: one record per call,
    # plus at most that one marked copy.
    repeats = [r for r in records if costs[r.record_id] > 1]
    assert all(n <= 2 for n in costs.values()), "one cost record per call"
    assert sum(1 for n in costs.values() if n == 2) <= 1
    assert all(r.last_call for r in repeats[1:]), "only the last_call copy repeats a record"
