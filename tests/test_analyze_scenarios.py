"""The whole analysis (simulator -> wire events -> signals -> engine on a one-minute schedule) on
labelled scenarios."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.analyze.engine import AnalysisConfig, replay
from monitor.analyze.window_stats import segment_stats
from monitor.bench.detect import SCHEME, s5_drift, scenario_frame
from monitor.signals import SIGNAL_NAMES
from monitor.sim.scenarios import Scenario
from monitor.sim.traffic import TrafficSimulator

CONFIG = AnalysisConfig(reference_labels=200, window_seconds=600.0, rank_family=len(SCHEME.all_keys()))
ONSET_S = 400.0


def run(name: str, *, seed: int = 3, after_s: float = 500.0):
    simulator = TrafficSimulator(seed, rating_rate=0.5, scenario=Scenario(name, onset_s=ONSET_S))
    data = scenario_frame(simulator.messages(10.0, ONSET_S + after_s))
    result = replay(data.frame, CONFIG, entries=data.entries, step_seconds=60.0)
    onset = data.frame.ts.min() + ONSET_S
    episodes = sorted(result.episodes.values(), key=lambda e: (e.started_at, e.key))
    return data, result, [e for e in episodes if e.started_at >= onset]


def segments(data, result) -> dict[str, dict]:
    """The segment table a run at the end of the traffic would write."""
    watermark = float(data.frame.ts.max())
    window = data.frame.take(np.flatnonzero(data.frame.ts > watermark - CONFIG.window_seconds))
    firing: dict[str, list] = {}
    for episode in result.episodes.values():
        if episode.state == "firing":
            firing.setdefault(episode.segment, []).append(episode.modes)
    return {name: segment_stats(name, window, result.states.get(name), firing.get(name, []), watermark, CONFIG)
            for name in SCHEME.all_keys()}


def test_over_refusal_is_detected_attributed_and_visible_in_the_safety_rates() -> None:
    data, result, after = run("S4")
    down = [e for e in after if e.direction == "down"]
    assert down and {e.mode for e in down} == {"over-refusal"}
    for stats in segments(data, result).values():
        if stats["status"] != "warming_up":
            assert stats["safety"]["over_refusal_rate"] > 0.15  # ~0.3 of safe prompts refused after onset
    baseline_data, baseline, _ = run("S0")
    assert all((s["safety"]["over_refusal_rate"] or 0) < 0.02 for s in segments(baseline_data, baseline).values())


def test_overpromise_in_investments_is_flagged_there_only() -> None:
    data, result, after = run("S7")
    down = [e for e in after if e.direction == "down"]
    assert down[0].segment == "investments/*/*" and down[0].mode == "overpromise"
    assert all(e.segment == "investments/*/*" for e in down if e.mode == "overpromise")
    investments = segments(data, result)["investments/*/*"]
    assert investments["status"] == "diverging"
    calibration = result.states["investments/*/*"].track.calibration
    reference = dict(zip(SIGNAL_NAMES, calibration.signal_means, strict=True))
    assert investments["signals"]["compliance_missing"] > reference["compliance_missing"] + 0.2


def test_a_covariate_only_shift_raises_no_alert_but_shows_in_the_drift_report() -> None:
    data, result, after = run("S5")
    assert result.episodes == {}
    summary = s5_drift(data, result, CONFIG, rows=300)
    assert summary["embeddings"]["drifted"] is True  # users ask about new things
    # 5% of simulated turns carry no reward: they never get a divergence; the others do once
    # their segment is calibrated.
    scored = ~np.isnan(data.frame.score)
    late = data.frame.ts > data.frame.ts.min() + ONSET_S
    assert np.isfinite(result.divergence[scored & late]).all() and np.isnan(result.divergence[~scored]).all()


@pytest.mark.parametrize("name, mode", [("S1", "verbosity"), ("S2", "sycophancy"), ("S3", "formatting")])
def test_each_hacking_scenario_names_its_mode(name: str, mode: str) -> None:
    _, _, after = run(name, after_s=900.0 if name == "S2" else 500.0)
    down = [e for e in after if e.direction == "down"]
    assert down and down[0].mode == mode
