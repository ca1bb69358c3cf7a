"""The non-blocking model operator: jobs that make calls, polled without stalling the worker.

A *job* answers one dispatched event and may need several calls (a fast pass, then a
verifier). A `CallPolicy` says how: `open` turns an input into a job and its first calls,
`advance` folds one call's outcome into the job and says what to emit and call next,
`run` is the coroutine that makes one call. `CallTable` holds the jobs and their calls in
flight for one key; it is plain Python (tests drive it without Bytewax), and the Bytewax
wrapper below only forwards to it.

Recovery: the snapshot holds every open job and the spec of every call in flight. On
resume the calls are re-issued, so a crash loses no answer; an outcome that was emitted
after the snapshot is produced again, with the same identity, which consumers dedupe.

Keys are shards, not conversations: every key with calls in flight polls on a timer, and
a few shards keep that polling cheap however many conversations are waiting.

Isolation is per job, not per shard: when the policy raises for one job (`job_id`, `open`,
`advance`, or submitting its calls), `on_job_error` turns that job into outputs (the flow
gives the customer a final safe reply and dead-letters the dispatch) and the job and its
calls in flight are dropped; every other job of the shard goes on. Without a handler the
error propagates, as before.

Hedging: a step may schedule a call for later (`delayed`: a hedge timer, kept in snapshots
with its due time and re-issued on resume like any call) and cancel calls (`cancel`).
When a job is done, every call it still has in flight or scheduled is cancelled: no call
outlives its job. A cancelled call that had already finished (it was billed) is handed to
the policy's `settle`, if it has one, so its cost is still recorded; so is the fact that a
call was stopped (`CallFailed("cancelled")`), so the policy can release what it reserved.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import pickle
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Generic, Protocol, TypeVar, cast

from bytewax import operators as op
from bytewax.operators import KeyedStream, StatefulLogic

from splitpin.operators.call_executor import CallExecutor, CallTimeoutError
from splitpin.operators.isolation import Failed

log = logging.getLogger(__name__)

I = TypeVar("I")  # noqa: E741 - input item
J = TypeVar("J")  # job state (picklable)
S = TypeVar("S")  # call spec (picklable)
O = TypeVar("O")  # noqa: E741 - call outcome
W = TypeVar("W")  # emitted item
I_contra = TypeVar("I_contra", contravariant=True)
J_contra = TypeVar("J_contra", contravariant=True)
O_contra = TypeVar("O_contra", contravariant=True)
W_co = TypeVar("W_co", covariant=True)


@dataclass(frozen=True, slots=True)
class CallFailed:
    """A call that ended without an outcome from `run`: its deadline, or an unexpected error."""

    reason: str
    detail: str
    started: bool = False
    """For `cancelled`: the call had taken a slot, so the provider may have billed its input."""


@dataclass(frozen=True)  # no slots: instantiating a subscripted generic sets __orig_class__
class JobStep(Generic[W, S]):
    emit: Sequence[W] = ()
    calls: Sequence[tuple[str, S]] = ()
    """(call_id, spec): call ids are unique within the job and stable across replays."""
    done: bool = False
    delayed: Sequence[tuple[str, S, float]] = ()
    """(call_id, spec, delay_s): calls that start only after `delay_s` (hedge timers)."""
    cancel: Sequence[str] = ()
    """Call ids to stop (in flight or scheduled), applied before this step's new calls."""


class CallPolicy(Protocol[I_contra, J, S, O, W]):
    def job_id(self, item: I_contra) -> str: ...

    def open(self, item: I_contra) -> tuple[J, JobStep[W, S]]: ...

    def advance(self, job: J, call_id: str, outcome: O | CallFailed) -> JobStep[W, S]: ...

    def run(self, spec: S) -> Awaitable[O]: ...

    def timeout_s(self, spec: S) -> float: ...


class Settling(Protocol[J_contra, O_contra, W_co]):
    """A policy that accounts for calls its jobs stopped waiting for (see module doc)."""

    def settle(
        self, job: J_contra, call_id: str, outcome: O_contra | CallFailed, spec: object = None
    ) -> Sequence[W_co]: ...


@dataclass(slots=True)
class _Pending(Generic[S, O]):
    job_id: str
    spec: S
    future: concurrent.futures.Future[O]
    due: float | None = None
    """Wall-clock start of a delayed call, for snapshots (None: started at submit)."""
    seq: int = 0
    """Submission order: finished calls are advanced in it, whatever order they end in."""


JobErrorHandler = Callable[[str | None, I | None, J | None, Exception], tuple[Sequence[W], Failed]]
"""(job_id if known, the input if at hand, the job if opened, the error) -> what to emit
instead of the job's outputs, and the job's dead letter."""


