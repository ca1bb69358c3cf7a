"""`splitpin canary report`: primary and canary side by side, ending with a verdict.

Reads the events topic and both topologies' decisions, replies, cost records and
validation failures, keeps the events whose Kafka timestamp lies in [since, until), turns
each topology's records into one `Outcome` per event and hands them to
`splitpin.operators.comparison.compare`. Times are measured as the demo's table measures
them (`splitpin.app.report`): the reply record's Kafka CreateTime minus the event
record's, so both topologies are timed from the same instant, the event's publication.
"""

from __future__ import annotations

import math
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from splitpin.app.report import Stamped, format_seconds, route_label
from splitpin.core.metrics import CANARY_AGREEMENT, CANARY_COST_RATIO, CANARY_P95_RATIO
from splitpin.core.settings import Settings
from splitpin.errors import ConfigError
from splitpin.operators.comparison import (
    Comparison,
    ComparisonWindows,
    Figures,
    Label,
    Outcome,
    RouteComparison,
    WindowSummary,
    compare,
)
from splitpin.schemas.decisions import RoutingDecision
from splitpin.schemas.governance import PromotionCriteria
from splitpin.schemas.metrics import CostRecord
from splitpin.schemas.replies import Reply
from splitpin.schemas.validation import ValidationFailure

OVERFLOW = "ContextOverflow"
COMPARISON_TOPIC = "comparison"
"""After the canary's prefix: `canary.comparison` for a primary without a prefix."""


def outcomes(
    decisions: Iterable[RoutingDecision],
    replies: Iterable[Stamped[Reply]],
    costs: Iterable[CostRecord],
    failures: Iterable[ValidationFailure],
    event_ms: Mapping[str, int | None],
) -> dict[str, Outcome]:
    """One topology's records reduced to one Outcome per decided event in `event_ms`.

    The final answer is the highest revision of kind `final` (the consumers' rule); the
    first reply is the earliest record of any kind. Costs and failures re-emitted after a
    recovery are counted once (by record_id / failure_id).
    """
    decided = {d.event_id: d for d in decisions if d.event_id in event_ms}
    final: dict[str, Stamped[Reply]] = {}
    first_ms: dict[str, int] = {}
    for stamped in replies:
        reply = stamped.record
        if reply.reply_id not in decided:
            continue
        if stamped.timestamp_ms is not None:
            seen = first_ms.get(reply.reply_id)
            first_ms[reply.reply_id] = min(stamped.timestamp_ms, seen or stamped.timestamp_ms)
        held = final.get(reply.reply_id)
        if reply.kind == "final" and (held is None or reply.revision > held.record.revision):
            final[reply.reply_id] = stamped
    cost: dict[str, list[float]] = defaultdict(list)
    for record in {c.record_id: c for c in costs}.values():
        cost[record.event_id].append(record.cost_usd)
    errors: dict[str, list[str]] = defaultdict(list)
    for failure in {f.failure_id: f for f in failures}.values():
        errors[failure.event_id].append(failure.error)

    found: dict[str, Outcome] = {}
    for event_id, decision in decided.items():
        start = event_ms[event_id]
        last = final.get(event_id)
        end = None if last is None else last.timestamp_ms
        found[event_id] = Outcome(
            event_id=event_id,
            conversation_id=decision.conversation_id,
            route=route_label(decision),
            role=decision.role,
            intent=decision.intent,
            refused=decision.action == "refuse",
            overflow=any(r.startswith(OVERFLOW) for r in decision.reasons)
            or OVERFLOW in errors[event_id],
            to_first_s=_elapsed(start, first_ms.get(event_id)),
            to_final_s=_elapsed(start, end),
            final_status=None if last is None else last.record.status,
            cited=frozenset() if last is None else _cited(last.record),
            escalated=last is not None and last.record.escalated,
            cost_usd=math.fsum(cost[event_id]),
            failures=tuple(sorted(errors[event_id])),
        )
    return found


def _cited(reply: Reply) -> frozenset[str]:
    return frozenset(citation.doc_id for citation in reply.citations)


