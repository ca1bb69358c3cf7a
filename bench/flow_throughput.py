"""Events/s and added latency of the routing flow, against a plain Kafka relay on the same broker.

Two numbers matter when deciding whether the Bytewax flow is "fast enough":

* Phase 1, throughput. The same N events are preloaded into the flow's events topic and
  into a baseline input topic. The baseline is the cheapest honest Kafka -> Kafka program:
  one confluent-kafka Consumer and splitpin's own CheckedProducer, flushing every batch
  exactly as the flow's sink does, so the ratio flow/baseline isolates what the dataflow
  (Bytewax, validation, token counting, state, routing, snapshots) costs on top of Kafka.
  The flow runs as `python -m splitpin run --until-eof`; an extra run on an empty topic
  measures process start-up so it can be subtracted.
* Phase 2, added latency. Both paths tail their input while M events are published at a
  fixed rate; per event, output CreateTime minus input CreateTime (1 ms resolution).

The machine is a shared 2-core box, so nothing here asserts on timings: it reports
medians, p99 and ratios, which survive noisy neighbours far better than absolute numbers.
Run `bench/flow_throughput.py --help`; bench/README.md explains how to read the output.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

import confluent_kafka
import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_CREATE_TIME,
    Consumer,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from tqdm import tqdm

from splitpin.app.replay import Pacer
from splitpin.core.kafka.admin import broker_answers, create_topics, delete_topics
from splitpin.core.kafka.client_config import client_config, security_config
from splitpin.core.kafka.producer import CheckedProducer, producer_config
from splitpin.core.kafka.reader import read_to_end
from splitpin.core.settings import REPO_ROOT, Settings, load_settings
from splitpin.core.stats import nearest_rank
from splitpin.errors import SplitpinError

SAMPLE_EVENTS = REPO_ROOT / "data" / "sample" / "events.jsonl"
BOOTSTRAP_ENV = ("SPLITPIN_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS")
EVENT_PARTITIONS = 3
"""Partitions of every bench topic: the flow reads one Kafka partition per source partition."""
POLL_TIMEOUT_S = 0.001
"""Bytewax's KafkaSource polls with `consume(batch_size, 0.001)`; the baseline does the same."""
WARMUP_EVENTS = 50
"""Phase 2 sends these first and waits for their outputs: start-up and the tokenizer load
must not show up as latency."""
MIN_CORRECTED_S = 0.5
"""Below this much time beyond start-up, start-up jitter (~0.1 s) swamps the corrected rate."""
STALL_TIMEOUT_S = 120.0
"""How long any wait may go without progress before the bench gives up, loudly."""


class BenchError(Exception):
    """The bench could not measure what it claims to (lost events, a crashed flow...)."""


# -- events ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BenchEvent:
    """One encoded ConversationEvent, keyed by conversation_id like `splitpin replay` does."""

    event_id: str
    key: bytes
    value: bytes


def load_templates(path: Path) -> list[dict[str, Any]]:
    """Customer turns of the sample traffic in time order, or synthetic ones without it.

    Only customer turns are routed (agent turns yield no decision), so keeping only them
    makes "one input event = one output record" hold for both the flow and the baseline.
    """
    if not path.exists():
        return synthetic_templates()
    with path.open("rb") as fh:
        events = [orjson.loads(line) for line in fh if line.strip()]
    customer = [event for event in events if event.get("role") == "customer"]
    if not customer:
        return synthetic_templates()
    return sorted(customer, key=lambda event: str(event["sent_at"]))


def synthetic_templates(conversations: int = 100) -> list[dict[str, Any]]:
    """Multi-turn chats and growing email threads, for checkouts without data/sample."""
    lines = (
        "My card has not arrived yet, what should I do?",
        "I was charged twice for the same purchase yesterday.",
        "How do I change the address on my account?",
        "The app keeps logging me out when I try to pay.",
        "Can you tell me why my transfer is still pending?",
    )
    start = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    templates: list[dict[str, Any]] = []
    for conv in range(conversations):
        channel = "email" if conv % 5 == 0 else "chat"
        thread = ""
        for turn in range(3 + conv % 4):
            text = lines[(conv + turn) % len(lines)]
            if channel == "email":  # replies quote the thread, so email conversations grow
                thread = f"{text}\n\n> {thread}" if thread else text
                text = thread
            templates.append(
                {
                    "schema_version": 1,
                    "event_id": f"syn-{conv:04d}-{turn:02d}",
                    "conversation_id": f"syn-{conv:04d}",
                    "tenant_id": "acme-bank",
                    "channel": channel,
                    "role": "customer",
                    "text": text,
                    "sent_at": _iso(start + timedelta(minutes=conv * 7 + turn * 2)),
                    "tags": ["compliance"] if conv % 9 == 0 else [],
                    "metadata": {"source": "synthetic"},
                }
            )
    return sorted(templates, key=lambda event: str(event["sent_at"]))


def replicate(
    templates: Sequence[dict[str, Any]], count: int, namespace: str, end: datetime | None = None
) -> list[BenchEvent]:
    """`count` events: copies of the templates with fresh ids and times shifted per copy.

    Each copy is a new set of conversations whose turns keep their original gaps (so
    sessions and token growth stay realistic) in a time range after the previous copy.
    The last copy ends at `end` (default: now), so event times stay within the flow's
    skew limits of the records' Kafka timestamps (`history` says how far back they go).
    """
    times = [datetime.fromisoformat(event["sent_at"]) for event in templates]
    period = max(times) - min(times) + timedelta(days=1)
    copies = math.ceil(count / len(templates))
    shift = (end or datetime.now(UTC)) - (max(times) + (copies - 1) * period)
    out: list[BenchEvent] = []
    copy = 0
    while len(out) < count:
        suffix = f".{namespace}{copy}"
        for template, sent_at in zip(templates, times, strict=True):
            if len(out) == count:
                break
            event = {
                **template,
                "event_id": f"{template['event_id']}{suffix}",
                "conversation_id": f"{template['conversation_id']}{suffix}",
                "sent_at": _iso(sent_at + copy * period + shift),
            }
            out.append(
                BenchEvent(
                    event["event_id"], event["conversation_id"].encode(), orjson.dumps(event)
                )
            )
        copy += 1
    return out


