"""B1 of `monitor bench detect`: false alarms on stationary streams, per rating kind, and the delay to
a shift, against river's PageHinkley tuned to the same false-alarm rate.

Each *source* of stationary streams is a row of the report:

- **simulator** S0 traffic (the simulator's mix: 70% thumbs, 20% stars, 10% scores), one stream
  per segment of each independent run;
- **thumbs**, **stars**, **score**: streams of :mod:`monitor.bench.rating_kinds`, written apart
  from the simulator, one world (reward distribution, calibration curve, raters) per stream.

Every stream goes through the production pieces, not the analysis engine: ``fit_calibration`` on
its first ``reference_labels`` rated turns, ``Calibration.standardised_residuals`` on the rest,
``cusum_alarms`` with the fitted ``k`` and ``h``. A stream is stationary, so each alarm is false.

**Delay**: at a random point of a stream (after 200 in-control values since the CUSUM's last
start) every later residual is lowered by ``shift`` SDs; the delay is the number of rated turns
until the first "down" alarm (5,000 if none). PageHinkley gets the same streams and shift points,
started ``reference_labels + 200`` values before the shift (the data the CUSUM's reference and
warm-up saw), with ``delta = k`` (its allowance, as the CUSUM's) and its ``threshold`` bisected
until it raises as many false alarms as our CUSUM on the same stationary streams (one, where the
CUSUM raised none: zero would need an infinite threshold); its defaults' rate is shown beside.
Two variants: river's default ``alpha = 0.9999``, whose fading sums turn the test into a slowly
mean-reverting walk with an SD of ~70 that only a high threshold keeps quiet, and ``alpha = 1``,
the classic Page-Hinkley test: a CUSUM around the mean of everything since its last restart.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from monitor.analyze.calibration import Calibration, fit_calibration
from monitor.analyze.cusum import Cusum, cusum_alarms
from monitor.analyze.segments import SegmentScheme
from monitor.bench import page_hinkley
from monitor.bench.rating_kinds import RATING_KINDS, draw_world, false_alarm_trial
from monitor.events import parse_conversation, parse_rating
from monitor.sim.scenarios import Scenario
from monitor.sim.traffic import DOMAINS, SimulatedMessage, TrafficSimulator

SIMULATOR = "simulator"
SOURCES = (SIMULATOR, *RATING_KINDS)
#: Rated turns per independent stream: each stream has its own reference, and a false-alarm rate
#: measured on a few references says more about their luck than about the method.
B1_STREAM_LABELS = 20_000
_WARMUP = 200  # in-control values the CUSUM sees after its last start, before a shift
_MAX_DELAY = 5_000
_SCHEME = SegmentScheme(domains=DOMAINS)


#: PageHinkley variants compared: river's fading sums (its default alpha), and none (the classic test).
PAGE_HINKLEY_ALPHAS = (page_hinkley.RIVER_DEFAULTS["alpha"], 1.0)


@dataclass
class PageHinkleyRun:
    """PageHinkley with one ``alpha``, its threshold tuned to the CUSUM's false alarms on the same streams."""

    alpha: float
    threshold: float
    false_alarms: int
    delays: list[int] = field(default_factory=list)


@dataclass
class B1Row:
    """One source's streams: the CUSUM's false alarms and delays, and PageHinkley's on the same streams."""

    source: str  # SIMULATOR or a rating kind
    streams: int
    labels: int  # rated turns after the references
    false_alarms: int
    delays: list[int]
    thresholds: list[float]  # the CUSUM's h, per stream
    page_hinkley: list[PageHinkleyRun] = field(default_factory=list)  # one per PAGE_HINKLEY_ALPHAS
    page_hinkley_default_false_alarms: int | None = None  # river's PageHinkley() as shipped

    @property
    def false_alarms_per_10k(self) -> float:
        return 1e4 * self.false_alarms / max(1, self.labels)

    def per_10k(self, alarms: int) -> float:
        return 1e4 * alarms / max(1, self.labels)


