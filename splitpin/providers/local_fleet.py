"""The embedded local model fleet: offline responders behind the Provider interface.

Each role gets a responder that chooses a knowledge-base article by computation and
answers with its text; nothing is canned. They stand in for the remote models when no
key is configured (and for benchmarks), so they obey the same contract: usage counted
in the role's tokenizer, honest `local-...` model versions, typed errors, and
(optionally) the latency of the production model they replace, labelled `emulated`.

    fast           FastResponder          nearest attached article to the last message
    long_context   LongContextResponder   summary + recent turns; acknowledges earlier topic
    compliance     Verifier               re-ranks with the trained intent head and
    verifier       Verifier                 the recent turns; cites only attached docs
    summarizer     Summarizer             extractive compaction (splitpin/core/summarizer.py)

Confidence is a logistic of the score margin between the best and second-best article
(see `margin_confidence`); the constants were fitted on banking77 held-out rows that
are not in the test fixture (docs/local_fleet.md). It is reported raw; a probability of
being right is `splitpin.providers.calibration.probability_right` (docs/calibration.md).
A responder never cites a document
that is not attached: with no sources it answers from its own retrieval, uncited, with
confidence capped at UNCITED_CONFIDENCE_CAP.

Determinism: the answer depends only on the request (embeddings are batch-independent,
scores are rounded before ranking and ties go to the lower doc number), so a replay
after a crash reproduces the result. The one measured field is `latency_ms` when not
emulating; emulated latency is seeded by the request id and reproducible too.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from splitpin.core.router.classifier import Classifier
from splitpin.core.router.embedder import Embedder
from splitpin.core.summarizer import HEADER, digest, summarize
from splitpin.core.tokens import count_tokens, encoding
from splitpin.providers.base import (
    CONFIRM,
    BadRequestError,
    ContextOverflowError,
    ModelRequest,
    ModelResult,
    Provider,
    SourceDoc,
    Usage,
)
from splitpin.providers.emulation import emulated_latency_ms
from splitpin.providers.knowledge_base import (
    SMALL_TALK_KB,
    Article,
    KnowledgeBase,
    KnowledgeBases,
    Retriever,
    content_words,
    rank,
)
from splitpin.providers.prompting import STATIC_TOKENS_MEMO, quoted_request, sent_tokens
from splitpin.schemas.decisions import ModelRole
from splitpin.schemas.governance import GovernanceConfig, RoleConfig
from splitpin.schemas.replies import Citation

FloatArray = npt.NDArray[np.float32]

PROVIDER_NAME = "local"
CONFIDENCE_DECIMALS = 4
UNCITED_CONFIDENCE_CAP = 0.2
"""With nothing attached the answer cannot be cited, so it is never trusted much."""
RECENT_USER_TURNS = 3
RECENCY_DECAY = 0.5
"""Weight of each older user turn relative to the next newer one (1, 0.5, 0.25)."""

# Confidence = logistic((margin - center) / scale), clipped to [0, 1]; the verifier's is then
# multiplied by the intent head's probability mass on the attached articles. Fitted (least
# Brier score) on the 849 banking77 held-out rows that are not in the test fixture, so that
# confidence approximates the chance the chosen article is the right one (docs/local_fleet.md).
FAST_MARGIN_CENTER = 0.03
FAST_MARGIN_SCALE = 0.04
VERIFIER_MARGIN_CENTER = 0.1
VERIFIER_MARGIN_SCALE = 0.27

# Verifier score = W_COS * cosine(recent turns, article)
#                + W_HEAD * trained intent probability    (articles with a banking77 intent)
#                  or W_LEX * IDF-weighted word coverage  (other knowledge bases, e.g. ABCD)
#                + W_CAND * support from the fast candidates (their confidence, averaged)
# The head dominates (92 % accurate on its own); on the 849 calibration rows, W_COS from 0 to
# 2 and W_CAND from 0 to 0.3 moved accuracy by under a point. W_LEX is not fitted (there are
# no labelled ABCD questions): small, so word overlap breaks near-ties of the cosine.
W_COS = 0.5
W_HEAD = 1.0
W_LEX = 0.25
W_CAND = 0.1

LONG_CONTEXT_WEIGHTS = (1.0, 0.5, 0.25)
"""Query = last user turn, the two before it (together), the summary."""


# --- Pure logic ----------------------------------------------------------------------


def margin_confidence(margin: float, center: float, scale: float) -> float:
    """Logistic of the score margin, rounded: a clear winner is trusted, a near-tie is not."""
    z = (margin - center) / scale
    value = 1.0 / (1.0 + math.exp(-max(min(z, 60.0), -60.0)))
    return round(min(max(value, 0.0), 1.0), CONFIDENCE_DECIMALS)


def recency_weights(n: int, decay: float = RECENCY_DECAY) -> npt.NDArray[np.float64]:
    """Oldest first, newest weight 1: (0.25, 0.5, 1.0) for three turns."""
    return np.array([decay ** (n - 1 - i) for i in range(n)], dtype=np.float64)


def combine(vectors: FloatArray, weights: Sequence[float] | npt.NDArray[np.float64]) -> FloatArray:
    """The weighted sum of unit rows, re-normalised: one query for several turns."""
    w = np.asarray(weights, dtype=np.float32)
    total = (vectors * w[:, None]).sum(axis=0, dtype=np.float32)
    norm = float(np.sqrt(np.dot(total, total)))
    return np.asarray(total / max(norm, 1e-12), dtype=np.float32)


def lexical_coverage(
    query: frozenset[str], article_words: frozenset[str], kb: KnowledgeBase
) -> float:
    """Share of the query's IDF weight found in the article: rare shared words count most."""
    if not query:
        return 0.0
    total = sum(kb.idf_weight(w) for w in sorted(query))
    hit = sum(kb.idf_weight(w) for w in sorted(query & article_words))
    return hit / total


