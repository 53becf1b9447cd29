"""The analysis engine on synthetic frames: calibration, CUSUM episodes, attribution, statistics."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.analyze.calibration import Calibration, fit_calibration, fit_logistic
from monitor.analyze.engine import AnalysisConfig, analyze
from monitor.analyze.frame import TurnFrame
from monitor.analyze.segments import SegmentScheme
from monitor.signals import SIGNAL_NAMES

SCHEME = SegmentScheme(domains=("payments", "cards"))
CONFIG = AnalysisConfig(reference_labels=400, rank_window=200, resolve_labels=200, window_seconds=600.0)
LENGTH = SIGNAL_NAMES.index("length_tokens")
SYCOPHANCY = SIGNAL_NAMES.index("sycophancy")


def synthetic(n: int, *, seed: int = 0, segments=("payments/*/*", "cards/*/*"), hack_from: int | None = None,
              hack_until: int | None = None, hack_segment: str = "payments/*/*", rated_share: float = 1.0,
              signal: int = LENGTH) -> TurnFrame:
    """Turns one second apart. Long answers (signal 1) get a reward bonus users do not share; from
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
        scorer=np.array(["producer"] * n, dtype=object),
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


def test_false_alarms_stay_within_budget_on_a_long_stationary_stream() -> None:
    frame = synthetic(100_000, seed=11)
    detections = sum(e.detections for e in analyze(frame, {}, CONFIG, SCHEME).episodes)
    assert detections <= 10 * 1.5  # budget: 1 per 10k rated turns; ~100k here (measured: 0.35 per 10k)


def test_stationary_traffic_raises_no_alert_and_fits_each_segment_once() -> None:
    frame = synthetic(6000, seed=1)
    analysis = analyze(frame, {}, CONFIG, SCHEME)
    assert analysis.fitted == ["cards/*/*", "payments/*/*"]
    assert analysis.episodes == []
    stats = {s["segment"]: s for s in analysis.segments}
    assert set(stats) == {"payments/*/*", "cards/*/*", "other/*/*"}
    assert stats["other/*/*"]["status"] == "warming_up" and stats["other/*/*"]["turns"] == 0
    payments = stats["payments/*/*"]
    assert payments["status"] == "ok" and payments["rated"] == 300  # 600 s window, every other turn
    assert payments["gap_ci95"][0] < 0 < payments["gap_ci95"][1]
    assert payments["estimated_satisfaction"] == pytest.approx(payments["realised_satisfaction"], abs=0.08)
    # Frozen: handing the calibrations back fits nothing new and gives the same result.
    again = analyze(frame, analysis.calibrations, CONFIG, SCHEME)
    assert again.fitted == [] and again.segments == analysis.segments


def test_length_hacking_in_one_segment_fires_there_with_the_verbosity_mode() -> None:
    frame = synthetic(8000, seed=2, hack_from=3000)
    analysis = analyze(frame, {}, CONFIG, SCHEME)
    assert {(e.segment, e.detector, e.direction) for e in analysis.episodes} >= {("payments/*/*", "cusum", "down")}
    assert not [e for e in analysis.episodes if e.segment == "cards/*/*" and e.direction == "down"]
    episode = next(e for e in analysis.episodes if e.detector == "cusum")
    assert episode.started_at >= frame.ts[3000]
    # Detected within a few hundred rated turns of the segment (it gets every other turn).
    assert episode.started_at - frame.ts[3000] < 2 * 400
    assert episode.state == "firing" and episode.mode == "verbosity"
    evidence = episode.evidence
    assert evidence["window"]["mean_residual"] < 0
    assert evidence["attribution"]["by_mode"]["verbosity"] < 0
    assert len(evidence["top_examples"]) == CONFIG.top_examples
    stats = {s["segment"]: s for s in analysis.segments}
    assert stats["payments/*/*"]["status"] == "diverging" and stats["cards/*/*"]["status"] == "ok"
    assert stats["payments/*/*"]["gap_ci95"][1] < 0
    assert stats["payments/*/*"]["estimated_satisfaction"] > stats["payments/*/*"]["realised_satisfaction"]


def test_sycophancy_is_named_when_flattery_is_what_grew() -> None:
    frame = synthetic(8000, seed=4, hack_from=3000, signal=SYCOPHANCY)
    episodes = [e for e in analyze(frame, {}, CONFIG, SCHEME).episodes if e.detector == "cusum"]
    assert episodes and episodes[0].mode == "sycophancy"


def test_an_episode_resolves_after_the_shift_ends() -> None:
    frame = synthetic(12000, seed=5, hack_from=3000, hack_until=6000)
    episodes = [e for e in analyze(frame, {}, CONFIG, SCHEME).episodes
                if e.detector == "cusum" and e.segment == "payments/*/*" and e.direction == "down"]
    assert len(episodes) == 1 and episodes[0].state == "resolved"
    # Resolved once a full window (200 rated turns = 400 s here) after the shift shows no shift.
    assert frame.ts[6000] <= episodes[0].resolved_at < frame.ts[7500]


def test_the_result_does_not_depend_on_row_order() -> None:
    frame = synthetic(6000, seed=6, hack_from=3000)
    shuffled = frame.take(np.random.default_rng(0).permutation(len(frame)))
    from monitor.analyze.frame import serving_order

    reordered = shuffled.take(serving_order(shuffled))
    first, second = analyze(frame, {}, CONFIG, SCHEME), analyze(reordered, {}, CONFIG, SCHEME)
    assert [e.key for e in first.episodes] == [e.key for e in second.episodes]


def test_divergence_ranks_the_over_rewarded_turns_first() -> None:
    frame = synthetic(6000, seed=7)
    analysis = analyze(frame, {}, CONFIG, SCHEME)
    long_answers = frame.signals[:, LENGTH] > 70
    assert np.nanmean(analysis.divergence[long_answers]) > np.nanmean(analysis.divergence[~long_answers]) + 0.05


def test_rank_drop_fires_when_reward_stops_tracking_satisfaction() -> None:
    frame = synthetic(8000, seed=8)
    broken = np.arange(len(frame)) >= 4000
    rng = np.random.default_rng(1)
    score = frame.score.copy()
    score[broken & (frame.segment == "cards/*/*")] = rng.normal(0, 1, int((broken & (frame.segment == "cards/*/*")).sum()))
    frame = TurnFrame(**{**{n: getattr(frame, n) for n in frame.__dataclass_fields__}, "score": score})
    episodes = analyze(frame, {}, CONFIG, SCHEME).episodes
    assert any(e.detector == "rank_drop" and e.segment == "cards/*/*" for e in episodes)
    assert all(e.segment == "cards/*/*" for e in episodes)
