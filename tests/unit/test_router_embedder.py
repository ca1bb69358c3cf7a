"""MiniLM embeddings: hash-checked loading, pooling, truncation and batch independence.

Batch independence is what makes crash recovery safe: the flow re-emits decisions after a
restart and they must be byte-identical, yet the micro-batch a text lands in differs.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitpin.core.router.classifier import Classifier
from splitpin.core.router.embedder import (
    EMBEDDING_DIM,
    MODEL_PACKAGE,
    MODEL_RESOURCE,
    MODEL_SHA256,
    TOKENIZER_PACKAGE,
    TOKENIZER_RESOURCE,
    Embedder,
    open_session,
    plan_calls,
    read_verified,
)
from splitpin.errors import ConfigError
from splitpin.schemas.governance import ClassifierConfig, RoutingConfig

TEXTS = [
    "hi",
    "I lost my card",
    "My card was stolen yesterday and someone used it at a petrol station",
    "What is the exchange rate for euros?",
    "why was I charged twice for the same payment at the grocery store last week",
    "top up failed",
    "How long does a transfer to another country take? I sent money to my sister in Spain "
    "on Monday and she still has not received it, which is strange because usually it is fast.",
    "can you tell me a joke",
    "I lost my card",  # a duplicate inside the same batch
    "verify identity",
    "Is there a fee for ATM withdrawals abroad?",
    "what's the weather tomorrow",
    " ".join(["my card payment was declined at the shop"] * 40),  # truncated at 128 tokens
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    """Without the memo: these tests are about what the model computes."""
    return Embedder.load(max_seq_tokens=128, intra_op_threads=1, memo_size=0)


@pytest.fixture(scope="module")
def alone(embedder: Embedder) -> np.ndarray:
    return np.stack([embedder.embed([t])[0] for t in TEXTS])


def test_shape_dtype_and_unit_norm(embedder: Embedder, alone: np.ndarray) -> None:
    out = embedder.embed(TEXTS[:3])
    assert out.shape == (3, EMBEDDING_DIM) and out.dtype == np.float32
    assert np.allclose(np.linalg.norm(alone, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, EMBEDDING_DIM)


def test_embeddings_carry_meaning(embedder: Embedder) -> None:
    lost, missing, weather = embedder.embed(
        ["I lost my card", "my card is missing", "what is the weather like in Paris"]
    )
    assert float(lost @ missing) > float(lost @ weather) + 0.2


def test_truncation_to_max_seq_tokens(embedder: Embedder) -> None:
    [ids] = embedder.token_ids([TEXTS[-1]])
    assert len(ids) == 128
    assert ids[0] == 101 and ids[-1] == 102  # [CLS] ... [SEP] survive truncation


def _batches(order: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(order), size):
        yield order[start : start + size]


@pytest.mark.parametrize("size", [2, 3, 5, len(TEXTS)])
@pytest.mark.parametrize("seed", [0, 1])
def test_embedding_is_bit_identical_in_any_batch(
    embedder: Embedder, alone: np.ndarray, size: int, seed: int
) -> None:
    order = list(range(len(TEXTS)))
    random.Random(seed).shuffle(order)
    for batch in _batches(order, size):
        out = embedder.embed([TEXTS[i] for i in batch])
        for row, i in zip(out, batch, strict=True):
            assert np.array_equal(row, alone[i]), f"text {i} differs in batch {batch}"


def test_embedding_is_bit_identical_with_two_threads(alone: np.ndarray) -> None:
    two = Embedder.load(max_seq_tokens=128, intra_op_threads=2, memo_size=0)
    assert np.array_equal(two.embed(TEXTS), alone)


@pytest.mark.parametrize("parallel_calls", [2, 3])
def test_embedding_is_bit_identical_with_parallel_calls(
    alone: np.ndarray, parallel_calls: int
) -> None:
    parallel = Embedder.load(
        max_seq_tokens=128, intra_op_threads=1, memo_size=0, parallel_calls=parallel_calls
    )
    done: list[int] = []
    out = parallel.embed(TEXTS, max_batch=2, progress=done.append)
    assert np.array_equal(out, alone)
    assert sum(done) == len(TEXTS), "progress counts every row once"
    assert np.array_equal(parallel.embed(TEXTS[1:2]), alone[1:2])  # one call: inline


def test_a_failing_parallel_call_raises_in_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    parallel = Embedder.load(max_seq_tokens=128, intra_op_threads=1, memo_size=0, parallel_calls=2)

    def fail(ids: np.ndarray) -> np.ndarray:
        raise RuntimeError("onnx call failed")

    monkeypatch.setattr(parallel, "_run", fail)
    with pytest.raises(RuntimeError, match="onnx call failed"):
        parallel.embed(TEXTS)


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 6), max_size=40),
    max_batch=st.integers(1, 8),
    threads=st.integers(1, 4),
)
def test_calls_cover_each_row_once_with_one_length_per_call(
    lengths: list[int], max_batch: int, threads: int
) -> None:
    ids = [[7] * n for n in lengths]
    calls = plan_calls(ids, max_batch, threads)
    assert sorted(i for call in calls for i in call) == list(range(len(ids)))
    for call in calls:
        assert call and len(call) <= max_batch
        assert len({len(ids[i]) for i in call}) == 1, "one exact token count per call"
    if threads > 1:
        assert len(calls) >= min(threads, len(ids)), "work for every thread when rows allow"


def test_the_memo_returns_what_computing_again_would(
    alone: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    memo = Embedder.load(max_seq_tokens=128, intra_op_threads=1, memo_size=4)
    runs: list[int] = []
    compute = memo._run
    monkeypatch.setattr(memo, "_run", lambda ids: runs.append(len(ids)) or compute(ids))
    first = memo.embed(TEXTS[:3])
    assert sum(runs) == 3
    again = memo.embed([TEXTS[2], TEXTS[0], TEXTS[3]])  # two remembered, one new
    assert sum(runs) == 4
    assert np.array_equal(again, alone[[2, 0, 3]]) and np.array_equal(first, alone[:3])
    memo.embed(TEXTS[4:7])  # capacity 4: the oldest are forgotten and computed again
    memo.embed(TEXTS[:1])
    assert sum(runs) == 8


def test_classification_is_identical_in_any_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the embedding memo (classifier.embedding_memo_size reaches the embedder),
    # or every batch after the first would be remembered rows.
    classifier = Classifier.load(ClassifierConfig(embedding_memo_size=0), RoutingConfig())
    runs: list[int] = []
    compute = classifier.embedder._run
    monkeypatch.setattr(
        classifier.embedder, "_run", lambda ids: runs.append(len(ids)) or compute(ids)
    )
    single = [classifier.classify(t) for t in TEXTS]
    assert classifier.classify_batch(TEXTS) == single
    reordered = list(reversed(TEXTS))
    assert classifier.classify_batch(reordered) == list(reversed(single))
    assert classifier.classify_batch(TEXTS[3:7]) == single[3:7]
    assert sum(runs) >= 3 * len(TEXTS) + 4, "every batch was computed, none remembered"


def test_a_model_variant_is_classified_with_the_same_tokenizer_and_heads() -> None:
    """`with_session` / `with_embedder` (the benches' way to compare a variant of the model)
    keep everything but the session: on the shipped model itself, identical results."""
    classifier = Classifier.load(ClassifierConfig(embedding_memo_size=0), RoutingConfig())
    variant = classifier.with_embedder(
        classifier.embedder.with_session(open_session(_shipped_model(), 1), memo_size=0)
    )
    assert variant.embedder is not classifier.embedder
    assert variant.embedder.token_ids(TEXTS) == classifier.embedder.token_ids(TEXTS)
    assert variant.classify_batch(TEXTS) == classifier.classify_batch(TEXTS)


def _shipped_model() -> bytes:
    return read_verified(MODEL_PACKAGE, MODEL_RESOURCE, MODEL_SHA256)


def test_hash_mismatch_is_refused_naming_the_file() -> None:
    with pytest.raises(ConfigError, match=rf"{MODEL_PACKAGE}/{MODEL_RESOURCE} has sha256"):
        read_verified(MODEL_PACKAGE, MODEL_RESOURCE, "0" * 64)
    with pytest.raises(ConfigError, match=r"tokenizer\.json has sha256"):
        read_verified(TOKENIZER_PACKAGE, TOKENIZER_RESOURCE, MODEL_SHA256)


def test_missing_file_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        read_verified(MODEL_PACKAGE, "nope.onnx", MODEL_SHA256)
