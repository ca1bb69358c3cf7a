"""Other poolings of the same transformer pass as the router's intent head (issue 14, 92 %).

The intent head reads MiniLM's `last_hidden_state` mean-pooled (`Embedder`). Max-pooling or
the [CLS] row of the same pass cost nothing extra at run time, so this asks whether they
carry more intent. Each candidate is a list of poolings, each L2-normalised and joined;
a `/s` suffix scales the join back to unit norm (so the n-gram block keeps its weight):

* 5-fold CV on the 9,000 banking77 training rows, as written and as an email
  (`bench/router_cv.run`: the same folds, vocabulary, n-gram weight and C);
* a fit on all 9,000 rows scored on the 1,003 held-out rows (`bench/heldout.py`), as
  written and wrapped as `bench/heldout.py`'s emails; the 72:28 mix is the traffic's;
* an exact McNemar test of each candidate against the first, on the held-out rows.

Nothing is fitted on the held-out rows. Pooled rows are cached under
`~/.cache/splitpin/router-pooling` (first run ~2 min of transformer, then ~3 min of
fitting per candidate on one core).

    PYTHONPATH=. .venv/bin/python bench/router_pooling.py [mean mean+max/s ...] [--C 20]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from collections.abc import Sequence
from math import comb
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.heldout import EMAIL_SHARE, as_email, heldout_rows
from bench.router_cv import Rows, load_rows, run
from splitpin.core.router.classifier import model_input
from splitpin.core.router.embedder import Embedder, plan_calls
from splitpin.core.router.heads import TextFeaturizer
from splitpin.core.router.train import (
    CHAR_VOCAB,
    DEFAULT_DATA_DIR,
    MIN_DF,
    WORD_VOCAB,
    _design,
    _ngram_matrix,
    default_cache_dir,
)
from splitpin.schemas.governance import ClassifierConfig

POOLS = ("mean", "max", "cls")
HELDOUT_EMAIL_SEED = 14
FloatArray = npt.NDArray[np.float32]


def pooled(embedder: Embedder, texts: Sequence[str]) -> dict[str, FloatArray]:
    """Each pooling of each text's unpadded hidden states (grouped by exact length, as the
    embedder runs them), not normalised."""
    ids = embedder.token_ids(texts)
    out = {p: np.empty((len(texts), 384), dtype=np.float32) for p in POOLS}
    for call in plan_calls(ids, 64, 1):
        hidden = embedder._run(np.array([ids[i] for i in call], dtype=np.int64))
        for row, i in zip(hidden, call, strict=True):
            out["mean"][i] = row.mean(axis=0, dtype=np.float32)
            out["max"][i] = row.max(axis=0)
            out["cls"][i] = row[0]
    return out


def cached_pools(embedder: Embedder, texts: Sequence[str], cache: Path) -> dict[str, FloatArray]:
    key = hashlib.sha256(json.dumps([embedder.info.model_sha256, *texts]).encode()).hexdigest()
    path = cache / f"{key[:24]}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return {p: stored[p] for p in POOLS}
    pools = pooled(embedder, texts)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **pools)  # type: ignore[arg-type]
    return pools


def block(pools: dict[str, FloatArray], candidate: str) -> FloatArray:
    parts = candidate.removesuffix("/s").split("+")
    unit = [
        p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
        for p in (pools[n] for n in parts)
    ]
    joined = np.hstack(unit).astype(np.float32)
    return (joined / np.sqrt(len(parts))).astype(np.float32) if candidate.endswith("/s") else joined


def mcnemar(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> tuple[int, int, float]:
    """Rows only `a` gets right, only `b` does, and the exact two-sided p-value."""
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    n = only_a + only_b
    tail = sum(comb(n, i) for i in range(min(only_a, only_b) + 1))
    return only_a, only_b, min(1.0, 2 * tail / 2**n) if n else 1.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("candidates", nargs="*", default=["mean", "mean+max/s"])
    parser.add_argument("--C", type=float, default=20.0, help="inverse regularisation (20)")
    parser.add_argument("--weight", type=float, default=0.3, help="n-gram block weight (0.3)")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args(argv)
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]

    max_seq = ClassifierConfig().max_seq_tokens
    rows = load_rows(args.folds)
    held, _ = heldout_rows(DEFAULT_DATA_DIR)
    rng = random.Random(HELDOUT_EMAIL_SEED)
    held_texts = {
        "plain": [model_input(r.text, max_seq) for r in held],
        "email": [model_input(as_email(r.text, rng), max_seq) for r in held],
    }
    gold = np.array([r.intent for r in held])
    embedder = Embedder.load(max_seq_tokens=max_seq, intra_op_threads=1)
    cache = default_cache_dir().parent / "router-pooling"
    train_pools = {
        "plain": cached_pools(embedder, rows.texts, cache),
        "email": cached_pools(embedder, rows.wrapped, cache),
    }
    held_pools = {kind: cached_pools(embedder, held_texts[kind], cache) for kind in held_texts}
    featurizer = TextFeaturizer.fit(
        rows.vocab_texts, max_words=WORD_VOCAB, max_chars=CHAR_VOCAB, min_df=MIN_DF
    )
    ngrams = {
        kind: _ngram_matrix([featurizer.transform(t) for t in texts], featurizer.dim)
        for kind, texts in {"train": rows.texts, **held_texts}.items()
    }
    share = EMAIL_SHARE
    print(
        f"{'candidate':<16} {'CV plain':>8} {'email':>6} {'mix':>6}   "
        f"{'held plain':>10} {'email':>6} {'mix':>6}"
    )
    right_first: dict[str, npt.NDArray[np.bool_]] = {}
    for candidate in args.candidates:
        fold_rows = Rows(
            rows.labels,
            rows.fold,
            block(train_pools["plain"], candidate),
            block(train_pools["email"], candidate),
            rows.texts,
            rows.wrapped,
            rows.vocab_texts,
        )
        cv_plain, cv_email = run(fold_rows, args.folds, C=args.C, ngram_weight=args.weight)
        model = LogisticRegression(C=args.C, max_iter=5000)
        model.fit(_design(fold_rows.plain, ngrams["train"], args.weight), list(rows.labels))
        classes = np.asarray(model.classes_)
        right = {
            kind: classes[
                model.predict_proba(
                    _design(block(held_pools[kind], candidate), ngrams[kind], args.weight)
                ).argmax(axis=1)
            ]
            == gold
            for kind in held_texts
        }
        print(
            f"{candidate:<16} {cv_plain:8.2%} {cv_email:6.2%} "
            f"{(1 - share) * cv_plain + share * cv_email:6.2%}   {right['plain'].mean():10.2%} "
            f"{right['email'].mean():6.2%} "
            f"{(1 - share) * right['plain'].mean() + share * right['email'].mean():6.2%}",
            flush=True,
        )
        for kind in held_texts:
            if kind not in right_first:
                right_first[kind] = right[kind]
                continue
            only_first, only_this, p = mcnemar(right_first[kind], right[kind])
            print(
                f"  vs {args.candidates[0]}, held-out {kind}: only it {only_first}, "
                f"only this {only_this}, McNemar p {p:.3f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
