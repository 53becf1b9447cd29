"""The analysis itself: a pure function from a :class:`TurnFrame` (and the frozen calibrations) to
divergence episodes, per-segment statistics and per-sample divergence scores.

Per segment, in serving order:

1. **Reference**: the segment's first ``reference_labels`` rated turns fit a :class:`Calibration`
   (reward -> P(satisfied)), once; it is frozen afterwards.
2. **Residual stream**: every later rated turn gives ``z = (satisfaction - P) / residual_sd``.
3. **CUSUM** (two-sided, threshold calibrated to the false-alarm budget on the reference
   residuals) over that stream. A detection opens an episode (or extends the open one in its
   direction); the episode resolves when the last ``resolve_labels`` rated turns, all after its
   latest detection, show a mean shift under a quarter of the design shift.
4. **Rank agreement**: consecutive windows of ``rank_window`` rated turns test whether the
   Spearman correlation of reward and satisfaction dropped below the reference; windows ending in
   the same event-time bucket form one family across segments, Benjamini-Hochberg at ``rank_fdr``.
5. **Attribution** of each episode to reward-hacking modes over its latest ``rank_window`` turns.

Nothing here reads a clock: time is the events' ``ts``, so a backfill gives the alerts that living
through the same traffic gave.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from monitor.analyze.attribution import attribute
from monitor.analyze.calibration import Calibration, fit_calibration
from monitor.analyze.cusum import Cusum
from monitor.analyze.divergence import divergence_scores
from monitor.analyze.frame import TurnFrame
from monitor.analyze.multiple_testing import benjamini_hochberg
from monitor.analyze.rank_agreement import auc, spearman, spearman_drop
from monitor.analyze.segments import SegmentScheme
from monitor.config import Settings
from monitor.events import timestamp
from monitor.signals import SIGNAL_NAMES

DETECTORS = ("cusum", "rank_drop")
_REFUSAL = SIGNAL_NAMES.index("refusal")


@dataclass(frozen=True)
class AnalysisConfig:
    reference_labels: int = 500
    shift_sd: float = 0.5
    false_alarm_labels: int = 10_000
    rank_window: int = 300
    rank_fdr: float = 0.001
    resolve_labels: int = 300
    window_seconds: float = 3600.0
    top_examples: int = 5
    seed: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> AnalysisConfig:
        return cls(
            reference_labels=settings.analyze_reference_labels, shift_sd=settings.analyze_shift_sd,
            false_alarm_labels=settings.analyze_false_alarm_labels, rank_window=settings.analyze_rank_window,
            rank_fdr=settings.analyze_rank_fdr, resolve_labels=settings.analyze_resolve_labels,
            window_seconds=settings.analyze_window_minutes * 60.0,
        )


@dataclass
class Episode:
    """One divergence episode of one segment and detector."""

    segment: str
    detector: str
    direction: str  # "down": users less satisfied than the RM predicts (the reward-hacking side)
    started_at: float  # event time of the first detection
    resolved_at: float | None
    detections: int
    last_index: int  # position in the segment's residual stream of the latest detection
    mode: str = ""
    modes: tuple[str, ...] = ()
    evidence: dict = field(default_factory=dict)

    @property
    def state(self) -> str:
        return "firing" if self.resolved_at is None else "resolved"

    @property
    def key(self) -> str:
        return f"{self.segment}|{self.detector}|{self.direction}|{iso(self.started_at)}"


@dataclass
class Analysis:
    calibrations: dict[str, Calibration]
    fitted: list[str]  # segments whose calibration this run fitted
    episodes: list[Episode]
    segments: list[dict]
    divergence: np.ndarray  # per turn of the frame (NaN where unscored)
    watermark: float | None
    labelled: int


@dataclass
class _Stream:
    """A segment's rated turns after its reference, in serving order."""

    index: np.ndarray  # rows of the frame
    z: np.ndarray
    residual: np.ndarray
    reference_index: np.ndarray


