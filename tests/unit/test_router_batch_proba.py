"""Training's batch probabilities are the router's own: `batch_proba` over many texts gives,
bit for bit, what `LinearHead.proba` gives text by text (neighbour vote included), so the
thresholds chosen on them are judged on the numbers the runtime computes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from splitpin.core.router.heads import LinearHead, SparseRow, neighbour_vote, softmax
from splitpin.core.router.train import _ngram_matrix, batch_proba

DIM = 16
VOCAB = 40


@st.composite
def heads_and_rows(draw: st.DrawFn) -> tuple[LinearHead, np.ndarray, list[SparseRow]]:
    """A random head (with or without a neighbour vote) and texts with random n-grams."""
    seed = draw(st.integers(0, 2**32 - 1))
    classes = draw(st.integers(2, 6))
    n = draw(st.integers(1, 25))
    rng = np.random.default_rng(seed)

    def f32(*shape: int, scale: float = 1.0) -> np.ndarray:
        return (scale * rng.normal(size=shape)).astype(np.float32)

    embeddings = f32(n, DIM)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    rows = []
    for _ in range(n):
        size = int(rng.integers(0, 8))  # 0: a text with no known n-gram
        indices = np.sort(rng.choice(VOCAB, size=size, replace=False)).astype(np.int32)
        rows.append(SparseRow(indices, f32(size)))
    head = LinearHead(
        labels=tuple(f"l{c}" for c in range(classes)),
        w_emb=f32(DIM, classes, scale=3.0),
        w_txt=f32(VOCAB, classes, scale=3.0),
        bias=f32(classes),
    )
    if draw(st.booleans()):
        train = f32(3 * classes, DIM)
        vote = neighbour_vote(
            train, [i % classes for i in range(len(train))], dims=4, k=3, temperature=0.1
        )
        head = LinearHead(
            head.labels, head.w_emb, head.w_txt, head.bias, vote, draw(st.sampled_from([0.3, 1.0]))
        )
    return head, embeddings, rows


@settings(max_examples=60, deadline=None)
@given(heads_and_rows())
def test_batch_and_single_row_probabilities_agree_bit_for_bit(
    case: tuple[LinearHead, np.ndarray, list[SparseRow]],
) -> None:
    head, embeddings, rows = case
    batch = batch_proba(head, embeddings, _ngram_matrix(rows, VOCAB))
    single = np.stack([head.proba(e, r) for e, r in zip(embeddings, rows, strict=True)])
    assert batch.dtype == np.float64 and batch.shape == single.shape
    assert np.array_equal(batch, single)
    # And they are the documented mix: softmax(b + e W_emb + x W_txt), then the vote.
    dense = np.zeros((len(rows), VOCAB))
    for i, row in enumerate(rows):
        dense[i, row.indices] = row.values
    linear = softmax(embeddings.astype(np.float64) @ head.w_emb + dense @ head.w_txt + head.bias)
    if head.neighbours is not None:
        a = head.neighbour_weight
        votes = np.stack([head.neighbours.proba(e, len(head.labels)) for e in embeddings])
        linear = (1.0 - a) * linear + a * votes
    np.testing.assert_allclose(batch, linear, rtol=1e-4, atol=1e-6)
