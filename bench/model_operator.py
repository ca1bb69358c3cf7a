"""Overhead and throughput of the non-blocking model operator, against plain asyncio.

Every call goes to a test provider that sleeps a fixed service time (no network), so the
figures isolate what the machinery costs: `CallExecutor` (an asyncio loop in a daemon
thread, bounded slots, a deadline per call), `CallTable` (jobs polled without blocking)
and the Bytewax wrapper `model_calls` (`op.stateful` polling on `notify_at`).

Paths, each with a fresh executor and policy:

* direct: the provider called with `asyncio.gather` under an `asyncio.Semaphore(limit)`
  on one loop. The baseline.
* table: `CallTable` + `CallExecutor`, driven by a tight poll loop in the main thread
  (`time.sleep(0)` between polls, which only hands the GIL to the executor's thread).
* table@poll (phase 1 only): the same loop, sleeping the poll interval between polls;
  what the poll interval alone costs, without Bytewax.
* bytewax: the real operator in a Dataflow run by `run_main` (TestingSource -> key_on
  `shard_of` -> `model_calls` -> a sink that stamps the wall time of each result).

Phase 1, added latency per call: calls arrive at a steady pace (half the in-flight limit's
capacity by default, so they do not queue); latency = emission - submission (for the
operator paths, submission is stamped in the policy's `open`), split into provider done ->
poll and poll -> emission. Phase 2, throughput: a burst of N calls for each in-flight
limit; calls/s against direct and against the ideal limit / service time. `--jitter-ms`
spreads the service time (the same per call on every path) to break the phase-lock a fixed
time causes between completions and a poll loop.

The machine is a shared 2-core box: nothing asserts on timings. Read medians, p99 and the
ratios from one run (bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import shlex
import sys
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from typing import Any

import orjson
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSource, run_main
from tqdm import tqdm

from splitpin.core.stats import nearest_rank
from splitpin.operators.call_executor import CallExecutor
from splitpin.operators.model_calls import CallFailed, CallTable, JobStep, model_calls, shard_of

HOLD_EOF_S = 0.02
"""How often the source checks whether every result is out before it ends the input.

The input must not end early: at EOF the operator `drain`s (blocks until every call is
done and emits them all at once), which is not the polling path being measured."""

DIRECT, TABLE, TABLE_POLL, BYTEWAX = "direct", "table", "table@poll", "bytewax"


class BenchError(Exception):
    """A path lost, duplicated or failed calls: its figures would be wrong."""


# --- the test provider and a minimal policy -----------------------------------------------


@dataclass(frozen=True, slots=True)
class Service:
    """The provider's service time per call: `mean_s`, spread evenly over +-`jitter_s`.

    A call's time depends only on its job id, so every path sees the same times. With no
    jitter every call takes the same time, which can phase-lock completions to a poll
    loop's wake-ups (see bench/README.md)."""

    mean_s: float
    jitter_s: float = 0.0

    def of(self, job_id: str) -> float:
        if not self.jitter_s:
            return self.mean_s
        spread = zlib.crc32(job_id.encode()) / 2**32 * 2 - 1  # even over [-1, 1)
        return self.mean_s + spread * self.jitter_s


async def provider(service_s: float) -> tuple[float, float]:
    """A model that answers after `service_s`; returns when it started and finished."""
    started = time.perf_counter()
    await asyncio.sleep(service_s)
    return started, time.perf_counter()


@dataclass(frozen=True, slots=True)
class Request:
    id: str


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    submitted: float
    """perf_counter() in `open`, just before CallTable hands the call to the executor."""


@dataclass(frozen=True, slots=True)
class Result:
    id: str
    submitted: float
    started: float
    """When the provider began, i.e. once the call had a slot (nan if the call failed)."""
    finished: float
    """When the provider returned (nan if the call failed)."""
    advanced: float
    """When a poll found the call done and folded it into the job."""
    failed: str | None = None


