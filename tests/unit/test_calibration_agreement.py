"""The agreement map: P(fast answer right | its probability, the router's intent probability,
whether it cites the router intent's article).

Attacked: every fitted form is monotone in each probability and stays in [0, 1]; on rows the
fit never saw, two independent signals that agree are accepted at a bound with at least the
bound's accuracy (give or take sampling noise); the shipped artifact carries the map and a
format-1 file without it still loads and falls back to the fast map alone.
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
from splitpin.providers.calibration import (
    CALIBRATION_FILE,
    SCORES,
    AgreementMap,
    AgreementScore,
    fit_agreement,
    fit_agreement_cv,
    packaged_calibration,
    read_calibration,
)

unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
rows = st.lists(st.tuples(unit, unit, st.booleans(), st.booleans()), min_size=1, max_size=120)


def _columns(
    sample: list[tuple[float, float, bool, bool]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    f, r, a, y = zip(*sample, strict=True)
    return np.array(f), np.array(r), np.array(a), np.array(y, dtype=np.float64)


@settings(max_examples=60, deadline=None)
@given(
    sample=rows,
    score=st.sampled_from(SCORES),
    probes=st.lists(st.tuples(unit, unit), min_size=2, max_size=12),
    agree=st.booleans(),
)
def test_every_form_is_monotone_in_each_probability_and_a_probability(
    sample: list[tuple[float, float, bool, bool]],
    score: AgreementScore,
    probes: list[tuple[float, float]],
    agree: bool,
) -> None:
    fitted = fit_agreement(score, *_columns(sample))
    for (f1, r1), (f2, r2) in itertools.pairwise(probes):
        lo = fitted(min(f1, f2), min(r1, r2), agree)
        hi = fitted(max(f1, f2), max(r1, r2), agree)
        assert 0.0 <= lo <= hi <= 1.0, (score, lo, hi)
    assert AgreementMap.from_json(json.loads(json.dumps(fitted.to_json()))) == fitted


Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _synthetic(n: int, seed: int) -> Columns:
    """A fast answer right with p_f, a router right with p_r, independently; an answer
    cites the router's article exactly when both are right or (rarely) both wrong alike."""
    rng = np.random.default_rng(seed)
    p_f = rng.uniform(0.4, 0.95, n)
    p_r = rng.beta(8, 1.2, n)
    fast_right = rng.random(n) < p_f
    router_right = rng.random(n) < p_r
    agree = (fast_right & router_right) | (~fast_right & ~router_right & (rng.random(n) < 0.05))
    return p_f, p_r, agree, fast_right.astype(np.float64)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_agreement_is_accepted_at_the_bound_with_the_bounds_accuracy(seed: int) -> None:
    """Fitted on one sample, applied to another: what clears 0.9 is about 90 % right or
    better, and far more than the fast probability alone would let through."""
    fitted, brier = fit_agreement_cv(*_synthetic(800, seed))
    assert set(brier) == set(SCORES)
    f, r, a, y = _synthetic(4000, seed + 100)
    joint = fitted.apply(f, r, a)
    accepted = joint >= 0.9
    n = int(accepted.sum())
    assert n > (f >= 0.9).sum()
    assert y[accepted].mean() >= 0.9 - 3 * math.sqrt(0.09 / n)
    assert joint[~a].max() < 0.9  # a disagreeing answer is never that likely right here


def test_a_negative_logit_weight_is_dropped_not_shipped() -> None:
    """Correctness falling with the router's probability: the logistic leaves that feature
    out instead of shipping a map that decreases in it."""
    rng = np.random.default_rng(5)
    f = rng.uniform(0.1, 0.9, 400)
    r = rng.uniform(0.1, 0.9, 400)
    y = (rng.random(400) < (1 - r)).astype(np.float64)
    fitted = fit_agreement("logistic", f, r, np.zeros(400, dtype=bool), y)
    assert fitted.weights[2] == 0.0 and fitted.weights[1] >= 0.0
    with pytest.raises(ValueError):
        AgreementMap("logistic", {}, (0.0, 1.0, -1.0, 0.0))


def test_the_shipped_artifact_has_the_map_and_its_figures() -> None:
    shipped = packaged_calibration()
    assert shipped.agreement is not None
    figures = shipped.manifest["figures"]["agreement"]
    assert figures["method"] == shipped.agreement.score
    assert figures["fit_n"] > 0 and figures["n"] > 0
    # The map's reason to exist, on the evaluation half: what it lets stand is at least as
    # right as each bound asks, and at the shipped bound (0.8) it accepts at least as much
    # as the fast probability alone, more accurately. (With a sure intent's prompt narrowed
    # to one article the fast probability alone is ~1 for those answers: at 0.9 both accept
    # the same share, and at 0.95 the map is the more cautious of the two.)
    for bound in ("0.8", "0.9", "0.95"):
        assert figures["at_bound_agreement"][bound]["accepted_accuracy"] >= float(bound)
    joint, alone = figures["at_bound_agreement"]["0.8"], figures["at_bound_fast_alone"]["0.8"]
    assert joint["accepted_share"] >= alone["accepted_share"]
    assert joint["accepted_accuracy"] > alone["accepted_accuracy"]
    assert shipped.fast_probability_given_router(0.7, None, True) == shipped.probability_right(
        "fast", 0.7
    )
    assert shipped.fast_probability_given_router(None, 0.99, True) is None


def test_a_format_1_file_without_the_map_still_loads(tmp_path: Path) -> None:
    for name in ("manifest.json", CALIBRATION_FILE):
        shutil.copy(PACKAGED_ARTIFACTS / name, tmp_path / name)
    document = json.loads((tmp_path / CALIBRATION_FILE).read_text(encoding="utf-8"))
    document["format"] = 1
    del document["agreement"]
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps(document), encoding="utf-8")
    old = read_calibration(tmp_path)
    assert old.agreement is None
    for raw in (0.2, 0.6, 0.95):
        expected = old.probability_right("fast", raw)
        assert old.fast_probability_given_router(raw, 0.99, True) == expected
