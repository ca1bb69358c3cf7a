"""A sure router intent narrows the fast prompt; the verifier of such a draft sees it all.

Attacked: `knowledge.narrows` is exactly "bound set, intent at or above it, role listed";
the gateway (real retriever, real KB embeddings, banking77 held-out questions) gives a
narrowed role the intent's article and top_k_when_intent_sure - 1 searched ones and every
other call what it gave before; a verifier checking a narrowed draft gets the full search
again (trimmed by replies.verifier_other_sources around the draft's citations and the
article), may correct the draft to an article the draft never saw, and that citation is
valid (no MissingReference), while a citation attached to no request still is not;
calibration fits the agreement map on the prompts the gateway builds.
"""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from splitpin.app.calibrate import fast_pass_sources
from splitpin.core.router.classifier import Classifier
from splitpin.operators.answering import (
    AnswerOutput,
    AnswerPolicy,
    CallOutcome,
    CallSpec,
    Dispatch,
    verifier_subset,
)
from splitpin.operators.model_gateway import ModelGateway
from splitpin.providers.base import Candidate, Message, ModelRequest, ModelResult, SourceDoc
from splitpin.providers.knowledge_base import KnowledgeBases, Retriever
from splitpin.schemas.governance import GovernanceConfig, KnowledgeConfig
from splitpin.schemas.replies import Citation, Reply
from splitpin.schemas.validation import ValidationFailure
from tests.factories import T0, decision
from tests.routing_helpers import SHIPPED, governance
from tests.unit.test_answering import answer

HELDOUT = Path(__file__).resolve().parents[1] / "data" / "banking77_heldout_sample.csv"
SURE = 0.8
ROLES = ("fast", "long_context", "verifier", "compliance", "summarizer")
unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


def narrowed(k: int = 1, **more: Any) -> GovernanceConfig:
    return governance(
        knowledge={"intent_sure_min_confidence": SURE, "top_k_when_intent_sure": k}, **more
    )


# --- the rule: pure logic ----------------------------------------------------------------


@given(
    sure=st.one_of(st.none(), unit),
    attach=unit,
    confidence=st.one_of(st.none(), unit),
    role=st.sampled_from(ROLES),
    roles=st.lists(st.sampled_from(ROLES), unique=True, max_size=3),
)
def test_narrows_exactly_for_a_listed_role_at_or_above_the_bound(
    sure: float | None,
    attach: float,
    confidence: float | None,
    role: Any,
    roles: list[Any],
) -> None:
    fields = {
        "intent_sure_min_confidence": sure,
        "intent_attach_min_confidence": attach,
        "intent_sure_roles": roles,
    }
    if sure is not None and sure < attach:  # a narrowed prompt must carry the article
        with pytest.raises(ValidationError, match="intent_sure_min_confidence"):
            KnowledgeConfig(**fields)
        return
    knowledge = KnowledgeConfig(**fields)
    expected = sure is not None and confidence is not None and confidence >= sure and role in roles
    assert knowledge.narrows(role, confidence) is expected


def test_narrowed_count_cannot_exceed_top_k() -> None:
    with pytest.raises(ValidationError, match="top_k_when_intent_sure"):
        KnowledgeConfig(top_k=2, top_k_when_intent_sure=3)
    assert SHIPPED.knowledge.top_k_when_intent_sure <= SHIPPED.knowledge.top_k


def _doc(n: int) -> SourceDoc:
    return SourceDoc(
        doc_id=f"InternalDoc-{n}", title=f"t{n}", text="x", source=f"kb:b/{n}", score=0.5
    )


@given(
    found=st.lists(st.integers(1, 30), unique=True, max_size=8),
    keep=st.sets(st.integers(1, 30), max_size=4),
    others=st.integers(0, 5),
)
def test_verifier_subset_keeps_the_kept_and_the_best_others_in_order(
    found: list[int], keep: set[int], others: int
) -> None:
    docs = tuple(_doc(n) for n in found)
    kept = verifier_subset(docs, {f"InternalDoc-{n}" for n in keep}, others)
    assert [d for d in docs if d in kept] == list(kept)  # attached order
    assert {n for n in found if n in keep} == {int(d.doc_id[12:]) for d in kept} & keep
    rest = [d for d in docs if int(d.doc_id[12:]) not in keep]
    assert [d for d in kept if d in rest] == rest[:others]


