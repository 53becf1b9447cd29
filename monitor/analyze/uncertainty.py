"""95% intervals that carry every error they claim to: the window's sampling error *and* the
reference calibration's own estimation error, with dependence between neighbouring ratings.

The satisfaction gap of a window is ``mean(satisfaction - p(score; theta))`` over its rated turns,
``p`` the reward map frozen from the segment's reference (``theta`` = its intercept and slope).
Treating ``theta`` as known made the interval too narrow: with 500 reference labels the error of
the fitted map is often larger than the window's own noise (a window of 1,000 rated turns against
a reference of 500). So, by the delta method:

``Var(gap) = LRV(window residuals) / n + g' Sigma g``

* ``LRV``: the residuals' long-run variance. Ratings of one conversation move together (one user,
  one topic), so where the conversation ids are known it is cluster-robust: the spread of the
  conversations: the delete-one-conversation jackknife of the mean, with one degree of freedom
  per conversation. Without them,
  the variance times the long-run variance ratio in serving order
  (:func:`monitor.analyze.thresholds.long_run_variance_ratio`, Andrews' plug-in lags), which
  runs short when runs are long and windows small (`monitor bench uncertainty`);
* ``Sigma``: the covariance of ``theta`` from the reference, a sandwich ``H^-1 M H^-1`` (``H`` the
  logistic fit's information, ``M`` the covariance of its score contributions, by conversation or
  Newey-West as above): right for soft labels (stars, scores) and for a map that does not fit
  exactly, where the model-based ``H^-1`` is not;
* ``g``: the window's mean gradient of ``p`` in ``theta``: ``mean(p (1 - p) [1, x])``.

The reference and the window are disjoint stretches of time, so the two terms add. The same
algebra gives the estimated satisfaction of all the window's turns, rated or not (CBPE): its error
against the turns' realised mean satisfaction is the map's error (``g' Sigma g`` over every scored
turn) plus the outcomes' own noise (residual LRV over the number of turns).

"Satisfied", wherever a rank statistic needs two classes, is ``satisfaction >= 0.5``: a thumbs up,
3 stars or more, a score of at least 0.5. Means of satisfaction use the value itself, in [0, 1]
(``(stars - 1) / 4`` for stars), consistently in the gap, the realised and the estimated figures.

The window's reward-satisfaction AUC gets DeLong's variance (structural components per turn),
each class's part widened by its components' long-run variance ratio, on the logit scale (an AUC
near 1 keeps its interval inside [0, 1]). ``monitor bench uncertainty`` measures coverage and width
of all three on stationary streams of every rating kind (docs/uncertainty.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from monitor.analyze.thresholds import automatic_lags, long_run_variance_ratio

Z95 = 1.959963984540054
#: Longest lag the dependence corrections look at (users rating up to this many turns in a row).
MAX_LAGS = 16
#: Fewer rated turns than this in a window: no interval (the normal approximation is not there yet).
MIN_RATED = 10


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    def as_list(self) -> list[float]:
        return [float(self.low), float(self.high)]

    def covers(self, value: float) -> bool:
        return self.low <= value <= self.high


def bounds(interval: Interval | None) -> list[float] | None:
    """``[low, high]``, as the API, the metrics and the alert evidence show it; None where there is none."""
    return None if interval is None else interval.as_list()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _newey_west(rows: np.ndarray, lags: int) -> np.ndarray:
    """Bartlett-kernel long-run covariance of the rows of ``rows`` (already centred), summed."""
    meat = rows.T @ rows
    lags = min(lags, len(rows) // 4)
    for lag in range(1, lags + 1):
        cross = rows[lag:].T @ rows[:-lag]
        meat += (1.0 - lag / (lags + 1)) * (cross + cross.T)
    return meat


def _cluster_sums(rows: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per group (in order of first appearance), the sum of its rows."""
    _, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    sums = np.zeros((int(inverse.max()) + 1 if len(inverse) else 0, rows.shape[1]))
    np.add.at(sums, inverse, rows)
    return sums


