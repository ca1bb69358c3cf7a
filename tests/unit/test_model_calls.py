"""CallTable and CallExecutor: bounded concurrency, deadlines, snapshot and re-issue."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splitpin.operators.call_executor import CallExecutor
from splitpin.operators.model_calls import CallFailed, CallTable, JobStep, next_tick, shard_of


@dataclass
class SlowEcho:
    """A job per input, one call per job; `run` sleeps and records how many run at once."""

    delay_s: float = 0.05
    timeout: float = 5.0
    held: int = 0
    most_held: int = 0
    started: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def job_id(self, item: str) -> str:
        return item

    def open(self, item: str) -> tuple[list[str], JobStep[str, str]]:
        return [item], JobStep(calls=[("call", item)])

    def advance(self, job: list[str], call_id: str, outcome: str | CallFailed) -> JobStep[str, str]:
        text = outcome if isinstance(outcome, str) else f"{job[0]}:{outcome.reason}"
        return JobStep(emit=[text], done=True)

    async def run(self, spec: str) -> str:
        with self.lock:
            self.held += 1
            self.most_held = max(self.most_held, self.held)
            self.started.append(spec)
        try:
            await asyncio.sleep(self.delay_s if spec != "slow" else 10)
        finally:
            with self.lock:
                self.held -= 1
        return f"{spec}:done"

    def timeout_s(self, spec: str) -> float:
        return self.timeout


@pytest.fixture
def executor() -> Iterator[CallExecutor]:
    pool = CallExecutor(4)
    yield pool
    pool.close()


def test_calls_overlap_up_to_the_limit_and_never_beyond(executor: CallExecutor) -> None:
    policy = SlowEcho()
    table: CallTable[str, list[str], str, str, str] = CallTable(policy, executor)
    for n in range(20):
        assert table.add(f"q{n}") == []  # nothing blocks, nothing is ready yet
    out = table.drain()
    assert sorted(out) == sorted(f"q{n}:done" for n in range(20))
    assert policy.most_held == 4
    assert not table.jobs and not table.pending


def test_poll_never_blocks_and_returns_finished_calls(executor: CallExecutor) -> None:
    policy = SlowEcho(delay_s=0.2)
    table: CallTable[str, list[str], str, str, str] = CallTable(policy, executor)
    table.add("a")
    assert table.poll() == []  # still in flight: poll returns at once with nothing
    deadline = time.monotonic() + 10
    got: list[str] = []
    while not got and time.monotonic() < deadline:
        got = table.poll()
        time.sleep(0.01)
    assert got == ["a:done"]


def test_deadline_becomes_an_outcome_not_silence(executor: CallExecutor) -> None:
    policy = SlowEcho(timeout=0.1)
    table: CallTable[str, list[str], str, str, str] = CallTable(policy, executor)
    table.add("slow")
    assert table.drain() == ["slow:timeout"]


def test_snapshot_keeps_calls_in_flight_and_restore_reissues_them(
    executor: CallExecutor,
) -> None:
    policy = SlowEcho(delay_s=0.3)
    table: CallTable[str, list[str], str, str, str] = CallTable(policy, executor)
    table.add("x")
    table.add("y")
    snapshot = table.snapshot()  # taken while both calls are in flight

    resumed_policy = SlowEcho(delay_s=0.01)
    resumed: CallTable[str, list[str], str, str, str] = CallTable(resumed_policy, executor)
    resumed.restore(snapshot)  # re-issued at once: no new input arrives
    assert sorted(resumed.drain()) == ["x:done", "y:done"]
    assert sorted(resumed_policy.started) == ["x", "y"]
    table.drain()


def test_same_input_while_open_is_not_answered_twice(executor: CallExecutor) -> None:
    policy = SlowEcho()
    table: CallTable[str, list[str], str, str, str] = CallTable(policy, executor)
    table.add("q")
    table.add("q")
    assert table.drain() == ["q:done"]
    assert policy.started == ["q"]


def test_shards_are_stable_and_bounded() -> None:
    shards = {shard_of(f"conv-{n}", 8) for n in range(200)}
    assert shards == {f"shard-{n}" for n in range(8)}
    # crc32, not the per-process salted hash(): a resumed process finds the same shard.
    assert shard_of("conv-1", 8) == "shard-4"


@dataclass
class Ordered:
    """One call per job whose delay the input names: calls end in any order we like."""

    def job_id(self, item: tuple[str, float]) -> str:
        return item[0]

    def open(self, item: tuple[str, float]) -> tuple[str, JobStep[str, float]]:
        return item[0], JobStep(calls=[("call", item[1])])

    def advance(self, job: str, call_id: str, outcome: str | CallFailed) -> JobStep[str, float]:
        return JobStep(emit=[job], done=True)

    async def run(self, spec: float) -> str:
        await asyncio.sleep(spec)
        return "ok"

    def timeout_s(self, spec: float) -> float:
        return 10.0


def test_poll_advances_finished_calls_in_submission_order_and_only_those(
    executor: CallExecutor,
) -> None:
    """Calls that end in reverse order are advanced in the order they were submitted; one
    still running stays in flight, and a cancelled one is never advanced."""
    table: CallTable[tuple[str, float], str, float, str, str] = CallTable(Ordered(), executor)
    for name, delay in (("a", 0.3), ("b", 0.2), ("c", 0.1), ("late", 30.0), ("gone", 0.1)):
        table.add((name, delay))
    executor.cancel(table.pending[("gone", "call")].future)
    table.pending.pop(("gone", "call"))
    futures = [table.pending[(name, "call")].future for name in "abc"]
    concurrent.futures.wait(futures, timeout=30)
    time.sleep(0.05)  # the futures' done-callbacks run right after they are marked done
    assert table.poll() == ["a", "b", "c"]
    assert table.poll() == []
    assert list(table.pending) == [("late", "call")]


@given(
    now=st.floats(min_value=1e9, max_value=2e9, allow_nan=False),
    ms=st.sampled_from([1, 2, 5, 10, 50]),
    share=st.floats(min_value=0, max_value=0.5),
)
def test_polls_fall_on_one_grid_at_most_an_interval_away(now: float, ms: int, share: float) -> None:
    """Every shard wakes on the same instants, never later than one interval from now."""
    interval = timedelta(milliseconds=ms)
    tick = next_tick(now, interval)
    tick_us = (tick - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert tick_us % (ms * 1000) == 0
    assert now - 1e-6 < tick.timestamp() <= now + ms / 1000 + 1e-6
    # Another shard asking a little later, before the tick, wakes at the same instant.
    other = now + share * (tick.timestamp() - now - 2e-6)
    assert next_tick(other, interval) == tick
