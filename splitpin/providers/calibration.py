"""Calibrated confidence: raw confidence -> probability that the answer is right.

The local fleet's `confidence` is a logistic of a score margin (local_fleet.py): it ranks
answers well but its scale is only roughly a probability, and the router's heads are
over-confident softmaxes. A verification policy that accepts the fast answer when its
probability of being right clears a bound needs real probabilities, so:

* each answering role of the local fleet gets a monotone (isotonic) map raw confidence ->
  P(the cited article is the gold intent's), fitted by pool-adjacent-violators;
* the router's intent and domain heads get one temperature each (heads.fit_temperature).

Both are fitted by `splitpin router calibrate` on a calibration half of rows training never
saw and measured on the other half (docs/calibration.md); they ship as
`splitpin/core/router/artifacts/calibration.json`, applied here with numpy interpolation.
Remote providers report a logprob-derived confidence that has no fitted map: it passes
through unchanged (there is no labelled traffic of theirs to fit one on).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from splitpin.core.router.classifier import resolve_artifacts_dir
from splitpin.core.router.heads import MANIFEST, sha256_file
from splitpin.core.stats import interp
from splitpin.errors import ConfigError
from splitpin.schemas.governance import ClassifierConfig

CALIBRATION_FILE = "calibration.json"
CALIBRATION_FORMAT = 2
"""2 added the `agreement` map (fast answer x router intent); format 1 files still load."""
READABLE_FORMATS = (1, 2)
PROBABILITY_DECIMALS = 4
LOCAL_PROVIDER = "local"
FLEET_ROLES = ("fast", "verifier", "long_context", "compliance")
"""The local fleet's answering roles (the summarizer cites nothing, so has no map)."""
_HINT = "run `splitpin router calibrate` to create it"


