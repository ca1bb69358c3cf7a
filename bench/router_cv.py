"""Choose the intent head's hyper-parameters by k-fold CV on the banking77 training rows.

The 1,003 rows `splitpin router train` holds out are the benches' unseen traffic
(bench/heldout.py), so nothing may be chosen on them. This script reads only the other
9,000: stratified folds (seeded), each variant fitted on k-1 folds and scored on the
remaining one, as written and as an email (`email_variant`: greeting, sign-off, name, from
lists of its own, not bench/heldout.py's). `mix` weighs the two like the benches' traffic
(28 % email). Variants are JSON objects of `run`'s keywords; no argument runs `GRID`, the
comparison that chose train.py's constants (`SHIPPED`).

    PYTHONPATH=. .venv/bin/python bench/router_cv.py [--folds 5] ['{"knn_weight": 0.3}' ...]

Embeddings come from `splitpin router train`'s cache (~/.cache/splitpin/router-embeddings;
the first run embeds the 9,000 rows twice, plain and as email, a few minutes), so a run is
the fits: ~20 s per fold and variant on an idle core, twice that with `augment`.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.heldout import EMAIL_SHARE
from splitpin.core.router.classifier import model_input
from splitpin.core.router.embedder import Embedder
from splitpin.core.router.heads import NeighbourVote, TextFeaturizer, mix_vote, neighbour_vote
from splitpin.core.router.train import (
    CHAR_VOCAB,
    DEFAULT_DATA_DIR,
    KNN_DIMS,
    KNN_K,
    KNN_TEMPERATURE,
    KNN_WEIGHT,
    MIN_DF,
    WORD_VOCAB,
    _design,
    _ngram_matrix,
    default_cache_dir,
    embed_cached,
    load_training_data,
)
from splitpin.schemas.governance import ClassifierConfig

FOLD_SEED = 1
SHIPPED: dict[str, Any] = {
    "knn_weight": KNN_WEIGHT,
    "knn_k": KNN_K,
    "knn_temperature": KNN_TEMPERATURE,
    "knn_dims": KNN_DIMS,
}
GRID: tuple[dict[str, Any], ...] = (
    {},  # the linear head alone (before)
    {"augment": True},
    {"augment": True, "ngram_weight": 0.5},
    {"augment": True, "C": 50.0},
    {"augment": True, "word_vocab": 8000, "char_vocab": 12000},
    SHIPPED,
    {**SHIPPED, "knn_dims": 384},
    {**SHIPPED, "augment": True, "ngram_weight": 0.5},
)

AUGMENT_SEED = 7
EMAIL_GREETINGS = (
    "Hello,", "Hi,", "Hi there,", "Good morning,", "Good afternoon,", "Dear team,",
    "Dear support,", "Hello team,", "Hey,", "To whom it may concern,", "Dear Sir or Madam,",
)  # fmt: skip
EMAIL_SIGN_OFFS = (
    "Thanks,", "Thank you,", "Many thanks,", "Regards,", "Kind regards,", "Best regards,",
    "Best,", "Cheers,", "Sincerely,", "Thanks in advance,",
)  # fmt: skip
EMAIL_FIRST_NAMES = (
    "Alex", "Maria", "John", "Aisha", "Chen", "Olga", "Samuel", "Fatima", "Noah", "Ines",
    "Kenji", "Grace", "Omar", "Lucia", "Ravi", "Emma",
)  # fmt: skip
EMAIL_LAST_NAMES = (
    "Smith", "Garcia", "Kowalski", "Nguyen", "Haddad", "Johansson", "Silva", "Kim", "Mensah",
    "Rossi", "Patel", "Murphy",
)  # fmt: skip


def email_variant(text: str, rng: random.Random) -> str:
    """`text` as an email body: usually a greeting before and a sign-off with a name after
    (each left out one time in ten), a full stop added to most bare questions."""
    text = text.strip()
    body = text if text[-1:] in ".?!" or rng.random() < 0.3 else f"{text}."
    parts = [rng.choice(EMAIL_GREETINGS)] if rng.random() < 0.9 else []
    parts.append(body)
    if rng.random() < 0.9:
        sign = rng.choice(EMAIL_SIGN_OFFS)
        name = rng.choice(EMAIL_FIRST_NAMES)
        if rng.random() >= 0.3:
            name = f"{name} {rng.choice(EMAIL_LAST_NAMES)}"
        parts.append(f"{sign}\n{name}")
    return "\n\n".join(parts)


@dataclass
class Rows:
    """The training rows' labels, folds, embeddings (plain and as email) and texts."""

    labels: npt.NDArray[np.str_]
    fold: npt.NDArray[np.intp]
    plain: npt.NDArray[np.float32]
    email: npt.NDArray[np.float32]
    texts: list[str]
    wrapped: list[str]
    vocab_texts: list[str]


