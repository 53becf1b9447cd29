"""The sequential and windowed detectors: CUSUM, its threshold, rank agreement, Benjamini-Hochberg.

The false-alarm and delay tests run on a thumbs-like residual stream, the hard case for a CUSUM
tuned on Gaussian tables: p ~ U(0.2, 0.9), y ~ Bernoulli(p), r = (y - p) / sd.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy import stats

from monitor.analyze.calibration import THRESHOLD_MARGIN
from monitor.analyze.cusum import Cusum, cusum_alarms
from monitor.analyze.multiple_testing import benjamini_hochberg
from monitor.analyze.rank_agreement import AgreementDrop, auc, auc_drop, spearman, spearman_drop
from monitor.analyze.thresholds import (
    automatic_lags,
    calibrate_threshold,
    false_alarm_rate,
    gaussian_threshold,
    long_run_variance_ratio,
)

# E[p(1 - p)] for p ~ U(0.2, 0.9): the SD of a thumbs residual y - p.
THUMBS_SD = math.sqrt(0.55 - (0.9**3 - 0.2**3) / (3 * 0.7))
K = 0.25  # tuned to a 0.5 SD shift
ARL0 = 10_000


def thumbs_residuals(rng: np.random.Generator, n: int) -> np.ndarray:
    p = rng.uniform(0.2, 0.9, n)
    y = (rng.random(n) < p).astype(float)
    return (y - p) / THUMBS_SD


def feed(detector: Cusum, values) -> list[tuple[int, str]]:
    alarms = []
    for i, x in enumerate(values):
        detector.update(x)
        if detector.drift_detected:
            alarms.append((i, detector.direction))
    return alarms


# --- Cusum -------------------------------------------------------------------------------------


def test_hand_computed_alarm_and_restart():
    # k = 0.5, h = 2: each 1.0 adds 0.5 to upper -> 0.5, 1.0, 1.5, 2.0 (not above h), 2.5 alarms.
    detector = Cusum(k=0.5, h=2.0)
    seen = []
    for x in [1.0] * 10:
        detector.update(x)
        seen.append((detector.upper, detector.lower, detector.n, detector.drift_detected, detector.direction))
    assert seen[3] == (2.0, 0.0, 4, False, None)
    assert seen[4] == (2.5, 0.0, 5, True, "up")
    # The sums restart from 0 on the next update: a second alarm needs five fresh values too.
    assert seen[5] == (0.5, 0.0, 1, False, None)
    assert seen[9] == (2.5, 0.0, 5, True, "up")


def test_frozen_mean_and_sd_standardise():
    detector = Cusum(k=0.5, h=2.0, mean=10.0, sd=2.0)
    assert feed(detector, [8.0] * 5) == [(4, "down")]  # z = -1 each time, like the test above mirrored


@pytest.mark.parametrize(("shift", "direction", "expected"), [
    (0.5, "up", [(529, "up"), (631, "up"), (687, "up")]),
    (-0.5, "down", [(539, "down"), (575, "down"), (610, "down")]),
])
def test_exact_alarm_indices_on_seeded_stream(shift, direction, expected):
    rng = np.random.default_rng(42)
    stream = np.concatenate([rng.normal(size=500), rng.normal(shift, 1.0, size=200)])
    alarms = feed(Cusum(k=K, h=14.0), stream)
    assert alarms[:3] == expected
    assert all(i >= 500 and d == direction for i, d in alarms)


def test_class_and_fast_path_agree():
    rng = np.random.default_rng(7)
    # Shifts both ways and a heavy-tailed stretch, so there are many alarms of both directions.
    stream = np.concatenate([rng.normal(size=3000), rng.normal(0.7, 1, 2000), rng.standard_t(3, 3000),
                             rng.normal(-0.6, 1.5, 2000)])
    fast = cusum_alarms(stream, k=0.3, h=6.0, mean=0.1, sd=1.2)
    slow = feed(Cusum(k=0.3, h=6.0, mean=0.1, sd=1.2), stream)
    assert fast == slow
    assert {d for _, d in fast} == {"up", "down"} and len(fast) > 50


def test_first_alarm_matches_the_lindley_form():
    # An independent derivation: before its first alarm, upper is S_t - min(0, min_{s<=t} S_s) with S
    # the partial sums of z - k (and lower the same for -z), which the threshold bootstrap relies on.
    rng = np.random.default_rng(12)
    for shift in (0.4, -0.4, 0.0):
        z = rng.normal(shift, 1.0, size=5000)
        walks = {"up": np.cumsum(z - K), "down": np.cumsum(-z - K)}
        sums = {d: w - np.minimum(np.minimum.accumulate(w), 0.0) for d, w in walks.items()}
        crossings = {d: int(np.argmax(s > 6.0)) if np.any(s > 6.0) else len(z) for d, s in sums.items()}
        direction = min(crossings, key=crossings.get)
        assert cusum_alarms(z, k=K, h=6.0)[0] == (crossings[direction], direction)


def test_fast_path_is_under_a_microsecond_per_value():
    stream = np.random.default_rng(0).normal(size=200_000)
    started = time.perf_counter()
    cusum_alarms(stream, k=K, h=14.0)
    assert (time.perf_counter() - started) / len(stream) < 1e-6


def test_reset_forgets_everything():
    detector = Cusum(k=0.0, h=1.0)
    detector.update(0.8)
    detector.reset()
    assert (detector.upper, detector.lower, detector.n, detector.drift_detected) == (0.0, 0.0, 0, False)
    detector.update(0.8)
    assert not detector.drift_detected  # 0.8 alone is below h; without the reset it would be 1.6


@pytest.mark.parametrize(("kwargs", "names"), [
    ({"k": -0.1}, "k must be a finite number >= 0"),
    ({"h": 0.0}, "h must be a finite number > 0"),
    ({"sd": 0.0}, "sd must be a finite number > 0"),
    ({"sd": -1.0}, "sd must be a finite number > 0"),
    ({"mean": math.nan}, "mean must be a finite number"),
])
def test_bad_parameters_raise(kwargs, names):
    with pytest.raises(ValueError, match=names):
        Cusum(**kwargs)
    with pytest.raises(ValueError, match=names):
        cusum_alarms([0.0], **{"k": K, "h": 14.0, **kwargs})


def test_non_finite_values_raise():
    with pytest.raises(ValueError, match="finite"):
        Cusum().update(math.nan)
    with pytest.raises(ValueError, match="finite"):
        cusum_alarms([0.0, math.inf], k=K, h=14.0)


# --- thresholds --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def thumbs_threshold() -> float:
    reference = thumbs_residuals(np.random.default_rng(2024), 1000)
    return calibrate_threshold(reference, k=K, arl0=ARL0, seed=0)


def test_calibration_is_fast_and_deterministic():
    reference = thumbs_residuals(np.random.default_rng(5), 1000)
    started = time.perf_counter()
    h = calibrate_threshold(reference, k=K, arl0=ARL0, seed=3)
    assert time.perf_counter() - started < 1.0
    assert calibrate_threshold(reference, k=K, arl0=ARL0, seed=3) == h
    assert calibrate_threshold(reference, k=K, arl0=ARL0, seed=4) != h


def test_bootstrap_matches_siegmund_on_gaussian_data():
    reference = np.random.default_rng(11).normal(size=5000)
    for k, arl0 in [(0.25, 10_000), (0.5, 2_000)]:
        h = calibrate_threshold(reference, k=k, arl0=arl0, seed=1, reference_error=False, margin=1.0)
        assert abs(h - gaussian_threshold(k, arl0)) < 0.4, (k, arl0, h, gaussian_threshold(k, arl0))


def test_siegmund_threshold_holds_on_gaussian_stream():
    h = gaussian_threshold(K, ARL0)
    assert 14.3 < h < 14.7  # tables: h ~ 14.5 for ARL0 10,000 two-sided at k = 0.25
    rate = false_alarm_rate(np.random.default_rng(3).normal(size=500_000), k=K, h=h)
    assert 0.6 < rate < 1.5  # 1.0 expected; 50 alarms, Poisson SD ~0.14


def test_calibrated_threshold_keeps_false_alarms_under_budget(thumbs_threshold):
    fresh = thumbs_residuals(np.random.default_rng(99), 500_000)
    rate = false_alarm_rate(fresh, k=K, h=thumbs_threshold)
    print(f"thumbs h={thumbs_threshold:.2f}: {rate:.2f} false alarms per 10k")
    assert rate <= 1.5
    # ...and is not bought with a uselessly high threshold: h = 10 would alarm several times as often.
    assert false_alarm_rate(fresh, k=K, h=10.0) > 4 * max(rate, 0.2)


@pytest.mark.parametrize("shift", [0.5, -0.5])
def test_median_delay_for_half_sd_shift(thumbs_threshold, shift):
    rng = np.random.default_rng(17 if shift > 0 else 18)
    change, after, delays = 500, 1000, []
    for _ in range(300):
        stream = np.concatenate([thumbs_residuals(rng, change), thumbs_residuals(rng, after) + shift])
        late = [i for i, _ in cusum_alarms(stream, k=K, h=thumbs_threshold) if i >= change]
        delays.append(late[0] - change + 1 if late else after)
    print(f"shift {shift:+}: median delay {np.median(delays):.0f} labels (h={thumbs_threshold:.2f})")
    assert np.median(delays) <= 75


def test_more_false_alarms_from_page_hinkley_defaults(thumbs_threshold):
    drift = pytest.importorskip("river.drift")
    fresh = thumbs_residuals(np.random.default_rng(123), 300_000)
    detector = drift.PageHinkley()
    alarms = 0
    for x in fresh.tolist():
        detector.update(x)
        alarms += detector.drift_detected
    page_hinkley_rate = 10_000 * alarms / len(fresh)
    ours = false_alarm_rate(fresh, k=K, h=thumbs_threshold)
    print(f"PageHinkley defaults: {page_hinkley_rate:.2f} per 10k; Cusum: {ours:.2f} per 10k")
    assert page_hinkley_rate > 2 * max(ours, 0.5)


def test_one_sided_budget_needs_a_lower_threshold():
    reference = np.random.default_rng(8).normal(size=2000)
    both = calibrate_threshold(reference, seed=0, reference_error=False, margin=1.0)
    each = calibrate_threshold(reference, seed=0, reference_error=False, margin=1.0, two_sided=False)
    assert each < both  # each side may spend the whole budget instead of half of it
    assert abs(both - each - math.log(2) / (2 * K)) < 0.6  # ARL ~ exp(2 k h): half the rate, +1.4 in h


def test_small_reference_pays_for_its_estimated_mean():
    rng = np.random.default_rng(4)
    plain = {n: calibrate_threshold(rng.normal(size=n), reference_error=False) for n in (200, 2000)}
    frozen = {n: calibrate_threshold(rng.normal(size=n)) for n in (200, 2000)}
    assert frozen[200] - plain[200] > frozen[2000] - plain[2000] > 0


def test_reference_error_keeps_budget_when_mean_and_sd_come_from_the_reference():
    # In production the chart is standardised with the reference's own mean and sd, not the truth.
    # A short run length (1,000) keeps this fast: many alarms per value, short bootstrap chains.
    rng = np.random.default_rng(31)
    rates = {True: [], False: []}
    for _ in range(48):  # the rate varies a lot between references: average over many
        reference = rng.normal(size=200)
        z = (rng.normal(size=20_000) - reference.mean()) / reference.std()
        for reference_error in rates:
            h = calibrate_threshold(reference, arl0=1_000, seed=0, reference_error=reference_error)
            rates[reference_error].append(false_alarm_rate(z, k=K, h=h))
    mean_rate = {key: float(np.mean(v)) for key, v in rates.items()}
    print(f"per 10k at arl0 1,000 (budget 10): {mean_rate}")
    assert mean_rate[True] <= 10 < mean_rate[False]


def user_runs(rng: np.random.Generator, n: int, turns: int) -> np.ndarray:
    """Residuals of users who each rate ``turns`` turns in a row, alike: half the variance is the
    user's. Sums of them wander as if the SD were sqrt(1 + (turns - 1) / 2) (the long-run variance
    ratio: 2 for runs of 3, 2.5 for runs of 4)."""
    user = np.repeat(rng.normal(0.0, math.sqrt(0.5), n // turns + 1), turns)[:n]
    return user + rng.normal(0.0, math.sqrt(0.5), n)


def test_long_run_variance_ratio():
    rng = np.random.default_rng(40)
    assert long_run_variance_ratio(rng.normal(size=500), 0) == 1.0
    assert 1.0 <= long_run_variance_ratio(rng.normal(size=20_000), 16) < 1.05  # never below 1
    # Runs of 4: 1 + 2 (16/17 * 3/8 + 15/17 * 2/8 + 14/17 * 1/8) = 2.35 at 16 lags, of the true 2.5.
    assert abs(long_run_variance_ratio(user_runs(rng, 20_000, 4), 16) - 2.35) < 0.15


def test_automatic_lags_follow_the_dependence_and_stay_within_the_maximum():
    rng = np.random.default_rng(42)
    independent = [automatic_lags(rng.normal(size=500), 16) for _ in range(50)]
    runs = [automatic_lags(user_runs(rng, 500, 4), 16) for _ in range(50)]
    assert np.median(independent) <= 3 and np.median(runs) >= 6  # short when calm, longer when not
    assert max(independent + runs) <= 16 and min(independent + runs) >= 1
    assert automatic_lags(user_runs(rng, 500, 4), 3) == 3
    assert automatic_lags(rng.normal(size=500), 0) == 0
    assert automatic_lags(np.ones(500), 16) == 1  # constant: nothing to estimate
    # With the plug-in, independent references pay less for the floor at 1 than with 16 fixed lags.
    fixed = [long_run_variance_ratio(rng.normal(size=500), 16) for _ in range(200)]
    chosen = []
    for _ in range(200):
        values = rng.normal(size=500)
        chosen.append(long_run_variance_ratio(values, automatic_lags(values, 16)))
    assert np.mean(chosen) < np.mean(fixed) - 0.02


def test_dependence_lags_keep_budget_when_users_rate_runs_of_turns():
    # i.i.d. resampling of dependent residuals misses how far their sums wander: calibrated that way
    # the chart alarms several times too often. With the analyzer's margin, as fit_calibration calls
    # it (with the default 1.25 these strongly dependent streams come out at 1.0-1.2 x the budget:
    # the long-run variance of 500 values is a noisy estimate). Run length 1,000 keeps it fast.
    rng = np.random.default_rng(41)
    rates: dict[int, list[float]] = {0: [], 16: []}
    for _ in range(32):
        reference = user_runs(rng, 500, 3)
        z = (user_runs(rng, 20_000, 3) - reference.mean()) / reference.std()
        for lags in rates:
            h = calibrate_threshold(reference, arl0=1_000, seed=0, dependence_lags=lags, margin=THRESHOLD_MARGIN)
            rates[lags].append(false_alarm_rate(z, k=K, h=h))
    mean_rate = {lags: float(np.mean(v)) for lags, v in rates.items()}
    print(f"per 10k at arl0 1,000 (budget 10), by dependence_lags: {mean_rate}")
    assert mean_rate[16] <= 10 < 2 * 10 < mean_rate[0]
    assert calibrate_threshold(reference, dependence_lags=16) > calibrate_threshold(reference) + 5


@pytest.mark.parametrize(("kwargs", "names"), [
    ({"k": -1.0}, "k must be a finite number >= 0"),
    ({"arl0": 1.0}, "arl0 must be a finite number > 1"),
    ({"chains": 0}, "chains must be >= 1"),
    ({"margin": 0.5}, "margin must be a number >= 1"),
    ({"horizon": 0}, "horizon must be >= 1"),
    ({"dependence_lags": -1}, "dependence_lags must be an int >= 0"),
    ({"dependence_lags": 2.5}, "dependence_lags must be an int >= 0"),
])
def test_calibration_bad_arguments_raise(kwargs, names):
    with pytest.raises(ValueError, match=names):
        calibrate_threshold(np.random.default_rng(0).normal(size=100), **kwargs)


def test_calibration_rejects_unusable_references():
    with pytest.raises(ValueError, match="at least 20 values"):
        calibrate_threshold(np.zeros(5))
    with pytest.raises(ValueError, match="constant"):
        calibrate_threshold(np.ones(100))
    with pytest.raises(ValueError, match="use a smaller k"):
        calibrate_threshold(np.tile([-1.0, 1.0], 50), k=2.0, reference_error=False)
    with pytest.raises(ValueError, match="finite"):
        calibrate_threshold(np.r_[np.zeros(50), math.nan])
    with pytest.raises(ValueError, match="non-empty"):
        false_alarm_rate(np.array([]), k=K, h=14.0)


# --- rank agreement ----------------------------------------------------------------------------


def agreeing_sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    reward = rng.normal(size=n)
    satisfied = (rng.random(n) < 1 / (1 + np.exp(-1.5 * reward))).astype(float)
    return reward, satisfied


def test_spearman_wraps_scipy_and_is_nan_safe():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=50)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    x_with_nan = np.r_[x, math.nan, 1.0]
    y_with_nan = np.r_[y, 0.5, math.nan]
    assert spearman(x_with_nan, y_with_nan) == pytest.approx(spearman(x, y))
    assert math.isnan(spearman([1.0, 2.0], [1.0, 0.0]))
    assert math.isnan(spearman([1.0, 2.0, 3.0], [1.0, 1.0, 1.0]))


def test_auc_counts_pairs_with_ties_as_half():
    reward = [0.1, 0.4, 0.4, 0.9, 0.2]
    satisfied = [0, 1, 0, 1, 1]
    # Satisfied rewards 0.4, 0.9, 0.2 vs unsatisfied 0.1, 0.4: wins 1 + 0.5, 1 + 1, 1 + 0 -> 4.5 / 6.
    assert auc(reward, satisfied) == pytest.approx(4.5 / 6)
    # Satisfied 0.1, 0.9, 0.2 vs unsatisfied 0.4, 0.4: only 0.9 wins, twice -> 2 / 6.
    assert auc(reward, [True, False, False, True, True]) == pytest.approx(2 / 6)
    assert math.isnan(auc([0.1, 0.2], [1, 1]))
    rng = np.random.default_rng(1)
    reward, satisfied = rng.integers(0, 5, 60).astype(float), rng.random(60) < 0.5  # many ties
    wins = [(a > b) + 0.5 * (a == b) for a in reward[satisfied] for b in reward[~satisfied]]
    assert auc(reward, satisfied) == pytest.approx(np.mean(wins))
    with pytest.raises(ValueError, match="boolean"):
        auc([0.1, 0.2], [0.5, 1.0])


@pytest.mark.parametrize(("test", "metric"), [(spearman_drop, "spearman"), (auc_drop, "auc")])
def test_drop_detected_when_reward_is_shuffled(test, metric):
    rng = np.random.default_rng(21)
    ref_reward, ref_sat = agreeing_sample(rng, 1000)
    win_reward, win_sat = agreeing_sample(rng, 300)
    drop = test(ref_reward, ref_sat, rng.permutation(win_reward), win_sat)
    assert isinstance(drop, AgreementDrop) and drop.metric == metric
    assert (drop.n_reference, drop.n_window) == (1000, 300)
    assert drop.window < drop.reference and drop.z > 4 and drop.p_value < 1e-4


@pytest.mark.parametrize("test", [spearman_drop, auc_drop])
def test_in_control_windows_give_uniform_p_values(test):
    rng = np.random.default_rng(22)
    ref_reward, ref_sat = agreeing_sample(rng, 1000)
    p_values = [test(ref_reward, ref_sat, *agreeing_sample(rng, 300)).p_value for _ in range(200)]
    # Calibrated: about 5% below 0.05 (binomial SD 1.5%), and no systematic lean either way.
    assert np.mean(np.array(p_values) < 0.05) < 0.1
    assert 0.3 < np.median(p_values) < 0.7  # conditional on one reference draw, so not exactly 0.5


@pytest.mark.parametrize("test", [spearman_drop, auc_drop])
def test_no_evidence_without_enough_data(test):
    rng = np.random.default_rng(23)
    ref_reward, ref_sat = agreeing_sample(rng, 200)
    one_class = test(ref_reward, ref_sat, [0.1, 0.5, 0.9, 1.2], [1, 1, 1, 1])
    too_few = test(ref_reward, ref_sat, [0.1, 0.5], [1, 0])
    for drop in (one_class, too_few):
        assert drop.p_value == 1.0 and math.isnan(drop.z)


# --- Benjamini-Hochberg ------------------------------------------------------------------------


def test_benjamini_hochberg_by_hand():
    # m = 6, q = 0.05: sorted p 0.001, 0.018, 0.02, 0.04, ... against i q / m = 0.0083, 0.0167, 0.025,
    # 0.0333, ... The largest i with p_(i) <= i q / m is 3 (0.02 <= 0.025), so the three smallest are
    # discoveries, 0.018 included although it is above its own 0.0167 (the step-up rule).
    p = [0.04, 0.001, 0.02, 0.5, 0.018, 0.9]
    assert benjamini_hochberg(p, q=0.05) == [False, True, True, False, True, False]


def test_benjamini_hochberg_matches_scipy():
    p = np.random.default_rng(0).beta(0.3, 1.0, size=200)
    expected = stats.false_discovery_control(p, method="bh") <= 0.1
    assert benjamini_hochberg(p.tolist(), q=0.1) == expected.tolist()
    assert benjamini_hochberg([]) == []
    assert benjamini_hochberg([math.nan, 0.001]) == [False, True]


@pytest.mark.parametrize(("p", "q", "names"), [
    ([0.1], 0.0, r"q must lie in the open interval \(0, 1\)"),
    ([0.1], 1.0, r"q must lie in the open interval \(0, 1\)"),
    ([0.1, 1.2], 0.05, r"p-values must lie in \[0, 1\]"),
    ([-0.1], 0.05, r"p-values must lie in \[0, 1\]"),
])
def test_benjamini_hochberg_bad_arguments_raise(p, q, names):
    with pytest.raises(ValueError, match=names):
        benjamini_hochberg(p, q=q)