def _elapsed(start_ms: int | None, end_ms: int | None) -> float | None:
    if start_ms is None or end_ms is None:
        return None
    return (end_ms - start_ms) / 1000


def in_range(timestamp_ms: int | None, since: datetime | None, until: datetime | None) -> bool:
    """[since, until) on the record's Kafka timestamp; an untimed record is in every range."""
    if timestamp_ms is None:
        return True
    if since is not None and timestamp_ms < since.timestamp() * 1000:
        return False
    return until is None or timestamp_ms < until.timestamp() * 1000


def load_labels(path: Path) -> dict[str, Label]:
    """JSONL of {"event_id", "doc_id"?, "intent"?}: the gold answer per event."""
    labels: dict[str, Label] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
            labels[str(row["event_id"])] = Label(row.get("doc_id"), row.get("intent"))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            msg = f"{path}:{number}: a label is a JSON object with event_id ({exc})"
            raise ConfigError(msg) from exc
    return labels


# --- output ------------------------------------------------------------------------------

HEADERS = (
    "route",
    "events",
    "agree",
    "first p50",
    "first p95",
    "final p50",
    "final p95",
    "cost/conv USD",
    "escalated",
    "val. fail",
    "refused",
    "overflow",
    "doc acc.",
)


def render(comparison: Comparison) -> str:
    """A table (each cell `primary / canary`), failures by error, then the verdict."""
    rows = [_row(route) for route in comparison.routes]
    total = _row(comparison.overall)
    widths = [max(len(r[i]) for r in (HEADERS, *rows, total)) for i in range(len(HEADERS))]

    def line(cells: tuple[str, ...]) -> str:
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([cells[0].ljust(widths[0]), *rest])

    rule = "-" * len(line(HEADERS))
    out = ["cells: primary / canary, over the events both handled (rows: primary's route)"]
    out += [line(HEADERS), rule, *(line(r) for r in rows), rule, line(total), ""]
    overall = comparison.overall
    for side, figs in (("primary", overall.primary), ("canary", overall.canary)):
        by_error = ", ".join(f"{e} {n}" for e, n in figs.failures.items()) or "none"
        out.append(f"validation failures ({side}): {by_error}")
    out.append(
        f"compared: {overall.compared} final replies from both; agreement "
        f"{_share(overall.agreement)}; compliance regressions {overall.compliance_regressions}"
    )
    if comparison.only_primary or comparison.only_canary:
        out.append(
            f"not joined: {comparison.only_primary} sampled events only in the primary, "
            f"{comparison.only_canary} only in the canary"
        )
    out.append("")
    for check in comparison.checks:
        out.append(f"  [{'ok' if check.passed else 'FAIL'}] {check.describe()}")
    failed = ", ".join(c.criterion for c in comparison.failed)
    out.append(f"verdict: {comparison.verdict}" + (f" (failed: {failed})" if failed else ""))
    return "\n".join(out)


def _row(route: RouteComparison) -> tuple[str, ...]:
    p, c = route.primary, route.canary

    def pair(a: str, b: str) -> str:
        return f"{a} / {b}"

    return (
        route.route,
        str(p.events),
        _share(route.agreement),
        pair(_time(p.first_p50_s), _time(c.first_p50_s)),
        pair(_time(p.first_p95_s), _time(c.first_p95_s)),
        pair(_time(p.final_p50_s), _time(c.final_p50_s)),
        pair(_time(p.final_p95_s), _time(c.final_p95_s)),
        pair(f"{p.cost_per_conversation:.4f}", f"{c.cost_per_conversation:.4f}"),
        pair(_share(p.escalation_rate), _share(c.escalation_rate)),
        pair(str(sum(p.failures.values())), str(sum(c.failures.values()))),
        pair(str(p.refusals), str(c.refusals)),
        pair(str(p.overflows), str(c.overflows)),
        pair(_share(p.doc_accuracy), _share(c.doc_accuracy)),
    )


