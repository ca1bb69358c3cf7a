"""What a second worker or a second process buys: the same workload on the same broker.

One run measures three cluster shapes on one broker, each against a fresh copy of the
same input (its own topics, recovery directory and, so, its own offsets):

* (a) 1 process x 1 worker, the reference every ratio is taken against;
* (b) 1 process x 2 workers (`splitpin run --workers 2`);
* (c) 2 processes x 1 worker (`splitpin run -i 0 -a A;B` and `-i 1 -a A;B`).

Per shape: throughput (events / (time until every process exited at the end of its input
- the same shape's start-up on an empty topic)), CPU per event (every process's user +
system time from the reaped children's rusage, start-up subtracted), and the decision's
latency p50/p99 while events are published at a fixed rate to a tailing cluster, and
the CPU that cluster burns idle (per second: it weighs in a slow run's CPU per event). Every
shape must write exactly one decision (and with `--workload whole` one final reply) per
input event, or the bench prints BENCH FAILED and exits 1. bench/README.md explains it.

    PYTHONPATH=. .venv/bin/python bench/scaling.py --workload decisions --events 2000
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from tqdm import tqdm

from bench.flow_throughput import (
    SAMPLE_EVENTS,
    STALL_TIMEOUT_S,
    WARMUP_EVENTS,
    BenchError,
    BenchEvent,
    Percentiles,
    Profiling,
    TopicCounter,
    check_output,
    children_cpu_s,
    delete_run_topics,
    finish,
    kafka_broker,
    load_templates,
    log_tail,
    machine,
    percentiles,
    preload,
    profile_table,
    publish_paced,
    replicate,
    start_flow,
    stop_flow,
    timed_latencies,
    topic_progress,
)
from splitpin.app.runner import ensure_recovery_dir
from splitpin.core.kafka.admin import create_topics
from splitpin.core.kafka.client_config import client_config, security_config
from splitpin.core.kafka.producer import CheckedProducer
from splitpin.core.kafka.reader import read_to_end
from splitpin.core.settings import Settings, load_settings

EVENT_PARTITIONS = 4
"""Even on purpose: with 3 partitions two processes split them 2:1 and cannot reach 2x."""
RECOVERY_PARTITIONS = 2
"""The same for every shape; a 2-worker cluster needs at least one partition per worker."""
SKEW_OFF_S = 100 * 365 * 86_400.0
"""Event-time skew limit for the bench: a century, i.e. off."""
Workload = Literal["decisions", "whole"]


@dataclass(frozen=True)
class Shape:
    """A cluster shape: how many `splitpin run` processes, each with how many workers."""

    label: str
    processes: int
    workers: int


SHAPES = (Shape("1p x 1w", 1, 1), Shape("1p x 2w", 1, 2), Shape("2p x 1w", 2, 1))


# -- running a cluster -----------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Ports free right now on 127.0.0.1, for the cluster's process addresses."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class Cluster:
    """The processes of one shape, started together; `wait` reaps them, `stop` ends them."""

    def __init__(
        self,
        settings: Settings,
        shape: Shape,
        logs: Path,
        *args: str,
        profile: tuple[Profiling, str] | None = None,
    ) -> None:
        """`profile` (py-spy options, label): each process runs under py-spy and writes
        `flow-<label>-p<i>.folded`."""
        ensure_recovery_dir(settings.recovery_dir, RECOVERY_PARTITIONS)  # before any starts
        self.logs = [logs.with_suffix(f".p{i}.log") for i in range(shape.processes)]
        self.profiled = profile is not None
        workers = ["--workers", str(shape.workers)]

        def spy(i: int) -> tuple[Profiling, str] | None:
            return None if profile is None else (profile[0], f"{profile[1]}-p{i}")

        if shape.processes == 1:
            self.processes = [start_flow(settings, self.logs[0], *workers, *args, profile=spy(0))]
            return
        addresses = ";".join(f"127.0.0.1:{port}" for port in free_ports(shape.processes))
        self.processes = [
            start_flow(
                settings, log, "-i", str(i), "-a", addresses, *workers, *args, profile=spy(i)
            )
            for i, log in enumerate(self.logs)
        ]

    def failure(self) -> str | None:
        """Why the cluster failed (a process exited non-zero), else None."""
        for process, log in zip(self.processes, self.logs, strict=True):
            if process.returncode not in (None, 0):
                return f"{log.name} exited with status {process.returncode}:\n{log_tail(log)}"
        return None

    def check_alive(self) -> None:
        """For a tailing cluster: any exit is a failure."""
        for process, log in zip(self.processes, self.logs, strict=True):
            if process.poll() is not None:
                msg = f"{log.name} exited ({process.returncode}); log:\n{log_tail(log)}"
                raise BenchError(msg)

    def wait(self, timeout_s: float) -> float:
        """Block until every process exited; the monotonic time the last one did."""
        deadline = time.monotonic() + timeout_s
        while any(process.poll() is None for process in self.processes):
            why = self.failure()
            if why is not None:
                raise BenchError(why)
            if time.monotonic() > deadline:
                msg = f"the cluster did not reach the end of its input in {timeout_s:.0f}s"
                raise BenchError(msg + "\n" + "\n".join(log_tail(log) for log in self.logs))
            time.sleep(0.02)
        ended = time.monotonic()
        why = self.failure()
        if why is not None:
            raise BenchError(why)
        return ended

    def stop(self) -> None:
        """SIGTERM every process at once (a peer's exit stops the others), then reap."""
        for process in self.processes:
            if process.poll() is None:
                with suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        for process in self.processes:
            stop_flow(process, profiled=self.profiled)


def process_cpu_s(pid: int) -> float:
    """User + system seconds of a live process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_share(cluster: Cluster, seconds: float) -> float | None:
    """CPU of the tailing cluster with no input, in cores (0.1 = 10 % of one core)."""
    if seconds <= 0 or not Path("/proc/self/stat").exists():
        return None
    before, started = sum(process_cpu_s(p.pid) for p in cluster.processes), time.monotonic()
    time.sleep(seconds)
    cluster.check_alive()
    after = sum(process_cpu_s(p.pid) for p in cluster.processes)
    return (after - before) / (time.monotonic() - started)


@dataclass(frozen=True)
class Timing:
    """Wall seconds from launch to the last exit, CPU seconds of every process."""

    wall_s: float
    cpu_s: float


def time_until_eof(
    settings: Settings,
    shape: Shape,
    logs: Path,
    counter: TopicCounter,
    expected: int,
    desc: str,
    profile: tuple[Profiling, str] | None = None,
) -> Timing:
    """Launch the shape with `--until-eof`; time and CPU until its last process exited
    (under `profile`, py-spy's own CPU is in the figure: compare shares, not CPU)."""
    before = children_cpu_s()
    with topic_progress(counter, settings.topic("decisions"), expected, desc):
        started = time.monotonic()
        cluster = Cluster(settings, shape, logs, "--until-eof", profile=profile)
        try:
            ended = cluster.wait(STALL_TIMEOUT_S + expected / 20)
        finally:
            cluster.stop()  # a no-op once they exited; otherwise (failure, ^C) end them
    return Timing(ended - started, children_cpu_s() - before)


# -- outputs -----------------------------------------------------------------------------------


def check_finals(settings: Settings, events: Sequence[BenchEvent], what: str) -> None:
    """Exactly one final reply per input event (`--workload whole`)."""
    finals: Counter[str] = Counter()
    for message in read_to_end(
        settings.bootstrap_servers,
        settings.topic("replies"),
        timeout_s=STALL_TIMEOUT_S,
        config=client_config(settings),
    ):
        value = orjson.loads(message.value() or b"{}")
        if value.get("kind") == "final":
            finals[str(value["reply_id"])] += 1
    wanted = {event.event_id for event in events}
    missing = wanted - finals.keys()
    repeated = sum(1 for count in finals.values() if count > 1)
    extra = finals.keys() - wanted
    if missing or repeated or extra:
        msg = (
            f"{what} wrote final replies for {len(finals)} of {len(wanted)} events: "
            f"{len(missing)} missing (e.g. {sorted(missing)[:3]}), {repeated} repeated, "
            f"{len(extra)} unknown. Its figures would be wrong, so the bench stops here."
        )
        raise BenchError(msg)


def check_all(
    settings: Settings,
    events: Sequence[BenchEvent],
    workload: Workload,
    counter: TopicCounter,
    what: str,
) -> int:
    """One decision per event (and one final reply with answering on); no dead letter.

    Returns the replies written with answering off: 0 once the flow honours
    `SPLITPIN_ANSWERING=false` (reported, not enforced).
    """
    dead = counter.count(settings.topic("dead_letter"))
    if dead:
        msg = f"{what} dead-lettered {dead} of {len(events)} bench events; they must be valid"
        raise BenchError(msg)
    check_output(settings, settings.topic("decisions"), events, what)
    if workload == "whole":
        check_finals(settings, events, what)
        return 0
    return counter.count(settings.topic("replies"))


# -- one shape ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeResult:
    """The figures of one shape; rates in events/s, latencies in ms."""

    shape: str
    processes: int
    workers: int
    run_s: float
    startup_s: float
    events_per_s: float | None
    cpu_us_per_event: float
    startup_cpu_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    rate_achieved: float
    idle_cores: float | None
    replies_with_answering_off: int


def prefixed(settings: Settings, prefix: str, workdir: Path, name: str) -> Settings:
    return settings.model_copy(
        update={"topic_prefix": prefix, "recovery_dir": workdir / f"recovery-{name}"}
    )


def run_shape(
    shape: Shape,
    index: int,
    settings: Settings,
    events: Sequence[BenchEvent],
    lat_events: Sequence[BenchEvent],
    args: argparse.Namespace,
    workdir: Path,
    counter: TopicCounter,
) -> ShapeResult:
    """Throughput on the preloaded copy, start-up on an empty topic, then latency tailing."""
    name = f"s{index}"
    base = settings.topic_prefix
    tp = prefixed(settings, f"{base}{name}.tp.", workdir, f"{name}-tp")

    def empty_run(k: int) -> Timing:
        empty = prefixed(settings, f"{base}empty.", workdir, f"{name}-empty{k}")
        return time_until_eof(empty, shape, workdir / f"{name}-empty{k}", counter, 0, "start-up")

    # Start-up runs bracket the real one (before, after, before...): drift on a shared
    # box then moves both sides of the subtraction alike.
    startups = [empty_run(k) for k in range(0, args.startup_runs, 2)]
    spy = None if args.profile is None else (args.profile, name)
    run = time_until_eof(
        tp, shape, workdir / f"{name}-tp", counter, len(events), shape.label, profile=spy
    )
    if args.profile is not None:
        for i in range(shape.processes):
            folded = args.profile.output(f"{name}-p{i}")
            print(f"profile of {shape.label}, process {i} ({folded}):", file=sys.stderr)
            print(profile_table(folded), file=sys.stderr)
    startups += [empty_run(k) for k in range(1, args.startup_runs, 2)]
    startup = Timing(
        statistics.median(t.wall_s for t in startups), statistics.median(t.cpu_s for t in startups)
    )
    replies = check_all(tp, events, args.workload, counter, f"{shape.label} (throughput)")
    busy_s = run.wall_s - startup.wall_s
    latency, achieved, idle = run_latency(shape, name, settings, lat_events, args, workdir, counter)
    return ShapeResult(
        shape=shape.label,
        processes=shape.processes,
        workers=shape.workers,
        run_s=run.wall_s,
        startup_s=startup.wall_s,
        events_per_s=len(events) / busy_s if busy_s > 0 else None,
        cpu_us_per_event=(run.cpu_s - startup.cpu_s) / len(events) * 1e6,
        startup_cpu_s=startup.cpu_s,
        latency_p50_ms=latency.p50,
        latency_p99_ms=latency.p99,
        latency_max_ms=latency.max,
        rate_achieved=achieved,
        idle_cores=idle,
        replies_with_answering_off=replies,
    )


def run_latency(
    shape: Shape,
    name: str,
    settings: Settings,
    events: Sequence[BenchEvent],
    args: argparse.Namespace,
    workdir: Path,
    counter: TopicCounter,
) -> tuple[Percentiles, float, float | None]:
    """The shape tailing; warm-up awaited; its idle CPU sampled; then the events at
    `--rate`, decisions timed."""
    lat = prefixed(settings, f"{settings.topic_prefix}{name}.lat.", workdir, f"{name}-lat")
    create_topics(lat, partitions=EVENT_PARTITIONS)
    warmup = replicate(load_templates(SAMPLE_EVENTS), WARMUP_EVENTS, f"warm{name}")
    source, decisions = lat.topic("events"), lat.topic("decisions")
    publisher = CheckedProducer(
        lat.bootstrap_servers,
        delivery_timeout_ms=lat.delivery_timeout_ms,
        **security_config(lat.kafka),
    )
    flush_s = lat.sink_flush_timeout_s
    cluster = Cluster(lat, shape, workdir / f"{name}-lat")
    try:
        publish_paced(publisher, warmup, [source], args.rate, flush_s)
        with tqdm(total=len(warmup), unit="ev", desc="warm-up", leave=False) as bar:
            counter.wait_for({decisions: len(warmup)}, bar, cluster.check_alive)
        idle = idle_share(cluster, args.idle_s)
        achieved = publish_paced(publisher, events, [source], args.rate, flush_s)
        total = len(warmup) + len(events)
        with tqdm(total=total, unit="ev", desc="drain", leave=False) as bar:
            counter.wait_for({decisions: total}, bar, cluster.check_alive)
    finally:
        cluster.stop()
    dead = counter.count(lat.topic("dead_letter"))
    if dead:
        msg = f"{shape.label} (latency) dead-lettered {dead} bench events"
        raise BenchError(msg)
    check_output(lat, decisions, [*warmup, *events], f"{shape.label} (latency)")
    wanted = {event.event_id for event in events}
    timed = timed_latencies(lat, source, decisions, wanted)
    return percentiles([latency for _, latency in timed]), achieved, idle


# -- the table ---------------------------------------------------------------------------------


def ratio(value: float | None, reference: float | None) -> float | None:
    """value / reference, or None when either is missing or the reference is not positive."""
    if value is None or reference is None or reference <= 0:
        return None
    return value / reference


RATIO_KEYS = (
    "events_per_s",
    "cpu_us_per_event",
    "latency_p50_ms",
    "latency_p99_ms",
)


def with_ratios(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row plus `<key>_x`: its value as a ratio to the first row's (the reference)."""
    if not rows:
        return []
    first = rows[0]
    return [{**row, **{f"{k}_x": ratio(row[k], first[k]) for k in RATIO_KEYS}} for row in rows]


COLUMNS = (
    ("shape", "shape", "<9", "s"),
    ("run s", "run_s", ">7", ".2f"),
    ("start s", "startup_s", ">8", ".2f"),
    ("ev/s", "events_per_s", ">7", ".0f"),
    ("x", "events_per_s_x", ">6", ".2f"),
    ("CPU us/ev", "cpu_us_per_event", ">10", ".0f"),
    ("x", "cpu_us_per_event_x", ">6", ".2f"),
    ("p50 ms", "latency_p50_ms", ">7", ".0f"),
    ("x", "latency_p50_ms_x", ">6", ".2f"),
    ("p99 ms", "latency_p99_ms", ">7", ".0f"),
    ("x", "latency_p99_ms_x", ">6", ".2f"),
    ("idle", "idle_cores", ">6", ".2f"),
)


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The shapes one per line; each `x` column is the figure to its left over row 1's."""
    head = "".join(f"{title:{align}}" for title, _, align, _ in COLUMNS)
    lines = [head, "-" * len(head)]
    for row in rows:
        cells = []
        for _, key, align, fmt in COLUMNS:
            value = row[key]
            text = value if isinstance(value, str) else "n/a" if value is None else f"{value:{fmt}}"
            cells.append(f"{text:{align}}")
        lines.append("".join(cells))
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------------


def governance_file(
    settings: Settings,
    workdir: Path,
    threads: int | None,
    parallel_calls: int | None,
    memo: bool,
    workload: str,
) -> Path:
    """The shipped governance with the local fleet forced, ONNX's threads and parallel
    calls if given, and the memos off unless `memo`.

    The bench's events are copies of ~400 sample texts, so with a memo each process
    would embed and classify each text (and each sentence) once and then only look it
    up: a second process, with memos of its own, repeats the cold work a single process
    does once, which measures the workload, not the cluster. Real traffic repeats few
    exact texts, so by default every event is embedded and classified: the classification
    memo and, for `decisions`, the embedding memo are off. `whole` keeps the embedding
    memo (the responders reuse the router's embeddings of the same event through it), so
    there a second process still repeats some cold work.
    """
    config: dict[str, Any] = yaml.safe_load(settings.governance_file.read_text())
    config["providers"]["mode"] = "local"  # never a real API, whatever keys are exported
    if threads is not None:
        config["classifier"]["intra_op_threads"] = threads
    if parallel_calls is not None:
        config["classifier"]["parallel_calls"] = parallel_calls
    if not memo:
        config["classifier"]["memo_size"] = 0
        if workload == "decisions":
            config["classifier"]["embedding_memo_size"] = 0
    path = workdir / "governance.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--workload",
        choices=("decisions", "whole"),
        default="decisions",
        help="decisions: answering off (SPLITPIN_ANSWERING=false), CPU-bound routing; "
        "whole: answering on, local fleet (default decisions)",
    )
    parser.add_argument("--events", type=int, default=4_000, help="N preloaded events (4000)")
    parser.add_argument(
        "--latency-events", type=int, default=1_000, help="M events published at --rate (1000)"
    )
    parser.add_argument("--rate", type=float, default=100.0, help="R events/s (100)")
    parser.add_argument(
        "--intra-op-threads",
        type=int,
        default=1,
        help="classifier.intra_op_threads for every shape; 0 keeps the shipped value (1)",
    )
    parser.add_argument(
        "--parallel-calls",
        type=int,
        default=1,
        help="classifier.parallel_calls for every shape (1: each worker's ONNX calls run "
        "one at a time, so the shapes compare processes, not threads); 0 keeps the shipped "
        "value (2)",
    )
    parser.add_argument(
        "--startup-runs",
        type=int,
        default=2,
        help="K empty-topic runs per shape around the timed one; their median is start-up (2)",
    )
    parser.add_argument(
        "--idle-s",
        type=float,
        default=5.0,
        help="seconds the tailing shape's idle CPU is sampled before the latency run (5)",
    )
    parser.add_argument(
        "--memo",
        action="store_true",
        help="keep the memos (classifier.memo_size, embedding_memo_size); off by default, "
        "as the bench's events repeat the sample's texts",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="run each shape's throughput processes under py-spy, folded stacks in DIR and a "
        "breakdown per process on stderr (their CPU figures then include py-spy's)",
    )
    parser.add_argument("--json", action="store_true", help="end with one JSON object line")
    args = parser.parse_args(argv)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        args.profile = Profiling(args.profile, 200, native=False)
    if (
        min(args.events, args.latency_events, args.startup_runs) < 1
        or args.rate <= 0
        or args.intra_op_threads < 0
        or args.parallel_calls < 0
    ):
        parser.error("--events, --latency-events, --startup-runs and --rate must be positive")
    args.command = shlex.join([sys.executable, *sys.argv])
    args.date = datetime.now(UTC).isoformat(timespec="seconds")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every shape against one broker; every topic of the run is deleted afterwards."""
    info = machine()
    with Path("/proc/loadavg").open() as fh:
        loadavg = fh.read().strip()
    templates = load_templates(SAMPLE_EVENTS)
    workdir = Path(tempfile.mkdtemp(prefix="splitpin-scaling-"))
    base = load_settings()
    threads = args.intra_op_threads or None
    with kafka_broker(base) as (settings, broker):
        prefix = f"bench-{uuid.uuid4().hex[:12]}."
        settings = settings.model_copy(
            update={
                "topic_prefix": prefix,
                "metrics_port": 0,
                "answering": args.workload == "whole",
                "governance_path": governance_file(
                    settings,
                    workdir,
                    threads,
                    args.parallel_calls or None,
                    args.memo,
                    args.workload,
                ),
                # The sample's times are weeks old and each copy is shifted further: the
                # skew check would dead-letter them, and it is not what is measured here.
                "max_past_skew_s": SKEW_OFF_S,
                "max_future_skew_s": SKEW_OFF_S,
            }
        )
        onnx = settings.governance.classifier.intra_op_threads
        answering = "on, local fleet" if settings.answering else "off"
        print(
            "\n".join(
                [
                    "splitpin scaling benchmark: one workload, three cluster shapes, one broker",
                    f"command   : {args.command}",
                    f"date      : {args.date}",
                    f"machine   : nproc={info['nproc']}, /proc/loadavg at start {loadavg}",
                    f"broker    : {broker}",
                    f"workload  : {args.workload} (answering {answering}), N={args.events} "
                    f"events, latency M={args.latency_events} at R={args.rate:g}/s, "
                    f"{EVENT_PARTITIONS} partitions, {RECOVERY_PARTITIONS} recovery partitions, "
                    f"classifier.intra_op_threads={onnx}, "
                    f"parallel_calls={settings.governance.classifier.parallel_calls}, "
                    f"memo_size={settings.governance.classifier.memo_size}, "
                    f"embedding_memo_size={settings.governance.classifier.embedding_memo_size}",
                ]
            ),
            flush=True,
        )
        events = replicate(templates, args.events, "tp")
        lat_events = replicate(templates, args.latency_events, "lat")
        results: list[ShapeResult] = []
        counter = TopicCounter(settings)
        try:
            shapes = [
                prefixed(settings, f"{prefix}s{i}.tp.", workdir, "unused")
                for i in range(len(SHAPES))
            ]
            empty = prefixed(settings, f"{prefix}empty.", workdir, "unused")
            for each in [*shapes, empty]:
                create_topics(each, partitions=EVENT_PARTITIONS)
            preload(settings, events, [each.topic("events") for each in shapes])
            for index, shape in enumerate(SHAPES):
                results.append(
                    run_shape(shape, index, settings, events, lat_events, args, workdir, counter)
                )
        except BaseException:
            print(f"flow logs kept in {workdir}", file=sys.stderr)
            raise
        finally:
            counter.close()
            deleted = delete_run_topics(settings, prefix)
            print(f"deleted {len(deleted)} bench topics ({prefix}*)", file=sys.stderr)
    with Path("/proc/loadavg").open() as fh:
        loadavg_end = fh.read().strip()
    rows = with_ratios([asdict(result) for result in results])
    print()
    print(table(rows))
    print(
        "\n".join(
            [
                "",
                f"  x       = the figure to its left over {SHAPES[0].label}'s (the reference)",
                "  ev/s    = N / (run s - start s): launch to last exit, minus the same shape's "
                "launch to exit on an empty topic",
                "  CPU     = user + system of every process of the shape, start-up subtracted",
                "  idle    = cores the shape burns tailing with no input (per second, not "
                "per event)",
                f"  p50/p99 = decision CreateTime - event CreateTime, {args.latency_events} "
                f"events at {args.rate:g}/s to the shape tailing",
                f"  /proc/loadavg at end {loadavg_end}",
            ]
        )
    )
    if args.workload == "decisions" and any(r.replies_with_answering_off for r in results):
        print(
            "  NOTE: replies were written although SPLITPIN_ANSWERING=false: this flow does "
            "not honour the setting yet, so the figures include answering"
        )
    shutil.rmtree(workdir, ignore_errors=True)
    return {
        "command": args.command,
        "date": args.date,
        "machine": info,
        "loadavg_start": loadavg,
        "loadavg_end": loadavg_end,
        "broker": broker,
        "workload": args.workload,
        "events": args.events,
        "latency_events": args.latency_events,
        "rate": args.rate,
        "intra_op_threads": onnx,
        "parallel_calls": settings.governance.classifier.parallel_calls,
        "memo_size": settings.governance.classifier.memo_size,
        "event_partitions": EVENT_PARTITIONS,
        "shapes": rows,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return finish(lambda: run(args), as_json=args.json, failures=(subprocess.SubprocessError,))


if __name__ == "__main__":
    sys.exit(main())
