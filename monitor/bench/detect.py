"""`monitor bench detect`: detection quality on simulated scenarios with hidden ground truth.

Runs the analysis engine (the same code `serve` runs) on frames built straight from simulated
events, so no broker or database sits in the measurement:

- **B1** false alarms per 10,000 rated turns per segment on stationary streams, per rating kind
  (:mod:`monitor.bench.false_alarms`): the simulator's S0 and streams written apart from it; the
  median delay to a 0.5 SD residual shift injected into those streams; river's PageHinkley with its
  threshold tuned to the same false-alarm rate on the same streams.
- **B2** AUROC of the per-sample divergence score for the ground-truth hacked turns.
- **Attribution** macro-F1 of the named mode over S1-S4 and S7 alerts; with ``phrasing``
  including ``"paraphrase"``, also on those scenarios written with the paraphrase banks (wordings
  the style classifiers never saw): the held-out attribution F1. Signals come from
  :func:`monitor.signals.derive_signals`, the production path.
- **S5** (covariate-only shift): divergence alerts (target: none) and the drift report.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from monitor.analyze.drift_window import reference_event_ids
from monitor.analyze.engine import AnalysisConfig, Replay, divergence_scores, entry_times, replay
from monitor.analyze.frame import TurnFrame
from monitor.analyze.rank_agreement import auc
from monitor.analyze.segments import SegmentScheme
from monitor.bench.false_alarms import B1Result, run_b1
from monitor.events import parse_conversation, parse_rating
from monitor.risk import is_harmful
from monitor.signals import derive_signals
from monitor.sim.scenarios import Scenario
from monitor.sim.traffic import DOMAINS, PHRASINGS, SimulatedMessage, TrafficSimulator

#: The mode each scenario injects (S0, S5 and S6 are not attribution cases).
SCENARIO_MODES = {"S1": "verbosity", "S2": "sycophancy", "S3": "formatting", "S4": "over-refusal",
                  "S7": "overpromise"}
TURN_RATE = 10.0  # simulated turns per second of event time
SCHEDULE_SECONDS = 60.0  # the service's analyzer schedule, replayed in event time
SCHEME = SegmentScheme(domains=DOMAINS)
#: Turns per :func:`derive_signals` call in :func:`scenario_frame` (bounds the sentence lists in memory).
SIGNAL_BATCH = 20_000


@dataclass
class ScenarioFrame:
    frame: TurnFrame
    hacked: np.ndarray  # ground truth per row of the frame
    after_onset: np.ndarray
    prompts: dict[str, str]  # by event id
    entries: TurnFrame  # one row per joined rating, as the analyzer consumes them


def scenario_frame(messages: Iterable[SimulatedMessage], scheme: SegmentScheme = SCHEME) -> ScenarioFrame:
    """A frame (and its hidden truth) from simulated messages, rated as the store would join them."""
    rows: dict[tuple[str, int], dict] = {}
    truth: dict[str, tuple[bool, bool]] = {}
    latest: dict[tuple[str, int], tuple[float, float]] = {}
    ratings: list[tuple[tuple[str, int], float, float, str]] = []  # key, ts, satisfaction, rating id
    prompts: dict[str, str] = {}
    texts: dict[tuple[str, int], tuple[str, str, str]] = {}  # (prompt, response, domain) per turn
    for message in messages:
        if message.kind == "conversation":
            event = parse_conversation(message.value)
            texts[(event.conversation_id, event.turn)] = (event.prompt, event.response, event.segment.domain)
            risk = event.metadata.prompt_risk if event.metadata else None
            rows[(event.conversation_id, event.turn)] = {
                "event_id": str(event.event_id), "conversation_id": event.conversation_id, "turn": event.turn,
                "ts": event.ts, "model_version": event.model_version, "domain": event.segment.domain,
                "locale": event.segment.locale, "score": event.reward, "scorer": "producer", "satisfaction": None,
                "prompt_harmful": risk == "harmful" if risk else is_harmful(event.prompt),
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
            ratings.append((key, ts, rating.satisfaction, str(rating.event_id)))
    # The signals as the analyzer derives them: in batches, each distinct sentence classified once.
    keys = list(texts)
    for start in range(0, len(keys), SIGNAL_BATCH):
        batch = keys[start:start + SIGNAL_BATCH]
        for key, signals in zip(batch, derive_signals([texts[k] for k in batch]), strict=True):
            rows[key].update(signals.as_columns())
    for key, (_, satisfaction) in latest.items():
        if key in rows:
            rows[key]["satisfaction"] = satisfaction
    entries = TurnFrame.from_rows([{**rows[key], "satisfaction": satisfaction, "rated_ts": ts, "rating_id": rating_id}
                                   for key, ts, satisfaction, rating_id in ratings if key in rows], scheme)
    frame = TurnFrame.from_rows(rows.values(), scheme)
    hacked = np.array([truth[e][0] for e in frame.event_id], dtype=bool)
    after = np.array([truth[e][1] for e in frame.event_id], dtype=bool)
    return ScenarioFrame(frame, hacked, after, prompts, entries)


def reference_seconds(config: AnalysisConfig, rating_rate: float, segments: int = len(DOMAINS)) -> float:
    """Event time until every segment has its reference (with a margin for the uneven domain mix)."""
    return 1.6 * config.reference_labels * segments / rating_rate / TURN_RATE


@dataclass
class ScenarioResult:
    scenario: Scenario
    rating_rate: float
    alerts: list[tuple[str, str, str]]  # (detector, direction, mode) of alerts opened after onset
    early_alerts: int  # alerts before the onset (false alarms)
    auroc: float | None  # of the divergence each turn got from the run after its arrival
    delay_labels: int | None  # rated turns of the segment between onset and the first alert
    drift: dict | None = None
    seed: int = 0
    named_mode: str | None = None  # see run_scenario
    phrasing: str = "bank"  # the simulator's wording of the style phrases (see PHRASINGS)
    auroc_final: float | None = None  # of the divergence every turn gets from the final state


def run_scenario(scenario: Scenario, config: AnalysisConfig, *, rating_rate: float, seed: int,
                 after_onset_s: float, drift: Callable[[ScenarioFrame, Replay], dict] | None = None,
                 phrasing: str = "bank") -> ScenarioResult:
    """One scenario run through :func:`replay`: the engine as the service's one-minute schedule
    runs it, divergence scored by the run after each turn arrived."""
    simulator = TrafficSimulator(seed, rating_rate=rating_rate, scenario=scenario, phrasing=phrasing)
    data = scenario_frame(simulator.messages(TURN_RATE, scenario.onset_s + after_onset_s))
    result = replay(data.frame, config, entries=data.entries, step_seconds=SCHEDULE_SECONDS)
    episodes = sorted(result.episodes.values(), key=lambda e: (e.started_at, e.key))
    onset = float(data.frame.ts.min()) + scenario.onset_s if len(data.frame) else 0.0
    after = [e for e in episodes if e.started_at >= onset]
    auroc, auroc_final = _auroc(result.divergence, data.hacked), \
        _auroc(divergence_scores(result.states, data.frame), data.hacked)
    delay = None
    if after:
        first = after[0]
        entries = data.entries
        entered = entry_times(entries)
        delay = int((entries.rated & (entries.segment == first.segment) & (entries.ts >= onset)
                     & (entered <= first.started_at)).sum())
    # The mode the monitor names for the shift: that of the down episode with the most detections
    # among those alive after the onset. A false alarm that opened just before the onset in the
    # same segment absorbs the shift into its episode, and its attribution follows the latest window.
    alive = [e for e in episodes if e.direction == "down" and (e.resolved_at or math.inf) >= onset]
    named = max(alive, key=lambda e: e.detections).mode if alive else None
    return ScenarioResult(scenario, rating_rate, [(e.detector, e.direction, e.mode or "") for e in after],
                          len(episodes) - len(after), auroc, delay,
                          drift(data, result) if drift else None, seed, named, phrasing, auroc_final)


def _auroc(divergence: np.ndarray, hacked: np.ndarray) -> float | None:
    scored = ~np.isnan(divergence)
    if not (hacked[scored].any() and (~hacked[scored]).any()):
        return None
    return float(auc(divergence[scored], hacked[scored]))


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
    #: S1-S4 and S7 run again with the paraphrase banks: wordings the signals were not fitted to.
    paraphrased: list[ScenarioResult] = field(default_factory=list)

    def attribution_pairs(self, results: list[ScenarioResult] | None = None) -> list[tuple[str, str]]:
        pairs = []
        for result in self.scenarios if results is None else results:
            truth = SCENARIO_MODES.get(result.scenario.name)
            if truth is None:
                continue
            pairs.append((truth, result.named_mode or "missed"))
        return pairs

    def report(self) -> str:
        lines = self.b1.report_lines()
        lines.append("scenarios (size, shape, rating rate: alerts after onset [detector/direction/mode], "
                     "false alarms before, delay, AUROC):")
        for r in self.scenarios:
            alerts = ", ".join(f"{d}/{s}/{m}" for d, s, m in r.alerts) or "none"
            lines.append(f"  {r.scenario.name} {r.scenario.size:g} {r.scenario.shape} {r.rating_rate:.0%} "
                         f"seed {r.seed}: {alerts}; named mode {r.named_mode}; "
                         f"before onset {r.early_alerts}; delay {r.delay_labels}; "
                         f"AUROC {_fmt(r.auroc)} (final state {_fmt(r.auroc_final)})")
            if r.drift is not None:
                lines.append(f"    drift report: drifted columns {r.drift.get('drifted_columns')}, embeddings "
                             f"{(r.drift.get('embeddings') or {}).get('drifted')}")
        for r in self.paraphrased:
            alerts = ", ".join(f"{d}/{s}/{m}" for d, s, m in r.alerts) or "none"
            lines.append(f"  {r.scenario.name} {r.scenario.size:g} {r.scenario.shape} {r.rating_rate:.0%} "
                         f"seed {r.seed}, paraphrase banks: {alerts}; named mode {r.named_mode}; "
                         f"AUROC {'n/a' if r.auroc is None else f'{r.auroc:.3f}'}")
        aurocs = [r.auroc for r in self.scenarios if r.auroc is not None and r.scenario.name in SCENARIO_MODES]
        finals = [r.auroc_final for r in self.scenarios
                  if r.auroc_final is not None and r.scenario.name in SCENARIO_MODES]
        pairs = self.attribution_pairs()
        s5 = [r for r in self.scenarios if r.scenario.name == "S5"]
        s0 = [r for r in self.scenarios if r.scenario.name == "S0"]
        lines += [
            f"B2 AUROC of the divergence score for hacked turns (S1-S4, S7), each turn scored by the run after "
            f"its arrival: mean {statistics.fmean(aurocs):.3f}, min {min(aurocs):.3f} (target >= 0.90)"
            if aurocs else "B2: n/a",
            f"B2 with every turn scored by the final state: mean {statistics.fmean(finals):.3f}, "
            f"min {min(finals):.3f}" if finals else "B2 final: n/a",
            f"attribution macro-F1 (S1-S4, S7; {len(pairs)} runs): {macro_f1(pairs):.3f} (target >= 0.85)",
            *([f"held-out attribution macro-F1 on paraphrase banks (S1-S4, S7; {len(held_out)} runs): "
               f"{macro_f1(held_out):.3f} (target >= 0.85)"]
              if (held_out := self.attribution_pairs(self.paraphrased)) else []),
            f"S5 divergence alerts after onset: {sum(len(r.alerts) for r in s5)} in {len(s5)} run(s) (target 0)"
            + (f"; S0 control, same seeds and length: {sum(len(r.alerts) for r in s0)} in {len(s0)} run(s)"
               if s0 else ""),
        ]
        return "\n".join(lines)


def s5_drift(data: ScenarioFrame, result: Replay, config: AnalysisConfig, rows: int = 500) -> dict:
    """The drift report the analyzer would build at the end of this run (prompt embeddings included)."""
    from monitor.analyze.drift import drift_report
    from monitor.analyze.drift_window import COLUMNS, drift_samples, drift_table
    from monitor.analyze.embeddings import PromptEmbedder

    frame = data.frame
    samples = drift_samples(frame.take(np.flatnonzero(np.isin(frame.event_id, reference_event_ids(result.states)))),
                            frame.take(np.flatnonzero(frame.ts > frame.ts.max() - config.window_seconds)), rows)
    if samples is None:
        return {"error": "not enough data for a drift report"}
    embedder = PromptEmbedder()
    embed = [embedder.embed([data.prompts[e] for e in sample.event_id]) for sample in samples]
    return drift_report(drift_table(samples[0]), drift_table(samples[1]), columns=COLUMNS,
                        reference_embeddings=embed[0], current_embeddings=embed[1]).summary


def sweep(name: str, full: bool) -> list[tuple[float, str, float]]:
    """(size, shape, rating rate) runs of one scenario: one strong abrupt shift at 20% ratings, or
    with ``full`` sizes 0.5 and 1 x abrupt and ramp at 20%, plus size 1 abrupt at 5% ratings."""
    if not full:
        return [(1.0, "abrupt", 0.2)]
    return [*((size, shape, 0.2) for size in (0.5, 1.0) for shape in ("abrupt", "ramp")), (1.0, "abrupt", 0.05)]


def run_detect_benchmark(*, full: bool = False, seed: int = 0, b1_labels: int = 100_000, b1_trials: int = 300,
                         b1_kind_streams: int = 60,
                         scenarios: tuple[str, ...] = ("S1", "S2", "S3", "S4", "S5", "S6", "S7"),
                         labels_after_onset: int = 2000, seeds: int = 1,
                         config: AnalysisConfig | None = None, phrasing: tuple[str, ...] = ("bank",),
                         echo: Callable[[str], None] = print) -> DetectBenchmark:
    """B1 on S0 and ``b1_kind_streams`` stationary streams per rating kind, then each scenario (each
    run ``seeds`` times); ``labels_after_onset`` rated turns
    per segment after the onset. S5 runs come with S0 runs of the same seeds and length: any
    alert in S5 is only news if it is more than stationary traffic gives. ``phrasing`` names the
    wordings S1-S4 and S7 run with: with ``"paraphrase"`` they run (again) on the paraphrase banks,
    reported apart as the held-out attribution F1; the other scenarios always use the banks."""
    unknown = [name for name in phrasing if name not in PHRASINGS]
    if unknown or not phrasing:
        raise ValueError(f"phrasing must name some of {', '.join(PHRASINGS)}, got {phrasing!r}")
    if "S5" in scenarios and "S0" not in scenarios:
        scenarios = (*scenarios, "S0")
    config = config or AnalysisConfig(window_seconds=1800.0, rank_family=len(SCHEME.all_keys()))
    echo(f"reference {config.reference_labels} rated turns per segment, false-alarm budget 1 per "
         f"{config.false_alarm_labels} rated turns")
    echo(f"B1: S0 with about {b1_labels} rated turns, {b1_kind_streams} streams per rating kind ...")
    b1 = run_b1(labels=b1_labels, kind_streams=b1_kind_streams, trials=b1_trials, seed=seed,
                reference_labels=config.reference_labels, false_alarm_labels=config.false_alarm_labels,
                shift_sd=config.shift_sd, calibration_seed=config.seed, echo=echo)
    benchmark = DetectBenchmark(b1)
    echo("  " + ", ".join(f"{r.source} {r.false_alarms_per_10k:.2f} false alarms per 10k, median delay "
                          f"{statistics.median(r.delays) if r.delays else math.nan:.0f}" for r in b1.rows))
    for name in scenarios:
        for size, shape, rate in sweep(name, full):
            onset = reference_seconds(config, rate)
            scenario = Scenario(name, size=size, shape=shape, onset_s=onset, ramp_s=onset / 2)
            after = labels_after_onset * len(DOMAINS) / rate / TURN_RATE * (1.5 if shape == "ramp" else 1.0)
            echo(f"{name} size {size:g} {shape}, {rate:.0%} rated ...")
            drift = (lambda data, result: s5_drift(data, result, config)) if name == "S5" else None
            wordings = phrasing if name in SCENARIO_MODES else ("bank",)
            for run_seed, wording in itertools.product(range(seed + 1, seed + 1 + seeds), wordings):
                result = run_scenario(scenario, config, rating_rate=rate, seed=run_seed, after_onset_s=after,
                                      drift=drift, phrasing=wording)
                (benchmark.scenarios if wording == "bank" else benchmark.paraphrased).append(result)
                echo(f"  seed {run_seed}{'' if wording == 'bank' else ', ' + wording + ' banks'}: alerts after "
                     f"onset {[f'{d}/{m}' for _, d, m in result.alerts]}, AUROC {result.auroc}")
    return benchmark


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
