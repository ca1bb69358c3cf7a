"""One model call as the answering job sees it: retrieve sources, build the request, call.

Sources are built here and only here (and by the local fleet's own retrieval for small
talk), from splitpin's knowledge bases; the request a provider receives has the customer's
text neutralised (splitpin/providers/prompting.py). Runs on the call executor's event loop.
Retrieval embeds text (CPU), so it goes to a thread to let other calls' network waits and
emulated latencies overlap with it.
Provider errors become data (`CallOutcome.error_kind`): the job decides what follows.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from splitpin.operators.answering import CallOutcome, CallSpec, verifier_keep, verifier_subset
from splitpin.providers.base import Message, ModelRequest, ModelResult, ProviderError, SourceDoc
from splitpin.providers.prompting import quoted_request, source_tokens
from splitpin.providers.registry import ProviderRegistry
from splitpin.schemas.decisions import ModelRole
from splitpin.schemas.governance import GovernanceConfig

RECENT_USER_TURNS = 3
"""A follow-up ("and how long will that take?") is retrieved with its recent context too."""


class Completer(Protocol):
    async def complete(self, request: ModelRequest) -> ModelResult: ...


class SourceFinder(Protocol):
    def retrieve(self, kb_name: str, query_text: str, top_k: int) -> tuple[SourceDoc, ...]: ...

    def intent_source(self, kb_name: str, intent: str) -> SourceDoc | None: ...

    def intents(self, kb_name: str) -> frozenset[str]: ...


def retrieval_queries(messages: tuple[Message, ...]) -> list[str]:
    """The question alone, then the question with the customer's recent turns."""
    user = [m.content for m in messages if m.role == "user"]
    if not user:
        return []
    recent = " ".join(user[-RECENT_USER_TURNS:])
    return [user[-1]] if recent == user[-1] else [user[-1], recent]


def merge_sources(ranked: list[tuple[SourceDoc, ...]], top_k: int) -> tuple[SourceDoc, ...]:
    """Interleave the rankings, first occurrence wins, at most top_k + 2 documents."""
    merged: dict[str, SourceDoc] = {}
    for position in range(max((len(r) for r in ranked), default=0)):
        for ranking in ranked:
            if position < len(ranking) and ranking[position].doc_id not in merged:
                merged[ranking[position].doc_id] = ranking[position]
    cap = top_k + 2 if len(ranked) > 1 else top_k
    return tuple(merged.values())[:cap]


def with_intent_article(
    article: SourceDoc | None, found: tuple[SourceDoc, ...], cap: int
) -> tuple[SourceDoc, ...]:
    """The router's article first, then the search results without it, still at most `cap`:
    the answer is no longer limited by whether the search happened to find it."""
    if article is None:
        return found[:cap]
    rest = tuple(doc for doc in found if doc.doc_id != article.doc_id)
    return (article, *rest)[:cap]


@dataclass
class ModelGateway:
    governance: GovernanceConfig
    providers: Completer
    retriever: SourceFinder
    router_intents: frozenset[str] = frozenset()
    """The classifier's intent labels: a KB whose articles carry some of them is keyed by
    the router's intents, so a confident intent it lacks is one it does not cover."""

    async def run(self, spec: CallSpec) -> CallOutcome:
        request = await asyncio.to_thread(self._prepare, spec)
        try:
            result = await self.providers.complete(request)
        except ProviderError as exc:
            return CallOutcome(request, None, exc.kind, str(exc), exc.model or None)
        return CallOutcome(request, result)

    def _prepare(self, spec: CallSpec) -> ModelRequest:
        """The request as sent. Sources only ever come from splitpin's retriever (or an
        earlier call's, kept on the job); the customer's words reach the model neutralised,
        whatever the provider. Both cost CPU (embedding, Unicode folding): in a thread."""
        sources = spec.sources if spec.sources is not None else self.sources_for(spec)
        return quoted_request(spec.request(sources))

    def sources_for(self, spec: CallSpec) -> tuple[SourceDoc, ...]:
        """The sources a call without them gets: the search for the question (and its
        recent turns), the router's article first, capped and within the token budget.
        A role of knowledge.intent_sure_roles whose intent clears
        knowledge.intent_sure_min_confidence gets top_k_when_intent_sure (the article
        first); a verifier reading drafts, replies.verifier_other_sources' trim.
        `splitpin router calibrate` fits on the prompts this builds."""
        knowledge = self.governance.knowledge
        kb = knowledge.kb_for(spec.tenant_id)
        rankings = [
            self.retriever.retrieve(kb, query, knowledge.top_k)
            for query in retrieval_queries(spec.messages)
        ]
        context = self.governance.context
        budget = min(context.sources_max_tokens, context.system_prompt_tokens)
        encoding = self.governance.roles[spec.role].tokenizer
        found = merge_sources(rankings, knowledge.top_k)
        article = None if spec.intent is None else self.retriever.intent_source(kb, spec.intent)
        if spec.intent is not None:
            cap = knowledge.top_k + 2 if len(rankings) > 1 else knowledge.top_k
            sure = getattr(spec, "intent_confidence", None)  # older snapshots lack the slot
            if article is not None and knowledge.narrows(spec.role, sure):
                cap = knowledge.top_k_when_intent_sure
            found = with_intent_article(article, found, cap)
        others = self.governance.replies.verifier_other_sources
        if spec.candidates and others is not None:
            # A verifier of a narrowed draft (AnswerPolicy._verifier_sources): the same
            # trim as for one that reads the draft's sources.
            keep = verifier_keep(spec.candidates, None if article is None else article.doc_id)
            found = verifier_subset(found, keep, others)
        return within_budget(found, budget, encoding)

    def judges(self, tenant_id: str) -> bool:
        """Whether the tenant's KB is keyed by the router's intents, so the router's
        out-of-scope and coverage verdicts speak about it."""
        labels = self.retriever.intents(self.governance.knowledge.kb_for(tenant_id))
        return bool(labels & self.router_intents)

    def intent_article(self, tenant_id: str, intent: str) -> str | None:
        """The doc id of the tenant's article for the router's intent (None: no such
        article): the verification policy's agreement evidence (docs/calibration.md)."""
        kb = self.governance.knowledge.kb_for(tenant_id)
        article = self.retriever.intent_source(kb, intent)
        return None if article is None else article.doc_id

    def answers_locally(self, role: ModelRole) -> bool:
        """Whether the local fleet answers `role`, as the provider registry decided once when
        it built the providers; a completer that is not the registry (a test's) is remote."""
        return isinstance(self.providers, ProviderRegistry) and self.providers.is_local(role)

    def covers(self, tenant_id: str, intent: str) -> bool:
        """False only when the tenant's KB is keyed by the router's intents and lacks this
        one (a KB with other labels, e.g. ABCD's flows, cannot be judged: True)."""
        labels = self.retriever.intents(self.governance.knowledge.kb_for(tenant_id))
        return intent in labels or not (labels & self.router_intents)


def within_budget(
    sources: tuple[SourceDoc, ...], budget: int, encoding: str
) -> tuple[SourceDoc, ...]:
    """The best-ranked sources that fit the tokens the guard reserved for them, so the
    prompt a provider receives is never larger than the one the guard counted."""
    kept: list[SourceDoc] = []
    used = 0
    for doc in sources:
        size = source_tokens(doc, encoding)
        if used + size > budget:
            break
        kept.append(doc)
        used += size
    return tuple(kept)
