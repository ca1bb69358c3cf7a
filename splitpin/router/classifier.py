"""The in-process classifier the flow calls: rules, then MiniLM + linear heads.

Output is a pure function of the normalized text: no randomness, no dependence on the
other texts of a batch (see embedder.py), and every exported score rounded to 4
decimals with the boolean decisions taken from the rounded scores. So a decision
re-emitted after crash recovery is byte-identical, and replaying `routing.decisions`
with `Classification.features()` reproduces every decision exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from schemas.governance import ClassifierConfig, RoutingConfig
from splitpin.errors import ConfigError
from splitpin.router import rules
from splitpin.router.embedder import Embedder
from splitpin.router.heads import OOS_LABEL, HeadBundle, normalize, read_bundle

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

    def features(self) -> dict[str, float | str | bool]:
        """Flat and JSON-friendly, for the decision record (`rule` is "" when none fired)."""
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
        }


def model_input(text: str, max_seq_tokens: int) -> str:
    """The exact string the transformer and the n-gram features see (training uses it too)."""
    return normalize(text)[: max_seq_tokens * CHARS_PER_TOKEN_CAP]


def _r(x: float) -> float:
    return round(float(x), SCORE_DECIMALS)


def resolve_artifacts_dir(path: Path) -> Path:
    """`ClassifierConfig.artifacts_dir`: relative paths are from the repository root."""
    from splitpin.settings import REPO_ROOT

    return path if path.is_absolute() else REPO_ROOT / path


class Classifier:
    """Stateless after load, so thread-safe; memoizing repeats is the caller's choice
    (operators/classify.py keeps the worker-local memo of `ClassifierConfig.memo_size`)."""

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
        labels = bundle.intent.labels
        unknown = sorted(set(routing.compliance_intents) - set(labels))
        if unknown:
            msg = f"routing.compliance_intents: {unknown} are not banking77 intents"
            raise ConfigError(msg)
        self._compliance_idx = np.array(
            [labels.index(i) for i in routing.compliance_intents], dtype=np.intp
        )
        domain = bundle.domain.labels
        missing = sorted({r.domain_intent for r in rules.RULES} - set(domain))
        if missing:
            msg = f"rules name CLINC150 intents the domain head lacks: {missing}"
            raise ConfigError(msg)
        self._oos_idx = domain.index(OOS_LABEL)
        self._in_scope_mask = np.ones(len(domain), dtype=bool)
        self._in_scope_mask[self._oos_idx] = False

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
        )
        return cls(embedder, bundle, classifier, routing)

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
        """One ONNX pass for the distinct texts no rule settles; order preserved."""
        keys = [normalize(t) for t in texts]
        results: dict[str, Classification] = {}
        pending: list[str] = []
        for key in dict.fromkeys(keys):
            rule = rules.match(key)
            if rule is None:
                pending.append(key)
            else:
                results[key] = self._from_rule(rule)
        if pending:
            cut = [model_input(k, self._config.max_seq_tokens) for k in pending]
            embeddings = self._embedder.embed(cut, max_batch=max(self._config.batch_size, 1))
            for key, text, emb in zip(pending, cut, embeddings, strict=True):
                results[key] = self._from_model(text, emb)
        return [results[k] for k in keys]

    def intent_probabilities(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        """(n, len(intent_labels)) banking77 head probabilities, columns as `intent_labels`.

        Rules are bypassed: callers that weigh every intent (the local fleet's verifier)
        need the full distribution, not the routing decision. Row i depends on texts[i] only.
        """
        out = np.empty((len(texts), len(self.intent_labels)), dtype=np.float64)
        if not texts:
            return out
        bundle = self._bundle
        cut = [model_input(t, self._config.max_seq_tokens) for t in texts]
        embeddings = self._embedder.embed(cut, max_batch=max(self._config.batch_size, 1))
        for i, (text, emb) in enumerate(zip(cut, embeddings, strict=True)):
            out[i] = bundle.intent.proba(emb, bundle.featurizer.transform(text))
        return out

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
        p_intent = bundle.intent.proba(embedding, row)
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
            trivial=(
                domain_intent in bundle.trivial_intents and intent_confidence < bundle.trivial_veto
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
