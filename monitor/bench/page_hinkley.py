"""river's PageHinkley, run fast over whole streams and tuned to a false-alarm rate, for the benchmark.

Comparing detectors at their defaults compares their defaults: river's ``PageHinkley()`` alarms
about ten times as often as our CUSUM's budget on the same residuals, which says nothing about
how fast it would be at the *same* rate. :func:`tune_threshold` bisects its ``threshold`` until
it alarms as often as the CUSUM on the same stationary streams; the benchmark then measures both
detectors' delays on the same shifted streams.

:func:`page_hinkley_alarms` repeats ``river.drift.PageHinkley.update`` (river 0.21-0.26: fading
sums around a running mean, both sides, everything reset after an alarm, no alarm before
``min_instances`` values) expression for expression, over Python floats: ~0.3 µs per value
instead of ~2 µs through the class, which is what makes a bisection over millions of values
affordable. Tests check it against river on the same data, alarm for alarm.

>>> import random
>>> rng = random.Random(12345)
>>> page_hinkley_alarms(rng.choices([0, 1], k=1000) + rng.choices(range(4, 8), k=1000))
[(1006, 'up')]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: river.drift.PageHinkley's defaults (0.21 to 0.26).
RIVER_DEFAULTS = {"delta": 0.005, "threshold": 50.0, "alpha": 1 - 0.0001, "min_instances": 30}


def page_hinkley_alarms(values: Sequence[float] | np.ndarray, *, threshold: float = 50.0, delta: float = 0.005,
                        alpha: float = 1 - 0.0001, min_instances: int = 30) -> list[tuple[int, str]]:
    """Every alarm of a two-sided ``river.drift.PageHinkley`` fed ``values``, as ``(index, direction)``.

    "up": the mean rose (river's ``test_increase``), "down": it fell; river tests "up" first.
    """
    if not (math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be a finite number > 0, got {threshold!r}")
    alarms: list[tuple[int, str]] = []
    n = 0
    mean = total_up = total_down = 0.0
    lowest_up = math.inf
    highest_down = -1.0  # river starts it at -1, not -inf
    for i, x in enumerate(np.asarray(values, dtype=float).tolist()):
        n += 1
        mean += (1.0 / n) * (x - mean)
        deviation = x - mean
        total_up = alpha * total_up + deviation - delta
        total_down = alpha * total_down + deviation + delta
        if total_up < lowest_up:
            lowest_up = total_up
        if total_down > highest_down:
            highest_down = total_down
        if n >= min_instances:
            direction = None
            if total_up - lowest_up > threshold:
                direction = "up"
            elif highest_down - total_down > threshold:
                direction = "down"
            if direction is not None:
                alarms.append((i, direction))
                n = 0
                mean = total_up = total_down = 0.0
                lowest_up = math.inf
                highest_down = -1.0
    return alarms


def alarm_counts(streams: Sequence[np.ndarray], thresholds: np.ndarray, *, delta: float = 0.005,
                 alpha: float = 1 - 0.0001, min_instances: int = 30) -> np.ndarray:
    """Alarms of :func:`page_hinkley_alarms` on all ``streams`` together, for each of ``thresholds``.

    The same expressions over arrays of (stream, threshold) states, one step per position, so a
    whole grid of thresholds costs about one pass in Python.
    """
    streams = sorted((np.asarray(z, dtype=float) for z in streams), key=len, reverse=True)
    thresholds = np.asarray(thresholds, dtype=float)[None, :]
    shape = (len(streams), thresholds.shape[1])
    if not streams:
        return np.zeros(shape[1], dtype=int)
    lengths = np.array([len(z) for z in streams])
    padded = np.zeros((len(streams), int(lengths[0])))
    for row, z in enumerate(streams):
        padded[row, : len(z)] = z
    n = np.zeros(shape)
    mean, total_up, total_down = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    lowest_up, highest_down = np.full(shape, math.inf), np.full(shape, -1.0)
    alarms = np.zeros(shape, dtype=int)
    for t in range(int(lengths[0])):
        active = int(np.count_nonzero(lengths > t))  # streams are sorted longest first
        rows = slice(0, active)
        x = padded[rows, t][:, None]
        n[rows] += 1.0
        mean[rows] += (1.0 / n[rows]) * (x - mean[rows])
        deviation = x - mean[rows]
        total_up[rows] = alpha * total_up[rows] + deviation - delta
        total_down[rows] = alpha * total_down[rows] + deviation + delta
        np.minimum(lowest_up[rows], total_up[rows], out=lowest_up[rows])
        np.maximum(highest_down[rows], total_down[rows], out=highest_down[rows])
        fired = (n[rows] >= min_instances) & (((total_up[rows] - lowest_up[rows]) > thresholds)
                                              | ((highest_down[rows] - total_down[rows]) > thresholds))
        if fired.any():
            alarms[rows] += fired
            for state, value in ((n, 0.0), (mean, 0.0), (total_up, 0.0), (total_down, 0.0),
                                 (lowest_up, math.inf), (highest_down, -1.0)):
                state[rows][fired] = value
    return alarms.sum(axis=0)


def tune_threshold(streams: Sequence[np.ndarray], target_alarms: float, *, delta: float,
                   alpha: float = 1 - 0.0001, min_instances: int = 30, grid: int = 24) -> float:
    """The smallest ``threshold`` at which PageHinkley raises at most ``target_alarms`` alarms on the
    stationary ``streams`` (restarting after each), to about 1%: one pass over a log grid from
    0.5 to 5,000, then one over a finer grid between the two thresholds that bracket the target.

    The count falls with the threshold, though not strictly (a restart moves the later alarms):
    the answer is the first grid point from which every larger one is within the target.
    """
    if not target_alarms > 0:
        raise ValueError(f"target_alarms must be > 0 (zero alarms needs an infinite threshold), got {target_alarms!r}")
    low, high = 0.5, 5_000.0
    for _ in range(2):
        candidates = np.geomspace(low, high, grid)
        counts = alarm_counts(streams, candidates, delta=delta, alpha=alpha, min_instances=min_instances)
        over = np.flatnonzero(counts > target_alarms)
        if len(over) == len(candidates):
            raise ValueError(f"PageHinkley alarms more than {target_alarms} times even at threshold {high}")
        first = int(over[-1]) + 1 if len(over) else 0
        if first == 0:
            return float(candidates[0])
        low, high = float(candidates[first - 1]), float(candidates[first])
    return high