class SleepPolicy:
    """One call per job; the job emits one Result when the call ends, then closes."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def job_id(self, item: Request) -> str:
        return item.id

    def open(self, item: Request) -> tuple[Job, JobStep[Result, str]]:
        return Job(item.id, time.perf_counter()), JobStep(calls=[("answer", item.id)])

    def advance(
        self, job: Job, call_id: str, outcome: tuple[float, float] | CallFailed
    ) -> JobStep[Result, str]:
        now = time.perf_counter()
        if isinstance(outcome, CallFailed):
            failed = f"{call_id}: {outcome.reason}"
            result = Result(job.id, job.submitted, math.nan, math.nan, now, failed)
        else:
            result = Result(job.id, job.submitted, *outcome, now)
        return JobStep(emit=[result], done=True)

    async def run(self, spec: str) -> tuple[float, float]:
        return await provider(self.service.of(spec))

    def timeout_s(self, spec: str) -> float:
        return 20 * self.service.of(spec) + 5  # a deadline here would be a bench failure


# --- the paths ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Emitted:
    """One call as its consumer saw it (all perf_counter seconds)."""

    submitted: float
    started: float
    finished: float
    advanced: float
    emitted: float


@dataclass(frozen=True, slots=True)
class Run:
    calls: list[Emitted]
    process_s: float
    """Wall time of the whole path, set-up and tear-down included (run_main for bytewax)."""

    @property
    def span_s(self) -> float:
        """First submission to last emission."""
        return max(c.emitted for c in self.calls) - min(c.submitted for c in self.calls)


def request_ids(n: int) -> list[Request]:
    return [Request(f"job-{i:05d}") for i in range(n)]


def checked(path: str, n: int, out: Sequence[tuple[Result, float]], process_s: float) -> Run:
    failed = [r for r, _ in out if r.failed is not None]
    if failed:
        msg = f"{path}: {len(failed)} calls failed, e.g. {failed[0].id}: {failed[0].failed}"
        raise BenchError(msg)
    ids = {r.id for r, _ in out}
    if len(out) != n or len(ids) != n:
        msg = f"{path}: {len(out)} results ({len(ids)} distinct) for {n} calls"
        raise BenchError(msg)
    calls = [Emitted(r.submitted, r.started, r.finished, r.advanced, at) for r, at in out]
    return Run(calls, process_s)


def run_direct(n: int, limit: int, service: Service, gap_s: float) -> Run:
    """The baseline: the provider under a semaphore on one loop, nothing else."""

    async def main() -> list[tuple[Result, float]]:
        slots = asyncio.Semaphore(limit)
        start = time.perf_counter()

        async def one(i: int) -> tuple[Result, float]:
            delay = start + i * gap_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            job_id = f"job-{i:05d}"
            submitted = time.perf_counter()
            async with slots:
                started, finished = await provider(service.of(job_id))
            now = time.perf_counter()
            return Result(job_id, submitted, started, finished, now), now

        return await asyncio.gather(*(one(i) for i in range(n)))

    started = time.perf_counter()
    out = asyncio.run(main())
    return checked(DIRECT, n, out, time.perf_counter() - started)


def run_table(n: int, limit: int, service: Service, gap_s: float, sleep_s: float) -> Run:
    """CallTable + CallExecutor in a poll loop; `sleep_s` 0 is the tight loop."""
    path = TABLE if sleep_s == 0 else TABLE_POLL
    started = time.perf_counter()
    executor = CallExecutor(limit, name="bench-calls")
    out: list[tuple[Result, float]] = []
    try:
        table: CallTable[Request, Job, str, tuple[float, float], Result] = CallTable(
            SleepPolicy(service), executor
        )
        requests = request_ids(n)
        start = time.perf_counter()
        i = 0
        while i < n or table.pending:
            while i < n and time.perf_counter() >= start + i * gap_s:
                ready = table.add(requests[i])
                i += 1
                now = time.perf_counter()
                out.extend((r, now) for r in ready)
            ready = table.poll()
            now = time.perf_counter()
            out.extend((r, now) for r in ready)
            time.sleep(sleep_s)  # sleep(0) still releases the GIL for the executor's thread
    finally:
        executor.close()
    return checked(path, n, out, time.perf_counter() - started)


class _StampPartition(StatelessSinkPartition[Result]):
    def __init__(self, out: list[tuple[Result, float]]) -> None:
        self._out = out

    def write_batch(self, items: list[Result]) -> None:
        now = time.perf_counter()
        self._out.extend((item, now) for item in items)


class StampSink(DynamicSink[Result]):
    """Records each result with the wall time the sink was handed it."""

    def __init__(self, out: list[tuple[Result, float]]) -> None:
        self._out = out

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StampPartition:
        return _StampPartition(self._out)


def run_bytewax(
    n: int, limit: int, service: Service, gap_s: float, poll_s: float, shards: int
) -> Run:
    """The real operator: one worker, recovery off, Bytewax's default epoch interval."""
    started = time.perf_counter()
    executor = CallExecutor(limit, name="bench-calls")
    out: list[tuple[Result, float]] = []
    requests = request_ids(n)

    def feed() -> Iterator[Request | TestingSource.PAUSE]:
        start = time.perf_counter()  # first pulled once the dataflow is up
        for i, request in enumerate(requests):
            delay = start + i * gap_s - time.perf_counter()
            if delay > 0:
                yield TestingSource.PAUSE(timedelta(seconds=delay))
            yield request
        while len(out) < n:  # hold EOF back until every result is out (see HOLD_EOF_S)
            yield TestingSource.PAUSE(timedelta(seconds=HOLD_EOF_S))

    flow = Dataflow("bench-model-operator")
    items = op.input("requests", flow, TestingSource(feed(), batch_size=n))
    keyed = op.key_on("by-shard", items, lambda r: shard_of(r.id, shards))
    answers = model_calls("answer", keyed, SleepPolicy(service), lambda: executor, poll_s)
    op.output("stamp", op.key_rm("unkey", answers), StampSink(out))
    try:
        run_main(flow)
    finally:
        executor.close()
    return checked(BYTEWAX, n, out, time.perf_counter() - started)


