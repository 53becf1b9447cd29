"""Calibration: the map reward -> P(user satisfied), fitted on a segment's reference window.

A logistic curve ``P = sigmoid(a + b * (score - centre) / scale)`` fitted by iteratively
reweighted least squares on *soft* labels (satisfaction in [0, 1]: thumbs 0/1, stars and scores in
between), so every rating kind contributes what it says. Two parameters are all a few hundred
labels can pin down; a monotone isotonic fit would follow the noise of a small reference.

The fit also freezes what the detectors need from the same window: the residual SD (residuals
are standardised by it), the CUSUM threshold calibrated on the reference residuals, the rank
agreement between reward and satisfaction, and the mean and SD of each signal (attribution
measures shifts against them).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> score = rng.normal(size=20_000)
>>> satisfied = (rng.random(20_000) < 1 / (1 + np.exp(-(0.3 + 1.5 * score)))).astype(float)
>>> a, b = fit_logistic(score, satisfied)
>>> round(a, 1), round(b, 1)
(0.3, 1.5)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from monitor.analyze.rank_agreement import auc, spearman
from monitor.analyze.thresholds import calibrate_threshold
from monitor.analyze.uncertainty import map_covariance, reference_dof

#: The CUSUM threshold is calibrated to this many times the false-alarm budget's run length. The
#: bootstrap's correction for a reference of finite size rests on Gaussian theory; with the
#: detectors' own margin (1.25) `monitor bench detect` measured 0.71 false alarms per 10k rated turns
#: over 40 independent references (budget: 1), and stationary scenario runs came out near the
#: budget. A margin of 3 measured 0.18 per 10k for 8 more rated turns of median delay (61 vs 53).
THRESHOLD_MARGIN = 3.0
#: The threshold allows for dependence between reference residuals up to this many rated turns apart
#: in serving order (users rating several turns in a row), over as many lags as the data call for
#: (thresholds.automatic_lags). Without it noisy stars and continuous scores from such users
#: measured 2.16 and 1.36 false alarms per 10k rated turns (budget 1); with it 0.76 and 0.57, and
#: thumbs 0.53 (0.55 before), median delays 79, 74 and 64 rated turns (16 fixed lags: 0.71, 0.48,
#: 0.42 for 84, 78, 65) (`monitor bench detect`, B1; docs/detectors.md, "False alarms per rating kind").
DEPENDENCE_LAGS = 16
# A whisper of ridge keeps the fit finite when the reference is perfectly separable.
_RIDGE = 1e-6
_MAX_ITERATIONS = 50


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free


def fit_logistic(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Intercept and slope of a logistic regression of soft labels ``y`` in [0, 1] on ``x``."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError("x and y must be 1-d arrays of the same length >= 2")
    if np.any((y < 0) | (y > 1)) or not np.all(np.isfinite(x)):
        raise ValueError("y must lie in [0, 1] and x must be finite")
    design = np.column_stack([np.ones_like(x), x])
    beta = np.zeros(2)
    for _ in range(_MAX_ITERATIONS):
        p = _sigmoid(design @ beta)
        weight = np.maximum(p * (1 - p), 1e-9)
        gradient = design.T @ (y - p) - _RIDGE * beta
        hessian = (design * weight[:, None]).T @ design + _RIDGE * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        beta += step
        if np.max(np.abs(step)) < 1e-8:
            break
    return float(beta[0]), float(beta[1])


def fit_reward_map(score: np.ndarray, satisfaction: np.ndarray) -> tuple[float, float, float, float]:
    """``(intercept, slope, centre, scale)`` of the logistic map reward -> P(satisfied); the score is
    centred and scaled before the fit, so the parameters stay O(1) whatever the RM's scale."""
    centre = float(np.mean(score))
    scale = float(np.std(score)) or 1.0
    intercept, slope = fit_logistic((np.asarray(score, dtype=float) - centre) / scale, satisfaction)
    return intercept, slope, centre, scale


def reward_map(score: np.ndarray, intercept: float, slope: float, centre: float, scale: float) -> np.ndarray:
    """P(satisfied) for each score under a map from :func:`fit_reward_map` (NaN stays NaN)."""
    return _sigmoid(intercept + slope * (np.asarray(score, dtype=float) - centre) / scale)


