"""Bradley-Terry strengths from pairwise human preferences, with uncertainty, and a style-controlled
variant that measures how much length and formatting explain the preferences.

**Strengths.** ``P(i beats j) = sigmoid(theta_i - theta_j)``, fitted by ``choix.opt_pairwise``
(maximum a posteriori under a Gaussian prior of variance ``1 / alpha``: it keeps items that never
lost, or never won, finite, and a sparse comparison graph identifiable). A tie counts as half a
win each way (every decisive comparison is entered twice, a tie once in each direction). The
strengths are centred (mean 0). Their covariance is the inverse of the negative log-posterior's
Hessian at the estimate (Laplace), so each strength has a standard error and a 95% interval.

**Style control.** ``P(i beats j) = sigmoid(theta_i - theta_j + beta . (x_i - x_j))`` with
``x`` the responses' style features (log length in tokens, markdown density). ``beta`` is
estimated jointly (unpenalised; the strengths keep their prior), with standard errors. It reads:
the log-odds a response gains per unit of a feature over its rival, *other things equal*.
``explained`` compares a style-only model (``theta = 0``) with the full one by McFadden's
pseudo-R2 against a coin flip: how much of what humans preferred the style alone predicts.

>>> fit = fit_strengths(3, [Comparison(0, 1, "a"), Comparison(1, 2, "a"), Comparison(0, 2, "a")] * 5)
>>> [round(float(v), 2) for v in fit.values] == sorted([round(float(v), 2) for v in fit.values], reverse=True)
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import choix
import numpy as np
from scipy import optimize, stats

from monitor.analyze.uncertainty import Z95

#: Prior precision of the strengths (a standard deviation of about 3 in log-odds).
ALPHA = 0.1
OUTCOMES = ("a", "b", "tie")


@dataclass(frozen=True)
class Comparison:
    """Item ``a`` against item ``b``: ``outcome`` ``"a"`` (a preferred), ``"b"`` or ``"tie"``."""

    a: int
    b: int
    outcome: str

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {self.outcome!r}")
        if self.a == self.b:
            raise ValueError("an item cannot be compared with itself")


@dataclass(frozen=True)
class Strengths:
    values: np.ndarray  # centred log-strengths, one per item
    se: np.ndarray
    comparisons: int
    ties: int
    components: int  # connected components of the comparison graph (1: every strength comparable)

    def interval(self, item: int) -> tuple[float, float]:
        half = Z95 * float(self.se[item])
        return float(self.values[item]) - half, float(self.values[item]) + half


@dataclass(frozen=True)
class StyleEffect:
    names: tuple[str, ...]
    beta: np.ndarray
    se: np.ndarray
    explained: float  # pseudo-R2 of the style-only model
    explained_with_strengths: float  # pseudo-R2 of strengths + style

    def as_dict(self) -> dict[str, object]:
        return {"features": {name: {"beta": float(b), "se": float(s),
                                    "ci95": [float(b - 1.96 * s), float(b + 1.96 * s)]}
                             for name, b, s in zip(self.names, self.beta, self.se, strict=True)},
                "explained_by_style": self.explained, "explained_by_strengths_and_style": self.explained_with_strengths}


def _entries(comparisons: Sequence[Comparison]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(winner, loser, weight) rows: a decisive comparison weight 1, a tie two half-weight rows."""
    winners, losers, weights = [], [], []
    for c in comparisons:
        if c.outcome == "tie":
            winners += [c.a, c.b]
            losers += [c.b, c.a]
            weights += [0.5, 0.5]
        else:
            winner, loser = (c.a, c.b) if c.outcome == "a" else (c.b, c.a)
            winners.append(winner)
            losers.append(loser)
            weights.append(1.0)
    return np.array(winners, dtype=int), np.array(losers, dtype=int), np.array(weights)


def _components(n_items: int, comparisons: Sequence[Comparison]) -> int:
    parent = list(range(n_items))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for c in comparisons:
        parent[root(c.a)] = root(c.b)
    return len({root(i) for i in range(n_items)})


