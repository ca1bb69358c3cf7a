"""Per-record error isolation: no record can stop the stream, whatever a step's logic does.

Like Kafka Streams' processing-exception handler. Every step whose code is ours runs
through an `Isolation`: a step that raises for one record turns that record into a
`Failed` item (its dead letter, reason `processing_error`, with the step name and the
exception type), counts it in `splitpin_processing_errors_total{step,error_type}`, and
the flow goes on. `on_processing_error=stop` re-raises instead, naming the step.

Map-like steps get a guarded function. Stateful steps get `IsolatedLogic`, which wraps a
`StatefulLogic` and keeps the key's state as it was before a failing item: it remembers
the last snapshot (bytes, as Bytewax takes them at each epoch's end) and the items the
logic has taken since (a *journal*, at most `MAX_JOURNAL`). On a failure it rebuilds the
logic from that snapshot and re-applies the journal, discarding the re-applied outputs
(they were emitted already). The per-item cost is one list append; the rebuild is paid
only on a failure. A replayed item re-runs the logic's side effects outside the state
(Prometheus counters count it twice); the state itself is exactly the state of a run
without the failing item, provided the logic is deterministic in its inputs.

A recovery resume therefore never meets the poison record again with state that makes
it fatal: it is dead-lettered anew (same coordinates) and the flow continues.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Literal, TypeVar

from bytewax import operators as op
from bytewax.dataflow import Stream
from bytewax.operators import KeyedStream, StatefulBatchLogic, StatefulLogic

from splitpin.core import metrics
from splitpin.errors import SplitpinError
from splitpin.operators.ingest import RawRecord, dead_letter
from splitpin.schemas.dead_letter import DeadLetter

log = logging.getLogger(__name__)

X = TypeVar("X")
Y = TypeVar("Y")
V = TypeVar("V")
W = TypeVar("W")
S = TypeVar("S")

OnError = Literal["dead_letter", "stop"]

MAX_JOURNAL = 512
"""Items a stateful key may take between two snapshots before the wrapper snapshots the
logic itself: bounds the memory the journal holds and the work of one rollback."""

MAX_DETAIL_CHARS = 1000
"""The exception message in a dead letter's `detail` is cut here (a repr can be huge)."""

_UNKNOWN = RawRecord(key=None, value=None, topic="", partition=-1, offset=-1)


class ProcessingError(SplitpinError):
    """A step raised for one record and `on_processing_error` is `stop`."""


@dataclass(frozen=True, slots=True)
class Failed:
    """A record a step's logic raised for: the dead letter that replaces its output."""

    letter: DeadLetter


Describe = Callable[[object], RawRecord | None]
"""The record an item stands for (key, value re-encoded, source topic), None if unknown."""