@dataclass
class B1Result:
    rows: list[B1Row]
    reference_labels: int
    page_hinkley_delta: float

    def row(self, source: str) -> B1Row:
        return next(r for r in self.rows if r.source == source)

    @property
    def false_alarms_per_10k(self) -> float:
        """Over every stream of every source."""
        return 1e4 * sum(r.false_alarms for r in self.rows) / max(1, sum(r.labels for r in self.rows))

    def report_lines(self) -> list[str]:
        lines = [f"B1 (stationary streams, {self.reference_labels}-label references; rated turns):"]
        for r in self.rows:
            lines.append(f"  {_label(r.source)}: false alarms: {r.false_alarms} in {r.labels} rated turns of "
                         f"{r.streams} streams = {r.false_alarms_per_10k:.2f} per 10k (target <= 1); "
                         f"delay to a 0.5 SD shift: median {_median(r.delays)} ({_p90(r.delays)}, "
                         f"{len(r.delays)} trials; target <= 75)")
        lines.append(f"  river PageHinkley (delta {self.page_hinkley_delta:g}), threshold tuned to the same false "
                     "alarms on the same streams, same shifts:")
        for r in self.rows:
            if r.page_hinkley_default_false_alarms is not None:
                lines.append(f"    {_label(r.source)}: PageHinkley() defaults "
                             f"{r.per_10k(r.page_hinkley_default_false_alarms):.2f} per 10k")
            for run in r.page_hinkley:
                ratio = statistics.median(run.delays) / max(1.0, statistics.median(r.delays))
                lines.append(f"      alpha {run.alpha:g}: threshold {run.threshold:.1f}, "
                             f"{r.per_10k(run.false_alarms):.2f} per 10k, delay median {_median(run.delays)} "
                             f"({_p90(run.delays)}) = {ratio:.2f}x the CUSUM's")
        return lines


def _label(source: str) -> str:
    return "simulator S0 (mixed kinds)" if source == SIMULATOR else source


def _median(delays: list[int]) -> str:
    return f"{statistics.median(delays):.0f}" if delays else "n/a"


def _p90(delays: list[int]) -> str:
    return f"p90 {sorted(delays)[int(0.9 * (len(delays) - 1))]}" if delays else "p90 n/a"


@dataclass(frozen=True)
class _Stream:
    z: np.ndarray  # standardised residuals after the reference, serving order
    calibration: Calibration


def simulator_streams(messages: Iterable[SimulatedMessage], reference_labels: int, *, false_alarm_labels: int,
                      shift_sd: float, seed: int) -> list[_Stream]:
    """Per segment of one simulator run: rated turns in serving order (the latest rating of a turn
    counts), a calibration fitted on the first ``reference_labels``, residuals of the rest."""
    turns: dict[tuple[str, int], tuple[float, str, float]] = {}
    ratings: dict[tuple[str, int], tuple[float, float]] = {}
    for message in messages:
        if message.kind == "conversation":
            event = parse_conversation(message.value)
            if event.reward is not None:
                segment = _SCHEME.key(event.segment.domain, event.model_version, event.segment.locale)
                turns[(event.conversation_id, event.turn)] = (event.ts.timestamp(), segment, event.reward)
        else:
            rating = parse_rating(message.value)
            key, ts = (rating.conversation_id, rating.turn), rating.ts.timestamp()
            if key not in ratings or ts >= ratings[key][0]:
                ratings[key] = (ts, rating.satisfaction)
    rated = sorted((ts, segment, reward, ratings[key][1]) for key, (ts, segment, reward) in turns.items()
                   if key in ratings)
    streams = []
    for segment in sorted({row[1] for row in rated}):
        rows = [row for row in rated if row[1] == segment]
        if len(rows) <= reference_labels:
            continue
        served, reward, satisfaction = (np.array([row[i] for row in rows], dtype=float) for i in (0, 2, 3))
        reference = slice(0, reference_labels)
        calibration = fit_calibration(reward[reference], satisfaction[reference], np.zeros((reference_labels, 1)),
                                      served[reference], shift_sd=shift_sd, false_alarm_labels=false_alarm_labels,
                                      seed=seed)
        streams.append(_Stream(calibration.standardised_residuals(reward[reference_labels:],
                                                                  satisfaction[reference_labels:]), calibration))
    return streams


