"""Linear heads over the sentence embedding plus sparse TF-IDF n-grams, evaluated in numpy.

Why the n-grams: MiniLM embeddings alone plateau around 92 % on banking77, whose intents
often differ by one word ("pending top-up" vs "failed top-up"). Word 1-2 grams and
within-word character 2-4 grams add that lexical detail for a few microseconds of Python
per message. Both heads share one vocabulary, so a text is featurized once.

Everything a head needs is in the artifacts directory, so inference needs numpy only
(training uses scikit-learn). Every function here works on one text at a time, so its
output cannot depend on what else is in a batch (see embedder.py).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import re
import zipfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from splitpin.core.router.embedder import MODEL_SHA256, TOKENIZER_SHA256
from splitpin.errors import ConfigError

FloatArray = npt.NDArray[np.float32]
IndexArray = npt.NDArray[np.int32]

_WORD = re.compile(r"\b\w\w+\b")
MAX_REMEMBERED_WORDS = 200_000
"""Words whose character n-gram columns a featurizer remembers (a few tens of MB at most)."""
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def normalize(text: str) -> str:
    """Collapse whitespace: WordPiece splits on whitespace anyway, so the embedding of the
    normalized text equals the original's, and the rules and n-grams see one spelling."""
    return " ".join(text.split())


def word_ngrams(text: str) -> list[str]:
    """Lower-cased word unigrams and bigrams (words of two or more word characters)."""
    words = _WORD.findall(text.lower())
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


def char_ngrams(text: str, low: int = 2, high: int = 4) -> list[str]:
    """Character n-grams inside space-padded words, so they never straddle two words."""
    grams: list[str] = []
    for word in text.lower().split():
        padded = f" {word} "
        for n in range(low, high + 1):
            grams.extend(padded[i : i + n] for i in range(len(padded) - n + 1))
    return grams


@dataclass(frozen=True, slots=True)
class SparseRow:
    """One text's TF-IDF features: column indices (sorted) and values."""

    indices: IndexArray
    values: FloatArray


