"""Cost window arithmetic without Bytewax: sums, percentiles, dedupe, corrections."""

from __future__ import annotations

import math
import pickle
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitpin.operators.cost_windows import (
    CostWindow,
    CountedWindows,
    window_bounds,
)
from splitpin.schemas.metrics import CostRecord

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
MINUTE = timedelta(seconds=60)
W0 = int((T0 - datetime(1970, 1, 1, tzinfo=UTC)) / MINUTE)
"""Window id of the minute starting at T0."""


def record(record_id: str, *, at_s: float = 0.0, **overrides: Any) -> CostRecord:
    fields: dict[str, Any] = {
        "record_id": record_id,
        "event_id": record_id.split(":")[0],
        "tenant_id": "acme-bank",
        "role": "fast",
        "model": "small",
        "model_version": "small-2026-01",
        "tokens_in": 100,
        "tokens_out": 20,
        "cost_usd": 0.001,
        "latency_ms": 100.0,
        "occurred_at": T0 + timedelta(seconds=at_s),
    }
    fields.update(overrides)
    return CostRecord(**fields)


def window_of(*records: CostRecord) -> CostWindow:
    acc = CostWindow()
    for rec in records:
        acc = acc.add(rec)
    return acc


def test_a_window_sums_its_calls() -> None:
    acc = window_of(
        record("a:0", tokens_in=10, tokens_out=1, cost_usd=0.1),
        record("b:0", tokens_in=20, tokens_out=2, cost_usd=0.2, escalated=True),
        record("c:0", tokens_in=30, tokens_out=3, cost_usd=0.3),
    )
    out = acc.finish(T0, T0 + MINUTE)
    assert (out.tenant_id, out.model) == ("acme-bank", "small")
    assert (out.window_start, out.window_end) == (T0, T0 + MINUTE)
    assert (out.calls, out.tokens_in, out.tokens_out, out.escalations) == (3, 60, 6, 1)
    assert out.cost_usd == math.fsum([0.1, 0.2, 0.3])
    assert out.late_records == 0


def test_cost_does_not_depend_on_arrival_order() -> None:
    costs = [0.1, 1e-9, 0.2, 3e-7, 0.3, 0.7]
    records = [record(f"e{i}:0", cost_usd=c) for i, c in enumerate(costs)]
    forward = window_of(*records).finish(T0, T0 + MINUTE)
    backward = window_of(*reversed(records)).finish(T0, T0 + MINUTE)
    assert forward == backward


_calls = st.lists(
    st.tuples(
        st.integers(0, 12),  # record id: repeats are re-emitted records
        st.floats(0, 5, allow_nan=False),  # cost_usd
        st.floats(0, 60_000, allow_nan=False),  # latency_ms
        st.integers(0, 5_000),  # tokens_in
        st.booleans(),  # escalated
    ),
    max_size=30,
    unique_by=lambda call: call[0],  # a re-emission repeats its record exactly
)


@settings(max_examples=200, deadline=None)
@given(calls=_calls, data=st.data())
def test_a_window_is_the_same_in_any_arrival_order_with_any_re_emissions(
    calls: list[tuple[int, float, float, int, bool]], data: st.DataObject
) -> None:
    """What folding cost windows unordered (operators/cost_windows.window_costs) rests on:
    no order of the records, and no re-emission of some of them, changes the window."""
    records = [
        record(f"e{n}:0", cost_usd=c, latency_ms=ms, tokens_in=t, escalated=e)
        for n, c, ms, t, e in calls
    ]
    again = data.draw(st.lists(st.sampled_from(records), max_size=10)) if records else []
    shuffled = data.draw(st.permutations([*records, *again]))
    expected = window_of(*records).finish(T0, T0 + MINUTE)
    assert window_of(*shuffled).finish(T0, T0 + MINUTE) == expected


def test_window_percentiles_are_observed_latencies() -> None:
    latencies = [900.0, 100.0, 300.0, 200.0, 5000.0]
    acc = window_of(*(record(f"e{i}:0", latency_ms=ms) for i, ms in enumerate(latencies)))
    out = acc.finish(T0, T0 + MINUTE)
    assert out.latency_p50_ms == 300.0  # rank ceil(2.5) = 3 of [100, 200, 300, 900, 5000]
    assert out.latency_p95_ms == 5000.0


