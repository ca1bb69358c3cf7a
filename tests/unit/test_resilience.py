"""Retry, breaker and fallback policy as pure logic: fake providers, fake clock, fake sleep."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from splitpin.operators.answering import (
    AnswerOutput,
    AnswerPolicy,
    CallOutcome,
    CallSpec,
    Dispatch,
    Escalation,
)
from splitpin.operators.budget import BudgetGate, TenantLedger
from splitpin.providers.base import (
    BadRequestError,
    CircuitOpenError,
    ContextOverflowError,
    Message,
    ModelRequest,
    ModelResult,
    Provider,
    ProviderError,
    SourceDoc,
    TransientError,
    Usage,
)
from splitpin.providers.resilience import (
    AttemptTimeoutError,
    CircuitBreaker,
    FallbackChain,
    ResilientProvider,
    RetryAfterBeyondDeadlineError,
    backoff_s,
    complete_with_fallback,
    error_type,
    link_deadline_s,
    parse_retry_after,
)
from splitpin.schemas.decisions import ModelRole
from splitpin.schemas.governance import GovernanceConfig, ResilienceConfig, RoleConfig
from splitpin.schemas.metrics import CostRecord
from splitpin.schemas.replies import Citation, Reply
from splitpin.schemas.validation import ValidationFailure
from tests.factories import T0, decision
from tests.routing_helpers import VERIFY_EVERY_ANSWER, Conversation, governance
from tests.time_fakes import FakeClock, FakeSleep

RESILIENCE = ResilienceConfig(
    backoff_base_s=0.25, backoff_max_s=8.0, breaker_failures=3, breaker_reset_s=30.0
)


def _role(version: str, *, retry_budget: int = 2, timeout_s: float = 5.0) -> RoleConfig:
    return RoleConfig(
        provider="anthropic",
        model=version.rsplit("-", 1)[0],
        version=version,
        context_window=200_000,
        max_output_tokens=1024,
        price_in_per_mtok=1.0,
        price_out_per_mtok=5.0,
        timeout_s=timeout_s,
        retry_budget=retry_budget,
    )


REQUEST = ModelRequest(
    request_id="e-1:0",
    role="fast",
    tenant_id="acme-bank",
    messages=(Message(role="user", content="Where is my card?"),),
    max_tokens=128,
)


Outcome = ProviderError | str | Callable[[], Awaitable[str]]


class ScriptedProvider:
    """Raises or answers per a script of outcomes; counts calls."""

    name = "scripted"

    def __init__(self, model: str, *outcomes: Outcome) -> None:
        self.model = model
        self.outcomes = list(outcomes)
        self.calls = 0
        self.closed = False

    async def complete(self, request: ModelRequest) -> ModelResult:
        self.calls += 1
        outcome = self.outcomes.pop(0) if self.outcomes else "ok"
        if isinstance(outcome, ProviderError):
            raise outcome
        text = outcome if isinstance(outcome, str) else await outcome()
        return ModelResult(
            request_id=request.request_id,
            role=request.role,
            text=text,
            usage=Usage(tokens_in=10, tokens_out=3),
            latency_ms=1.0,
            model_version=self.model,
            provider=self.name,
        )

    async def aclose(self) -> None:
        self.closed = True


def _transient(retry_after_s: float | None = None) -> TransientError:
    return TransientError("429", status=429, retry_after_s=retry_after_s)


def _resilient(
    inner: ScriptedProvider,
    role: RoleConfig,
    breaker: CircuitBreaker | None = None,
    sleep: FakeSleep | None = None,
) -> ResilientProvider:
    return ResilientProvider(
        inner,
        "fast",
        role,
        RESILIENCE,
        breaker or CircuitBreaker.from_config(role.pinned_id, RESILIENCE, clock=FakeClock()),
        sleep=sleep or FakeSleep(),
        rng=random.Random(7),
    )


# -- circuit breaker ---------------------------------------------------------------------


def test_breaker_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker("m", failures=3, reset_s=30, clock=FakeClock())
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # resets the streak
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed"
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    assert not breaker.allow()


def test_half_open_lets_exactly_one_trial_through_and_success_closes() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("m", failures=1, reset_s=30, clock=clock)
    breaker.record_failure()
    clock.now += 29.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.state == "half_open"
    assert breaker.allow()
    assert not breaker.allow()  # the trial is in flight: everyone else is refused
    assert not breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed"
    assert breaker.allow()
    assert breaker.allow()


def test_failed_trial_reopens_for_another_full_reset() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("m", failures=2, reset_s=30, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    clock.now += 30
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    clock.now += 29
    assert not breaker.allow()
    clock.now += 1
    assert breaker.allow()


def test_released_trial_lets_the_next_caller_try() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("m", failures=1, reset_s=5, clock=clock)
    breaker.record_failure()
    clock.now += 5
    assert breaker.allow()
    breaker.release()  # e.g. the caller was cancelled
    assert breaker.allow()


# -- backoff -----------------------------------------------------------------------------


def test_backoff_is_full_jitter_within_the_exponential_ceiling() -> None:
    rng = random.Random(1234)
    for attempt in range(8):
        ceiling = min(RESILIENCE.backoff_max_s, RESILIENCE.backoff_base_s * 2**attempt)
        delays = [backoff_s(attempt, RESILIENCE, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # spread over the window, not pinned at zero


def test_retry_after_is_a_floor_never_cut_to_backoff_max() -> None:
    rng = random.Random(1)
    assert backoff_s(0, RESILIENCE, rng, retry_after_s=3.0) == 3.0
    # Was capped at backoff_max_s (8 s): the retry went out 112 s before the provider said.
    assert backoff_s(0, RESILIENCE, rng, retry_after_s=120.0) == 120.0


@given(
    attempt=st.integers(0, 12),
    retry_after=st.one_of(st.none(), st.floats(0, 1e4, allow_nan=False)),
    seed=st.integers(0, 2**32),
)
def test_backoff_never_earlier_than_retry_after_and_jitter_within_ceiling(
    attempt: int, retry_after: float | None, seed: int
) -> None:
    delay = backoff_s(attempt, RESILIENCE, random.Random(seed), retry_after)
    ceiling = min(RESILIENCE.backoff_max_s, RESILIENCE.backoff_base_s * 2**attempt)
    assert 0.0 <= delay <= max(ceiling, retry_after or 0.0)
    if retry_after is not None:
        assert delay >= retry_after


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "1.5", "retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


# -- resilient provider ------------------------------------------------------------------


def test_transient_errors_are_retried_within_the_budget() -> None:
    role = _role("claude-a-1", retry_budget=2)
    inner = ScriptedProvider("claude-a-1", _transient(), _transient(), "third time lucky")
    sleep = FakeSleep()
    result = asyncio.run(_resilient(inner, role, sleep=sleep).complete(REQUEST))
    assert result.text == "third time lucky"
    assert result.attempts == 3
    assert inner.calls == 3
    assert len(sleep.durations) == 2
    assert 0 <= sleep.durations[0] <= 0.25
    assert 0 <= sleep.durations[1] <= 0.5


def test_budget_exhausted_raises_the_last_transient_error() -> None:
    role = _role("claude-a-1", retry_budget=2)
    inner = ScriptedProvider("claude-a-1", *(_transient(retry_after_s=1.0) for _ in range(5)))
    sleep = FakeSleep()
    with pytest.raises(TransientError):
        asyncio.run(_resilient(inner, role, sleep=sleep).complete(REQUEST))
    assert inner.calls == 3  # budget + 1
    assert sleep.durations and all(d >= 1.0 for d in sleep.durations)  # retry-after floor


@pytest.mark.parametrize(
    "error", [ContextOverflowError("too long", status=400), BadRequestError("nope", status=401)]
)
def test_deterministic_errors_are_never_retried(error: ProviderError) -> None:
    role = _role("claude-a-1", retry_budget=5)
    inner = ScriptedProvider("claude-a-1", error)
    sleep = FakeSleep()
    with pytest.raises(type(error)):
        asyncio.run(_resilient(inner, role, sleep=sleep).complete(REQUEST))
    assert inner.calls == 1
    assert sleep.durations == []


def test_an_attempt_past_the_timeout_is_transient() -> None:
    async def hang() -> str:
        await asyncio.sleep(30)
        return "too late"

    role = _role("claude-a-1", retry_budget=1, timeout_s=0.05)
    inner = ScriptedProvider("claude-a-1", hang, "in time")
    result = asyncio.run(_resilient(inner, role).complete(REQUEST))
    assert result.text == "in time"
    assert result.attempts == 2


def test_open_breaker_fails_fast_without_calling() -> None:
    role = _role("claude-a-1")
    breaker = CircuitBreaker("claude-a-1", failures=1, reset_s=30, clock=FakeClock())
    breaker.record_failure()
    inner = ScriptedProvider("claude-a-1")
    with pytest.raises(CircuitOpenError):
        asyncio.run(_resilient(inner, role, breaker=breaker).complete(REQUEST))
    assert inner.calls == 0


def test_breaker_opening_mid_retries_stops_the_retries() -> None:
    role = _role("claude-a-1", retry_budget=5)
    breaker = CircuitBreaker("claude-a-1", failures=2, reset_s=30, clock=FakeClock())
    inner = ScriptedProvider("claude-a-1", *(_transient() for _ in range(6)))
    sleep = FakeSleep()
    with pytest.raises(CircuitOpenError):
        asyncio.run(_resilient(inner, role, breaker=breaker, sleep=sleep).complete(REQUEST))
    assert inner.calls == 2
    assert len(sleep.durations) == 1


def test_context_overflow_does_not_count_against_the_breaker() -> None:
    role = _role("claude-a-1", retry_budget=0)
    breaker = CircuitBreaker("claude-a-1", failures=1, reset_s=30, clock=FakeClock())
    inner = ScriptedProvider("claude-a-1", ContextOverflowError("too long"))
    with pytest.raises(ContextOverflowError):
        asyncio.run(_resilient(inner, role, breaker=breaker).complete(REQUEST))
    assert breaker.state == "closed"


# -- fallback ----------------------------------------------------------------------------


def _chain(
    *links: tuple[ModelRole, ScriptedProvider],
) -> Sequence[tuple[ModelRole, Provider, RoleConfig]]:
    return [(name, provider, _role(provider.model)) for name, provider in links]


def test_fallback_moves_on_and_reports_the_answering_role() -> None:
    fast = ScriptedProvider("claude-a-1", _transient())
    long_context = ScriptedProvider("gpt-b-1", "from gpt")
    result = asyncio.run(
        complete_with_fallback(REQUEST, _chain(("fast", fast), ("long_context", long_context)))
    )
    assert result.role == "long_context"
    assert result.text == "from gpt"
    assert (fast.calls, long_context.calls) == (1, 1)


def test_fallback_never_visits_a_model_twice() -> None:
    fast = ScriptedProvider("claude-a-1", _transient())
    verifier = ScriptedProvider("claude-a-1", "would be the same model")  # same version
    compliance = ScriptedProvider("claude-c-1", CircuitOpenError("open"))
    long_context = ScriptedProvider("gpt-b-1", _transient())
    chain = _chain(
        ("fast", fast),
        ("verifier", verifier),
        ("compliance", compliance),
        ("fast", fast),
        ("long_context", long_context),
    )
    with pytest.raises(TransientError):
        asyncio.run(complete_with_fallback(REQUEST, chain))
    assert (fast.calls, verifier.calls, compliance.calls, long_context.calls) == (1, 0, 1, 1)


@pytest.mark.parametrize(
    "error", [ContextOverflowError("too long", status=400), BadRequestError("bad", status=400)]
)
def test_fallback_stops_at_deterministic_errors(error: ProviderError) -> None:
    fast = ScriptedProvider("claude-a-1", error)
    long_context = ScriptedProvider("gpt-b-1", "never asked")
    with pytest.raises(type(error)):
        asyncio.run(
            complete_with_fallback(REQUEST, _chain(("fast", fast), ("long_context", long_context)))
        )
    assert long_context.calls == 0


def test_fallback_chain_with_resilient_links_counts_attempts_per_link() -> None:
    fast_inner = ScriptedProvider("claude-a-1", *(_transient() for _ in range(3)))
    gpt_inner = ScriptedProvider("gpt-b-1", _transient(), "second try")
    fast_role, gpt_role = _role("claude-a-1"), _role("gpt-b-1")
    chain = FallbackChain(
        [
            ("fast", _resilient(fast_inner, fast_role), fast_role),
            ("long_context", _resilient(gpt_inner, gpt_role), gpt_role),
        ]
    )
    result = asyncio.run(chain.complete(REQUEST))
    assert (result.role, result.attempts, result.model_version) == ("long_context", 2, "gpt-b-1")
    assert (fast_inner.calls, gpt_inner.calls) == (3, 2)
    assert chain.roles == ("fast", "long_context")


# -- retry-after against the call's deadline ---------------------------------------------


class ClockedSleep(FakeSleep):
    """A sleep that moves the fake clock, so the provider sees the time it waited."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    async def __call__(self, seconds: float) -> None:
        await super().__call__(seconds)
        self.clock.now += seconds


