"""Windowed agreement between reward and satisfaction, and one-sided tests that it dropped.

The CUSUM watches the *level* of satisfaction given the reward; these watch its *ordering*: a
reward model can keep its average calibration while ranking responses worse and worse (a hacked
feature earns reward but not satisfaction). Two views of the same question:

* :func:`spearman`: rank correlation of reward with satisfaction (any rating kind);
* :func:`auc`: P(reward of a satisfied sample > that of an unsatisfied one), for binary outcomes.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> reward = rng.normal(size=400)
>>> satisfied = rng.random(400) < 1 / (1 + np.exp(-2 * reward))
>>> round(auc(reward, satisfied), 2), round(spearman(reward, satisfied), 2)
(0.86, 0.63)
>>> shuffled = rng.permutation(reward)
>>> drop = auc_drop(reward, satisfied, shuffled, satisfied)
>>> round(drop.window, 2), drop.p_value < 1e-6
(0.49, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

SPEARMAN = "spearman"
AUC = "auc"
# Below these a window says nothing: Fisher's z and Hanley-McNeil are large-sample approximations,
# and one satisfied answer out of two would give an AUC of 0 or 1 with a zero standard error.
MIN_PAIRS = 10
MIN_PER_CLASS = 5


@dataclass(frozen=True)
class AgreementDrop:
    """A one-sided test that agreement in the window is lower than in the reference.

    ``z`` > 0 means the window agrees less; ``p_value`` is 1.0 (no evidence) and ``z`` NaN when
    either side has fewer than ``MIN_PAIRS`` pairs (Spearman) or ``MIN_PER_CLASS`` samples of each
    class (AUC), or a statistic is undefined (constant input, one class only).
    """

    reference: float
    window: float
    z: float
    p_value: float
    n_reference: int
    n_window: int
    metric: str


def _paired(reward: ArrayLike, satisfaction: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Both as float arrays, with the pairs where either is NaN left out."""
    x = np.asarray(reward, dtype=float)
    y = np.asarray(satisfaction, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"reward and satisfaction must be 1-d and of equal length, got {x.shape} and {y.shape}")
    keep = ~(np.isnan(x) | np.isnan(y))
    return x[keep], y[keep]


def spearman(reward: ArrayLike, satisfaction: ArrayLike) -> float:
    """Spearman rank correlation; NaN for fewer than 3 pairs or a constant side (pairs with NaN dropped)."""
    x, y = _paired(reward, satisfaction)
    # Checked here because scipy warns on constant input, and warnings are errors in our tests.
    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    return float(stats.spearmanr(x, y).statistic)


def _classes(reward: ArrayLike, satisfied: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x, y = _paired(reward, satisfied)
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("satisfied must be boolean (True/False or 1/0); threshold stars and scores first")
    return x[y == 1], x[y == 0]


def auc(reward: ArrayLike, satisfied: ArrayLike) -> float:
    """P(reward of a satisfied sample > an unsatisfied one), ties counting 1/2; NaN with one class."""
    positives, negatives = _classes(reward, satisfied)
    if len(positives) == 0 or len(negatives) == 0:
        return math.nan
    # Mann-Whitney U of the positives counts exactly the pairs they win, ties as 1/2.
    u = stats.mannwhitneyu(positives, negatives, alternative="two-sided").statistic
    return float(u / (len(positives) * len(negatives)))


def _one_sided(reference: float, window: float, difference: float, variance: float,
               n_reference: int, n_window: int, metric: str) -> AgreementDrop:
    if not (math.isfinite(difference) and math.isfinite(variance)):
        return AgreementDrop(reference, window, math.nan, 1.0, n_reference, n_window, metric)
    if variance <= 0:
        # Both sides perfectly separated (AUC 0 or 1): any drop is certain, no drop is no evidence.
        z = math.inf if difference > 0 else -math.inf if difference < 0 else 0.0
    else:
        z = difference / math.sqrt(variance)
    return AgreementDrop(reference, window, z, float(stats.norm.sf(z)), n_reference, n_window, metric)


def _spearman_variance(rho: float, n: int) -> float:
    # Bonett & Wright (2000): var(atanh r_s) ~ (1 + r_s^2 / 2) / (n - 3). At |r_s| ~ 0.35, typical of
    # reward vs satisfaction, it equals Fieller, Hartley & Pearson's (1957) 1.06 / (n - 3).
    return (1 + rho * rho / 2) / (n - 3)


def spearman_drop(
    ref_reward: ArrayLike, ref_sat: ArrayLike, win_reward: ArrayLike, win_sat: ArrayLike
) -> AgreementDrop:
    """One-sided test that the window's rank correlation is lower than the reference's (Fisher z)."""
    ref_x, ref_y = _paired(ref_reward, ref_sat)
    win_x, win_y = _paired(win_reward, win_sat)
    rho_ref, rho_win = spearman(ref_x, ref_y), spearman(win_x, win_y)
    n_ref, n_win = len(ref_x), len(win_x)
    if n_ref < MIN_PAIRS or n_win < MIN_PAIRS or math.isnan(rho_ref) or math.isnan(rho_win):
        return AgreementDrop(rho_ref, rho_win, math.nan, 1.0, n_ref, n_win, SPEARMAN)
    # atanh(+-1) is infinite; clip so a perfect reference still gives a finite, huge z.
    fisher = [math.atanh(max(-0.999999, min(0.999999, rho))) for rho in (rho_ref, rho_win)]
    variance = _spearman_variance(rho_ref, n_ref) + _spearman_variance(rho_win, n_win)
    return _one_sided(rho_ref, rho_win, fisher[0] - fisher[1], variance, n_ref, n_win, SPEARMAN)


def _hanley_mcneil_variance(area: float, n_positive: int, n_negative: int) -> float:
    """Hanley & McNeil (1982) variance of an AUC estimate from the exponential approximation."""
    q1 = area / (2 - area)
    q2 = 2 * area * area / (1 + area)
    return (area * (1 - area) + (n_positive - 1) * (q1 - area * area)
            + (n_negative - 1) * (q2 - area * area)) / (n_positive * n_negative)


def auc_drop(
    ref_reward: ArrayLike, ref_satisfied: ArrayLike, win_reward: ArrayLike, win_satisfied: ArrayLike
) -> AgreementDrop:
    """One-sided test that the window's AUC is lower than the reference's (Hanley-McNeil SEs)."""
    ref_pos, ref_neg = _classes(ref_reward, ref_satisfied)
    win_pos, win_neg = _classes(win_reward, win_satisfied)
    auc_ref, auc_win = auc(ref_reward, ref_satisfied), auc(win_reward, win_satisfied)
    n_ref, n_win = len(ref_pos) + len(ref_neg), len(win_pos) + len(win_neg)
    if min(len(ref_pos), len(ref_neg), len(win_pos), len(win_neg)) < MIN_PER_CLASS:
        return AgreementDrop(auc_ref, auc_win, math.nan, 1.0, n_ref, n_win, AUC)
    variance = (_hanley_mcneil_variance(auc_ref, len(ref_pos), len(ref_neg))
                + _hanley_mcneil_variance(auc_win, len(win_pos), len(win_neg)))
    return _one_sided(auc_ref, auc_win, auc_ref - auc_win, variance, n_ref, n_win, AUC)