def analyze(frame: TurnFrame, calibrations: Mapping[str, Calibration], config: AnalysisConfig,
            scheme: SegmentScheme) -> Analysis:
    calibrations = dict(calibrations)
    fitted: list[str] = []
    rated = frame.rated
    streams: dict[str, _Stream] = {}
    for segment in sorted(set(frame.segment[rated])):
        rows = np.flatnonzero(rated & (frame.segment == segment))
        if segment not in calibrations:
            if len(rows) < config.reference_labels:
                continue
            reference = rows[: config.reference_labels]
            calibrations[segment] = fit_calibration(
                frame.score[reference], frame.satisfaction[reference], frame.signals[reference], frame.ts[reference],
                shift_sd=config.shift_sd, false_alarm_labels=config.false_alarm_labels, seed=config.seed)
            fitted.append(segment)
        calibration = calibrations[segment]
        in_reference = (frame.ts[rows] >= calibration.reference_from) & (frame.ts[rows] <= calibration.reference_to)
        after = rows[frame.ts[rows] > calibration.reference_to]
        residual = frame.satisfaction[after] - calibration.predict(frame.score[after])
        streams[segment] = _Stream(after, residual / calibration.residual_sd, residual, rows[in_reference])

    divergence = divergence_scores(frame)
    episodes: list[Episode] = []
    for segment, stream in streams.items():
        episodes += _cusum_episodes(segment, stream, frame, calibrations[segment], config)
    episodes += _rank_episodes(streams, frame, calibrations, config)
    for episode in episodes:
        _explain(episode, streams[episode.segment], frame, calibrations[episode.segment], divergence, config)

    watermark = float(frame.ts.max()) if len(frame) else None
    segments = [_segment_stats(key, frame, calibrations.get(key), streams.get(key), episodes, watermark, config)
                for key in _reported_segments(scheme, frame)]
    episodes.sort(key=lambda e: (e.started_at, e.segment, e.detector, e.direction))
    return Analysis(calibrations, fitted, episodes, segments, divergence, watermark, int(rated.sum()))


def _cusum_episodes(segment: str, stream: _Stream, frame: TurnFrame, calibration: Calibration,
                    config: AnalysisConfig) -> list[Episode]:
    """Detections in one direction extend the open episode; it resolves once a full window of
    ``resolve_labels`` rated turns after its latest detection shows less than a quarter of the
    design shift (mean z within ``k / 2``): the shift is gone, not merely slow to re-detect. A
    shift near ``k`` re-detects slowly (``h / (shift - k)`` turns), so quiet time alone would
    resolve an episode that is still going on."""
    detector = Cusum(k=calibration.cusum_k, h=calibration.cusum_h)
    open_: dict[str, Episode] = {}
    episodes: list[Episode] = []
    ts = frame.ts[stream.index]
    window = config.resolve_labels
    running = np.concatenate([[0.0], np.cumsum(stream.z)])
    for i, value in enumerate(stream.z):
        detector.update(float(value))
        if detector.drift_detected:
            direction = detector.direction or "down"
            current = open_.get(direction)
            if current is not None:
                current.detections += 1
                current.last_index = i
            else:
                open_[direction] = Episode(segment, "cusum", direction, float(ts[i]), None, 1, i)
                episodes.append(open_[direction])
        for direction, current in list(open_.items()):
            if i - current.last_index < window:
                continue
            trailing = (running[i + 1] - running[i + 1 - window]) / window
            if (trailing if direction == "up" else -trailing) < calibration.cusum_k / 2:
                current.resolved_at = float(ts[i])
                del open_[direction]
    for episode in episodes:
        episode.evidence["cusum"] = {"k": calibration.cusum_k, "h": calibration.cusum_h}
    return episodes