class TextFeaturizer:
    """Sublinear TF-IDF over word and character n-grams; each block L2-normalised."""

    def __init__(
        self,
        word_vocab: Sequence[str],
        char_vocab: Sequence[str],
        word_idf: FloatArray,
        char_idf: FloatArray,
    ) -> None:
        if len(word_vocab) != len(word_idf) or len(char_vocab) != len(char_idf):
            msg = "vocabulary and idf lengths differ"
            raise ValueError(msg)
        self.word_vocab = tuple(word_vocab)
        self.char_vocab = tuple(char_vocab)
        self.word_idf = np.asarray(word_idf, dtype=np.float32)
        self.char_idf = np.asarray(char_idf, dtype=np.float32)
        self._word_index = {g: i for i, g in enumerate(self.word_vocab)}
        offset = len(self.word_vocab)
        self._char_index = {g: offset + i for i, g in enumerate(self.char_vocab)}
        self._char_columns: dict[str, tuple[int, ...]] = {}
        """Word -> the columns of its character n-grams: words repeat across texts far more
        than texts do, and generating and looking up each n-gram was most of `transform`."""

    @property
    def dim(self) -> int:
        return len(self.word_vocab) + len(self.char_vocab)

    @classmethod
    def fit(
        cls, texts: Iterable[str], *, max_words: int, max_chars: int, min_df: int = 2
    ) -> TextFeaturizer:
        """Keep the n-grams in the most documents (ties broken alphabetically: reproducible)."""
        word_df: Counter[str] = Counter()
        char_df: Counter[str] = Counter()
        n_docs = 0
        for text in texts:
            n_docs += 1
            word_df.update(set(word_ngrams(text)))
            char_df.update(set(char_ngrams(text)))

        def top(df: Counter[str], limit: int) -> tuple[list[str], FloatArray]:
            kept = sorted((g for g, c in df.items() if c >= min_df), key=lambda g: (-df[g], g))
            vocab = sorted(kept[:limit])
            idf = [math.log((1 + n_docs) / (1 + df[g])) + 1.0 for g in vocab]
            return vocab, np.asarray(idf, dtype=np.float32)

        word_vocab, word_idf = top(word_df, max_words)
        char_vocab, char_idf = top(char_df, max_chars)
        return cls(word_vocab, char_vocab, word_idf, char_idf)

    def transform(self, text: str) -> SparseRow:
        """The features of one text (already normalized)."""
        word_index = self._word_index
        word_cols = [word_index[g] for g in word_ngrams(text) if g in word_index]
        char_cols: list[int] = []
        for word in text.lower().split():
            known = self._char_columns.get(word)
            if known is None:
                known = self._columns_of_word(word)
            char_cols.extend(known)
        word_idx, word_val = self._block(word_cols, self.word_idf, 0)
        char_idx, char_val = self._block(char_cols, self.char_idf, len(self.word_vocab))
        return SparseRow(
            indices=np.concatenate([word_idx, char_idx]).astype(np.int32),
            values=np.concatenate([word_val, char_val]).astype(np.float32),
        )

    def _columns_of_word(self, word: str) -> tuple[int, ...]:
        """`char_ngrams` of one word, as columns (n-grams outside the vocabulary dropped)."""
        index = self._char_index
        columns = tuple(index[g] for g in char_ngrams(word) if g in index)
        if len(self._char_columns) >= MAX_REMEMBERED_WORDS:
            self._char_columns.clear()  # hostile text cannot grow it without bound
        self._char_columns[word] = columns
        return columns

    @staticmethod
    def _block(columns: list[int], idf: FloatArray, offset: int) -> tuple[IndexArray, FloatArray]:
        if not columns:
            return np.empty(0, dtype=np.int32), np.empty(0, dtype=np.float32)
        # Sorted distinct columns and their counts in one call, not a Counter and a sort in
        # Python (the flow's hottest featurizer code); the same float32 values as before.
        cols, counts = np.unique(np.asarray(columns, dtype=np.int32), return_counts=True)
        tf = counts.astype(np.float32)
        vals = (1.0 + np.log(tf)) * idf[cols - offset]
        norm = float(np.sqrt(np.dot(vals, vals)))
        return cols, (vals / norm).astype(np.float32)


@dataclass(frozen=True, slots=True)
class NeighbourVote:
    """A cosine k-nearest-neighbour vote over the training rows' embeddings.

    Why: a linear head draws one boundary per intent; a neighbour vote remembers the
    individual phrasings ("card swallowed" said ten ways), and the two err on different
    rows. 5-fold CV on the banking77 training rows (bench/router_cv.py): mixing 0.3 of this
    vote into the linear head lifts accuracy 92.3 -> 92.8 % (as email: 90.8 -> 91.6 %).
    The rows are stored PCA-projected to `dims` and int8 (the artifacts stay small); the
    query is projected alike. Ties in similarity go to the earlier row (stable sort)."""

    mean: FloatArray  # (384,) centre of the training embeddings
    projection: FloatArray  # (384, d)
    vectors: FloatArray  # (N, d) unit rows: `codes` x `scale`, re-normalised
    labels: npt.NDArray[np.intp]  # (N,) column of each row's label in the head
    k: int
    temperature: float
    codes: npt.NDArray[np.int8]  # (N, d) what the artifact stores
    scale: FloatArray  # (d,)

    def proba(self, embedding: FloatArray, n_classes: int) -> npt.NDArray[np.float64]:
        """Similarity-weighted vote of the k nearest rows: softmax of (cosine / temperature)
        over the neighbours, summed per label. Depends on this embedding only."""
        query = (np.asarray(embedding, dtype=np.float32) - self.mean) @ self.projection
        query = query / max(float(np.sqrt(np.dot(query, query))), 1e-12)
        sims = (self.vectors @ query).astype(np.float64)
        k = min(self.k, sims.size)
        # The k best in a stable order (ties to the earlier row) without sorting them all:
        # every row at least as similar as the k-th best, in row order, then sorted.
        kth = np.partition(sims, sims.size - k)[sims.size - k]
        near = np.flatnonzero(sims >= kth)
        order = near[np.argsort(-sims[near], kind="stable")][:k]
        top = sims[order]
        weights = np.exp((top - top[0]) / self.temperature)
        out = np.zeros(n_classes, dtype=np.float64)
        np.add.at(out, self.labels[order], weights)
        return np.asarray(out / out.sum(), dtype=np.float64)