def headline(title: str) -> str:
    """What the answer is about, as its first sentence: a question title stays a question."""
    title = " ".join(title.split())
    return title if title.endswith(("?", ".", "!", ":")) else f"{title}:"


def customer_lines(summary: str) -> str:
    """The customer's side of a summary ("- user: ..." lines, see splitpin/core/summarizer.py):
    the topics they raised, without the header and agent lines that blur the embedding.
    A summary in another format is used whole."""
    prefix = "- user:"
    lines = [
        line[len(prefix) :].strip() for line in summary.splitlines() if line.startswith(prefix)
    ]
    return " ".join(lines) if lines else summary.strip()


def user_turns(request: ModelRequest) -> list[str]:
    return [m.content for m in request.messages if m.role == "user" and m.content.strip()]


def truncate_tokens(text: str, max_tokens: int, encoding_name: str) -> str:
    """Stop at the output budget, as a remote model would."""
    return truncated(text, max_tokens, encoding_name)[0]


@lru_cache(maxsize=STATIC_TOKENS_MEMO)
def truncated(text: str, max_tokens: int, encoding_name: str) -> tuple[str, int]:
    """`truncate_tokens` and the result's token count from one encoding (the count of a
    text that fits is the length of that encoding, exactly what `count_tokens` returns).
    Remembered: answers are article texts, the same few hundred over and over."""
    enc = encoding(encoding_name)
    tokens = enc.encode(text, disallowed_special=())
    if len(tokens) <= max_tokens:
        return text, len(tokens)
    cut = enc.decode(tokens[:max_tokens])
    return cut, count_tokens(cut, encoding_name)


@dataclass(frozen=True)
class ScoreParts:
    """The verifier's evidence for one option, before weighting."""

    cosine: float  # recency-weighted query of the recent turns . article
    head: float | None  # intent head's probability of the article's intent, if it has one
    lexical: float | None  # IDF word coverage, for articles without a trained intent
    support: float  # mean confidence of the fast candidates citing the article