def history(templates: Sequence[dict[str, Any]], count: int) -> timedelta:
    """How far before their end `replicate(templates, count, ...)` times reach."""
    times = [datetime.fromisoformat(event["sent_at"]) for event in templates]
    period = max(times) - min(times) + timedelta(days=1)
    return math.ceil(count / len(templates)) * period


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


# -- Kafka plumbing --------------------------------------------------------------------


def create_plain_topics(settings: Settings, names: Sequence[str], partitions: int) -> None:
    """Baseline topics: same partition count as the flow's, and usable before we return."""
    client = AdminClient(client_config(settings))
    futures = client.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names],
        operation_timeout=30,
        request_timeout=30,
    )
    for name, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            msg = f"cannot create topic {name}: {exc}"
            raise BenchError(msg) from exc
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        topics = client.list_topics(timeout=10).topics
        if all(
            name in topics
            and topics[name].partitions
            and all(p.leader >= 0 for p in topics[name].partitions.values())
            for name in names
        ):
            return
        time.sleep(0.1)
    msg = f"topics {list(names)} have no leader 30s after creation"
    raise BenchError(msg)


def delete_run_topics(settings: Settings, prefix: str) -> list[str]:
    """Delete every topic of this run, so repeated runs do not fill the broker's disk."""
    config = client_config(settings)
    names = [
        str(name)
        for name in AdminClient(config).list_topics(timeout=30).topics
        if str(name).startswith(prefix)
    ]
    delete_topics(settings.bootstrap_servers, names, config=config)
    return names


class TopicCounter:
    """Records in a topic, from its high watermarks: cheap enough to poll for progress."""

    def __init__(self, settings: Settings) -> None:
        self._consumer = Consumer(
            {**client_config(settings), "group.id": f"bench-counter-{uuid.uuid4()}"}
        )
        self._partitions: dict[str, list[int]] = {}
        self._lock = threading.Lock()  # librdkafka handles are thread-safe; our cache is not

    def count(self, topic: str) -> int:
        with self._lock:
            if topic not in self._partitions:
                metadata = self._consumer.list_topics(topic, timeout=10)
                self._partitions[topic] = sorted(metadata.topics[topic].partitions)
            partitions = self._partitions[topic]
            return sum(
                self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in partitions
            )

    def wait_for(
        self,
        targets: dict[str, int],
        bar: tqdm[Any] | None = None,
        check: Callable[[], None] | None = None,
    ) -> None:
        """Block until each topic holds its target count; fail after a stall, naming it.

        `check` runs every round and may raise, e.g. as soon as the flow process died.
        """
        last_total, last_change = -1, time.monotonic()
        while True:
            if check is not None:
                check()
            counts = {topic: self.count(topic) for topic in targets}
            total = sum(min(counts[t], n) for t, n in targets.items())
            if bar is not None:
                bar.update(total - bar.n)
            if all(counts[t] >= n for t, n in targets.items()):
                return
            if total != last_total:
                last_total, last_change = total, time.monotonic()
            elif time.monotonic() - last_change > STALL_TIMEOUT_S:
                msg = f"no progress for {STALL_TIMEOUT_S:.0f}s: have {counts}, want {targets}"
                raise BenchError(msg)
            time.sleep(0.1)

    def close(self) -> None:
        self._consumer.close()


def preload(settings: Settings, events: Sequence[BenchEvent], topics: Sequence[str]) -> None:
    """Produce every event to every topic (acknowledged) before anything is timed."""
    producer = CheckedProducer(
        settings.bootstrap_servers,
        delivery_timeout_ms=settings.delivery_timeout_ms,
        **security_config(settings.kafka),
    )
    total = len(events) * len(topics)
    with tqdm(total=total, unit="ev", desc="preload", leave=False) as bar:
        for index, event in enumerate(events, 1):
            for topic in topics:
                producer.produce(topic, event.value, event.key)
            if index % 1000 == 0:
                bar.update(1000 * len(topics))
        producer.flush(settings.sink_flush_timeout_s)
        bar.update(total - bar.n)


