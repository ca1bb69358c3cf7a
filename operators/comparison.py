"""Primary versus canary: the figures and the promotion verdict, as plain logic.

Both `splitpin canary report` (a time range read back from the topics) and the live
windows of `splitpin canary watch` reduce each topology's records to one `Outcome` per
event, then call `compare`. Only events both topologies handled are compared (the canary
mirrors a sample of conversations, so the primary's other events are out of scope), and
rows are grouped by the primary's route, so each row sets the two topologies side by side
on the very same events.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from splitpin.core.stats import percentile
from splitpin.schemas.decisions import ModelRole
from splitpin.schemas.governance import PromotionCriteria

OVERALL = "overall"
COMPLIANCE: ModelRole = "compliance"

STATUS_RANK: Mapping[str | None, int] = {
    "verified": 3,
    "corrected": 3,
    "unverified": 2,
    "withheld": 1,
    "refused": 1,
    "clarify": 1,
    None: 0,
}
"""How good a final reply is for the customer: a verified answer beats an unverified one,
which beats none. A canary final ranked below the primary's on a compliance route is a
regression."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """One event as one topology handled it (None where the topology produced no such reply)."""

    event_id: str
    conversation_id: str
    route: str
    """The route label (role, `role (pinned)`, `refused`); rows use the primary's."""
    role: ModelRole
    intent: str | None = None
    refused: bool = False
    overflow: bool = False
    to_first_s: float | None = None
    to_final_s: float | None = None
    final_status: str | None = None
    cited: frozenset[str] = frozenset()
    """doc_ids cited by the final reply: two topologies agree when these are equal."""
    escalated: bool = False
    cost_usd: float = 0.0
    failures: tuple[str, ...] = ()
    """Validation failure errors (e.g. MissingReference), one per failure record."""

    @property
    def answered(self) -> bool:
        return self.final_status is not None


@dataclass(frozen=True, slots=True)
class Label:
    """Gold label of one event: the document that answers it and/or its intent."""

    doc_id: str | None = None
    intent: str | None = None


@dataclass(frozen=True, slots=True)
class Figures:
    """One topology's figures over one group of events."""

    events: int
    conversations: int
    answered: int
    first_p50_s: float | None
    first_p95_s: float | None
    final_p50_s: float | None
    final_p95_s: float | None
    cost_usd: float
    escalations: int
    refusals: int
    overflows: int
    failures: dict[str, int]
    doc_accuracy: float | None
    intent_accuracy: float | None

    @property
    def cost_per_conversation(self) -> float:
        return self.cost_usd / self.conversations if self.conversations else 0.0

    @property
    def escalation_rate(self) -> float:
        return self.escalations / self.answered if self.answered else 0.0


@dataclass(frozen=True, slots=True)
class RouteComparison:
    route: str
    primary: Figures
    canary: Figures
    compared: int
    """Events with a final reply from both topologies (the agreement's denominator)."""
    agreeing: int
    compliance_regressions: int

    @property
    def agreement(self) -> float | None:
        return self.agreeing / self.compared if self.compared else None

    @property
    def p95_ratio(self) -> float | None:
        return ratio(self.canary.final_p95_s, self.primary.final_p95_s)

    @property
    def cost_ratio(self) -> float | None:
        return ratio(self.canary.cost_per_conversation, self.primary.cost_per_conversation)


@dataclass(frozen=True, slots=True)
class Check:
    """One promotion criterion against its figure; `value` None means not measurable."""

    criterion: str
    value: float | None
    bound: float
    op: Literal[">=", "<="]

    @property
    def passed(self) -> bool:
        if self.value is None:
            return False
        return self.value >= self.bound if self.op == ">=" else self.value <= self.bound

    def describe(self) -> str:
        shown = "n/a" if self.value is None else f"{self.value:.3g}"
        return f"{self.criterion} {shown} (needs {self.op} {self.bound:g})"