def fit_strengths(n_items: int, comparisons: Sequence[Comparison], *, alpha: float = ALPHA) -> Strengths:
    """The items' strengths from ``comparisons`` (see the module)."""
    if n_items < 2:
        raise ValueError("need at least two items")
    if not comparisons:
        raise ValueError("need at least one comparison")
    if any(not 0 <= c.a < n_items or not 0 <= c.b < n_items for c in comparisons):
        raise ValueError(f"comparisons name items outside 0..{n_items - 1}")
    data: list[tuple[int, int]] = []
    for c in comparisons:  # choix takes (winner, loser); doubled, so a tie is one of each
        if c.outcome == "tie":
            data += [(c.a, c.b), (c.b, c.a)]
        else:
            data += [(c.a, c.b)] * 2 if c.outcome == "a" else [(c.b, c.a)] * 2
    # choix's likelihood over the doubled data is twice ours: twice the prior precision keeps the
    # posterior ours.
    theta = np.asarray(choix.opt_pairwise(n_items, data, alpha=2 * alpha), dtype=float)
    theta = theta - theta.mean()
    winners, losers, weights = _entries(comparisons)
    p = 1.0 / (1.0 + np.exp(-(theta[winners] - theta[losers])))
    hessian = alpha * np.eye(n_items)
    w = weights * p * (1 - p)
    np.add.at(hessian, (winners, winners), w)
    np.add.at(hessian, (losers, losers), w)
    np.add.at(hessian, (winners, losers), -w)
    np.add.at(hessian, (losers, winners), -w)
    covariance = np.linalg.inv(hessian)
    centring = np.eye(n_items) - 1.0 / n_items  # the strengths are reported centred
    se = np.sqrt(np.clip(np.diag(centring @ covariance @ centring), 0.0, None))
    return Strengths(theta, se, len(comparisons), sum(c.outcome == "tie" for c in comparisons),
                     _components(n_items, comparisons))


def _negative_log_likelihood(params: np.ndarray, n_items: int, features: np.ndarray, winners: np.ndarray,
                             losers: np.ndarray, weights: np.ndarray, alpha: float,
                             with_strengths: bool) -> tuple[float, np.ndarray]:
    theta = params[:n_items] if with_strengths else np.zeros(n_items)
    beta = params[n_items:] if with_strengths else params
    margin = theta[winners] - theta[losers] + (features[winners] - features[losers]) @ beta
    p = 1.0 / (1.0 + np.exp(-margin))
    value = -float(np.sum(weights * np.log(np.clip(p, 1e-300, None))))
    residual = weights * (1.0 - p)
    grad_beta = -(features[winners] - features[losers]).T @ residual
    if not with_strengths:
        return value, grad_beta
    grad_theta = np.zeros(n_items)
    np.add.at(grad_theta, winners, -residual)
    np.add.at(grad_theta, losers, residual)
    value += 0.5 * alpha * float(theta @ theta)
    grad_theta += alpha * theta
    return value, np.concatenate([grad_theta, grad_beta])


def style_effect(n_items: int, comparisons: Sequence[Comparison], features: np.ndarray,
                 names: Sequence[str], *, alpha: float = ALPHA) -> StyleEffect:
    """How much the style ``features`` (items x features) explain the preferences (see the module)."""
    features = np.asarray(features, dtype=float)
    if features.shape != (n_items, len(names)):
        raise ValueError(f"features must be {n_items} x {len(names)}, got {features.shape}")
    winners, losers, weights = _entries(comparisons)
    k = len(names)
    null = float(np.sum(weights)) * math.log(2.0)  # a coin flip's negative log-likelihood
    style_only = optimize.minimize(_negative_log_likelihood, np.zeros(k), jac=True, method="BFGS",
                                   args=(n_items, features, winners, losers, weights, alpha, False))
    full = optimize.minimize(_negative_log_likelihood, np.zeros(n_items + k), jac=True, method="L-BFGS-B",
                             args=(n_items, features, winners, losers, weights, alpha, True))
    beta = full.x[n_items:]
    # Standard errors of beta: the observed information of the full model (strengths profiled in).
    theta = full.x[:n_items]
    margin = theta[winners] - theta[losers] + (features[winners] - features[losers]) @ beta
    p = 1.0 / (1.0 + np.exp(-margin))
    design = np.zeros((len(winners), n_items + k))
    rows = np.arange(len(winners))
    design[rows, winners] += 1.0
    design[rows, losers] -= 1.0
    design[:, n_items:] = features[winners] - features[losers]
    information = (design * (weights * p * (1 - p))[:, None]).T @ design
    information[:n_items, :n_items] += alpha * np.eye(n_items)
    covariance = np.linalg.pinv(information)
    se = np.sqrt(np.clip(np.diag(covariance)[n_items:], 0.0, None))
    return StyleEffect(tuple(names), beta, se, max(0.0, 1.0 - style_only.fun / null),
                       max(0.0, 1.0 - (full.fun - 0.5 * alpha * float(theta @ theta)) / null))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(stats.spearmanr(a, b).statistic)
