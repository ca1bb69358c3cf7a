"""Whole-path throughput: held-out questions published at once, time until every final reply.

The workload of issue 13's whole-path target: N single-question chat conversations of
tenant acme-bank, built from the banking77 rows training held out (bench/heldout.py, cycled
with fresh event and conversation ids when N exceeds them), published all at once to a real
broker. Then `python -m splitpin run` (tailing, recovery on, the local fleet answering with
`providers.emulate: false`, budgets lifted) runs as a subprocess and is timed from process
start until every event has its final reply on the replies topic. The whole path is in
the figure: decision, retrieval, the fast answer, verification, validation, accounting.

Start-up is measured separately (the same command with `--until-eof` on an empty events
topic), so both the raw and the start-up-corrected rate are printed, with CPU per event
(the subprocess's user + system, every thread, minus its start-up run), first-reply and
final-reply latency p50/p99 from publish (reply CreateTime minus event CreateTime), the
final replies by status and the dead letters. A lost or duplicated final, or any dead
letter, prints `BENCH FAILED` and exits 1: a rate over lost events would be wrong.

`--baseline-pythonpath /tmp/before` runs the same workload on another tree in the same
bench run (same box, same broker, same events) and prints after/before ratios.

    PYTHONPATH=. .venv/bin/python bench/whole_path.py                       # 3,000 events
    PYTHONPATH=. .venv/bin/python bench/whole_path.py --baseline-pythonpath /tmp/before --json
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import yaml
from confluent_kafka import OFFSET_BEGINNING, TIMESTAMP_CREATE_TIME, Consumer, TopicPartition
from tqdm import tqdm

from bench.flow_throughput import (
    EVENT_PARTITIONS,
    STALL_TIMEOUT_S,
    BenchError,
    TopicCounter,
    children_cpu_s,
    delete_run_topics,
    event_ids_and_times,
    finish,
    kafka_broker,
    log_tail,
    machine,
    percentiles,
    start_flow,
    stop_flow,
    time_flow_until_eof,
)
from bench.heldout import HeldOut, build_traffic, heldout_rows
from splitpin.core.kafka.admin import create_topics
from splitpin.core.kafka.client_config import client_config, security_config
from splitpin.core.kafka.producer import CheckedProducer
from splitpin.core.kafka.reader import read_to_end
from splitpin.core.router.train import DEFAULT_DATA_DIR
from splitpin.core.settings import REPO_ROOT, Settings, load_settings
from splitpin.errors import ConfigError
from splitpin.schemas.events import ConversationEvent
from splitpin.schemas.wire import encode

TENANT = "acme-bank"


# -- workload ---------------------------------------------------------------------------


def cycle_rows(rows: Sequence[HeldOut], count: int) -> list[tuple[int, HeldOut]]:
    """`count` (copy, row) pairs: the held-out rows in order, then again as often as needed."""
    if not rows:
        msg = "no held-out rows to build events from"
        raise BenchError(msg)
    return [(n // len(rows), rows[n % len(rows)]) for n in range(count)]


def build_events(
    rows: Sequence[HeldOut], count: int, compliance_intents: Sequence[str], seed: int
) -> list[ConversationEvent]:
    """`count` one-question chat conversations of acme-bank, sent now, ids unique per copy."""
    now = datetime.now(UTC)
    copies: dict[int, list[HeldOut]] = {}
    for copy, row in cycle_rows(rows, count):
        copies.setdefault(copy, []).append(row)
    events: list[ConversationEvent] = []
    for copy, copy_rows in copies.items():
        traffic = build_traffic(copy_rows, compliance_intents, seed=seed + copy, email_share=0.0)
        for event in traffic.events:
            conversation_id = f"{event.conversation_id}.c{copy}"
            events.append(
                event.model_copy(
                    update={
                        "event_id": f"{conversation_id}-001",
                        "conversation_id": conversation_id,
                        "tenant_id": TENANT,
                        "sent_at": now,
                    }
                )
            )
    return events


def governance_file(base: Path, directory: Path, name: str) -> Path:
    """The given tree's shipped config, the local fleet not emulating, budgets lifted."""
    config: dict[str, Any] = yaml.safe_load(base.read_text())
    bases = config.get("knowledge", {}).get("bases") or {}
    for kb, where in bases.items():  # relative to the original file's folder
        bases[kb] = str((base.parent / where).resolve())
    config.setdefault("providers", {}).update(mode="local", emulate=False)
    # Spend is not under test: no event may be refused for budget.
    config["budgets"] = {**config.get("budgets", {}), "default": {"limit_usd": 1_000_000.0}}
    config["budgets"].pop("tenants", None)
    written = directory / f"governance-{name}.yaml"
    written.write_text(yaml.safe_dump(config))
    return written


