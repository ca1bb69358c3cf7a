"""The verification policy weighs the router's agreement (`replies.verify_evidence`).

Attacked: a local fast answer that cites the article of the router's intent is judged by
the agreement map, so whether it skips the verifier is monotone in the router's probability
and in the answer's own confidence; pinned traffic is never skipped whatever the evidence;
an answer citing another article, an unknown confidence, a remote provider, a tenant whose
KB lacks the intent's article, or `verify_evidence: fast` fall back to the old inputs; the
audit sample of agreeing answers keeps its binomial share.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from splitpin.operators.answering import (
    AnswerOutput,
    AnswerPolicy,
    CallOutcome,
    CallSpec,
    Dispatch,
    calibrated_given_router,
    verification_choice,
)
from splitpin.providers import calibration
from splitpin.providers.base import Message, ModelResult
from splitpin.schemas.audit_sample import AuditSample
from splitpin.schemas.governance import GovernanceConfig
from tests.factories import T0, decision
from tests.routing_helpers import governance
from tests.unit.test_answering import SOURCES, _unused, answer, replies

INTENT = "card_arrival"
ARTICLE = "InternalDoc-11"
OTHER = "InternalDoc-12"
DOCS = tuple(doc.doc_id for doc in SOURCES)
unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


def gov_with(
    mode: str = "below_confidence", bound: float = 0.9, fraction: float = 0.0, **more: Any
) -> GovernanceConfig:
    replies_config = {
        "verify": mode,
        "verify_min_probability": bound,
        "audit_fraction": fraction,
        **more,
    }
    return governance(replies=replies_config)


def articles(tenant_id: str, intent: str) -> str | None:
    return ARTICLE if intent == INTENT else None


def run(
    gov: GovernanceConfig,
    *,
    cites: str,
    confidence: float | None,
    router: float | None,
    event_id: str = "e-1",
    provider: str = "local",
    intent_article: Any = articles,
    spy: Any = None,
    **overrides: Any,
) -> tuple[list[AnswerOutput], list[str]]:
    """The shipped policy (packaged calibration) with the gateway's article lookup."""
    policy = AnswerPolicy(
        gov,
        runner=_unused,
        clock=lambda: T0.timestamp() + 2.0,
        intent_article=intent_article,
    )
    made = decision(event_id, intent=INTENT, confidence=router, **overrides)
    messages = (Message(role="user", content="my card has not arrived"),)
    job, step = policy.open(Dispatch(made, messages, "", dispatched_at=T0.timestamp() + 1.0))
    emitted: list[AnswerOutput] = list(step.emit)
    called: list[str] = []
    queue = list(step.calls)
    while queue:
        call_id, spec = queue.pop(0)
        called.append(call_id)
        if spy is not None:
            spy(spec)
        result: ModelResult = answer(spec, cites if call_id == "primary" else ARTICLE)
        if call_id == "primary":
            result = result.model_copy(update={"confidence": confidence, "provider": provider})
        sources = spec.sources if spec.sources is not None else SOURCES
        step = policy.advance(job, call_id, CallOutcome(spec.request(sources), result))
        emitted.extend(step.emit)
        queue.extend(step.calls)
    assert step.done
    return emitted, called


@settings(max_examples=200, deadline=None)
@given(c1=unit, c2=unit, r1=unit, r2=unit, agree=st.booleans(), bound=unit)
def test_skipping_is_monotone_in_each_probability(
    c1: float, c2: float, r1: float, r2: float, agree: bool, bound: float
) -> None:
    """More confidence or a surer router never turns a skip back into a verification."""
    config = gov_with(bound=bound).replies
    low = calibrated_given_router(min(c1, c2), min(r1, r2), agree)
    high = calibrated_given_router(max(c1, c2), max(r1, r2), agree)
    assert low is not None and high is not None and low <= high
    if verification_choice(config, "e", low, pinned=False) == "skip":
        assert verification_choice(config, "e", high, pinned=False) == "skip"


def test_agreeing_with_a_sure_router_lets_a_modest_fast_answer_stand() -> None:
    """The case the map is for: raw 0.6 alone is far below 0.9 (the fast map alone says
    so), but the router is sure and the answer cites its intent's article."""
    alone = calibration.probability_right("fast", 0.6)
    assert alone is not None and alone < 0.9
    out, called = run(gov_with(), cites=ARTICLE, confidence=0.6, router=0.99)
    assert called == ["primary"]
    (only,) = replies(out)
    assert (only.kind, only.status, only.route) == ("final", "unverified", "fast")