def combine_parts(parts: ScoreParts) -> float:
    """W_COS x cosine + (W_HEAD x head or W_LEX x lexical) + W_CAND x support."""
    score = W_COS * parts.cosine
    if parts.head is not None:
        score += W_HEAD * parts.head
    elif parts.lexical is not None:
        score += W_LEX * parts.lexical
    return score + W_CAND * parts.support


# --- Options: the articles a responder may answer from -------------------------------


@dataclass(frozen=True)
class Option:
    """One article a responder may answer from; cited only if it was attached."""

    doc_id: str
    title: str
    answer: str
    source: str
    embedding: FloatArray
    kb: KnowledgeBase | None  # with `index`: the loaded article, when the source is one
    index: int | None

    @property
    def article(self) -> Article | None:
        return None if self.kb is None or self.index is None else self.kb.articles[self.index]


@dataclass(frozen=True)
class Options:
    items: tuple[Option, ...]
    attached: bool  # False: none attached, these come from the responder's own retrieval
    kb_name: str | None  # the knowledge base they come from (names the model version)


@dataclass(frozen=True)
class Answer:
    text: str
    citations: tuple[Citation, ...]
    confidence: float
    version_tag: str


# --- The fleet -----------------------------------------------------------------------


class LocalFleet:
    """Shared resources of the local responders, and the registry factory for them."""

    def __init__(
        self,
        governance: GovernanceConfig,
        bases: KnowledgeBases,
        embedder: Embedder,
        classifier: Classifier,
    ) -> None:
        self.governance = governance
        self.bases = bases
        self.embedder = embedder
        self.classifier = classifier
        self.retriever = Retriever(bases)
        self.intent_index = {label: i for i, label in enumerate(classifier.intent_labels)}

    @classmethod
    def load(cls, governance: GovernanceConfig) -> LocalFleet:
        """The trained classifier, its embedder (shared) and the configured knowledge bases."""
        classifier = Classifier.load(governance.classifier, governance.routing)
        bases = KnowledgeBases.for_config(classifier.embedder, governance.knowledge)
        return cls(governance, bases, classifier.embedder, classifier)

    def provider(self, role_name: ModelRole, role_cfg: RoleConfig) -> Provider:
        """The responder for a role: plugs into `Callable[[ModelRole, RoleConfig], Provider]`."""
        kind = RESPONDERS[role_name]
        return kind(role_name, role_cfg, self)

    def options(self, request: ModelRequest, query: FloatArray) -> Options:
        """The attached sources, or (none attached: small talk, which the answering job sends
        without retrieval) the small-talk articles, never cited; the tenant's own top-k when
        that base is not loaded."""
        if request.sources:
            return Options(self._attached(request.sources), True, self._kb_of(request.sources))
        kb_name: str = self.governance.knowledge.kb_for(request.tenant_id)
        if SMALL_TALK_KB in self.bases:
            kb_name = SMALL_TALK_KB
        if kb_name not in self.bases:
            msg = f"no sources attached and knowledge base {kb_name!r} is not loaded"
            raise BadRequestError(msg, model=PROVIDER_NAME)
        top_k = self.governance.knowledge.top_k
        found = self.retriever.retrieve_by_embedding(kb_name, query, top_k)
        return Options(self._attached(found), False, kb_name)

    def _attached(self, sources: Sequence[SourceDoc]) -> tuple[Option, ...]:
        resolved = [self.bases.resolve(s) for s in sources]
        unknown = [s for s, r in zip(sources, resolved, strict=True) if r is None]
        fresh = iter(self.embedder.embed([f"{s.title}. {s.text}" for s in unknown]))
        items: list[Option] = []
        seen: set[str] = set()
        for source, hit in zip(sources, resolved, strict=True):
            if hit is None:
                emb, kb, index, answer = next(fresh), None, None, source.text
            else:
                kb, index = hit
                emb, answer = kb.embeddings[index], kb.articles[index].answer
            if source.doc_id in seen:
                continue
            seen.add(source.doc_id)
            items.append(Option(source.doc_id, source.title, answer, source.source, emb, kb, index))
        return tuple(items)

    def _kb_of(self, sources: Sequence[SourceDoc]) -> str | None:
        for source in sources:
            hit = self.bases.resolve(source)
            if hit is not None:
                return hit[0].name
        return None

    def version_tag(self, kb_name: str | None) -> str:
        """The content hash of the knowledge base answered from: it decides the answers."""
        if kb_name is None or kb_name not in self.bases:
            return "unindexed"
        return self.bases[kb_name].content_sha256[:12]