def publish(settings: Settings, events: Sequence[ConversationEvent]) -> None:
    """Every event to the events topic, keyed by conversation, acknowledged."""
    producer = CheckedProducer(
        settings.bootstrap_servers,
        delivery_timeout_ms=settings.delivery_timeout_ms,
        **security_config(settings.kafka),
    )
    topic = settings.topic("events")
    for event in events:
        producer.produce(topic, encode(event), event.conversation_id.encode())
    producer.flush(settings.sink_flush_timeout_s)


# -- the tree under test ------------------------------------------------------------------


@contextmanager
def tree(pythonpath: Path | None) -> Iterator[None]:
    """Child processes started meanwhile import splitpin from `pythonpath` (None: this tree).

    PYTHONSAFEPATH keeps `python -m` from putting the working directory (this checkout)
    ahead of PYTHONPATH.
    """
    if pythonpath is None:
        yield
        return
    saved = {name: os.environ.get(name) for name in ("PYTHONPATH", "PYTHONSAFEPATH")}
    os.environ["PYTHONPATH"] = str(pythonpath)
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class FinalWatcher:
    """Tails the replies topic in a thread: which events have a final, for the progress bar
    and for knowing when to stop the flow (the figures come from a full read afterwards)."""

    def __init__(self, settings: Settings, topic: str, wanted: set[str]) -> None:
        self._consumer = Consumer(
            {
                **client_config(settings),
                "group.id": f"bench-watch-{uuid.uuid4()}",
                "enable.auto.commit": False,
            }
        )
        partitions = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        self.wanted = wanted
        self.finals: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="final-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for message in self._consumer.consume(500, 0.1):
                value = message.value()
                if message.error() is not None or not value or b'"kind":"final"' not in value:
                    continue
                self.finals.add(str(orjson.loads(value)["reply_id"]))

    def done(self) -> bool:
        return self.wanted <= self.finals

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._consumer.close()


@dataclass(frozen=True)
class RunResult:
    """One tree's run: wall and CPU figures, latencies from publish (ms), statuses."""

    tree: str
    events: int
    wall_s: float
    """Process start to the last final reply's CreateTime."""
    startup_s: float
    cpu_s: float
    startup_cpu_s: float
    events_per_s: float
    events_per_s_corrected: float | None
    cpu_us_per_event: float
    """(run CPU - start-up run CPU) / events."""
    decision_p50_ms: float
    decision_p99_ms: float
    first_reply_p50_ms: float
    first_reply_p99_ms: float
    final_reply_p50_ms: float
    final_reply_p99_ms: float
    finals_by_status: dict[str, int]
    preliminaries: int
    dead_letters: int


