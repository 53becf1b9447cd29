"""`monitor bench uncertainty`: do the 95% intervals of the gap, the estimated satisfaction (CBPE)
and the AUC cover what they claim, on stationary traffic of every rating kind?

Each repetition draws a world (:mod:`monitor.bench.rating_kinds`: reward shape, true curve,
dependence, the way users rate), a reference of ``reference`` rated turns and, after it, a window
of :data:`WINDOW_TURNS` turns of which a share ``rate`` is rated. The production pieces run on it
(``fit_reward_map``, ``map_covariance``, the interval functions) and each interval is checked
against the truth (each turn's user, a run of consecutive ratings, plays the conversation id
that groups ratings in production):

* **gap**: 0 (the world is stationary; a map fitted by maximum quasi-likelihood has a mean residual
  of exactly 0 over the population it is fitted on, misfitting curve or not);
* **estimated**: the realised mean satisfaction of all the window's turns, rated or not;
* **auc**: the world's population AUC (from :data:`TRUTH_DRAWS` fresh turns).

Beside ours, two references per figure:

* **naive**: the interval as it was before issue 14 (the gap's window noise alone, the reference
  map taken as known; the AUC by Hanley-McNeil without dependence): what the coverage problem was;
* **oracle**: an interval that knows the true calibration (the world's own map, fitted on
  :data:`TRUTH_DRAWS` turns) and the residuals' true spread. For the gap it is the window's
  sampling error alone; the map fitted on ``reference`` labels cannot be that precise, so ours is
  wider by the map's error, in proportion to the window over the reference. Its width is the
  yardstick of the target (ours at most 1.5 times it); we also print the width an interval of
  this very estimator would need (twice 1.96 times its root mean squared error in the setting).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from monitor.analyze.calibration import fit_reward_map, reward_map
from monitor.analyze.rank_agreement import auc
from monitor.analyze.uncertainty import (
    Z95,
    Interval,
    auc_interval,
    estimated_interval,
    gap_interval,
    map_covariance,
    reference_dof,
)
from monitor.bench.rating_kinds import RATING_KINDS, draw_world

REFERENCE_SIZES = (200, 500, 1000)
RATES = (0.05, 0.30)
WINDOW_TURNS = 2000
TRUTH_DRAWS = 40_000
FIGURES = ("gap", "estimated", "auc")


@dataclass
class Cell:
    """One setting's tallies for one figure."""

    covered: int = 0
    naive_covered: int = 0
    oracle_covered: int = 0
    widths: list[float] = field(default_factory=list)
    naive_widths: list[float] = field(default_factory=list)
    oracle_widths: list[float] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)  # estimate - truth

    @property
    def n(self) -> int:
        return len(self.widths)

    def coverage(self) -> float:
        return self.covered / self.n if self.n else math.nan

    def width_ratio(self) -> float:
        return statistics.fmean(self.widths) / statistics.fmean(self.oracle_widths) if self.n else math.nan

    def needed_width(self) -> float:
        return 2 * Z95 * math.sqrt(statistics.fmean(e * e for e in self.errors)) if self.n else math.nan


@dataclass
class UncertaintyBenchmark:
    reps: int
    cells: dict[tuple[str, int, float, str], Cell]

    def worst_coverage(self, figure: str) -> float:
        return min(c.coverage() for (_, _, _, f), c in self.cells.items() if f == figure and c.n)

    def worst_width_ratio(self, figure: str) -> float:
        return max(c.width_ratio() for (_, _, _, f), c in self.cells.items() if f == figure and c.n)

    def report_lines(self) -> list[str]:
        lines = [f"{self.reps} stationary worlds per setting; window {WINDOW_TURNS} turns; truth: gap 0, "
                 "realised mean satisfaction of the window, population AUC",
                 "kind    ref  rate  figure     coverage (naive, oracle)   mean width / oracle's  "
                 "(width needed / oracle's)"]
        for (kind, reference, rate, figure), cell in self.cells.items():
            if not cell.n:
                lines.append(f"{kind:7s} {reference:4d} {rate:4.0%}  {figure:9s}  n/a (too few rated turns)")
                continue
            oracle = statistics.fmean(cell.oracle_widths)
            lines.append(
                f"{kind:7s} {reference:4d} {rate:4.0%}  {figure:9s}  {cell.coverage():6.1%} "
                f"({cell.naive_covered / cell.n:6.1%}, {cell.oracle_covered / cell.n:6.1%})   "
                f"{cell.width_ratio():5.2f}x                  ({cell.needed_width() / oracle:4.2f}x)  n={cell.n}")
        for figure in FIGURES:
            lines.append(f"{figure}: worst coverage {self.worst_coverage(figure):.1%} (target >= 94%), "
                         f"widest mean width {self.worst_width_ratio(figure):.2f}x the oracle's (target <= 1.5x)")
        return lines


def _naive_gap(residual: np.ndarray) -> Interval:
    gap = float(residual.mean())
    half = Z95 * float(np.std(residual, ddof=1)) / math.sqrt(len(residual))
    return Interval(gap, gap - half, gap + half)