def pick(options: Options, scores: Sequence[float]) -> tuple[int, float]:
    """Index of the best option and its margin over the runner-up (its score if alone)."""
    order = rank(scores, [o.doc_id for o in options.items])
    best = order[0]
    second = scores[order[1]] if len(order) > 1 else 0.0
    return best, round(float(scores[best]) - float(second), 6)


def finish(options: Options, best: int, text: str, confidence: float, tag: str) -> Answer:
    """Cite the chosen option only if it was attached; uncited answers are capped."""
    option = options.items[best]
    if options.attached:
        citations = (Citation(doc_id=option.doc_id, source=option.source),)
        return Answer(text, citations, confidence, tag)
    return Answer(text, (), min(confidence, UNCITED_CONFIDENCE_CAP), tag)


# --- Responders ----------------------------------------------------------------------


class LocalResponder:
    """Async glue shared by the responders: thread off the loop, usage, emulation, result."""

    name = PROVIDER_NAME
    responder: ClassVar[str] = ""

    def __init__(self, role: ModelRole, config: RoleConfig, fleet: LocalFleet) -> None:
        self.role = role
        self.config = config
        self.fleet = fleet

    async def complete(self, request: ModelRequest) -> ModelResult:
        start = time.perf_counter()
        answer, usage = await asyncio.to_thread(self.respond, request)
        latency_ms = round((time.perf_counter() - start) * 1000.0, 3)
        emulated = False
        profile = self.config.emulation
        if self.fleet.governance.providers.emulate and profile is not None:
            target = emulated_latency_ms(profile, request.request_id, usage.tokens_out)
            await asyncio.sleep(max(target - latency_ms, 0.0) / 1000.0)
            latency_ms, emulated = target, True
        return ModelResult(
            request_id=request.request_id,
            role=self.role,
            text=answer.text,
            citations=answer.citations,
            usage=usage,
            latency_ms=latency_ms,
            model_version=f"local-{self.responder}@{answer.version_tag}",
            provider=PROVIDER_NAME,
            confidence=answer.confidence,
            emulated=emulated,
        )

    async def aclose(self) -> None:
        return None

    def respond(self, request: ModelRequest) -> tuple[Answer, Usage]:
        """The whole computation, synchronous and deterministic (runs in a worker thread).

        The fleet reads the customer's words neutralised, like any model, and answers only
        from article text: a knowledge-base article it resolves, or the attached source's
        own text, never a block the customer pasted under a source's label."""
        request = quoted_request(request)
        enc = self.config.tokenizer
        tokens_in = sent_tokens(request, enc)  # what a remote model would read
        max_out = min(request.max_tokens, self.config.max_output_tokens)
        if tokens_in + max_out > self.config.context_window:
            msg = (
                f"prompt of {tokens_in} tokens + {max_out} output exceeds the "
                f"{self.config.context_window}-token window of {self.role}"
            )
            raise ContextOverflowError(msg, model=PROVIDER_NAME)
        answer = self.answer(request)
        text, tokens_out = truncated(answer.text, max_out, enc)
        answer = Answer(text, answer.citations, answer.confidence, answer.version_tag)
        return answer, Usage(tokens_in=tokens_in, tokens_out=tokens_out)

    def answer(self, request: ModelRequest) -> Answer:
        raise NotImplementedError

    def _last_user(self, request: ModelRequest) -> list[str]:
        turns = user_turns(request)
        if not turns:
            msg = f"{self.role}: the request has no customer message to answer"
            raise BadRequestError(msg, model=PROVIDER_NAME)
        return turns


