"""Calibrated confidence: isotonic maps, temperature scaling, ECE, the shipped artifacts.

The maps must be monotone and stay in [0, 1] for any raw confidence (hypothesis), the
fitting must actually reduce calibration error on a sample that is miscalibrated by
construction (and evaluated on rows the fit never saw), and the shipped calibration.json
must load, match the shipped heads, and answer `probability_right` for every fleet role.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitpin.core.router.classifier import PACKAGED_ARTIFACTS
from splitpin.core.router.heads import (
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
    softmax,
)
from splitpin.core.settings import REPO_ROOT
from splitpin.errors import ConfigError
from splitpin.providers.calibration import (
    CALIBRATION_FILE,
    FLEET_ROLES,
    IsotonicMap,
    calibration_for,
    fit_isotonic_cv,
    fit_platt,
    halves,
    packaged_calibration,
    pool_adjacent_violators,
    probability_right,
    read_calibration,
)
from splitpin.schemas.governance import load_governance

GOVERNANCE = load_governance(REPO_ROOT / "config" / "governance.yaml")
unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
samples = st.lists(st.tuples(unit, st.booleans()), min_size=1, max_size=200)


@settings(max_examples=200, deadline=None)
@given(samples, st.integers(min_value=1, max_value=50), st.lists(unit, min_size=2, max_size=20))
def test_fitted_maps_are_monotone_and_within_unit_interval(
    rows: list[tuple[float, bool]], min_count: int, probes: list[float]
) -> None:
    raw = [r for r, _ in rows]
    correct = [float(c) for _, c in rows]
    for fitted in (IsotonicMap.fit(raw, correct, min_count), fit_platt(raw, correct)):
        values = [fitted(p) for p in sorted(probes)]
        assert all(0.0 <= v <= 1.0 for v in values)
        assert all(b >= a for a, b in itertools.pairwise(values))
        # beyond the fitted range the map is flat, never extrapolated out of [0, 1]
        assert 0.0 <= fitted(-5.0) <= fitted(5.0) <= 1.0


@settings(max_examples=200, deadline=None)
@given(samples)
def test_pav_is_the_least_squares_fit_on_its_data(rows: list[tuple[float, bool]]) -> None:
    """No violators left, and pooling preserves the mean (a property of the L2 isotonic fit)."""
    raw = np.array([r for r, _ in rows])
    y = np.array([float(c) for _, c in rows])
    knots_x, knots_y = pool_adjacent_violators(raw, y)
    assert list(knots_x) == sorted(knots_x)
    fitted = np.interp(raw, knots_x, knots_y)
    assert math.isclose(float(fitted.mean()), float(y.mean()), abs_tol=1e-3)


def test_pav_pools_a_violation() -> None:
    x, y = pool_adjacent_violators([0.1, 0.2, 0.3, 0.4], [0.0, 1.0, 0.0, 1.0])
    assert dict(zip(x, y, strict=True)) == {0.1: 0.0, 0.2: 0.5, 0.3: 0.5, 0.4: 1.0}


def _miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw confidence c, but the answer is right with probability c**3: over-confident."""
    rng = np.random.default_rng(seed)
    raw = rng.uniform(0.3, 1.0, n)
    correct = (rng.random(n) < raw**3).astype(np.float64)
    return raw, correct


@pytest.mark.parametrize("n", [300, 2000])
def test_fitting_reduces_ece_on_unseen_rows(n: int) -> None:
    raw_fit, y_fit = _miscalibrated(n, seed=1)
    raw_eval, y_eval = _miscalibrated(2000, seed=2)
    before = expected_calibration_error(raw_eval, y_eval)
    assert before > 0.15  # the sample really is miscalibrated
    chosen = fit_isotonic_cv(raw_fit, y_fit)[0]
    after = expected_calibration_error(chosen.apply(raw_eval), y_eval)
    assert after < 0.06 and after < before / 3
    plain = expected_calibration_error(IsotonicMap.fit(raw_fit, y_fit).apply(raw_eval), y_eval)
    assert plain < before / 3  # plain PAV helps too, but overfits small samples more