def run_b1(*, labels: int, kind_streams: int, trials: int, seed: int, reference_labels: int = 500,
           false_alarm_labels: int = 10_000, shift_sd: float = 0.5, calibration_seed: int = 0,
           sources: tuple[str, ...] = SOURCES, echo: Callable[[str], None] = lambda line: None) -> B1Result:
    """B1 over ``sources``: the simulator's S0 (about ``labels`` rated turns in independent runs of
    :data:`B1_STREAM_LABELS`), and ``kind_streams`` streams of ``min(labels, B1_STREAM_LABELS)``
    rated turns per rating kind; ``trials`` shifts of ``shift_sd`` SDs per source for the delays."""
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise ValueError(f"sources must be among {', '.join(SOURCES)}, got {unknown!r}")
    rows = []
    for source in sources:
        echo(f"B1 {_label(source)} ...")
        if source == SIMULATOR:
            streams = []
            for index in range(max(1, round(labels / B1_STREAM_LABELS))):
                simulator = TrafficSimulator(seed + 101 * index, rating_rate=1.0, scenario=Scenario("S0"))
                turns = min(labels, B1_STREAM_LABELS) + reference_labels * len(_SCHEME.all_keys()) * 2
                streams += simulator_streams(simulator.conversations(turns), reference_labels,
                                             false_alarm_labels=false_alarm_labels, shift_sd=shift_sd,
                                             seed=calibration_seed)
        else:
            index = RATING_KINDS.index(source)
            streams = []
            for stream in range(kind_streams):
                rng = np.random.default_rng([seed, index, stream])
                trial = false_alarm_trial(draw_world(source, rng), reference_labels=reference_labels,
                                          labels=min(labels, B1_STREAM_LABELS), rng=rng,
                                          false_alarm_labels=false_alarm_labels, shift_sd=shift_sd,
                                          seed=calibration_seed)
                streams.append(_Stream(trial.z, trial.calibration))
        rows.append(_measure(source, streams, trials, np.random.default_rng([seed, SOURCES.index(source)]),
                             shift_sd, reference_labels))
    return B1Result(rows, reference_labels, shift_sd / 2)


def _measure(source: str, streams: list[_Stream], trials: int, rng: np.random.Generator, shift: float,
             reference_labels: int) -> B1Row:
    false_alarms = sum(len(cusum_alarms(s.z, k=s.calibration.cusum_k, h=s.calibration.cusum_h)) for s in streams)
    row = B1Row(source, len(streams), sum(len(s.z) for s in streams), false_alarms, [],
                [s.calibration.cusum_h for s in streams])
    if not streams:
        return row
    delta = streams[0].calibration.cusum_k
    z = [s.z for s in streams]
    row.page_hinkley_default_false_alarms = sum(len(page_hinkley.page_hinkley_alarms(v)) for v in z)
    for alpha in PAGE_HINKLEY_ALPHAS:
        # Zero false alarms would need an infinite threshold: match one alarm then.
        threshold = page_hinkley.tune_threshold(z, max(1, false_alarms), delta=delta, alpha=alpha)
        alarms = int(page_hinkley.alarm_counts(z, np.array([threshold]), delta=delta, alpha=alpha)[0])
        row.page_hinkley.append(PageHinkleyRun(alpha, threshold, alarms))
    lead_in = reference_labels + _WARMUP  # PageHinkley's data before the shift
    for trial in range(trials):
        stream = streams[trial % len(streams)]
        values, calibration = stream.z, stream.calibration
        change = int(rng.integers(min(lead_in, len(values) - 1), len(values)))
        # After the change every value is lowered by the shift; a stream that runs out cycles.
        after = values[(change + np.arange(_MAX_DELAY)) % len(values)] - shift
        detector = Cusum(k=calibration.cusum_k, h=calibration.cusum_h)
        for value in values[max(0, change - _WARMUP):change].tolist():
            detector.update(value)
        row.delays.append(_first_down(detector, after))
        before = values[max(0, change - lead_in):change]
        for run in row.page_hinkley:
            alarms_at = page_hinkley.page_hinkley_alarms(np.concatenate([before, after]), threshold=run.threshold,
                                                         delta=delta, alpha=run.alpha)
            downs = [i - len(before) + 1 for i, direction in alarms_at if direction == "down" and i >= len(before)]
            run.delays.append(downs[0] if downs else _MAX_DELAY)
    return row


def _first_down(detector: Cusum, values: np.ndarray) -> int:
    for step, value in enumerate(values.tolist(), start=1):
        detector.update(value)
        if detector.drift_detected and detector.direction == "down":
            return step
    return _MAX_DELAY