class Isolation:
    """One per flow: the error policy and how to describe an item as a dead letter."""

    def __init__(
        self, on_error: OnError, describe: Describe, *, max_bytes: int | None = None
    ) -> None:
        self.on_error = on_error
        self._describe = describe
        self._max_bytes = max_bytes

    def fail(self, step: str, item: object, exc: Exception) -> Failed:
        """Count the failure; the record's dead letter, or raise if the policy is `stop`."""
        error_type = type(exc).__name__
        metrics.count(metrics.PROCESSING_ERRORS, step, error_type)
        message = f"{error_type}: {exc}"[:MAX_DETAIL_CHARS]
        if self.on_error == "stop":
            msg = f"step {step!r} raised for one record (on_processing_error=stop): {message}"
            raise ProcessingError(msg) from exc
        try:
            raw = self._describe(item) or _UNKNOWN
        except Exception:  # describing must never be what stops the flow
            log.exception("could not describe the record step %s failed on", step)
            raw = _UNKNOWN
        log.warning("step %s: %s; record dead-lettered (processing_error)", step, message)
        sized = {} if self._max_bytes is None else {"max_bytes": self._max_bytes}
        detail = f"step {step}: {message}"
        letter = dead_letter(
            raw, "processing_error", detail, step=step, error_type=error_type, **sized
        )
        return Failed(letter)

    def guard(self, step: str, fn: Callable[[X], Y]) -> Callable[[X], Y | Failed]:
        """`fn`, with a raise for one item turned into that item's Failed."""

        def guarded(item: X) -> Y | Failed:
            try:
                return fn(item)
            except Exception as exc:
                return self.fail(step, item, exc)

        return guarded

    def guard_many(
        self, step: str, fn: Callable[[X], Iterable[Y]]
    ) -> Callable[[X], list[Y | Failed]]:
        """Like `guard` for flat maps: all of an item's outputs, or only its Failed."""

        def guarded(item: X) -> list[Y | Failed]:
            try:
                return list(fn(item))
            except Exception as exc:
                return [self.fail(step, item, exc)]

        return guarded

    def map(self, step: str, up: Stream[X], fn: Callable[[X], Y]) -> Stream[Y | Failed]:
        return op.map(step, up, self.guard(step, fn))

    def flat_map(
        self, step: str, up: Stream[X], fn: Callable[[X], Iterable[Y]]
    ) -> Stream[Y | Failed]:
        return op.flat_map(step, up, self.guard_many(step, fn))

    def stateful(
        self,
        step: str,
        up: KeyedStream[V],
        builder: Callable[[S | None], StatefulLogic[V, W, S]],
    ) -> KeyedStream[W | Failed]:
        """`op.stateful` under the same step id, so existing recovery state still resumes."""

        def build(resume: S | None) -> IsolatedLogic[V, W, S]:
            return IsolatedLogic(step, builder, resume, self)

        return op.stateful(step, up, build)

    def stateful_batch(
        self,
        step: str,
        up: KeyedStream[V],
        builder: Callable[[S | None], StatefulBatchLogic[V, W, S]],
    ) -> KeyedStream[W | Failed]:
        """`op.stateful_batch` under the same step id; see `IsolatedBatchLogic`."""

        def build(resume: S | None) -> IsolatedBatchLogic[V, W, S]:
            return IsolatedBatchLogic(step, builder, resume, self)

        return op.stateful_batch(step, up, build)


class IsolatedLogic(StatefulLogic[V, W | Failed, S], Generic[V, W, S]):
    """A key's logic whose failures roll its state back instead of stopping the flow.

    Snapshots are the inner logic's, byte for byte. A failing `on_notify` also stops the
    key's notifications until its next item (else a timer that always fails would spin);
    a failing `notify_at` means no notification.
    """

    def __init__(
        self,
        step: str,
        builder: Callable[[S | None], StatefulLogic[V, W, S]],
        resume: S | None,
        isolation: Isolation,
    ) -> None:
        self._step = step
        self._builder = builder
        self._isolation = isolation
        self._base = resume
        self._journal: list[V] = []
        self._inner = builder(resume)
        self._notify_failed = False

    def on_item(self, value: V) -> tuple[list[W | Failed], bool]:
        self._notify_failed = False
        try:
            out, discard = self._inner.on_item(value)
            emitted: list[W | Failed] = list(out)
        except Exception as exc:
            failed = self._isolation.fail(self._step, value, exc)
            self._rollback()
            return [failed], self._empty()
        if discard:
            return emitted, StatefulLogic.DISCARD
        self._journal.append(value)
        if len(self._journal) >= MAX_JOURNAL:
            self.snapshot()
        return emitted, StatefulLogic.RETAIN

    def on_notify(self) -> tuple[list[W | Failed], bool]:
        return self._guard_timer(self._inner.on_notify)

    def on_eof(self) -> tuple[list[W | Failed], bool]:
        return self._guard_timer(self._inner.on_eof)

    def notify_at(self) -> datetime | None:
        if self._notify_failed:
            return None
        try:
            return self._inner.notify_at()
        except Exception as exc:
            # No record to dead-letter and nothing to emit from here: count and log it.
            metrics.count(metrics.PROCESSING_ERRORS, self._step, type(exc).__name__)
            log.warning("step %s: notify_at raised %r; no notification", self._step, exc)
            return None

    def snapshot(self) -> S:
        state = self._inner.snapshot()
        self._base, self._journal = state, []
        return state

    def _guard_timer(
        self, call: Callable[[], tuple[Iterable[W], bool]]
    ) -> tuple[list[W | Failed], bool]:
        try:
            out, discard = call()
            return list(out), discard
        except Exception as exc:
            failed = self._isolation.fail(self._step, None, exc)
            self._rollback()
            self._notify_failed = True
            return [failed], self._empty()

    def _empty(self) -> bool:
        """After a rollback to no state at all, let Bytewax drop the key."""
        return self._base is None and not self._journal

    def _rollback(self) -> None:
        """Rebuild from the last snapshot and re-apply what came after, outputs dropped."""
        self._inner = self._builder(self._base)
        journal, self._journal = self._journal, []
        for value in journal:
            try:
                _out, discard = self._inner.on_item(value)
            except Exception:  # not deterministic: the item is left out of the state
                log.exception("step %s: an item that succeeded raised on rollback", self._step)
                self._inner = self._builder(self._base)
                try:
                    for kept in self._journal:
                        self._inner.on_item(kept)
                except Exception:  # last resort: the state of the last snapshot
                    self._inner, self._journal = self._builder(self._base), []
                continue
            if discard:
                self._base, self._journal = None, []
                self._inner = self._builder(None)
            else:
                self._journal.append(value)


