"""Per tenant x model x minute cost aggregates (`routing.metrics.windowed`) in event time.

Each CostRecord (one per model call) falls in exactly one tumbling window of
`accounting.window_s`, aligned to the Unix epoch, chosen by its `occurred_at`: the same
record always lands in the same window, whichever worker, replay or restart sees it.

The plain-Python part (`CostWindow`, `CountedWindows`) holds all the arithmetic, so it is
tested without Bytewax; `window_costs` only wires it to Bytewax's windowing operators.

Invariant: the cost (and calls, tokens, escalations) summed over every WindowedCost
emitted equals the sum over the distinct CostRecords (by `record_id`) that came in. A
window is therefore emitted once on time and then, possibly, again as *corrections*
(`late_records > 0`) that carry only the calls that arrived after it closed; consumers
add every record naming a (tenant, model, window_start) to that window.
"""

from __future__ import annotations

import math
import pickle
from collections import OrderedDict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, TypeAlias, cast

from bytewax import operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic
from bytewax.operators import windowing as win

from splitpin.core import metrics
from splitpin.core.stats import nearest_rank
from splitpin.operators.isolation import Failed, Isolation
from splitpin.schemas.governance import AccountingConfig
from splitpin.schemas.metrics import CostRecord, WindowedCost

WINDOW_ALIGN = datetime(1970, 1, 1, tzinfo=UTC)
"""Windows start at whole multiples of window_s since the epoch (minutes on the minute)."""

EARLIEST = datetime.min.replace(tzinfo=UTC)
LATEST = datetime.max.replace(tzinfo=UTC)

CLOSE_POLL = timedelta(milliseconds=500)
"""Least wait between two wake-ups of a key that still has an open window (see _wake_at)."""

MAX_REMEMBERED_IDS = 10_000
"""record_ids remembered per tenant x model for dedupe after close; older windows are
forgotten whole, so a duplicate of a call from a forgotten window is counted again."""


# --- Pure aggregation ------------------------------------------------------------------


class Call(NamedTuple):
    """The parts of a CostRecord a window needs; small, so a window keeps every call."""

    tokens_in: int
    tokens_out: int
    cost_usd: float
    latency_ms: float
    escalated: bool


@dataclass
class CostWindow:
    """Accumulator for one tenant x model window: every distinct call, by record_id.

    Calls are kept (not running sums) so a duplicate is recognised by its record_id, the
    latency percentiles are exact, and `cost_usd` is an `fsum`, which does not depend on
    the order calls arrived in.
    """

    tenant_id: str = ""
    model: str = ""
    calls: dict[str, Call] = field(default_factory=dict)

    def add(self, record: CostRecord) -> CostWindow:
        """Fold in one record; a repeated record_id (re-emitted after a crash) is ignored."""
        self._claim(record.tenant_id, record.model)
        if record.record_id not in self.calls:
            self.calls[record.record_id] = Call(
                record.tokens_in,
                record.tokens_out,
                record.cost_usd,
                record.latency_ms,
                record.escalated,
            )
        return self

    def merge(self, other: CostWindow) -> CostWindow:
        """Union of both windows' calls (a call in both counts once)."""
        if other.calls:
            self._claim(other.tenant_id, other.model)
        for record_id, call in other.calls.items():
            self.calls.setdefault(record_id, call)
        return self

    def without(self, record_ids: Collection[str]) -> CostWindow:
        """A copy minus calls already counted elsewhere (a closed window's, a correction's)."""
        kept = {rid: call for rid, call in self.calls.items() if rid not in record_ids}
        return CostWindow(self.tenant_id, self.model, kept)

    def finish(
        self, window_start: datetime, window_end: datetime, *, late: bool = False
    ) -> WindowedCost:
        """The WindowedCost for these calls; `late` makes it a correction (late_records=n)."""
        calls = self.calls.values()
        # Nearest rank: the same observed p50/p95 on every replay, in any arrival order.
        latencies = [call.latency_ms for call in calls] or [0.0]
        return WindowedCost(
            tenant_id=self.tenant_id,
            model=self.model,
            window_start=window_start,
            window_end=window_end,
            calls=len(self.calls),
            tokens_in=sum(call.tokens_in for call in calls),
            tokens_out=sum(call.tokens_out for call in calls),
            cost_usd=math.fsum(call.cost_usd for call in calls),
            latency_p50_ms=nearest_rank(latencies, 50),
            latency_p95_ms=nearest_rank(latencies, 95),
            escalations=sum(1 for call in calls if call.escalated),
            late_records=len(self.calls) if late else 0,
        )

    def _claim(self, tenant_id: str, model: str) -> None:
        # Keying upstream guarantees one tenant x model; a mix-up would silently bill one
        # tenant's calls to another, so it fails loudly instead.
        if not self.calls and not self.tenant_id:
            self.tenant_id, self.model = tenant_id, model
        elif (tenant_id, model) != (self.tenant_id, self.model):
            msg = (
                f"cost window for {self.tenant_id}|{self.model} got a call for {tenant_id}|{model}"
            )
            raise ValueError(msg)


