"""Retry, breaker and fallback policy as pure logic: fake providers, fake clock, fake sleep."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence

import pytest

from providers.base import (
    BadRequestError,
    CircuitOpenError,
    ContextOverflowError,
    Message,
    ModelRequest,
    ModelResult,
    Provider,
    ProviderError,
    TransientError,
    Usage,
)
from providers.resilience import (
    CircuitBreaker,
    FallbackChain,
    ResilientProvider,
    backoff_s,
    complete_with_fallback,
    parse_retry_after,
)
from schemas.decisions import ModelRole
from schemas.governance import ResilienceConfig, RoleConfig
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


def test_retry_after_is_a_floor_capped_by_backoff_max() -> None:
    rng = random.Random(1)
    assert backoff_s(0, RESILIENCE, rng, retry_after_s=3.0) == 3.0
    assert backoff_s(0, RESILIENCE, rng, retry_after_s=120.0) == RESILIENCE.backoff_max_s


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