class IsolatedBatchLogic(StatefulBatchLogic[V, W | Failed, S], Generic[V, W, S]):
    """`IsolatedLogic` for batch logic: a batch that raises is rolled back and its items
    are applied again one at a time, so only the items that raise alone are dead-lettered.

    The journal holds the batches applied since the last snapshot (at most `MAX_JOURNAL`
    items in all, counted as they are added: summing the batches at every append made a
    key's batches within an epoch quadratic). Timers are not guarded here: the logic this
    wraps has none.
    """

    def __init__(
        self,
        step: str,
        builder: Callable[[S | None], StatefulBatchLogic[V, W, S]],
        resume: S | None,
        isolation: Isolation,
    ) -> None:
        self._step = step
        self._builder = builder
        self._isolation = isolation
        self._base = resume
        self._journal: list[list[V]] = []
        self._journaled = 0  # items in the journal: sum(map(len, self._journal))
        self._inner = builder(resume)

    def on_batch(self, values: list[V]) -> tuple[list[W | Failed], bool]:
        try:
            out, discard = self._inner.on_batch(values)
            emitted: list[W | Failed] = list(out)
        except Exception:
            self._rollback()
            return self._one_by_one(values)
        return self._applied(values, emitted, discard)

    def notify_at(self) -> datetime | None:
        return self._inner.notify_at()

    def on_notify(self) -> tuple[list[W | Failed], bool]:
        out, discard = self._inner.on_notify()
        return list(out), discard

    def on_eof(self) -> tuple[list[W | Failed], bool]:
        out, discard = self._inner.on_eof()
        return list(out), discard

    def snapshot(self) -> S:
        state = self._inner.snapshot()
        self._base, self._journal, self._journaled = state, [], 0
        return state

    def _applied(
        self, values: list[V], emitted: list[W | Failed], discard: bool
    ) -> tuple[list[W | Failed], bool]:
        if discard:
            self._base, self._journal, self._journaled = None, [], 0
            self._inner = self._builder(None)
            return emitted, StatefulBatchLogic.DISCARD
        self._journal.append(values)
        self._journaled += len(values)
        if self._journaled >= MAX_JOURNAL:
            self.snapshot()
        return emitted, StatefulBatchLogic.RETAIN

    def _one_by_one(self, values: list[V]) -> tuple[list[W | Failed], bool]:
        out: list[W | Failed] = []
        discard = False
        for value in values:
            try:
                single, discard = self._inner.on_batch([value])
                emitted: list[W | Failed] = list(single)
            except Exception as exc:
                out.append(self._isolation.fail(self._step, value, exc))
                self._rollback()
                discard = self._base is None and not self._journal
                continue
            out.extend(emitted)
            _, discard = self._applied([value], [], discard)
        return out, discard

    def _rollback(self) -> None:
        self._inner = self._builder(self._base)
        journal, self._journal, self._journaled = self._journal, [], 0
        try:
            for batch in journal:
                self._inner.on_batch(batch)
                self._journal.append(batch)
                self._journaled += len(batch)
        except Exception:  # not deterministic: the state of the last snapshot
            log.exception("step %s: a batch that succeeded raised on rollback", self._step)
            self._inner, self._journal, self._journaled = self._builder(self._base), [], 0