@dataclass(frozen=True, slots=True)
class LinearHead:
    """Multinomial logistic regression: softmax(b + e @ W_emb + tfidf @ W_txt), optionally
    mixed with a neighbour vote: (1 - a) x that + a x vote, a = `neighbour_weight`."""

    labels: tuple[str, ...]
    w_emb: FloatArray  # (384, K)
    w_txt: FloatArray  # (V, K), already scaled by the text-feature weight used in training
    bias: FloatArray  # (K,)
    neighbours: NeighbourVote | None = None
    neighbour_weight: float = 0.0

    def logits(self, embedding: FloatArray, row: SparseRow) -> npt.NDArray[np.float64]:
        """The pre-softmax scores for one text (what temperature scaling divides); with a
        neighbour vote, the log of the mixed probabilities (softmax gives them back)."""
        logits = self.bias + embedding @ self.w_emb
        if row.indices.size:
            logits = logits + row.values @ self.w_txt[row.indices]
        linear = np.asarray(logits, dtype=np.float64)
        if self.neighbours is None or self.neighbour_weight <= 0.0:
            return linear
        vote = self.neighbours.proba(embedding, len(self.labels))
        mixed = mix_vote(softmax(linear), vote, self.neighbour_weight)
        return np.log(np.maximum(mixed, 1e-300))

    def proba(
        self, embedding: FloatArray, row: SparseRow, temperature: float = 1.0
    ) -> npt.NDArray[np.float64]:
        """Class probabilities for one text (float64 softmax for a stable argmax).

        `temperature` 1.0 is the trained head the routing thresholds were tuned on; the
        calibrated temperature (artifacts/calibration.json) gives probabilities that
        match observed accuracy. Dividing by T > 0 never changes the argmax."""
        return softmax(self.logits(embedding, row), temperature)


def mix_vote(
    linear: npt.NDArray[np.float64], vote: npt.NDArray[np.float64], weight: float
) -> npt.NDArray[np.float64]:
    """(1 - weight) x the linear head's probabilities + weight x the neighbour vote's: the
    one mix the router computes and `bench/router_cv.py` scores."""
    return (1.0 - weight) * linear + weight * vote


def softmax(logits: npt.ArrayLike, temperature: float = 1.0) -> npt.NDArray[np.float64]:
    """Softmax over the last axis of logits / temperature, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    if temperature != 1.0:
        z = z / temperature
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    return np.asarray(p / p.sum(axis=-1, keepdims=True), dtype=np.float64)


# --- Calibration: temperature scaling and expected calibration error ---------------------
#
# A logistic head trained to convergence with a strong C is over-confident on new text;
# one scalar T fitted on rows training never saw (minimum negative log-likelihood) fixes
# the scale without touching the ranking. Fitting and figures live here (numpy only) so the
# router and the local fleet's calibration (splitpin/providers/calibration.py) share them.

ECE_BINS = 10
TEMPERATURE_BOUNDS = (0.05, 20.0)


def negative_log_likelihood(
    logits: npt.ArrayLike, labels: npt.ArrayLike, temperature: float = 1.0
) -> float:
    """Mean -log p(true class) of softmax(logits / T); labels are column indices."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    y = np.asarray(labels, dtype=np.intp)
    return float(np.mean(log_norm - z[np.arange(len(y)), y]))


