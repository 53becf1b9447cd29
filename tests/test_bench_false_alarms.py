"""B1's pieces: stationary streams per rating kind, the false-alarm budget on them, PageHinkley as river runs it
and tuned to a rate.

The budget tests run at a run length of 1,000 labels instead of 10,000: ten times the alarms per
label, a tenth of the bootstrap, the same calibration path (`fit_calibration` on the first 500
rated turns of each stream, `cusum_alarms` on the rest).
"""

from __future__ import annotations

import numpy as np
import pytest

from monitor.bench import page_hinkley
from monitor.bench.false_alarms import SOURCES, run_b1
from monitor.bench.rating_kinds import CURVES, RATING_KINDS, REWARD_SHAPES, World, draw_world, false_alarm_trial

ARL0 = 1_000  # budget: 10 false alarms per 10,000 rated turns


@pytest.mark.parametrize("kind", RATING_KINDS)
def test_streams_look_like_their_rating_kind(kind):
    rng = np.random.default_rng(5)
    for _ in range(10):
        world = draw_world(kind, rng)
        reward, satisfaction = world.stream(2_000, rng)
        assert reward.shape == satisfaction.shape == (2_000,)
        assert np.all((satisfaction >= 0) & (satisfaction <= 1)) and np.all(np.isfinite(reward))
        values = set(np.unique(satisfaction).tolist())
        if kind == "thumbs":
            assert values <= {0.0, 1.0}
        elif kind == "stars":
            assert values <= {0.0, 0.25, 0.5, 0.75, 1.0}
        else:
            assert len(values) > 10 and np.allclose(satisfaction, np.round(satisfaction, 2))
    assert draw_world(kind, np.random.default_rng(1)) == draw_world(kind, np.random.default_rng(1))


def test_worlds_span_the_families():
    rng = np.random.default_rng(0)
    worlds = [draw_world(kind, rng) for kind in RATING_KINDS for _ in range(40)]
    assert {w.curve for w in worlds} == set(CURVES)
    assert {w.reward_shape for w in worlds} == set(REWARD_SHAPES)
    assert min(w.run_mean for w in worlds) < 1.5 and max(w.run_mean for w in worlds) > 3.5


def test_consecutive_ratings_of_one_user_are_dependent():
    # A world with long runs and strong user bias: neighbours' residuals correlate; without them they do not.
    base = draw_world("stars", np.random.default_rng(2))
    dependent = World(**{**base.__dict__, "run_mean": 4.0, "user_sd": 0.12, "cut_sd": 0.1, "curve": "logistic"})
    independent = World(**{**dependent.__dict__, "run_mean": 1.0, "user_sd": 0.0, "cut_sd": 0.0})
    lag1 = {}
    for name, world in (("dependent", dependent), ("independent", independent)):
        reward, satisfaction = world.stream(20_000, np.random.default_rng(3))
        residual = satisfaction - np.poly1d(np.polyfit(reward, satisfaction, 3))(reward)
        lag1[name] = np.corrcoef(residual[:-1], residual[1:])[0, 1]
    assert lag1["dependent"] > 0.2 and abs(lag1["independent"]) < 0.03


def test_bad_worlds_raise():
    world = draw_world("thumbs", np.random.default_rng(0))
    with pytest.raises(ValueError, match="kind must be one of thumbs, stars, score"):
        draw_world("likes", np.random.default_rng(0))
    with pytest.raises(ValueError, match="curve must be one of"):
        World(**{**world.__dict__, "curve": "linear"})


@pytest.mark.parametrize("kind", RATING_KINDS)
def test_false_alarm_budget_holds_per_rating_kind(kind):
    alarms = labels = 0
    for stream in range(16):
        rng = np.random.default_rng([7, RATING_KINDS.index(kind), stream])
        trial = false_alarm_trial(draw_world(kind, rng), reference_labels=500, labels=4_000, rng=rng,
                                  false_alarm_labels=ARL0)
        alarms += trial.alarms
        labels += len(trial.z)
    rate = 1e4 * alarms / labels
    print(f"{kind}: {alarms} false alarms in {labels} rated turns = {rate:.2f} per 10k (budget {1e4 / ARL0:.0f})")
    assert rate <= 1e4 / ARL0