def _hanley_mcneil(value: float, positives: int, negatives: int) -> Interval:
    q1, q2 = value / (2 - value), 2 * value * value / (1 + value)
    variance = (value * (1 - value) + (positives - 1) * (q1 - value * value)
                + (negatives - 1) * (q2 - value * value)) / (positives * negatives)
    half = Z95 * math.sqrt(max(variance, 0.0))
    return Interval(value, value - half, value + half)


def _tally(cell: Cell, ours: Interval | None, naive: Interval, oracle: Interval, truth: float) -> None:
    if ours is None:
        return
    cell.covered += ours.covers(truth)
    cell.naive_covered += naive.covers(truth)
    cell.oracle_covered += oracle.covers(truth)
    cell.widths.append(ours.high - ours.low)
    cell.naive_widths.append(naive.high - naive.low)
    cell.oracle_widths.append(oracle.high - oracle.low)
    cell.errors.append(ours.estimate - truth)


def one_world(kind: str, reference: int, rate: float, rng: np.random.Generator,
              cells: dict[str, Cell]) -> None:
    world = draw_world(kind, rng)
    ref_reward, ref_satisfaction, ref_users = world.stream_users(reference, rng)
    fit = fit_reward_map(ref_reward, ref_satisfaction)
    covariance = map_covariance(ref_reward, ref_satisfaction, *fit, groups=ref_users)
    dof = reference_dof(ref_satisfaction, reward_map(ref_reward, *fit), groups=ref_users)
    rated = max(1, round(rate * WINDOW_TURNS))
    reward, satisfaction, users = world.stream_users(rated, rng)
    unrated_reward, unrated_satisfaction = world.stream(WINDOW_TURNS - rated, rng)
    truth_reward, truth_satisfaction = world.stream(TRUTH_DRAWS, rng)
    true_fit = fit_reward_map(truth_reward, truth_satisfaction)
    # Oracle residuals: against the world's own (pseudo-true) map, spread known from the truth draws.
    true_residual = truth_satisfaction - reward_map(truth_reward, *true_fit)
    oracle_sd = float(np.std(true_residual))

    gap = gap_interval(reward, satisfaction, *fit, covariance, dof, groups=users)
    if gap is not None:
        residual = satisfaction - reward_map(reward, *fit)
        oracle_gap = float((satisfaction - reward_map(reward, *true_fit)).mean())
        oracle_half = Z95 * oracle_sd * math.sqrt(_dependence(true_residual) / rated)
        _tally(cells["gap"], gap, _naive_gap(residual), Interval(oracle_gap, oracle_gap - oracle_half,
                                                                  oracle_gap + oracle_half), 0.0)

    every_reward = np.concatenate([reward, unrated_reward])
    realised = float(np.concatenate([satisfaction, unrated_satisfaction]).mean())
    estimated = estimated_interval(every_reward, reward, satisfaction, *fit, covariance, dof, groups=users)
    if estimated is not None:
        naive_half = Z95 * float(np.std(satisfaction - reward_map(reward, *fit), ddof=1)) / math.sqrt(WINDOW_TURNS)
        oracle_estimate = float(reward_map(every_reward, *true_fit).mean())
        oracle_half = Z95 * oracle_sd * math.sqrt(_dependence(true_residual) / WINDOW_TURNS)
        _tally(cells["estimated"], estimated,
               Interval(estimated.estimate, estimated.estimate - naive_half, estimated.estimate + naive_half),
               Interval(oracle_estimate, oracle_estimate - oracle_half, oracle_estimate + oracle_half), realised)

    window_auc = auc_interval(reward, satisfaction, groups=users)
    if window_auc is not None:
        satisfied = satisfaction >= 0.5
        naive = _hanley_mcneil(window_auc.estimate, int(satisfied.sum()), int((~satisfied).sum()))
        _tally(cells["auc"], window_auc, naive, naive, auc(truth_reward, truth_satisfaction >= 0.5))


def _dependence(residual: np.ndarray) -> float:
    from monitor.analyze.thresholds import automatic_lags, long_run_variance_ratio

    return long_run_variance_ratio(residual, automatic_lags(residual, 16))


def run_uncertainty_benchmark(*, reps: int = 2000, seed: int = 0, kinds: tuple[str, ...] = RATING_KINDS,
                              references: tuple[int, ...] = REFERENCE_SIZES, rates: tuple[float, ...] = RATES,
                              echo: Callable[[str], None] = lambda line: None) -> UncertaintyBenchmark:
    unknown = [kind for kind in kinds if kind not in RATING_KINDS]
    if unknown:
        raise ValueError(f"kinds must be among {', '.join(RATING_KINDS)}, got {unknown!r}")
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps!r}")
    cells: dict[tuple[str, int, float, str], Cell] = {}
    for kind in kinds:
        for reference in references:
            for rate in rates:
                here = {figure: cells.setdefault((kind, reference, rate, figure), Cell()) for figure in FIGURES}
                for rep in range(reps):
                    one_world(kind, reference, rate,
                              np.random.default_rng([seed, RATING_KINDS.index(kind), reference, round(rate * 1000),
                                                     rep]), here)
                echo(f"{kind} reference {reference} rated {rate:.0%}: gap coverage {here['gap'].coverage():.1%}, "
                     f"estimated {here['estimated'].coverage():.1%}, auc {here['auc'].coverage():.1%}")
    return UncertaintyBenchmark(reps, cells)