def fit_temperature(logits: npt.ArrayLike, labels: npt.ArrayLike, iterations: int = 80) -> float:
    """The T minimising the NLL: golden-section search on log T (the NLL is convex in 1/T,
    unimodal in log T), deterministic, rounded to 4 decimals for a reproducible artifact."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or len(z) == 0:
        msg = "fit_temperature needs a non-empty (n, K) array of logits"
        raise ValueError(msg)
    lo, hi = (math.log(b) for b in TEMPERATURE_BOUNDS)
    ratio = (math.sqrt(5.0) - 1.0) / 2.0

    def loss(log_t: float) -> float:
        return negative_log_likelihood(z, labels, math.exp(log_t))

    a, b = lo + (1 - ratio) * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(iterations):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - ratio) * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return round(math.exp((lo + hi) / 2.0), 4)


def reliability_bins(
    confidence: npt.ArrayLike, correct: npt.ArrayLike, bins: int = ECE_BINS
) -> list[tuple[int, float, float]]:
    """Per equal-width bin of [0, 1]: (count, mean confidence, accuracy); 1.0 is in the last."""
    c = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    y = np.asarray(correct, dtype=np.float64)
    index = np.minimum((c * bins).astype(np.intp), bins - 1)
    out: list[tuple[int, float, float]] = []
    for b in range(bins):
        mask = index == b
        n = int(mask.sum())
        out.append((n, float(c[mask].mean()) if n else 0.0, float(y[mask].mean()) if n else 0.0))
    return out


def expected_calibration_error(
    confidence: npt.ArrayLike, correct: npt.ArrayLike, bins: int = ECE_BINS
) -> float:
    """Sum over bins of (share of samples) x |accuracy - mean confidence|: 0 is calibrated."""
    table = reliability_bins(confidence, correct, bins)
    total = sum(n for n, _, _ in table)
    if total == 0:
        return 0.0
    return float(sum(n * abs(acc - conf) for n, conf, acc in table) / total)


def quantize_int8(weights: npt.NDArray[np.floating]) -> tuple[npt.NDArray[np.int8], FloatArray]:
    """Symmetric int8 per column (class): keeps the sparse n-gram matrices small on disk."""
    w = np.asarray(weights, dtype=np.float64)
    scale = np.abs(w).max(axis=0) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def dequantize_int8(q: npt.NDArray[np.int8], scale: FloatArray) -> FloatArray:
    return (q.astype(np.float32) * scale.astype(np.float32)[None, :]).astype(np.float32)


def save_npz(path: Path, arrays: Mapping[str, npt.NDArray[np.generic]]) -> None:
    """Like numpy.savez_compressed but byte-reproducible: fixed zip timestamps and order."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]))
            archive.writestr(info, member.getvalue())
    path.write_bytes(buffer.getvalue())


def load_npz(path: Path) -> dict[str, npt.NDArray[np.generic]]:
    """Every array of an .npz written by save_npz (no pickles)."""
    with np.load(path, allow_pickle=False) as data:
        return {name: np.asarray(data[name]) for name in data.files}


# --- The trained heads on disk: heads.npz, vocab.json and manifest.json. -----------------
#
# The manifest records how the heads were made (data hashes, command, versions, the
# embedding model's hash, hyper-parameters, validation figures) and the sha256 of the other
# two files, checked at load: heads trained on other embeddings, or edited by hand, would
# classify silently wrong, so they are refused instead.

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
HEADS_FILE = "heads.npz"
VOCAB_FILE = "vocab.json"
OOS_LABEL = "oos"
_TRAIN_HINT = "run `splitpin router train` to create it"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class HeadBundle:
    """Everything the classifier needs besides the transformer."""

    featurizer: TextFeaturizer
    intent: LinearHead  # banking77
    domain: LinearHead  # CLINC150, including the `oos` class
    oos_floor: float  # tuned: out of scope when the best in-scope probability is below it
    oos_veto: float  # tuned: a banking77 intent at least this sure is never out of scope
    trivial_veto: float  # tuned: ... nor trivial (1.0: no veto)
    trivial_intents: frozenset[str]
    manifest: dict[str, Any]


