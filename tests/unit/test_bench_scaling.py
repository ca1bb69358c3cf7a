"""The scaling bench's ratio table: every ratio is against the first shape, never another."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from bench.scaling import RATIO_KEYS, SHAPES, ratio, table, with_ratios

# Missing, zero, or a positive figure as the bench measures them (ms, us, events/s).
figure = st.one_of(st.none(), st.just(0.0), st.floats(min_value=1e-3, max_value=1e7))


@st.composite
def rows(draw: st.DrawFn) -> list[dict[str, Any]]:
    count = draw(st.integers(min_value=1, max_value=len(SHAPES)))
    return [
        {
            "shape": SHAPES[i].label,
            "run_s": draw(st.floats(0, 1e4)),
            "startup_s": draw(st.floats(0, 1e4)),
            "idle_cores": draw(figure),
            **{key: draw(figure) for key in RATIO_KEYS},
        }
        for i in range(count)
    ]


@given(rows())
def test_each_ratio_is_the_row_over_the_first_row(given_rows: list[dict[str, Any]]) -> None:
    out = with_ratios(given_rows)
    first = given_rows[0]
    for row, original in zip(out, given_rows, strict=True):
        assert {k: row[k] for k in original} == original  # the figures are kept unchanged
        for key in RATIO_KEYS:
            value, reference, got = original[key], first[key], row[f"{key}_x"]
            if value is None or reference is None or reference <= 0:
                assert got is None  # no made-up ratio against a missing or zero reference
            else:
                assert got is not None
                assert math.isclose(got * reference, value, rel_tol=1e-9, abs_tol=1e-9)
    for key in RATIO_KEYS:  # the reference row is 1.0 wherever it has a figure at all
        if first[key]:
            assert out[0][f"{key}_x"] == 1.0


@given(rows())
def test_the_table_has_one_line_per_shape_and_shows_missing_figures(
    given_rows: list[dict[str, Any]],
) -> None:
    lines = table(with_ratios(given_rows)).splitlines()
    assert len(lines) == 2 + len(given_rows)
    for line, row in zip(lines[2:], given_rows, strict=True):
        assert line.startswith(row["shape"])
        assert ("n/a" in line) == any(
            value is None for key, value in with_ratios([given_rows[0], row])[1].items()
        )


def test_ratio_refuses_a_zero_or_missing_reference() -> None:
    assert ratio(5.0, 0.0) is None
    assert ratio(None, 2.0) is None
    assert ratio(5.0, None) is None
    assert ratio(3.0, 2.0) == 1.5
