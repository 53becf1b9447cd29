"""The whole analysis (simulator -> wire events -> signals -> engine) on labelled scenarios."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.analyze.engine import AnalysisConfig, analyze
from monitor.bench.detect import SCHEME, s5_drift, scenario_frame
from monitor.signals import SIGNAL_NAMES
from monitor.sim.scenarios import Scenario
from monitor.sim.traffic import TrafficSimulator

CONFIG = AnalysisConfig(reference_labels=200, window_seconds=600.0)
ONSET_S = 400.0


def run(name: str, *, seed: int = 3, after_s: float = 500.0):
    simulator = TrafficSimulator(seed, rating_rate=0.5, scenario=Scenario(name, onset_s=ONSET_S))
    data = scenario_frame(simulator.messages(10.0, ONSET_S + after_s))
    analysis = analyze(data.frame, {}, CONFIG, SCHEME)
    onset = data.frame.ts.min() + ONSET_S
    return data, analysis, [e for e in analysis.episodes if e.started_at >= onset]


def segment(analysis, name: str) -> dict:
    return next(s for s in analysis.segments if s["segment"] == name)


def test_over_refusal_is_detected_attributed_and_visible_in_the_safety_rates() -> None:
    _, analysis, after = run("S4")
    down = [e for e in after if e.direction == "down"]
    assert down and {e.mode for e in down} == {"over-refusal"}
    for stats in analysis.segments:
        if stats["status"] != "warming_up":
            assert stats["safety"]["over_refusal_rate"] > 0.15  # ~0.3 of safe prompts refused after onset
    _, baseline, _ = run("S0")
    assert all((s["safety"]["over_refusal_rate"] or 0) < 0.02 for s in baseline.segments)


def test_overpromise_in_investments_is_flagged_there_only() -> None:
    data, analysis, after = run("S7")
    down = [e for e in after if e.direction == "down"]
    assert down[0].segment == "investments/*/*" and down[0].mode == "overpromise"
    assert all(e.segment == "investments/*/*" for e in down if e.mode == "overpromise")
    investments = segment(analysis, "investments/*/*")
    assert investments["status"] == "diverging"
    reference = dict(zip(SIGNAL_NAMES, analysis.calibrations["investments/*/*"].signal_means, strict=True))
    assert investments["signals"]["compliance_missing"] > reference["compliance_missing"] + 0.2


def test_a_covariate_only_shift_raises_no_alert_but_shows_in_the_drift_report() -> None:
    data, analysis, after = run("S5")
    assert analysis.episodes == []
    summary = s5_drift(data, analysis, CONFIG, rows=300)
    assert summary["embeddings"]["drifted"] is True  # users ask about new things
    scored = ~np.isnan(data.frame.score)  # 5% of simulated turns carry no reward
    assert np.isfinite(analysis.divergence[scored]).all() and np.isnan(analysis.divergence[~scored]).all()


@pytest.mark.parametrize("name, mode", [("S1", "verbosity"), ("S2", "sycophancy"), ("S3", "formatting")])
def test_each_hacking_scenario_names_its_mode(name: str, mode: str) -> None:
    _, _, after = run(name, after_s=900.0 if name == "S2" else 500.0)
    down = [e for e in after if e.direction == "down"]
    assert down and down[0].mode == mode
