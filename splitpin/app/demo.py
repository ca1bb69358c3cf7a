"""`splitpin demo`: the whole path on the sample traffic, ending with a summary table.

Uses the broker at the configured bootstrap address if one answers, else starts the
local one (and stops it afterwards). Fresh topics per run, so it can be repeated.

The flow runs as it does in production: `splitpin run` in its own process, tailing its
input. Once it is ready (its metrics endpoint answers, which happens after the
classifier, the fleet and the tokenizers are loaded) the sample is published at a steady
rate, and when every valid customer event has its final reply the flow is stopped. Every
topic is then read back with its Kafka timestamps and summarised per route by
`splitpin.app.report` (table on stdout, latency plot as a PNG).

Why not `run_flow(tail=False)` in-process: publishing the sample first and draining it
measures the backlog, not the flow. Every event waits behind the ones published before
it, and at the end of input the answering step waits for all its calls in flight
(`CallTable.drain`) and releases them together: most preliminary and final replies then
carry the same timestamp, the end of the run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

from splitpin.app.flow_process import running_flow
from splitpin.app.replay import event_time_span, replay_file
from splitpin.app.report import DEFAULT_PLOT, Stamped, plot_latencies, render_table, summarize
from splitpin.core.kafka.admin import create_topics
from splitpin.core.kafka.broker import LocalBroker
from splitpin.core.kafka.reader import read_to_end
from splitpin.core.settings import REPO_ROOT, Settings
from splitpin.errors import ConfigError, SplitpinError
from splitpin.operators.ingest import IngestLimits, RawRecord, parse_event
from splitpin.providers.registry import ANTHROPIC_KEY, OPENAI_BASE_URL, OPENAI_KEY, remote_settings
from splitpin.schemas import (
    ConversationEvent,
    CostRecord,
    DeadLetter,
    Reply,
    RoutingDecision,
    ValidationFailure,
    decode,
)
from splitpin.schemas.governance import GovernanceConfig
from splitpin.schemas.wire import M

SAMPLE = REPO_ROOT / "data" / "sample" / "events.jsonl"
MALFORMED = REPO_ROOT / "data" / "sample" / "malformed.jsonl"

SAMPLE_RATE = 10.0
"""Events per second: the sample takes about a minute, well within what the local fleet
answers on one worker, so the times measure the path rather than a queue."""
READY_TIMEOUT_S = 120.0
ANSWER_TIMEOUT_S = 180.0
"""After the last event is published; then the flow is stopped and the check line says
how many events are missing a final reply."""
SETTLE_S = 1.0
"""Records produced in the same sink batch as the last final reply may land just after it."""


def run_demo(
    settings: Settings,
    echo: Callable[[str], None] = print,
    plot_path: Path = DEFAULT_PLOT,
    rate: float = SAMPLE_RATE,
) -> None:
    """Broker, fresh topics, the flow, the sample at `rate` events/s, then the report.

    `plot_path` is relative to the working directory unless absolute.
    """
    if not SAMPLE.is_file():
        msg = (
            f"the demo replays {SAMPLE.relative_to(REPO_ROOT)}, which only a checkout of "
            "splitpin has; clone the repository and run ./dev demo"
        )
        raise ConfigError(msg)
    broker = LocalBroker(settings.broker)
    started_broker = False
    if not broker.status().answering:
        echo(broker.start())
        started_broker = True
    try:
        with tempfile.TemporaryDirectory(prefix="splitpin-demo-") as tmp:
            demo = settings.model_copy(
                update={
                    "topic_prefix": f"demo-{int(time.time())}.",
                    "recovery_dir": Path(tmp) / "recovery",
                    "metrics_port": _free_port(),
                    # Restamped, the sample's last event lies its whole span (8 days)
                    # after the first, which is now: allow that much future skew.
                    "max_future_skew_s": settings.max_future_skew_s + _span_s(SAMPLE),
                }
            )
            for line in create_topics(demo):
                echo(line)
            echo(describe_backends(demo.governance, os.environ))
            log_path = Path(tmp) / "flow.log"
            with running_flow(demo.child_env(), log_path) as flow:
                started = time.monotonic()
                _wait_until_ready(flow, demo.metrics_port, log_path)
                echo(f"flow ready after {time.monotonic() - started:.1f}s (splitpin run, tailing)")
                now = datetime.now(UTC)
                echo(replay_file(demo, SAMPLE, rate=rate, restamp_to=now).describe())
                echo(replay_file(demo, MALFORMED).describe())
                expected = {e.record.event_id for e in _valid_events(demo) if _customer(e)}
                answered = _wait_for_finals(demo, expected, flow, log_path)
                echo(
                    f"final replies for {answered}/{len(expected)} valid customer events "
                    f"{time.monotonic() - started:.1f}s after the flow started; stopping it"
                )
            echo(report(demo, plot_path))
    finally:
        if started_broker:
            echo(broker.stop())


def _span_s(path: Path) -> float:
    span = event_time_span(path)
    return 0.0 if span is None else (span[1] - span[0]).total_seconds()


def report(settings: Settings, plot_path: Path) -> str:
    """Read every topic back with timestamps; the table, the dead letters, the plot's path."""

    def read(name: str) -> list[Message]:
        return read_to_end(settings.bootstrap_servers, settings.topic(name))

    replies = [Stamped(decode(Reply, _value(m)), _timestamp_ms(m)) for m in read("replies")]
    summary = summarize(
        _valid_events(settings),
        _decode_all(RoutingDecision, read("decisions")),
        replies,
        _decode_all(CostRecord, read("metrics")),
        _decode_all(ValidationFailure, read("validation_failures")),
    )
    letters = _decode_all(DeadLetter, read("dead_letter"))
    path = plot_latencies(summary, plot_path)

    lines = ["", "replies per route (route = the routing decision's role)", render_table(summary)]
    lines += [
        "",
        "times: the reply record's Kafka CreateTime minus the event record's, read back from",
        "  the topics after the run (queueing, routing, model calls and the sink's produce;",
        "  not the model latency alone).",
        "escalated: events whose final reply has escalated=true (fast answer not trusted).",
        "cost: CostRecords on routing.metrics, priced at each role's configured list prices.",
        "val. failures: records on replies.validation-failures for the route's events.",
    ]
    reasons = Counter(letter.reason for letter in letters)
    lines += ["", f"dead letters: {len(letters)}"]
    lines += [f"  {reason:<26}{count:>4}" for reason, count in sorted(reasons.items())]
    lines += ["", f"latency plot written to {path.resolve()}"]
    return "\n".join(lines)


