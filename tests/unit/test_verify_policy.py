"""`replies.verify`: when a fast answer may stand without the verifier, and the audit sample
that measures how often it should not have.

The guarantees attacked: the audit sample is a pure function of the event id and its share
converges to `audit_fraction`; pinned traffic, unknown confidence and any answer below the
bound are always verified; an answer that skips the verifier releases the budget the
verification reserved.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from splitpin.core import metrics
from splitpin.operators.answering import (
    AnswerOutput,
    CallSpec,
    Dispatch,
    Probability,
    audited,
    calibrated_probability,
    verification_choice,
)
from splitpin.operators.budget import BudgetGate, TenantLedger
from splitpin.providers import calibration
from splitpin.providers.base import Message, ModelResult
from splitpin.schemas.audit_sample import AuditSample
from splitpin.schemas.governance import GovernanceConfig
from splitpin.schemas.metrics import CostRecord
from tests.factories import T0, decision
from tests.routing_helpers import governance
from tests.unit.test_answering import answer, drive, replies
from tests.unit.test_budget import FakeClock, _answered, _cited, _nanos, _say

Mode = Literal["always", "below_confidence", "audit"]
MODES: tuple[Mode, ...] = ("always", "below_confidence", "audit")
ids = st.text(min_size=1, max_size=40)
probabilities = st.floats(min_value=0, max_value=1)


def gov_with(mode: Mode, bound: float = 0.8, fraction: float = 0.5) -> GovernanceConfig:
    return governance(
        replies={
            "verify": mode,
            "verify_min_probability": bound,
            "audit_fraction": fraction,
            "hedging": {"enabled": False},
        }
    )


def dispatch(event_id: str = "e-1", **overrides: Any) -> Dispatch:
    messages = (Message(role="user", content="my card has not arrived"),)
    made = decision(event_id, **overrides)
    return Dispatch(made, messages, "", dispatched_at=T0.timestamp() + 1.0)


def as_is(role: str, confidence: float | None, provider: str) -> float | None:
    """The logic's tests state their bounds on the probability itself: no calibration."""
    return confidence


def run(
    gov: GovernanceConfig,
    confidence: float | None,
    event_id: str = "e-1",
    probability: Probability = as_is,
    **overrides: Any,
) -> tuple[list[AnswerOutput], list[str]]:
    def script(spec: CallSpec) -> ModelResult:
        if spec.purpose == "primary":
            return answer(spec, "InternalDoc-11").model_copy(update={"confidence": confidence})
        return answer(spec, "InternalDoc-11")

    return drive(dispatch(event_id, **overrides), script, gov, probability)


# --- the audit sample -------------------------------------------------------------------


@given(event_id=ids, fraction=probabilities)
def test_the_audit_sample_is_a_function_of_the_event_id(event_id: str, fraction: float) -> None:
    assert audited(event_id, fraction) == audited(event_id, fraction)
    assert not audited(event_id, 0.0) and audited(event_id, 1.0)


@given(event_id=ids, low=probabilities, high=probabilities)
def test_raising_the_fraction_only_adds_events(event_id: str, low: float, high: float) -> None:
    low, high = sorted((low, high))
    assert not audited(event_id, low) or audited(event_id, high)


@settings(max_examples=25, deadline=None)
@given(fraction=st.floats(min_value=0.01, max_value=0.99), prefix=st.text(max_size=8))
def test_the_audit_share_converges_to_the_fraction(fraction: float, prefix: str) -> None:
    n = 4000
    share = sum(audited(f"{prefix}evt-{i}", fraction) for i in range(n)) / n
    sigma = math.sqrt(fraction * (1 - fraction) / n)
    assert abs(share - fraction) <= 5 * sigma + 1e-9, (share, fraction)


def test_the_audit_sample_is_not_the_canary_sample() -> None:
    """Same hash, salted: an id in the canary's sample is not thereby in the audit's."""
    from splitpin.operators.sampling import in_sample

    both = sum(audited(f"c-{i}", 0.5) and in_sample(f"c-{i}", 0.5) for i in range(4000))
    assert 800 < both < 1200  # about a quarter: independent


# --- the choice ------------------------------------------------------------------------


@given(
    mode=st.sampled_from(MODES),
    bound=probabilities,
    fraction=probabilities,
    probability=st.none() | probabilities,
    event_id=ids,
)
def test_pinned_unknown_and_low_are_always_verified(
    mode: Mode, bound: float, fraction: float, probability: float | None, event_id: str
) -> None:
    config = gov_with(mode, bound, fraction).replies
    assert verification_choice(config, event_id, probability, pinned=True) == "verify"
    assert verification_choice(config, event_id, None, pinned=False) == "verify"
    choice = verification_choice(config, event_id, probability, pinned=False)
    if mode == "always" or probability is None or probability < bound:
        assert choice == "verify"
    elif mode == "below_confidence":
        assert choice == "skip"
    else:
        assert choice == ("audit" if audited(event_id, fraction) else "skip")


# --- through the answer policy ------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    mode=st.sampled_from(MODES),
    bound=st.floats(min_value=0.01, max_value=1),
    data=st.data(),
    channel=st.sampled_from(["chat", "email"]),
)
def test_an_answer_below_the_bound_is_always_verified(
    mode: Mode, bound: float, data: st.DataObject, channel: str
) -> None:
    confidence = data.draw(st.floats(min_value=0, max_value=bound, exclude_max=True))
    out, called = run(gov_with(mode, bound, 1.0), confidence, channel=channel)
    assert called == ["primary", "verify"]
    assert replies(out)[-1].route == "verifier" and replies(out)[-1].kind == "final"
    assert not [s for s in out if isinstance(s, AuditSample)]