# --- PageHinkley ---------------------------------------------------------------------------------


@pytest.mark.parametrize("parameters", [{}, {"threshold": 8.0, "delta": 0.25},
                                        {"threshold": 20.0, "delta": 0.1, "alpha": 0.999, "min_instances": 10}])
def test_page_hinkley_repeats_river_alarm_for_alarm(parameters):
    drift = pytest.importorskip("river.drift")
    rng = np.random.default_rng(1)
    stream = np.concatenate([rng.normal(size=6_000), rng.standard_t(3, size=6_000), rng.normal(0.5, 1, 2_000),
                             rng.normal(-0.7, 1, 2_000)])
    detector = drift.PageHinkley(**parameters)
    expected = []
    for i, x in enumerate(stream.tolist()):
        detector.update(x)
        if detector.drift_detected:
            expected.append(i)
    ours = page_hinkley.page_hinkley_alarms(stream, **parameters)
    assert [i for i, _ in ours] == expected and len(expected) > 3
    # The grid version: streams of different lengths, several thresholds at once, the same counts.
    others = {name: value for name, value in parameters.items() if name != "threshold"}
    thresholds = [parameters.get("threshold", 50.0), 5.0]
    pieces = [stream[:7_000], stream[7_000:]]
    counts = page_hinkley.alarm_counts(pieces, np.array(thresholds), **others)
    assert counts.tolist() == [sum(len(page_hinkley.page_hinkley_alarms(piece, threshold=t, **others))
                                   for piece in pieces) for t in thresholds]


def test_page_hinkley_directions():
    rng = np.random.default_rng(2)
    up = page_hinkley.page_hinkley_alarms(np.r_[rng.normal(size=500), rng.normal(1.0, 1, 300)], threshold=10.0,
                                          delta=0.25)
    down = page_hinkley.page_hinkley_alarms(np.r_[rng.normal(size=500), rng.normal(-1.0, 1, 300)], threshold=10.0,
                                            delta=0.25)
    assert up and up[0][0] >= 500 and up[0][1] == "up"
    assert down and down[0][0] >= 500 and down[0][1] == "down"


def test_tuned_threshold_hits_its_target_rate():
    rng = np.random.default_rng(3)
    streams = [rng.normal(size=5_000) for _ in range(10)]  # 50,000 values
    target = 20
    threshold = page_hinkley.tune_threshold(streams, target, delta=0.25)
    at = page_hinkley.alarm_counts(streams, np.array([threshold, threshold / 1.03]), delta=0.25)
    print(f"threshold {threshold:.2f}: {at[0]} alarms (target {target}); 3% lower: {at[1]}")
    assert target - 3 <= at[0] <= target  # at the target, not far below it
    assert at[1] > target  # and the smallest such threshold, to the grid's precision
    with pytest.raises(ValueError, match="target_alarms must be > 0"):
        page_hinkley.tune_threshold(streams, 0, delta=0.25)


def test_b1_reports_every_source_with_page_hinkley_matched():
    result = run_b1(labels=2_000, kind_streams=2, trials=10, seed=0, false_alarm_labels=ARL0)
    assert [row.source for row in result.rows] == list(SOURCES)
    for row in result.rows:
        assert row.streams >= 2 and len(row.delays) == 10
        assert [run.alpha for run in row.page_hinkley] == [0.9999, 1.0]
        for run in row.page_hinkley:
            assert len(run.delays) == 10 and run.false_alarms <= max(1, row.false_alarms)
    text = "\n".join(result.report_lines())
    for figure in ("simulator S0 (mixed kinds): false alarms:", "stars: false alarms:", "river PageHinkley",
                   "alpha 1: threshold", "x the CUSUM's", "PageHinkley() defaults"):
        assert figure in text
    with pytest.raises(ValueError, match="sources must be among"):
        run_b1(labels=2_000, kind_streams=1, trials=10, seed=0, sources=("likes",))
