"""`monitor bench detect`: detection quality on simulated scenarios with hidden ground truth.

Runs the analysis engine (the same code `serve` runs) on frames built straight from simulated
events, so no broker or database sits in the measurement:

- **B1** false alarms per 10,000 rated turns per segment on stationary traffic (S0), and the
  median delay, in rated turns, to detect a 0.5 SD residual shift injected into those streams;
  river's PageHinkley with its defaults on the same streams for comparison.
- **B2** AUROC of the per-sample divergence score for the ground-truth hacked turns.
- **Attribution** macro-F1 of the named mode over S1-S4 and S7 alerts.
- **S5** (covariate-only shift): divergence alerts (target: none) and the drift report.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from monitor.analyze.cusum import Cusum
from monitor.analyze.engine import Analysis, AnalysisConfig, analyze
from monitor.analyze.frame import TurnFrame
from monitor.analyze.rank_agreement import auc
from monitor.analyze.segments import SegmentScheme
from monitor.events import parse_conversation, parse_rating
from monitor.risk import is_harmful
from monitor.signals import response_signals
from monitor.sim.scenarios import Scenario
from monitor.sim.traffic import DOMAINS, SimulatedMessage, TrafficSimulator

#: The mode each scenario injects (S0, S5 and S6 are not attribution cases).
SCENARIO_MODES = {"S1": "verbosity", "S2": "sycophancy", "S3": "formatting", "S4": "over-refusal",
                  "S7": "overpromise"}
TURN_RATE = 10.0  # simulated turns per second of event time
SCHEME = SegmentScheme(domains=DOMAINS)


@dataclass
class ScenarioFrame:
    frame: TurnFrame
    hacked: np.ndarray  # ground truth per row of the frame
    after_onset: np.ndarray
    prompts: dict[str, str]  # by event id


def scenario_frame(messages: Iterable[SimulatedMessage], scheme: SegmentScheme = SCHEME) -> ScenarioFrame:
    """A frame (and its hidden truth) from simulated messages, rated as the store would join them."""
    rows: dict[tuple[str, int], dict] = {}
    truth: dict[str, tuple[bool, bool]] = {}
    latest: dict[tuple[str, int], tuple[float, float]] = {}
    prompts: dict[str, str] = {}
    for message in messages:
        if message.kind == "conversation":
            event = parse_conversation(message.value)
            signals = response_signals(event.prompt, event.response, domain=event.segment.domain)
            risk = event.metadata.prompt_risk if event.metadata else None
            rows[(event.conversation_id, event.turn)] = {
                "event_id": str(event.event_id), "conversation_id": event.conversation_id, "turn": event.turn,
                "ts": event.ts, "model_version": event.model_version, "domain": event.segment.domain,
                "locale": event.segment.locale, "score": event.reward, "scorer": "producer", "satisfaction": None,
                "prompt_harmful": risk == "harmful" if risk else is_harmful(event.prompt),
                **signals.as_columns(),
            }
            prompts[str(event.event_id)] = event.prompt
            assert message.truth is not None
            truth[str(event.event_id)] = (message.truth.hacked, message.truth.intensity > 0)
        else:
            rating = parse_rating(message.value)
            key = (rating.conversation_id, rating.turn)
            ts = rating.ts.timestamp()
            if key not in latest or ts >= latest[key][0]:
                latest[key] = (ts, rating.satisfaction)
    for key, (_, satisfaction) in latest.items():
        if key in rows:
            rows[key]["satisfaction"] = satisfaction
    frame = TurnFrame.from_rows(rows.values(), scheme)
    hacked = np.array([truth[e][0] for e in frame.event_id], dtype=bool)
    after = np.array([truth[e][1] for e in frame.event_id], dtype=bool)
    return ScenarioFrame(frame, hacked, after, prompts)


def reference_seconds(config: AnalysisConfig, rating_rate: float, segments: int = len(DOMAINS)) -> float:
    """Event time until every segment has its reference (with a margin for the uneven domain mix)."""
    return 1.6 * config.reference_labels * segments / rating_rate / TURN_RATE


@dataclass
class B1Result:
    labels: int
    false_alarms: int
    river_false_alarms: int | None
    delays: list[int]
    thresholds: dict[str, float]

    @property
    def false_alarms_per_10k(self) -> float:
        return 1e4 * self.false_alarms / max(1, self.labels)

    @property
    def river_per_10k(self) -> float | None:
        return None if self.river_false_alarms is None else 1e4 * self.river_false_alarms / max(1, self.labels)


#: Rated turns per independent S0 stream in B1: each stream has its own references, and a false
#: alarm rate measured on one set of references says more about their luck than about the method.
B1_STREAM_LABELS = 20_000


def run_b1(config: AnalysisConfig, *, labels: int, trials: int, seed: int, shift: float = 0.5) -> B1Result:
    """False alarms on S0 streams (about ``labels`` rated turns in all, in independent streams of
    :data:`B1_STREAM_LABELS`); delays of a ``shift`` SD drop injected at random points."""
    streams: dict[str, tuple[np.ndarray, object]] = {}
    false_alarms = 0
    for index in range(max(1, round(labels / B1_STREAM_LABELS))):
        simulator = TrafficSimulator(seed + 101 * index, rating_rate=1.0, scenario=Scenario("S0"))
        turns = min(labels, B1_STREAM_LABELS) + config.reference_labels * len(DOMAINS) * 2
        data = scenario_frame(simulator.conversations(turns, rate=TURN_RATE))
        analysis = analyze(data.frame, {}, config, SCHEME)
        streams.update({f"{name}#{index}": stream for name, stream in _streams(data.frame, analysis).items()})
        false_alarms += sum(e.detections for e in analysis.episodes)
    total = sum(len(z) for z, _ in streams.values())
    rng = np.random.default_rng(seed)
    delays: list[int] = []
    names = sorted(streams)
    for trial in range(trials):
        z, calibration = streams[names[trial % len(names)]]
        warmup = 200
        start = int(rng.integers(0, max(1, len(z) - warmup - 1000)))
        detector = Cusum(k=calibration.cusum_k, h=calibration.cusum_h)
        for value in z[start:start + warmup]:
            detector.update(float(value))
        delay = None
        # The shift lowers satisfaction (the reward-hacking side); cycle the stream if it runs out.
        for step in range(1, 5000):
            detector.update(float(z[(start + warmup + step) % len(z)]) - shift)
            if detector.drift_detected and detector.direction == "down":
                delay = step
                break
        delays.append(delay if delay is not None else 5000)
    return B1Result(total, false_alarms, _river_false_alarms(streams), delays,
                    {name: c.cusum_h for name, (_, c) in streams.items()})


def _streams(frame: TurnFrame, analysis: Analysis) -> dict[str, tuple[np.ndarray, object]]:
    out = {}
    for segment, calibration in analysis.calibrations.items():
        rows = np.flatnonzero(frame.rated & (frame.segment == segment) & (frame.ts > calibration.reference_to))
        out[segment] = (calibration.standardised_residuals(frame.score[rows], frame.satisfaction[rows]), calibration)
    return out


def _river_false_alarms(streams: dict[str, tuple[np.ndarray, object]]) -> int | None:
    try:
        from river.drift import PageHinkley
    except ImportError:
        return None
    alarms = 0
    for z, _ in streams.values():
        detector = PageHinkley()
        for value in z:
            detector.update(float(value))
            if detector.drift_detected:
                alarms += 1
    return alarms


@dataclass
class ScenarioResult:
    scenario: Scenario
    rating_rate: float
    alerts: list[tuple[str, str, str]]  # (detector, direction, mode) of alerts opened after onset
    early_alerts: int  # alerts before the onset (false alarms)
    auroc: float | None
    delay_labels: int | None  # rated turns of the segment between onset and the first alert
    drift: dict | None = None
    seed: int = 0
    named_mode: str | None = None  # see run_scenario


def run_scenario(scenario: Scenario, config: AnalysisConfig, *, rating_rate: float, seed: int,
                 after_onset_s: float, drift: Callable[[ScenarioFrame, Analysis], dict] | None = None
                 ) -> ScenarioResult:
    simulator = TrafficSimulator(seed, rating_rate=rating_rate, scenario=scenario)
    data = scenario_frame(simulator.messages(TURN_RATE, scenario.onset_s + after_onset_s))
    analysis = analyze(data.frame, {}, config, SCHEME)
    onset = float(data.frame.ts.min()) + scenario.onset_s if len(data.frame) else 0.0
    after = [e for e in analysis.episodes if e.started_at >= onset]
    scored = ~np.isnan(analysis.divergence)
    auroc = None
    if data.hacked[scored].any() and (~data.hacked[scored]).any():
        auroc = float(auc(analysis.divergence[scored], data.hacked[scored]))
    delay = None
    if after:
        first = after[0]
        rated = data.frame.rated & (data.frame.segment == first.segment)
        delay = int((rated & (data.frame.ts >= onset) & (data.frame.ts <= first.started_at)).sum())
    # The mode the monitor names for the shift: that of the down episode with the most detections
    # among those alive after the onset. A false alarm that opened just before the onset in the
    # same segment absorbs the shift into its episode, and its attribution follows the latest window.
    alive = [e for e in analysis.episodes if e.direction == "down" and (e.resolved_at or math.inf) >= onset]
    named = max(alive, key=lambda e: e.detections).mode if alive else None
    return ScenarioResult(scenario, rating_rate, [(e.detector, e.direction, e.mode) for e in after],
                          len(analysis.episodes) - len(after), auroc, delay,
                          drift(data, analysis) if drift else None, seed, named)


def macro_f1(pairs: list[tuple[str, str]]) -> float:
    """Macro-F1 over the true classes of (true mode, predicted mode) pairs."""
    classes = sorted({t for t, _ in pairs})
    scores = []
    for c in classes:
        tp = sum(1 for t, p in pairs if t == c and p == c)
        fp = sum(1 for t, p in pairs if t != c and p == c)
        fn = sum(1 for t, p in pairs if t == c and p != c)
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return statistics.fmean(scores) if scores else math.nan


@dataclass
class DetectBenchmark:
    b1: B1Result
    scenarios: list[ScenarioResult] = field(default_factory=list)

    def attribution_pairs(self) -> list[tuple[str, str]]:
        pairs = []
        for result in self.scenarios:
            truth = SCENARIO_MODES.get(result.scenario.name)
            if truth is None:
                continue
            pairs.append((truth, result.named_mode or "missed"))
        return pairs

    def report(self) -> str:
        b1 = self.b1
        delays = sorted(b1.delays)
        lines = [
            "B1 (S0, rated turns):",
            f"  false alarms: {b1.false_alarms} in {b1.labels} rated turns of {len(b1.thresholds)} segment streams = "
            f"{b1.false_alarms_per_10k:.2f} per 10k (target <= 1)",
            "  river PageHinkley defaults, same streams: "
            + ("not installed" if b1.river_per_10k is None else f"{b1.river_per_10k:.2f} per 10k"),
            f"  delay to a 0.5 SD shift: median {statistics.median(delays):.0f} rated turns "
            f"(p90 {delays[int(0.9 * (len(delays) - 1))]}, {len(delays)} trials; target <= 75)",
        ]
        lines.append("scenarios (size, shape, rating rate: alerts after onset [detector/direction/mode], "
                     "false alarms before, delay, AUROC):")
        for r in self.scenarios:
            alerts = ", ".join(f"{d}/{s}/{m}" for d, s, m in r.alerts) or "none"
            lines.append(f"  {r.scenario.name} {r.scenario.size:g} {r.scenario.shape} {r.rating_rate:.0%} "
                         f"seed {r.seed}: {alerts}; named mode {r.named_mode}; "
                         f"before onset {r.early_alerts}; delay {r.delay_labels}; "
                         f"AUROC {'n/a' if r.auroc is None else f'{r.auroc:.3f}'}")
            if r.drift is not None:
                lines.append(f"    drift report: drifted columns {r.drift.get('drifted_columns')}, embeddings "
                             f"{(r.drift.get('embeddings') or {}).get('drifted')}")
        aurocs = [r.auroc for r in self.scenarios if r.auroc is not None and r.scenario.name in SCENARIO_MODES]
        pairs = self.attribution_pairs()
        s5 = [r for r in self.scenarios if r.scenario.name == "S5"]
        s0 = [r for r in self.scenarios if r.scenario.name == "S0"]
        lines += [
            f"B2 AUROC of the divergence score for hacked turns (S1-S4, S7): "
            f"mean {statistics.fmean(aurocs):.3f}, min {min(aurocs):.3f} (target >= 0.90)" if aurocs else "B2: n/a",
            f"attribution macro-F1 (S1-S4, S7; {len(pairs)} runs): {macro_f1(pairs):.3f} (target >= 0.85)",
            f"S5 divergence alerts after onset: {sum(len(r.alerts) for r in s5)} in {len(s5)} run(s) (target 0)"
            + (f"; S0 control, same seeds and length: {sum(len(r.alerts) for r in s0)} in {len(s0)} run(s)"
               if s0 else ""),
        ]
        return "\n".join(lines)


def s5_drift(data: ScenarioFrame, analysis: Analysis, config: AnalysisConfig, rows: int = 500) -> dict:
    """The drift report the analyzer would build for this frame (prompt embeddings included)."""
    from monitor.analyze.drift import drift_report
    from monitor.analyze.drift_window import COLUMNS, drift_table, drift_windows
    from monitor.analyze.embeddings import PromptEmbedder

    windows = drift_windows(data.frame, analysis, config, rows)
    if windows is None:
        return {"error": "not enough data for a drift report"}
    embedder = PromptEmbedder()
    reference, current = windows
    embed = [embedder.embed([data.prompts[e] for e in data.frame.event_id[index]]) for index in windows]
    return drift_report(drift_table(data.frame, reference), drift_table(data.frame, current), columns=COLUMNS,
                        reference_embeddings=embed[0], current_embeddings=embed[1]).summary


def sweep(name: str, full: bool) -> list[tuple[float, str, float]]:
    """(size, shape, rating rate) runs of one scenario: one strong abrupt shift at 20% ratings, or
    with ``full`` sizes 0.5 and 1 x abrupt and ramp at 20%, plus size 1 abrupt at 5% ratings."""
    if not full:
        return [(1.0, "abrupt", 0.2)]
    return [*((size, shape, 0.2) for size in (0.5, 1.0) for shape in ("abrupt", "ramp")), (1.0, "abrupt", 0.05)]


def run_detect_benchmark(*, full: bool = False, seed: int = 0, b1_labels: int = 100_000, b1_trials: int = 300,
                         scenarios: tuple[str, ...] = ("S1", "S2", "S3", "S4", "S5", "S6", "S7"),
                         labels_after_onset: int = 2000, seeds: int = 1,
                         config: AnalysisConfig | None = None,
                         echo: Callable[[str], None] = print) -> DetectBenchmark:
    """B1 on S0, then each scenario (each run ``seeds`` times); ``labels_after_onset`` rated turns
    per segment after the onset. S5 runs come with S0 runs of the same seeds and length: any
    alert in S5 is only news if it is more than stationary traffic gives."""
    if "S5" in scenarios and "S0" not in scenarios:
        scenarios = (*scenarios, "S0")
    config = config or AnalysisConfig(window_seconds=1800.0)
    echo(f"reference {config.reference_labels} rated turns per segment, false-alarm budget 1 per "
         f"{config.false_alarm_labels} rated turns")
    echo(f"B1: S0 with about {b1_labels} rated turns ...")
    benchmark = DetectBenchmark(run_b1(config, labels=b1_labels, trials=b1_trials, seed=seed))
    echo(f"  {benchmark.b1.false_alarms_per_10k:.2f} false alarms per 10k, "
         f"median delay {statistics.median(benchmark.b1.delays):.0f}")
    for name in scenarios:
        for size, shape, rate in sweep(name, full):
            onset = reference_seconds(config, rate)
            scenario = Scenario(name, size=size, shape=shape, onset_s=onset, ramp_s=onset / 2)
            after = labels_after_onset * len(DOMAINS) / rate / TURN_RATE * (1.5 if shape == "ramp" else 1.0)
            echo(f"{name} size {size:g} {shape}, {rate:.0%} rated ...")
            drift = (lambda data, analysis: s5_drift(data, analysis, config)) if name == "S5" else None
            for run_seed in range(seed + 1, seed + 1 + seeds):
                result = run_scenario(scenario, config, rating_rate=rate, seed=run_seed, after_onset_s=after,
                                      drift=drift)
                benchmark.scenarios.append(result)
                echo(f"  seed {run_seed}: alerts after onset {[f'{d}/{m}' for _, d, m in result.alerts]}, "
                     f"AUROC {result.auroc}")
    return benchmark
