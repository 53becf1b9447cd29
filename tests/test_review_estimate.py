"""The review report's estimator (weighted means, intervals, verdicts) and `monitor bench review`."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from monitor.bench.review import report, run_review_benchmark
from monitor.cli import app
from monitor.review.estimate import Unit, hajek, summarise


def test_hajek_weights_and_covers_a_known_population_mean() -> None:
    # Two strata sampled at different rates: unweighted is biased, Hajek is not.
    rng = np.random.default_rng(0)
    population = np.concatenate([rng.normal(0.2, 0.1, 9000), rng.normal(0.8, 0.1, 1000)])
    truth, covered = population.mean(), 0
    for _ in range(400):
        low = rng.choice(9000, 30, replace=False)
        high = 9000 + rng.choice(1000, 30, replace=False)
        values = population[np.concatenate([low, high])]
        weights = np.array([9000 / 30] * 30 + [1000 / 30] * 30)
        interval = hajek(values, weights)
        covered += interval.low <= truth <= interval.high
        assert abs(values.mean() - truth) > 0.2  # the unweighted mean is far off
    assert covered / 400 > 0.92
    assert hajek([0.5], [1.0]) is None


def units(gap: float, user_gap: float, n: int = 60, seed: int = 1) -> list[Unit]:
    rng = np.random.default_rng(seed)
    human = rng.uniform(0.3, 0.9, n)
    return [Unit(i, 1.0, float(h), float(h - gap + rng.normal(0, 0.02)), float(h - user_gap + rng.normal(0, 0.02)),
                 0.7) for i, h in enumerate(human)]


@pytest.mark.parametrize(("gap", "user_gap", "expected"), [
    (-0.2, 0.0, "rm_misaligned"),  # humans 0.2 below the RM, users with the humans
    (0.0, 0.25, "user_rating_bias"),  # humans with the RM, users 0.25 below
    (0.0, 0.0, "aligned"),
])
def test_verdicts(gap: float, user_gap: float, expected: str) -> None:
    assert summarise(units(gap, user_gap))["verdict"] == expected


def test_policy_regression_and_too_few_items() -> None:
    low = [Unit(i, 1.0, 0.3 + 0.01 * (i % 5), 0.31 + 0.01 * (i % 3), 0.3, 0.75) for i in range(40)]
    assert summarise(low)["verdict"] == "policy_regression"
    assert summarise(units(-0.3, 0.0, n=10))["verdict"] == "insufficient_data"


def test_bench_review_runs_and_refuses_unknown_scenarios() -> None:
    results = run_review_benchmark(reps=1, scenarios=("S1",), echo=lambda _: None)
    assert results[0].intervals == 5 and 0 <= results[0].covered <= 5
    assert "coverage" in report(results, 1)
    bad = CliRunner().invoke(app, ["bench", "review", "--scenarios", "S4", "--reps", "1"])
    assert bad.exit_code != 0 and "unknown scenario" in bad.output