# --- the gateway with the real retriever -------------------------------------------------


class _NoProviders:
    async def complete(self, request: ModelRequest) -> ModelResult:
        raise AssertionError("only retrieval is under test")


@pytest.fixture(scope="module")
def bases(classifier: Classifier) -> KnowledgeBases:
    return KnowledgeBases.load(classifier.embedder)


def _spec(
    text: str,
    intent: str | None,
    confidence: float | None,
    role: Any = "fast",
    candidates: tuple[Candidate, ...] = (),
) -> CallSpec:
    return CallSpec(
        purpose="primary" if role == "fast" else "verify",
        request_id=f"e-1:{role}",
        role=role,
        tenant_id="acme-bank",
        messages=(Message(role="user", content=text),),
        summary="",
        max_tokens=256,
        sources=None,
        candidates=candidates,
        intent=intent,
        intent_confidence=confidence,
    )


def _heldout() -> list[tuple[str, str]]:
    with HELDOUT.open(newline="") as f:
        return [(row["text"], row["category"]) for row in csv.DictReader(f)]


@pytest.mark.parametrize("k", [1, 2])
def test_a_sure_intent_narrows_the_fast_prompt_only(bases: KnowledgeBases, k: int) -> None:
    """On the held-out sample: the fast role at the bound gets the article and the k - 1
    best searched others; under it, or any other role, exactly what the gateway gives with
    narrowing off."""
    gov = narrowed(k)
    gateway = ModelGateway(gov, _NoProviders(), Retriever(bases))
    off = governance(knowledge={"intent_sure_min_confidence": None})
    before = ModelGateway(off, _NoProviders(), Retriever(bases))
    kb = bases["banking77"]
    shrunk = 0
    for text, gold in _heldout():
        article = kb.article_for_intent(gold)
        assert article is not None
        full = before.sources_for(_spec(text, gold, SURE))
        sure = gateway.sources_for(_spec(text, gold, SURE))
        assert [d.doc_id for d in sure] == [d.doc_id for d in full][:k]
        assert sure[0].doc_id == article.doc_id
        shrunk += len(sure) < len(full)
        for spec in (
            _spec(text, gold, SURE - 0.01),
            _spec(text, gold, None),
            _spec(text, None, 1.0),
            _spec(text, gold, 1.0, role="long_context"),
            _spec(text, gold, 1.0, role="compliance"),
        ):
            assert gateway.sources_for(spec) == before.sources_for(spec)
    assert shrunk > 0


def test_the_verifier_of_a_narrowed_draft_searches_again_and_trims(
    bases: KnowledgeBases,
) -> None:
    """The draft's citation and the article are kept, plus verifier_other_sources others,
    from the full search (not from the draft's one-article prompt)."""
    others = SHIPPED.replies.verifier_other_sources
    assert others is not None
    gov = narrowed(1)
    gateway = ModelGateway(gov, _NoProviders(), Retriever(bases))
    kb = bases["banking77"]
    for text, gold in _heldout()[:40]:
        article = kb.article_for_intent(gold)
        assert article is not None
        full = gateway.sources_for(_spec(text, gold, None))
        cited = full[-1].doc_id  # a draft citing the last-ranked article
        draft = Candidate(text="a", doc_ids=(cited,), confidence=0.4, model_version="m")
        got = gateway.sources_for(_spec(text, gold, 1.0, role="verifier", candidates=(draft,)))
        ids = [d.doc_id for d in got]
        assert ids[0] == article.doc_id and cited in ids
        assert ids == [d.doc_id for d in verifier_subset(full, {cited, article.doc_id}, others)]


# --- the answering job: the verifier may correct to what the draft never saw -------------