class FastResponder(LocalResponder):
    """The nearest attached article to the last customer message: one embedding, cheap."""

    responder = "fast"

    def answer(self, request: ModelRequest) -> Answer:
        last = self._last_user(request)[-1]
        query = self.fleet.embedder.embed([last])[0]
        options = self.fleet.options(request, query)
        scores = [float(o.embedding @ query) for o in options.items]
        best, margin = pick(options, scores)
        confidence = margin_confidence(margin, FAST_MARGIN_CENTER, FAST_MARGIN_SCALE)
        tag = self.fleet.version_tag(options.kb_name)
        return finish(options, best, options.items[best].answer, confidence, tag)


class Verifier(LocalResponder):
    """Re-ranks the fast candidates and the attached articles with more evidence.

    Evidence: the trained banking77 intent head over the recent customer turns
    (recency-weighted), their combined embedding, the candidates' votes and, for articles
    without a trained intent (ABCD), IDF-weighted word overlap with the article.
    """

    responder = "verifier"

    def answer(self, request: ModelRequest) -> Answer:
        turns = self._last_user(request)[-RECENT_USER_TURNS:]
        weights = recency_weights(len(turns))
        query = combine(self.fleet.embedder.embed(turns), weights)
        options = self.fleet.options(request, query)
        scores, coverage = self.scores(request, options, turns, weights, query)
        best, margin = pick(options, scores)
        if coverage is None:  # no trained head: cosine-scale scores, as the fast responder's
            confidence = margin_confidence(margin, FAST_MARGIN_CENTER, FAST_MARGIN_SCALE)
        else:
            confidence = margin_confidence(margin, VERIFIER_MARGIN_CENTER, VERIFIER_MARGIN_SCALE)
            confidence = round(confidence * coverage, CONFIDENCE_DECIMALS)
        chosen = options.items[best]
        text = f"{headline(chosen.title)} {chosen.answer}"
        first = request.candidates[0] if request.candidates else None
        if first is not None and options.attached and chosen.doc_id in first.doc_ids:
            text = CONFIRM  # agrees with the draft: say so instead of rewriting it
        return finish(options, best, text, confidence, self.fleet.version_tag(options.kb_name))

    def scores(
        self,
        request: ModelRequest,
        options: Options,
        turns: Sequence[str],
        weights: npt.NDArray[np.float64],
        query: FloatArray,
    ) -> tuple[list[float], float | None]:
        """Each option's score, and the coverage: the intent head's probability mass on
        the attached articles' intents (None when no option has a trained intent). Low
        coverage means the head believes the right article was not retrieved, so no margin
        makes the answer sure."""
        parts, coverage = self.score_parts(request, options, turns, weights, query)
        return [combine_parts(p) for p in parts], coverage

    def score_parts(
        self,
        request: ModelRequest,
        options: Options,
        turns: Sequence[str],
        weights: npt.NDArray[np.float64],
        query: FloatArray,
    ) -> tuple[list[ScoreParts], float | None]:
        """The unweighted evidence per option (what `scores` weighs), kept apart so a
        benchmark can say which term moved a choice (bench/heldout_citations.py --explain)."""
        index = self.fleet.intent_index
        articles = [o.article for o in options.items]
        head_cols = [
            None if a is None or a.intent is None else index.get(a.intent) for a in articles
        ]
        intents: npt.NDArray[np.float64] | None = None
        coverage: float | None = None
        if any(c is not None for c in head_cols):
            probs = self.fleet.classifier.intent_probabilities(turns)
            intents = (weights @ probs) / weights.sum()
            cols = sorted({c for c in head_cols if c is not None})
            coverage = min(float(intents[cols].sum()), 1.0)
        words = content_words(" ".join(turns))
        candidates = request.candidates
        parts: list[ScoreParts] = []
        for option, col in zip(options.items, head_cols, strict=True):
            head: float | None = None
            lexical: float | None = None
            if col is not None and intents is not None:
                head = float(intents[col])
            elif option.kb is not None and option.index is not None:
                article_words = option.kb.words[option.index]
                lexical = lexical_coverage(words, article_words, option.kb)
            support = 0.0
            if candidates:
                votes = sum(
                    c.confidence or 0.0 for c in candidates if option.doc_id in c.doc_ids
                )  # an unknown confidence casts no vote
                support = votes / len(candidates)
            parts.append(ScoreParts(float(option.embedding @ query), head, lexical, support))
        return parts, coverage