def pool_adjacent_violators(
    x: npt.ArrayLike, y: npt.ArrayLike, min_count: int = 1
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Isotonic (non-decreasing) least-squares fit of y on x, as interpolation knots.

    Equal x values are pooled first (they must get one value); adjacent blocks whose means
    decrease are merged until none do. Each block contributes its lowest and highest x at
    its mean, so `np.interp` over the knots is the step fit with linear ramps between
    blocks (as scikit-learn's IsotonicRegression predicts): monotone, within [min y, max y].
    `min_count` then merges each block of fewer samples into the next (the last into the one
    before): a merged mean lies between its parts, so the fit stays monotone, with fewer,
    better-supported steps (plain PAV overfits a few hundred samples).
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1 or xs.size == 0:
        msg = "pool_adjacent_violators needs two non-empty 1-d arrays of the same length"
        raise ValueError(msg)
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order]
    unique, start = np.unique(xs, return_index=True)
    sums = np.add.reduceat(ys, start)
    counts = np.diff(np.append(start, xs.size)).astype(np.float64)
    # Blocks: [sum, count, lowest x, highest x]
    blocks: list[list[float]] = []
    for u, s, c in zip(unique, sums, counts, strict=True):
        blocks.append([float(s), float(c), float(u), float(u)])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            s2, c2, _, hi2 = blocks.pop()
            blocks[-1][0] += s2
            blocks[-1][1] += c2
            blocks[-1][3] = hi2
    if min_count > 1:
        merged: list[list[float]] = []
        for block in blocks:
            if merged and merged[-1][1] < min_count:
                merged[-1][0] += block[0]
                merged[-1][1] += block[1]
                merged[-1][3] = block[3]
            else:
                merged.append(list(block))
        if len(merged) > 1 and merged[-1][1] < min_count:
            s2, c2, _, hi2 = merged.pop()
            merged[-1][0] += s2
            merged[-1][1] += c2
            merged[-1][3] = hi2
        blocks = merged
    knots_x: list[float] = []
    knots_y: list[float] = []
    for s, c, lo, hi in blocks:
        value = round(s / c, PROBABILITY_DECIMALS)
        for point in (lo, hi) if hi > lo else (lo,):
            knots_x.append(point)
            knots_y.append(value)
    return tuple(knots_x), tuple(knots_y)


@dataclass(frozen=True, slots=True)
class IsotonicMap:
    """A monotone map through knots (x increasing, y non-decreasing), flat beyond the ends."""

    x: tuple[float, ...]
    y: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.x or len(self.x) != len(self.y):
            msg = "an isotonic map needs as many y knots as x knots, at least one"
            raise ValueError(msg)
        if any(b < a for a, b in zip(self.x, self.x[1:], strict=False)):
            msg = "isotonic map knots: x must be non-decreasing"
            raise ValueError(msg)
        if any(b < a for a, b in zip(self.y, self.y[1:], strict=False)):
            msg = "isotonic map knots: y must be non-decreasing"
            raise ValueError(msg)
        if min(self.y) < 0.0 or max(self.y) > 1.0:
            msg = "isotonic map knots: y must lie in [0, 1]"
            raise ValueError(msg)

    @classmethod
    def fit(cls, raw: npt.ArrayLike, correct: npt.ArrayLike, min_count: int = 1) -> IsotonicMap:
        x, y = pool_adjacent_violators(raw, correct, min_count)
        return cls(x, y)

    def __call__(self, raw: float) -> float:
        # `interp` is np.interp for one point (the same double) without building arrays.
        return round(interp(float(raw), self.x, self.y), PROBABILITY_DECIMALS)

    def apply(self, raw: npt.ArrayLike) -> npt.NDArray[np.float64]:
        return np.asarray(np.interp(np.asarray(raw, dtype=np.float64), self.x, self.y))

    def to_json(self) -> dict[str, list[float]]:
        return {"x": list(self.x), "y": list(self.y)}


AgreementScore = Literal["product", "min", "router", "logistic"]
SCORES: tuple[AgreementScore, ...] = ("product", "min", "router", "logistic")
"""How an AgreementMap combines its two probabilities (logistic: the 3-feature model)."""
STRATA = ("agree", "disagree")


def agreement_score(score: AgreementScore, fast: npt.ArrayLike, router: npt.ArrayLike) -> Any:
    """The one number an isotonic stratum maps: non-decreasing in each probability."""
    f = np.asarray(fast, dtype=np.float64)
    r = np.asarray(router, dtype=np.float64)
    if score == "product":
        return f * r
    if score == "min":
        return np.minimum(f, r)
    return r  # "router": the fast probability only picks the stratum's evidence


@dataclass(frozen=True, slots=True)
class AgreementMap:
    """P(the fast answer cites the right article | its calibrated probability `fast`, the
    router's intent probability `router`, whether it cites the router intent's article).

    Two mostly independent signals: when the answer cites the article of the intent the
    router is sure of, both must be wrong together for it to be wrong. Either one isotonic
    map per agreement stratum over `agreement_score` (monotone in each probability by
    construction), or a logistic on (logit fast, logit router, agree) with non-negative
    probability weights. Fitted by `splitpin router calibrate` (`fit_agreement_cv`)."""

    score: AgreementScore
    strata: Mapping[str, IsotonicMap]
    """"agree" / "disagree" maps (empty for the logistic)."""
    weights: tuple[float, ...] = ()
    """Logistic only: intercept, logit(fast), logit(router), agree."""

    def __post_init__(self) -> None:
        if self.score == "logistic":
            if len(self.weights) != 4 or self.weights[1] < 0 or self.weights[2] < 0:
                msg = "a logistic agreement map needs 4 weights, non-negative on both logits"
                raise ValueError(msg)
        elif set(self.strata) != set(STRATA):
            msg = f"an isotonic agreement map needs one map per stratum {STRATA}"
            raise ValueError(msg)

    def apply(
        self, fast: npt.ArrayLike, router: npt.ArrayLike, agree: npt.ArrayLike
    ) -> npt.NDArray[np.float64]:
        f = np.asarray(fast, dtype=np.float64)
        r = np.asarray(router, dtype=np.float64)
        a = np.asarray(agree, dtype=bool)
        if self.score == "logistic":
            w = self.weights
            z = w[0] + w[1] * _logit(f) + w[2] * _logit(r) + w[3] * a
            return np.asarray(np.round(1.0 / (1.0 + np.exp(-z)), PROBABILITY_DECIMALS))
        s = agreement_score(self.score, f, r)
        return np.asarray(
            np.where(a, self.strata["agree"].apply(s), self.strata["disagree"].apply(s))
        )

    def __call__(self, fast: float, router: float, agree: bool) -> float:
        f, r = float(fast), float(router)
        if self.score == "logistic" or f != f or r != r:
            value = float(self.apply(np.array([f]), np.array([r]), np.array([agree]))[0])
        else:  # `apply` for one point, in plain floats (the same doubles, no arrays)
            s = f * r if self.score == "product" else min(f, r) if self.score == "min" else r
            fitted = self.strata["agree" if agree else "disagree"]
            value = interp(s, fitted.x, fitted.y)
        return round(value, PROBABILITY_DECIMALS)

    def to_json(self) -> dict[str, Any]:
        if self.score == "logistic":
            return {"score": self.score, "weights": list(self.weights)}
        return {"score": self.score, "strata": {k: m.to_json() for k, m in self.strata.items()}}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> AgreementMap:
        score = raw["score"]
        if score not in SCORES:
            msg = f"unknown agreement score {score!r}"
            raise ValueError(msg)
        strata = {
            k: IsotonicMap(tuple(m["x"]), tuple(m["y"])) for k, m in raw.get("strata", {}).items()
        }
        return cls(score, strata, tuple(float(w) for w in raw.get("weights", ())))


@dataclass(frozen=True, slots=True)
class Calibration:
    """The shipped maps: one isotonic map per fleet role, one temperature per router head,
    and (format 2) the fast role's agreement map with the router's intent."""

    maps: Mapping[str, IsotonicMap]
    temperatures: Mapping[str, float]  # "intent", "domain"
    manifest: Mapping[str, Any]
    agreement: AgreementMap | None = None
    """None in a format-1 file: the fast answer's own map is all there is."""

    def fast_probability_given_router(
        self,
        raw_confidence: float | None,
        router_probability: float | None,
        cites_router_article: bool,
    ) -> float | None:
        """P(a local `fast` answer cites the right article), from its raw confidence, the
        router's intent probability for the event (the decision's, raw head softmax) and
        whether its first citation is that intent's article. Falls back to the fast map
        alone when the router's probability is unknown or the file has no agreement map;
        None when the answer's confidence is unknown."""
        fast = self.probability_right("fast", raw_confidence)
        if fast is None or router_probability is None or self.agreement is None:
            return fast
        router = min(max(float(router_probability), 0.0), 1.0)
        return self.agreement(fast, router, cites_router_article)

    def probability_right(
        self, role: str, raw_confidence: float | None, provider: str = LOCAL_PROVIDER
    ) -> float | None:
        """P(the answer cites the right article) for a raw confidence; None when unknown.

        Remote providers' confidence passes through (clipped to [0, 1]): nothing was fitted
        for them. A local role without a map (the summarizer) has no such probability."""
        if raw_confidence is None:
            return None
        if provider != LOCAL_PROVIDER:
            return round(min(max(float(raw_confidence), 0.0), 1.0), PROBABILITY_DECIMALS)
        fitted = self.maps.get(role)
        return None if fitted is None else fitted(float(raw_confidence))

    def temperature(self, head: str) -> float:
        """The fitted temperature of the router's `intent` or `domain` head (1.0 if absent)."""
        return float(self.temperatures.get(head, 1.0))


MIN_COUNT_GRID = (1, 10, 20, 40, 80)
"""Smallest isotonic block sizes tried by `fit_isotonic_cv` (0 there means Platt)."""
PLATT = 0
CV_FOLDS = 5
PLATT_KNOTS = 101
_EPS = 1e-4


def _logit(p: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    q = np.clip(p, _EPS, 1.0 - _EPS)
    return np.asarray(np.log(q / (1.0 - q)))


def fit_platt(raw: npt.ArrayLike, correct: npt.ArrayLike) -> IsotonicMap:
    """Logistic regression of correctness on logit(raw) (Newton steps, lightly regularised),
    sampled at PLATT_KNOTS points over the raw range as a knot map. Two parameters: less
    variance than isotonic steps on a few hundred rows. A decreasing fit is flattened to the
    base rate (a map must be monotone non-decreasing)."""
    c = np.asarray(raw, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64)
    w = _fit_logistic(np.column_stack([np.ones_like(c), _logit(c)]), y)
    lo, hi = float(c.min()), float(c.max())
    xs = np.linspace(lo, hi, PLATT_KNOTS) if hi > lo else np.array([lo])
    if w[1] <= 0:
        ys = np.full_like(xs, float(y.mean()))
    else:
        ys = 1.0 / (1.0 + np.exp(-(w[0] + w[1] * _logit(xs))))
    values = np.maximum.accumulate(np.round(ys, PROBABILITY_DECIMALS))
    return IsotonicMap(tuple(float(v) for v in xs), tuple(float(v) for v in values))


def _fit(c: npt.NDArray[np.float64], y: npt.NDArray[np.float64], choice: int) -> IsotonicMap:
    return fit_platt(c, y) if choice == PLATT else IsotonicMap.fit(c, y, choice)


def fit_isotonic_cv(
    raw: npt.ArrayLike,
    correct: npt.ArrayLike,
    grid: Sequence[int] = (PLATT, *MIN_COUNT_GRID),
) -> tuple[IsotonicMap, int]:
    """Among Platt scaling (0) and isotonic maps of each `min_count`, the one with the least
    cross-validated Brier score on the fitting rows themselves (fold = row index mod
    CV_FOLDS: deterministic), refitted on all of them; the evaluation rows stay unseen.
    Ties go to the earlier choice in `grid`. Returns the map and the choice."""
    c = np.asarray(raw, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64)
    folds = np.arange(len(c)) % CV_FOLDS
    best: tuple[float, int] | None = None
    for choice in grid:
        errors = 0.0
        for fold in range(CV_FOLDS):
            train, test = folds != fold, folds == fold
            if not train.any() or not test.any():
                continue
            fitted = _fit(c[train], y[train], choice)
            errors += float(((fitted.apply(c[test]) - y[test]) ** 2).sum())
        if best is None or errors < best[0] - 1e-12:
            best = (errors, choice)
    chosen = grid[0] if best is None else best[1]
    return _fit(c, y, chosen), chosen


def _fit_logistic(design: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> Any:
    """Newton steps on a lightly ridged logistic log-likelihood (fit_platt, the agreement
    map's logistic form)."""
    w = np.zeros(design.shape[1])
    ridge = 1e-3 * np.eye(design.shape[1])
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(design @ w)))
        grad = design.T @ (p - y) + ridge @ w
        hess = design.T @ (design * (p * (1 - p))[:, None]) + ridge
        step = np.linalg.solve(hess, grad)
        w = w - step
        if float(np.abs(step).max()) < 1e-10:
            break
    return w


def fit_agreement(
    score: AgreementScore,
    fast: npt.ArrayLike,
    router: npt.ArrayLike,
    agree: npt.ArrayLike,
    correct: npt.ArrayLike,
) -> AgreementMap:
    """One agreement map of the given form. Isotonic forms: per stratum, `fit_isotonic_cv`
    (Platt or isotonic, by inner cross-validation) on the score; a stratum without rows
    gets the overall base rate. Logistic: a negative weight on a logit is dropped (the
    feature left out and the rest refitted), so the map stays monotone."""
    f = np.asarray(fast, dtype=np.float64)
    r = np.asarray(router, dtype=np.float64)
    a = np.asarray(agree, dtype=bool)
    y = np.asarray(correct, dtype=np.float64)
    base = float(y.mean()) if y.size else 0.0
    if score == "logistic":
        columns = [np.ones_like(f), _logit(f), _logit(r), a.astype(np.float64)]
        keep = [0, 1, 2, 3]
        while True:
            w = _fit_logistic(np.column_stack([columns[k] for k in keep]), y)
            weights = dict(zip(keep, (float(v) for v in w), strict=True))
            negative = [k for k in (1, 2) if weights.get(k, 0.0) < 0]
            if not negative:
                break
            keep.remove(negative[0])
        return AgreementMap(score, {}, tuple(round(weights.get(k, 0.0), 6) for k in range(4)))
    s = agreement_score(score, f, r)
    strata: dict[str, IsotonicMap] = {}
    for name, mask in (("agree", a), ("disagree", ~a)):
        if mask.sum() >= CV_FOLDS:
            strata[name], _ = fit_isotonic_cv(s[mask], y[mask])
        else:
            strata[name] = IsotonicMap((0.0,), (round(base, PROBABILITY_DECIMALS),))
    return AgreementMap(score, strata)


def fit_agreement_cv(
    fast: npt.ArrayLike,
    router: npt.ArrayLike,
    agree: npt.ArrayLike,
    correct: npt.ArrayLike,
    scores: Sequence[AgreementScore] = SCORES,
) -> tuple[AgreementMap, dict[str, float]]:
    """The form with the least cross-validated Brier score on the fitting rows (fold = row
    index mod CV_FOLDS, as fit_isotonic_cv), refitted on all of them. Returns the map and
    each form's mean cross-validated Brier score (for the record)."""
    f = np.asarray(fast, dtype=np.float64)
    r = np.asarray(router, dtype=np.float64)
    a = np.asarray(agree, dtype=bool)
    y = np.asarray(correct, dtype=np.float64)
    folds = np.arange(len(y)) % CV_FOLDS
    brier: dict[str, float] = {}
    for score in scores:
        errors = 0.0
        for fold in range(CV_FOLDS):
            train, test = folds != fold, folds == fold
            if not train.any() or not test.any():
                continue
            fitted = fit_agreement(score, f[train], r[train], a[train], y[train])
            errors += float(((fitted.apply(f[test], r[test], a[test]) - y[test]) ** 2).sum())
        brier[score] = round(errors / max(len(y), 1), 6)
    chosen = min(scores, key=lambda k: (brier[k], scores.index(k)))
    return fit_agreement(chosen, f, r, a, y), brier


def halves(texts: Sequence[str], labels: Sequence[str]) -> tuple[list[int], list[int]]:
    """Deterministic stratified halves (calibration, evaluation) of labelled rows: per label,
    rows ordered by sha256 of their text, alternately assigned (first to calibration), so the
    split depends on the rows themselves, not on file order or a random generator."""
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    fit: list[int] = []
    held: list[int] = []
    for label in sorted(by_label):
        ordered = sorted(
            by_label[label], key=lambda i: (hashlib.sha256(texts[i].encode()).hexdigest(), i)
        )
        fit.extend(ordered[0::2])
        held.extend(ordered[1::2])
    return sorted(fit), sorted(held)


def read_calibration(directory: Path) -> Calibration:
    """Load calibration.json beside the heads; ConfigError if missing, malformed, or fitted
    for other heads (the maps describe those heads' and that fleet's confidence)."""
    path = directory / CALIBRATION_FILE
    if not path.is_file():
        msg = f"no calibration at {path}; {_HINT}"
        raise ConfigError(msg)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        fmt = raw["format"]
        maps = {role: IsotonicMap(tuple(m["x"]), tuple(m["y"])) for role, m in raw["maps"].items()}
        temperatures = {k: float(v) for k, v in raw["temperatures"].items()}
        heads_sha = raw["heads"]["manifest_sha256"]
        agreement = AgreementMap.from_json(raw["agreement"]) if "agreement" in raw else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        msg = f"{path} is unreadable or incomplete ({exc!r}); {_HINT}"
        raise ConfigError(msg) from exc
    if fmt not in READABLE_FORMATS:
        msg = f"{path}: format {fmt}, this splitpin reads {READABLE_FORMATS}; {_HINT}"
        raise ConfigError(msg)
    if any(t <= 0 for t in temperatures.values()):
        msg = f"{path}: temperatures must be positive; {_HINT}"
        raise ConfigError(msg)
    actual = sha256_file(directory / MANIFEST) if (directory / MANIFEST).is_file() else None
    if actual != heads_sha:
        msg = f"{path} was fitted for heads with manifest sha256 {heads_sha}, not {actual}; {_HINT}"
        raise ConfigError(msg)
    return Calibration(maps=maps, temperatures=temperatures, manifest=raw, agreement=agreement)


@functools.cache
def _cached(directory: Path) -> Calibration:
    return read_calibration(directory)


def calibration_for(classifier: ClassifierConfig) -> Calibration:
    """The calibration beside the configured heads (`classifier.artifacts_dir`), loaded once."""
    return _cached(resolve_artifacts_dir(classifier.artifacts_dir))


def packaged_calibration() -> Calibration:
    """The calibration shipped with the packaged heads (loaded once per process)."""
    return _cached(resolve_artifacts_dir(None))


def probability_right(
    role: str, raw_confidence: float | None, provider: str = LOCAL_PROVIDER
) -> float | None:
    """P(right article) for a role's raw confidence, from the packaged calibration.

    For the verification policy (operators/answering.py): None when the confidence is
    unknown or the role has no map; remote providers' confidence passes through."""
    return packaged_calibration().probability_right(role, raw_confidence, provider)


def fast_probability_given_router(
    raw_confidence: float | None, router_probability: float | None, cites_router_article: bool
) -> float | None:
    """`Calibration.fast_probability_given_router` of the packaged calibration."""
    return packaged_calibration().fast_probability_given_router(
        raw_confidence, router_probability, cites_router_article
    )