def test_every_fallback_is_verified() -> None:
    """Same modest answer, without the agreement: each path goes to the verifier."""
    cases: list[dict[str, Any]] = [
        {"cites": OTHER, "confidence": 0.6, "router": 0.99},  # cites another article
        {"cites": ARTICLE, "confidence": None, "router": 0.99},  # unknown confidence
        {"cites": ARTICLE, "confidence": 0.6, "router": None},  # router unknown: fast map
        {"cites": ARTICLE, "confidence": 0.6, "router": 0.99, "intent_article": None},
        {"cites": ARTICLE, "confidence": 0.6, "router": 0.99, "provider": "anthropic"},
        {"cites": ARTICLE, "confidence": 0.6, "router": 0.99, "intent_article": lambda t, i: None},
    ]
    for case in cases:
        _, called = run(gov_with(), **case)
        assert called == ["primary", "verify"], case
    fast_only = governance(
        replies={
            "verify": "below_confidence",
            "verify_min_probability": 0.9,
            "audit_fraction": 0.0,
            "verify_evidence": "fast",
        },
        knowledge={"intent_sure_min_confidence": None},  # else refused: see below
    )
    _, called = run(fast_only, cites=ARTICLE, confidence=0.6, router=0.99)
    assert called == ["primary", "verify"]


@pytest.mark.parametrize("verify", ["below_confidence", "audit"])
def test_a_narrowed_answer_cannot_be_judged_on_its_own_confidence(verify: str) -> None:
    """One article attached: the fast responder has no runner-up, its confidence is ~1
    whatever it says. A policy letting such answers stand on that alone is refused at
    start-up, naming the field; with the router's map, or verifying always, it loads."""
    with pytest.raises(ValidationError, match=r"knowledge\.intent_sure_min_confidence"):
        governance(replies={"verify": verify, "verify_evidence": "fast"})
    governance(replies={"verify": "always", "verify_evidence": "fast"})
    governance(replies={"verify": verify, "verify_evidence": "fast_and_router"})


@settings(max_examples=30, deadline=None)
@given(
    confidence=st.none() | unit,
    router=st.none() | unit,
    mode=st.sampled_from(["below_confidence", "audit"]),
)
def test_pinned_is_never_skipped_whatever_the_evidence(
    confidence: float | None, router: float | None, mode: str
) -> None:
    pinned: dict[str, Any] = {"role": "compliance", "pinned": True, "model": "claude-3-5-sonnet"}
    out, called = run(
        gov_with(mode, bound=0.0, fraction=0.0),
        cites=ARTICLE,
        confidence=confidence,
        router=router,
        **pinned,
    )
    assert called == ["pinned"]
    (only,) = replies(out)
    assert (only.status, only.route) == ("verified", "compliance")


def test_the_audit_share_of_agreeing_answers_is_binomial() -> None:
    """Audit mode over agreeing, confident answers: about `fraction` are still verified
    (and sampled), the rest stand; within 4 sigma of the binomial share."""
    n, fraction = 300, 0.2
    gov = gov_with("audit", fraction=fraction)
    audited = 0
    for i in range(n):
        out, called = run(gov, cites=ARTICLE, confidence=0.6, router=0.99, event_id=f"ev-{i}")
        samples = [s for s in out if isinstance(s, AuditSample)]
        assert called in (["primary"], ["primary", "verify"])
        assert len(samples) == (called == ["primary", "verify"])
        audited += len(samples)
    sigma = math.sqrt(fraction * (1 - fraction) / n)
    assert abs(audited / n - fraction) <= 4 * sigma


@settings(max_examples=40, deadline=None)
@given(others=st.none() | st.integers(min_value=0, max_value=4), cites=st.sampled_from(DOCS))
def test_the_verifier_gets_the_drafts_articles_the_intents_and_n_others(
    others: int | None, cites: str
) -> None:
    """`replies.verifier_other_sources`: the articles to choose among are never dropped,
    at most n others join them, the attached order is kept; None: every source."""
    seen: list[CallSpec] = []
    gov = gov_with("always", verifier_other_sources=others)
    # Under knowledge.intent_sure_min_confidence: the draft's own sources are trimmed (a
    # narrowed draft's verifier searches again, tests/unit/test_intent_sure_sources.py).
    run(gov, cites=cites, confidence=0.6, router=0.7, spy=seen.append)
    (verify,) = [spec for spec in seen if spec.purpose == "verify"]
    assert verify.sources is not None
    got = [doc.doc_id for doc in verify.sources]
    if others is None:
        assert got == list(DOCS)
        return
    must = {cites, ARTICLE}
    assert must <= set(got)
    assert len(set(got) - must) == min(others, len(set(DOCS) - must))
    assert got == [d for d in DOCS if d in got]