@dataclass(frozen=True)
class Calibration:
    """One segment's frozen reference: the reward map and the statistics the detectors need."""

    intercept: float
    slope: float
    centre: float  # the score is centred and scaled before the fit, so the parameters stay O(1)
    scale: float
    residual_sd: float
    cusum_k: float
    cusum_h: float
    labels: int
    reference_from: float  # event time, seconds since the epoch
    reference_to: float
    reward_mean: float
    satisfaction_mean: float
    auc: float
    spearman: float
    signal_means: tuple[float, ...]
    signal_sds: tuple[float, ...]
    #: Sandwich covariance of (intercept, slope), row-major, and its degrees of freedom
    #: (monitor.analyze.uncertainty); None / inf in references stored before they were kept.
    covariance: tuple[float, ...] | None = None
    covariance_dof: float = math.inf

    @property
    def covariance_matrix(self) -> np.ndarray | None:
        return None if self.covariance is None else np.array(self.covariance, dtype=float).reshape(2, 2)

    def predict(self, score: np.ndarray) -> np.ndarray:
        """P(satisfied) for each score (NaN stays NaN)."""
        return reward_map(score, self.intercept, self.slope, self.centre, self.scale)

    def standardised_residuals(self, score: np.ndarray, satisfaction: np.ndarray) -> np.ndarray:
        return (np.asarray(satisfaction, dtype=float) - self.predict(score)) / self.residual_sd

    def to_params(self) -> dict:
        """JSON-ready: JSON (and PostgreSQL's JSONB) has no NaN, so an undefined statistic is None."""
        params = asdict(self)
        params["signal_means"] = list(self.signal_means)
        params["signal_sds"] = list(self.signal_sds)
        params["covariance"] = None if self.covariance is None else list(self.covariance)
        return {name: (None if isinstance(v, float) and not math.isfinite(v) else v) for name, v in params.items()}

    @classmethod
    def from_params(cls, params: dict) -> Calibration:
        values: dict[str, Any] = {name: (math.nan if v is None else v) for name, v in params.items()}
        values["signal_means"] = tuple(values["signal_means"])
        values["signal_sds"] = tuple(values["signal_sds"])
        covariance = values.get("covariance")
        values["covariance"] = tuple(covariance) if isinstance(covariance, (list, tuple)) else None
        dof = values.get("covariance_dof", math.inf)
        values["covariance_dof"] = math.inf if not math.isfinite(dof) else float(dof)
        return cls(**values)


def fit_calibration(
    score: np.ndarray,
    satisfaction: np.ndarray,
    signals: np.ndarray,
    ts: np.ndarray,
    *,
    shift_sd: float = 0.5,
    false_alarm_labels: int = 10_000,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> Calibration:
    """Fit the reference of one segment from its rated turns (scores, satisfaction, signal rows).

    ``shift_sd`` is the residual shift the CUSUM should catch fastest (its ``k`` is half of it);
    ``false_alarm_labels`` the in-control run length its threshold is calibrated to. The rows may
    come in any order: the threshold reads the residuals in ``ts`` order, where neighbours may share
    a user (:data:`DEPENDENCE_LAGS`). ``groups``: each row's conversation id, for the map's
    covariance (monitor.analyze.uncertainty). About 0.7 s of CPU, nearly all of it the threshold's
    bootstrap.
    """
    score = np.asarray(score, dtype=float)
    satisfaction = np.asarray(satisfaction, dtype=float)
    if len(score) < 30:
        raise ValueError(f"a reference needs at least 30 rated turns, got {len(score)}")
    intercept, slope, centre, scale = fit_reward_map(score, satisfaction)
    predicted = reward_map(score, intercept, slope, centre, scale)
    residuals = satisfaction - predicted
    residual_sd = float(np.std(residuals)) or 1.0
    k = shift_sd / 2
    serving_order = np.argsort(np.asarray(ts, dtype=float), kind="stable")
    h = calibrate_threshold(residuals[serving_order] / residual_sd, k=k, arl0=false_alarm_labels, seed=seed,
                            margin=THRESHOLD_MARGIN, dependence_lags=DEPENDENCE_LAGS)
    signals = np.asarray(signals, dtype=float)
    return Calibration(
        intercept=intercept, slope=slope, centre=centre, scale=scale, residual_sd=residual_sd,
        cusum_k=k, cusum_h=float(h), labels=len(score),
        reference_from=float(np.min(ts)), reference_to=float(np.max(ts)),
        reward_mean=float(np.mean(score)), satisfaction_mean=float(np.mean(satisfaction)),
        auc=float(auc(score, satisfaction >= 0.5)), spearman=float(spearman(score, satisfaction)),
        signal_means=tuple(float(v) for v in np.mean(signals, axis=0)),
        signal_sds=tuple(float(v) for v in np.std(signals, axis=0)),
        covariance=tuple(float(v) for v in map_covariance(
            score[serving_order], satisfaction[serving_order], intercept, slope, centre, scale,
            groups=None if groups is None else np.asarray(groups)[serving_order]).ravel()),
        covariance_dof=reference_dof(satisfaction[serving_order], predicted[serving_order],
                                     groups=None if groups is None else np.asarray(groups)[serving_order]),
    )

