"""CUSUM thresholds: the smallest ``h`` that keeps false alarms under budget on a segment's residuals.

Residuals are not Gaussian (thumbs ratings make them a mixture of two-point distributions), so the
textbook Gaussian tables do not apply; the threshold is calibrated on the segment's own reference
residuals by an i.i.d. bootstrap instead, and checked against Siegmund's Gaussian approximation.
Residuals of neighbouring turns need not be independent (one user rates several turns in a row):
``dependence_lags`` widens the bootstrap by their long-run variance (:func:`long_run_variance_ratio`).

>>> import numpy as np
>>> reference = np.random.default_rng(1).normal(size=1000)
>>> round(gaussian_threshold(0.25, 10_000), 2)
14.49
>>> round(calibrate_threshold(reference, k=0.25, arl0=10_000, reference_error=False, margin=1.0), 2)
14.31

With the defaults (a 25% margin, and the cost of freezing the chart's mean and sd from these same
1,000 values) the threshold is about one SD higher:

>>> round(calibrate_threshold(reference, k=0.25, arl0=10_000), 2)
15.45
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq

from monitor.analyze.cusum import cusum_alarms

#: Siegmund's correction: the sum overshoots ``h`` by about 1.166 SD at the crossing (Gaussian).
_OVERSHOOT = 1.166
#: The in-control run length is calibrated to ``margin * arl0``; why 1.25: see calibrate_threshold.
ARL_MARGIN = 1.25
_MIN_REFERENCE = 20
_BLOCK_VALUES = 1 << 20  # chains are simulated in blocks of about this many values (8 MiB each)


def _one_sided_arl(k: float | np.ndarray, h: float | np.ndarray) -> np.ndarray:
    """Siegmund's in-control ARL of ``max(0, S + z - k) > h`` for z ~ N(0, 1), any sign of k."""
    k = np.asarray(k, dtype=float)
    b = np.asarray(h, dtype=float) + _OVERSHOOT
    drift = -k
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        arl = (np.exp(-2 * drift * b) + 2 * drift * b - 1) / (2 * drift**2)
    return np.where(np.abs(drift) < 1e-9, b**2, arl)


def gaussian_threshold(k: float, arl0: float) -> float:
    """``h`` of a two-sided CUSUM with in-control ARL ``arl0`` on N(0, 1) data (Siegmund 1985).

    The two sides are combined as ``1/ARL = 1/ARL_up + 1/ARL_down`` (Lucas & Crosier 1982).
    """
    _check_k_arl0(k, arl0)
    return _gaussian_h(k, arl0, two_sided=True)


def _check_k_arl0(k: float, arl0: float) -> None:
    if not (math.isfinite(k) and k >= 0):
        raise ValueError(f"k must be a finite number >= 0 (half the shift to detect, in SDs), got {k!r}")
    if not (math.isfinite(arl0) and arl0 > 1):
        raise ValueError(f"arl0 must be a finite number > 1 (labels per false alarm), got {arl0!r}")


