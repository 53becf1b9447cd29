"""The incremental analysis engine on synthetic frames: calibration, CUSUM episodes, attribution,
divergence, batching independence, late ratings, reward-model changes, refits."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.analyze.calibration import Calibration, fit_calibration, fit_logistic
from monitor.analyze.engine import (
    AnalysisConfig,
    advance,
    divergence_scores,
    entry_order,
    refit,
    replay,
)
from monitor.analyze.frame import TurnFrame
from monitor.analyze.segments import SegmentScheme
from monitor.analyze.state import SegmentState
from monitor.signals import SIGNAL_NAMES
from tests.analysis_data import assert_same_states

SCHEME = SegmentScheme(domains=("payments", "cards"))
CONFIG = AnalysisConfig(reference_labels=400, rank_window=200, resolve_labels=200, window_seconds=600.0)
LENGTH = SIGNAL_NAMES.index("length_tokens")
SYCOPHANCY = SIGNAL_NAMES.index("sycophancy")


def synthetic(n: int, *, seed: int = 0, segments=("payments/*/*", "cards/*/*"), hack_from: int | None = None,
              hack_until: int | None = None, hack_segment: str = "payments/*/*", rated_share: float = 1.0,
              signal: int = LENGTH, rating_delay: float | np.ndarray = 0.0) -> TurnFrame:
    """Turns one second apart, rated ``rating_delay`` seconds later. Long answers (signal 1) get a
    reward bonus users do not share; from
    ``hack_from`` the hacked segment gives 90% of its answers that signal instead of 20%."""
    rng = np.random.default_rng(seed)
    segment = np.array([segments[i % len(segments)] for i in range(n)], dtype=object)
    hacked = np.zeros(n, dtype=bool)
    if hack_from is not None:
        window = np.arange(n) >= hack_from
        if hack_until is not None:
            window &= np.arange(n) < hack_until
        hacked = window & (segment == hack_segment)
    feature = rng.random(n) < np.where(hacked, 0.9, 0.2)
    quality = rng.normal(0, 1, n)
    score = quality + 1.0 * feature + rng.normal(0, 0.3, n)
    p = 1 / (1 + np.exp(-(quality - 0.4 * feature)))
    satisfaction = (rng.random(n) < p).astype(float)
    satisfaction[rng.random(n) >= rated_share] = np.nan
    signals = np.zeros((n, len(SIGNAL_NAMES)))
    signals[:, LENGTH] = 40 + rng.normal(0, 5, n)
    signals[:, signal] += np.where(feature, 60.0 if signal == LENGTH else 2.0, 0.0)
    signals[:, SYCOPHANCY] += rng.random(n) < 0.1
    return TurnFrame(
        ts=1.8e9 + np.arange(n, dtype=float), segment=segment, score=score, satisfaction=satisfaction,
        signals=signals, harmful=rng.random(n) < 0.03, event_id=np.array([f"e{i}" for i in range(n)], dtype=object),
        conversation_id=np.array([f"c{i}" for i in range(n)], dtype=object), turn=np.zeros(n, dtype=np.int64),
        scorer=np.array(["producer"] * n, dtype=object), model_version=np.array(["v1"] * n, dtype=object),
        rated_ts=1.8e9 + np.arange(n, dtype=float) + rating_delay,
        rating_id=np.array([f"r{i}" for i in range(n)], dtype=object), row_id=np.arange(n),
    )


def test_logistic_fit_recovers_parameters_from_soft_labels() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=5000)
    p = 1 / (1 + np.exp(-(-0.5 + 2.0 * x)))
    a, b = fit_logistic(x, p)  # soft labels: the probabilities themselves
    assert a == pytest.approx(-0.5, abs=0.01) and b == pytest.approx(2.0, abs=0.01)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fit_logistic(x, p + 1)


def test_calibration_round_trips_through_json_params() -> None:
    frame = synthetic(600)
    calibration = fit_calibration(frame.score[:400], frame.satisfaction[:400], frame.signals[:400], frame.ts[:400])
    assert Calibration.from_params(calibration.to_params()) == calibration
    assert 0.0 < calibration.predict(np.array([0.0]))[0] < 1.0
    assert calibration.cusum_h > 5  # a threshold sized for ~10k rated turns between false alarms
    with pytest.raises(ValueError, match="at least 30"):
        fit_calibration(frame.score[:10], frame.satisfaction[:10], frame.signals[:10], frame.ts[:10])


def episodes_of(frame: TurnFrame, config: AnalysisConfig = CONFIG, step: float | None = None) -> list:
    return sorted(replay(frame, config, step_seconds=step).episodes.values(), key=lambda e: (e.started_at, e.key))


def test_false_alarms_stay_within_budget_on_a_long_stationary_stream() -> None:
    frame = synthetic(100_000, seed=11)
    detections = sum(e.detections for e in episodes_of(frame))
    assert detections <= 10 * 1.5  # budget: 1 per 10k rated turns; ~100k here


def test_stationary_traffic_raises_no_alert_and_fits_each_segment_once() -> None:
    frame = synthetic(6000, seed=1)
    result = replay(frame, CONFIG, step_seconds=None)
    assert sorted(result.fitted) == ["cards/*/* @ producer@v1", "payments/*/* @ producer@v1"]
    assert result.episodes == {}
    # Frozen: feeding more traffic to the same state fits nothing new.
    more = synthetic(12000, seed=1).take(np.arange(6000, 12000))
    assert advance(result.states, more.take(entry_order(more, CONFIG)), CONFIG).fitted == []


def test_length_hacking_in_one_segment_fires_there_with_the_verbosity_mode() -> None:
    frame = synthetic(8000, seed=2, hack_from=3000)
    episodes = episodes_of(frame)
    assert {(e.segment, e.detector, e.direction) for e in episodes} >= {("payments/*/*", "cusum", "down")}
    assert not [e for e in episodes if e.segment == "cards/*/*" and e.direction == "down"]
    episode = next(e for e in episodes if e.detector == "cusum")
    assert episode.key == "payments/*/*|cusum|down|1"
    assert episode.started_at >= frame.ts[3000]
    # Detected within a few hundred rated turns of the segment (it gets every other turn).
    assert episode.started_at - frame.ts[3000] < 2 * 400
    assert episode.state == "firing" and episode.mode == "verbosity"
    evidence = episode.evidence
    assert evidence["window"]["mean_residual"] < 0
    assert evidence["attribution"]["by_mode"]["verbosity"] < 0
    assert len(evidence["top_examples"]) == CONFIG.top_examples
    assert evidence["identity"] == "producer@v1"


def test_sycophancy_is_named_when_flattery_is_what_grew() -> None:
    frame = synthetic(8000, seed=4, hack_from=3000, signal=SYCOPHANCY)
    episodes = [e for e in episodes_of(frame) if e.detector == "cusum"]
    assert episodes and episodes[0].mode == "sycophancy"


def test_an_episode_resolves_after_the_shift_ends() -> None:
    frame = synthetic(12000, seed=5, hack_from=3000, hack_until=6000)
    episodes = [e for e in episodes_of(frame)
                if e.detector == "cusum" and e.segment == "payments/*/*" and e.direction == "down"]
    assert len(episodes) == 1 and episodes[0].state == "resolved"
    # Resolved once a full window (200 rated turns = 400 s here) after the shift shows no shift.
    assert frame.ts[6000] <= episodes[0].resolved_at < frame.ts[7500]
    assert episodes[0].mode == "verbosity"  # the resolution keeps what the detections said


def snapshot(episodes) -> list:
    return [(e.key, e.state, e.started_at, e.resolved_at, e.mode, e.detections) for e in episodes]


@pytest.mark.parametrize("step", [1.0, 60.0, 3600.0])
def test_runs_on_a_schedule_give_what_one_run_gives(step: float) -> None:
    frame = synthetic(12000, seed=5, hack_from=3000, hack_until=6000)
    once = replay(frame, CONFIG, step_seconds=None)
    scheduled = replay(frame, CONFIG, step_seconds=step)
    assert scheduled.runs > 1
    assert snapshot(sorted(scheduled.episodes.values(), key=lambda e: e.key)) == \
        snapshot(sorted(once.episodes.values(), key=lambda e: e.key))
    assert_same_states(scheduled.states, once.states)


def test_state_reloaded_from_json_carries_on_bit_identically() -> None:
    frame = synthetic(10000, seed=2, hack_from=3000)
    order = entry_order(frame, CONFIG)
    straight: dict[str, SegmentState] = {}
    whole = advance(straight, frame.take(order), CONFIG)
    resumed: dict[str, SegmentState] = {}
    first = advance(resumed, frame.take(order[:4000]), CONFIG)
    reloaded = {k: SegmentState.from_json(s.to_json()) for k, s in resumed.items()}
    second = advance(reloaded, frame.take(order[4000:]), CONFIG)
    first.extend(second)
    assert snapshot(sorted(first.episodes.values(), key=lambda e: e.key)) == \
        snapshot(sorted(whole.episodes.values(), key=lambda e: e.key))
    assert_same_states(reloaded, straight)


def test_late_ratings_keep_one_alert_per_episode_and_past_the_horizon_never_enter() -> None:
    delays = np.random.default_rng(3).exponential(600.0, 12000)  # ratings ~10 minutes late
    frame = synthetic(12000, seed=5, hack_from=3000, hack_until=6000, rating_delay=delays)
    config = AnalysisConfig(**{**CONFIG.__dict__, "rating_horizon_seconds": 1800.0})
    episodes = episodes_of(frame, config, step=60.0)
    hacked = [e for e in episodes if e.segment == "payments/*/*" and e.detector == "cusum" and e.direction == "down"]
    assert [e.key for e in hacked] == ["payments/*/*|cusum|down|1"] and hacked[0].state == "resolved"
    entered = entry_order(frame, config)
    assert len(entered) == int((delays <= 1800.0).sum())  # later ratings never enter


def test_the_result_does_not_depend_on_row_order() -> None:
    frame = synthetic(6000, seed=6, hack_from=3000)
    shuffled = frame.take(np.random.default_rng(0).permutation(len(frame)))
    first, second = episodes_of(frame), episodes_of(shuffled)
    assert snapshot(first) == snapshot(second)


def test_divergence_ranks_the_over_rewarded_turns_first_per_segment() -> None:
    frame = synthetic(6000, seed=7)
    result = replay(frame, CONFIG, step_seconds=None)
    divergence = divergence_scores(result.states, frame)
    long_answers = frame.signals[:, LENGTH] > 70
    assert np.nanmean(divergence[long_answers]) > np.nanmean(divergence[~long_answers]) + 0.05
    # A segment the analyzer has no calibration for gets none.
    other = frame.take(np.arange(10))
    other = TurnFrame(**{**{n: getattr(other, n) for n in other.__dataclass_fields__},
                         "segment": np.array(["other/*/*"] * 10, dtype=object)})
    assert np.isnan(divergence_scores(result.states, other)).all()
    # As the schedule scores them, each turn by the run after its arrival: warm-up turns have none.
    scheduled = replay(frame, CONFIG, step_seconds=60.0)
    assert np.isnan(scheduled.divergence[:400]).all() and not np.isnan(scheduled.divergence[-1000:]).any()


def test_rank_drop_fires_when_reward_stops_tracking_satisfaction() -> None:
    frame = synthetic(8000, seed=8)
    broken = np.arange(len(frame)) >= 4000
    rng = np.random.default_rng(1)
    score = frame.score.copy()
    cards = broken & (frame.segment == "cards/*/*")
    score[cards] = rng.normal(0, 1, int(cards.sum()))
    frame = TurnFrame(**{**{n: getattr(frame, n) for n in frame.__dataclass_fields__}, "score": score})
    episodes = episodes_of(frame)
    assert any(e.detector == "rank_drop" and e.segment == "cards/*/*" for e in episodes)
    assert all(e.segment == "cards/*/*" for e in episodes)


def with_scorer(frame: TurnFrame, scorer: np.ndarray) -> TurnFrame:
    return TurnFrame(**{**{n: getattr(frame, n) for n in frame.__dataclass_fields__}, "scorer": scorer})


def test_a_new_reward_model_gets_its_own_reference_and_ends_the_old_ones_episodes() -> None:
    frame = synthetic(12000, seed=2, hack_from=3000)
    # From turn 8000 the monitor scores with another RM whose scores sit 2 units higher.
    scorer = np.array(["rm-a"] * 8000 + ["rm-b"] * 4000, dtype=object)
    frame = with_scorer(frame, scorer)
    score = frame.score.copy()
    score[8000:] += 2.0
    frame = TurnFrame(**{**{n: getattr(frame, n) for n in frame.__dataclass_fields__}, "score": score})
    result = replay(frame, CONFIG, step_seconds=60.0)
    payments = result.states["payments/*/*"]
    assert set(payments.tracks) == {"rm-a", "rm-b"} and payments.current == "rm-b"
    assert [c["identity"] for c in payments.changes] == ["rm-a", "rm-b"]
    assert payments.changes[1]["previous"] == "rm-a"
    assert payments.tracks["rm-b"].calibration.reference_from >= frame.ts[8000]
    old = result.episodes["payments/*/*|cusum|down|1"]
    assert old.identity == "rm-a" and old.state == "resolved"
    assert old.evidence["superseded_by"] == "rm-b"
    # The +2 offset alone raises nothing: rm-b is judged against its own reference.
    assert not [e for e in result.episodes.values() if e.identity == "rm-b" and e.direction == "up"]


def test_refit_starts_the_current_reward_model_again_on_its_latest_labels() -> None:
    frame = synthetic(9000, seed=2, hack_from=3000)
    result = replay(frame, CONFIG, step_seconds=None)
    state = result.states["payments/*/*"]
    old_reference = state.tracks["producer@v1"].calibration.reference_to
    order = entry_order(frame, CONFIG)
    recent = frame.take(order)
    change = refit(state, recent.take(np.flatnonzero(recent.segment == "payments/*/*")), CONFIG)
    track = state.tracks["producer@v1"]
    assert track.calibration is not None and track.calibration.reference_from > old_reference
    assert track.calibration.reference_to == pytest.approx(frame.ts[order][frame.segment[order] == "payments/*/*"][-1])
    assert [e.state for e in change.episodes.values()] == ["resolved"]
    assert next(iter(change.episodes.values())).evidence == {"refit": True}
    assert state.changes[-1]["refit"] is True


def test_each_rating_of_a_turn_is_an_entry_of_its_own_at_its_own_time() -> None:
    frame = synthetic(3000, seed=9)
    # Every turn gets a second, later rating (a considered verdict half an hour on).
    verdicts = TurnFrame(**{**{n: getattr(frame, n) for n in frame.__dataclass_fields__},
                            "rated_ts": frame.rated_ts + 1800.0, "satisfaction": 1.0 - frame.satisfaction,
                            "rating_id": np.array([f"v{i}" for i in range(len(frame))], dtype=object)})
    both = TurnFrame(**{n: np.concatenate([getattr(frame, n), getattr(verdicts, n)])
                        for n in frame.__dataclass_fields__})
    order = entry_order(both, CONFIG)
    assert len(order) == 6000
    entry = np.fmax(both.rated_ts, both.ts)[order]
    assert (np.diff(entry) >= 0).all()  # entry-time order, verdicts interleaved with later turns' thumbs
    # Past the horizon a verdict never enters.
    short = AnalysisConfig(**{**CONFIG.__dict__, "rating_horizon_seconds": 600.0})
    assert len(entry_order(both, short)) == 3000
    result = replay(frame, CONFIG, entries=both, step_seconds=60.0)
    assert sum(state.labelled for state in result.states.values()) == 6000


def test_a_hack_that_takes_over_a_segment_keeps_its_divergence() -> None:
    # From turn 3000 nine in ten of payments' answers are long (against two in ten before). Its
    # divergence is measured from what the reference looked like, so the hack does not become the
    # new normal: long answers late in the hack score as high as early ones.
    frame = synthetic(12000, seed=8, hack_from=3000)
    scheduled = replay(frame, CONFIG, step_seconds=60.0)
    payments_long = (frame.segment == "payments/*/*") & (frame.signals[:, LENGTH] > 70)
    index = np.arange(len(frame))
    early = payments_long & (index >= 3000) & (index < 4500)
    late = payments_long & (index >= 10500)
    assert np.nanmean(scheduled.divergence[late]) > 0.8 * np.nanmean(scheduled.divergence[early])


def test_refusing_a_harmful_request_is_not_divergence() -> None:
    # Users dislike refusals the reward model pays for; half of the refusals answer harmful prompts.
    refusal = SIGNAL_NAMES.index("refusal")
    frame = synthetic(6000, seed=9, signal=refusal)
    refused = frame.signals[:, refusal] > 1.0
    harmful = refused & (np.arange(len(frame)) % 2 == 0)
    frame = TurnFrame(**{**{n: getattr(frame, n) for n in frame.__dataclass_fields__}, "harmful": harmful})
    assert (frame.judged_signals()[harmful, refusal] == 0).all()
    assert (frame.judged_signals()[refused & ~harmful, refusal] > 1.0).all()
    divergence = divergence_scores(replay(frame, CONFIG, step_seconds=None).states, frame)
    assert np.nanmean(divergence[refused & ~harmful]) > 0.1
    assert np.nanmean(divergence[harmful]) < 0.2 * np.nanmean(divergence[refused & ~harmful])