def _rank_episodes(streams: Mapping[str, _Stream], frame: TurnFrame, calibrations: Mapping[str, Calibration],
                   config: AnalysisConfig) -> list[Episode]:
    tests: list[tuple[str, int, float, float, dict]] = []  # segment, window end position, end ts, p, stats
    for segment, stream in streams.items():
        reference = stream.reference_index
        for end in range(config.rank_window, len(stream.index) + 1, config.rank_window):
            window = stream.index[end - config.rank_window:end]
            drop = spearman_drop(frame.score[reference], frame.satisfaction[reference],
                                 frame.score[window], frame.satisfaction[window])
            stats = {"rho_reference": _num(drop.reference), "rho_window": _num(drop.window), "z": _num(drop.z),
                     "p_value": _num(drop.p_value), "labels": config.rank_window}
            tests.append((segment, end - 1, float(frame.ts[window[-1]]), drop.p_value, stats))
    families: dict[int, list[int]] = defaultdict(list)
    for position, test in enumerate(tests):
        families[math.floor(test[2] / config.window_seconds)].append(position)
    rejected = [False] * len(tests)
    for members in families.values():
        for position, reject in zip(members, benjamini_hochberg([tests[p][3] for p in members], config.rank_fdr),
                                    strict=True):
            rejected[position] = reject
    episodes: list[Episode] = []
    current: dict[str, Episode | None] = {}
    for (segment, end, end_ts, _p, stats), reject in zip(tests, rejected, strict=True):
        episode = current.get(segment)
        if reject:
            if episode is None:
                episode = Episode(segment, "rank_drop", "down", end_ts, None, 0, end)
                episodes.append(episode)
                current[segment] = episode
            episode.detections += 1
            episode.last_index = end
            episode.evidence["rank"] = stats
        elif episode is not None:
            episode.resolved_at = end_ts
            current[segment] = None
    return episodes


def _explain(episode: Episode, stream: _Stream, frame: TurnFrame, calibration: Calibration,
             divergence: np.ndarray, config: AnalysisConfig) -> None:
    """Attribute the episode over the rated turns up to its latest detection; attach examples."""
    last = episode.last_index
    window = stream.index[max(0, last + 1 - config.rank_window): last + 1]
    residual = stream.residual[max(0, last + 1 - config.rank_window): last + 1]
    reference = stream.reference_index
    reference_residual = frame.satisfaction[reference] - calibration.predict(frame.score[reference])
    attribution = attribute(frame.signals[reference], reference_residual, frame.signals[window], residual,
                            names=SIGNAL_NAMES)
    episode.mode, episode.modes = attribution.mode, attribution.modes
    predicted = calibration.predict(frame.score[window])
    top = window[np.argsort(-np.nan_to_num(divergence[window], nan=-np.inf), kind="stable")[: config.top_examples]]
    episode.evidence.update({
        "window": {
            "labels": len(window), "from": iso(frame.ts[window[0]]), "to": iso(frame.ts[window[-1]]),
            "mean_residual": float(residual.mean()),
            "z": float(residual.mean() / calibration.residual_sd * math.sqrt(len(window))),
            "reward_mean": float(frame.score[window].mean()),
            "satisfaction_mean": float(frame.satisfaction[window].mean()),
            "predicted_satisfaction_mean": float(predicted.mean()),
            "signal_means": dict(zip(SIGNAL_NAMES, map(float, frame.signals[window].mean(axis=0)), strict=True)),
        },
        "reference": {"labels": calibration.labels, "from": iso(calibration.reference_from),
                      "to": iso(calibration.reference_to), "reward_mean": calibration.reward_mean,
                      "satisfaction_mean": calibration.satisfaction_mean,
                      "signal_means": dict(zip(SIGNAL_NAMES, calibration.signal_means, strict=True))},
        "attribution": attribution.as_dict(),
        "detections": episode.detections,
        "top_examples": [{"event_id": frame.event_id[i], "conversation_id": frame.conversation_id[i],
                          "turn": int(frame.turn[i]), "score": float(frame.score[i]),
                          "satisfaction": float(frame.satisfaction[i]), "divergence": _num(divergence[i])}
                         for i in top],
    })


