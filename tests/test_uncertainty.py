"""The 95% intervals of monitor.analyze.uncertainty: the reference fit's error is carried, dependence
widens them, they cover on stationary worlds of every rating kind where the old ones did not."""

from __future__ import annotations

import math

import numpy as np
import pytest
from typer.testing import CliRunner

from monitor.analyze.calibration import Calibration, fit_calibration, fit_reward_map
from monitor.analyze.uncertainty import (
    auc_interval,
    estimated_interval,
    gap_interval,
    map_covariance,
    reference_dof,
)
from monitor.bench.uncertainty import run_uncertainty_benchmark
from monitor.cli import app


def _logistic_reference(n: int, rng: np.random.Generator, repeat: int = 1) -> tuple[np.ndarray, np.ndarray]:
    score = np.repeat(rng.normal(size=n // repeat), repeat)
    satisfied = np.repeat(rng.random(n // repeat), repeat) < 1 / (1 + np.exp(-(0.3 + 1.2 * score)))
    return score, satisfied.astype(float)


def test_sandwich_matches_the_information_for_a_well_specified_independent_fit() -> None:
    score, satisfaction = _logistic_reference(4000, np.random.default_rng(0))
    fit = fit_reward_map(score, satisfaction)
    x = (score - fit[2]) / fit[3]
    p = 1 / (1 + np.exp(-(fit[0] + fit[1] * x)))
    design = np.column_stack([np.ones_like(x), x])
    model = np.linalg.inv((design * (p * (1 - p))[:, None]).T @ design)
    assert np.allclose(map_covariance(score, satisfaction, *fit), model, rtol=0.15)


def test_ratings_that_come_in_runs_widen_the_map_covariance_and_cut_the_degrees_of_freedom() -> None:
    rng = np.random.default_rng(1)
    single = _logistic_reference(2000, rng)
    runs = _logistic_reference(2000, rng, repeat=4)  # each user rates four turns alike
    fits = [fit_reward_map(*single), fit_reward_map(*runs)]
    variances = [np.diag(map_covariance(*data, *fit)) for data, fit in zip((single, runs), fits, strict=True)]
    assert (variances[1] > 2.0 * variances[0]).all()
    dofs = [reference_dof(data[1], 1 / (1 + np.exp(-(f[0] + f[1] * (data[0] - f[2]) / f[3]))))
            for data, f in zip((single, runs), fits, strict=True)]
    assert dofs[0] > 1500 and dofs[1] < 800


def test_the_gap_interval_carries_the_reference_error() -> None:
    rng = np.random.default_rng(2)
    reference = _logistic_reference(200, rng)
    window = _logistic_reference(5000, rng)
    fit = fit_reward_map(*reference)
    covariance = map_covariance(*reference, *fit)
    known = gap_interval(*window, *fit, None)
    carried = gap_interval(*window, *fit, covariance, 198.0)
    assert known is not None and carried is not None
    assert carried.estimate == known.estimate
    # A window 25 times the reference: the map's error dominates.
    assert carried.high - carried.low > 2.5 * (known.high - known.low)
    assert gap_interval(window[0][:5], window[1][:5], *fit, covariance) is None


def test_estimated_satisfaction_and_auc_intervals() -> None:
    rng = np.random.default_rng(3)
    reference, window = _logistic_reference(500, rng), _logistic_reference(3000, rng)
    fit = fit_reward_map(*reference)
    estimated = estimated_interval(window[0], window[0][:300], window[1][:300], *fit,
                                   map_covariance(*reference, *fit))
    assert estimated is not None and estimated.low < estimated.estimate < estimated.high
    assert estimated.covers(float(window[1].mean()))
    assert estimated_interval(window[0], window[0][:3], window[1][:3], *fit, None) is None
    auc = auc_interval(*window)
    assert auc is not None and 0.5 < auc.low < auc.estimate < auc.high < 1
    # Perfect separation: the rule of three, not a zero-width interval.
    separated = auc_interval(np.arange(40.0), (np.arange(40) >= 20).astype(float))
    assert separated is not None and separated.estimate == 1.0 and separated.low == pytest.approx(1 - 3 / 20)
    assert auc_interval(np.arange(10.0), (np.arange(10) >= 8).astype(float)) is None


def test_calibrations_keep_their_covariance_and_old_ones_still_load() -> None:
    rng = np.random.default_rng(4)
    score, satisfaction = _logistic_reference(300, rng)
    calibration = fit_calibration(score, satisfaction, np.zeros((300, 1)), np.arange(300.0))
    assert calibration.covariance_matrix is not None and math.isfinite(calibration.covariance_dof)
    assert Calibration.from_params(calibration.to_params()) == calibration
    old = {k: v for k, v in calibration.to_params().items() if k not in ("covariance", "covariance_dof")}
    loaded = Calibration.from_params(old)
    assert loaded.covariance_matrix is None and loaded.covariance_dof == math.inf


def test_intervals_cover_on_stationary_worlds_where_the_old_ones_did_not() -> None:
    # Thumbs, a 200-label reference, 30% of a 2,000-turn window rated: the old gap interval (the
    # map taken as known) covered 0 in about two windows of three.
    result = run_uncertainty_benchmark(reps=120, kinds=("thumbs",), references=(200,), rates=(0.3,))
    gap = result.cells[("thumbs", 200, 0.3, "gap")]
    assert gap.n == 120
    assert gap.coverage() >= 0.85 and gap.naive_covered / gap.n <= 0.75
    estimated = result.cells[("thumbs", 200, 0.3, "estimated")]
    assert estimated.coverage() >= 0.85 and estimated.naive_covered / estimated.n <= 0.6
    assert result.cells[("thumbs", 200, 0.3, "auc")].coverage() >= 0.88
    assert any("worst coverage" in line for line in result.report_lines())


def test_bench_uncertainty_cli() -> None:
    result = CliRunner().invoke(app, ["bench", "uncertainty", "--reps", "5", "--kinds", "stars",
                                      "--references", "200", "--rates", "0.3"])
    assert result.exit_code == 0, result.output
    assert "stars    200  30%  gap" in result.stdout and "gap: worst coverage" in result.stdout
    bad = CliRunner().invoke(app, ["bench", "uncertainty", "--kinds", "likes", "--reps", "1"])
    assert bad.exit_code == 2 and "kinds must be among" in bad.output
    bad = CliRunner().invoke(app, ["bench", "uncertainty", "--rates", "0", "--reps", "1"])
    assert bad.exit_code == 2


def test_conversations_group_the_window_and_the_reference() -> None:
    rng = np.random.default_rng(5)
    score, satisfaction = _logistic_reference(2000, rng, repeat=4)
    conversations = np.repeat(np.arange(500), 4)
    fit = fit_reward_map(score, satisfaction)
    grouped = map_covariance(score, satisfaction, *fit, groups=conversations)
    alone = map_covariance(score, satisfaction, *fit, groups=np.arange(2000))
    assert (np.diag(grouped) > 2.5 * np.diag(alone)).all()
    assert reference_dof(satisfaction, satisfaction, groups=conversations) == 498
    by_conversation = gap_interval(score, satisfaction, *fit, None, groups=conversations)
    by_turn = gap_interval(score, satisfaction, *fit, None, groups=np.arange(2000))
    assert by_conversation is not None and by_turn is not None
    assert by_conversation.high - by_conversation.low > 1.6 * (by_turn.high - by_turn.low)