def _time(seconds: float | None) -> str:
    return "-" if seconds is None else format_seconds(seconds)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def to_json(comparison: Comparison) -> dict[str, Any]:
    """The whole comparison as JSON-ready data (infinite ratios become null)."""

    def side(figs: Figures) -> dict[str, Any]:
        data = asdict(figs)
        data["cost_per_conversation"] = figs.cost_per_conversation
        data["escalation_rate"] = figs.escalation_rate
        return data

    def route(row: RouteComparison) -> dict[str, Any]:
        return {
            "route": row.route,
            "compared": row.compared,
            "agreement": row.agreement,
            "p95_ratio": _finite(row.p95_ratio),
            "cost_ratio": _finite(row.cost_ratio),
            "compliance_regressions": row.compliance_regressions,
            "primary": side(row.primary),
            "canary": side(row.canary),
        }

    return {
        "verdict": comparison.verdict,
        "failed": [c.criterion for c in comparison.failed],
        "checks": [
            {**asdict(c), "value": _finite(c.value), "passed": c.passed} for c in comparison.checks
        ],
        "overall": route(comparison.overall),
        "routes": [route(r) for r in comparison.routes],
        "only_primary": comparison.only_primary,
        "only_canary": comparison.only_canary,
        "labelled": comparison.labelled,
    }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def plot(comparison: Comparison, path: Path) -> Path:
    """Bars per route, primary beside canary: final p95 and cost per conversation."""
    figure = Figure(figsize=(12, 5), layout="constrained")
    FigureCanvasAgg(figure)
    rows = [*comparison.routes, comparison.overall]
    names = [r.route for r in rows]
    panels: tuple[tuple[str, Callable[[Figures], float]], ...] = (
        ("time to final reply, p95 (s)", lambda f: f.final_p95_s or 0.0),
        ("cost per conversation (USD)", lambda f: f.cost_per_conversation),
    )
    axes = figure.subplots(1, 2)
    positions = list(range(len(rows)))
    for ax, (title, value) in zip(axes, panels, strict=True):
        ax.bar([x - 0.2 for x in positions], [value(r.primary) for r in rows], 0.4, label="primary")
        ax.bar([x + 0.2 for x in positions], [value(r.canary) for r in rows], 0.4, label="canary")
        ax.set_xticks(positions, names, rotation=30, ha="right", fontsize="small")
        ax.set_title(title)
        ax.legend(fontsize="small")
        ax.grid(True, axis="y", alpha=0.3)
    figure.suptitle(f"splitpin canary report: verdict {comparison.verdict}")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=120)
    return path


# --- reading the topics ------------------------------------------------------------------


def canary_settings(settings: Settings, prefix: str | None = None) -> Settings:
    """The canary's topics: its prefix (default: the governance config's canary prefix)
    before the primary's, as `splitpin run --canary` names them (splitpin.app.canary)."""
    canary_prefix = settings.governance.canary.topic_prefix if prefix is None else prefix
    return settings.model_copy(update={"topic_prefix": canary_prefix + settings.topic_prefix})


def read_comparison(
    settings: Settings,
    since: datetime | None = None,
    until: datetime | None = None,
    labels: Mapping[str, Label] | None = None,
    criteria: PromotionCriteria | None = None,
    prefix: str | None = None,
) -> Comparison:
    """Both topologies' topics read to their current end, compared over [since, until)."""
    from splitpin.app.report import read_topology, valid_events

    event_ms = {
        e.record.event_id: e.timestamp_ms
        for e in valid_events(settings)
        if in_range(e.timestamp_ms, since, until)
    }
    primary = outcomes(*read_topology(settings), event_ms)
    canary = outcomes(*read_topology(canary_settings(settings, prefix)), event_ms)
    return compare(primary, canary, criteria or settings.governance.canary.promotion, labels)


# --- live comparison: `splitpin canary watch` ----------------------------------------------