class LongContextResponder(LocalResponder):
    """Reads the compacted history too: the summary and recent turns shape the query,
    and the answer acknowledges the topic that came up earlier."""

    responder = "long-context"

    def answer(self, request: ModelRequest) -> Answer:
        turns = self._last_user(request)
        earlier = turns[-RECENT_USER_TURNS:-1]
        parts = [turns[-1], " ".join(earlier), customer_lines(request.summary)]
        present = [i for i, p in enumerate(parts) if p.strip()]
        embedded = self.fleet.embedder.embed([parts[i] for i in present])
        query = combine(embedded, [LONG_CONTEXT_WEIGHTS[i] for i in present])
        options = self.fleet.options(request, query)
        scores = [float(o.embedding @ query) for o in options.items]
        best, margin = pick(options, scores)
        confidence = margin_confidence(margin, FAST_MARGIN_CENTER, FAST_MARGIN_SCALE)
        chosen = options.items[best]
        # The earlier context: the summary if any, else the earlier turns (already embedded).
        history = next((i for i in (2, 1) if i in present), None)
        lead = ""
        if history is not None:
            lead = self._acknowledge(embedded[present.index(history)], options, chosen)
        text = lead + chosen.answer
        return finish(options, best, text, confidence, self.fleet.version_tag(options.kb_name))

    def _acknowledge(self, history: FloatArray, options: Options, chosen: Option) -> str:
        """Name the earlier topic: the article of the same knowledge base nearest the history."""
        kb = chosen.kb
        if kb is None and options.kb_name is not None:
            kb = self.fleet.bases[options.kb_name]
        if kb is None:
            return "Following up on our earlier conversation: "
        found = self.fleet.retriever.retrieve_by_embedding(kb.name, history, 1)[0]
        if found.doc_id == chosen.doc_id:
            return f'Following up on "{chosen.title}" from earlier: '
        return f'Earlier in this conversation: "{found.title}". {headline(chosen.title)} '


class Summarizer(LocalResponder):
    """Extractive compaction of the turns (first sentence of each, newest kept first),
    continuing any earlier summary; no citations."""

    responder = "summarizer"
    VERSION_TAG: ClassVar[str] = "extractive-1"

    def answer(self, request: ModelRequest) -> Answer:
        enc = self.config.tokenizer
        prior = [
            line
            for line in request.summary.splitlines()
            if line.startswith("- ") and line != HEADER
        ]
        digests = [*prior, *(digest(m.role, m.content, enc) for m in request.messages)]
        budget = min(request.max_tokens, self.config.max_output_tokens)
        text, _ = summarize(digests, budget, enc)
        return Answer(text, (), 1.0, self.VERSION_TAG)


RESPONDERS: dict[ModelRole, type[LocalResponder]] = {
    "fast": FastResponder,
    "long_context": LongContextResponder,
    "compliance": Verifier,
    "verifier": Verifier,
    "summarizer": Summarizer,
}
