"""The in-process classifier the flow calls: rules, then MiniLM + linear heads.

Compliance is read from the whole message and from each of its pieces (sentences, lines,
windows over a long sentence; see `pieces`): a friendly preface or an injected instruction
dilutes the whole message's compliance mass, never a piece's.

Output is a pure function of the text's words and breaks: no randomness, no dependence on
the other texts of a batch (see embedder.py), and every exported score rounded to 4
decimals with the boolean decisions taken from the rounded scores. So a decision
re-emitted after crash recovery is byte-identical, and replaying `routing.decisions`
with `Classification.features()` reproduces every decision exactly.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from splitpin.core.lru import LruMemo
from splitpin.core.router import rules
from splitpin.core.router.embedder import Embedder
from splitpin.core.router.heads import OOS_LABEL, HeadBundle, normalize, read_bundle
from splitpin.errors import ConfigError
from splitpin.schemas.governance import ClassifierConfig, RoutingConfig

log = logging.getLogger(__name__)

NO_INTENT = "none"
"""`intent` of a rule hit: the transformer did not run, and greetings have no banking intent."""
SCORE_DECIMALS = 4
CHARS_PER_TOKEN_CAP = 16
"""Texts are cut to max_seq_tokens x this many characters before tokenizing: WordPiece
would truncate them anyway, but only after tokenizing the whole (possibly 64 KB) text."""


@dataclass(frozen=True, slots=True)
class Classification:
    """What the classifier says about one customer message; every score has 4 decimals."""

    intent: str  # banking77 intent label (argmax), or NO_INTENT for a rule hit
    intent_confidence: float
    domain_intent: str  # CLINC150 intent label or "oos"
    domain_confidence: float
    trivial: bool  # small talk / meta (or a rule said so)
    out_of_scope: bool
    out_of_scope_score: float
    compliance: bool  # compliance intent with prob mass >= compliance_min_confidence
    compliance_score: float
    rule: str | None  # name of the cheap rule that short-circuited, if any
    compliance_piece: int | None = None
    """Index (in `pieces(text)`) of the first piece whose own compliance mass reached the
    threshold; None when the whole message did, or nothing did. A friendly preface or an
    injected instruction dilutes the whole message's mass, never a piece's."""
    unscanned_pieces: int = 0
    """The message's piece count when it exceeds `classifier.max_pieces`: then it is
    compliance-bound without its pieces being classified (fail closed), else 0."""

    def features(self) -> dict[str, float | str | bool]:
        """Flat and JSON-friendly, for the decision record (`rule` is "" when none fired,
        `compliance_piece` -1 when no piece alone made the message compliance-bound)."""
        return {
            "intent": self.intent,
            "intent_confidence": self.intent_confidence,
            "domain_intent": self.domain_intent,
            "domain_confidence": self.domain_confidence,
            "trivial": self.trivial,
            "out_of_scope": self.out_of_scope,
            "out_of_scope_score": self.out_of_scope_score,
            "compliance": self.compliance,
            "compliance_score": self.compliance_score,
            "rule": self.rule or "",
            "compliance_piece": -1 if self.compliance_piece is None else self.compliance_piece,
            "unscanned_pieces": self.unscanned_pieces,
        }


def model_input(text: str, max_seq_tokens: int) -> str:
    """The exact string the transformer and the n-gram features see (training uses it too)."""
    return normalize(text)[: max_seq_tokens * CHARS_PER_TOKEN_CAP]


_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|\n\s*")
_QUOTE_MARKS = re.compile(r"^(?:>\s*)+")
"""An email reply's quoted lines ("> > text"): the marks go, the text stays."""