def window_bounds(window_id: int, length: timedelta) -> tuple[datetime, datetime]:
    """Bytewax's tumbling window id -> [start, end): id n starts n lengths after the epoch."""
    start = WINDOW_ALIGN + length * window_id
    return start, start + length


@dataclass
class _Seen:
    closed: bool = False
    """The on-time aggregate of this window was emitted."""
    record_ids: set[str] = field(default_factory=set)
    """Every call emitted for this window so far, on time or as a correction."""


WindowItem: TypeAlias = tuple[int, CostWindow | CostRecord]
"""(window_id, closed accumulator from the windowing operator | record it deemed late)."""


@dataclass
class CountedWindows:
    """What one tenant x model has already emitted, per window, to keep the sums exact.

    Fed two kinds of item: closed accumulators and late records. A late record becomes
    part of a correction unless its record_id was already counted for its window. A
    closed accumulator is the on-time aggregate the first time its window closes; if the
    window closes again, Bytewax reopened it (its per-key state is dropped once a key has
    no open window, so a straggler that comes after that opens the window anew instead
    of being reported late) and it is a correction too, minus the calls already counted.
    """

    length: timedelta
    windows: OrderedDict[int, _Seen] = field(default_factory=OrderedDict)
    remembered: int = 0

    def on_batch(self, items: Iterable[WindowItem]) -> list[WindowedCost]:
        """On-time aggregates in arrival order, then one correction per window touched."""
        out: list[WindowedCost] = []
        corrections: dict[int, CostWindow] = {}
        for window_id, item in items:
            seen = self.windows.get(window_id)
            if seen is None:
                seen = self.windows[window_id] = _Seen()
            fresh = item if isinstance(item, CostWindow) else CostWindow().add(item)
            fresh = fresh.without(seen.record_ids)
            reopened = isinstance(item, CostWindow) and seen.closed
            if isinstance(item, CostWindow):
                seen.closed = True
            if not fresh.calls:
                continue
            seen.record_ids.update(fresh.calls)
            self.remembered += len(fresh.calls)
            if isinstance(item, CostWindow) and not reopened:
                out.append(fresh.finish(*window_bounds(window_id, self.length)))
            else:
                corrections.setdefault(window_id, CostWindow()).merge(fresh)
        for window_id in sorted(corrections):
            bounds = window_bounds(window_id, self.length)
            out.append(corrections[window_id].finish(*bounds, late=True))
        self._forget()
        return out

    def _forget(self) -> None:
        # Oldest-closed windows go first: a duplicate of a call that old is the least
        # likely, and the bound keeps a chatty tenant x model's state small.
        while self.remembered > MAX_REMEMBERED_IDS and len(self.windows) > 1:
            _window_id, seen = self.windows.popitem(last=False)
            self.remembered -= len(seen.record_ids)


# --- Bytewax wrapper -------------------------------------------------------------------


def cost_key(record: CostRecord) -> str:
    return f"{record.tenant_id}|{record.model}"


def _event_time(record: CostRecord) -> datetime:
    return record.occurred_at.astimezone(UTC)


