"""CUSUM thresholds: the smallest ``h`` that keeps false alarms under budget on a segment's residuals.

Residuals are not Gaussian (thumbs ratings make them a mixture of two-point distributions), so the
textbook Gaussian tables do not apply; the threshold is calibrated on the segment's own reference
residuals by an i.i.d. bootstrap instead, and checked against Siegmund's Gaussian approximation.

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


def _gaussian_h(k: float, arl0: float, *, two_sided: bool, n: float = math.inf, kurtosis: float = 3.0) -> float:
    """Siegmund's ``h`` for in-control ARL ``arl0``, averaged over the error of an ``n``-value reference.

    The chart's mean and sd are frozen from the reference, so in production the in-control stream
    is off by ``delta ~ N(0, 1/n)`` SDs and scaled by ``c``, ``log c ~ N(0, (kurtosis - 1) / 4n)``.
    The chart on ``(z - delta) / c`` with ``(k, h)`` is the chart on ``z`` with ``(c k -+ delta, c h)``.
    Each side's rate is convex in ``delta``, so an offset costs one side more than it saves the
    other: the *average* rate goes up (x1.8 measured on thumbs residuals at n = 500, k = 0.25).
    Averaged by Gauss-Hermite quadrature; ``n = inf`` is the plain Gaussian threshold.
    """
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
) -> float:
    """The smallest ``h`` whose in-control false-alarm rate is at most one per ``arl0`` values.

    ``reference`` holds standardised residuals of the reference window (re-standardised here with
    its own mean and sd). The rate is estimated on ``chains`` i.i.d. bootstrap streams of
    ``horizon`` values (default ``2 * margin * arl0``), deterministic per ``seed``, for a run length
    of ``margin * arl0``. ``two_sided``: alarms of both sides count (as
    :class:`~monitor.analyze.cusum.Cusum` raises them); False: each side alone meets the budget
    (the worse side decides). ``reference_error``: also budget for the chart's mean/sd being
    frozen from these same ``len(reference)`` values (see ``_gaussian_h``); ``margin``: the safety
    factor on ``arl0`` explained below. About 0.2 s for the defaults.
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
    rng = np.random.default_rng(seed)
    thresholds = []
    for side in ("both",) if two_sided else ("up", "down"):
        curves = _record_curves(z, k, chains, horizon, rng, side)
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
        kurtosis = float(np.mean(z**4))
        h += _gaussian_h(k, run_length, two_sided=two_sided, n=len(z), kurtosis=kurtosis)
        h -= _gaussian_h(k, run_length, two_sided=two_sided)
    return float(h)


def false_alarm_rate(values: np.ndarray, *, k: float, h: float) -> float:
    """Alarms per 10,000 values of a :class:`~monitor.analyze.cusum.Cusum` (restarting) on ``values``.

    ``values`` are standardised residuals (mean 0, sd 1 against the reference).
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"values must be a non-empty 1-d array, got shape {values.shape}")
    return 10_000 * len(cusum_alarms(values, k=k, h=h)) / len(values)
