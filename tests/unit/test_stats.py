"""The two percentile definitions every table uses (splitpin/core/stats.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from splitpin.core.stats import nearest_rank, percentile

samples = st.lists(
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=60
)
quantiles = st.floats(min_value=0, max_value=100)


def test_percentile_interpolates_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 95) == pytest.approx(3.85)
    assert percentile([7.0], 95) == 7.0
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)


@given(values=samples, q=quantiles)
def test_percentile_is_numpys_linear_method(values: list[float], q: float) -> None:
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), abs=1e-6)


def test_nearest_rank_picks_an_observed_value() -> None:
    values = [float(v) for v in range(20, 0, -1)]  # 20..1, unsorted on purpose
    assert nearest_rank(values, 50) == 10.0
    assert nearest_rank(values, 95) == 19.0
    assert nearest_rank(values, 100) == 20.0
    assert nearest_rank(values, 0) == 1.0
    assert nearest_rank([7.0], 95) == 7.0
    with pytest.raises(ValueError, match="no samples"):
        nearest_rank([], 50)


@given(values=samples, q=quantiles)
def test_nearest_rank_is_the_smallest_sample_covering_q_percent(
    values: list[float], q: float
) -> None:
    """The definition, checked by counting: at least q % of the samples are at or below
    the answer, and fewer than q % are strictly below it (no smaller sample qualifies)."""
    got = nearest_rank(values, q)
    n = len(values)
    assert got in values
    assert sum(v <= got for v in values) >= math.ceil(q / 100 * n)
    assert sum(v < got for v in values) < max(1, math.ceil(q / 100 * n))