class TimedProvider:
    """Fails per a script of (seconds taken, retry-after) with 429s, then answers."""

    name = "timed"

    def __init__(self, model: str, clock: FakeClock, *script: tuple[float, float | None]) -> None:
        self.model = model
        self.clock = clock
        self.script = list(script)
        self.calls = 0

    async def complete(self, request: ModelRequest) -> ModelResult:
        self.calls += 1
        if self.script:
            took, retry_after = self.script.pop(0)
            self.clock.now += took
            raise TransientError("429", model=self.model, status=429, retry_after_s=retry_after)
        return ModelResult(
            request_id=request.request_id,
            role=request.role,
            text="ok",
            usage=Usage(tokens_in=1, tokens_out=1),
            latency_ms=1.0,
            model_version=self.model,
            provider=self.name,
        )

    async def aclose(self) -> None:
        return None


def _timed(
    role: RoleConfig, clock: FakeClock, *script: tuple[float, float | None]
) -> tuple[ResilientProvider, TimedProvider, ClockedSleep]:
    inner = TimedProvider(role.pinned_id, clock, *script)
    sleep = ClockedSleep(clock)
    breaker = CircuitBreaker(role.pinned_id, failures=100, reset_s=30.0, clock=clock)
    provider = ResilientProvider(
        inner, "fast", role, RESILIENCE, breaker, sleep=sleep, rng=random.Random(3), clock=clock
    )
    return provider, inner, sleep