def test_a_re_emitted_record_counts_once() -> None:
    first = record("a:0", cost_usd=0.5)
    again = record("a:0", cost_usd=0.5)
    out = window_of(first, record("b:0"), again).finish(T0, T0 + MINUTE)
    assert out.calls == 2
    assert out.cost_usd == pytest.approx(0.501)


def test_merge_is_a_union_by_record_id() -> None:
    left = window_of(record("a:0"), record("b:0"))
    right = window_of(record("b:0"), record("c:0"))
    merged = left.merge(right)
    assert sorted(merged.calls) == ["a:0", "b:0", "c:0"]
    assert CostWindow().merge(CostWindow()).calls == {}


def test_a_window_refuses_another_tenants_call() -> None:
    acc = window_of(record("a:0"))
    with pytest.raises(ValueError, match=re.escape("acme-bank|small got a call for shopco|small")):
        acc.add(record("b:0", tenant_id="shopco"))


def test_windows_are_aligned_to_the_epoch() -> None:
    assert window_bounds(W0, MINUTE) == (T0, T0 + MINUTE)
    assert window_bounds(0, MINUTE)[0] == datetime(1970, 1, 1, tzinfo=UTC)


def test_on_time_window_then_a_late_correction() -> None:
    counted = CountedWindows(MINUTE)
    on_time = counted.on_batch([(W0, window_of(record("a:0"), record("b:0")))])
    assert [(w.calls, w.late_records) for w in on_time] == [(2, 0)]

    late = counted.on_batch(
        [
            (W0, record("c:0", at_s=5, cost_usd=0.25)),
            (W0, record("d:0", at_s=6, cost_usd=0.5)),
            (W0, record("a:0")),  # already in the on-time window: dropped
            (W0 + 1, record("e:0", at_s=65)),
        ]
    )
    assert [(w.window_start, w.calls, w.late_records) for w in late] == [
        (T0, 2, 2),
        (T0 + MINUTE, 1, 1),
    ]
    assert late[0].cost_usd == pytest.approx(0.75)
    assert counted.on_batch([(W0, record("c:0", at_s=5))]) == []  # late duplicate


def test_a_reopened_window_is_a_correction_minus_what_was_counted() -> None:
    counted = CountedWindows(MINUTE)
    counted.on_batch([(W0, window_of(record("a:0")))])
    # Bytewax dropped the key's state after the window closed; a straggler (and a
    # re-emitted copy of a:0) reopened and closed the same window.
    again = counted.on_batch([(W0, window_of(record("a:0"), record("z:0", cost_usd=0.5)))])
    assert [(w.calls, w.late_records, w.cost_usd) for w in again] == [(1, 1, 0.5)]
    assert counted.on_batch([(W0, window_of(record("a:0")))]) == []


def test_a_late_record_seen_before_its_window_closes_is_not_counted_twice() -> None:
    counted = CountedWindows(MINUTE)
    late = counted.on_batch([(W0, record("b:0"))])
    closed = counted.on_batch([(W0, window_of(record("a:0"), record("b:0")))])
    assert [(w.calls, w.late_records) for w in late] == [(1, 1)]
    assert [(w.calls, w.late_records) for w in closed] == [(1, 0)]


def test_old_windows_are_forgotten_past_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("splitpin.operators.cost_windows.MAX_REMEMBERED_IDS", 3)
    counted = CountedWindows(MINUTE)
    for i in range(4):
        counted.on_batch([(W0 + i, window_of(record(f"e{i}:0", at_s=60 * i)))])
    assert list(counted.windows) == [W0 + 1, W0 + 2, W0 + 3]
    assert counted.remembered == 3


def test_counted_windows_survive_a_snapshot() -> None:
    counted = CountedWindows(MINUTE)
    counted.on_batch([(W0, window_of(record("a:0")))])
    resumed = pickle.loads(pickle.dumps(counted))
    assert resumed.on_batch([(W0, record("a:0"))]) == []
