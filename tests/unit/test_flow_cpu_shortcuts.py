"""CPU shortcuts on the worker thread (issue 13): each gives what the plain computation gives.

* `stats.interp` is `np.interp` for one point: the same double, for any sorted knots
  (duplicates included), any values, points on, between and outside the knots, inf, NaN.
* The calibration maps' one-point calls (every fast reply goes through them) equal their
  array path (`apply`) and no longer build arrays.
* `CallExecutor.submit` wakes the loop once per burst of calls, and each call still ends as
  `run_coroutine_threadsafe` would end it (result, exception, cancelled before or while it
  runs), started in submission order.
* `IsolatedBatchLogic` counts its journal as it grows instead of summing it at every batch:
  the count always equals the sum, and the logic snapshots itself at the same points.
"""

from __future__ import annotations

import asyncio
import math
import pickle
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitpin.core.settings import load_settings
from splitpin.core.stats import interp
from splitpin.operators import isolation
from splitpin.operators.call_executor import CallExecutor
from splitpin.operators.ingest import RawRecord
from splitpin.operators.isolation import Failed, IsolatedBatchLogic, Isolation
from splitpin.providers.calibration import (
    PROBABILITY_DECIMALS,
    AgreementMap,
    IsotonicMap,
    calibration_for,
)
from tests.unit.test_isolation import BatchAppender, PoisonError


def _bits(value: float) -> bytes:
    return struct.pack("<d", value)


finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
probability = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def knots(
    draw: st.DrawFn, values: st.SearchStrategy[float] = finite
) -> tuple[list[float], list[float]]:
    xs = sorted(draw(st.lists(finite, min_size=1, max_size=40)))
    if len(xs) > 1 and draw(st.booleans()):  # repeated knots, as isotonic blocks make
        xs = sorted([*xs, *draw(st.lists(st.sampled_from(xs), max_size=5))])
    ys = draw(st.lists(values, min_size=len(xs), max_size=len(xs)))
    return xs, ys