@settings(max_examples=30, deadline=None)
@given(st.floats(min_value=0.3, max_value=4.0), st.integers(min_value=0, max_value=10_000))
def test_temperature_scaling_recovers_the_scale_and_reduces_ece(true_t: float, seed: int) -> None:
    """Labels drawn from softmax(z / T): the fitted T is close to T, and on fresh rows the
    scaled probabilities are better calibrated than the raw ones (argmax unchanged)."""
    rng = np.random.default_rng(seed)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        z = rng.normal(0.0, 3.0, (n, 5))
        p = softmax(z, true_t)
        labels = (rng.random((n, 1)) > p.cumsum(axis=1)).sum(axis=1).clip(max=4)
        return z, labels

    z_fit, y_fit = draw(3000)
    t = fit_temperature(z_fit, y_fit)
    assert abs(math.log(t) - math.log(true_t)) < 0.25
    z_eval, y_eval = draw(3000)
    raw, scaled = softmax(z_eval), softmax(z_eval, t)
    assert (raw.argmax(axis=1) == scaled.argmax(axis=1)).all()
    correct = raw.argmax(axis=1) == y_eval
    if abs(math.log(true_t)) > 0.5:  # clearly miscalibrated at T = 1
        nll_after = negative_log_likelihood(z_eval, y_eval, t)
        assert nll_after < negative_log_likelihood(z_eval, y_eval)
        before = expected_calibration_error(raw.max(axis=1), correct)
        after = expected_calibration_error(scaled.max(axis=1), correct)
        assert after < before


def test_ece_of_known_bins() -> None:
    # bin 9 (0.9): 2 samples, 1 right -> |0.5 - 0.9|; bin 2 (0.25): 2 samples, both wrong
    conf = [0.9, 0.9, 0.25, 0.25]
    right = [1, 0, 0, 0]
    assert expected_calibration_error(conf, right) == pytest.approx((2 * 0.4 + 2 * 0.25) / 4)
    table = reliability_bins([1.0, 0.0], [1, 0])
    assert table[9] == (1, 1.0, 1.0) and table[0] == (1, 0.0, 0.0)


@given(st.lists(st.tuples(st.text(min_size=1, max_size=12), st.sampled_from("abc")), max_size=60))
def test_halves_partition_stratified_and_order_free(rows: list[tuple[str, str]]) -> None:
    texts = [t for t, _ in rows]
    labels = [c for _, c in rows]
    fit, held = halves(texts, labels)
    assert sorted(fit + held) == list(range(len(rows)))
    for label in set(labels):
        n_fit = sum(labels[i] == label for i in fit)
        n_held = sum(labels[i] == label for i in held)
        assert n_fit - n_held in (0, 1)
    # the assignment depends on the rows, not their order in the file
    reordered = rows[::-1]
    fit2, _ = halves([t for t, _ in reordered], [c for _, c in reordered])
    assert sorted(rows[i] for i in fit) == sorted(reordered[i] for i in fit2)


# --- the shipped artifact ---------------------------------------------------------------


def test_shipped_calibration_loads_and_covers_every_answering_role() -> None:
    calibration = read_calibration(PACKAGED_ARTIFACTS)
    assert set(FLEET_ROLES) <= set(calibration.maps)
    for role in FLEET_ROLES:
        fitted = calibration.maps[role]
        values = [fitted(x / 100) for x in range(101)]
        assert values == sorted(values) and values[0] >= 0.0 and values[-1] <= 1.0
    for head in ("intent", "domain"):
        assert 0.05 <= calibration.temperature(head) <= 20.0
    manifest = calibration.manifest
    assert manifest["inputs"] and all(len(i["sha256"]) == 64 for i in manifest["inputs"])
    for role in ("fast", "verifier", "long_context"):
        figures = manifest["figures"]["roles"][role]
        assert figures["n"] > 400  # measured on the evaluation half, not the fit half
    # the verifier is the policy's gate: its calibrated map must not be worse than raw
    verifier = manifest["figures"]["roles"]["verifier"]
    assert verifier["ece_after"] <= verifier["ece_before"]


def test_probability_right_contract() -> None:
    assert probability_right("fast", None) is None
    assert probability_right("summarizer", 0.9) is None  # cites nothing: no such probability
    assert probability_right("fast", 0.9, provider="anthropic") == 0.9  # passes through
    assert probability_right("verifier", 1.7, provider="openai") == 1.0
    low, high = probability_right("verifier", 0.2), probability_right("verifier", 0.99)
    assert low is not None and high is not None and 0.0 <= low <= high <= 1.0
    assert probability_right("compliance", 0.8) == probability_right("verifier", 0.8)
    assert packaged_calibration() is packaged_calibration()  # loaded once
    assert calibration_for(GOVERNANCE.classifier) is packaged_calibration()


def test_calibration_for_other_heads_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "artifacts"
    shutil.copytree(PACKAGED_ARTIFACTS, target)
    manifest = target / "manifest.json"
    data = json.loads(manifest.read_text(encoding="utf-8"))
    data["command"] = "retrained"
    manifest.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ConfigError, match="splitpin router calibrate"):
        read_calibration(target)
    (target / CALIBRATION_FILE).unlink()
    with pytest.raises(ConfigError, match="no calibration"):
        read_calibration(target)