def map_covariance(score: np.ndarray, satisfaction: np.ndarray, intercept: float, slope: float, centre: float,
                   scale: float, groups: np.ndarray | None = None) -> np.ndarray:
    """Sandwich covariance (2 x 2) of a reward map's ``(intercept, slope)`` fitted on these reference
    rows (in serving order), robust to soft labels, a misfitting curve and ratings that move
    together: within a conversation where ``groups`` (its ids) are given, else between neighbours."""
    score = np.asarray(score, dtype=float)
    satisfaction = np.asarray(satisfaction, dtype=float)
    x = (score - centre) / scale
    design = np.column_stack([np.ones_like(x), x])
    p = _sigmoid(intercept + slope * x)
    information = (design * (p * (1 - p))[:, None]).T @ design
    residual = satisfaction - p
    contributions = design * residual[:, None]
    n = len(residual)
    centred = contributions - contributions.mean(axis=0)
    if groups is not None:
        sums = _cluster_sums(centred, groups)
        clusters = len(sums)
        # CR1: the two fitted parameters and the clusters' own mean.
        meat = sums.T @ sums * clusters / max(clusters - 1, 1) * (n - 1) / max(n - 2, 1)
    else:
        lags = min(automatic_lags(residual, MAX_LAGS), n // 4)
        # Small-sample corrections: the two fitted parameters (HC1, n / (n - 2)), and the kernel's
        # downward bias on residuals around their own fit (lags / n, as in long_run_variance_ratio).
        meat = _newey_west(centred, lags) * n / max(n - 2, 1) / (1 - lags / n)
    bread = np.linalg.pinv(information)
    return bread @ meat @ bread


def _promise(score: np.ndarray, intercept: float, slope: float, centre: float, scale: float) -> np.ndarray:
    """The map's P(satisfied) (calibration.reward_map, which imports this module)."""
    return _sigmoid(intercept + slope * (np.asarray(score, dtype=float) - centre) / scale)


def _gradient(score: np.ndarray, intercept: float, slope: float, centre: float, scale: float) -> np.ndarray:
    x = (np.asarray(score, dtype=float) - centre) / scale
    p = _sigmoid(intercept + slope * x)
    weight = p * (1 - p)
    return np.array([weight.mean(), (weight * x).mean()])


def _residual_variance(residual: np.ndarray, groups: np.ndarray | None = None) -> tuple[float, float]:
    """Variance of the mean of ``residual`` times its length, and its degrees of freedom. With
    ``groups`` (conversation ids): cluster-robust (CR1), one degree of freedom per group less one;
    without: variance x long-run variance ratio, the values' effective number less one."""
    n = len(residual)
    if groups is not None:
        # The delete-one-conversation jackknife of the mean (CR3): CR1 runs short when windows are
        # small and conversations few (91.8% against 94.x% coverage, thumbs, 100 rated turns).
        both = _cluster_sums(np.column_stack([residual, np.ones(n)]), groups)
        clusters = len(both)
        if clusters >= 2 and (n - both[:, 1]).min() > 0:
            leave_out = (float(residual.sum()) - both[:, 0]) / (n - both[:, 1])
            jackknife = (clusters - 1) / clusters * float(((leave_out - leave_out.mean()) ** 2).sum())
            return jackknife * n, float(clusters - 1)
    ratio = long_run_variance_ratio(residual, automatic_lags(residual, MAX_LAGS))
    return float(np.var(residual, ddof=1)) * ratio, max(n / ratio - 1.0, 1.0)


def reference_dof(satisfaction: np.ndarray, promise: np.ndarray, groups: np.ndarray | None = None) -> float:
    """Degrees of freedom of a map's covariance from its reference residuals: the conversations
    (or the residuals' effective number, see :func:`_residual_variance`) less the two parameters."""
    residual = np.asarray(satisfaction, dtype=float) - np.asarray(promise, dtype=float)
    if groups is not None:
        return max(float(len(np.unique(np.asarray(groups).astype(str)))) - 2.0, 1.0)
    return max(len(residual) / long_run_variance_ratio(residual, automatic_lags(residual, MAX_LAGS)) - 2.0, 1.0)


def _quantile(parts: list[tuple[float, float]]) -> tuple[float, float]:
    """``(variance, 97.5% quantile)`` of a sum of independent variance estimates, each with its
    degrees of freedom: Student's t with Welch-Satterthwaite's degrees of freedom. Small or
    dependent samples get a wider interval than the normal's 1.96."""
    variance = sum(v for v, _ in parts)
    denominator = sum(v * v / dof for v, dof in parts)
    if variance <= 0.0 or denominator <= 0.0:
        return max(variance, 0.0), Z95
    return variance, float(stats.t.ppf(0.975, variance * variance / denominator))


def gap_interval(score: np.ndarray, satisfaction: np.ndarray, intercept: float, slope: float, centre: float,
                 scale: float, covariance: np.ndarray | None, dof: float = math.inf,
                 groups: np.ndarray | None = None) -> Interval | None:
    """The window's satisfaction gap (realised minus the map's promise) over its rated turns (in
    serving order), with a 95% interval; None below :data:`MIN_RATED` rated turns. ``covariance``
    None (a reference stored before it was kept): the window's error alone; ``dof``: its degrees
    of freedom (:func:`reference_dof`); ``groups``: the rated turns' conversation ids."""
    score = np.asarray(score, dtype=float)
    if len(score) < MIN_RATED:
        return None
    residual = np.asarray(satisfaction, dtype=float) - _promise(score, intercept, slope, centre, scale)
    return _delta_interval(float(residual.mean()), residual, groups, len(residual), score,
                           (intercept, slope, centre, scale), covariance, dof)


def estimated_interval(scored: np.ndarray, rated_score: np.ndarray, rated_satisfaction: np.ndarray, intercept: float,
                       slope: float, centre: float, scale: float, covariance: np.ndarray | None,
                       dof: float = math.inf, groups: np.ndarray | None = None) -> Interval | None:
    """CBPE: the map's expected satisfaction over every scored turn of the window (``scored``),
    with a 95% interval for the turns' realised mean satisfaction: the map's error plus the
    outcomes' noise, the latter's size read off the rated turns' residuals. None without any
    scored turn or with fewer than :data:`MIN_RATED` rated ones."""
    scored = np.asarray(scored, dtype=float)
    if not len(scored) or len(rated_score) < MIN_RATED:
        return None
    estimate = float(_promise(scored, intercept, slope, centre, scale).mean())
    residual = np.asarray(rated_satisfaction, dtype=float) - _promise(rated_score, intercept, slope, centre, scale)
    return _delta_interval(estimate, residual, groups, len(scored), scored, (intercept, slope, centre, scale),
                           covariance, dof)


def _delta_interval(estimate: float, residual: np.ndarray, groups: np.ndarray | None, count: int,
                    over: np.ndarray, fit: tuple[float, float, float, float], covariance: np.ndarray | None,
                    dof: float) -> Interval:
    """``estimate`` +- t x SE, the variance the outcomes' noise (``residual``'s, over ``count``
    turns) plus, with a ``covariance``, the map's error through its mean gradient over ``over``."""
    noise, noise_dof = _residual_variance(residual, groups)
    parts = [(noise / count, noise_dof)]
    if covariance is not None:
        gradient = _gradient(over, *fit)
        parts.append((float(gradient @ covariance @ gradient), dof))
    variance, quantile = _quantile(parts)
    half = quantile * math.sqrt(variance)
    return Interval(estimate, estimate - half, estimate + half)


def auc_interval(reward: np.ndarray, satisfaction: np.ndarray, *, min_per_class: int = 5,
                 groups: np.ndarray | None = None) -> Interval | None:
    """The reward-satisfaction AUC of these rated turns (serving order; satisfied: satisfaction
    >= 0.5) with a 95% interval: DeLong's variance widened for dependence, on the logit scale.
    None with fewer than ``min_per_class`` turns in either class."""
    reward = np.asarray(reward, dtype=float)
    satisfied = np.asarray(satisfaction, dtype=float) >= 0.5
    positives, negatives = reward[satisfied], reward[~satisfied]
    m, n = len(positives), len(negatives)
    if min(m, n) < min_per_class:
        return None
    # Structural components by midranks (DeLong 1988, Sun & Xu 2014): for each positive, the share
    # of negatives it beats (ties 1/2), and for each negative the share of positives that beat it.
    all_ranks = stats.rankdata(reward)
    pos_ranks, neg_ranks = stats.rankdata(positives), stats.rankdata(negatives)
    v10 = (all_ranks[satisfied] - pos_ranks) / n
    v01 = 1.0 - (all_ranks[~satisfied] - neg_ranks) / m
    value = float(v10.mean())
    if groups is not None:
        groups = np.asarray(groups)
        (positive, positive_dof) = _residual_variance(v10, groups[satisfied])
        (negative, negative_dof) = _residual_variance(v01, groups[~satisfied])
    else:
        (positive, positive_dof), (negative, negative_dof) = _residual_variance(v10), _residual_variance(v01)
    variance, quantile = _quantile([(positive / m, positive_dof), (negative / n, negative_dof)])
    if value <= 0.0 or value >= 1.0 or variance <= 0.0:
        # Perfect separation: the rule of three for the share of pairs that could still go wrong.
        slack = min(1.0, 3.0 / min(m, n))
        return Interval(value, max(0.0, value - slack), value) if value >= 0.5 else \
            Interval(value, value, min(1.0, value + slack))
    logit = math.log(value / (1 - value))
    half = quantile * math.sqrt(variance) / (value * (1 - value))
    return Interval(value, float(_sigmoid(np.array(logit - half))), float(_sigmoid(np.array(logit + half))))