@settings(max_examples=30, deadline=None)
@given(mode=st.sampled_from(MODES), confidence=st.none() | probabilities, event_id=ids)
def test_a_pinned_event_is_answered_and_verified_by_its_pinned_role(
    mode: Mode, confidence: float | None, event_id: str
) -> None:
    pinned: dict[str, Any] = {"role": "compliance", "pinned": True, "model": "claude-3-5-sonnet"}
    out, called = run(gov_with(mode, 0.0, 1.0), confidence, event_id, **pinned)
    assert called == ["pinned"]
    (only,) = replies(out)
    assert (only.kind, only.status, only.route) == ("final", "verified", "compliance")


def test_unknown_confidence_goes_to_the_verifier_whatever_the_bound() -> None:
    for mode in MODES:
        _, called = run(gov_with(mode, 0.0, 0.0), None)
        assert called == ["primary", "verify"], mode


def test_a_confident_answer_is_final_without_the_verifier() -> None:
    out, called = run(gov_with("below_confidence", 0.8), 0.85)
    assert called == ["primary"]
    (only,) = replies(out)  # no preliminary: the fast answer is the final one
    assert (only.kind, only.revision, only.status, only.route) == ("final", 1, "unverified", "fast")
    (record,) = [r for r in out if isinstance(r, CostRecord)]
    assert record.last_call and record.job_calls == ("primary",)


@pytest.mark.parametrize("raw", [0.5, 0.7, 0.85, 0.95])
def test_the_bound_applies_to_the_calibrated_probability_not_the_raw_confidence(
    raw: float,
) -> None:
    """The shipped policy reads the fast role's fitted map: at the calibrated value the
    answer stands; a hair above it, it is verified, whatever the raw confidence says."""
    calibrated = calibration.probability_right("fast", raw, "local")
    assert calibrated is not None
    _, called = run(
        gov_with("below_confidence", calibrated), raw, probability=calibrated_probability
    )
    assert called == ["primary"]
    if calibrated < 1.0:
        stricter = gov_with("below_confidence", min(1.0, calibrated + 1e-3))
        _, called = run(stricter, raw, probability=calibrated_probability)
        assert called == ["primary", "verify"]


def test_an_audited_answer_is_verified_and_its_agreement_recorded() -> None:
    gov = gov_with("audit", 0.8, 0.5)
    chosen = next(f"e-{n}" for n in range(100) if audited(f"e-{n}", 0.5))
    spared = next(f"e-{n}" for n in range(100) if not audited(f"e-{n}", 0.5))
    out, called = run(gov, 0.95, chosen)
    assert called == ["primary", "verify"]
    (sample,) = [s for s in out if isinstance(s, AuditSample)]
    assert (sample.event_id, sample.agreed, sample.fast_role) == (chosen, True, "fast")
    assert sample.fast_probability == 0.95 and sample.config_version == gov.version_id()
    assert [r.kind for r in replies(out)] == ["preliminary", "final"]
    _, called = run(gov, 0.95, spared)
    assert called == ["primary"]


def test_an_audit_where_the_verifier_cites_another_article_disagrees() -> None:
    chosen = next(f"e-{n}" for n in range(100) if audited(f"e-{n}", 0.5))

    def script(spec: CallSpec) -> ModelResult:
        doc = "InternalDoc-11" if spec.purpose == "primary" else "InternalDoc-12"
        return answer(spec, doc, confidence=0.95)

    out, _ = drive(dispatch(chosen), script, gov_with("audit", 0.8, 0.5), as_is)
    (sample,) = [s for s in out if isinstance(s, AuditSample)]
    assert not sample.agreed
    assert (sample.fast_doc_ids, sample.verifier_doc_ids) == (
        ("InternalDoc-11",),
        ("InternalDoc-12",),
    )
    assert replies(out)[-1].status == "corrected"


# --- the budget ---------------------------------------------------------------------------


def test_a_skipped_verification_releases_its_reservation() -> None:
    """The gate reserved primary + verify + re-route; a fast answer that stands alone
    marks its only record last_call, and the gate keeps only what it cost."""
    gov = governance(
        budgets={"tenants": {"acme-bank": {"limit_usd": 1.0}}, "window_s": 3600},
        replies={
            "verify": "below_confidence",
            "verify_min_probability": 0.5,
            "hedging": {"enabled": False},
        },
    )
    gate = BudgetGate(gov, FakeClock())
    ledger = TenantLedger()
    _, records = _answered(gov, gate, ledger, _say(gov, "where is my card"), _cited)
    (primary,) = records
    (held,) = ledger.reservations.values()
    assert held.open.get("verify", 0) > 0  # the verification was paid for in advance
    assert primary.last_call and primary.job_calls == ("primary",)
    gate.reconcile(ledger, primary)
    assert not ledger.reservations
    window = ledger.spend(gate._roll(ledger))
    assert window.committed == _nanos(records) and window.reserved == 0


# --- the metric ---------------------------------------------------------------------------


@settings(deadline=None)  # each example drives up to 30 jobs: slow on a shared box
@given(outcomes=st.lists(st.booleans(), min_size=1, max_size=30))
def test_the_agreement_gauge_is_the_running_share_agreed(outcomes: list[bool]) -> None:
    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {flag: value("splitpin_audit_total", agreed=flag) for flag in ("true", "false")}
    for agreed in outcomes:
        metrics.observe_audit(agreed)
    after = {flag: value("splitpin_audit_total", agreed=flag) for flag in ("true", "false")}
    assert after["true"] - before["true"] == sum(outcomes)
    assert after["false"] - before["false"] == len(outcomes) - sum(outcomes)
    ratio = after["true"] / (after["true"] + after["false"])
    assert value("splitpin_audit_agreement_ratio") == pytest.approx(ratio)
