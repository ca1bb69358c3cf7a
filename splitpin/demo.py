"""`splitpin demo`: the whole path on the sample traffic, ending with a summary table.

Uses the broker at the configured bootstrap address if one answers, else starts the
local one (and stops it afterwards). Fresh topics per run, so it can be repeated.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

from schemas import DeadLetter, RoutingDecision, decode
from splitpin.kafka.admin import create_topics
from splitpin.kafka.broker import LocalBroker
from splitpin.kafka.reader import read_to_end
from splitpin.replay import replay_file
from splitpin.runner import run_flow
from splitpin.settings import REPO_ROOT, Settings

SAMPLE = REPO_ROOT / "data" / "sample" / "events.jsonl"
MALFORMED = REPO_ROOT / "data" / "sample" / "malformed.jsonl"


def run_demo(settings: Settings, echo: Callable[[str], None] = print) -> None:
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
                    "metrics_port": 0,
                }
            )
            for line in create_topics(demo):
                echo(line)
            echo(replay_file(demo, SAMPLE).describe())
            echo(replay_file(demo, MALFORMED).describe())
            started = time.perf_counter()
            run_flow(demo, tail=False)
            echo(f"flow processed the input in {time.perf_counter() - started:.1f}s")
            decisions = [
                decode(RoutingDecision, m.value() or b"")
                for m in read_to_end(demo.bootstrap_servers, demo.topic("decisions"))
            ]
            letters = [
                decode(DeadLetter, m.value() or b"")
                for m in read_to_end(demo.bootstrap_servers, demo.topic("dead_letter"))
            ]
            echo(summary_table(decisions, letters))
    finally:
        if started_broker:
            echo(broker.stop())


def summary_table(decisions: list[RoutingDecision], letters: list[DeadLetter]) -> str:
    """Per route: decisions, channels, tiers and conversation size; then dead letters."""
    by_role: dict[str, list[RoutingDecision]] = defaultdict(list)
    for decision in decisions:
        by_role[decision.role].append(decision)
    header = f"{'route':<14}{'model':<28}{'events':>7}{'chat':>6}{'email':>6}"
    header += f"{'trivial':>8}{'pinned':>7}{'cached':>7}{'refused':>8}{'tokens p50':>11}{'max':>7}"
    lines = ["", "routing decisions", header, "-" * len(header)]
    for role in sorted(by_role):
        group = by_role[role]
        sizes = [d.tokens.conversation for d in group]
        channels = Counter(d.channel for d in group)
        lines.append(
            f"{role:<14}{group[0].model_version:<28}{len(group):>7}{channels['chat']:>6}"
            f"{channels['email']:>6}{sum(d.tier == 'trivial' for d in group):>8}"
            f"{sum(d.pinned for d in group):>7}{sum(d.cache_hit_of is not None for d in group):>7}"
            f"{sum(d.action == 'refuse' for d in group):>8}"
            f"{statistics.median(sizes):>11.0f}{max(sizes):>7}"
        )
    lines.append(f"{'total':<42}{len(decisions):>7}")
    reasons = Counter(letter.reason for letter in letters)
    lines += ["", f"dead letters: {len(letters)}"]
    lines += [f"  {reason:<26}{count:>4}" for reason, count in sorted(reasons.items())]
    return "\n".join(lines)