def test_retry_after_within_the_deadline_is_honoured_in_full() -> None:
    role = _role("claude-a-1", retry_budget=2, timeout_s=5.0)  # link deadline 3*5 + 2*8 = 31 s
    provider, inner, sleep = _timed(role, FakeClock(), (0.1, 20.0))
    result = asyncio.run(provider.complete(REQUEST))
    assert result.text == "ok" and inner.calls == 2
    assert sleep.durations == [20.0]  # old code: cut to backoff_max_s (8 s), a retry 12 s early


def test_retry_after_beyond_the_deadline_moves_down_the_chain_without_waiting() -> None:
    clock = FakeClock()
    fast_role, gpt_role = _role("claude-a-1", timeout_s=5.0), _role("gpt-b-1")
    fast, fast_inner, sleep = _timed(fast_role, clock, (0.1, 120.0))
    gpt = ScriptedProvider("gpt-b-1", "from gpt")
    before = _sample(
        "splitpin_model_call_failures_total", "claude-a-1", "retry_after_beyond_deadline"
    )
    chain = FallbackChain([("fast", fast, fast_role), ("long_context", gpt, gpt_role)])
    result = asyncio.run(chain.complete(REQUEST))
    assert (result.role, result.text) == ("long_context", "from gpt")
    assert fast_inner.calls == 1 and sleep.durations == []  # no early retry, no futile wait
    after = _sample(
        "splitpin_model_call_failures_total", "claude-a-1", "retry_after_beyond_deadline"
    )
    assert after - before == 1


