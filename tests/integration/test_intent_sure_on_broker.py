"""A sure router intent narrows the fast prompt, through `splitpin run` on the real broker.

With `knowledge.intent_sure_min_confidence` set and every answer verified, each routine
question whose decision clears the bound is answered by `fast` from the intent's article
alone (its cost record's input tokens are exactly those of that one-article prompt, fewer
than the full search's), and its verifier searches again: its input tokens are exactly
those of the full, trimmed search beside the draft. Every event gets one final reply, and
no citation fails validation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from splitpin.core.router.classifier import Classifier
from splitpin.core.settings import Settings
from splitpin.operators.answering import CallSpec
from splitpin.operators.model_gateway import ModelGateway
from splitpin.providers.base import Candidate, Message, ModelRequest, ModelResult
from splitpin.providers.knowledge_base import KnowledgeBases
from splitpin.providers.local_fleet import FastResponder, LocalFleet, Verifier
from splitpin.schemas import CostRecord, Reply, RoutingDecision, decode
from splitpin.schemas.governance import GovernanceConfig
from tests.factories import ROUTINE_QUESTIONS, event_dict
from tests.governance_files import save_config, shipped_config
from tests.kafka_helpers import decisions_by_event, run_until_answered

pytestmark = pytest.mark.integration

SURE = 0.8


class _NoCalls:
    async def complete(self, request: ModelRequest) -> ModelResult:
        raise AssertionError("the expected prompts are built, not sent")


def _spec(
    decision: RoutingDecision,
    text: str,
    role: Any,
    sure: float | None = None,
    candidates: tuple[Candidate, ...] = (),
) -> CallSpec:
    return CallSpec(
        purpose="primary" if role == "fast" else "verify",
        request_id=f"{decision.event_id}:x",
        role=role,
        tenant_id=decision.tenant_id,
        messages=(Message(role="user", content=text),),
        summary="",
        max_tokens=256,
        sources=None,
        candidates=candidates,
        intent=decision.intent,
        intent_confidence=sure,
    )


def test_sure_intents_narrow_the_fast_prompt_and_the_verifier_searches_again(
    topic_settings: Any, tmp_path: Path, classifier: Classifier
) -> None:
    config = shipped_config()
    config["knowledge"].update(intent_sure_min_confidence=SURE, top_k_when_intent_sure=1)
    config["replies"].update(verify="always")
    config["replies"].get("verifier_first", {}).update(mode="off")  # the fast pass first
    config["providers"]["mode"] = "local"
    path = save_config(config, tmp_path)
    settings: Settings = topic_settings(partitions=2, governance_path=path)
    texts = {f"s-{n}": text for n, text in enumerate(ROUTINE_QUESTIONS)}
    ids = set(texts)
    run = run_until_answered(
        settings,
        tmp_path,
        (event_dict(e, f"c-{e}", text=text, at_s=n) for n, (e, text) in enumerate(texts.items())),
        also=[("validation_failures", lambda g: False, 2)],
    )
    decisions = decisions_by_event(settings)
    replies = [decode(Reply, m.value() or b"") for m in run.replies]
    calls = {
        (r.event_id, r.record_id.rpartition(":")[2]): r
        for r in (decode(CostRecord, m.value() or b"") for m in run.costs)
    }
    assert run.also["validation_failures"] == []
    for event_id in ids:
        assert len([r for r in replies if r.reply_id == event_id and r.kind == "final"]) == 1

    # The prompts the flow should have sent, rebuilt offline with the same pieces.
    gov: GovernanceConfig = settings.governance
    bases = KnowledgeBases.for_config(classifier.embedder, gov.knowledge)
    fleet = LocalFleet(gov, bases, classifier.embedder, classifier)
    gateway = ModelGateway(gov, _NoCalls(), fleet.retriever, frozenset(classifier.intent_labels))
    fast = FastResponder("fast", gov.roles["fast"], fleet)
    verifier = Verifier("verifier", gov.roles["verifier"], fleet)
    narrowed = 0
    for event_id, text in texts.items():
        decision = decisions[event_id]
        if decision.pinned or decision.role != "fast" or decision.intent in (None, "none"):
            continue
        if decision.confidence is None or decision.confidence < SURE:
            continue
        narrowed += 1
        spec = _spec(decision, text, "fast", decision.confidence)
        sources = gateway.sources_for(spec)
        assert len(sources) == 1
        draft, usage = fast.respond(spec.request(sources))
        full = gateway.sources_for(_spec(decision, text, "fast"))
        _, wide = fast.respond(spec.request(full))
        assert calls[(event_id, "primary")].tokens_in == usage.tokens_in < wide.tokens_in
        candidate = Candidate(
            text=draft.text,
            doc_ids=tuple(c.doc_id for c in draft.citations),
            confidence=draft.confidence,
            model_version="local-fast",
        )
        check = _spec(decision, text, "verifier", decision.confidence, (candidate,))
        seen = gateway.sources_for(check)
        assert len(seen) > 1 and seen[0].doc_id == sources[0].doc_id
        _, checked = verifier.respond(check.request(seen))
        assert calls[(event_id, "verify")].tokens_in == checked.tokens_in
    assert narrowed >= 3, narrowed