@dataclass
class CallTable(Generic[I, J, S, O, W]):
    """Open jobs and calls in flight for one key."""

    policy: CallPolicy[I, J, S, O, W]
    executor: CallExecutor
    jobs: dict[str, J] = field(default_factory=dict)
    pending: dict[tuple[str, str], _Pending[S, O]] = field(default_factory=dict)
    on_job_error: JobErrorHandler[I, J, W] | None = None
    _finished: deque[tuple[tuple[str, str], concurrent.futures.Future[O]]] = field(
        default_factory=deque, repr=False
    )
    """Calls whose future ended, appended by the future's callback (any thread): a poll
    looks at these, not at every call in flight, so an idle poll costs nothing."""
    _submitted: int = field(default=0, repr=False)

    def add(self, item: I) -> list[W | Failed]:
        job_id: str | None = None
        try:
            job_id = self.policy.job_id(item)
            if job_id in self.jobs:  # the same input again while it is being answered
                return []
            job, step = self.policy.open(item)
            self.jobs[job_id] = job
            return self._apply(job_id, step)
        except Exception as exc:
            return self._job_failed(job_id, item, exc)

    def poll(self) -> list[W | Failed]:
        """Advance every job whose call has finished, in submission order; never blocks."""
        ready: list[tuple[int, tuple[str, str]]] = []
        while self._finished:
            key, future = self._finished.popleft()
            pending = self.pending.get(key)
            if pending is not None and pending.future is future:  # not cancelled or replaced
                ready.append((pending.seq, key))
        out: list[W | Failed] = []
        for _, key in sorted(ready):
            if key in self.pending:  # a failed job's other calls are gone
                out.extend(self._complete(key))
        return out

    def drain(self) -> list[W | Failed]:
        """Block until no call is in flight (end of input: nothing else can arrive)."""
        out: list[W | Failed] = []
        while self.pending:
            futures = [p.future for p in self.pending.values()]
            concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED)
            out.extend(self.poll())
        return out

    def snapshot(self) -> bytes:
        calls = [(job_id, call_id, p.spec, p.due) for (job_id, call_id), p in self.pending.items()]
        return pickle.dumps((self.jobs, calls), protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, snapshot: bytes) -> None:
        """Take back the jobs of a snapshot and re-issue every call that was in flight; a
        scheduled (hedge) call keeps its due time, or starts at once if that has passed."""
        jobs, calls = pickle.loads(snapshot)
        self.jobs.update(jobs)
        if calls:
            log.warning("resumed with %d model call(s) in flight: re-issuing them", len(calls))
        for job_id, call_id, spec, *rest in calls:  # older snapshots have no due time
            due = rest[0] if rest else None
            delay = None if due is None else max(0.0, due - time.time())
            self._submit(job_id, call_id, spec, delay_s=delay)

    def _apply(self, job_id: str, step: JobStep[W, S]) -> list[W | Failed]:
        out: list[W | Failed] = list(step.emit)
        for call_id in step.cancel:
            out.extend(self._cancel(job_id, call_id))
        for call_id, spec in step.calls:
            self._submit(job_id, call_id, spec)
        for call_id, spec, delay_s in step.delayed:
            self._submit(job_id, call_id, spec, delay_s=delay_s)
        if step.done:
            for key in [k for k in self.pending if k[0] == job_id]:
                out.extend(self._cancel(job_id, key[1]))
            self.jobs.pop(job_id, None)
        return out

    def _cancel(self, job_id: str, call_id: str) -> list[W | Failed]:
        """Stop one call; the policy settles it: its outcome if it had finished, else
        `cancelled` (nothing came back, whatever the provider did mid-flight)."""
        pending = self.pending.pop((job_id, call_id), None)
        if pending is None:
            return []
        finished = not self.executor.cancel(pending.future)
        outcome: O | CallFailed = CallFailed(
            "cancelled",
            "the job no longer needs this call",
            started=self.executor.started(pending.future),
        )
        if finished:
            outcome = self._outcome(pending.future)
        settle = getattr(self.policy, "settle", None)
        job = self.jobs.get(job_id)
        if settle is None or job is None:
            return []
        try:
            policy = cast("Settling[J, O, W]", self.policy)
            return list(policy.settle(job, call_id, outcome, pending.spec))
        except Exception as exc:
            return self._job_failed(job_id, None, exc)

    def _job_failed(self, job_id: str | None, item: I | None, exc: Exception) -> list[W | Failed]:
        """Drop the job and its calls in flight; the handler says what to emit instead."""
        if self.on_job_error is None:
            raise exc
        job = self.jobs.pop(job_id, None) if job_id is not None else None
        for key in [k for k in self.pending if k[0] == job_id]:
            self.executor.cancel(self.pending.pop(key).future)
        emit, failed = self.on_job_error(job_id, item, job, exc)
        return [*emit, failed]

    def _submit(self, job_id: str, call_id: str, spec: S, *, delay_s: float | None = None) -> None:
        run = self.policy.run
        timeout = self.policy.timeout_s(spec)
        future = self.executor.submit(lambda: run(spec), timeout_s=timeout, delay_s=delay_s)
        due = time.time() + delay_s if delay_s is not None else None
        key = (job_id, call_id)
        self._submitted += 1
        self.pending[key] = _Pending(job_id, spec, future, due, self._submitted)
        finished = self._finished
        future.add_done_callback(lambda done: finished.append((key, done)))

    def _outcome(self, future: concurrent.futures.Future[O]) -> O | CallFailed:
        try:
            return future.result()
        except CallTimeoutError as exc:
            return CallFailed("timeout", str(exc))
        except Exception as exc:  # a bug in `run` must not lose the job: it gets an outcome
            return CallFailed("error", f"{type(exc).__name__}: {exc}")

    def _complete(self, key: tuple[str, str]) -> list[W | Failed]:
        pending = self.pending.pop(key)
        job_id, call_id = key
        outcome = self._outcome(pending.future)
        job = self.jobs.get(job_id)
        if job is None:
            return []
        try:
            return self._apply(job_id, self.policy.advance(job, call_id, outcome))
        except Exception as exc:
            return self._job_failed(job_id, None, exc)