def test_retry_after_beyond_the_deadline_is_its_own_error() -> None:
    provider, _, _ = _timed(_role("claude-a-1", timeout_s=5.0), FakeClock(), (0.1, 120.0))
    with pytest.raises(RetryAfterBeyondDeadlineError) as caught:
        asyncio.run(provider.complete(REQUEST))
    assert isinstance(caught.value, TransientError) and caught.value.retry_after_s == 120.0


@settings(max_examples=300, deadline=None)
@given(
    retry_budget=st.integers(0, 4),
    timeout_s=st.floats(0.5, 30.0),
    script=st.lists(
        st.tuples(st.floats(0.0, 1.0), st.one_of(st.none(), st.floats(0.0, 120.0))), max_size=6
    ),
)
def test_a_link_never_retries_early_and_never_overruns_its_deadline(
    retry_budget: int, timeout_s: float, script: list[tuple[float, float | None]]
) -> None:
    clock = FakeClock()
    role = _role("claude-a-1", retry_budget=retry_budget, timeout_s=timeout_s)
    timed = [(fraction * timeout_s, retry_after) for fraction, retry_after in script]
    provider, inner, sleep = _timed(role, clock, *timed)
    start = clock.now
    error: TransientError | None = None
    try:
        asyncio.run(provider.complete(REQUEST))
    except TransientError as exc:
        error = exc
    deadline = link_deadline_s(role, RESILIENCE)
    assert clock.now - start <= deadline + 1e-9
    assert inner.calls <= retry_budget + 1
    assert len(sleep.durations) == inner.calls - 1  # a wait only ever precedes a retry
    for slept, (_, retry_after) in zip(sleep.durations, timed, strict=False):
        assert retry_after is None or slept >= retry_after  # never before the provider said
    if isinstance(error, RetryAfterBeyondDeadlineError):
        retry_after = timed[inner.calls - 1][1]
        assert retry_after is not None
        assert retry_after + timeout_s > deadline - (clock.now - start)  # it truly did not fit
    elif error is None:
        assert inner.calls == len(timed) + 1