def _record_curves(z: np.ndarray, k: float, chains: int, horizon: int, rng: np.random.Generator,
                   side: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per chain, the running maximum of the CUSUM statistic, kept only where it grows.

    Before its first alarm a chain never restarts, so ``upper`` is a reflected random walk: with
    ``S`` the partial sums of ``z - k``, ``upper_t = S_t - min(0, min_{s<=t} S_s)`` (Lindley). Whole
    chains are then cumulative sums, and one pass gives the first alarm time for *every* ``h``:
    the first ``t`` where the running maximum exceeds ``h``. Bisection on ``h`` reuses it.
    """
    curves: list[tuple[np.ndarray, np.ndarray]] = []
    block = max(1, min(chains, _BLOCK_VALUES // horizon))
    drift = k * np.arange(1, horizon + 1)
    signs = {"both": (1.0, -1.0), "up": (1.0,), "down": (-1.0,)}[side]
    for start in range(0, chains, block):
        rows = min(block, chains - start)
        total = np.cumsum(z[rng.integers(0, len(z), size=(rows, horizon), dtype=np.int32)], axis=1)
        statistic = np.zeros((rows, horizon))
        for sign in signs:
            walk = total - drift if sign > 0 else -total - drift
            floor = np.minimum.accumulate(walk, axis=1)
            np.minimum(floor, 0.0, out=floor)
            walk -= floor
            np.maximum(statistic, walk, out=statistic)
        np.maximum.accumulate(statistic, axis=1, out=statistic)
        for row in statistic:
            times = np.concatenate(([0], np.flatnonzero(row[1:] > row[:-1]) + 1))
            curves.append((row[times], times))
    return curves


def _alarm_rate(h: float, curves: list[tuple[np.ndarray, np.ndarray]], horizon: int) -> float:
    """Alarms per value at threshold ``h``: alarms over exposure (right-censored at ``horizon``).

    With a restart after each alarm the alarms form a renewal process, so alarms per value is
    1 / E[run length]; alarms / exposure is its maximum-likelihood estimate for exponential run
    lengths, which in-control CUSUM run lengths are very nearly.
    """
    alarms = 0
    exposure = 0
    for values, times in curves:
        i = int(np.searchsorted(values, h, side="right"))
        if i < len(values):
            alarms += 1
            exposure += int(times[i]) + 1
        else:
            exposure += horizon
    return alarms / exposure


def long_run_variance_ratio(values: np.ndarray, lags: int) -> float:
    """How much more a sum of these values in their order varies than a sum of independent ones.

    ``1 + 2 sum_{j=1..lags} (1 - j / (lags + 1)) rho_j`` (the Bartlett-kernel, Newey-West
    estimate, Newey & West 1987), ``rho_j`` the lag-``j`` sample autocorrelation, divided by
    ``1 - lags / n``: autocorrelations around the sample's own mean come out low by about the
    variance of that mean, which over the kernel's ``lags + 1`` weights is ``lags / n`` of the
    ratio (8% at 16 lags of 200 values). 1 for ``lags = 0``; ``lags`` at most a quarter of the
    values. Never below 1: ratings are not negatively dependent in practice, and a low estimate
    is noise that would lower the threshold of exactly the segments whose references happened to
    look calm.

    Each value four times in a row (a ratio of 4; the kernel's weights make it 3.7 at 16 lags):

    >>> round(long_run_variance_ratio(np.repeat(np.random.default_rng(0).normal(size=500), 4), 16), 1)
    3.5
    """
    z = np.asarray(values, dtype=float)
    z = z - z.mean()
    variance = float(z @ z)
    lags = min(int(lags), len(z) // 4)
    if lags < 1 or variance == 0.0:
        return 1.0
    autocorrelation = np.array([z[:-j] @ z[j:] for j in range(1, lags + 1)]) / variance
    weights = 1.0 - np.arange(1, lags + 1) / (lags + 1)
    ratio = (1.0 + 2.0 * float(weights @ autocorrelation)) / (1.0 - lags / len(z))
    return max(1.0, ratio)


def automatic_lags(values: np.ndarray, max_lags: int) -> int:
    """How many lags :func:`long_run_variance_ratio` should use on ``values``: Andrews' (1991)
    plug-in bandwidth for the Bartlett kernel, ``1.1447 (alpha n)^(1/3)`` with ``alpha`` from an
    AR(1) fit (``4 rho^2 / ((1 - rho)^2 (1 + rho)^2)``), rounded up, between 1 and ``max_lags``.

    A fixed number of lags pays for dependence that may not be there: with independent values the
    estimate still scatters around 1 (by about 0.2 at 16 lags of 500 values), and since the ratio
    is never taken below 1, that scatter only ever raises the threshold. The plug-in keeps the
    bandwidth short when neighbours hardly correlate and lengthens it when they do:

    >>> rng = np.random.default_rng(0)
    >>> automatic_lags(rng.normal(size=500), 16)
    2
    >>> automatic_lags(np.repeat(rng.normal(size=250), 2) + rng.normal(size=500), 16)
    7
    """
    if max_lags < 1:
        return 0
    z = np.asarray(values, dtype=float)
    z = z - z.mean()
    variance = float(z @ z)
    if len(z) < 2 or variance == 0.0:
        return 1
    rho = min(max(float(z[:-1] @ z[1:]) / variance, -0.97), 0.97)
    alpha = 4 * rho**2 / ((1 - rho) ** 2 * (1 + rho) ** 2)
    return int(min(max_lags, max(1, math.ceil(1.1447 * (alpha * len(z)) ** (1 / 3)))))


def _gaussian_h(k: float, arl0: float, *, two_sided: bool, n: float = math.inf, kurtosis: float = 3.0,
                dependence: float = 1.0) -> float:
    """Siegmund's ``h`` for in-control ARL ``arl0``, averaged over the error of an ``n``-value reference.

    The chart's mean and sd are frozen from the reference, so in production the in-control stream
    is off by ``delta ~ N(0, 1/n)`` SDs and scaled by ``c``, ``log c ~ N(0, (kurtosis - 1) / 4n)``.
    The chart on ``(z - delta) / c`` with ``(k, h)`` is the chart on ``z`` with ``(c k -+ delta, c h)``.
    Each side's rate is convex in ``delta``, so an offset costs one side more than it saves the
    other: the *average* rate goes up (x1.8 measured on thumbs residuals at n = 500, k = 0.25).
    Averaged by Gauss-Hermite quadrature; ``n = inf`` is the plain Gaussian threshold.

    ``dependence`` is the long-run variance ratio ``tau^2`` of the values
    (:func:`long_run_variance_ratio`): their partial sums, which are all a CUSUM sees, move like
    those of independent values with SD ``tau``, and the reference's mean is off by
    ``N(0, tau^2 / n)``. So the chart is that of unit-variance values with ``(k / tau, h / tau)``
    and an offset of ``N(0, 1/n)``: the ``h`` returned is ``tau`` times that chart's.
    """
    tau = math.sqrt(dependence)
    if tau != 1.0:
        return tau * _gaussian_h(k / tau, arl0, two_sided=two_sided, n=n, kurtosis=kurtosis)
    nodes, weights = np.polynomial.hermite_e.hermegauss(24)
    weights = weights / weights.sum()
    scale_nodes, scale_weights = np.polynomial.hermite_e.hermegauss(8)
    scale_weights = scale_weights / scale_weights.sum()
    delta = nodes[:, None] / math.sqrt(n)
    scale = np.exp(scale_nodes[None, :] * math.sqrt(max(kurtosis - 1.0, 0.0) / (4 * n)))

    def excess(h: float) -> float:
        up = 1 / _one_sided_arl(scale * k - delta, scale * h)
        down = 1 / _one_sided_arl(scale * k + delta, scale * h)
        # Two-sided: both sides' alarms count; one-sided: each side alone (they are symmetric).
        rate = up + down if two_sided else up
        return math.log(float(weights @ rate @ scale_weights)) + math.log(arl0)

    if excess(1e-9) <= 0:
        raise ValueError(f"arl0={arl0!r} is reached by any h > 0 at k={k!r}; ask for a longer run length")
    high = 1.0
    while excess(high) > 0:
        high *= 2
    return float(brentq(excess, 1e-9, high, xtol=1e-6))


def calibrate_threshold(
    reference: np.ndarray,
    *,
    k: float = 0.25,
    arl0: float = 10_000,
    seed: int = 0,
    chains: int = 256,
    horizon: int | None = None,
    two_sided: bool = True,
    reference_error: bool = True,
    margin: float = ARL_MARGIN,
    dependence_lags: int = 0,
) -> float:
    """The smallest ``h`` whose in-control false-alarm rate is at most one per ``arl0`` values.

    ``reference`` holds standardised residuals of the reference window (re-standardised here with
    its own mean and sd). The rate is estimated on ``chains`` bootstrap streams of ``horizon``
    values (default ``2 * margin * arl0``), deterministic per ``seed``, for a run length of
    ``margin * arl0``. ``two_sided``: alarms of both sides count (as
    :class:`~monitor.analyze.cusum.Cusum` raises them); False: each side alone meets the budget
    (the worse side decides). ``reference_error``: also budget for the chart's mean/sd being
    frozen from these same ``len(reference)`` values (see ``_gaussian_h``); ``margin``: the safety
    factor on ``arl0`` explained below. About 0.2 s for the defaults.

    ``dependence_lags``: 0 takes the residuals for independent; more reads ``reference`` in serving
    order and allows for dependence between values up to that many apart (a user rating several
    turns in a row), over as many lags as :func:`automatic_lags` picks from the data: the CUSUM's
    sums of such values wander further, as if the values' SD were
    ``tau = sqrt(long_run_variance_ratio(reference, lags))``, so the bootstrap draws
    ``tau * z`` (its partial sums then vary as the stream's do) and the reference error is that
    of a mean of dependent values (see ``_gaussian_h``).
    """
    _check_k_arl0(k, arl0)
    values = np.asarray(reference, dtype=float)
    if values.ndim != 1 or len(values) < _MIN_REFERENCE:
        raise ValueError(f"reference must be a 1-d array of at least {_MIN_REFERENCE} values, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("reference must hold finite numbers only")
    sd = float(np.std(values, ddof=1))
    if not sd > 0:
        raise ValueError("reference is constant: a threshold needs some spread")
    if chains < 1:
        raise ValueError(f"chains must be >= 1, got {chains!r}")
    if not (math.isfinite(margin) and margin >= 1):
        raise ValueError(f"margin must be a number >= 1 (a factor on arl0), got {margin!r}")
    if isinstance(dependence_lags, bool) or not isinstance(dependence_lags, (int, np.integer)) or dependence_lags < 0:
        raise ValueError(f"dependence_lags must be an int >= 0 (0: independent residuals), got {dependence_lags!r}")
    # Safety margin. The bootstrap never draws a value beyond the reference's extremes, nor the rare
    # runs of same-sign residuals a longer sample would show, so it underestimates the in-control
    # rate (by about 5% on thumbs residuals, n = 200 to 2,000: docs/detectors.md). Calibrating to a
    # 25% longer run length (h + ~0.45 at k = 0.25, about two labels of delay) covers that and the
    # Monte Carlo error of 256 chains (~7% in the rate, ~0.15 in h).
    run_length = margin * arl0
    horizon = int(math.ceil(2 * run_length)) if horizon is None else horizon
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon!r}")
    z = (values - values.mean()) / sd
    dependence = long_run_variance_ratio(z, automatic_lags(z, dependence_lags))
    rng = np.random.default_rng(seed)
    thresholds = []
    for side in ("both",) if two_sided else ("up", "down"):
        curves = _record_curves(z * math.sqrt(dependence), k, chains, horizon, rng, side)
        # Above the highest record no chain alarms (rate 0): the bracket always closes.
        low, high = 0.0, max(float(record[-1]) for record, _ in curves)
        if high == 0.0:
            raise ValueError(f"k={k!r} exceeds every reference residual: the chart never moves; use a smaller k")
        while high - low > 1e-4:
            middle = (low + high) / 2
            if _alarm_rate(middle, curves, horizon) > 1 / run_length:
                low = middle
            else:
                high = middle
        thresholds.append(high)
    h = max(thresholds)
    if reference_error:
        # The bootstrap draws from the reference and standardises with its exact mean and sd; the
        # chart in production does not have them. What that costs in h comes from Gaussian theory.
        # The sd's error grows with the variance of z^2 (kurtosis - 1) and, when neighbours share a
        # rater, with the dependence of z^2 (a few strict or lenient users over- or under-represented).
        squares = z**2
        kurtosis = 1.0 + (float(np.mean(squares**2)) - 1.0) * long_run_variance_ratio(
            squares, automatic_lags(squares, dependence_lags))
        h += _gaussian_h(k, run_length, two_sided=two_sided, n=len(z), kurtosis=kurtosis, dependence=dependence)
        h -= _gaussian_h(k, run_length, two_sided=two_sided, dependence=dependence)
    return float(h)


def false_alarm_rate(values: np.ndarray, *, k: float, h: float) -> float:
    """Alarms per 10,000 values of a :class:`~monitor.analyze.cusum.Cusum` (restarting) on ``values``.

    ``values`` are standardised residuals (mean 0, sd 1 against the reference).
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"values must be a non-empty 1-d array, got shape {values.shape}")
    return 10_000 * len(cusum_alarms(values, k=k, h=h)) / len(values)