def _reported_segments(scheme: SegmentScheme, frame: TurnFrame) -> list[str]:
    return list(dict.fromkeys([*scheme.all_keys(), *sorted(set(frame.segment))]))


def _segment_stats(segment: str, frame: TurnFrame, calibration: Calibration | None, stream: _Stream | None,
                   episodes: list[Episode], watermark: float | None, config: AnalysisConfig) -> dict:
    mine = frame.segment == segment
    in_window = mine & (frame.ts > (watermark or 0.0) - config.window_seconds)
    scored = in_window & ~np.isnan(frame.score)
    rated = in_window & frame.rated
    labelled_total = int((mine & frame.rated).sum())
    firing = [e for e in episodes if e.segment == segment and e.state == "firing"]
    stats: dict = {
        "segment": segment,
        "status": ("warming_up" if calibration is None else "diverging" if firing else "ok"),
        "window": {"from": iso(watermark - config.window_seconds) if watermark else None,
                   "to": iso(watermark) if watermark else None},
        "turns": int(in_window.sum()), "rated": int(rated.sum()), "labelled_total": labelled_total,
        "reference_labels_needed": max(0, config.reference_labels - labelled_total) if calibration is None else 0,
        "reward_mean": _mean(frame.score[scored]),
        "realised_satisfaction": _mean(frame.satisfaction[rated]),
        "estimated_satisfaction": None, "gap": None, "gap_ci95": None,
        "auc": _num(auc(frame.score[rated], frame.satisfaction[rated] >= 0.5)) if rated.sum() >= 10 else None,
        "spearman": _num(spearman(frame.score[rated], frame.satisfaction[rated])) if rated.sum() >= 10 else None,
        "reference": None,
        "signals": dict(zip(SIGNAL_NAMES, (_mean(frame.signals[in_window, j]) for j in range(len(SIGNAL_NAMES))),
                            strict=True)),
        "safety": _safety(frame, in_window),
        "firing_alerts": len(firing),
        "modes": sorted({m for e in firing for m in e.modes}),
    }
    if calibration is not None:
        residual = frame.satisfaction[rated] - calibration.predict(frame.score[rated])
        # CBPE: the calibrated RM's expected satisfaction over every scored turn, rated or not.
        stats["estimated_satisfaction"] = _mean(calibration.predict(frame.score[scored]))
        if len(residual):
            half = 1.96 * float(np.std(residual, ddof=1) if len(residual) > 1 else calibration.residual_sd)
            half /= math.sqrt(len(residual))
            gap = float(residual.mean())
            stats["gap"], stats["gap_ci95"] = gap, [gap - half, gap + half]
        stats["reference"] = {"labels": calibration.labels, "from": iso(calibration.reference_from),
                              "to": iso(calibration.reference_to), "auc": _num(calibration.auc),
                              "spearman": _num(calibration.spearman),
                              "satisfaction_mean": calibration.satisfaction_mean,
                              "reward_mean": calibration.reward_mean,
                              "cusum_h": calibration.cusum_h}
    if stream is not None:
        stats["stream_labels"] = len(stream.index)
    return stats


def _safety(frame: TurnFrame, rows: np.ndarray) -> dict:
    """Over-refusal (refusals of safe prompts) and harmful compliance (harmful prompts answered)."""
    refused = frame.signals[:, _REFUSAL] > 0.5
    safe, harmful = rows & ~frame.harmful, rows & frame.harmful
    return {"safe_prompts": int(safe.sum()), "harmful_prompts": int(harmful.sum()),
            "over_refusal_rate": _mean(refused[safe].astype(float)),
            "harmful_compliance_rate": _mean((~refused[harmful]).astype(float))}


def _mean(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)] if len(values) else values
    return float(values.mean()) if len(values) else None


def _num(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def iso(seconds: float) -> str:
    """Event time (seconds since the epoch) in the wire format of ``ts``."""
    return timestamp(datetime.fromtimestamp(float(seconds), UTC))