# -- metrics -----------------------------------------------------------------------------


def _sample(name: str, model: str, label: str) -> float:
    key = "reason" if name == "splitpin_model_call_retries_total" else "error_type"
    return sum(  # over every provider label (the scripted and timed fakes name their own)
        sample.value
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name == name
        and sample.labels.get("gen_ai_request_model") == model
        and sample.labels.get(key) == label
    )


def _breaker_state(model: str) -> float | None:
    return REGISTRY.get_sample_value("splitpin_model_breaker_state", {"model": model})


def test_failures_and_retries_are_counted_by_model_and_error_type() -> None:
    role = _role("claude-metrics-1", retry_budget=2)
    inner = ScriptedProvider(
        "claude-metrics-1",
        TransientError("529", status=529),
        TransientError("429", status=429, retry_after_s=1.0),
        TransientError("500", status=500),
    )
    retries = [
        _sample("splitpin_model_call_retries_total", "claude-metrics-1", r)
        for r in ("overloaded", "rate_limited")
    ]
    failures = _sample("splitpin_model_call_failures_total", "claude-metrics-1", "server_error")
    with pytest.raises(TransientError):
        asyncio.run(_resilient(inner, role).complete(REQUEST))
    assert [
        _sample("splitpin_model_call_retries_total", "claude-metrics-1", r) - before
        for r, before in zip(("overloaded", "rate_limited"), retries, strict=True)
    ] == [1.0, 1.0]
    assert _sample("splitpin_model_call_failures_total", "claude-metrics-1", "server_error") == (
        failures + 1
    )
    overflow = _sample("splitpin_model_call_failures_total", "claude-metrics-1", "context_overflow")
    with pytest.raises(ContextOverflowError):
        asyncio.run(
            _resilient(
                ScriptedProvider("claude-metrics-1", ContextOverflowError("long")), role
            ).complete(REQUEST)
        )
    assert (
        _sample("splitpin_model_call_failures_total", "claude-metrics-1", "context_overflow")
        == overflow + 1
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (TransientError("x", status=429), "rate_limited"),
        (TransientError("x", status=529), "overloaded"),
        (TransientError("x", status=503), "server_error"),
        (TransientError("x", status=408), "timeout"),
        (AttemptTimeoutError("x"), "timeout"),
        (TransientError("x"), "connection"),
        (ContextOverflowError("x", status=400), "context_overflow"),
        (BadRequestError("x", status=401), "bad_request"),
        (CircuitOpenError("x"), "circuit_open"),
        (RetryAfterBeyondDeadlineError("x", status=429), "retry_after_beyond_deadline"),
    ],
)
def test_error_types_are_a_fixed_set(error: ProviderError, expected: str) -> None:
    assert error_type(error) == expected


def test_breaker_state_gauge_follows_closed_open_half_open() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("claude-gauge-1", failures=2, reset_s=30.0, clock=clock)
    assert _breaker_state("claude-gauge-1") == 0
    breaker.record_failure()
    breaker.record_failure()
    assert _breaker_state("claude-gauge-1") == 2
    clock.now += 30.0
    assert _breaker_state("claude-gauge-1") == 1  # read at scrape time, no call needed
    assert breaker.allow()
    breaker.record_success()
    assert _breaker_state("claude-gauge-1") == 0