def _wake_at(wait: timedelta) -> win.EventClock[CostRecord]:
    """An EventClock whose wake-ups do not spin.

    Bytewax asks `to_system_utc(window close)` when to wake a key to close windows; the
    default (the close time itself) is in the past for replayed data, and for live data
    comes before the watermark (max event time - wait + system time since) can pass it,
    and the runtime then re-wakes the key on every step until it does: a busy loop. A
    window cannot close before close + wait on the system clock, and polling a key
    at most every CLOSE_POLL until it does costs nothing and delays a close by < 0.5 s.
    """

    def to_system_utc(close: datetime) -> datetime:
        try:
            at_close = close + wait
        except OverflowError:  # a close near year 9999: never, as far as a clock can say
            at_close = LATEST
        return max(at_close, datetime.now(UTC) + CLOSE_POLL)

    return win.EventClock(_event_time, wait_for_system_duration=wait, to_system_utc=to_system_utc)


def windowable(record: CostRecord, config: AccountingConfig) -> bool:
    """Whether Bytewax's windowing can place `occurred_at` without overflowing a datetime.

    The windowing is not our code: it computes window bounds, close times and watermarks
    around each record's time, and `9999-12-31T23:59:59Z` overflows there (or
    `0001-01-01T00:00:00+14:00` in UTC). Records outside the margin are not windowed; the
    flow dead-letters them (processing_error) before this operator.
    """
    margin = 2 * timedelta(seconds=config.window_s + config.allowed_lateness_s) + timedelta(days=1)
    try:
        at = _event_time(record)
        return EARLIEST + margin <= at <= LATEST - margin
    except (OverflowError, ValueError):
        return False


class _CountedLogic(StatefulBatchLogic[WindowItem, WindowedCost, bytes]):
    def __init__(self, length: timedelta, resume: bytes | None) -> None:
        self._counted: CountedWindows = (
            CountedWindows(length) if resume is None else pickle.loads(resume)
        )

    def on_batch(self, values: list[WindowItem]) -> tuple[list[WindowedCost], bool]:
        out = self._counted.on_batch(values)
        for windowed in out:
            if windowed.late_records:
                metrics.count(
                    metrics.LATE_COST_RECORDS, windowed.model, amount=windowed.late_records
                )
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps(self._counted, protocol=pickle.HIGHEST_PROTOCOL)


def _as_item(window_id_value: tuple[int, CostWindow | CostRecord]) -> WindowItem:
    # Identity: widens both window outputs to one item type so they can be merged.
    return window_id_value


@operator
def window_costs(
    step_id: str,
    records: Stream[CostRecord],
    config: AccountingConfig,
    isolation: Isolation | None = None,
) -> Stream[WindowedCost | Failed]:
    """CostRecords -> one WindowedCost per tenant x model x closed window, plus corrections.

    Keyed by `tenant|model` (few keys, each on one worker), windowed on `occurred_at` by
    an EventClock that waits `allowed_lateness_s` of system time for stragglers. Records
    Bytewax reports late, and windows it reopens, come out as corrections (see module doc)
    and are counted in `splitpin_cost_records_late_total`.

    With `isolation`, the counting step (ours) runs under `IsolatedBatchLogic`; feed it
    only `windowable` records, since the windowing before it is Bytewax's.
    """
    length = timedelta(seconds=config.window_s)
    wait = timedelta(seconds=config.allowed_lateness_s)
    keyed = op.key_on("key", records, cost_key)
    windows = win.fold_window(
        "window",
        keyed,
        _wake_at(wait),
        win.TumblingWindower(length=length, align_to=WINDOW_ALIGN),
        CostWindow,
        CostWindow.add,
        CostWindow.merge,
        # CostWindow's result does not depend on the order of its calls (see its doc).
        # Ordered mode holds every record in a queue until the watermark passes it and
        # re-partitions that whole queue on every batch: quadratic in a burst, and the
        # queue is pickled into every snapshot. Unordered, a record joins its window at
        # once; windows still close, and late records are still told apart, by watermark.
        ordered=False,
    )
    closed: KeyedStream[WindowItem] = op.map_value("closed", windows.down, _as_item)
    late: KeyedStream[WindowItem] = op.map_value("late", windows.late, _as_item)

    def build(resume: bytes | None) -> _CountedLogic:
        return _CountedLogic(length, resume)

    both = op.merge("both", closed, late)
    if isolation is None:
        plain = op.key_rm("unkey", op.stateful_batch("count", both, build))
        return cast("Stream[WindowedCost | Failed]", plain)
    isolated = isolation.stateful_batch("count", both, build)
    return op.key_rm("unkey", isolated)
