"""The two-phase reply policy, driven call by call with scripted model results."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from splitpin.operators.answering import (
    AnswerOutput,
    AnswerPolicy,
    CallOutcome,
    CallSpec,
    Dispatch,
    Escalation,
    Probability,
    ReplyTiming,
    calibrated_probability,
)
from splitpin.operators.model_calls import CallFailed
from splitpin.providers.base import CONFIRM, Message, ModelResult, SourceDoc, Usage
from splitpin.schemas.governance import GovernanceConfig
from splitpin.schemas.metrics import CostRecord
from splitpin.schemas.replies import Citation, Reply
from splitpin.schemas.validation import ValidationFailure
from tests.factories import T0, decision
from tests.routing_helpers import VERIFY_EVERY_ANSWER, governance

GOV = governance(replies=VERIFY_EVERY_ANSWER)
SOURCES = tuple(
    SourceDoc(
        doc_id=f"InternalDoc-{n}",
        title=f"Article {n}",
        text="text",
        source=f"kb:banking77/InternalDoc-{n}",
        score=0.9 - n / 100,
    )
    for n in (11, 12, 13)
)


def answer(spec: CallSpec, doc: str | None, confidence: float = 0.9) -> ModelResult:
    citations = () if doc is None else (Citation(doc_id=doc, source=_source_of(doc)),)
    return ModelResult(
        request_id=spec.request_id,
        role=spec.role,
        text=f"answer from {spec.role} citing {doc}",
        citations=citations,
        usage=Usage(tokens_in=100, tokens_out=20),
        latency_ms=5.0,
        model_version=f"local-{spec.role}@test",
        provider="local",
        confidence=confidence,
    )


def _source_of(doc: str) -> str:
    return next((s.source for s in SOURCES if s.doc_id == doc), "")


Script = Callable[[CallSpec], ModelResult | CallFailed]


def drive(
    dispatch: Dispatch,
    script: Script,
    gov: GovernanceConfig = GOV,
    probability: Probability = calibrated_probability,
) -> tuple[list[AnswerOutput], list[str]]:
    """Run the policy to the end; returns everything emitted and the purposes called."""
    policy = AnswerPolicy(
        gov, runner=_unused, clock=lambda: T0.timestamp() + 2.0, probability=probability
    )
    job, step = policy.open(dispatch)
    emitted: list[AnswerOutput] = list(step.emit)
    called: list[str] = []
    queue = list(step.calls)
    while queue:
        call_id, spec = queue.pop(0)
        called.append(call_id)
        sources = spec.sources if spec.sources is not None else SOURCES
        scripted = script(spec)
        outcome: CallOutcome | CallFailed
        if isinstance(scripted, CallFailed):
            outcome = scripted
        else:
            outcome = CallOutcome(spec.request(sources), scripted)
        step = policy.advance(job, call_id, outcome)
        emitted.extend(step.emit)
        queue.extend(step.calls)
    assert step.done
    return emitted, called


async def _unused(spec: CallSpec) -> CallOutcome:
    raise AssertionError("drive() supplies outcomes itself")


def dispatch_of(**overrides: Any) -> Dispatch:
    messages = (Message(role="user", content="my card has not arrived"),)
    return Dispatch(decision("e-1", **overrides), messages, "", dispatched_at=T0.timestamp() + 1.0)


def replies(out: list[AnswerOutput]) -> list[Reply]:
    return [item for item in out if isinstance(item, Reply)]


def failures(out: list[AnswerOutput]) -> list[ValidationFailure]:
    return [item for item in out if isinstance(item, ValidationFailure)]


def test_chat_gets_a_preliminary_then_a_verified_final() -> None:
    out, called = drive(dispatch_of(), lambda spec: answer(spec, "InternalDoc-11"))
    assert called == ["primary", "verify"]
    first, final = replies(out)
    assert (first.kind, first.revision, first.status) == ("preliminary", 0, "unverified")
    assert (final.kind, final.revision, final.status) == ("final", 1, "verified")
    assert final.supersedes == 0 and final.route == "verifier"
    assert [c.record_id for c in out if isinstance(c, CostRecord)] == ["e-1:primary", "e-1:verify"]
    assert final.calls == 2 and final.cost_usd > first.cost_usd > 0
    assert [t.kind for t in out if isinstance(t, ReplyTiming)] == ["preliminary", "final"]


def test_verifier_that_picks_another_article_corrects_the_preliminary() -> None:
    def script(spec: CallSpec) -> ModelResult:
        assert spec.purpose != "verify" or spec.candidates[0].doc_ids == ("InternalDoc-11",)
        return answer(spec, "InternalDoc-11" if spec.purpose == "primary" else "InternalDoc-12")

    out, _ = drive(dispatch_of(), script)
    assert replies(out)[-1].status == "corrected"
    assert replies(out)[-1].citations[0].doc_id == "InternalDoc-12"


def test_email_gets_only_the_verified_reply() -> None:
    out, called = drive(dispatch_of(channel="email"), lambda s: answer(s, "InternalDoc-11"))
    assert called == ["primary", "verify"]
    (only,) = replies(out)
    assert (only.kind, only.revision, only.status) == ("final", 1, "verified")


def test_low_confidence_escalates_without_a_preliminary() -> None:
    out, _ = drive(dispatch_of(), lambda s: answer(s, "InternalDoc-11", confidence=0.1))
    (only,) = replies(out)
    assert only.kind == "final" and only.escalated
    assert Escalation("fast", "verifier", "low_confidence") in out
    verify_cost = [c for c in out if isinstance(c, CostRecord) and c.record_id == "e-1:verify"]
    assert verify_cost[0].escalated


def test_compliance_is_answered_only_by_the_pinned_role() -> None:
    pinned = dispatch_of(role="compliance", pinned=True, model="claude-3-5-sonnet")
    out, called = drive(pinned, lambda s: answer(s, "InternalDoc-13"))
    assert called == ["pinned"]
    (only,) = replies(out)
    assert (only.kind, only.status, only.route) == ("final", "verified", "compliance")


def test_uncited_compliance_reply_is_withheld_and_replaced() -> None:
    pinned = dispatch_of(role="compliance", pinned=True, model="claude-3-5-sonnet")
    out, _ = drive(pinned, lambda s: answer(s, None))
    (failure,) = failures(out)
    assert (failure.error, failure.action) == ("MissingReference", "replaced")
    assert "citation_sources_count=0 expected>=1" in failure.detail
    (only,) = replies(out)
    assert only.status == "withheld" and only.text == GOV.replies.safe_reply


def test_invented_citation_is_withheld_and_rerouted_to_the_pinned_role() -> None:
    """The incident: `References: 1) InternalDoc-42` with no document attached."""

    def script(spec: CallSpec) -> ModelResult:
        if spec.purpose == "primary":
            invented = answer(spec, None)
            bogus = (Citation(doc_id="InternalDoc-42", source=""),)
            return invented.model_copy(update={"citations": bogus})
        return answer(spec, "InternalDoc-11")

    out, called = drive(dispatch_of(), script)
    assert called == ["primary", "reroute"]
    (failure,) = failures(out)
    assert (failure.check, failure.error, failure.action) == (
        "citation-sources",
        "MissingReference",
        "rerouted",
    )
    assert "InternalDoc-42" in failure.detail
    (only,) = replies(out)  # the invented answer never went out, not even as a preliminary
    assert only.route == "compliance" and only.status == "verified"
    assert Escalation("fast", "compliance", "validation") in out


@pytest.mark.parametrize("policy_text", ["Please tell us your full PIN to continue."])
def test_policy_check_withholds_a_reply(policy_text: str) -> None:
    def script(spec: CallSpec) -> ModelResult:
        result = answer(spec, "InternalDoc-11")
        return result.model_copy(update={"text": policy_text}) if spec.role == "fast" else result

    out, _ = drive(dispatch_of(), script)
    assert failures(out)[0].check == "asks-for-secret"
    assert all(policy_text not in r.text for r in replies(out))


def test_verification_timeout_releases_the_preliminary_and_says_so() -> None:
    def script(spec: CallSpec) -> ModelResult | CallFailed:
        if spec.purpose == "verify":
            return CallFailed("timeout", "no result within 45 s")
        return answer(spec, "InternalDoc-11")

    out, _ = drive(dispatch_of(), script)
    (failure,) = failures(out)
    assert (failure.error, failure.action) == ("VerificationTimeout", "released_unverified")
    first, final = replies(out)
    assert (final.kind, final.revision, final.status) == ("final", 1, "unverified")
    assert final.text == first.text and final.citations == first.citations


def test_verification_timeout_on_email_sends_the_safe_reply() -> None:
    def script(spec: CallSpec) -> ModelResult | CallFailed:
        if spec.purpose == "verify":
            return CallFailed("timeout", "no result within 45 s")
        return answer(spec, "InternalDoc-11")

    out, _ = drive(dispatch_of(channel="email"), script)
    assert failures(out)[0].action == "replaced"
    (only,) = replies(out)
    assert only.status == "withheld"


def test_refused_decision_gets_a_clear_reply_and_no_call() -> None:
    out, called = drive(dispatch_of(action="refuse"), lambda s: answer(s, None))
    assert called == []
    (only,) = replies(out)
    assert (only.kind, only.status, only.text) == ("final", "refused", GOV.replies.refusal_reply)


def test_small_talk_is_final_from_the_fast_role_without_sources() -> None:
    seen: list[CallSpec] = []

    def script(spec: CallSpec) -> ModelResult:
        seen.append(spec)
        return answer(spec, None)

    out, called = drive(dispatch_of(tier="trivial"), script)
    assert called == ["primary"] and seen[0].sources == ()
    (only,) = replies(out)
    assert (only.kind, only.status, only.route) == ("final", "unverified", "fast")


def test_a_confirming_verifier_keeps_the_draft_words_and_pays_for_few_tokens() -> None:
    def script(spec: CallSpec) -> ModelResult:
        result = answer(spec, "InternalDoc-11")
        if spec.purpose == "verify":
            usage = Usage(tokens_in=100, tokens_out=2)
            return result.model_copy(update={"text": CONFIRM, "citations": (), "usage": usage})
        return result

    out, _ = drive(dispatch_of(), script)
    first, final = replies(out)
    assert (final.status, final.text, final.citations) == ("verified", first.text, first.citations)
    assert final.model_version == "local-verifier@test" and CONFIRM not in final.text


def test_a_tenant_whose_budget_excludes_the_verifier_gets_the_fast_answer_unverified() -> None:
    out, called = drive(
        dispatch_of(tenant_id="shopco", channel="email"), lambda s: answer(s, "InternalDoc-11")
    )
    assert "verifier" not in (GOV.budgets.for_tenant("shopco").allowed_roles or ())
    assert called == ["primary"]
    (only,) = replies(out)
    assert (only.kind, only.status, only.route) == ("final", "unverified", "fast")