@settings(max_examples=2000, deadline=None)
@given(
    data=knots(),
    x=st.one_of(finite, st.sampled_from([math.inf, -math.inf, math.nan]), st.just(0.0)),
    on_knot=st.booleans(),
)
def test_interp_is_numpys_for_one_point(
    data: tuple[list[float], list[float]], x: float, on_knot: bool
) -> None:
    xs, ys = data
    point = xs[len(xs) // 2] if on_knot else x
    want = float(np.interp(point, xs, ys))
    got = interp(point, xs, ys)
    assert (math.isnan(got) and math.isnan(want)) or _bits(got) == _bits(want)


def _isotonic(xs: list[float], ys: list[float]) -> IsotonicMap:
    order = sorted(ys)
    return IsotonicMap(tuple(xs), tuple(order))


@settings(max_examples=500, deadline=None)
@given(data=knots(probability), raw=st.floats(-0.5, 1.5, allow_nan=False))
def test_an_isotonic_maps_call_is_its_array_path(
    data: tuple[list[float], list[float]], raw: float
) -> None:
    fitted = _isotonic(*data)
    want = round(float(fitted.apply([raw])[0]), PROBABILITY_DECIMALS)
    assert fitted(raw) == want


@settings(max_examples=500, deadline=None)
@given(
    agree_knots=knots(probability),
    disagree_knots=knots(probability),
    score=st.sampled_from(["product", "min", "router"]),
    fast=probability,
    router=probability,
    agree=st.booleans(),
)
def test_an_agreement_maps_call_is_its_array_path(
    agree_knots: tuple[list[float], list[float]],
    disagree_knots: tuple[list[float], list[float]],
    score: Any,
    fast: float,
    router: float,
    agree: bool,
) -> None:
    strata = {"agree": _isotonic(*agree_knots), "disagree": _isotonic(*disagree_knots)}
    fitted = AgreementMap(score, strata)
    value = fitted.apply(np.array([fast]), np.array([router]), np.array([agree]))[0]
    assert fitted(fast, router, agree) == round(float(value), PROBABILITY_DECIMALS)


@settings(max_examples=300, deadline=None)
@given(raw=st.one_of(probability, st.none()), router=st.one_of(probability, st.none()))
def test_the_shipped_calibration_answers_as_the_array_path_without_numpy_interp(
    raw: float | None, router: float | None
) -> None:
    shipped = calibration_for(load_settings().governance.classifier)
    assert shipped.agreement is not None
    for cites in (True, False):
        want: float | None
        if raw is None:
            want = None
        else:
            fast = round(float(shipped.maps["fast"].apply([raw])[0]), PROBABILITY_DECIMALS)
            if router is None:
                want = fast
            else:
                value = shipped.agreement.apply(
                    np.array([fast]), np.array([router]), np.array([cites])
                )[0]
                want = round(float(value), PROBABILITY_DECIMALS)
        with mock.patch.object(np, "interp", side_effect=AssertionError):
            got = shipped.fast_probability_given_router(raw, router, cites)
        assert got == want


def test_a_logistic_agreement_map_still_takes_its_array_path() -> None:
    fitted = AgreementMap("logistic", {}, (0.1, 1.0, 2.0, 0.5))
    value = fitted.apply(np.array([0.7]), np.array([0.4]), np.array([True]))[0]
    assert fitted(0.7, 0.4, True) == round(float(value), PROBABILITY_DECIMALS)


# --- the isolation journal's running count -----------------------------------------------


DEAD_LETTER = Isolation("dead_letter", lambda item: RawRecord(b"k", b"", "events", -1, -1))


@settings(max_examples=400, deadline=None)
@given(
    batches=st.lists(
        st.one_of(
            st.lists(st.tuples(st.integers(1, 9), st.booleans()), min_size=1, max_size=6),
            st.just([]),  # stands for a Bytewax snapshot
        ),
        max_size=30,
    ),
    journal=st.integers(1, 12),
)
def test_the_journal_count_is_the_journals_size_and_bounds_it_as_before(
    batches: list[list[tuple[int, bool]]], journal: int
) -> None:
    with mock.patch.object(isolation, "MAX_JOURNAL", journal):
        logic = IsolatedBatchLogic("batch", BatchAppender, None, DEAD_LETTER)
        plain: list[list[tuple[int, bool]]] = []  # the journal the plain sum would keep
        out: list[Any] = []
        for batch in batches:
            if not batch:
                logic.snapshot()
                plain = []
                continue
            emitted, _ = logic.on_batch(batch)
            out.extend(emitted)
            for item in [batch] if not any(p for _, p in batch) else [[i] for i in batch]:
                if item[0][1]:
                    continue  # a poison item is rolled back, never journalled
                plain.append(item)
                if sum(len(b) for b in plain) >= journal:
                    plain = []  # the logic snapshots itself
            assert logic._journaled == sum(len(b) for b in logic._journal)
            assert logic._journal == plain
            assert logic._journaled < journal
    clean = [n for batch in batches for n, poison in batch if not poison]
    assert [x for x in out if not isinstance(x, Failed)] == clean
    assert pickle.loads(logic.snapshot()) == clean


@pytest.mark.parametrize("poison_at", [0, 2])
def test_a_rollback_recounts_the_journal(poison_at: int) -> None:
    logic = IsolatedBatchLogic("batch", BatchAppender, None, DEAD_LETTER)
    logic.on_batch([(1, False), (2, False)])
    logic.on_batch([(3, False)])
    batch = [(4, False), (5, False), (6, False)]
    batch[poison_at] = (batch[poison_at][0], True)
    logic.on_batch(batch)
    assert logic._journaled == sum(len(b) for b in logic._journal) == 5


# --- the call executor wakes its loop once per burst ------------------------------------


@pytest.fixture
def executor() -> Iterator[CallExecutor]:
    pool = CallExecutor(2)
    yield pool
    pool.close()


def _hold_loop(executor: CallExecutor) -> threading.Event:
    """Block the executor's loop until the returned event is set (a burst piles up)."""
    gate, holding = threading.Event(), threading.Event()

    def hold() -> None:
        holding.set()
        gate.wait(10)

    executor._loop.call_soon_threadsafe(hold)
    assert holding.wait(10)
    return gate


@settings(max_examples=30, deadline=None)
@given(calls=st.lists(st.sampled_from(["value", "raise", "cancel", "slow-cancel"]), max_size=12))
def test_a_burst_of_calls_wakes_the_loop_once_and_ends_as_each_call_does(
    calls: list[str],
) -> None:
    executor = CallExecutor(64)  # slots never bind here: every call starts at once
    try:
        order: list[int] = []
        gate = _hold_loop(executor)

        def make(i: int, kind: str) -> Callable[[], Awaitable[int]]:
            async def call() -> int:
                order.append(i)
                if kind == "raise":
                    raise PoisonError(str(i))
                if kind == "slow-cancel":
                    await asyncio.sleep(30)
                return i

            return call

        with mock.patch.object(
            executor._loop, "call_soon_threadsafe", wraps=executor._loop.call_soon_threadsafe
        ) as wake:
            futures = [executor.submit(make(i, kind)) for i, kind in enumerate(calls)]
            assert wake.call_count == min(len(calls), 1)
        for future, kind in zip(futures, calls, strict=True):
            if kind == "cancel":  # before the loop ever saw it: it never runs
                assert executor.cancel(future)
        gate.set()
        for i, (future, kind) in enumerate(zip(futures, calls, strict=True)):
            if kind == "slow-cancel":
                deadline = time.monotonic() + 10
                while not executor.started(future) and time.monotonic() < deadline:
                    time.sleep(0.005)
                assert executor.cancel(future)  # mid-flight: the task is cancelled
            if kind in ("cancel", "slow-cancel"):
                assert future.cancelled()
            elif kind == "raise":
                with pytest.raises(PoisonError):
                    future.result(10)
            else:
                assert future.result(10) == i

        async def barrier() -> None:  # the loop has taken every earlier callback by now
            await asyncio.sleep(0)

        executor.run(barrier)
        # Submission order; as with run_coroutine_threadsafe, a call cancelled before the
        # loop took it still runs up to its first suspension, then its task is cancelled.
        assert order == list(range(len(calls)))
        assert not [f for f in futures if executor.started(f) and not f.done()]
    finally:
        executor.close()


def test_calls_submitted_after_a_drain_wake_the_loop_again(executor: CallExecutor) -> None:
    async def one() -> int:
        return 1

    with mock.patch.object(
        executor._loop, "call_soon_threadsafe", wraps=executor._loop.call_soon_threadsafe
    ) as wake:
        assert executor.submit(one).result(10) == 1
        assert executor.submit(one).result(10) == 1
    assert wake.call_count == 2