class StreamingQuantile:
    """One quantile of recent latencies (a bounded window), with a prior until it has
    `min_samples`: small, exact over its window, and cheap at the rates one worker sees."""

    def __init__(self, q: float, prior: float, *, window: int = 256, min_samples: int = 20):
        if not 0 < q < 1:
            msg = "q must be in (0, 1)"
            raise ValueError(msg)
        self.q = q
        self.prior = prior
        self.min_samples = min_samples
        self._values: deque[float] = deque(maxlen=window)

    def observe(self, value: float) -> None:
        self._values.append(value)

    def value(self) -> float:
        if len(self._values) < self.min_samples:
            return self.prior
        ordered = sorted(self._values)
        return ordered[min(len(ordered) - 1, int(self.q * len(ordered)))]


def next_tick(now_s: float, interval: timedelta) -> datetime:
    """The first multiple of `interval` (since the epoch) after `now_s`: at most one interval
    away, and the same instant for every shard, so one wake of the worker polls them all
    instead of one wake per shard at scattered times. Whole microseconds: exact."""
    step_us = max(1, interval // _MICROSECOND)
    now_us = math.floor(now_s * 1_000_000)
    return _EPOCH + (now_us // step_us + 1) * step_us * _MICROSECOND


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def shard_of(key: str, shards: int) -> str:
    """A stable shard (crc32, not Python's salted hash) so resumes find their state."""
    return f"shard-{zlib.crc32(key.encode()) % shards}"


# --- Bytewax wrapper -------------------------------------------------------------------


class _CallLogic(StatefulLogic[I, W | Failed, bytes], Generic[I, J, S, O, W]):
    def __init__(
        self, table: CallTable[I, J, S, O, W], poll: timedelta, resume: bytes | None
    ) -> None:
        self._table = table
        self._poll = poll
        if resume is not None:
            table.restore(resume)

    def on_item(self, value: I) -> tuple[list[W | Failed], bool]:
        # No poll here: a burst would rescan the shard's calls once per item. Finished
        # calls are collected on the next notification (at most one poll interval away).
        return self._table.add(value), StatefulLogic.RETAIN

    def on_notify(self) -> tuple[list[W | Failed], bool]:
        return self._table.poll(), self._finished()

    def on_eof(self) -> tuple[list[W | Failed], bool]:
        return self._table.drain(), self._finished()

    def notify_at(self) -> datetime | None:
        return next_tick(time.time(), self._poll) if self._table.pending else None

    def snapshot(self) -> bytes:
        return self._table.snapshot()

    def _finished(self) -> bool:
        return not self._table.jobs and not self._table.pending


def model_calls(
    step_id: str,
    items: KeyedStream[I],
    policy: CallPolicy[I, J, S, O, W],
    executor_factory: Callable[[], CallExecutor],
    poll_interval_s: float,
    on_job_error: JobErrorHandler[I, J, W] | None = None,
) -> KeyedStream[W | Failed]:
    """Keyed upstream (by `shard_of`); emits each job's outputs as its calls finish.

    With `on_job_error`, a job whose policy raises fails alone (see module doc)."""
    poll = timedelta(seconds=poll_interval_s)

    def build(resume: bytes | None) -> _CallLogic[I, J, S, O, W]:
        table = CallTable(policy, executor_factory(), on_job_error=on_job_error)
        return _CallLogic(table, poll, resume)

    return op.stateful(step_id, items, build)