def load_rows(folds: int) -> Rows:
    data = load_training_data(DEFAULT_DATA_DIR)
    max_seq = ClassifierConfig().max_seq_tokens
    raw = [t for t, _ in data.banking_train]
    rng = random.Random(AUGMENT_SEED)
    texts = [model_input(t, max_seq) for t in raw]
    wrapped = [model_input(email_variant(t, rng), max_seq) for t in raw]
    labels = np.array([c for _, c in data.banking_train])
    order = np.random.default_rng(FOLD_SEED)
    fold = np.empty(len(labels), dtype=np.intp)
    for label in sorted(set(labels.tolist())):
        members = np.flatnonzero(labels == label)
        order.shuffle(members)
        fold[members] = np.arange(len(members)) % folds
    embedder = Embedder.load(max_seq_tokens=max_seq, intra_op_threads=1)
    cache = default_cache_dir()
    plain = embed_cached(embedder, texts, cache, progress=False, echo=print)
    email = embed_cached(embedder, wrapped, cache, progress=False, echo=print)
    vocab_texts = texts + [model_input(t, max_seq) for t, _ in data.clinc_train]
    return Rows(labels, fold, plain, email, texts, wrapped, vocab_texts)


def _mixed(
    p: npt.NDArray[np.float64],
    vote: NeighbourVote | None,
    embeddings: npt.NDArray[np.float32],
    weight: float,
) -> npt.NDArray[np.float64]:
    """The linear head's probabilities mixed with the vote, as `LinearHead.logits` does."""
    if vote is None:
        return p
    votes = np.stack([vote.proba(e, p.shape[1]) for e in embeddings])
    return mix_vote(p, votes, weight)


def run(
    rows: Rows,
    folds: int,
    *,
    C: float = 20.0,  # noqa: N803  # scikit-learn's name
    ngram_weight: float = 0.3,
    augment: bool = False,
    word_vocab: int = WORD_VOCAB,
    char_vocab: int = CHAR_VOCAB,
    knn_weight: float = 0.0,
    knn_k: int = KNN_K,
    knn_temperature: float = KNN_TEMPERATURE,
    knn_dims: int = KNN_DIMS,
) -> tuple[float, float]:
    """Mean fold accuracy (plain, email) of one variant. The vocabulary is fitted like
    training's (training texts + CLINC150 train: document frequencies, no labels); the
    neighbour vote is over the fold's training rows as written, as train.py builds it."""
    from scipy import sparse  # type: ignore[import-untyped]
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]

    featurizer = TextFeaturizer.fit(
        rows.vocab_texts, max_words=word_vocab, max_chars=char_vocab, min_df=MIN_DF
    )
    x_plain = _ngram_matrix([featurizer.transform(t) for t in rows.texts], featurizer.dim)
    x_email = _ngram_matrix([featurizer.transform(t) for t in rows.wrapped], featurizer.dim)
    scores: list[tuple[float, float]] = []
    for k in range(folds):
        train, test = rows.fold != k, rows.fold == k
        blocks = [_design(rows.plain[train], x_plain[train], ngram_weight)]
        targets = list(rows.labels[train])
        if augment:
            blocks.append(_design(rows.email[train], x_email[train], ngram_weight))
            targets += list(rows.labels[train])
        started = time.perf_counter()
        model = LogisticRegression(C=C, max_iter=5000)
        model.fit(sparse.vstack(blocks, format="csr"), targets)
        classes = np.asarray(model.classes_)
        vote = None
        if knn_weight > 0.0:
            column = {str(c): i for i, c in enumerate(classes)}
            vote = neighbour_vote(
                rows.plain[train],
                [column[str(c)] for c in rows.labels[train]],
                dims=knn_dims,
                k=knn_k,
                temperature=knn_temperature,
            )
        gold = rows.labels[test]
        plain, email = (
            float((classes[p.argmax(axis=1)] == gold).mean())
            for p in (
                _mixed(model.predict_proba(_design(e, x, ngram_weight)), vote, e, knn_weight)
                for e, x in ((rows.plain[test], x_plain[test]), (rows.email[test], x_email[test]))
            )
        )
        scores.append((plain, email))
        seconds = time.perf_counter() - started
        print(f"  fold {k}: plain {plain:.4f} email {email:.4f} ({seconds:.0f} s)", flush=True)
    mean = np.mean(np.array(scores), axis=0)
    return float(mean[0]), float(mean[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("variants", nargs="*", help="JSON keyword objects for run()")
    args = parser.parse_args()
    variants: list[dict[str, Any]] = [json.loads(v) for v in args.variants] or list(GRID)
    rows = load_rows(args.folds)
    print(f"banking77 training rows: {len(rows.labels)}, {args.folds} folds (held-out rows unread)")
    table = []
    for variant in variants:
        plain, email = run(rows, args.folds, **variant)
        mix = (1 - EMAIL_SHARE) * plain + EMAIL_SHARE * email
        table.append(f"| {json.dumps(variant)} | {plain:.4f} | {email:.4f} | {mix:.4f} |")
        print(table[-1], flush=True)
    print("\n".join(["| variant | plain | email | mix |", "| --- | --- | --- | --- |", *table]))


if __name__ == "__main__":
    main()