def _valid_events(settings: Settings) -> list[Stamped[ConversationEvent]]:
    """The input records the flow accepted, judged by the flow's own ingest.

    The input topic holds the malformed sample too; re-running ingest on it (rather than
    a looser decode) keeps "valid customer events" equal to what the flow routed.
    """
    events: list[Stamped[ConversationEvent]] = []
    limits = IngestLimits.from_settings(settings)
    for message in read_to_end(settings.bootstrap_servers, settings.topic("events")):
        parsed = parse_event(_raw(message), limits)
        if isinstance(parsed, ConversationEvent):
            events.append(Stamped(parsed, _timestamp_ms(message)))
    return events


def _customer(event: Stamped[ConversationEvent]) -> bool:
    return event.record.role == "customer"


def _wait_until_ready(flow: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    """The metrics endpoint opens after the flow is built, right before it starts reading."""
    url = f"http://127.0.0.1:{port}/metrics"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        _check_running(flow, log_path)
        with suppress(OSError), urllib.request.urlopen(url, timeout=1):
            return
        time.sleep(0.2)
    msg = f"the flow did not get ready within {READY_TIMEOUT_S:g}s; its log:\n{_tail(log_path)}"
    raise SplitpinError(msg)


def _wait_for_finals(
    settings: Settings, expected: set[str], flow: subprocess.Popen[bytes], log_path: Path
) -> int:
    """Poll the replies topic until every expected event has a final reply (or time is up)."""
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    answered: set[str] = set()
    while True:
        _check_running(flow, log_path)
        for message in read_to_end(settings.bootstrap_servers, settings.topic("replies")):
            reply = decode(Reply, _value(message))
            if reply.kind == "final":
                answered.add(reply.reply_id)
        if expected <= answered or time.monotonic() > deadline:
            time.sleep(SETTLE_S)
            return len(expected & answered)
        time.sleep(1.0)


def _check_running(flow: subprocess.Popen[bytes], log_path: Path) -> None:
    code = flow.poll()
    if code is not None:
        msg = f"the flow exited early (status {code}); its log:\n{_tail(log_path)}"
        raise SplitpinError(msg)


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _free_port() -> int:
    """A port for the flow's metrics endpoint (its readiness signal) that nothing holds now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def describe_backends(governance: GovernanceConfig, env: Mapping[str, str]) -> str:
    """One line naming what answers each role, so nobody mistakes the fleet for the APIs.

    Uses the provider registry's own per-role rule (providers.mode, the role's provider
    and the API keys in `env`), without building any client or loading the fleet.
    """
    answered_by: dict[str, list[str]] = {}
    for name, role in governance.roles.items():
        remote = remote_settings(name, role, env, governance.providers.mode)
        backend = "local fleet" if remote is None else f"{role.provider} {role.pinned_id}"
        answered_by.setdefault(backend, []).append(name)
    if list(answered_by) == ["local fleet"]:
        mode = governance.providers.mode
        if mode != "auto":
            why = f"providers.mode {mode}"
        elif not any(env.get(key) for key in (ANTHROPIC_KEY, OPENAI_KEY, OPENAI_BASE_URL)):
            why = f"no {ANTHROPIC_KEY} / {OPENAI_KEY} set"
        else:
            why = "no role's provider has its key"
        emulated = ", emulated latency" if governance.providers.emulate else ""
        return f"answering: local fleet for every role ({why}{emulated})"
    parts = [f"{', '.join(roles)} -> {backend}" for backend, roles in answered_by.items()]
    return "answering: " + "; ".join(parts)


def _decode_all(model: type[M], messages: Iterable[Message]) -> list[M]:
    return [decode(model, _value(message)) for message in messages]


def _value(message: Message) -> bytes:
    return message.value() or b""


def _timestamp_ms(message: Message) -> int | None:
    kind, ms = message.timestamp()
    return None if kind == TIMESTAMP_NOT_AVAILABLE else int(ms)


def _raw(message: Message) -> RawRecord:
    partition, offset = message.partition(), message.offset()
    return RawRecord(
        key=message.key(),
        value=message.value(),
        topic=message.topic() or "",
        partition=partition if partition is not None else -1,
        offset=offset if offset is not None else -1,
        timestamp_ms=_timestamp_ms(message),
    )
