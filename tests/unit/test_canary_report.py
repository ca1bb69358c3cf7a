"""The canary comparison: figures checked against a hand computation, verdicts that flip.

The fixture (tests/data/canary_fixture) is five events of four sampled conversations plus
one unsampled event, as the primary and the canary recorded them; every figure asserted
below is worked out by hand in the comments from those records.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitpin.app.canary_report import load_labels, outcomes, render, to_json
from splitpin.app.report import Stamped
from splitpin.operators.comparison import (
    Comparison,
    ComparisonWindows,
    Label,
    Outcome,
    compare,
)
from splitpin.schemas import decode
from splitpin.schemas.decisions import ModelRole, RoutingDecision
from splitpin.schemas.governance import PromotionCriteria
from splitpin.schemas.metrics import CostRecord
from splitpin.schemas.replies import Reply
from splitpin.schemas.validation import ValidationFailure

FIXTURE = Path(__file__).parent.parent / "data" / "canary_fixture"
DEFAULTS = PromotionCriteria()


def _lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _side(name: str) -> dict[str, Outcome]:
    folder = FIXTURE / name
    event_ms = {row["event_id"]: row["timestamp_ms"] for row in _lines(FIXTURE / "events.jsonl")}
    return outcomes(
        [RoutingDecision.model_validate(r) for r in _lines(folder / "decisions.jsonl")],
        [
            Stamped(decode(Reply, orjson.dumps(r["record"])), r["timestamp_ms"])
            for r in _lines(folder / "replies.jsonl")
        ],
        [CostRecord.model_validate(r) for r in _lines(folder / "metrics.jsonl")],
        [ValidationFailure.model_validate(r) for r in _lines(folder / "validation-failures.jsonl")],
        event_ms,
    )


@pytest.fixture(scope="module")
def fixture_comparison() -> Comparison:
    return compare(
        _side("primary"), _side("canary"), DEFAULTS, load_labels(FIXTURE / "labels.jsonl")
    )


def test_scope_is_the_sampled_conversations(fixture_comparison: Comparison) -> None:
    # The canary mirrored c1..c4 (e1..e5); the primary's e9 (conversation c9) is out of scope.
    overall = fixture_comparison.overall
    assert overall.primary.events == overall.canary.events == 5
    assert overall.primary.conversations == 4
    assert (fixture_comparison.only_primary, fixture_comparison.only_canary) == (0, 0)
    # Rows by the primary's route: e1-e3 fast, e5 refused, e4 compliance (pinned).
    rows = {r.route: r.primary.events for r in fixture_comparison.routes}
    assert rows == {"fast": 3, "refused": 1, "compliance (pinned)": 1}


def test_overall_figures_match_the_hand_computation(fixture_comparison: Comparison) -> None:
    overall = fixture_comparison.overall
    p, c = overall.primary, overall.canary
    # Agreement: all five have a final on both sides; e1 {kb-1}={kb-1}, e2 {kb-2}!={kb-1},
    # e3 {kb-3,kb-4} in either order, e4 {kb-9}, e5 refused on both ({}={}) -> 4/5.
    assert (overall.compared, overall.agreeing) == (5, 4)
    # Final: event at 1000/2000/3000/4000/5000 ms; primary finals at 1800/3000/3500/6000/
    # 5010 -> [0.8, 1.0, 0.5, 2.0, 0.01] s, sorted [0.01, 0.5, 0.8, 1.0, 2.0]:
    # p50 0.8, p95 at rank 3.8 = 1.0 + 0.8 * (2.0 - 1.0) = 1.8.
    assert p.final_p50_s == pytest.approx(0.8)
    assert p.final_p95_s == pytest.approx(1.8)
    # Canary finals 1500/3500/3200/5000 (the duplicate e4 final counts once)/5020 ->
    # sorted [0.02, 0.2, 0.5, 1.0, 1.5]: p50 0.5, p95 1.0 + 0.8 * 0.5 = 1.4.
    assert c.final_p50_s == pytest.approx(0.5)
    assert c.final_p95_s == pytest.approx(1.4)
    assert overall.p95_ratio == pytest.approx(1.4 / 1.8)
    # First reply (any kind): primary [0.2, 0.1, 0.5, 2.0, 0.01] -> p50 0.2,
    # p95 0.5 + 0.8 * 1.5 = 1.7; canary [0.1, 0.3, 0.2, 1.0, 0.02] -> p50 0.2, p95 0.86.
    assert p.first_p50_s == pytest.approx(0.2)
    assert p.first_p95_s == pytest.approx(1.7)
    assert c.first_p50_s == pytest.approx(0.2)
    assert c.first_p95_s == pytest.approx(0.86)
    # Cost: primary 0.011 + 0.002 + 0.003 + 0.020 (e9's 0.5 is out of scope) = 0.036 over
    # 4 conversations; canary 0.0005 + 0.001 (e2's record twice: one record_id)
    # + 0.0015 + 0.020 = 0.023.
    assert p.cost_usd == pytest.approx(0.036)
    assert p.cost_per_conversation == pytest.approx(0.009)
    assert c.cost_per_conversation == pytest.approx(0.00575)
    assert overall.cost_ratio == pytest.approx(0.023 / 0.036)
    # Escalation: primary's e1 final says escalated -> 1 of 5 answered; canary none.
    assert p.escalation_rate == pytest.approx(0.2)
    assert c.escalation_rate == 0.0
    # e5: refused on both, with a ContextOverflow reason and failure.
    assert (p.refusals, c.refusals, p.overflows, c.overflows) == (1, 1, 1, 1)
    assert p.failures == {"ContextOverflow": 1}
    assert c.failures == {"ContextOverflow": 1, "MissingReference": 1}
    # Gold docs e1 kb-1, e2 kb-2, e4 kb-9: primary 3/3; canary misses e2 -> 2/3.
    # Gold intents e1 card_arrival, e2 lost_card: primary 2/2; canary says card_arrival
    # for e2 -> 1/2.
    assert p.doc_accuracy == 1.0
    assert c.doc_accuracy == pytest.approx(2 / 3)
    assert (p.intent_accuracy, c.intent_accuracy) == (1.0, 0.5)
    # e4 (compliance): the canary's final is unverified where the primary's was verified.
    assert overall.compliance_regressions == 1


def test_route_rows_match_the_hand_computation(fixture_comparison: Comparison) -> None:
    fast = next(r for r in fixture_comparison.routes if r.route == "fast")
    # e1, e2, e3: agreement 2/3; primary finals sorted [0.5, 0.8, 1.0] -> p95 at rank 1.9
    # = 0.8 + 0.9 * 0.2 = 0.98; canary [0.2, 0.5, 1.5] -> 0.5 + 0.9 * 1.0 = 1.4.
    assert fast.agreement == pytest.approx(2 / 3)
    assert fast.primary.final_p95_s == pytest.approx(0.98)
    assert fast.canary.final_p95_s == pytest.approx(1.4)
    # Costs over c1, c2: primary 0.016 / 2, canary 0.003 / 2.
    assert fast.primary.cost_per_conversation == pytest.approx(0.008)
    assert fast.canary.cost_per_conversation == pytest.approx(0.0015)
    assert fast.compliance_regressions == 0


def test_default_criteria_hold_and_name_every_failed_one(
    fixture_comparison: Comparison,
) -> None:
    assert fixture_comparison.verdict == "HOLD"
    assert [c.criterion for c in fixture_comparison.failed] == [
        "compared replies",  # 5 < 20
        "agreement",  # 0.8 < 0.9
        "compliance regressions",  # 1 > 0
        "doc accuracy drop",  # 1/3 > 0
        "intent accuracy drop",  # 1/2 > 0
    ]
    text = render(fixture_comparison)
    assert "verdict: HOLD (failed: compared replies, agreement, compliance regressions" in text
    data = to_json(fixture_comparison)
    assert data["verdict"] == "HOLD"
    assert data["overall"]["agreement"] == pytest.approx(0.8)
    orjson.dumps(data)  # JSON-ready: no infinities, no custom types


def test_the_verdict_flips_at_each_bound() -> None:
    primary, canary = _side("primary"), _side("canary")
    labels = load_labels(FIXTURE / "labels.jsonl")
    # Each bound at (counts, shares) or just past (ratios 0.778 and 0.639) the fixture's
    # figure: every check passes, the count and share bounds being inclusive.
    lenient = PromotionCriteria(
        min_compared_replies=5,
        min_agreement=0.8,
        max_p95_ratio=0.78,
        max_cost_ratio=0.64,
        compliance_regressions_allowed=1,
        max_accuracy_drop=0.5,
    )
    assert compare(primary, canary, lenient, labels).verdict == "PROMOTE"
    crossings: dict[str, dict[str, float]] = {
        "compared replies": {"min_compared_replies": 6},
        "agreement": {"min_agreement": 0.81},
        "final p95 ratio": {"max_p95_ratio": 0.77},
        "cost/conversation ratio": {"max_cost_ratio": 0.63},
        "compliance regressions": {"compliance_regressions_allowed": 0},
    }
    for criterion, change in crossings.items():
        stricter = lenient.model_copy(update=change)
        result = compare(primary, canary, stricter, labels)
        assert result.verdict == "HOLD"
        assert [c.criterion for c in result.failed] == [criterion]
    # Accuracy drops: doc 1/3 and intent 1/2 -> a bound of 0.4 fails only the intent one.
    result = compare(primary, canary, lenient.model_copy(update={"max_accuracy_drop": 0.4}), labels)
    assert [c.criterion for c in result.failed] == ["intent accuracy drop"]
    # Without labels there is no accuracy criterion at all.
    assert all("accuracy" not in c.criterion for c in compare(primary, canary, lenient).checks)


# --- properties over generated outcomes ----------------------------------------------------

ROLES = ("fast", "long_context", "compliance")
STATUSES = ("verified", "unverified", "withheld", "refused", None)


@st.composite
def outcome_pairs(draw: st.DrawFn) -> tuple[dict[str, Outcome], dict[str, Outcome]]:
    n = draw(st.integers(1, 12))
    primary: dict[str, Outcome] = {}
    canary: dict[str, Outcome] = {}
    for i in range(n):
        conversation = f"c{draw(st.integers(0, 4))}"
        role = draw(st.sampled_from(ROLES))
        for side in (primary, canary):
            status = draw(st.sampled_from(STATUSES))
            side[f"e{i}"] = Outcome(
                event_id=f"e{i}",
                conversation_id=conversation,
                route=role,
                role=draw(st.sampled_from((role, "fast"))),
                to_final_s=None if status is None else draw(st.floats(0, 30)),
                final_status=status,
                cited=frozenset(draw(st.sets(st.sampled_from("abc"), max_size=2))),
                cost_usd=draw(st.floats(0, 1)),
            )
    return primary, canary


@settings(max_examples=200, deadline=None)
@given(pair=outcome_pairs(), which=st.integers(0, 4))
def test_bounds_at_the_measured_figures_promote_and_any_tightening_holds(
    pair: tuple[dict[str, Outcome], dict[str, Outcome]], which: int
) -> None:
    primary, canary = pair
    overall = compare(primary, canary, DEFAULTS).overall
    if overall.compared == 0 or overall.p95_ratio is None or overall.cost_ratio is None:
        return
    if not (math.isfinite(overall.p95_ratio) and math.isfinite(overall.cost_ratio)):
        return
    assert overall.agreement is not None
    exact = PromotionCriteria(
        min_compared_replies=overall.compared,
        min_agreement=overall.agreement,
        max_p95_ratio=max(overall.p95_ratio, 1e-9),
        max_cost_ratio=max(overall.cost_ratio, 1e-9),
        compliance_regressions_allowed=overall.compliance_regressions,
    )
    assert compare(primary, canary, exact).verdict == "PROMOTE"
    tighter: list[tuple[str, dict[str, float]]] = [
        ("compared replies", {"min_compared_replies": overall.compared + 1}),
        ("agreement", {"min_agreement": min(overall.agreement + 1e-6, 1.0)}),
        ("final p95 ratio", {"max_p95_ratio": overall.p95_ratio * (1 - 1e-6)}),
        ("cost/conversation ratio", {"max_cost_ratio": overall.cost_ratio * (1 - 1e-6)}),
        ("compliance regressions", {"compliance_regressions_allowed": -1}),
    ]
    criterion, change = tighter[which]
    if criterion == "agreement" and overall.agreement == 1.0:
        return
    if criterion.endswith("ratio") and next(iter(change.values())) <= 0:
        return
    if criterion == "compliance regressions":
        if overall.compliance_regressions == 0:
            return
        change = {"compliance_regressions_allowed": overall.compliance_regressions - 1}
    result = compare(primary, canary, exact.model_copy(update=change))
    assert [c.criterion for c in result.failed] == [criterion]


@settings(max_examples=100, deadline=None)
@given(pair=outcome_pairs())
def test_rows_partition_the_overall(
    pair: tuple[dict[str, Outcome], dict[str, Outcome]],
) -> None:
    result = compare(*pair, DEFAULTS)
    assert sum(r.primary.events for r in result.routes) == result.overall.primary.events
    assert sum(r.compared for r in result.routes) == result.overall.compared
    assert sum(r.agreeing for r in result.routes) == result.overall.agreeing
    assert math.fsum(r.canary.cost_usd for r in result.routes) == pytest.approx(
        result.overall.canary.cost_usd
    )


def test_compliance_regressions_count_lifted_pins_and_worse_finals() -> None:
    def outcome(role: ModelRole, status: str | None, cited: str = "a") -> Outcome:
        return Outcome("e", "c", "compliance", role, final_status=status, cited=frozenset(cited))

    def regressions(before: Outcome, after: Outcome, label: Label | None = None) -> int:
        labels = {"e": label} if label else None
        return compare({"e": before}, {"e": after}, DEFAULTS, labels).overall.compliance_regressions

    verified = outcome("compliance", "verified")
    assert regressions(verified, outcome("fast", "verified")) == 1  # the pin was lifted
    assert regressions(verified, outcome("compliance", "withheld")) == 1
    assert regressions(verified, outcome("compliance", None)) == 1
    assert regressions(verified, outcome("compliance", "corrected")) == 0
    assert regressions(outcome("compliance", "withheld"), outcome("compliance", "verified")) == 0
    wrong = outcome("compliance", "verified", cited="b")
    assert regressions(verified, wrong, Label(doc_id="a")) == 1
    assert regressions(verified, wrong) == 0


# --- live windows --------------------------------------------------------------------------


def test_windows_compare_what_closed_and_drop_late_outcomes() -> None:
    windows = ComparisonWindows(window_ms=1000, grace_ms=500, criteria=DEFAULTS)

    def outcome(event_id: str, cited: str) -> Outcome:
        return Outcome(event_id, f"c-{event_id}", "fast", "fast", final_status="verified",
                       cited=frozenset(cited), to_final_s=1.0)  # fmt: skip

    windows.add("primary", outcome("e1", "a"), 100)
    windows.add("canary", outcome("e1", "a"), 900)
    windows.add("primary", outcome("e2", "a"), 400)
    windows.add("canary", outcome("e2", "b"), 1400)  # joins e2's window (0..1000) in grace
    windows.add("primary", outcome("e3", "a"), 5000)
    # A backlog read faster on the primary's topic closes nothing: the canary is at 1400.
    assert windows.watermark_ms == 1400
    assert windows.close() == []
    windows.add("canary", outcome("e3", "a"), 5100)  # both past 1000 + 500 grace
    [closed] = windows.close()
    assert (closed.window_start_ms, closed.window_end_ms) == (0, 1000)
    assert (closed.comparison.overall.compared, closed.comparison.overall.agreeing) == (2, 1)
    windows.add("canary", outcome("e4", "a"), 200)  # its window closed: dropped
    [last] = windows.close(flush=True)
    assert last.window_start_ms == 5000
    assert last.comparison.overall.compared == 1
    assert last.comparison.overall.agreement == 1.0
    assert windows.close(flush=True) == []  # e4 went nowhere