# -- a provider's context-length error in the answering job ------------------------------

GOV = governance(replies=VERIFY_EVERY_ANSWER)
SOURCES = (
    SourceDoc(
        doc_id="InternalDoc-11",
        title="Card delivery",
        text="Cards arrive within 5 working days.",
        source="kb:banking77/InternalDoc-11",
        score=0.9,
    ),
)
OVERFLOW_TEXT = "prompt is too long: 250000 tokens > 200000 maximum"


def _grounded(spec: CallSpec) -> ModelResult:
    return ModelResult(
        request_id=spec.request_id,
        role=spec.role,
        text="Cards arrive within 5 working days [InternalDoc-11].",
        citations=(Citation(doc_id="InternalDoc-11", source="kb:banking77/InternalDoc-11"),),
        usage=Usage(tokens_in=100, tokens_out=20),
        latency_ms=5.0,
        model_version=GOV.roles[spec.role].pinned_id,
        provider="anthropic",
        confidence=0.9,
    )


def _drive_overflow(
    dispatch: Dispatch, overflowing: set[str], gov: GovernanceConfig = GOV
) -> tuple[list[AnswerOutput], list[CallSpec]]:
    """Run the job; every call to a role in `overflowing` gets the provider's 400."""
    policy = AnswerPolicy(gov, runner=_no_runner, clock=lambda: T0.timestamp() + 2.0)
    job, step = policy.open(dispatch)
    out: list[AnswerOutput] = list(step.emit)
    specs: list[CallSpec] = []
    queue = list(step.calls)
    while queue:
        call_id, spec = queue.pop(0)
        specs.append(spec)
        request = spec.request(spec.sources if spec.sources is not None else SOURCES)
        if spec.role in overflowing:
            model = gov.roles[spec.role].pinned_id
            text = f"anthropic {model}: 400 invalid_request_error: {OVERFLOW_TEXT}"
            outcome = CallOutcome(request, None, "context_overflow", text, model)
        else:
            outcome = CallOutcome(request, _grounded(spec))
        step = policy.advance(job, call_id, outcome)
        out.extend(step.emit)
        queue.extend(step.calls)
    assert step.done
    return out, specs


async def _no_runner(spec: CallSpec) -> CallOutcome:
    raise AssertionError("the driver supplies outcomes")


def _dispatch(**overrides: Any) -> Dispatch:
    messages = (Message(role="user", content="my card has not arrived"),)
    return Dispatch(decision("e-1", **overrides), messages, "", dispatched_at=T0.timestamp() + 1)


K = TypeVar("K")


def _of(out: list[AnswerOutput], kind: type[K]) -> list[K]:
    return [item for item in out if isinstance(item, kind)]


def test_primary_overflow_is_recorded_and_replanned_to_a_larger_window() -> None:
    out, specs = _drive_overflow(_dispatch(), {"fast"})
    # Old code: [primary fast, verify verifier]: the same prompt to another 200k window.
    assert [(s.purpose, s.role) for s in specs] == [("primary", "fast"), ("replan", "long_context")]
    assert specs[1].messages == specs[0].messages  # the whole counted prompt fits there
    (failure,) = _of(out, ValidationFailure)
    assert (failure.check, failure.error, failure.action) == (
        "context-window",
        "ContextOverflow",
        "rerouted",
    )
    assert failure.model == GOV.roles["fast"].pinned_id
    assert OVERFLOW_TEXT in failure.detail
    (final,) = _of(out, Reply)
    assert (final.kind, final.status, final.route) == ("final", "unverified", "long_context")
    assert Escalation("fast", "long_context", "failed") in out


def test_pinned_overflow_is_refused_not_sent_elsewhere() -> None:
    pinned = _dispatch(role="compliance", pinned=True, model="claude-3-5-sonnet")
    out, specs = _drive_overflow(pinned, {"compliance"})
    assert [s.purpose for s in specs] == ["pinned"]
    (failure,) = _of(out, ValidationFailure)
    assert (failure.error, failure.action) == ("ContextOverflow", "refused")
    (final,) = _of(out, Reply)
    assert (final.status, final.text) == ("refused", GOV.replies.refusal_reply)