def _head_arrays(prefix: str, head: LinearHead) -> dict[str, np.ndarray[Any, Any]]:
    q, scale = quantize_int8(head.w_txt)
    arrays: dict[str, np.ndarray[Any, Any]] = {
        f"{prefix}_w_emb": head.w_emb.astype(np.float16),
        f"{prefix}_w_txt_q": q,
        f"{prefix}_w_txt_scale": scale,
        f"{prefix}_bias": head.bias.astype(np.float32),
    }
    vote = head.neighbours
    if vote is not None:
        arrays |= {
            f"{prefix}_knn_mean": vote.mean.astype(np.float32),
            f"{prefix}_knn_projection": vote.projection.astype(np.float16),
            f"{prefix}_knn_vectors_q": vote.codes,
            f"{prefix}_knn_vectors_scale": vote.scale.astype(np.float32),
            f"{prefix}_knn_labels": vote.labels.astype(np.int16),
            f"{prefix}_knn_params": np.array(
                [vote.k, vote.temperature, head.neighbour_weight], dtype=np.float64
            ),
        }
    return arrays


def neighbour_vote(
    embeddings: npt.NDArray[np.float32],
    label_columns: npt.ArrayLike,
    *,
    dims: int,
    k: int,
    temperature: float,
) -> NeighbourVote:
    """The vote as it will be loaded: PCA of the rows (numpy SVD) to `dims`, int8 rows
    re-normalised, so training measures exactly what the runtime computes."""
    x = np.asarray(embeddings, dtype=np.float64)
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    # C order, as the artifact loads it: BLAS rounds differently by layout.
    projection = np.ascontiguousarray(vt[:dims].T.astype(np.float16).astype(np.float32))
    mean32 = mean.astype(np.float32)
    q, scale = quantize_int8((x.astype(np.float32) - mean32) @ projection)
    return _vote(
        mean32, projection, q, scale, np.asarray(label_columns, dtype=np.intp), k, temperature
    )


def _vote(
    mean: FloatArray,
    projection: FloatArray,
    q: npt.NDArray[np.int8],
    scale: FloatArray,
    labels: npt.NDArray[np.intp],
    k: int,
    temperature: float,
) -> NeighbourVote:
    vectors = dequantize_int8(q, scale)
    norms = np.sqrt((vectors * vectors).sum(axis=1, keepdims=True))
    vectors = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return NeighbourVote(mean, projection, vectors, labels, k, temperature, q, scale)


def _head_from(arrays: dict[str, Any], prefix: str, labels: tuple[str, ...]) -> LinearHead:
    w_emb = np.asarray(arrays[f"{prefix}_w_emb"], dtype=np.float32)
    w_txt = dequantize_int8(arrays[f"{prefix}_w_txt_q"], arrays[f"{prefix}_w_txt_scale"])
    bias = np.asarray(arrays[f"{prefix}_bias"], dtype=np.float32)
    k = len(labels)
    if w_emb.shape[1] != k or w_txt.shape[1] != k or bias.shape != (k,):
        msg = f"{HEADS_FILE}: head {prefix!r} shapes do not match its {k} labels"
        raise ConfigError(msg)
    if f"{prefix}_knn_vectors_q" not in arrays:
        return LinearHead(labels=labels, w_emb=w_emb, w_txt=w_txt, bias=bias)
    n_neighbours, temperature, weight = (float(x) for x in arrays[f"{prefix}_knn_params"])
    columns = np.asarray(arrays[f"{prefix}_knn_labels"], dtype=np.intp)
    if columns.size and (columns.min() < 0 or columns.max() >= k):
        msg = f"{HEADS_FILE}: head {prefix!r} neighbour labels outside its {k} labels"
        raise ConfigError(msg)
    vote = _vote(
        np.asarray(arrays[f"{prefix}_knn_mean"], dtype=np.float32),
        np.asarray(arrays[f"{prefix}_knn_projection"], dtype=np.float32),
        arrays[f"{prefix}_knn_vectors_q"],
        np.asarray(arrays[f"{prefix}_knn_vectors_scale"], dtype=np.float32),
        columns,
        int(n_neighbours),
        temperature,
    )
    return LinearHead(labels, w_emb, w_txt, bias, neighbours=vote, neighbour_weight=weight)