@dataclass(frozen=True, slots=True)
class Comparison:
    routes: tuple[RouteComparison, ...]
    overall: RouteComparison
    checks: tuple[Check, ...]
    only_primary: int = 0
    """Events of sampled conversations the primary handled and the canary did not (yet)."""
    only_canary: int = 0
    labelled: int = 0

    @property
    def promote(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def verdict(self) -> Literal["PROMOTE", "HOLD"]:
        return "PROMOTE" if self.promote else "HOLD"

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(check for check in self.checks if not check.passed)


def ratio(canary: float | None, primary: float | None) -> float | None:
    """canary / primary; equal zeros are 1 (no change), a rise from zero is infinite."""
    if canary is None or primary is None:
        return None
    if primary == 0:
        return 1.0 if canary == 0 else math.inf
    return canary / primary


def compare(
    primary: Mapping[str, Outcome],
    canary: Mapping[str, Outcome],
    criteria: PromotionCriteria,
    labels: Mapping[str, Label] | None = None,
) -> Comparison:
    """Join on event_id (= reply_id), group by the primary's route, check the criteria.

    Scope: events of the conversations the canary mirrored that both topologies handled.
    """
    sampled = {outcome.conversation_id for outcome in canary.values()}
    in_sample = {e for e, o in primary.items() if o.conversation_id in sampled}
    scope = sorted(in_sample & canary.keys())
    labels = labels or {}
    groups: dict[str, list[str]] = defaultdict(list)
    for event_id in scope:
        groups[primary[event_id].route].append(event_id)
    routes = tuple(
        _route(route, groups[route], primary, canary, labels)
        for route in sorted(groups, key=lambda r: (r.endswith("(pinned)"), r))
    )
    overall = _route(OVERALL, scope, primary, canary, labels)
    return Comparison(
        routes=routes,
        overall=overall,
        checks=checks(overall, criteria, labelled=any(e in labels for e in scope)),
        only_primary=len(in_sample - canary.keys()),
        only_canary=len(canary.keys() - primary.keys()),
        labelled=sum(e in labels for e in scope),
    )


def checks(
    overall: RouteComparison, criteria: PromotionCriteria, *, labelled: bool
) -> tuple[Check, ...]:
    """The governance config's promotion criteria against the overall row."""
    found: list[Check] = [
        Check("compared replies", overall.compared, criteria.min_compared_replies, ">="),
        Check("agreement", overall.agreement, criteria.min_agreement, ">="),
        Check("final p95 ratio", overall.p95_ratio, criteria.max_p95_ratio, "<="),
        Check("cost/conversation ratio", overall.cost_ratio, criteria.max_cost_ratio, "<="),
        Check(
            "compliance regressions",
            overall.compliance_regressions,
            criteria.compliance_regressions_allowed,
            "<=",
        ),
    ]
    if labelled:
        for name in ("doc_accuracy", "intent_accuracy"):
            before = getattr(overall.primary, name)
            after = getattr(overall.canary, name)
            if before is None or after is None:
                continue
            drop = max(before - after, 0.0)
            found.append(
                Check(f"{name.replace('_', ' ')} drop", drop, criteria.max_accuracy_drop, "<=")
            )
    return tuple(found)


def _route(
    route: str,
    event_ids: Sequence[str],
    primary: Mapping[str, Outcome],
    canary: Mapping[str, Outcome],
    labels: Mapping[str, Label],
) -> RouteComparison:
    compared = agreeing = regressions = 0
    for event_id in event_ids:
        before, after = primary[event_id], canary[event_id]
        if before.answered and after.answered:
            compared += 1
            agreeing += before.cited == after.cited
        if before.role == COMPLIANCE and _regressed(before, after, labels.get(event_id)):
            regressions += 1
    return RouteComparison(
        route=route,
        primary=figures([primary[e] for e in event_ids], labels),
        canary=figures([canary[e] for e in event_ids], labels),
        compared=compared,
        agreeing=agreeing,
        compliance_regressions=regressions,
    )


def _regressed(before: Outcome, after: Outcome, label: Label | None) -> bool:
    """A compliance event the canary handles worse: off the compliance role (a lifted pin),
    a lower-ranked final, or a wrong gold document where the primary's was right."""
    if after.role != COMPLIANCE:
        return True
    if STATUS_RANK[after.final_status] < STATUS_RANK[before.final_status]:
        return True
    if label is not None and label.doc_id is not None:
        return label.doc_id in before.cited and label.doc_id not in after.cited
    return False


def figures(outcomes: Sequence[Outcome], labels: Mapping[str, Label]) -> Figures:
    """Latencies over the replies that exist; rates over answered events; accuracy over
    labelled events (an unanswered labelled event counts as wrong)."""
    first = [o.to_first_s for o in outcomes if o.to_first_s is not None]
    final = [o.to_final_s for o in outcomes if o.to_final_s is not None]
    failures: Counter[str] = Counter(error for o in outcomes for error in o.failures)
    doc_labelled = [(o, labels[o.event_id]) for o in outcomes if _has(labels, o, "doc_id")]
    intent_labelled = [(o, labels[o.event_id]) for o in outcomes if _has(labels, o, "intent")]
    return Figures(
        events=len(outcomes),
        conversations=len({o.conversation_id for o in outcomes}),
        answered=sum(o.answered for o in outcomes),
        first_p50_s=_quantile(first, 50),
        first_p95_s=_quantile(first, 95),
        final_p50_s=_quantile(final, 50),
        final_p95_s=_quantile(final, 95),
        cost_usd=math.fsum(o.cost_usd for o in outcomes),
        escalations=sum(o.escalated for o in outcomes if o.answered),
        refusals=sum(o.refused for o in outcomes),
        overflows=sum(o.overflow for o in outcomes),
        failures=dict(sorted(failures.items())),
        doc_accuracy=_share(o.answered and lab.doc_id in o.cited for o, lab in doc_labelled),
        intent_accuracy=_share(o.intent == lab.intent for o, lab in intent_labelled),
    )


def _has(labels: Mapping[str, Label], outcome: Outcome, name: str) -> bool:
    label = labels.get(outcome.event_id)
    return label is not None and getattr(label, name) is not None


def _share(hits: Iterable[bool]) -> float | None:
    values = list(hits)
    return sum(values) / len(values) if values else None


def _quantile(samples: Sequence[float], q: float) -> float | None:
    return percentile(samples, q) if samples else None


# --- live windows ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WindowSummary:
    """One closed window of a live mirror: the record on `canary.comparison`."""

    window_start_ms: int
    window_end_ms: int
    comparison: Comparison


@dataclass(slots=True)
class ComparisonWindows:
    """Tumbling windows over the two reply streams of a long mirror.

    An event belongs to the window of the first reply seen for it (from either side). The
    watermark is the lower of the two sides' newest timestamps, so a backlog read faster
    on one topic than the other closes nothing early; a window closes once the watermark
    passes its end by `grace_ms` (the slower topology's reply can still join), then it is
    compared and dropped. An outcome may be replaced (a later final) until it closes;
    one arriving for a closed window is dropped.
    """

    window_ms: int
    grace_ms: int
    criteria: PromotionCriteria
    _window_of: dict[str, int] = field(default_factory=dict)
    _sides: dict[int, tuple[dict[str, Outcome], dict[str, Outcome]]] = field(default_factory=dict)
    _newest_ms: dict[str, int] = field(default_factory=dict)

    @property
    def watermark_ms(self) -> int:
        """Both sides have been read up to here (-1 until each side has a reply)."""
        if len(self._newest_ms) < 2:
            return -1
        return min(self._newest_ms.values())

    def add(self, side: Literal["primary", "canary"], outcome: Outcome, at_ms: int) -> None:
        """Record an outcome seen at Kafka time `at_ms`; too-late ones (window closed) are
        dropped."""
        self._newest_ms[side] = max(self._newest_ms.get(side, at_ms), at_ms)
        start = self._window_of.get(outcome.event_id, at_ms - at_ms % self.window_ms)
        closed = start + self.window_ms + self.grace_ms <= self.watermark_ms
        if closed and start not in self._sides:
            return
        self._window_of[outcome.event_id] = start
        primary, canary = self._sides.setdefault(start, ({}, {}))
        (primary if side == "primary" else canary)[outcome.event_id] = outcome

    def close(self, *, flush: bool = False) -> list[WindowSummary]:
        """Compare and drop every window the watermark has passed (every one when flushing)."""
        done: list[WindowSummary] = []
        for start in sorted(self._sides):
            end = start + self.window_ms
            if not flush and end + self.grace_ms > self.watermark_ms:
                break
            primary, canary = self._sides.pop(start)
            for event_id in (*primary, *canary):
                self._window_of.pop(event_id, None)
            done.append(WindowSummary(start, end, compare(primary, canary, self.criteria)))
        return done
