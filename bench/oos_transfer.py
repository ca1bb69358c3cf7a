"""Does an out-of-scope threshold transfer? kNN distance on the MiniLM embeddings.

Score = 1 - mean cosine of the k nearest in-scope training embeddings (CLINC150 train
in-scope, optionally + banking77's training part). The threshold is chosen by 5-fold
cross-validation on CLINC150 train + oos_train only (max F1 of out-of-scope detection),
then measured on val + oos_val, which chose nothing; CLINC150 test is never read. The
shipped classifier's figures on val are printed beside it (its floor and veto were tuned
on val, so those are not transfer figures).

    PYTHONPATH=. .venv/bin/python bench/oos_transfer.py [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import numpy.typing as npt

from splitpin.core.router.classifier import Classifier, model_input
from splitpin.core.router.evaluate import Pair
from splitpin.core.router.train import default_cache_dir, embed_cached, load_training_data
from splitpin.core.settings import REPO_ROOT, load_settings

FloatArray = npt.NDArray[np.float32]
FOLDS = 5


def knn_score(x: FloatArray, ref: FloatArray, k: int) -> npt.NDArray[np.float64]:
    """Higher = farther from everything in scope."""
    sims = x @ ref.T
    top = -np.partition(-sims, k - 1, axis=1)[:, :k]
    return np.asarray(1.0 - top.mean(axis=1), dtype=np.float64)


def best_threshold(s_in: npt.NDArray[np.float64], s_oos: npt.NDArray[np.float64]) -> float:
    """Max F1 of 'score >= t means out of scope' over the observed scores."""
    best_f1, best_t = -1.0, 1.0
    for t in np.unique(np.round(np.concatenate([s_in, s_oos]), 4)):
        tp = float((s_oos >= t).mean()) * len(s_oos) / FOLDS  # oos rows are scored per fold
        fp = float((s_in >= t).sum())
        fn = len(s_oos) / FOLDS - tp
        f1 = 2 * tp / max(1e-9, 2 * tp + fp + fn)
        if f1 > best_f1:
            best_f1, best_t = f1, float(t)
    return best_t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    args = parser.parse_args()
    gov = load_settings().governance
    clf = Classifier.load(gov.classifier, gov.routing)
    data = load_training_data(args.data_dir)
    seq = gov.classifier.max_seq_tokens

    def embed(pairs: list[Pair]) -> tuple[FloatArray, npt.NDArray[np.str_]]:
        texts = [model_input(t, seq) for t, _ in pairs]
        distinct = sorted(set(texts))
        rows = embed_cached(clf.embedder, distinct, args.cache_dir, progress=False, echo=print)
        at = {t: i for i, t in enumerate(distinct)}
        return rows[[at[t] for t in texts]], np.array([label for _, label in pairs])

    x_tr, y_tr = embed(data.clinc_train)
    x_va, y_va = embed(data.clinc_val)
    x_bank_val, _ = embed(data.banking_val)
    x_bank_train, _ = embed(data.banking_train)
    ins, oos = np.where(y_tr != "oos")[0], np.where(y_tr == "oos")[0]
    folds = np.random.default_rng(0).permutation(len(ins)) % FOLDS
    gold = y_va == "oos"
    for k in (1, 5, 10):
        for name, extra in (("clinc150", None), ("clinc150+banking77", x_bank_train)):
            s_in, s_oos = [], []
            for f in range(FOLDS):
                ref = x_tr[ins[folds != f]]
                ref = ref if extra is None else np.vstack([ref, extra])
                s_in.append(knn_score(x_tr[ins[folds == f]], ref, k))
                s_oos.append(knn_score(x_tr[oos], ref, k))
            t = best_threshold(np.concatenate(s_in), np.concatenate(s_oos))
            ref = x_tr[ins] if extra is None else np.vstack([x_tr[ins], extra])
            pred = knn_score(x_va, ref, k) >= t
            recall = (pred & gold).sum() / gold.sum()
            precision = (pred & gold).sum() / max(1, pred.sum())
            bank = (knn_score(x_bank_val, ref, k) >= t).mean()
            print(
                f"kNN k={k:<2} in-scope={name:18} cv threshold {t:.4f}: val oos recall "
                f"{100 * recall:.2f} %, precision {100 * precision:.2f} %, in-scope val flagged "
                f"{100 * (pred & ~gold).sum() / (~gold).sum():.2f} %, banking77 held-out flagged "
                f"{100 * bank:.2f} %"
            )
    shipped = np.array([c.out_of_scope for c in clf.classify_batch([t for t, _ in data.clinc_val])])
    print(
        f"shipped (tuned on val): val oos recall "
        f"{100 * (shipped & gold).sum() / gold.sum():.2f} %, "
        f"precision {100 * (shipped & gold).sum() / shipped.sum():.2f} %"
    )


if __name__ == "__main__":
    main()
