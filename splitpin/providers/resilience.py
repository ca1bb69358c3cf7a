"""Retry, circuit-breaker and fallback policy, in one place for every remote model.

The SDK clients are built with `max_retries=0`: their own retries would hide attempts
from the budget, ignore the breaker and multiply a 429 storm. Here instead:

* `ResilientProvider` retries only `TransientError`, at most `role.retry_budget` times,
  with full-jitter exponential backoff capped at `backoff_max_s`, and bounds each attempt
  with `role.timeout_s`. A `retry-after` is honoured in full when the retry still fits
  the link's deadline (`link_deadline_s`, the share of the call's deadline the answering
  job grants this role); when it does not, the call gives up on this model at once
  (`RetryAfterBeyondDeadlineError`) and the chain moves on, instead of retrying early.
* `CircuitBreaker` (one per model version) stops calling a model after
  `breaker_failures` consecutive failed calls, then lets one trial call through after
  `breaker_reset_s`; an open breaker fails fast with `CircuitOpenError`.
* `complete_with_fallback` walks a role's fallback roles, never visiting the same model
  version twice, and stops at errors that another model would repeat (context overflow,
  bad request).

Every failed call, retry and breaker state is exported (splitpin/core/metrics.py), labelled by
the pinned model id and a fixed set of error types, so the label sets stay bounded.

Everything runs on one event loop (operators/call_executor.py), and the breaker's state
changes happen between awaits, so it needs no lock.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from splitpin.core import metrics
from splitpin.providers.base import (
    BadRequestError,
    CircuitOpenError,
    ContextOverflowError,
    ModelRequest,
    ModelResult,
    Provider,
    ProviderError,
    TransientError,
)
from splitpin.schemas.decisions import ModelRole
from splitpin.schemas.governance import ResilienceConfig, RoleConfig

log = logging.getLogger(__name__)

BreakerState = Literal["closed", "open", "half_open"]
Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]

BREAKER_STATE_VALUES: dict[BreakerState, int] = {"closed": 0, "half_open": 1, "open": 2}
"""The breaker gauge's encoding: higher is worse."""

ErrorType = Literal[
    "rate_limited",
    "overloaded",
    "server_error",
    "timeout",
    "connection",
    "context_overflow",
    "bad_request",
    "circuit_open",
    "retry_after_beyond_deadline",
]
"""The metrics' error_type / reason label: a fixed set, whatever the provider says."""


class AttemptTimeoutError(TransientError):
    """No answer within the role's `timeout_s` (ours or the SDK's): worth another try."""


class RetryAfterBeyondDeadlineError(TransientError):
    """The provider asked to wait longer than this link's deadline leaves: the chain moves
    on to the next model rather than retry before the provider said it would answer."""


def error_type(exc: ProviderError) -> ErrorType:
    """A provider error's label for the failure and retry metrics."""
    if isinstance(exc, CircuitOpenError):
        return "circuit_open"
    if isinstance(exc, ContextOverflowError):
        return "context_overflow"
    if isinstance(exc, RetryAfterBeyondDeadlineError):
        return "retry_after_beyond_deadline"
    if isinstance(exc, AttemptTimeoutError) or exc.status == 408:
        return "timeout"
    if not isinstance(exc, TransientError):
        return "bad_request"
    if exc.status == 429:
        return "rate_limited"
    if exc.status == 529:
        return "overloaded"
    if exc.status is not None:
        return "server_error"
    return "connection"