def _drive(
    gov: GovernanceConfig, gateway: ModelGateway, text: str, intent: str, verifier_cites: Any
) -> tuple[list[AnswerOutput], dict[str, ModelRequest]]:
    """open -> every call's request built by the real gateway -> scripted answers: the fast
    one cites its first source (0.6: a preliminary goes out), the verifier
    `verifier_cites(request)`."""

    async def unused(spec: CallSpec) -> CallOutcome:
        raise AssertionError("driven by hand")

    policy = AnswerPolicy(
        gov, unused, clock=lambda: T0.timestamp() + 2.0, intent_article=gateway.intent_article
    )
    made = decision(intent=intent, confidence=0.97)
    messages = (Message(role="user", content=text),)
    job, step = policy.open(Dispatch(made, messages, "", dispatched_at=T0.timestamp() + 1.0))
    emitted: list[AnswerOutput] = list(step.emit)
    sent: dict[str, ModelRequest] = {}
    queue = list(step.calls)
    while queue:
        call_id, spec = queue.pop(0)
        request = asyncio.run(asyncio.to_thread(gateway._prepare, spec))
        sent[call_id] = request
        doc = request.sources[0].doc_id if call_id == "primary" else verifier_cites(request)
        source = next((d.source for d in request.sources if d.doc_id == doc), "")
        result = answer(spec, doc, confidence=0.6).model_copy(
            update={"citations": (Citation(doc_id=doc, source=source),)}
        )
        step = policy.advance(job, call_id, CallOutcome(request, result))
        emitted.extend(step.emit)
        queue.extend(step.calls)
    assert step.done
    return emitted, sent


def test_a_narrowed_draft_can_be_corrected_to_an_article_it_never_saw(
    bases: KnowledgeBases,
) -> None:
    """Before: the verifier got the draft's one-article prompt (nothing to correct to),
    and a citation outside the draft's sources was a MissingReference."""
    gov = narrowed(1, replies={"verify": "always"})
    gateway = ModelGateway(gov, _NoProviders(), Retriever(bases))
    text, gold = _heldout()[0]
    article = bases["banking77"].article_for_intent(gold)
    assert article is not None

    def another(request: ModelRequest) -> str:
        return next(d.doc_id for d in request.sources if d.doc_id != article.doc_id)

    out, sent = _drive(gov, gateway, text, gold, another)
    assert [d.doc_id for d in sent["primary"].sources] == [article.doc_id]
    seen = sent["verify"].sources
    assert len(seen) > 1 and seen[0].doc_id == article.doc_id
    corrected = another(sent["verify"])
    assert corrected not in {d.doc_id for d in sent["primary"].sources}
    finals = [r for r in out if isinstance(r, Reply) and r.kind == "final"]
    assert [(r.status, [c.doc_id for c in r.citations]) for r in finals] == [
        ("corrected", [corrected])
    ]
    assert finals[0].citations[0].source == f"kb:banking77/{corrected}"
    assert not [r for r in out if isinstance(r, ValidationFailure)]


def test_a_citation_no_request_carried_is_still_refused(bases: KnowledgeBases) -> None:
    gov = narrowed(1, replies={"verify": "always"})
    gateway = ModelGateway(gov, _NoProviders(), Retriever(bases))
    text, gold = _heldout()[0]
    out, sent = _drive(gov, gateway, text, gold, lambda request: "InternalDoc-99999")
    attached = {d.doc_id for r in sent.values() for d in r.sources}
    assert "InternalDoc-99999" not in attached
    failures = [r for r in out if isinstance(r, ValidationFailure)]
    assert failures and failures[0].error == "MissingReference"
    finals = [r for r in out if isinstance(r, Reply) and r.kind == "final"]
    assert len(finals) == 1
    assert all(c.doc_id != "InternalDoc-99999" for c in finals[0].citations)


# --- calibration fits on the flow's prompts ----------------------------------------------


def test_calibration_samples_the_prompts_the_gateway_builds(
    bases: KnowledgeBases,
) -> None:
    gov = narrowed(1)
    gateway = ModelGateway(gov, _NoProviders(), Retriever(bases))
    kb = bases["banking77"]
    for text, gold in _heldout()[:30]:
        article = kb.article_for_intent(gold)
        assert article is not None
        sure = fast_pass_sources(gateway, text, gold, 0.95)
        assert [d.doc_id for d in sure] == [article.doc_id]
        unsure = fast_pass_sources(gateway, text, gold, 0.5)
        assert unsure == gateway.sources_for(_spec(text, gold, 0.5))
        assert len(unsure) == gov.knowledge.top_k
        none = fast_pass_sources(gateway, text, "none", 0.99)
        assert none == gateway.sources_for(_spec(text, None, None))