def run_path(path: str, n: int, limit: int, gap_s: float, args: argparse.Namespace) -> Run:
    """One run of `path`: n calls, one every gap_s (0: all at once), `limit` in flight."""
    service = service_of(args)
    poll_s: float = args.poll_ms / 1000
    if path == DIRECT:
        return run_direct(n, limit, service, gap_s)
    if path == TABLE:
        return run_table(n, limit, service, gap_s, 0.0)
    if path == TABLE_POLL:
        return run_table(n, limit, service, gap_s, poll_s)
    return run_bytewax(n, limit, service, gap_s, poll_s, args.shards)


def service_of(args: argparse.Namespace) -> Service:
    return Service(args.service_ms / 1000, args.jitter_ms / 1000)


# --- figures --------------------------------------------------------------------------------


def ms_figures(values_s: Sequence[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {
        "p50": round(nearest_rank(ms, 50), 3),
        "p99": round(nearest_rank(ms, 99), 3),
        "max": round(max(ms), 3),
        "n": len(ms),
    }


def latency_phase(args: argparse.Namespace, bar: tqdm[Any]) -> dict[str, Any]:
    """Phase 1: paced arrivals, per-call latency for every path, repeats pooled."""
    service_s = args.service_ms / 1000
    limit, n = args.overhead_limit, args.overhead_calls
    gap_s = service_s / (limit * args.utilization)
    order = [DIRECT, TABLE, TABLE_POLL, BYTEWAX]
    pooled: dict[str, list[Emitted]] = {p: [] for p in order}
    medians: dict[str, list[float]] = {p: [] for p in order}
    for repeat in range(args.repeats):
        for path in order if repeat % 2 == 0 else order[::-1]:
            bar.set_description(f"latency {path} #{repeat + 1}")
            calls = run_path(path, n, limit, gap_s, args).calls
            pooled[path].extend(calls)
            medians[path].append(nearest_rank([c.emitted - c.submitted for c in calls], 50) * 1000)
            bar.update()
    paths: dict[str, Any] = {}
    for path in order:
        calls = pooled[path]
        paths[path] = {
            "latency_ms": ms_figures([c.emitted - c.submitted for c in calls]),
            "submit_to_start_ms": ms_figures([c.started - c.submitted for c in calls]),
            "start_to_finish_ms": ms_figures([c.finished - c.started for c in calls]),
            "finish_to_emit_ms": ms_figures([c.emitted - c.finished for c in calls]),
            "finish_to_poll_ms": ms_figures([c.advanced - c.finished for c in calls]),
            "poll_to_emit_ms": ms_figures([c.emitted - c.advanced for c in calls]),
            "repeat_p50_ms": [round(m, 3) for m in medians[path]],
        }
    base = paths[DIRECT]["latency_ms"]
    for figures in paths.values():
        lat = figures["latency_ms"]
        figures["overhead_p50_ms"] = round(lat["p50"] - base["p50"], 3)
        figures["overhead_p99_ms"] = round(lat["p99"] - base["p99"], 3)
        figures["ratio_p50"] = round(lat["p50"] / base["p50"], 4)
        figures["ratio_p99"] = round(lat["p99"] / base["p99"], 4)
    return {
        "limit": limit,
        "calls_per_repeat": n,
        "repeats": args.repeats,
        "arrival_gap_ms": round(gap_s * 1000, 3),
        "utilization": args.utilization,
        "paths": paths,
    }


def calls_for(limit: int, args: argparse.Namespace) -> int:
    """A whole number of waves: about --calls, but at most --max-ideal-s of ideal time."""
    service_s: float = args.service_ms / 1000
    max_ideal_s: float = args.max_ideal_s
    calls: int = args.calls
    waves = max(1, min(math.ceil(calls / limit), math.floor(max_ideal_s / service_s + 1e-9)))
    return waves * limit


def throughput_phase(args: argparse.Namespace, bar: tqdm[Any]) -> list[dict[str, Any]]:
    """Phase 2: a burst of calls per in-flight limit; calls/s over first submit..last emit."""
    service_s = args.service_ms / 1000
    rows = []
    for index, limit in enumerate(args.limits):
        n = calls_for(limit, args)
        paths = [DIRECT, TABLE, BYTEWAX]
        order = paths[index % len(paths) :] + paths[: index % len(paths)]
        runs: dict[str, Run] = {}
        for path in order:
            bar.set_description(f"throughput limit {limit} {path}")
            runs[path] = run_path(path, n, limit, 0.0, args)
            bar.update()
        ideal = limit / service_s
        direct = n / runs[DIRECT].span_s
        row: dict[str, Any] = {
            "limit": limit,
            "calls": n,
            "ideal_calls_per_s": round(ideal, 2),
            "ideal_s": round(n / ideal, 3),
            "paths": {},
        }
        for path in paths:
            rate = n / runs[path].span_s
            row["paths"][path] = {
                "calls_per_s": round(rate, 2),
                "span_s": round(runs[path].span_s, 4),
                "process_s": round(runs[path].process_s, 4),
                "vs_direct": round(rate / direct, 4),
                "vs_ideal": round(rate / ideal, 4),
            }
        rows.append(row)
    return rows


def warm_up(args: argparse.Namespace) -> None:
    """Imports, first loop and first dataflow: paid once, outside every figure."""
    for path in (DIRECT, TABLE, BYTEWAX):
        run_path(path, 8, 4, 0.0, args)


def machine() -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "bytewax": version("bytewax"),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "switch_interval_ms": round(sys.getswitchinterval() * 1000, 3),
    }


def header(args: argparse.Namespace, info: dict[str, Any]) -> str:
    return "\n".join(
        [
            "splitpin model operator benchmark: asyncio direct vs CallTable vs Bytewax operator",
            f"command   : {args.command}",
            f"date      : {args.date}",
            f"machine   : nproc={info['nproc']} (cpu_count={info['cpu_count']}), "
            f"load avg 1m {info['load_avg_1m']}, {info['platform']}",
            f"versions  : python {info['python']}, bytewax {info['bytewax']} "
            f"(1 worker, recovery off, default epoch interval)",
            f"provider  : asyncio.sleep({args.service_ms:g} ms"
            + (f" +- {args.jitter_ms:g} ms, even" if args.jitter_ms else ", fixed")
            + "), no network",
            f"operator  : poll interval {args.poll_ms:g} ms, {args.shards} shards, "
            f"GIL switch interval {info['switch_interval_ms']:g} ms",
        ]
    )


def pair(figures: dict[str, float]) -> str:
    return f"{figures['p50']:.2f}/{figures['p99']:.2f}"


def latency_table(phase: dict[str, Any], poll_ms: float) -> str:
    lines = [
        f"Phase 1: per-call latency, ms (limit {phase['limit']}, "
        f"{phase['calls_per_repeat']} calls x {phase['repeats']} repeats, one call every "
        f"{phase['arrival_gap_ms']:g} ms = {phase['utilization']:.0%} of capacity; "
        f"table@poll sleeps {poll_ms:g} ms between polls)",
        f"{'path':<11} {'p50':>8} {'p99':>8} {'max':>8} {'+p50':>7} {'+p99':>7} "
        f"{'x p50':>6} {'x p99':>6} {'sub>start':>11} {'fin>poll':>11} {'poll>emit':>11}"
        f"  repeat p50s",
    ]
    for path, f in phase["paths"].items():
        lat = f["latency_ms"]
        split = [
            "-" if path == DIRECT and part != "submit_to_start_ms" else pair(f[part])
            for part in ("submit_to_start_ms", "finish_to_poll_ms", "poll_to_emit_ms")
        ]
        lines.append(
            f"{path:<11} {lat['p50']:8.2f} {lat['p99']:8.2f} {lat['max']:8.2f} "
            f"{f['overhead_p50_ms']:+7.2f} {f['overhead_p99_ms']:+7.2f} "
            f"{f['ratio_p50']:6.3f} {f['ratio_p99']:6.3f} "
            f"{split[0]:>11} {split[1]:>11} {split[2]:>11}"
            f"  {', '.join(f'{m:.1f}' for m in f['repeat_p50_ms'])}"
        )
    lines.append(
        "+p50/+p99: path minus direct; x: path / direct. Parts of a call, p50/p99: "
        "sub>start: submitted -> the provider starts (executor hop, slot); fin>poll: provider "
        "done -> a poll folds it in; poll>emit: -> the consumer (sink) has it"
    )
    return "\n".join(lines)


def throughput_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "Phase 2: throughput, calls/s (burst of N calls; first submission -> last emission)",
        f"{'limit':>5} {'N':>5} {'ideal':>7} {'direct':>8} {'table':>8} {'bytewax':>8} "
        f"{'tab/dir':>7} {'bwx/dir':>7} {'dir/id':>6} {'tab/id':>6} {'bwx/id':>6} {'bwx run s':>9}",
    ]
    for row in rows:
        p = row["paths"]
        lines.append(
            f"{row['limit']:>5} {row['calls']:>5} {row['ideal_calls_per_s']:7.1f} "
            f"{p[DIRECT]['calls_per_s']:8.1f} {p[TABLE]['calls_per_s']:8.1f} "
            f"{p[BYTEWAX]['calls_per_s']:8.1f} "
            f"{p[TABLE]['vs_direct']:7.3f} {p[BYTEWAX]['vs_direct']:7.3f} "
            f"{p[DIRECT]['vs_ideal']:6.3f} {p[TABLE]['vs_ideal']:6.3f} "
            f"{p[BYTEWAX]['vs_ideal']:6.3f} {p[BYTEWAX]['process_s']:9.2f}"
        )
    lines.append(
        "ideal = limit / service time; bwx run s = the whole run_main, start-up and EOF "
        "included (not in the calls/s)"
    )
    return "\n".join(lines)


