"""Small numeric helpers: the two percentile definitions every table uses, and a scalar
`np.interp`."""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not samples:
        msg = "percentile of no samples"
        raise ValueError(msg)
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def nearest_rank(samples: Sequence[float], q: float) -> float:
    """The smallest sample with at least q % of them at or below it, q in [0, 100].

    Always an observed value: with 1 ms Kafka timestamps, or a cost window replayed in any
    order, an observed value beats an interpolated one (`percentile` interpolates)."""
    if not samples:
        msg = "nearest_rank of no samples"
        raise ValueError(msg)
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def interp(x: float, xp: Sequence[float], fp: Sequence[float]) -> float:
    """`float(np.interp(x, xp, fp))` for one point, without building arrays (about 10x
    cheaper: the answer path maps every reply's confidence through the calibration knots).

    The same steps as numpy's `arr_interp`: the last knot at or below x, its value when x
    is on it or outside the knots, else the slope times the offset plus the knot's value
    (retried from the right knot when that is NaN), so the result is the same double.
    `xp` must be non-decreasing and as long as `fp` (not checked: the caller's maps are)."""
    last = len(xp) - 1
    if last <= 0:  # one knot: its value everywhere (NaN included, as in numpy)
        return fp[0]
    if x != x:  # NaN passes through, as in numpy
        return x
    j = bisect_right(xp, x) - 1
    if j < 0:
        return fp[0]
    if j >= last:
        return fp[last]
    if xp[j] == x:
        return fp[j]
    slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j])
    value = slope * (x - xp[j]) + fp[j]
    if value != value:
        value = slope * (x - xp[j + 1]) + fp[j + 1]
        if value != value and fp[j] == fp[j + 1]:
            value = fp[j]
    return value
