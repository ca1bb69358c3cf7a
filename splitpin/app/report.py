"""The demo's end-of-run report: per-route reply latency, cost, escalations and failures.

Pure functions over decoded records, so the arithmetic is tested without Kafka; the demo
reads the topics and hands the records in, each with its Kafka timestamp where it needs one.

Time to reply is measured from the outside, on the topics: the reply record's Kafka
timestamp minus the event record's Kafka timestamp. Both are CreateTime in milliseconds,
stamped by their producers (the replay for the event, the flow's sink for the reply) and
read back by a consumer after the run. So it covers everything between "the event was
published" and "the reply was published": waiting in the topic, classification, routing,
the model calls, and the sink's produce. It is not the model's latency (that is
`CostRecord.latency_ms`) and not `Reply.latency_ms` (which starts at the event's `sent_at`,
a business timestamp that in replayed traffic lies in the past).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from splitpin.core.kafka.client_config import client_config
from splitpin.core.kafka.reader import read_to_end
from splitpin.core.settings import Settings
from splitpin.core.stats import percentile
from splitpin.operators.ingest import IngestLimits, RawRecord, parse_event
from splitpin.schemas import decode
from splitpin.schemas.decisions import RoutingDecision
from splitpin.schemas.events import ConversationEvent
from splitpin.schemas.metrics import CostRecord
from splitpin.schemas.replies import Reply
from splitpin.schemas.validation import ValidationFailure

R = TypeVar("R")

DEFAULT_PLOT = Path("demo-latency.png")
"""Relative: the plot lands in the directory the demo was started from."""

REFUSED = "refused"
TOTAL = "total"
MIN_PLOT_S = 0.001
"""Log axes cannot show 0: faster replies are drawn at 1 ms (the timestamps' resolution)."""


@dataclass(frozen=True, slots=True)
class Stamped(Generic[R]):
    """A decoded record and its Kafka timestamp in ms (None when the broker gave none)."""

    record: R
    timestamp_ms: int | None


@dataclass(frozen=True, slots=True)
class RouteSummary:
    """One row of the table; the latency samples are kept for the plot."""

    route: str
    events: int
    """Routing decisions with this route label (one per customer event)."""
    answered: int
    """Of those, events with at least one final reply."""
    to_preliminary_s: tuple[float, ...]
    to_final_s: tuple[float, ...]
    cost_usd: float
    escalations: int
    validation_failures: int


@dataclass(frozen=True, slots=True)
class Summary:
    routes: tuple[RouteSummary, ...]
    total: RouteSummary
    valid_customer_events: int
    exactly_one_final: int
    """Valid customer events with exactly one `final` reply record: the flow's contract."""
    no_final: int
    several_finals: int
    unmatched: dict[str, int] = field(default_factory=dict)
    """Records whose event has no decision, per kind; they are in no row."""
    untimed: int = 0
    """Replies left out of the latency columns for want of a timestamp (theirs or the event's)."""


def route_label(decision: RoutingDecision) -> str:
    """The route an event took, as an operator names it.

    Refused decisions get their own row: they cost nothing and answer at once, so mixing
    them into the role they would have used would flatter that role's latency.
    """
    if decision.action == "refuse":
        return REFUSED
    return f"{decision.role} (pinned)" if decision.pinned else decision.role


def summarize(
    events: Iterable[Stamped[ConversationEvent]],
    decisions: Iterable[RoutingDecision],
    replies: Iterable[Stamped[Reply]],
    costs: Iterable[CostRecord],
    failures: Iterable[ValidationFailure],
) -> Summary:
    """Join everything on event_id and group by the decision's route label.

    `events` are the input records that passed ingest (the demo applies the flow's own
    validation). Records re-emitted after a crash recovery are recognised by their stable
    identities: costs by record_id, failures by failure_id; an event retried under the same
    event_id is timed from its first publication, a reply from its first revision of each
    kind. Escalations count events whose final reply says `escalated` (the fast answer was
    not trusted), not the extra calls that escalation made.
    """
    event_ms: dict[str, int | None] = {}
    customer: set[str] = set()
    for stamped_event in events:
        event = stamped_event.record
        if event.role == "customer":
            customer.add(event.event_id)
        event_ms[event.event_id] = _earliest(
            event_ms.get(event.event_id), stamped_event.timestamp_ms
        )

    route_of: dict[str, str] = {}
    for decision in decisions:
        route_of.setdefault(decision.event_id, route_label(decision))

    unmatched: Counter[str] = Counter()
    first_reply: dict[tuple[str, str], Stamped[Reply]] = {}
    finals: Counter[str] = Counter()
    for stamped in replies:
        reply = stamped.record
        if reply.reply_id not in route_of:
            unmatched["replies"] += 1
            continue
        if reply.kind == "final":
            finals[reply.reply_id] += 1
        key = (reply.reply_id, reply.kind)
        seen = first_reply.get(key)
        if seen is None or _before(stamped.timestamp_ms, seen.timestamp_ms):
            first_reply[key] = stamped

    cost_of: dict[str, float] = defaultdict(float)
    for record in {c.record_id: c for c in costs}.values():
        if record.event_id in route_of:
            cost_of[record.event_id] += record.cost_usd
        else:
            unmatched["cost records"] += 1
    failures_of: Counter[str] = Counter()
    for failure in {f.failure_id: f for f in failures}.values():
        if failure.event_id in route_of:
            failures_of[failure.event_id] += 1
        else:
            unmatched["validation failures"] += 1

    members: dict[str, list[str]] = defaultdict(list)
    for event_id, route in route_of.items():
        members[route].append(event_id)

    untimed = 0
    rows: list[RouteSummary] = []
    for route in sorted(members, key=lambda r: (r == REFUSED, r.endswith("(pinned)"), r)):
        times: dict[str, list[float]] = {"preliminary": [], "final": []}
        escalations = 0
        for event_id in members[route]:
            for kind, samples in times.items():
                stamped_reply = first_reply.get((event_id, kind))
                if stamped_reply is None:
                    continue
                start, end = event_ms.get(event_id), stamped_reply.timestamp_ms
                if start is None or end is None:
                    untimed += 1
                else:
                    samples.append((end - start) / 1000)
                if kind == "final" and stamped_reply.record.escalated:
                    escalations += 1
        ids = members[route]
        rows.append(
            RouteSummary(
                route=route,
                events=len(ids),
                answered=sum(finals[e] > 0 for e in ids),
                to_preliminary_s=tuple(times["preliminary"]),
                to_final_s=tuple(times["final"]),
                cost_usd=sum(cost_of[e] for e in ids),
                escalations=escalations,
                validation_failures=sum(failures_of[e] for e in ids),
            )
        )

    total = RouteSummary(
        route=TOTAL,
        events=sum(r.events for r in rows),
        answered=sum(r.answered for r in rows),
        to_preliminary_s=tuple(t for r in rows for t in r.to_preliminary_s),
        to_final_s=tuple(t for r in rows for t in r.to_final_s),
        cost_usd=sum(r.cost_usd for r in rows),
        escalations=sum(r.escalations for r in rows),
        validation_failures=sum(r.validation_failures for r in rows),
    )
    return Summary(
        routes=tuple(rows),
        total=total,
        valid_customer_events=len(customer),
        exactly_one_final=sum(finals[e] == 1 for e in customer),
        no_final=sum(finals[e] == 0 for e in customer),
        several_finals=sum(finals[e] > 1 for e in customer),
        unmatched=dict(unmatched),
        untimed=untimed,
    )


def format_seconds(seconds: float) -> str:
    """Milliseconds below a second, so sub-second replies do not all read `0.0s`."""
    if abs(seconds) < 1:
        return f"{seconds * 1000:.0f}ms"
    return f"{seconds:.2f}s" if abs(seconds) < 100 else f"{seconds:.0f}s"


def render_table(summary: Summary) -> str:
    """An aligned text table (no dependency), a totals row and the one-final-reply check."""
    headers = (
        "route",
        "events",
        "answered",
        "prelim p50",
        "prelim p95",
        "final p50",
        "final p95",
        "cost USD",
        "escalated",
        "val. failures",
    )
    body = [_row(route) for route in summary.routes]
    total = _row(summary.total)
    widths = [max(len(row[i]) for row in (headers, *body, total)) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    rule = "-" * len(line(headers))
    lines = [line(headers), rule, *(line(row) for row in body), rule, line(total), ""]
    valid = summary.valid_customer_events
    check = f"check: {summary.exactly_one_final}/{valid} valid customer events have exactly"
    check += " one final reply"
    if summary.exactly_one_final == valid:
        check += " (ok)"
    else:
        check += f" ({summary.no_final} with none, {summary.several_finals} with more than one)"
    lines.append(check)
    if summary.unmatched:
        found = ", ".join(f"{n} {kind}" for kind, n in sorted(summary.unmatched.items()))
        lines.append(f"not matched to any decision (in no row): {found}")
    if summary.untimed:
        lines.append(f"replies without a timestamp to measure (not in p50/p95): {summary.untimed}")
    return "\n".join(lines)


def _row(route: RouteSummary) -> tuple[str, ...]:
    return (
        route.route,
        str(route.events),
        str(route.answered),
        *_quantiles(route.to_preliminary_s),
        *_quantiles(route.to_final_s),
        f"{route.cost_usd:.4f}",
        str(route.escalations),
        str(route.validation_failures),
    )


def _quantiles(samples: Sequence[float]) -> tuple[str, str]:
    if not samples:
        return "-", "-"
    return format_seconds(percentile(samples, 50)), format_seconds(percentile(samples, 95))


def plot_latencies(summary: Summary, path: Path = DEFAULT_PLOT) -> Path:
    """Write a PNG of each route's time-to-reply distributions and return its path.

    One panel per reply kind, an ECDF per route on a log time axis: the spread between
    fast and verified routes is orders of magnitude, and an ECDF shows every sample plus
    p50/p95 (the dotted lines) without binning choices. Rendered with the Agg canvas on a
    standalone Figure, so no GUI backend or pyplot global state is involved.
    """
    figure = Figure(figsize=(12, 5), layout="constrained")
    FigureCanvasAgg(figure)
    panels: tuple[tuple[str, Callable[[RouteSummary], tuple[float, ...]]], ...] = (
        ("preliminary reply (chat, unverified)", lambda route: route.to_preliminary_s),
        ("final reply", lambda route: route.to_final_s),
    )
    axes = figure.subplots(1, 2, sharey=True)
    for ax, (title, samples_of) in zip(axes, panels, strict=True):
        drawn = 0
        for route in summary.routes:
            samples = samples_of(route)
            if not samples:
                continue
            clipped = [max(s, MIN_PLOT_S) for s in samples]
            ax.ecdf(clipped, label=f"{route.route} (n={len(samples)})")
            drawn += 1
        if drawn:
            ax.set_xscale("log")
            # Plain "50 ms" / "2 s" labels on decades only: log-axis minor labels collide.
            ax.xaxis.set_major_formatter(FuncFormatter(_duration_label))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.legend(loc="lower right", fontsize="small")
        else:
            ax.text(0.5, 0.5, "no replies of this kind", ha="center", transform=ax.transAxes)
        for level in (0.5, 0.95):
            ax.axhline(level, color="grey", linestyle=":", linewidth=0.8)
        ax.set_title(f"time to {title}")
        ax.set_xlabel("reply CreateTime - event CreateTime (log scale)")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("fraction of events answered within x (ECDF)")
    figure.suptitle("splitpin demo: time to reply per route, measured on the Kafka topics")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=120)
    return path


def _earliest(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def _before(a: int | None, b: int | None) -> bool:
    """Whether timestamp `a` is earlier than `b`; an unknown time never displaces a known one."""
    if a is None:
        return False
    return b is None or a < b


def _duration_label(seconds: float, _position: float) -> str:
    return f"{seconds * 1000:g} ms" if seconds < 1 else f"{seconds:g} s"


# --- reading the topics back -------------------------------------------------------------


def valid_events(settings: Settings) -> list[Stamped[ConversationEvent]]:
    """The input records the flow accepted, judged by the flow's own ingest.

    The input topic holds malformed records too; re-running ingest on it (rather than a
    looser decode) keeps "valid customer events" equal to what the flow routed.
    """
    events: list[Stamped[ConversationEvent]] = []
    limits = IngestLimits.from_settings(settings)
    for message in read_topic(settings, "events"):
        parsed = parse_event(raw_record(message), limits)
        if isinstance(parsed, ConversationEvent):
            events.append(Stamped(parsed, timestamp_ms(message)))
    return events


def read_topology(
    settings: Settings,
) -> tuple[list[RoutingDecision], list[Stamped[Reply]], list[CostRecord], list[ValidationFailure]]:
    """One topology's outputs (its settings' topic prefix): decisions, timed replies, cost
    records and validation failures."""

    def read(name: str) -> list[Message]:
        return read_topic(settings, name)

    replies = [Stamped(decode(Reply, value(m)), timestamp_ms(m)) for m in read("replies")]
    return (
        [decode(RoutingDecision, value(m)) for m in read("decisions")],
        replies,
        [decode(CostRecord, value(m)) for m in read("metrics")],
        [decode(ValidationFailure, value(m)) for m in read("validation_failures")],
    )


def read_topic(settings: Settings, name: str) -> list[Message]:
    """A logical topic (settings' prefix applied) read to its current end."""
    return read_to_end(
        settings.bootstrap_servers, settings.topic(name), config=client_config(settings)
    )


def value(message: Message) -> bytes:
    return message.value() or b""


def timestamp_ms(message: Message) -> int | None:
    kind, ms = message.timestamp()
    return None if kind == TIMESTAMP_NOT_AVAILABLE else int(ms)


def raw_record(message: Message) -> RawRecord:
    partition, offset = message.partition(), message.offset()
    return RawRecord(
        key=message.key(),
        value=message.value(),
        topic=message.topic() or "",
        partition=partition if partition is not None else -1,
        offset=offset if offset is not None else -1,
        timestamp_ms=timestamp_ms(message),
    )
