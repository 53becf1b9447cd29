"""Per-segment statistics of the current window: what ``/v1/segments`` and the metrics show.

Computed each run from the turns of the last ``window_seconds`` of event time (a bounded read: a
sample per segment past ``MONITOR_ANALYZE_WINDOW_MAX_TURNS``, :mod:`monitor.analyze.window_sample`,
with the counts exact) and the segment's state: reward mean, realised and estimated (CBPE) satisfaction and their gap,
rank agreement, signal means, safety rates, the reward model in use and its changes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from monitor.analyze.engine import AnalysisConfig, identity_of, iso
from monitor.analyze.frame import TurnFrame
from monitor.analyze.rank_agreement import auc, spearman
from monitor.analyze.segments import SegmentScheme
from monitor.analyze.state import SegmentState
from monitor.analyze.uncertainty import auc_interval, bounds, estimated_interval, gap_interval
from monitor.signals import SIGNAL_NAMES

_REFUSAL = SIGNAL_NAMES.index("refusal")


def reported_segments(scheme: SegmentScheme, frame: TurnFrame, states: Sequence[str]) -> list[str]:
    return list(dict.fromkeys([*scheme.all_keys(), *sorted(set(frame.segment)), *sorted(states)]))


def segment_stats(segment: str, window: TurnFrame, state: SegmentState | None, firing_modes: Sequence[Sequence[str]],
                  watermark: float | None, config: AnalysisConfig, *, counts: tuple[int, int] | None = None,
                  stride: int = 1) -> dict:
    """``firing_modes``: the modes of each firing alert of the segment. ``counts``: the segment's
    exact (turns, rated turns) in the window when ``window`` holds a sample of them, one turn in
    ``stride`` (:mod:`monitor.analyze.window_sample`); means and intervals are the sample's."""
    mine = window.segment == segment
    scored = mine & ~np.isnan(window.score)
    rated = mine & window.rated
    track = state.track if state else None
    calibration = track.calibration if track else None
    labelled_total = state.labelled if state else 0
    gathered = len(track.reference) if track and calibration is None else 0
    stats: dict = {
        "segment": segment,
        "status": ("warming_up" if calibration is None else "diverging" if firing_modes else "ok"),
        "window": {"from": iso(watermark - config.window_seconds) if watermark else None,
                   "to": iso(watermark) if watermark else None},
        "turns": int(mine.sum()) if counts is None else counts[0],
        "rated": int(rated.sum()) if counts is None else counts[1], "labelled_total": labelled_total,
        "sample": {"turns": int(mine.sum()), "rated": int(rated.sum()), "one_in": stride} if stride > 1 else None,
        "reference_labels_needed": config.reference_labels - gathered if calibration is None else 0,
        "reward_model": track.identity if track else None,
        "reward_model_changes": list(state.changes) if state else [],
        "reward_mean": _mean(window.score[scored]),
        "realised_satisfaction": _mean(window.satisfaction[rated]),
        "estimated_satisfaction": None, "estimated_satisfaction_ci95": None, "gap": None, "gap_ci95": None,
        "auc": _num(auc(window.score[rated], window.satisfaction[rated] >= 0.5)) if rated.sum() >= 10 else None,
        "auc_ci95": bounds(auc_interval(window.score[rated], window.satisfaction[rated],
                                        groups=window.conversation_id[rated]))
        if rated.sum() >= 10 else None,
        "spearman": _num(spearman(window.score[rated], window.satisfaction[rated])) if rated.sum() >= 10 else None,
        "reference": None,
        "signals": dict(zip(SIGNAL_NAMES, (_mean(window.signals[mine, j]) for j in range(len(SIGNAL_NAMES))),
                            strict=True)),
        "safety": _safety(window, mine),
        "firing_alerts": len(firing_modes),
        "modes": sorted({m for modes in firing_modes for m in modes}),
    }
    if track is not None and calibration is not None:
        # Only the turns scored by the reward model this calibration belongs to.
        same_rm = np.array([identity_of(s, m) == track.identity
                            for s, m in zip(window.scorer, window.model_version, strict=True)], dtype=bool)
        scored_here, rated_here = scored & same_rm, rated & same_rm
        fit = (calibration.intercept, calibration.slope, calibration.centre, calibration.scale)
        covariance, dof = calibration.covariance_matrix, calibration.covariance_dof
        score, satisfaction = window.score[rated_here], window.satisfaction[rated_here]
        conversations = window.conversation_id[rated_here]
        # CBPE: the calibrated RM's expected satisfaction over every scored turn, rated or not.
        stats["estimated_satisfaction"] = _mean(calibration.predict(window.score[scored_here]))
        stats["estimated_satisfaction_ci95"] = bounds(
            estimated_interval(window.score[scored_here], score, satisfaction, *fit, covariance, dof,
                               groups=conversations))
        if len(score):
            stats["gap"] = float((satisfaction - calibration.predict(score)).mean())
            stats["gap_ci95"] = bounds(gap_interval(score, satisfaction, *fit, covariance, dof, groups=conversations))
        stats["reference"] = {"labels": calibration.labels, "from": iso(calibration.reference_from),
                              "to": iso(calibration.reference_to), "auc": _num(calibration.auc),
                              "spearman": _num(calibration.spearman),
                              "satisfaction_mean": calibration.satisfaction_mean,
                              "reward_mean": calibration.reward_mean,
                              "cusum_h": calibration.cusum_h}
        stats["stream_labels"] = track.position
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


def _num(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None
