"""Does the out-of-scope threshold transfer to data it was not chosen on?

The shipped rule flags a message when `classifier.out_of_scope_score` exceeds
`classifier.out_of_scope_threshold`. Its floor and veto were tuned on CLINC150 `val` (and
the banking77 held-out rows), so figures on those rows are not transfer figures. Here the
threshold is chosen by K-fold cross-validation (`cv_threshold`) over the rows the heads never
trained on: CLINC150 `val` + `oos_val`, and the calibration half of the banking77 held-out
rows (`calibration.halves`; in scope on this banking platform). CLINC150 `train` is left
out: the heads were fitted on it, so their scores there are in-sample and far too sure.
Each fold's threshold is chosen on the other folds (fewest mistakes: out-of-scope missed +
in-scope flagged, the objective training used), so the pooled out-of-fold figures estimate
what the procedure does on unseen rows; the final threshold is chosen on all folds. Then
the banking77 evaluation half is scored, and CLINC150 `test` + `oos_test` when a file with
them is given (`--clinc-test`: `../shared/data` holds the test split back on purpose).

A second method is printed beside it: kNN distance on the MiniLM embeddings (score = 1 -
mean cosine of the k nearest in-scope training rows), threshold cross-validated on CLINC150
train + oos_train folds (max F1; the reference excludes the fold, so nothing is in-sample).

    PYTHONPATH=. .venv/bin/python bench/oos_transfer.py [--no-knn] [--folds 5]
        [--clinc-test data_full.json] [--json]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from splitpin.core.router.classifier import Classifier, model_input
from splitpin.core.router.evaluate import Pair
from splitpin.core.router.train import (
    DEFAULT_DATA_DIR,
    TrainingData,
    _clinc_pairs,
    default_cache_dir,
    embed_cached,
    load_training_data,
)
from splitpin.core.settings import load_settings
from splitpin.providers.calibration import halves

FloatArray = npt.NDArray[np.float32]
Scores = npt.NDArray[np.float64]
Flags = npt.NDArray[np.bool_]
FOLDS = 5
SEED = 14


# --- The threshold procedure (pure logic; tests/unit/test_oos_transfer.py) ------------


def mistakes(scores: Scores, is_oos: Flags, threshold: float) -> int:
    """Out-of-scope rows not flagged + in-scope rows flagged, flagging `score > threshold`
    (the classifier's rule)."""
    flagged = scores > threshold
    return int((is_oos & ~flagged).sum() + (~is_oos & flagged).sum())


def best_threshold(scores: Scores, is_oos: Flags, default: float) -> float:
    """The threshold with the fewest mistakes among the observed scores (and `default`);
    ties go to the candidate nearest `default`, then the lower one: a flat objective never
    moves the shipped value."""
    observed = np.round(scores, 4)
    lowest = [round(float(observed.min()) - 1e-4, 4)] if len(observed) else []  # flag all
    candidates = np.unique(np.concatenate([observed, lowest, [default]]))
    best = min(
        candidates.tolist(),
        key=lambda t: (mistakes(scores, is_oos, t), abs(t - default), t),
    )
    return float(best)


def fold_ids(n: int, k: int, seed: int) -> npt.NDArray[np.intp]:
    """Fold of each row: a seeded permutation dealt round-robin (sizes differ by <= 1)."""
    return np.asarray(np.random.default_rng(seed).permutation(n) % k, dtype=np.intp)


@dataclass(frozen=True)
class CrossValidated:
    threshold: float  # chosen on all rows
    fold_thresholds: tuple[float, ...]
    out_of_fold: Flags  # each row flagged by the threshold chosen without its fold

    def recall(self, is_oos: Flags) -> float:
        return float((self.out_of_fold & is_oos).sum() / max(1, is_oos.sum()))

    def false_flag_rate(self, is_oos: Flags) -> float:
        return float((self.out_of_fold & ~is_oos).sum() / max(1, (~is_oos).sum()))


def cv_threshold(
    scores: Scores, is_oos: Flags, *, k: int = FOLDS, seed: int = SEED, default: float = 0.5
) -> CrossValidated:
    """Choose the threshold on k-1 folds, flag the k-th with it, for every fold; then choose
    on all rows. Rows of a fold never influence the threshold that flags them."""
    if len(scores) != len(is_oos) or len(scores) < k:
        msg = f"need at least k={k} rows with a label each, got {len(scores)}/{len(is_oos)}"
        raise ValueError(msg)
    folds = fold_ids(len(scores), k, seed)
    flagged = np.zeros(len(scores), dtype=bool)
    chosen: list[float] = []
    for f in range(k):
        train = folds != f
        t = best_threshold(scores[train], is_oos[train], default)
        chosen.append(t)
        flagged[~train] = scores[~train] > t
    return CrossValidated(best_threshold(scores, is_oos, default), tuple(chosen), flagged)


# --- Scoring with the shipped classifier ---------------------------------------------


@dataclass(frozen=True)
class Scored:
    scores: Scores  # out_of_scope_score as the classifier exports it (4 decimals)
    domain: tuple[str, ...]  # best in-scope CLINC150 intent (what an unflagged row is called)
    gold: tuple[str, ...]


def score(clf: Classifier, pairs: Sequence[Pair]) -> Scored:
    results = clf.classify_batch([t for t, _ in pairs])
    return Scored(
        np.array([c.out_of_scope_score for c in results], dtype=np.float64),
        tuple(c.domain_intent for c in results),
        tuple(label for _, label in pairs),
    )


def figures(s: Scored, threshold: float, in_scope_label: str | None = None) -> dict[str, float]:
    """OOS recall, in-scope rows flagged, and (CLINC150) in-scope accuracy: right intent and
    not flagged."""
    gold = np.array(s.gold)
    is_oos = gold == "oos" if in_scope_label is None else np.zeros(len(gold), dtype=bool)
    flagged = s.scores > threshold
    out = {
        "in_scope_flagged": float((flagged & ~is_oos).sum() / max(1, (~is_oos).sum())),
    }
    if is_oos.any():
        out["oos_recall"] = float((flagged & is_oos).sum() / is_oos.sum())
        right = (np.array(s.domain) == gold) & ~flagged & ~is_oos
        out["in_scope_accuracy"] = float(right.sum() / max(1, (~is_oos).sum()))
    return out


def knn_score(x: FloatArray, ref: FloatArray, k: int) -> Scores:
    """Higher = farther from everything in scope."""
    sims = x @ ref.T
    top = -np.partition(-sims, k - 1, axis=1)[:, :k]
    return np.asarray(1.0 - top.mean(axis=1), dtype=np.float64)


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument(
        "--clinc-test",
        type=Path,
        default=None,
        help="CLINC150 data_full.json with test + oos_test (not in ../shared/data)",
    )
    parser.add_argument("--folds", type=int, default=FOLDS)
    parser.add_argument("--no-knn", action="store_true", help="the shipped rule only")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    gov = load_settings().governance
    # Threshold 1 flags nothing, so domain_intent is always the in-scope argmax: the
    # figures apply each threshold to the exported score themselves.
    never = gov.classifier.model_copy(update={"out_of_scope_threshold": 1.0})
    clf = Classifier.load(never, gov.routing)
    configured = gov.classifier.out_of_scope_threshold
    data = load_training_data(args.data_dir)
    clinc_test: list[Pair] = []
    if args.clinc_test is not None:  # held back from ../shared/data on purpose
        raw = json.loads(args.clinc_test.read_text(encoding="utf-8"))
        clinc_test = _clinc_pairs(raw, "test", args.clinc_test) + _clinc_pairs(
            raw, "oos_test", args.clinc_test
        )
    fit_half, eval_half = halves([t for t, _ in data.banking_val], [c for _, c in data.banking_val])
    bank_fit = [data.banking_val[i] for i in fit_half]
    bank_eval = [data.banking_val[i] for i in eval_half]

    val, test = score(clf, data.clinc_val), score(clf, clinc_test) if clinc_test else None
    b_fit, b_eval = score(clf, bank_fit), score(clf, bank_eval)
    pool = np.concatenate([val.scores, b_fit.scores])
    pool_oos = np.concatenate([np.array(val.gold) == "oos", np.zeros(len(bank_fit), dtype=bool)])
    cv = cv_threshold(pool, pool_oos, k=args.folds, default=configured)
    print(
        f"shipped rule, threshold by {args.folds}-fold CV on CLINC150 val+oos_val "
        f"({len(val.gold)}) + banking77 calibration half ({len(bank_fit)}): chosen "
        f"{cv.threshold:.4f} (folds {', '.join(f'{t:.4f}' for t in cv.fold_thresholds)}; "
        f"configured {configured})"
    )
    print(
        f"  out-of-fold: oos recall {_pct(cv.recall(pool_oos))}, in-scope flagged "
        f"{_pct(cv.false_flag_rate(pool_oos))}"
    )
    report: dict[str, dict[str, float]] = {}
    for name, t in (("configured", configured), ("cv", cv.threshold)):
        fig_bank = figures(b_eval, t, in_scope_label="banking")
        fig_val = figures(val, t)
        report[name] = {
            "threshold": t,
            "banking_eval_flagged": fig_bank["in_scope_flagged"],
            **{f"val_{k}": v for k, v in fig_val.items()},
        }
        line = (
            f"  {name:10} t={t:.4f}: banking77 evaluation half flagged "
            f"{_pct(fig_bank['in_scope_flagged'])}; CLINC150 val (floor and veto were tuned "
            f"there: not transfer) oos recall {_pct(fig_val['oos_recall'])}, in-scope accuracy "
            f"{_pct(fig_val['in_scope_accuracy'])}"
        )
        if clinc_test:
            assert test is not None
            fig_test = figures(test, t)
            report[name].update({f"test_{k}": v for k, v in fig_test.items()})
            line += (
                f"; CLINC150 test oos recall {_pct(fig_test['oos_recall'])}, in-scope "
                f"accuracy {_pct(fig_test['in_scope_accuracy'])}, in-scope flagged "
                f"{_pct(fig_test['in_scope_flagged'])}"
            )
        print(line)
    if not clinc_test:
        print("  CLINC150 test: not scored (held back from ../shared/data; pass --clinc-test)")
    if not args.no_knn:
        knn(clf, data, clinc_test, args, gov.classifier.max_seq_tokens)
    if args.json:
        print(json.dumps({"cv_threshold": cv.threshold, "folds": cv.fold_thresholds, **report}))


def f1_threshold(s_in: Scores, s_oos: Scores, oos_weight: float) -> float:
    """Max F1 of "score >= t means out of scope" over the observed scores; each out-of-scope
    score counts `oos_weight` (scored once per fold against in-scope rows scored once)."""
    best_f1, best_t = -1.0, 1.0
    for t in np.unique(np.round(np.concatenate([s_in, s_oos]), 4)).tolist():
        tp = float((s_oos >= t).sum()) * oos_weight
        fp = float((s_in >= t).sum())
        fn = len(s_oos) * oos_weight - tp
        f1 = 2 * tp / max(1e-9, 2 * tp + fp + fn)
        if f1 > best_f1:
            best_f1, best_t = f1, float(t)
    return best_t


def knn(
    clf: Classifier, data: TrainingData, clinc_test: list[Pair], args: argparse.Namespace, seq: int
) -> None:
    """kNN on embeddings, threshold by CV (max F1) on CLINC150 train + oos_train folds;
    figures on val (which chose nothing here) and test when given."""

    def embed(pairs: list[Pair]) -> tuple[FloatArray, npt.NDArray[np.str_]]:
        texts = [model_input(t, seq) for t, _ in pairs]
        distinct = sorted(set(texts))
        rows = embed_cached(clf.embedder, distinct, args.cache_dir, progress=False, echo=print)
        at = {t: i for i, t in enumerate(distinct)}
        return rows[[at[t] for t in texts]], np.array([label for _, label in pairs])

    x_tr, y_tr = embed(data.clinc_train)
    x_bank_val, _ = embed(data.banking_val)
    x_bank_train, _ = embed(data.banking_train)
    judged = {"val": embed(data.clinc_val)}
    if clinc_test:
        judged["test"] = embed(clinc_test)
    ins, oos = np.where(y_tr != "oos")[0], np.where(y_tr == "oos")[0]
    folds = fold_ids(len(ins), args.folds, 0)
    for k in (1, 5, 10):
        for name, extra in (("clinc150", None), ("clinc150+banking77", x_bank_train)):
            s_in, s_oos = [], []
            for f in range(args.folds):
                ref = x_tr[ins[folds != f]]
                ref = ref if extra is None else np.vstack([ref, extra])
                s_in.append(knn_score(x_tr[ins[folds == f]], ref, k))
                s_oos.append(knn_score(x_tr[oos], ref, k))
            t = f1_threshold(np.concatenate(s_in), np.concatenate(s_oos), 1 / args.folds)
            ref = x_tr[ins] if extra is None else np.vstack([x_tr[ins], extra])
            line = f"kNN k={k:<2} in-scope={name:18} cv threshold {t:.4f}:"
            for split, (x, y) in judged.items():
                gold = y == "oos"
                pred = knn_score(x, ref, k) >= t
                line += (
                    f" {split} oos recall {_pct((pred & gold).sum() / gold.sum())}, in-scope "
                    f"flagged {_pct((pred & ~gold).sum() / (~gold).sum())};"
                )
            bank = (knn_score(x_bank_val, ref, k) >= t).mean()
            print(f"{line} banking77 held-out flagged {_pct(bank)}")


if __name__ == "__main__":
    main()