class CircuitBreaker:
    """closed -> open after N consecutive failures -> half-open after reset_s -> one trial.

    In half-open exactly one call is let through; until it finishes every other caller is
    refused. The trial's success closes the breaker, its failure re-opens it for another
    `reset_s`. A call that ends without a verdict (cancelled) gives the trial back.
    """

    def __init__(
        self,
        model: str,
        *,
        failures: int,
        reset_s: float,
        clock: Clock = time.monotonic,
    ) -> None:
        if failures < 1 or reset_s <= 0:
            msg = "breaker needs failures >= 1 and reset_s > 0"
            raise ValueError(msg)
        self.model = model
        self.failures = failures
        self.reset_s = reset_s
        self._clock = clock
        self._state: BreakerState = "closed"
        self._consecutive = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        # Read at scrape time, so an open breaker whose reset passed shows as half-open.
        metrics.BREAKER_STATE.labels(model).set_function(lambda: BREAKER_STATE_VALUES[self.state])

    @classmethod
    def from_config(
        cls, model: str, config: ResilienceConfig, *, clock: Clock = time.monotonic
    ) -> CircuitBreaker:
        return cls(
            model, failures=config.breaker_failures, reset_s=config.breaker_reset_s, clock=clock
        )

    @property
    def state(self) -> BreakerState:
        """The state as of now: an open breaker whose reset time passed reads half-open."""
        if self._state == "open" and self._clock() - self._opened_at >= self.reset_s:
            return "half_open"
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive

    def allow(self) -> bool:
        """May a call go out now? In half-open, True exactly once until a verdict."""
        state = self.state
        if state == "closed":
            return True
        if state == "open" or self._trial_in_flight:
            return False
        self._state = "half_open"
        self._trial_in_flight = True
        return True

    def record_success(self) -> None:
        if self._state != "closed":
            log.info("circuit for %s closed", self.model)
        self._state = "closed"
        self._consecutive = 0
        self._trial_in_flight = False

    def record_failure(self) -> None:
        self._consecutive += 1
        if self._state == "half_open" or self._consecutive >= self.failures:
            if self._state != "open":
                log.warning(
                    "circuit for %s opened after %d consecutive failures",
                    self.model,
                    self._consecutive,
                )
            self._state = "open"
            self._opened_at = self._clock()
        self._trial_in_flight = False

    def release(self) -> None:
        """The call ended without telling us anything about the model (e.g. cancelled)."""
        self._trial_in_flight = False


def backoff_s(
    attempt: int,
    config: ResilienceConfig,
    rng: random.Random,
    retry_after_s: float | None = None,
) -> float:
    """Full jitter: uniform(0, min(max, base * 2**attempt)); a retry-after is a floor.

    Full jitter spreads a burst of clients that failed together (the 429 storm) across the
    whole window instead of having them retry in lockstep. The jitter never exceeds
    backoff_max_s; a provider's retry-after is honoured in full (retrying before it only
    earns another 429): whether it fits the call's deadline is the caller's decision.
    """
    ceiling = min(config.backoff_max_s, config.backoff_base_s * 2**attempt)
    delay = rng.uniform(0.0, ceiling)
    if retry_after_s is not None and retry_after_s > 0:
        delay = max(delay, retry_after_s)
    return delay


def link_deadline_s(role: RoleConfig, resilience: ResilienceConfig) -> float:
    """The time one role's link may take: every attempt at its timeout, with the longest
    jittered backoff between them. The answering job's call deadline is the sum over a
    role's chain (operators/answering.py), so a link within this keeps the call within it."""
    attempts = role.retry_budget + 1
    return attempts * role.timeout_s + role.retry_budget * resilience.backoff_max_s


