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
from collections.abc import Callable, Mapping
from contextlib import ExitStack, suppress
from datetime import UTC, datetime
from pathlib import Path

import yaml

from splitpin.app.canary import plan_canary, prepare_canary
from splitpin.app.canary_report import canary_settings, read_comparison, render
from splitpin.app.flow_process import running_flow
from splitpin.app.replay import event_time_span, replay_file
from splitpin.app.report import (
    DEFAULT_PLOT,
    Stamped,
    plot_latencies,
    read_topic,
    read_topology,
    render_table,
    summarize,
    valid_events,
    value,
)
from splitpin.core.kafka.admin import create_topics
from splitpin.core.kafka.broker import LocalBroker
from splitpin.core.kafka.client_config import client_config
from splitpin.core.kafka.reader import read_to_end
from splitpin.core.settings import REPO_ROOT, Settings
from splitpin.errors import ConfigError, SplitpinError
from splitpin.operators.sampling import in_sample
from splitpin.providers.registry import ANTHROPIC_KEY, OPENAI_BASE_URL, OPENAI_KEY, remote_settings
from splitpin.schemas import (
    ConversationEvent,
    DeadLetter,
    Reply,
    decode,
)
from splitpin.schemas.governance import GovernanceConfig, load_governance

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
    canary: bool = True,
) -> None:
    """Broker, fresh topics, the flow, the sample at `rate` events/s, then the report.

    With `canary`, a candidate config (`write_candidate`) runs beside the primary as
    `splitpin run --canary` on the same events topic, from the start, so both topologies
    are timed against the same publications; after the primary's report comes the
    comparison and its verdict. `plot_path` is relative to the working directory unless
    absolute.
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
                    "canary_recovery_dir": Path(tmp) / "canary-recovery",
                    "canary_metrics_port": _free_port(),
                    # Restamped, the sample's last event lies its whole span (8 days)
                    # after the first, which is now: allow that much future skew.
                    "max_future_skew_s": settings.max_future_skew_s + _span_s(SAMPLE),
                }
            )
            for line in create_topics(demo):
                echo(line)
            echo(describe_backends(demo.governance, os.environ))
            log_path, canary_log = Path(tmp) / "flow.log", Path(tmp) / "canary.log"
            candidate = write_candidate(demo.governance_file, Path(tmp)) if canary else None
            if candidate is not None:  # created before either flow starts reading
                for line in prepare_canary(demo, plan_canary(demo, candidate)):
                    echo(line)
            with ExitStack() as flows:
                flow = flows.enter_context(running_flow(demo.child_env(), log_path))
                mirror = None
                if candidate is not None:
                    args = ("--canary", str(candidate))
                    mirror = flows.enter_context(running_flow(demo.child_env(), canary_log, *args))
                started = time.monotonic()
                _wait_until_ready(flow, demo.metrics_port, log_path)
                if mirror is not None:
                    _wait_until_ready(mirror, demo.canary_metrics_port, canary_log)
                echo(f"flow ready after {time.monotonic() - started:.1f}s (splitpin run, tailing)")
                now = datetime.now(UTC)
                echo(replay_file(demo, SAMPLE, rate=rate, restamp_to=now).describe())
                echo(replay_file(demo, MALFORMED).describe())
                valid = [e for e in _valid_events(demo) if _customer(e)]
                expected = {e.record.event_id for e in valid}
                answered = _wait_for_finals(demo, expected, flow, log_path)
                echo(
                    f"final replies for {answered}/{len(expected)} valid customer events "
                    f"{time.monotonic() - started:.1f}s after the flow started; stopping it"
                )
                if mirror is not None and candidate is not None:
                    fraction = load_governance(candidate).canary.sample_fraction
                    sampled = {
                        e.record.event_id
                        for e in valid
                        if in_sample(e.record.conversation_id, fraction)
                    }
                    mirrored = _wait_for_finals(
                        _canary_of(demo, candidate), sampled, mirror, canary_log
                    )
                    echo(f"canary: final replies for {mirrored}/{len(sampled)} mirrored events")
            echo(report(demo, plot_path))
            if candidate is not None:
                echo(canary_section(demo, candidate))
    finally:
        if started_broker:
            echo(broker.stop())


CANDIDATE_NAME = "demo-candidate-fast-cheaper"
CANDIDATE_FAST: dict[str, object] = {
    "provider": "anthropic",
    "model": "claude-3-haiku",
    "version": "claude-3-haiku-20240307",
    "price_in_per_mtok": 0.25,
    "price_out_per_mtok": 1.25,
    "emulation": {"ttft_ms_median": 450, "ttft_sigma": 0.35, "tokens_per_s": 120},
}
"""The demo's candidate: the fast role on a cheaper, quicker emulated profile (Claude 3
Haiku's list prices). Demo data, not a runtime setting: the rest of the config is the
primary's."""
CANDIDATE_SAMPLE_FRACTION = 0.5
"""Half the sample's conversations are mirrored: enough compared replies for a verdict."""


def write_candidate(governance_file: Path, folder: Path) -> Path:
    """The primary's governance file with the fast role swapped (CANDIDATE_FAST), written
    to `folder` and validated like any config `splitpin run --canary` loads."""
    data = yaml.safe_load(governance_file.read_text(encoding="utf-8"))
    data["name"] = CANDIDATE_NAME
    data["roles"]["fast"] = {**data["roles"]["fast"], **CANDIDATE_FAST}
    data["canary"] = {**data.get("canary", {}), "sample_fraction": CANDIDATE_SAMPLE_FRACTION}
    path = folder / "candidate.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    load_governance(path)
    return path


def _canary_of(settings: Settings, candidate: Path) -> Settings:
    return canary_settings(settings, load_governance(candidate).canary.topic_prefix)


def canary_section(settings: Settings, candidate: Path) -> str:
    """The comparison table and verdict, against the primary's promotion criteria."""
    prefix = load_governance(candidate).canary.topic_prefix
    comparison = read_comparison(settings, prefix=prefix)
    lines = [
        "",
        f"canary: {CANDIDATE_NAME} (fast role -> {CANDIDATE_FAST['version']}), "
        f"{CANDIDATE_SAMPLE_FRACTION:.0%} of conversations mirrored; the same table as "
        f"`splitpin canary report --prefix {prefix}`",
        render(comparison),
        "times as above (Kafka CreateTime of reply minus event); the two flows shared the "
        "machine, so each slowed the other.",
    ]
    return "\n".join(lines)


def _span_s(path: Path) -> float:
    span = event_time_span(path)
    return 0.0 if span is None else (span[1] - span[0]).total_seconds()


def report(settings: Settings, plot_path: Path) -> str:
    """Read every topic back with timestamps; the table, the dead letters, the plot's path."""

    summary = summarize(_valid_events(settings), *read_topology(settings))
    letters = [decode(DeadLetter, value(m)) for m in read_topic(settings, "dead_letter")]
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
    return valid_events(settings)


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
        for message in read_to_end(
            settings.bootstrap_servers, settings.topic("replies"), config=client_config(settings)
        ):
            reply = decode(Reply, value(message))
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