def start_profiler(pid: int, out: Path, *, gil: bool = False) -> subprocess.Popen[bytes]:
    """py-spy sampling the flow process (per thread, wall clock; `gil`: only the thread
    holding the GIL) into `out`, as collapsed stacks; it stops when the flow exits."""
    where = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    spy = shutil.which("py-spy", path=where)
    if spy is None:
        msg = "--profile needs py-spy (.venv/bin/pip install py-spy)"
        raise BenchError(msg)
    command = [spy, "record", "--pid", str(pid), "--rate", "200", "--threads", "--format", "raw"]
    if gil:
        command.append("--gil")
    command += ["-o", str(out)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_tree(
    settings: Settings,
    name: str,
    pythonpath: Path | None,
    events: Sequence[ConversationEvent],
    workdir: Path,
    profile: Path | None = None,
    profile_gil: bool = False,
    flow_args: Sequence[str] = (),
) -> RunResult:
    """Start-up on an empty topic, then the whole workload, on one tree."""
    root = REPO_ROOT if pythonpath is None else pythonpath
    governance = governance_file(root / "config" / "governance.yaml", workdir, name)
    run = settings.model_copy(
        update={
            "topic_prefix": f"{settings.topic_prefix}{name}.",
            "governance_path": governance,
            "recovery_dir": workdir / f"recovery-{name}",
        }
    )
    empty = run.model_copy(
        update={
            "topic_prefix": f"{settings.topic_prefix}{name}-empty.",
            "recovery_dir": workdir / f"recovery-{name}-empty",
        }
    )
    create_topics(run, partitions=EVENT_PARTITIONS)
    create_topics(empty, partitions=EVENT_PARTITIONS)
    log = workdir / f"flow-{name}.log"
    counter = TopicCounter(run)
    try:
        with tree(pythonpath):
            startup = time_flow_until_eof(
                empty, log, counter, 0, f"start-up {name}", extra=flow_args
            )
        publish(run, events)
        wanted = {e.event_id for e in events}
        watcher = FinalWatcher(run, run.topic("replies"), wanted)
        before = children_cpu_s()
        process = None
        spy: subprocess.Popen[bytes] | None = None
        try:
            with tree(pythonpath):
                started = time.time()
                process = start_flow(run, log, *flow_args)
            if profile is not None:
                out = profile.with_name(f"{profile.name}.{name}")
                spy = start_profiler(process.pid, out, gil=profile_gil)
            with tqdm(total=len(wanted), unit="ev", desc=f"finals {name}", leave=False) as bar:
                last, last_change = -1, time.monotonic()
                while not watcher.done():
                    if process.poll() is not None:
                        msg = f"the flow exited ({process.returncode}); log:\n{log_tail(log)}"
                        raise BenchError(msg)
                    have = len(watcher.finals & wanted)
                    bar.update(have - bar.n)
                    if have != last:
                        last, last_change = have, time.monotonic()
                    elif time.monotonic() - last_change > STALL_TIMEOUT_S:
                        msg = f"no final reply for {STALL_TIMEOUT_S:.0f}s: {have} of {len(wanted)}"
                        raise BenchError(msg)
                    time.sleep(0.05)
                bar.update(len(wanted) - bar.n)
        finally:
            if process is not None:
                stop_flow(process)
            if spy is not None:
                spy.wait(timeout=60)  # it writes its file once the flow has exited
            watcher.close()
        cpu = children_cpu_s() - before
        dead = counter.count(run.topic("dead_letter"))
    finally:
        counter.close()
    return summarize(name, run, events, started, startup.wall_s, startup.cpu_s, cpu, dead)


def summarize(
    name: str,
    run: Settings,
    events: Sequence[ConversationEvent],
    started: float,
    startup_s: float,
    startup_cpu_s: float,
    cpu_s: float,
    dead: int,
) -> RunResult:
    """Read both topics back; exactly one final per event, no dead letter, or BenchError."""
    n = len(events)
    sent = dict(event_ids_and_times(run, run.topic("events")))
    first: dict[str, int] = {}
    finals: dict[str, list[tuple[int, str]]] = {}
    preliminaries = 0
    config = client_config(run)
    topic = run.topic("replies")
    for message in read_to_end(run.bootstrap_servers, topic, STALL_TIMEOUT_S, config=config):
        kind, stamp = message.timestamp()
        if kind != TIMESTAMP_CREATE_TIME:
            msg = f"{topic} records carry timestamp type {kind}, not CreateTime"
            raise BenchError(msg)
        reply = orjson.loads(message.value() or b"{}")
        reply_id = str(reply["reply_id"])
        first[reply_id] = min(first.get(reply_id, stamp), stamp)
        if reply["kind"] == "final":
            finals.setdefault(reply_id, []).append((stamp, str(reply["status"])))
        else:
            preliminaries += 1
    missing = set(sent) - set(finals)
    duplicated = [r for r, f in finals.items() if len(f) > 1]
    if missing or duplicated or len(sent) != n:
        msg = (
            f"{name}: {n} events, {len(sent)} on the events topic, {len(missing)} without a "
            f"final reply ({', '.join(sorted(missing)[:3])}), {len(duplicated)} with more than "
            "one; the figures would be wrong"
        )
        raise BenchError(msg)
    if dead:
        msg = f"{name}: the flow dead-lettered {dead} of {n} bench events; all are valid"
        raise BenchError(msg)
    last_final_ms = max(f[0][0] for f in finals.values())
    wall = last_final_ms / 1000 - started
    corrected = wall - startup_s
    decided = dict(event_ids_and_times(run, run.topic("decisions")))
    decision_ms = percentiles([decided[e] - sent[e] for e in sent if e in decided])
    first_ms = percentiles([first[e] - sent[e] for e in sent])
    final_ms = percentiles([finals[e][0][0] - sent[e] for e in sent])
    return RunResult(
        tree=name,
        events=n,
        wall_s=wall,
        startup_s=startup_s,
        cpu_s=cpu_s,
        startup_cpu_s=startup_cpu_s,
        events_per_s=n / wall,
        events_per_s_corrected=n / corrected if corrected > 0 else None,
        cpu_us_per_event=(cpu_s - startup_cpu_s) / n * 1e6,
        decision_p50_ms=decision_ms.p50,
        decision_p99_ms=decision_ms.p99,
        first_reply_p50_ms=first_ms.p50,
        first_reply_p99_ms=first_ms.p99,
        final_reply_p50_ms=final_ms.p50,
        final_reply_p99_ms=final_ms.p99,
        finals_by_status=dict(sorted(Counter(f[0][1] for f in finals.values()).items())),
        preliminaries=preliminaries,
        dead_letters=dead,
    )


# -- report -------------------------------------------------------------------------------

COLUMNS = (
    ("wall s", "wall_s", ".2f"),
    ("start s", "startup_s", ".2f"),
    ("ev/s", "events_per_s", ".1f"),
    ("corr ev/s", "events_per_s_corrected", ".1f"),
    ("CPU us/ev", "cpu_us_per_event", ".0f"),
    ("dec p50 ms", "decision_p50_ms", ".0f"),
    ("dec p99 ms", "decision_p99_ms", ".0f"),
    ("1st p50 ms", "first_reply_p50_ms", ".0f"),
    ("1st p99 ms", "first_reply_p99_ms", ".0f"),
    ("fin p50 ms", "final_reply_p50_ms", ".0f"),
    ("fin p99 ms", "final_reply_p99_ms", ".0f"),
)


def _fmt(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def ratios(after: RunResult, before: RunResult) -> dict[str, float | None]:
    """after / before for every figure of the table (above 1 is faster only for rates)."""
    out: dict[str, float | None] = {}
    for _, key, _ in COLUMNS:
        a, b = getattr(after, key), getattr(before, key)
        out[key] = a / b if a is not None and b else None
    return out


def table(results: Sequence[RunResult], ratio: dict[str, float | None] | None) -> str:
    head = f"{'tree':<10}" + "".join(f"{title:>12}" for title, _, _ in COLUMNS)
    lines = [head, "-" * len(head)]
    for r in results:
        cells = "".join(f"{_fmt(getattr(r, key), fmt):>12}" for _, key, fmt in COLUMNS)
        lines.append(f"{r.tree:<10}{cells}")
    if ratio is not None:
        cells = "".join(f"{_fmt(ratio[key], '.3f'):>12}" for _, key, _ in COLUMNS)
        lines.append(f"{'after/bef':<10}{cells}")
    lines.append("")
    for r in results:
        statuses = ", ".join(f"{k} {v}" for k, v in r.finals_by_status.items())
        lines.append(
            f"{r.tree}: finals {statuses}; preliminaries {r.preliminaries}; dead letters "
            f"{r.dead_letters}; CPU run {r.cpu_s:.1f} s, start-up run {r.startup_cpu_s:.1f} s"
        )
    lines.append(
        "  wall = process start -> last final reply's CreateTime; corr = wall minus the "
        "empty-topic start-up run; latencies: reply CreateTime - event CreateTime "
        "(events published before the flow starts, so they include its start-up)"
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=3_000, help="N conversations (3000)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--seed", type=int, default=14, help="order of the questions")
    parser.add_argument(
        "--baseline-pythonpath",
        type=Path,
        default=None,
        help="also run the same workload on the tree at this path (e.g. /tmp/before)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="OUT",
        help="sample each flow run with py-spy into OUT.<tree> (collapsed stacks)",
    )
    parser.add_argument(
        "--profile-gil", action="store_true", help="with --profile: sample only the GIL holder"
    )
    parser.add_argument(
        "--flow-args",
        default="",
        metavar="ARGS",
        help="extra `splitpin run` options for every tree, e.g. '--workers 2'",
    )
    parser.add_argument("--json", action="store_true", help="end with one JSON object line")
    args = parser.parse_args(argv)
    args.flow_args = shlex.split(args.flow_args)
    if args.events < 1:
        parser.error("--events must be positive")
    if (
        args.baseline_pythonpath is not None
        and not (args.baseline_pythonpath / "splitpin" / "__init__.py").exists()
    ):
        parser.error(f"--baseline-pythonpath {args.baseline_pythonpath}: no splitpin package")
    args.command = shlex.join([sys.executable, *sys.argv])
    args.date = datetime.now(UTC).isoformat(timespec="seconds")
    return args


def run(args: argparse.Namespace, rows: Sequence[HeldOut]) -> dict[str, Any]:
    info = machine()
    base = load_settings()
    events = build_events(rows, args.events, base.governance.routing.compliance_intents, args.seed)
    trees: list[tuple[str, Path | None]] = [("after", None)]
    if args.baseline_pythonpath is not None:
        trees.insert(0, ("before", args.baseline_pythonpath.resolve()))
    workdir = Path(tempfile.mkdtemp(prefix="splitpin-whole-path-"))
    with kafka_broker(base) as (settings, broker):
        prefix = f"bench-{uuid.uuid4().hex[:12]}."
        settings = settings.model_copy(update={"topic_prefix": prefix, "metrics_port": 0})
        print(
            f"whole-path bench: {len(events)} single-question chat conversations "
            f"({len(rows)} held-out banking77 rows{', cycled' if len(events) > len(rows) else ''})"
            f", published at once; local fleet, emulate off, budgets lifted\n"
            f"command : {args.command}\ndate    : {args.date}\n"
            f"machine : nproc={info['nproc']}, load avg 1m {info['load_avg_1m']}, "
            f"python {info['python']}, bytewax {info['bytewax']}\nbroker  : {broker}",
            flush=True,
        )
        results: list[RunResult] = []
        try:
            for name, path in trees:
                results.append(
                    run_tree(
                        settings,
                        name,
                        path,
                        events,
                        workdir,
                        args.profile,
                        args.profile_gil,
                        args.flow_args,
                    )
                )
        except BaseException:
            print(f"flow logs kept in {workdir}", file=sys.stderr)
            raise
        finally:
            deleted = delete_run_topics(settings, prefix)
            print(f"deleted {len(deleted)} bench topics ({prefix}*)", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)
    after = results[-1]
    ratio = ratios(after, results[0]) if len(results) > 1 else None
    print()
    print(table(results, ratio))
    return {
        "command": args.command,
        "date": args.date,
        "machine": info,
        "broker": broker,
        "events": len(events),
        "heldout_rows": len(rows),
        "results": {r.tree: asdict(r) for r in results},
        "after_over_before": ratio,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        rows, _ = heldout_rows(args.data_dir)
    except ConfigError as exc:  # the shared data is absent: the error names the file
        print(f"whole-path bench: needs the held-out banking77 rows: {exc}", file=sys.stderr)
        return 2
    return finish(lambda: run(args, rows), as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