def relay(
    settings: Settings,
    source: str,
    target: str,
    stop: Callable[[int], bool],
    bar: tqdm[Any] | None = None,
) -> int:
    """The baseline: consume -> produce unchanged, batch by batch, as plainly as possible.

    Mirrors the flow's Kafka I/O and nothing else: records from the beginning of every
    partition (assigned, no consumer group, like Bytewax's source), polled in batches of
    `source_batch_size` with the source's poll timeout, produced by splitpin's checked
    producer and flushed after every batch like `CheckedKafkaSink.write_batch`.
    Returns how many records were acknowledged once `stop(relayed)` holds.
    """
    consumer = Consumer(
        {
            **client_config(settings),
            "group.id": f"bench-baseline-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    producer = CheckedProducer(
        settings.bootstrap_servers,
        delivery_timeout_ms=settings.delivery_timeout_ms,
        **security_config(settings.kafka),
    )
    relayed = 0
    try:
        partitions = consumer.list_topics(source, timeout=10).topics[source].partitions
        consumer.assign([TopicPartition(source, p, OFFSET_BEGINNING) for p in partitions])
        while not stop(relayed):
            records = consumer.consume(settings.source_batch_size, POLL_TIMEOUT_S)
            if not records:
                continue
            for record in records:
                if record.error() is not None:
                    msg = f"baseline consumer error on {source}: {record.error()}"
                    raise BenchError(msg)
                # Bench inputs always have a value; b"" only satisfies the signature.
                producer.produce(target, record.value() or b"", record.key())
            delivered = producer.flush(settings.sink_flush_timeout_s)
            relayed += delivered
            if bar is not None:
                bar.update(delivered)
    finally:
        consumer.close()
    return relayed


# -- the flow as a process ---------------------------------------------------------------


def flow_env(settings: Settings) -> dict[str, str]:
    """SPLITPIN_* variables that make `python -m splitpin run` load exactly `settings`."""
    return settings.model_copy(update={"metrics_port": 0}).child_env()


@dataclass(frozen=True)
class Profiling:
    """Run the flow under py-spy (`--profile DIR`): one folded-stack file per flow run."""

    directory: Path
    rate: int
    native: bool

    def command(self, label: str) -> list[str]:
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(spy).exists():
            msg = "--profile needs py-spy: .venv/bin/pip install py-spy"
            raise BenchError(msg)
        options = ["--format", "raw", "--rate", str(self.rate), "--threads"]
        if self.native:
            options.append("--native")
        return [spy, "record", *options, "--output", str(self.output(label)), "--"]

    def output(self, label: str) -> Path:
        return self.directory / f"flow-{label}.folded"


def start_flow(
    settings: Settings, log_path: Path, *args: str, profile: tuple[Profiling, str] | None = None
) -> subprocess.Popen[bytes]:
    """`python -m splitpin run` in its own session, output to `log_path`; under py-spy
    when `profile` (options, run label) is given."""
    spy = profile[0].command(profile[1]) if profile is not None else []
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [*spy, sys.executable, "-m", "splitpin", "run", *args],
            env=flow_env(settings),
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_flow(process: subprocess.Popen[bytes], *, profiled: bool = False) -> None:
    """SIGTERM the flow's process group (SIGINT under py-spy, which then writes its
    output); SIGKILL if it does not go within 15 s."""
    if process.poll() is not None:
        return
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT if profiled else signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


def log_tail(path: Path, lines: int = 20) -> str:
    text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return "\n".join(text[-lines:]) or "(no output)"


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds and CPU seconds (user + system) of one timed run."""

    wall_s: float
    cpu_s: float


def time_flow_until_eof(
    settings: Settings,
    log_path: Path,
    counter: TopicCounter,
    expected: int,
    desc: str,
    profile: tuple[Profiling, str] | None = None,
    extra: Sequence[str] = (),
) -> Timing:
    """Start-to-exit time of `splitpin run --until-eof` (plus `extra` options, e.g.
    `--workers 2`), CPU from the reaped child's rusage.

    A side thread turns the decisions topic's watermarks into a progress bar, so the main
    thread can block in `wait()` and note the exit time exactly.
    """
    before = children_cpu_s()
    with topic_progress(counter, settings.topic("decisions"), expected, desc):
        started = time.perf_counter()
        process = start_flow(settings, log_path, "--until-eof", *extra, profile=profile)
        try:
            returncode = process.wait(timeout=STALL_TIMEOUT_S + expected / 50)
        except subprocess.TimeoutExpired as exc:
            msg = f"the flow did not reach the end of its input; log:\n{log_tail(log_path)}"
            raise BenchError(msg) from exc
        finally:
            wall = time.perf_counter() - started
            stop_flow(process)  # a no-op once it exited; otherwise (timeout, ^C) end it
    if returncode != 0:
        msg = f"the flow exited with status {returncode}; log:\n{log_tail(log_path)}"
        raise BenchError(msg)
    return Timing(wall, children_cpu_s() - before)


def children_cpu_s() -> float:
    """User + system seconds of every child process reaped so far (its process tree)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def topic_progress(counter: TopicCounter, topic: str, expected: int, desc: str) -> Iterator[None]:
    """A progress bar on stderr fed from `topic`'s record count by a side thread, so the
    caller can block in a wait and note the exit time exactly."""
    done = threading.Event()
    with tqdm(total=expected, unit="ev", desc=desc, leave=False) as bar:

        def show_progress() -> None:
            while not done.wait(0.5):
                bar.update(counter.count(topic) - bar.n)

        watcher = threading.Thread(target=show_progress, daemon=True)
        watcher.start()
        try:
            yield
        finally:
            done.set()
            watcher.join()


def time_baseline(settings: Settings, source: str, target: str, expected: int) -> Timing:
    """Start-to-last-acknowledgement time of the relay, CPU of this process meanwhile."""
    with tqdm(total=expected, unit="ev", desc="baseline", leave=False) as bar:
        cpu0, started = time.process_time(), time.perf_counter()
        relay(settings, source, target, lambda relayed: relayed >= expected, bar)
        return Timing(time.perf_counter() - started, time.process_time() - cpu0)


# -- output checks -----------------------------------------------------------------------


@dataclass(frozen=True)
class OutputStats:
    """What landed on an output topic: enough to prove completeness and see steady state."""

    records: int
    first_ms: int
    last_ms: int

    @property
    def steady_rate(self) -> float | None:
        """Records/s between the first and last output timestamp: excludes start-up."""
        span_s = (self.last_ms - self.first_ms) / 1000
        return (self.records - 1) / span_s if span_s > 0 else None


def event_ids_and_times(settings: Settings, topic: str) -> list[tuple[str, int]]:
    """(event_id, CreateTime ms) of every record; decisions and events both carry event_id."""
    out = []
    bootstrap, config = settings.bootstrap_servers, client_config(settings)
    for message in read_to_end(bootstrap, topic, timeout_s=STALL_TIMEOUT_S, config=config):
        kind, stamp = message.timestamp()
        if kind != TIMESTAMP_CREATE_TIME:
            msg = f"{topic} records carry timestamp type {kind}, not CreateTime"
            raise BenchError(msg)
        out.append((str(orjson.loads(message.value() or b"{}")["event_id"]), int(stamp)))
    return out


def check_output(
    settings: Settings, topic: str, expected: Sequence[BenchEvent], what: str
) -> OutputStats:
    """Exactly one output per input event, or a BenchError saying what is missing."""
    records = event_ids_and_times(settings, topic)
    got = [event_id for event_id, _ in records]
    wanted = {event.event_id for event in expected}
    missing = wanted - set(got)
    extra = len(got) - len(set(got))
    if missing or extra or len(got) != len(wanted):
        sample = ", ".join(sorted(missing)[:3])
        msg = (
            f"{what} wrote {len(got)} records to {topic} for {len(wanted)} events: "
            f"{len(missing)} missing ({sample}), {extra} duplicated. "
            "Its figures would be wrong, so the bench stops here."
        )
        raise BenchError(msg)
    stamps = [stamp for _, stamp in records]
    return OutputStats(len(records), min(stamps), max(stamps))


# -- phase 1: throughput -----------------------------------------------------------------


@dataclass(frozen=True)
class ThroughputRun:
    """One repeat of phase 1; rates are events/s."""

    order: str
    baseline: Timing
    flow: Timing
    startup: Timing
    baseline_steady_rate: float | None
    flow_steady_rate: float | None


@dataclass(frozen=True)
class ThroughputPlan:
    """Topics and settings shared by every repeat of phase 1."""

    settings: Settings
    empty: Settings
    baseline_in: str
    events: list[BenchEvent]
    workdir: Path
    profiling: Profiling | None = None


def repeat_settings(settings: Settings, label: str, workdir: Path) -> Settings:
    """The same input topic, fresh output topics and a fresh recovery dir for one run."""
    topics = settings.topics.model_copy(
        update={
            "decisions": f"{settings.topics.decisions}.{label}",
            "dead_letter": f"{settings.topics.dead_letter}.{label}",
        }
    )
    return settings.model_copy(
        update={"topics": topics, "recovery_dir": workdir / f"recovery-{label}"}
    )


def run_throughput_repeat(plan: ThroughputPlan, index: int, counter: TopicCounter) -> ThroughputRun:
    """Baseline, flow and an empty-topic flow run, in an order that alternates per repeat."""
    n = len(plan.events)
    label = f"r{index}"
    flow_settings = repeat_settings(plan.settings, label, plan.workdir)
    create_topics(flow_settings, partitions=EVENT_PARTITIONS)
    baseline_out = f"{plan.baseline_in}.out.{label}"
    create_plain_topics(flow_settings, [baseline_out], EVENT_PARTITIONS)
    empty_settings = plan.empty.model_copy(
        update={"recovery_dir": plan.workdir / f"recovery-empty-{label}"}
    )
    log = plan.workdir / f"flow-{label}.log"

    def baseline() -> Timing:
        return time_baseline(flow_settings, plan.baseline_in, baseline_out, n)

    def flow() -> Timing:
        profile = (plan.profiling, label) if plan.profiling is not None else None
        return time_flow_until_eof(flow_settings, log, counter, n, f"flow {label}", profile)

    def startup() -> Timing:
        return time_flow_until_eof(empty_settings, log, counter, 0, f"start-up {label}")

    steps = {"baseline": baseline, "flow": flow, "start-up": startup}
    order = list(steps) if index % 2 == 0 else list(reversed(steps))
    timings = {name: steps[name]() for name in order}

    dead = counter.count(flow_settings.topic("dead_letter"))
    if dead:
        msg = f"the flow dead-lettered {dead} of {n} bench events; they must all be valid"
        raise BenchError(msg)
    flow_out = check_output(
        flow_settings, flow_settings.topic("decisions"), plan.events, "the flow"
    )
    base_out = check_output(flow_settings, baseline_out, plan.events, "the baseline")
    return ThroughputRun(
        order=",".join(order),
        baseline=timings["baseline"],
        flow=timings["flow"],
        startup=timings["start-up"],
        baseline_steady_rate=base_out.steady_rate,
        flow_steady_rate=flow_out.steady_rate,
    )


@dataclass(frozen=True)
class ThroughputSummary:
    """Medians over repeats; the ratio is flow/baseline (1.0 = as fast as a bare relay)."""

    events: int
    runs: list[dict[str, Any]]
    median: dict[str, float | None]


def summarize_throughput(runs: Sequence[ThroughputRun], n: int) -> ThroughputSummary:
    startup_s = statistics.median(run.startup.wall_s for run in runs)
    rows: list[dict[str, Any]] = []
    for run in runs:
        corrected_s = run.flow.wall_s - startup_s
        baseline_rate = n / run.baseline.wall_s
        flow_rate = n / run.flow.wall_s
        flow_corrected = n / corrected_s if corrected_s > 0 else None
        rows.append(
            {
                "order": run.order,
                "baseline_s": run.baseline.wall_s,
                "flow_s": run.flow.wall_s,
                "startup_s": run.startup.wall_s,
                "baseline_eps": baseline_rate,
                "flow_eps_raw": flow_rate,
                "flow_eps_corrected": flow_corrected,
                "ratio_raw": flow_rate / baseline_rate,
                "ratio_corrected": _ratio(flow_corrected, baseline_rate),
                "baseline_eps_steady": run.baseline_steady_rate,
                "flow_eps_steady": run.flow_steady_rate,
                "ratio_steady": _ratio(run.flow_steady_rate, run.baseline_steady_rate),
                "baseline_cpu_us_per_event": run.baseline.cpu_s / n * 1e6,
                "flow_cpu_us_per_event": (run.flow.cpu_s - run.startup.cpu_s) / n * 1e6,
                "startup_cpu_s": run.startup.cpu_s,
            }
        )
    keys = [key for key in rows[0] if key != "order"]
    median = {key: _median([row[key] for row in rows]) for key in keys}
    return ThroughputSummary(n, rows, median)


def run_throughput(
    settings: Settings, templates: Sequence[dict[str, Any]], args: argparse.Namespace, workdir: Path
) -> ThroughputSummary:
    """Phase 1: preload once, then K repeats with fresh output topics and recovery dirs."""
    events = replicate(templates, args.events, "tp")
    flow_settings = settings.model_copy(update={"topic_prefix": settings.topic_prefix + "tp."})
    empty_settings = settings.model_copy(update={"topic_prefix": settings.topic_prefix + "empty."})
    create_topics(flow_settings, partitions=EVENT_PARTITIONS)
    create_topics(empty_settings, partitions=EVENT_PARTITIONS)
    baseline_in = f"{flow_settings.topic_prefix}baseline.in"
    create_plain_topics(settings, [baseline_in], EVENT_PARTITIONS)
    preload(flow_settings, events, [flow_settings.topic("events"), baseline_in])
    plan = ThroughputPlan(
        flow_settings, empty_settings, baseline_in, events, workdir, profiling(args)
    )
    counter = TopicCounter(settings)
    try:
        runs = [run_throughput_repeat(plan, i, counter) for i in range(args.repeats)]
    finally:
        counter.close()
    return summarize_throughput(runs, len(events))


# -- phase 2: added latency --------------------------------------------------------------


@dataclass(frozen=True)
class Percentiles:
    """Per-event latency in ms, from Kafka timestamps (1 ms resolution)."""

    p50: float
    p99: float
    max: float
    events: int


@dataclass(frozen=True)
class TimelineBucket:
    """Flow latencies of the events published in one bucket of phase 2."""

    start_s: float
    events: int
    median_ms: int
    max_ms: int


@dataclass(frozen=True)
class LatencySummary:
    """Phase 2: both paths' percentiles; "added" is flow minus baseline at each percentile."""

    rate_target: float
    rate_achieved: float
    baseline: Percentiles
    flow: Percentiles
    added_p50_ms: float
    added_p99_ms: float
    ratio_p50: float | None
    ratio_p99: float | None
    timeline: tuple[TimelineBucket, ...] = ()
    """The flow's latencies over phase 2 (`--timeline`)."""


class BaselineThread:
    """The relay tailing in a thread; `stop()` ends it and re-raises anything it raised."""

    def __init__(self, settings: Settings, source: str, target: str) -> None:
        self._stop = threading.Event()
        self._errors: list[Exception] = []
        self._thread = threading.Thread(
            target=self._run, args=(settings, source, target), name="baseline", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def _run(self, settings: Settings, source: str, target: str) -> None:
        try:
            relay(settings, source, target, lambda _: self._stop.is_set())
        except Exception as exc:  # re-raised by stop() in the main thread
            self._errors.append(exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)
        if self._errors:
            raise self._errors[0]


def publish_paced(
    producer: CheckedProducer,
    events: Sequence[BenchEvent],
    topics: Sequence[str],
    rate: float,
    flush_timeout_s: float,
) -> float:
    """Each event to every topic at `rate` events/s; returns the achieved rate.

    The producer must be reused from the warm-up: an idempotent producer's first records
    wait ~0.5 s for its producer id, which would otherwise pass for pipeline latency.
    """
    pacer = Pacer(rate)
    started = time.monotonic()
    for event in tqdm(events, unit="ev", desc=f"publish @{rate:g}/s", leave=False):
        pacer.wait()
        for topic in topics:
            producer.produce(topic, event.value, event.key)
    elapsed = time.monotonic() - started
    producer.flush(flush_timeout_s)
    return len(events) / elapsed if elapsed > 0 else math.inf


def timed_latencies(
    settings: Settings, source: str, output: str, wanted: set[str]
) -> list[tuple[int, int]]:
    """(input CreateTime, output minus input CreateTime) per wanted event_id, in input
    order; every wanted event must be present in both topics."""
    sent = {eid: stamp for eid, stamp in event_ids_and_times(settings, source) if eid in wanted}
    out = {eid: stamp for eid, stamp in event_ids_and_times(settings, output) if eid in wanted}
    missing = wanted - (sent.keys() & out.keys())
    if missing:
        msg = f"{len(missing)} of {len(wanted)} events have no record in {source} or {output}"
        raise BenchError(msg)
    return sorted((sent[eid], out[eid] - sent[eid]) for eid in wanted)


def timeline(timed: Sequence[tuple[int, int]], bucket_ms: int) -> list[TimelineBucket]:
    """Median and max latency per `bucket_ms` of publishing: one stall shows as a run of
    buckets whose latencies fall by the bucket length, queueing as a slow rise."""
    if not timed:
        return []
    start = timed[0][0]
    buckets: dict[int, list[int]] = {}
    for sent, latency in timed:
        buckets.setdefault((sent - start) // bucket_ms, []).append(latency)
    return [
        TimelineBucket(index * bucket_ms / 1000, len(v), sorted(v)[len(v) // 2], max(v))
        for index, v in sorted(buckets.items())
    ]


def percentiles(values: Sequence[int]) -> Percentiles:
    """Nearest-rank percentiles: with 1 ms data, an observed value beats an interpolated one."""
    return Percentiles(
        float(nearest_rank(values, 50)),
        float(nearest_rank(values, 99)),
        float(max(values)),
        len(values),
    )


def run_latency(
    settings: Settings, templates: Sequence[dict[str, Any]], args: argparse.Namespace, workdir: Path
) -> LatencySummary:
    """Phase 2: both paths tailing, warmed up, then M events at R/s into both inputs."""
    lat = settings.model_copy(
        update={
            "topic_prefix": settings.topic_prefix + "lat.",
            "recovery_dir": workdir / "recovery-latency",
        }
    )
    create_topics(lat, partitions=EVENT_PARTITIONS)
    baseline_in, baseline_out = f"{lat.topic_prefix}baseline.in", f"{lat.topic_prefix}baseline.out"
    create_plain_topics(lat, [baseline_in, baseline_out], EVENT_PARTITIONS)
    inputs, outputs = [lat.topic("events"), baseline_in], [lat.topic("decisions"), baseline_out]
    warmup = replicate(templates, WARMUP_EVENTS, "warm")
    events = replicate(templates, args.latency_events, "lat")

    log = workdir / "flow-latency.log"
    spy = profiling(args)
    process = start_flow(lat, log, profile=(spy, "latency") if spy is not None else None)
    baseline = BaselineThread(lat, baseline_in, baseline_out)
    baseline.start()
    counter = TopicCounter(lat)
    publisher = CheckedProducer(
        lat.bootstrap_servers,
        delivery_timeout_ms=lat.delivery_timeout_ms,
        **security_config(lat.kafka),
    )
    flush_s = lat.sink_flush_timeout_s

    def flow_alive() -> None:
        if process.poll() is not None:
            msg = f"the tailing flow exited ({process.returncode}); log:\n{log_tail(log)}"
            raise BenchError(msg)

    try:
        publish_paced(publisher, warmup, inputs, args.rate, flush_s)
        with tqdm(total=2 * len(warmup), unit="ev", desc="warm-up", leave=False) as bar:
            counter.wait_for(dict.fromkeys(outputs, len(warmup)), bar, flow_alive)
        achieved = publish_paced(publisher, events, inputs, args.rate, flush_s)
        total = len(warmup) + len(events)
        with tqdm(total=2 * total, unit="ev", desc="drain", leave=False) as bar:
            counter.wait_for(dict.fromkeys(outputs, total), bar, flow_alive)
    finally:
        stop_flow(process, profiled=spy is not None)
        counter.close()
        baseline.stop()

    wanted = {event.event_id for event in events}
    flow_timed = timed_latencies(lat, inputs[0], outputs[0], wanted)
    base_ms = [latency for _, latency in timed_latencies(lat, inputs[1], outputs[1], wanted)]
    flow = percentiles([latency for _, latency in flow_timed])
    base = percentiles(base_ms)
    return LatencySummary(
        rate_target=args.rate,
        rate_achieved=achieved,
        baseline=base,
        flow=flow,
        added_p50_ms=flow.p50 - base.p50,
        added_p99_ms=flow.p99 - base.p99,
        ratio_p50=_ratio(flow.p50, base.p50),
        ratio_p99=_ratio(flow.p99, base.p99),
        timeline=tuple(timeline(flow_timed, args.timeline_ms)) if args.timeline_ms else (),
    )


# -- profile breakdown ---------------------------------------------------------------------

STARTUP_FRAMES = ("_find_and_load", "build_flow (", ".load (", "load_governance")
"""Frames of start-up work (imports, loading the model and the config), reported apart, as
is any main-thread stack outside `run_flow` (the CLI's checks before the flow starts)."""
ANSWER_FRAMES = (
    "operators/model_calls.py",
    "operators/answering.py",
    "operators/model_gateway.py",
    "operators/call_executor.py",
    "operators/validation.py",
    "operators/cost_windows.py",
    "splitpin/providers/",
)
"""A stack through any of these is answering work, whichever thread it runs on."""
ANSWER_PARTS = (
    ("embedder.py", "answering: embeddings (ONNX)"),
    ("knowledge_base", "answering: retrieval"),
    ("local_fleet", "answering: local fleet responders/verifier"),
    ("providers/", "answering: providers (other)"),
    ("validation.py", "answering: reply validation"),
    ("cost_windows.py", "answering: cost windows"),
    ("snapshot", "answering: snapshots"),
    ("model_calls.py", "answering: job table, polling"),
    ("answering.py", "answering: answer policy"),
)
DECISION_PARTS = (
    ("embedder.py", "classify: transformer (ONNX)"),
    ("snapshot", "snapshots (state serialisation)"),
    ("tiktoken", "token counting"),
    ("core/tokens.py", "token counting"),
    ("prometheus_client", "metrics"),
    ("core/metrics.py", "metrics"),
    ("classifier.py", "classify: heads, rules, pieces"),
    ("router/heads.py", "classify: heads, rules, pieces"),
    ("operators/classify.py", "classify: heads, rules, pieces"),
    ("conversation_state.py", "conversation state"),
    ("summarizer.py", "conversation state"),
    ("routing.py", "routing + context guard"),
    ("context_guard.py", "routing + context guard"),
    ("operators/budget.py", "budget gate + decision record"),
    ("operators/ingest.py", "ingest (JSON, validation)"),
    ("flows/sink.py", "Kafka sink (encode, produce, flush)"),
    ("kafka/producer.py", "Kafka sink (encode, produce, flush)"),
    ("schemas/wire.py", "Kafka sink (encode, produce, flush)"),
    ("connectors/kafka", "Kafka source"),
    ("routing_flow.py", "flow glue (keying, branching, isolation)"),
    ("operators/isolation.py", "flow glue (keying, branching, isolation)"),
)


IDLE_LEAVES = (
    "_worker (",
    ".select (",
    ".wait (",
    "tick (",
    "sleep (",
    "_watch (",
    "_wait_for_tstate_lock (",
)
"""Leaf frames of a thread blocked in C (a queue, epoll, a timer): py-spy may count such a
thread as active, especially on a loaded box; they are idle, not CPU."""


def component(thread: str, frames: Sequence[str]) -> str:
    """The component one sampled stack (root first) belongs to: start-up, answering (any
    thread), else the innermost decision-path part that matches; else by thread."""
    if frames and any(mark in frames[-1] for mark in IDLE_LEAVES):
        return "idle"
    if any(mark in frame for frame in frames for mark in STARTUP_FRAMES) or (
        "MainThread" in thread and frames and not any("run_flow (" in f for f in frames)
    ):
        return "start-up (imports, loading)"
    parts: tuple[tuple[str, str], ...]
    if any(mark in frame for frame in frames for mark in ANSWER_FRAMES):
        parts = ANSWER_PARTS
    elif "MainThread" not in thread and ": " in thread:
        name = thread.split(": ", 1)[-1]
        return f"thread {name.rstrip('0123456789_')}"
    else:  # the worker: MainThread, or an unnamed thread of a cluster (`-a`, `--workers`)
        parts = DECISION_PARTS
    for frame in reversed(frames):
        for mark, label in parts:
            if mark in frame:
                return label
    if parts is ANSWER_PARTS:
        return "answering: other"
    if frames:
        return "Bytewax runtime (no splitpin frame)"
    return "Bytewax runtime (Rust; may include its idle polling)"


def breakdown(path: Path) -> tuple[int, list[tuple[str, float]]]:
    """Samples and (component, % of samples) of a `py-spy record --format raw --threads`
    file, start-up excluded from the percentages."""
    totals: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        thread, *frames = stack.split(";")
        name = component(thread, frames)
        totals[name] = totals.get(name, 0) + int(count)
    totals.pop("idle", None)
    startup = totals.pop("start-up (imports, loading)", 0)
    samples = sum(totals.values())
    shares = sorted(((name, 100 * n / samples) for name, n in totals.items()), key=lambda x: -x[1])
    return samples, [("(start-up, excluded)", 100 * startup / max(samples, 1)), *shares]


def profile_table(path: Path) -> str:
    samples, shares = breakdown(path)
    lines = [f"Profile {path.name}: {samples} samples after start-up (py-spy, busy threads)"]
    lines += [f"  {share:5.1f} %  {name}" for name, share in shares]
    return "\n".join(lines)


# -- broker, machine, report ---------------------------------------------------------------


@contextmanager
def kafka_broker(settings: Settings) -> Iterator[tuple[Settings, str]]:
    """The configured broker, else a LocalBroker started (and later stopped) by the bench."""
    bootstrap = settings.bootstrap_servers
    config = client_config(settings)
    if any(os.environ.get(name) for name in BOOTSTRAP_ENV):
        if not broker_answers(bootstrap, timeout_s=10, config=config):
            msg = f"no Kafka broker answers at {bootstrap} (from {'/'.join(BOOTSTRAP_ENV)})"
            raise BenchError(msg)
        yield settings, f"{bootstrap} (from the environment)"
        return
    if broker_answers(bootstrap, config=config):
        yield settings, f"{bootstrap} (already running)"
        return
    # Imported here: only this path needs the broker module (and a JVM behind it).
    from splitpin.core.kafka.broker import LocalBroker

    broker = LocalBroker(settings.broker)
    print(broker.start(), file=sys.stderr)
    try:
        yield (
            settings.model_copy(update={"bootstrap_servers": broker.bootstrap}),
            f"{broker.bootstrap} (local broker started by the bench)",
        )
    finally:
        print(broker.stop(), file=sys.stderr)


def machine() -> dict[str, Any]:
    """What the numbers depend on; printed at the top and kept in the JSON."""
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "bytewax": version("bytewax"),
        "confluent_kafka": version("confluent-kafka"),
        "librdkafka": confluent_kafka.libversion()[0],
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def header(
    args: argparse.Namespace, info: dict[str, Any], broker: str, settings: Settings, source: str
) -> str:
    producer = producer_config(
        settings.bootstrap_servers, settings.delivery_timeout_ms, **security_config(settings.kafka)
    )
    return "\n".join(
        [
            "splitpin flow benchmark: Kafka -> flow -> Kafka vs a plain consume->produce loop",
            f"command   : {args.command}",
            f"date      : {args.date}",
            f"machine   : nproc={info['nproc']} (cpu_count={info['cpu_count']}), "
            f"load avg 1m {info['load_avg_1m']}, {info['platform']}",
            f"versions  : python {info['python']}, bytewax {info['bytewax']}, "
            f"confluent-kafka {info['confluent_kafka']} (librdkafka {info['librdkafka']})",
            f"broker    : {broker}",
            f"workload  : N={args.events} events x {args.repeats} repeat(s), "
            f"{EVENT_PARTITIONS} partitions; latency M={args.latency_events} at R={args.rate:g}/s",
            f"events    : {source}",
            f"flow      : 1 worker, recovery on, source_batch_size={settings.source_batch_size}, "
            f"snapshot_interval_s={settings.snapshot_interval_s:g}, answering {args.answering}"
            + (f", profiled by py-spy into {args.profile}" if args.profile else ""),
            f"producers : idempotence={producer['enable.idempotence']}, acks={producer['acks']}, "
            f"linger.ms={producer['linger.ms']}, compression={producer['compression.type']} "
            "(flow sink, baseline and publisher alike)",
        ]
    )


def throughput_table(summary: ThroughputSummary) -> str:
    cols = [
        ("run order", "order", "<22", "s"),
        ("base ev/s", "baseline_eps", ">10", ".0f"),
        ("flow s", "flow_s", ">8", ".2f"),
        ("start s", "startup_s", ">8", ".2f"),
        ("flow ev/s", "flow_eps_raw", ">10", ".0f"),
        ("corr ev/s", "flow_eps_corrected", ">10", ".0f"),
        ("ratio", "ratio_raw", ">7", ".3f"),
        ("corr", "ratio_corrected", ">7", ".3f"),
        ("steady", "ratio_steady", ">7", ".3f"),
    ]
    head = "".join(f"{title:{align}}" for title, _, align, _ in cols)
    lines = [
        f"Phase 1: throughput, N={summary.events} events (ratio = flow/baseline events/s)",
        head,
        "-" * len(head),
    ]
    rows = [*summary.runs, {"order": "median", **summary.median}]
    for row in rows:
        lines.append("".join(_cell(row[key], align, fmt) for _, key, align, fmt in cols))
    m = summary.median
    lines += [
        "",
        "  corr   = flow rate with the median empty-topic run (process start-up) subtracted",
        "  steady = rates between the first and last output record's timestamp "
        f"(baseline {_fmt(m['baseline_eps_steady'], '.0f')} ev/s, "
        f"flow {_fmt(m['flow_eps_steady'], '.0f')} ev/s)",
        f"  CPU per event: baseline {_fmt(m['baseline_cpu_us_per_event'], '.0f')} us, "
        f"flow {_fmt(m['flow_cpu_us_per_event'], '.0f')} us (start-up excluded; "
        f"start-up itself {_fmt(m['startup_cpu_s'], '.2f')} CPU s)",
    ]
    flow_s, startup_s = m["flow_s"], m["startup_s"]
    if flow_s is not None and startup_s is not None and flow_s - startup_s < MIN_CORRECTED_S:
        lines.append(
            f"  NOTE: the flow ran under {MIN_CORRECTED_S:g} s longer than its start-up, so "
            "`corr` is mostly start-up jitter; use more --events"
        )
    return "\n".join(lines)


def latency_table(summary: LatencySummary) -> str:
    f, b = summary.flow, summary.baseline
    head = f"{'':<26}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
    return "\n".join(
        [
            f"Phase 2: added latency, M={f.events} events at {summary.rate_target:g}/s "
            f"(achieved {summary.rate_achieved:.0f}/s); output minus input CreateTime",
            head,
            "-" * len(head),
            f"{'baseline (plain relay)':<26}{b.p50:>9.0f}{b.p99:>9.0f}{b.max:>9.0f}",
            f"{'flow':<26}{f.p50:>9.0f}{f.p99:>9.0f}{f.max:>9.0f}",
            f"{'added (flow - baseline)':<26}{summary.added_p50_ms:>9.0f}"
            f"{summary.added_p99_ms:>9.0f}",
            f"{'ratio (flow / baseline)':<26}{_fmt(summary.ratio_p50, '.2f'):>9}"
            f"{_fmt(summary.ratio_p99, '.2f'):>9}",
            "  resolution: 1 ms (Kafka timestamps); both include the input producer's linger",
            *(
                f"  flow t={b.start_s:6.1f}s n={b.events:4d} median {b.median_ms:6d} ms "
                f"max {b.max_ms:6d} ms"
                for b in summary.timeline
            ),
        ]
    )


def _cell(value: Any, align: str, fmt: str) -> str:
    text = value if isinstance(value, str) else _fmt(value, fmt)
    return f"{text:{align}}"


def _fmt(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _median(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=20_000, help="N for phase 1 (20000)")
    parser.add_argument("--rate", type=float, default=500.0, help="R events/s in phase 2 (500)")
    parser.add_argument(
        "--latency-events", type=int, default=2_000, help="M events for phase 2 (2000)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="K repeats of phase 1 (3)")
    parser.add_argument(
        "--answering",
        choices=("on", "off"),
        default="on",
        help="on: the flow answers with the local fleet (default); off: decisions only "
        "(SPLITPIN_ANSWERING=false, a routing-only deployment)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="run every flow under `py-spy record` and write its folded stacks to DIR, "
        "plus a CPU breakdown by component (CPU figures then include py-spy's own)",
    )
    parser.add_argument("--profile-rate", type=int, default=200, help="py-spy samples/s (200)")
    parser.add_argument(
        "--profile-native", action="store_true", help="py-spy --native (C and Rust frames too)"
    )
    parser.add_argument(
        "--timeline",
        dest="timeline_ms",
        type=int,
        default=0,
        metavar="MS",
        help="also print phase 2's flow latency median/max per MS of publishing (0: off)",
    )
    parser.add_argument("--json", action="store_true", help="end with one JSON object line")
    args = parser.parse_args(argv)
    if min(args.events, args.latency_events, args.repeats) < 1 or args.rate <= 0:
        parser.error("--events, --latency-events, --repeats and --rate must be positive")
    args.command = shlex.join([sys.executable, *sys.argv])
    args.date = datetime.now(UTC).isoformat(timespec="seconds")
    return args


def profiling(args: argparse.Namespace) -> Profiling | None:
    if args.profile is None:
        return None
    return Profiling(Path(args.profile).resolve(), args.profile_rate, args.profile_native)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both phases against one broker; every topic of the run is deleted afterwards."""
    info = machine()
    base = load_settings()
    templates = load_templates(SAMPLE_EVENTS)
    source = (
        f"{len(templates)} customer turns of {SAMPLE_EVENTS.relative_to(REPO_ROOT)}"
        if SAMPLE_EVENTS.exists()
        else f"{len(templates)} synthetic customer turns"
    ) + ", replicated with fresh ids and shifted times"
    workdir = Path(tempfile.mkdtemp(prefix="splitpin-bench-"))
    with kafka_broker(base) as (settings, broker):
        prefix = f"bench-{uuid.uuid4().hex[:12]}."
        # Events reach back `history` before now (copies of the sample's conversations).
        reach = history(templates, max(args.events, args.latency_events, WARMUP_EVENTS))
        update: dict[str, Any] = {
            "topic_prefix": prefix,
            "metrics_port": 0,
            "max_past_skew_s": max(base.max_past_skew_s, reach.total_seconds() + 3600),
        }
        if args.answering == "off":  # only then: a tree without the setting still runs "on"
            if "answering" not in Settings.model_fields:
                msg = "--answering off: this tree's settings have no `answering` field"
                raise BenchError(msg)
            update["answering"] = False
        settings = settings.model_copy(update=update)
        if args.profile is not None:
            Path(args.profile).mkdir(parents=True, exist_ok=True)
        print(header(args, info, broker, settings, source), flush=True)
        try:
            throughput = run_throughput(settings, templates, args, workdir)
            latency = run_latency(settings, templates, args, workdir)
        except BaseException:
            print(f"flow logs kept in {workdir}", file=sys.stderr)
            raise
        finally:
            deleted = delete_run_topics(settings, prefix)
            print(f"deleted {len(deleted)} bench topics ({prefix}*)", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(throughput_table(throughput))
    print()
    print(latency_table(latency))
    if args.profile is not None:
        for path in sorted(Path(args.profile).glob("flow-*.folded")):
            print()
            print(profile_table(path))
    return {
        "command": args.command,
        "date": args.date,
        "machine": info,
        "broker": broker,
        "events": args.events,
        "repeats": args.repeats,
        "latency_events": args.latency_events,
        "rate": args.rate,
        "event_source": source,
        "throughput": asdict(throughput),
        "latency": asdict(latency),
    }


def finish(
    run: Callable[[], dict[str, Any]],
    *,
    as_json: bool,
    failures: tuple[type[Exception], ...] = (),
) -> int:
    """A bench's exit: `BENCH FAILED: ...` on stderr and status 1 when `run` raises a bench
    or splitpin error (or one of `failures`); else 0, with its figures as the last stdout
    line when `as_json`."""
    caught: tuple[type[Exception], ...] = (BenchError, SplitpinError, *failures)
    try:
        result = run()
    except caught as exc:
        print(f"\nBENCH FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    if as_json:
        print(orjson.dumps(result).decode())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return finish(lambda: run(args), as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