def pieces(text: str, max_seq_tokens: int) -> list[str]:
    """The parts of a message classified on their own for compliance: its sentences, and
    windows over a sentence too long for one transformer input. [] for a single short
    sentence (the whole message is then its only piece).

    Windows are `max_seq_tokens // 2` words with a half-window stride, so every word sits
    in the first half of some window: WordPiece (about 1.3 tokens per English word) only
    truncates a window's tail, and that tail is the head of the next window.

    A line's leading quote marks are dropped, never its words: a sentence an email reply
    quotes is then the same piece at every depth of the thread, so the embedder's memo
    answers it instead of the transformer (a long thread's turn quotes every earlier one;
    bench/README.md "Profile"), and it is classified as the customer first wrote it.
    """
    width = max(max_seq_tokens // 2, 2)
    stride = width // 2
    out: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        words = _QUOTE_MARKS.sub("", sentence.strip()).split()
        if not words:
            continue
        if len(words) <= width:
            out.append(" ".join(words))
            continue
        for start in range(0, len(words), stride):
            out.append(" ".join(words[start : start + width]))
    unique = list(dict.fromkeys(out))
    if len(unique) == 1 and len(out) == 1:
        return []
    return unique


def _r(x: float) -> float:
    return round(float(x), SCORE_DECIMALS)


PACKAGED_ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
"""The trained heads shipped with splitpin (`splitpin router train` rewrites them)."""


def resolve_artifacts_dir(path: Path | None) -> Path:
    """`ClassifierConfig.artifacts_dir`: None is the packaged heads; relative is from cwd."""
    return PACKAGED_ARTIFACTS if path is None else path.resolve()


def check_labels(bundle: HeadBundle, routing: RoutingConfig) -> None:
    """The config names only labels the trained heads know (ConfigError naming the field)."""
    unknown = sorted(set(routing.compliance_intents) - set(bundle.intent.labels))
    if unknown:
        msg = f"routing.compliance_intents: {unknown} are not banking77 intents"
        raise ConfigError(msg)
    missing = sorted({r.domain_intent for r in rules.RULES} - set(bundle.domain.labels))
    if missing:
        msg = f"rules name CLINC150 intents the domain head lacks: {missing}"
        raise ConfigError(msg)


def check_artifacts(classifier: ClassifierConfig, routing: RoutingConfig) -> None:
    """What `Classifier.load` rejects, without loading the transformer: verified artifacts
    and known labels. `splitpin config validate` calls it so it rejects what `run` does."""
    check_labels(read_bundle(resolve_artifacts_dir(classifier.artifacts_dir)), routing)


class Classifier:
    """Thread-safe; memoizing repeated classifications is the caller's choice
    (operators/classify.py keeps the worker-local memo of `ClassifierConfig.memo_size`).
    It remembers only intent-head rows by input text (a pure function of it): the local
    fleet's verifier asks for the turns the router already scored, at every job."""

    def __init__(
        self,
        embedder: Embedder,
        bundle: HeadBundle,
        config: ClassifierConfig,
        routing: RoutingConfig,
    ) -> None:
        self._embedder = embedder
        self._bundle = bundle
        self._config = config
        self._routing = routing
        check_labels(bundle, routing)
        labels = bundle.intent.labels
        self._compliance_idx = np.array(
            [labels.index(i) for i in routing.compliance_intents], dtype=np.intp
        )
        domain = bundle.domain.labels
        self._oos_idx = domain.index(OOS_LABEL)
        self._in_scope_mask = np.ones(len(domain), dtype=bool)
        self._in_scope_mask[self._oos_idx] = False
        self._intent_rows: LruMemo[str, npt.NDArray[np.float64]] = LruMemo(
            config.embedding_memo_size
        )

    @classmethod
    def load(cls, classifier: ClassifierConfig, routing: RoutingConfig) -> Classifier:
        """Load the pinned transformer and the trained heads (ConfigError if either is off)."""
        directory = resolve_artifacts_dir(classifier.artifacts_dir)
        bundle = read_bundle(directory)
        trained = bundle.manifest.get("model", {}).get("max_seq_tokens")
        if trained != classifier.max_seq_tokens:
            log.warning(
                "classifier.max_seq_tokens is %s but the heads were trained with %s",
                classifier.max_seq_tokens,
                trained,
            )
        embedder = Embedder.load(
            max_seq_tokens=classifier.max_seq_tokens,
            intra_op_threads=classifier.intra_op_threads,
            memo_size=classifier.embedding_memo_size,
            parallel_calls=classifier.parallel_calls,
        )
        return cls(embedder, bundle, classifier, routing)

    def with_embedder(self, embedder: Embedder) -> Classifier:
        """The same heads and config on another embedder (a bench's variant of the model)."""
        return Classifier(embedder, self._bundle, self._config, self._routing)

    @property
    def embedder(self) -> Embedder:
        """The loaded MiniLM session, shared with the local fleet (one per process)."""
        return self._embedder

    @property
    def manifest(self) -> dict[str, object]:
        """How the heads were trained (data hashes, command, versions, validation figures)."""
        return dict(self._bundle.manifest)

    @property
    def intent_labels(self) -> tuple[str, ...]:
        return self._bundle.intent.labels

    @property
    def domain_labels(self) -> tuple[str, ...]:
        return self._bundle.domain.labels

    def classify(self, text: str) -> Classification:
        return self.classify_batch([text])[0]

    def classify_batch(self, texts: Sequence[str]) -> list[Classification]:
        """One ONNX pass for the distinct texts no rule settles and for the pieces of the
        multi-sentence or long ones (see `pieces`); order preserved. A result depends on
        the text's words and its sentence and line breaks, never on the rest of the batch."""
        max_seq = self._config.max_seq_tokens
        keys = [(normalize(t), tuple(pieces(t, max_seq))) for t in texts]
        results: dict[tuple[str, tuple[str, ...]], Classification] = {}
        pending: list[tuple[str, tuple[str, ...]]] = []
        for key in dict.fromkeys(keys):
            rule = rules.match(key[0])
            if rule is None:
                pending.append(key)
            else:
                results[key] = self._from_rule(rule)
        if not pending:
            return [results[k] for k in keys]
        # Pieces a rule settles ("Hi!", "Thanks.") are small talk: never compliance-bound.
        cap = self._config.max_pieces
        piece_texts = {
            model_input(p, max_seq)
            for _, parts in pending
            if len(parts) <= cap
            for p in parts
            if rules.match(p) is None
        }
        cut = [model_input(whole, max_seq) for whole, _ in pending]
        inputs = list(dict.fromkeys([*cut, *sorted(piece_texts)]))
        embeddings = self._embedder.embed(inputs, max_batch=max(self._config.batch_size, 1))
        row_of = {text: i for i, text in enumerate(inputs)}
        piece_mass: dict[str, float] = {}
        for key, text in zip(pending, cut, strict=True):
            whole = self._from_model(text, embeddings[row_of[text]])
            whole = self._pinned_by_piece(whole, key[1], embeddings, row_of, piece_mass)
            results[key] = self._request_by_piece(whole, key[1], embeddings, row_of)
        return [results[k] for k in keys]

    def _pinned_by_piece(
        self,
        whole: Classification,
        parts: tuple[str, ...],
        embeddings: npt.NDArray[np.float32],
        row_of: dict[str, int],
        piece_mass: dict[str, float],
    ) -> Classification:
        """The whole message's classification, made compliance-bound by its first piece
        whose own compliance mass reaches the threshold (intent and tier stay the whole's)."""
        if whole.compliance:
            return whole
        if len(parts) > self._config.max_pieces:
            return replace(whole, compliance=True, unscanned_pieces=len(parts))
        threshold = self._routing.compliance_min_confidence
        for index, part in enumerate(parts):
            text = model_input(part, self._config.max_seq_tokens)
            if text not in row_of:
                continue  # settled by a rule: small talk
            mass = piece_mass.get(text)
            if mass is None:
                mass = piece_mass[text] = self._compliance_mass(text, embeddings[row_of[text]])
            if mass >= threshold:
                return replace(
                    whole, compliance=True, compliance_score=mass, compliance_piece=index
                )
        return whole

    def _request_by_piece(
        self,
        whole: Classification,
        parts: tuple[str, ...],
        embeddings: npt.NDArray[np.float32],
        row_of: dict[str, int],
    ) -> Classification:
        """Small talk around a request is not small talk: a message called trivial is not,
        when one of its pieces is a banking77 question as sure as the out-of-scope veto asks
        (an email's greeting and sign-off pull the whole to small talk). The veto, not the
        stricter trivial veto: on the calibration half of the held-out rows it kept 3 more
        questions off the small-talk path, and CLINC150 val trivial recall did not move."""
        if not whole.trivial or len(parts) > self._config.max_pieces:
            return whole
        bundle = self._bundle
        for part in parts:
            text = model_input(part, self._config.max_seq_tokens)
            if text not in row_of:
                continue  # settled by a rule: small talk
            p_intent = bundle.intent.proba(
                embeddings[row_of[text]], bundle.featurizer.transform(text)
            )
            if _r(p_intent.max()) >= bundle.oos_veto:
                return replace(whole, trivial=False)
        return whole

    def _compliance_mass(self, text: str, embedding: npt.NDArray[np.float32]) -> float:
        bundle = self._bundle
        row = bundle.featurizer.transform(text)
        p_intent = self._remember_intent(text, bundle.intent.proba(embedding, row))
        return _r(p_intent[self._compliance_idx].sum())

    def intent_probabilities(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        """(n, len(intent_labels)) banking77 head probabilities, columns as `intent_labels`.

        Rules are bypassed: callers that weigh every intent (the local fleet's verifier)
        need the full distribution, not the routing decision. Row i depends on texts[i] only.
        """
        out = np.empty((len(texts), len(self.intent_labels)), dtype=np.float64)
        if not texts:
            return out
        cut = [model_input(t, self._config.max_seq_tokens) for t in texts]
        missing: list[int] = []
        for i, row in enumerate(self._intent_rows.get_many(cut)):
            if row is None:
                missing.append(i)
            else:
                out[i] = row
        if not missing:
            return out
        bundle = self._bundle
        fresh = [cut[i] for i in missing]
        embeddings = self._embedder.embed(fresh, max_batch=max(self._config.batch_size, 1))
        for i, text, emb in zip(missing, fresh, embeddings, strict=True):
            out[i] = self._remember_intent(
                text, bundle.intent.proba(emb, bundle.featurizer.transform(text))
            )
        return out

    def _remember_intent(self, text: str, row: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Keep `row`, the intent head's output for the model input `text` (never mutated),
        up to `embedding_memo_size` texts, least recently used first out."""
        self._intent_rows.put_many([(text, row)])
        return row

    def _from_rule(self, rule: rules.Rule) -> Classification:
        return Classification(
            intent=NO_INTENT,
            intent_confidence=1.0,
            domain_intent=rule.domain_intent,
            domain_confidence=1.0,
            trivial=True,
            out_of_scope=rule.out_of_scope,
            out_of_scope_score=1.0 if rule.out_of_scope else 0.0,
            compliance=False,
            compliance_score=0.0,
            rule=rule.name,
        )

    def _from_model(self, text: str, embedding: npt.NDArray[np.float32]) -> Classification:
        bundle = self._bundle
        row = bundle.featurizer.transform(text)
        p_intent = self._remember_intent(text, bundle.intent.proba(embedding, row))
        p_domain = bundle.domain.proba(embedding, row)

        best = int(np.argmax(p_intent))
        intent_confidence = _r(p_intent[best])
        compliance_score = _r(p_intent[self._compliance_idx].sum())

        in_scope = np.where(self._in_scope_mask, p_domain, -1.0)
        best_domain = int(np.argmax(in_scope))
        best_p = float(in_scope[best_domain])
        oos_score = _r(
            out_of_scope_score(
                best_p,
                float(p_domain[self._oos_idx]),
                float(p_intent[best]),
                bundle.oos_floor,
                bundle.oos_veto,
            )
        )
        out_of_scope = oos_score > self._config.out_of_scope_threshold
        domain_intent = OOS_LABEL if out_of_scope else bundle.domain.labels[best_domain]
        return Classification(
            intent=bundle.intent.labels[best],
            intent_confidence=intent_confidence,
            domain_intent=domain_intent,
            domain_confidence=oos_score if out_of_scope else _r(best_p),
            # Small talk only when the domain head believes it: below the floor its argmax is
            # no opinion (a message kept in scope by the banking veto is a banking question).
            trivial=(
                domain_intent in bundle.trivial_intents
                and best_p >= bundle.oos_floor
                and intent_confidence < bundle.trivial_veto
            ),
            out_of_scope=out_of_scope,
            out_of_scope_score=oos_score,
            compliance=compliance_score >= self._routing.compliance_min_confidence,
            compliance_score=compliance_score,
            rule=None,
        )


def out_of_scope_score(
    best_in_scope: float, p_oos: float, banking_confidence: float, floor: float, veto: float
) -> float:
    """min(q / (q + m), v / (v + b)), where m is the best CLINC150 in-scope probability,
    q = max(p(oos), floor), b the banking77 head's top probability and v the veto level.

    Above 0.5 exactly when (the `oos` class wins or m is below the floor) and the banking77
    head is less sure than v. Floor and veto are tuned on validation, so the config's
    default threshold 0.5 is the tuned point; raising it makes out-of-scope rarer. The
    veto exists because CLINC150 has few banking intents: without it a quarter of
    banking77 questions would be called out of scope on this banking support platform.
    """
    q = max(p_oos, floor)
    return min(q / (q + best_in_scope), veto / (veto + banking_confidence))