def test_overflow_without_a_larger_allowed_window_is_refused() -> None:
    only_fast = governance(context={"fit_order": ("fast",)})
    out, specs = _drive_overflow(_dispatch(), {"fast"}, only_fast)
    assert len(specs) == 1
    assert [f.action for f in _of(out, ValidationFailure)] == ["refused"]
    assert _of(out, Reply)[-1].status == "refused"


def test_a_replan_that_overflows_too_is_refused() -> None:
    out, specs = _drive_overflow(_dispatch(), {"fast", "long_context"})
    assert [s.purpose for s in specs] == ["primary", "replan"]
    assert [f.action for f in _of(out, ValidationFailure)] == ["rerouted", "refused"]
    assert _of(out, Reply)[-1].status == "refused"


ROLES: tuple[ModelRole, ...] = ("fast", "long_context", "compliance", "verifier")


@settings(max_examples=200, deadline=None)
@given(
    overflowing=st.sets(st.sampled_from(ROLES)),
    pinned=st.booleans(),
    channel=st.sampled_from(["chat", "email"]),
    fit_order=st.permutations(ROLES).flatmap(lambda p: st.integers(0, 4).map(lambda n: p[:n])),
    tenant=st.sampled_from(["acme-bank", "shopco"]),
)
def test_an_overflowed_prompt_is_never_resent_to_a_window_that_cannot_hold_it(
    overflowing: set[str],
    pinned: bool,
    channel: str,
    fit_order: tuple[ModelRole, ...],
    tenant: str,
) -> None:
    gov = governance(context={"fit_order": fit_order}, replies=VERIFY_EVERY_ANSWER)
    role: ModelRole = "compliance" if pinned else "fast"
    dispatch = _dispatch(role=role, pinned=pinned, channel=channel, tenant_id=tenant)
    out, specs = _drive_overflow(dispatch, overflowing, gov)
    finals = [r for r in _of(out, Reply) if r.kind == "final"]
    assert len(finals) == 1 and out.index(finals[0]) > max(
        (out.index(f) for f in _of(out, ValidationFailure)), default=-1
    )
    overflow_records = [f for f in _of(out, ValidationFailure) if f.error == "ContextOverflow"]
    overflowed = [s for s in specs if s.role in overflowing]
    assert len(overflow_records) == len(overflowed), "every overflow is recorded as such"
    for record, spec in zip(overflow_records, overflowed, strict=True):
        assert record.check == "context-window"
        assert record.model == gov.roles[spec.role].pinned_id
    for n, spec in enumerate(specs):
        if spec.role not in overflowing:
            continue
        window = gov.roles[spec.role].context_window
        later = specs[n + 1 :]
        assert len(later) <= 1, "at most one re-plan after an overflow"
        for again in later:
            assert again.purpose == "replan" and not pinned
            assert gov.roles[again.role].context_window > window
            assert gov.budgets.for_tenant(tenant).allows(again.role)
    if overflowed and overflow_records[-1].action == "refused":
        assert finals[0].status == "refused"


def test_a_replan_is_charged_to_its_event_and_settles_it() -> None:
    """Without a slot of its own, the re-plan's cost used to count as 'unmatched' (free)."""
    gov = governance(budgets={"tenants": {"acme-bank": {"limit_usd": 1.0}}})
    gate = BudgetGate(gov, lambda: 1_800_000_000.0)
    ledger = TenantLedger()
    routed = Conversation(gov, "c-1").say("where is my card")
    assert routed is not None
    verdict = gate.admit(ledger, routed)  # type: ignore[arg-type]
    assert verdict.action == "allow" and ledger.spent_usd == pytest.approx(verdict.cost_usd)
    cost = 0.0123
    record = CostRecord(
        record_id="c-1-0:replan",
        event_id="c-1-0",
        tenant_id="acme-bank",
        role="long_context",
        model="gpt-4.1",
        model_version=GOV.roles["long_context"].pinned_id,
        tokens_in=10,
        tokens_out=5,
        cost_usd=cost,
        latency_ms=1.0,
        occurred_at=T0,
    )
    gate.reconcile(ledger, record)
    assert ledger.spent_usd == pytest.approx(cost)  # charged; nothing else left open
    assert "c-1-0" not in ledger.reservations
