"""`window_costs` under bytewax.testing: per tenant x model x minute sums, late data, resume.

Timing-free: windows close at EOF (the EventClock's watermark jumps to the end of time),
and the one late record is minutes behind its key's newest event time, far beyond the
5 s the test clock waits for stragglers.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main
from prometheus_client import REGISTRY

from splitpin.operators.cost_windows import window_costs
from splitpin.schemas.governance import AccountingConfig
from splitpin.schemas.metrics import CostRecord, WindowedCost

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
CONFIG = AccountingConfig(window_s=60, allowed_lateness_s=5)
TENANTS = ("acme-bank", "shopco")
MODELS = ("small", "large")

Totals = tuple[int, int, int, float, int]
"""calls, tokens_in, tokens_out, cost_usd, escalations"""


def record(n: int, tenant: str, model: str, at_s: float, **overrides: Any) -> CostRecord:
    fields: dict[str, Any] = {
        "record_id": f"e-{n}:0",
        "event_id": f"e-{n}",
        "tenant_id": tenant,
        "role": "fast" if model == "small" else "long_context",
        "model": model,
        "model_version": f"{model}-2026-01",
        "tokens_in": 100 + n,
        "tokens_out": 10 + n % 7,
        "cost_usd": (100 + n) * 3e-7 + (10 + n % 7) * 1.5e-6,
        "latency_ms": 50.0 + 13 * (n % 5),
        "occurred_at": T0 + timedelta(seconds=at_s),
        "escalated": n % 4 == 0,
    }
    fields.update(overrides)
    return CostRecord(**fields)


def three_minutes() -> list[CostRecord]:
    """Two tenants x two models, three calls in each of three minutes, keys interleaved;
    event time never goes backwards within a key."""
    records: list[CostRecord] = []
    for minute in range(3):
        for i in range(3):
            for tenant in TENANTS:
                for model in MODELS:
                    at_s = 60 * minute + 10 + 15 * i
                    records.append(record(len(records), tenant, model, at_s))
    return records


def expected(records: Sequence[CostRecord]) -> dict[tuple[str, str, datetime], Totals]:
    grouped: dict[tuple[str, str, datetime], dict[str, CostRecord]] = defaultdict(dict)
    for rec in records:
        start_s = math.floor(rec.occurred_at.timestamp() / 60) * 60
        start = datetime.fromtimestamp(start_s, tz=UTC)
        grouped[(rec.tenant_id, rec.model, start)].setdefault(rec.record_id, rec)
    return {key: totals(list(calls.values())) for key, calls in grouped.items()}


def totals(records: Sequence[CostRecord | WindowedCost]) -> Totals:
    calls = sum(r.calls if isinstance(r, WindowedCost) else 1 for r in records)
    return (
        calls,
        sum(r.tokens_in for r in records),
        sum(r.tokens_out for r in records),
        math.fsum(r.cost_usd for r in records),
        sum(r.escalations if isinstance(r, WindowedCost) else int(r.escalated) for r in records),
    )


def build(source: TestingSource[CostRecord], out: list[WindowedCost]) -> Dataflow:
    flow = Dataflow("cost_windows_test")
    records = op.input("records", flow, source)
    op.output("windowed", window_costs("cost", records, CONFIG), TestingSink(out))
    return flow


def run(records: list[CostRecord]) -> list[WindowedCost]:
    out: list[WindowedCost] = []
    run_main(build(TestingSource(records), out))
    return out


def by_window(out: Sequence[WindowedCost]) -> dict[tuple[str, str, datetime], Totals]:
    grouped: dict[tuple[str, str, datetime], list[WindowedCost]] = defaultdict(list)
    for windowed in out:
        grouped[(windowed.tenant_id, windowed.model, windowed.window_start)].append(windowed)
    return {key: totals(rows) for key, rows in grouped.items()}


def late_count(model: str) -> float:
    value = REGISTRY.get_sample_value("splitpin_cost_records_late_total", {"model": model})
    return value or 0.0


def assert_same(actual: dict[Any, Totals], wanted: dict[Any, Totals]) -> None:
    assert actual.keys() == wanted.keys()
    for key, (calls, tokens_in, tokens_out, cost, escalations) in wanted.items():
        got = actual[key]
        assert got[:3] == (calls, tokens_in, tokens_out), key
        assert got[3] == pytest.approx(cost, rel=1e-12), key
        assert got[4] == escalations, key


def test_each_tenant_model_minute_gets_its_sums() -> None:
    records = three_minutes()
    records.insert(4, records[3])  # re-emitted after a crash, same record_id, same window
    out = run(records)

    assert len(out) == 2 * 2 * 3
    assert all(w.late_records == 0 for w in out)
    assert all(w.window_end - w.window_start == timedelta(seconds=60) for w in out)
    assert all(w.window_start.second == 0 and w.window_start.microsecond == 0 for w in out)
    assert_same(by_window(out), expected(records))
    first = next(
        w for w in out if (w.tenant_id, w.model, w.window_start) == ("acme-bank", "small", T0)
    )
    assert (first.latency_p50_ms, first.latency_p95_ms) == (89.0, 102.0)  # of 50, 89, 102


def test_a_record_far_behind_the_watermark_is_a_counted_correction() -> None:
    records = three_minutes()
    straggler = record(999, "shopco", "large", at_s=30, cost_usd=0.125)
    records.append(straggler)  # its key's event time is at 02:40: minutes past 00:30
    records.append(records[3])  # a copy of a counted call, late too: dropped, not counted
    before = late_count("large")
    out = run(records)

    corrections = [w for w in out if w.late_records]
    assert [(w.tenant_id, w.model, w.window_start) for w in corrections] == [
        ("shopco", "large", T0)
    ]
    assert (corrections[0].calls, corrections[0].late_records) == (1, 1)
    assert corrections[0].cost_usd == 0.125
    assert late_count("large") - before == 1
    assert len(out) == 2 * 2 * 3 + 1
    assert_same(by_window(out), expected(records))
    distinct = {r.record_id: r for r in records}.values()
    assert sum(w.cost_usd for w in out) == pytest.approx(
        math.fsum(r.cost_usd for r in distinct), rel=1e-12
    )


def test_a_window_reopened_after_a_resume_adds_only_new_calls(tmp_path: Path) -> None:
    """At EOF every window closes and Bytewax drops the emptied window state; after the
    resume a straggler opens the same minute again, and the re-emitted copy of a counted
    call with it must not be billed twice."""
    first = [record(n, "acme-bank", "small", at_s=10 + n) for n in range(3)]
    straggler = record(50, "acme-bank", "small", at_s=40, cost_usd=0.25)
    source = TestingSource[CostRecord]([*first, TestingSource.EOF(), first[1], straggler])
    out: list[WindowedCost] = []
    flow = build(source, out)
    init_db_dir(tmp_path, 1)
    recovery = RecoveryConfig(str(tmp_path))

    run_main(flow, epoch_interval=timedelta(0), recovery_config=recovery)
    assert [(w.calls, w.late_records) for w in out] == [(3, 0)]
    before = late_count("small")
    run_main(flow, epoch_interval=timedelta(0), recovery_config=recovery)

    assert [(w.window_start, w.calls, w.late_records) for w in out] == [(T0, 3, 0), (T0, 1, 1)]
    assert out[1].cost_usd == 0.25
    assert late_count("small") - before == 1
    assert_same(by_window(out), expected([*first, straggler]))