class ResilientProvider:
    """A remote provider behind the retry budget, a per-attempt deadline and a breaker."""

    def __init__(
        self,
        inner: Provider,
        role_name: ModelRole,
        role: RoleConfig,
        resilience: ResilienceConfig,
        breaker: CircuitBreaker,
        *,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.role_name = role_name
        self.role = role
        self.resilience = resilience
        self.breaker = breaker
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock
        self.deadline_s = link_deadline_s(role, resilience)

    def __repr__(self) -> str:
        return f"ResilientProvider({self.name} {self.role.pinned_id}, breaker={self.breaker.state})"

    async def complete(self, request: ModelRequest) -> ModelResult:
        """The answer, or the error that ended the call (counted by type for the metrics)."""
        try:
            return await self._attempts(request)
        except ProviderError as exc:
            metrics.count(
                metrics.MODEL_CALL_FAILURES, self.name, self.role.pinned_id, error_type(exc)
            )
            raise

    async def _attempts(self, request: ModelRequest) -> ModelResult:
        model = self.role.pinned_id
        started = self._clock()
        last: TransientError | None = None
        for attempt in range(self.role.retry_budget + 1):
            if not self.breaker.allow():
                msg = f"{self.name} {model}: circuit open, not called"
                raise CircuitOpenError(msg, model=model) from last
            attempts = attempt + 1
            try:
                result = await asyncio.wait_for(
                    self.inner.complete(request), timeout=self.role.timeout_s
                )
            except TimeoutError:
                self.breaker.record_failure()
                msg = f"{self.name} {model}: no answer within {self.role.timeout_s:g} s"
                last = AttemptTimeoutError(msg, model=model)
            except TransientError as exc:
                self.breaker.record_failure()
                last = exc
            except (ContextOverflowError, BadRequestError):
                self.breaker.record_success()  # the model answered; the request is at fault
                raise
            except BaseException:
                self.breaker.release()
                raise
            else:
                self.breaker.record_success()
                return result.model_copy(update={"attempts": attempts})
            if attempt == self.role.retry_budget:
                break
            if self.breaker.state == "open":
                msg = f"{self.name} {model}: circuit opened after attempt {attempts}"
                raise CircuitOpenError(msg, model=model) from last
            # What may still be slept so that one more attempt ends within the deadline.
            room = self.deadline_s - (self._clock() - started) - self.role.timeout_s
            if room < 0:
                break  # no time for another attempt
            if last.retry_after_s is not None and last.retry_after_s > room:
                msg = (
                    f"{self.name} {model}: retry-after {last.retry_after_s:g} s exceeds the "
                    f"{room:.2f} s this call can still wait; moving on after attempt "
                    f"{attempts} ({last})"
                )
                raise RetryAfterBeyondDeadlineError(
                    msg, model=model, status=last.status, retry_after_s=last.retry_after_s
                ) from last
            # Never earlier than the retry-after (it fits), never past the deadline.
            delay = min(backoff_s(attempt, self.resilience, self._rng, last.retry_after_s), room)
            log.info(
                "%s %s attempt %d failed (%s); retrying in %.2f s",
                self.name,
                model,
                attempts,
                last,
                delay,
            )
            metrics.count(metrics.MODEL_CALL_RETRIES, self.name, model, error_type(last))
            await self._sleep(delay)
        assert last is not None  # the loop ran at least once and every path set it
        raise last

    async def aclose(self) -> None:
        await self.inner.aclose()


async def complete_with_fallback(
    request: ModelRequest,
    chain: Sequence[tuple[ModelRole, Provider, RoleConfig]],
) -> ModelResult:
    """Try each role in order, skipping model versions already tried.

    Moves on after a TransientError (its retry budget spent, or a retry-after beyond the
    link's deadline: RetryAfterBeyondDeadlineError) or a CircuitOpenError; stops
    at ContextOverflowError and BadRequestError, which the next model would most likely
    repeat (the context guard already picked a role whose window fits). The result's `role`
    is the role that answered. If every link fails, the last error is raised.
    """
    if not chain:
        msg = f"no provider for role {request.role}"
        raise ValueError(msg)
    tried: set[str] = set()
    last: ProviderError | None = None
    for role_name, provider, role in chain:
        if role.pinned_id in tried:
            continue
        tried.add(role.pinned_id)
        try:
            result = await provider.complete(request)
        except (TransientError, CircuitOpenError) as exc:
            log.warning(
                "role %s (%s %s) failed for %s: %s",
                role_name,
                provider.name,
                role.pinned_id,
                request.request_id,
                exc,
            )
            last = exc
            continue
        if result.role != role_name:
            result = result.model_copy(update={"role": role_name})
        return result
    assert last is not None
    raise last


class FallbackChain:
    """A role's providers in fallback order; see `complete_with_fallback`."""

    def __init__(self, links: Sequence[tuple[ModelRole, Provider, RoleConfig]]) -> None:
        self.links = tuple(links)

    @property
    def roles(self) -> tuple[ModelRole, ...]:
        return tuple(role_name for role_name, _, _ in self.links)

    async def complete(self, request: ModelRequest) -> ModelResult:
        return await complete_with_fallback(request, self.links)


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms`, `retry-after` (seconds or an HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def safe_url(url: str) -> str:
    """An endpoint fit for logs and descriptions: no user:password@, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