class LiveSide:
    """One topology's reply stream turned into Outcomes as finals arrive.

    Live, only the reply topics are read: a reply's time is its own `latency_ms` (from the
    event's `sent_at`, real time on live traffic) and its cost the sum of `cost_usd` over
    the revisions seen for it. The report, which also reads the events topic, times
    replies from the event's publication instead; on live traffic both agree up to the
    producers' clock skew.
    """

    def __init__(self) -> None:
        self._cost: dict[str, float] = defaultdict(float)

    def outcome(self, reply: Reply) -> Outcome | None:
        """The outcome once `reply` is a final (its costs folded in), else None."""
        self._cost[reply.reply_id] += reply.cost_usd
        if reply.kind != "final":
            return None
        return Outcome(
            event_id=reply.reply_id,
            conversation_id=reply.conversation_id,
            route=reply.route,
            role=reply.route,
            refused=reply.status == "refused",
            to_final_s=reply.latency_ms / 1000,
            final_status=reply.status,
            cited=_cited(reply),
            escalated=reply.escalated,
            cost_usd=self._cost.pop(reply.reply_id),
        )


def window_record(summary: WindowSummary) -> dict[str, Any]:
    """A `canary.comparison` record: the window's bounds and its whole comparison."""
    return {
        "window_start_ms": summary.window_start_ms,
        "window_end_ms": summary.window_end_ms,
        **to_json(summary.comparison),
    }


def export_gauges(comparison: Comparison) -> None:
    """The last closed window's ratios as Prometheus gauges, per route and overall."""
    for row in (*comparison.routes, comparison.overall):
        for gauge, value in (
            (CANARY_AGREEMENT, row.agreement),
            (CANARY_P95_RATIO, row.p95_ratio),
            (CANARY_COST_RATIO, row.cost_ratio),
        ):
            gauge.labels(row.route).set(math.nan if value is None else value)


def watch(
    settings: Settings,
    prefix: str | None = None,
    echo: Callable[[str], None] = print,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Follow both reply topics from their beginning; per closed window, publish a record
    on `<canary prefix>comparison`, set the gauges and print the verdict line."""
    from confluent_kafka import Consumer

    from splitpin.app.report import timestamp_ms, value
    from splitpin.core.kafka.admin import create_topics
    from splitpin.core.kafka.client_config import client_config
    from splitpin.core.kafka.producer import CheckedProducer
    from splitpin.core.metrics import serve
    from splitpin.schemas import decode

    canary = canary_settings(settings, prefix)
    out = canary.topic_prefix + COMPARISON_TOPIC
    for line in create_topics(settings, names=[out]):
        echo(line)
    sides = {settings.topic("replies"): "primary", canary.topic("replies"): "canary"}
    config = settings.governance.canary
    windows = ComparisonWindows(
        window_ms=int(config.comparison_window_s * 1000),
        grace_ms=int(config.comparison_grace_s * 1000),
        criteria=config.promotion,
    )
    live = {topic: LiveSide() for topic in sides}
    serve(settings.metrics_port)
    consumer = Consumer(
        {
            **client_config(settings),
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"splitpin-canary-watch-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    producer = CheckedProducer(settings.bootstrap_servers, **client_config(settings))
    consumer.subscribe(list(sides))
    try:
        while not stop():
            for message in consumer.consume(500, 1.0):
                topic, at_ms = message.topic(), timestamp_ms(message)
                if message.error() is not None or topic not in sides or at_ms is None:
                    continue
                found = live[topic].outcome(decode(Reply, value(message)))
                if found is not None:
                    windows.add("primary" if sides[topic] == "primary" else "canary", found, at_ms)
            for summary in windows.close():
                producer.produce(
                    out, orjson.dumps(window_record(summary)), str(summary.window_start_ms).encode()
                )
                producer.flush(30.0)
                export_gauges(summary.comparison)
                echo(_window_line(summary))
    finally:
        consumer.close()


def _window_line(summary: WindowSummary) -> str:
    overall = summary.comparison.overall
    start = datetime.fromtimestamp(summary.window_start_ms / 1000, UTC).isoformat()
    return (
        f"{start}: {overall.compared} compared, agreement {_share(overall.agreement)}, "
        f"p95 ratio {_ratio(overall.p95_ratio)}, cost ratio {_ratio(overall.cost_ratio)}, "
        f"{summary.comparison.verdict}"
    )


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
