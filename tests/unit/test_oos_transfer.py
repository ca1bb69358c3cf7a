"""bench/oos_transfer.py: the out-of-scope threshold is chosen on rows that do not judge it.

Pure logic on synthetic scores. Attacks: the chosen threshold really has the fewest mistakes
(against brute force over every cut), separable data is separated, a flat objective keeps
the configured value, the folds partition the rows evenly, and (the point of the procedure)
the labels of a fold never change the threshold that flags that fold's rows.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.oos_transfer import best_threshold, cv_threshold, fold_ids, mistakes

scores_st = st.lists(
    st.floats(0, 1, allow_nan=False).map(lambda x: round(x, 4)), min_size=5, max_size=60
)


def _labelled(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    scores = draw(scores_st)
    labels = draw(st.lists(st.booleans(), min_size=len(scores), max_size=len(scores)))
    return np.array(scores, dtype=np.float64), np.array(labels, dtype=bool)


labelled = st.composite(_labelled)


@given(labelled(), st.floats(0, 1, allow_nan=False))
def test_best_threshold_has_the_fewest_mistakes(
    data: tuple[np.ndarray, np.ndarray], default: float
) -> None:
    scores, is_oos = data
    chosen = best_threshold(scores, is_oos, default)
    # Every distinct cut of "score > t" is reached by t in {-inf} + the scores themselves.
    cuts = [-1.0, *np.unique(scores).tolist(), default]
    assert mistakes(scores, is_oos, chosen) == min(mistakes(scores, is_oos, t) for t in cuts)


@given(
    st.lists(st.floats(0, 0.4, allow_nan=False), min_size=1, max_size=30),
    st.lists(st.floats(0.6, 1, allow_nan=False), min_size=1, max_size=30),
    st.floats(0.4, 0.6, exclude_min=True, exclude_max=True, allow_nan=False),
)
def test_separable_scores_are_separated_and_the_default_kept_inside_the_gap(
    inside: list[float], outside: list[float], default: float
) -> None:
    """Out-of-scope scores all above in-scope ones: no mistakes, and since every threshold
    in the gap is as good, the configured one stays (no drift on a flat objective)."""
    scores = np.array([*inside, *outside])
    is_oos = np.array([False] * len(inside) + [True] * len(outside))
    assert best_threshold(scores, is_oos, default) == default
    assert mistakes(scores, is_oos, default) == 0


@given(st.integers(1, 500), st.integers(2, 10), st.integers(0, 2**32 - 1))
def test_folds_partition_evenly_and_deterministically(n: int, k: int, seed: int) -> None:
    folds = fold_ids(n, k, seed)
    assert len(folds) == n and set(folds.tolist()) <= set(range(k))
    sizes = np.bincount(folds, minlength=k)
    assert sizes.max() - sizes.min() <= 1
    assert np.array_equal(folds, fold_ids(n, k, seed))


@settings(max_examples=60)
@given(labelled(), st.integers(2, 5), st.integers(0, 1000), st.data())
def test_a_folds_labels_never_choose_its_own_threshold(
    data: tuple[np.ndarray, np.ndarray], k: int, seed: int, draw: st.DataObject
) -> None:
    """Relabel one fold arbitrarily: that fold's out-of-fold flags do not move. (A threshold
    chosen on all rows, then scored on them, fails this.)"""
    scores, is_oos = data
    if len(scores) < k:
        return
    folds = fold_ids(len(scores), k, seed)
    fold = draw.draw(st.integers(0, k - 1))
    members = folds == fold
    flipped = is_oos.copy()
    flipped[members] = draw.draw(
        st.lists(st.booleans(), min_size=int(members.sum()), max_size=int(members.sum()))
    )
    a = cv_threshold(scores, is_oos, k=k, seed=seed)
    b = cv_threshold(scores, flipped, k=k, seed=seed)
    assert np.array_equal(a.out_of_fold[members], b.out_of_fold[members])
    assert a.fold_thresholds[fold] == b.fold_thresholds[fold]


def test_cv_recovers_a_planted_threshold() -> None:
    """In-scope ~ U(0, 0.6), out of scope ~ U(0.5, 1): the best cut is near 0.55; the
    out-of-fold figures are close to the population's."""
    rng = np.random.default_rng(0)
    inside, outside = rng.uniform(0, 0.6, 3000), rng.uniform(0.5, 1.0, 300)
    scores = np.round(np.concatenate([inside, outside]), 4)
    is_oos = np.concatenate([np.zeros(3000, dtype=bool), np.ones(300, dtype=bool)])
    cv = cv_threshold(scores, is_oos, k=5, default=0.5)
    assert 0.5 <= cv.threshold <= 0.6
    assert all(0.5 <= t <= 0.6 for t in cv.fold_thresholds)
    assert cv.recall(is_oos) > 0.8
    assert cv.false_flag_rate(is_oos) < 0.05


def test_too_few_rows_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least k=5"):
        cv_threshold(np.array([0.1, 0.9]), np.array([False, True]), k=5)