def write_bundle(
    out_dir: Path,
    *,
    featurizer: TextFeaturizer,
    intent: LinearHead,
    domain: LinearHead,
    decision: dict[str, float],
    trivial_intents: frozenset[str],
    manifest: dict[str, Any],
) -> dict[str, Any]:
    """Write the three files; returns the manifest as written (with file hashes)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays = {
        **_head_arrays("intent", intent),
        **_head_arrays("domain", domain),
        "word_idf": featurizer.word_idf,
        "char_idf": featurizer.char_idf,
    }
    save_npz(out_dir / HEADS_FILE, arrays)
    vocab = {"word": list(featurizer.word_vocab), "char": list(featurizer.char_vocab)}
    (out_dir / VOCAB_FILE).write_text(
        json.dumps(vocab, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8"
    )
    full = {
        "format": FORMAT_VERSION,
        **manifest,
        "labels": {
            "intent": list(intent.labels),
            "domain": list(domain.labels),
            "trivial_intents": sorted(trivial_intents),
        },
        "decision": decision,
        "files": {name: sha256_file(out_dir / name) for name in (HEADS_FILE, VOCAB_FILE)},
    }
    (out_dir / MANIFEST).write_text(
        json.dumps(full, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return full


def read_bundle(directory: Path) -> HeadBundle:
    """Load and verify the artifacts; ConfigError (naming the file) if anything is off."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        msg = f"no trained classifier at {directory} ({MANIFEST} missing); {_TRAIN_HINT}"
        raise ConfigError(msg)
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files: dict[str, str] = manifest["files"]
        labels = manifest["labels"]
        model = manifest["model"]
        decision = {k: float(v) for k, v in manifest["decision"].items()}
        oos_floor = decision["out_of_scope_floor"]
        oos_veto = decision["out_of_scope_banking_veto"]
        trivial_veto = decision["trivial_banking_veto"]
        fmt = manifest["format"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        msg = f"{manifest_path} is unreadable or incomplete ({exc!r}); {_TRAIN_HINT}"
        raise ConfigError(msg) from exc
    if fmt != FORMAT_VERSION:
        msg = f"{manifest_path}: format {fmt}, this splitpin reads {FORMAT_VERSION}; {_TRAIN_HINT}"
        raise ConfigError(msg)
    for key, pinned in (("sha256", MODEL_SHA256), ("tokenizer_sha256", TOKENIZER_SHA256)):
        if model.get(key) != pinned:
            msg = (
                f"{manifest_path}: heads were trained on model.{key} {model.get(key)}, "
                f"the pinned one is {pinned}; {_TRAIN_HINT}"
            )
            raise ConfigError(msg)
    for name in (HEADS_FILE, VOCAB_FILE):
        path = directory / name
        if not path.is_file():
            msg = f"{path} is missing; {_TRAIN_HINT}"
            raise ConfigError(msg)
        digest = sha256_file(path)
        if digest != files.get(name):
            msg = f"{path} has sha256 {digest}, the manifest says {files.get(name)}; {_TRAIN_HINT}"
            raise ConfigError(msg)
    arrays = load_npz(directory / HEADS_FILE)
    vocab = json.loads((directory / VOCAB_FILE).read_text(encoding="utf-8"))
    featurizer = TextFeaturizer(
        vocab["word"],
        vocab["char"],
        np.asarray(arrays["word_idf"], dtype=np.float32),
        np.asarray(arrays["char_idf"], dtype=np.float32),
    )
    intent = _head_from(arrays, "intent", tuple(labels["intent"]))
    domain = _head_from(arrays, "domain", tuple(labels["domain"]))
    if OOS_LABEL not in domain.labels:
        msg = f"{manifest_path}: the domain head has no {OOS_LABEL!r} class; {_TRAIN_HINT}"
        raise ConfigError(msg)
    for head in (intent, domain):
        if head.w_txt.shape[0] != featurizer.dim:
            msg = f"{directory / HEADS_FILE}: n-gram weights do not match {VOCAB_FILE}"
            raise ConfigError(msg)
    return HeadBundle(
        featurizer=featurizer,
        intent=intent,
        domain=domain,
        oos_floor=oos_floor,
        oos_veto=oos_veto,
        trivial_veto=trivial_veto,
        trivial_intents=frozenset(labels["trivial_intents"]),
        manifest=manifest,
    )
