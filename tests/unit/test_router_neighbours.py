"""The intent head's neighbour vote: a distribution, the nearest phrasing wins, the mix
with the linear head is what the runtime computes, and it survives the artifact round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from splitpin.core.router.heads import (
    HEADS_FILE,
    LinearHead,
    SparseRow,
    _head_arrays,
    _head_from,
    load_npz,
    neighbour_vote,
    save_npz,
    softmax,
)

DIM = 384
EMPTY = SparseRow(np.empty(0, np.int32), np.empty(0, np.float32))


def _unit(x: np.ndarray) -> np.ndarray:
    return np.asarray(x / np.linalg.norm(x, axis=-1, keepdims=True), dtype=np.float32)


def _clusters(
    seed: int, classes: int, per_class: int, noise: float
) -> tuple[np.ndarray, list[int]]:
    """Rows scattered around one random direction per class (unit vectors, like MiniLM)."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(classes, DIM)))
    labels = [c for c in range(classes) for _ in range(per_class)]
    rows = _unit(centres[labels] + noise * rng.normal(size=(len(labels), DIM)) / np.sqrt(DIM))
    return rows, labels


def _head(classes: int, seed: int, vote: object = None, weight: float = 0.0) -> LinearHead:
    rng = np.random.default_rng(seed)
    return LinearHead(
        labels=tuple(f"intent_{i}" for i in range(classes)),
        w_emb=rng.normal(size=(DIM, classes)).astype(np.float32),
        w_txt=np.zeros((4, classes), np.float32),
        bias=rng.normal(size=classes).astype(np.float32),
        neighbours=vote,  # type: ignore[arg-type]
        neighbour_weight=weight,
    )


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    classes=st.integers(2, 8),
    per_class=st.integers(2, 6),
    k=st.integers(1, 12),
    temperature=st.sampled_from([0.02, 0.05, 0.2]),
)
def test_vote_is_a_distribution_and_a_stored_phrasing_gets_its_label(
    seed: int, classes: int, per_class: int, k: int, temperature: float
) -> None:
    rows, labels = _clusters(seed, classes, per_class, noise=0.3)
    vote = neighbour_vote(rows, labels, dims=96, k=k, temperature=temperature)
    for i in range(0, len(labels), max(1, len(labels) // 5)):
        p = vote.proba(rows[i], classes)
        assert p.shape == (classes,) and np.all(p >= 0) and abs(p.sum() - 1.0) < 1e-9
        # Only labels of stored rows get votes, and the row itself (cosine 1) outweighs
        # any other single row: with well-separated intents its label wins.
        assert set(np.flatnonzero(p)) <= set(labels)
        assert int(np.argmax(p)) == labels[i]


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), weight=st.sampled_from([0.0, 0.3, 1.0]))
def test_mixed_head_is_the_convex_mix_and_temperature_keeps_the_argmax(
    seed: int, weight: float
) -> None:
    rows, labels = _clusters(seed, 5, 4, noise=0.5)
    vote = neighbour_vote(rows, labels, dims=96, k=5, temperature=0.05)
    plain, mixed = _head(5, seed), _head(5, seed, vote, weight)
    query = _unit(np.random.default_rng(seed + 1).normal(size=DIM))
    expected = (1 - weight) * plain.proba(query, EMPTY) + weight * vote.proba(query, 5)
    got = mixed.proba(query, EMPTY)
    assert np.allclose(got, expected, atol=1e-9)
    assert np.argmax(mixed.proba(query, EMPTY, temperature=0.7)) == np.argmax(got)
    assert np.allclose(softmax(mixed.logits(query, EMPTY)), got, atol=1e-9)


def test_vote_does_not_depend_on_other_queries() -> None:
    rows, labels = _clusters(3, 6, 5, noise=0.6)
    vote = neighbour_vote(rows, labels, dims=96, k=7, temperature=0.05)
    queries = _unit(np.random.default_rng(4).normal(size=(20, DIM)))
    alone = [vote.proba(q, 6) for q in queries]
    shuffled = {int(i): vote.proba(queries[i], 6) for i in np.random.default_rng(5).permutation(20)}
    for i, p in enumerate(alone):
        assert np.array_equal(p, shuffled[i])


def test_artifact_round_trip_gives_the_same_probabilities(tmp_path: Path) -> None:
    rows, labels = _clusters(7, 4, 6, noise=0.5)
    head = _head(4, 7, neighbour_vote(rows, labels, dims=96, k=5, temperature=0.05), 0.3)
    save_npz(tmp_path / HEADS_FILE, _head_arrays("intent", head))
    loaded = _head_from(load_npz(tmp_path / HEADS_FILE), "intent", head.labels)
    assert loaded.neighbours is not None and loaded.neighbour_weight == 0.3
    assert loaded.neighbours.k == 5 and loaded.neighbours.temperature == 0.05
    for query in _unit(np.random.default_rng(8).normal(size=(10, DIM))):
        # float16 weights on disk: close, not equal; the vote itself is stored exactly.
        assert np.allclose(loaded.proba(query, EMPTY), head.proba(query, EMPTY), atol=2e-2)
        assert np.array_equal(loaded.neighbours.proba(query, 4), head.neighbours.proba(query, 4))  # type: ignore[union-attr]
    plain = _head_from(
        {k: v for k, v in _head_arrays("intent", _head(4, 7)).items()}, "intent", head.labels
    )
    assert plain.neighbours is None  # heads written before the vote still load


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), k=st.integers(1, 15), copies=st.integers(1, 4))
def test_the_k_nearest_are_those_of_a_full_stable_sort_even_with_ties(
    seed: int, k: int, copies: int
) -> None:
    rows, labels = _clusters(seed, 4, 3, noise=0.8)
    # Repeated rows give exactly equal similarities: the earlier row must win each tie.
    rows, labels = np.repeat(rows, copies, axis=0), [x for x in labels for _ in range(copies)]
    vote = neighbour_vote(rows, labels, dims=96, k=k, temperature=0.05)
    for query in _unit(np.random.default_rng(seed + 2).normal(size=(5, DIM))):
        q = (query - vote.mean) @ vote.projection
        sims = (vote.vectors @ (q / np.linalg.norm(q))).astype(np.float64)
        order = np.argsort(-sims, kind="stable")[:k]
        weights = np.exp((sims[order] - sims[order][0]) / 0.05)
        expected = np.zeros(4)
        np.add.at(expected, vote.labels[order], weights)
        assert np.array_equal(vote.proba(query, 4), expected / expected.sum())