def parse_limits(text: str) -> list[int]:
    limits = [int(part) for part in text.split(",") if part.strip()]
    if not limits or min(limits) < 1:
        msg = "limits must be positive integers, e.g. 1,2,4"
        raise argparse.ArgumentTypeError(msg)
    return limits


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--service-ms", type=float, default=50.0, help="provider time (50)")
    parser.add_argument(
        "--jitter-ms",
        type=float,
        default=0.0,
        help="spread each call's service time evenly over +- this (0: a fixed time)",
    )
    parser.add_argument("--poll-ms", type=float, default=5.0, help="operator poll interval (5)")
    parser.add_argument("--shards", type=int, default=8, help="operator keys, shard_of (8)")
    parser.add_argument(
        "--overhead-limit", type=int, default=16, help="in-flight limit in phase 1 (16)"
    )
    parser.add_argument(
        "--overhead-calls", type=int, default=240, help="calls per path and repeat (240)"
    )
    parser.add_argument(
        "--utilization",
        type=float,
        default=0.5,
        help="phase 1 arrival rate as a share of limit / service time (0.5)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="phase 1 repeats, pooled (3)")
    parser.add_argument(
        "--limits",
        type=parse_limits,
        default=[1, 2, 4, 8, 16, 32, 64],
        help="phase 2 in-flight limits (1,2,4,8,16,32,64)",
    )
    parser.add_argument("--calls", type=int, default=400, help="phase 2 calls per limit (400)")
    parser.add_argument(
        "--max-ideal-s",
        type=float,
        default=5.0,
        help="phase 2 cap: fewer calls when N at this limit would ideally take longer (5)",
    )
    parser.add_argument("--json", action="store_true", help="end with one JSON object line")
    args = parser.parse_args(argv)
    if (
        min(args.shards, args.overhead_limit, args.overhead_calls, args.repeats, args.calls) < 1
        or min(args.service_ms, args.poll_ms, args.max_ideal_s) <= 0
        or not 0 <= args.jitter_ms < args.service_ms
        or not 0 < args.utilization <= 1
    ):
        parser.error(
            "counts and times must be positive, --utilization in (0, 1], "
            "0 <= --jitter-ms < --service-ms"
        )
    args.command = shlex.join([sys.executable, *sys.argv])
    args.date = datetime.now(UTC).isoformat(timespec="seconds")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    info = machine()
    print(header(args, info), flush=True)
    runs = 4 * args.repeats + 3 * len(args.limits)
    started = time.perf_counter()
    with tqdm(total=runs, unit="run", leave=False) as bar:
        bar.set_description("warm-up")
        warm_up(args)
        latency = latency_phase(args, bar)
        throughput = throughput_phase(args, bar)
    elapsed = time.perf_counter() - started
    print()
    print(latency_table(latency, args.poll_ms))
    print()
    print(throughput_table(throughput))
    print(f"\nbench wall time {elapsed:.1f} s")
    return {
        "command": args.command,
        "date": args.date,
        "machine": info,
        "service_ms": args.service_ms,
        "jitter_ms": args.jitter_ms,
        "poll_ms": args.poll_ms,
        "shards": args.shards,
        "latency": latency,
        "throughput": throughput,
        "wall_s": round(elapsed, 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except BenchError as exc:
        print(f"\nBENCH FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    if args.json:
        print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
