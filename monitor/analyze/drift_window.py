"""Which turns the drift report compares: the reference periods against the current window.

Reference: every turn (rated or not) inside the union of the segments' reference windows; current:
the last ``window_seconds`` of event time. Each side is thinned to at most ``rows`` turns, evenly
spaced in serving order, so the report (and the prompt embeddings it needs) costs the same
whatever the traffic. Columns: the reward and every signal; prompts enter as MiniLM embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy.orm import Session

from monitor.analyze.drift import DriftReport, drift_report
from monitor.analyze.embeddings import PromptEmbedder
from monitor.analyze.engine import Analysis, AnalysisConfig
from monitor.analyze.frame import TurnFrame
from monitor.signals import SIGNAL_NAMES
from monitor.store.analysis import prompts_by_event_id

COLUMNS = ("reward", *SIGNAL_NAMES)
_MIN_ROWS = 30


@dataclass
class DriftInputs:
    rows: int = 1000  # per window; 0 turns the report off
    embeddings: bool = True
    embedder: PromptEmbedder | None = None  # created on first use

    def get_embedder(self) -> PromptEmbedder:
        if self.embedder is None:
            self.embedder = PromptEmbedder()
        return self.embedder


def drift_windows(frame: TurnFrame, analysis: Analysis, config: AnalysisConfig,
                  rows: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Row indices of the reference and current samples, or None when either is too small."""
    if not analysis.calibrations or analysis.watermark is None or rows <= 0:
        return None
    start = min(c.reference_from for c in analysis.calibrations.values())
    end = max(c.reference_to for c in analysis.calibrations.values())
    scored = ~np.isnan(frame.score)
    reference = np.flatnonzero(scored & (frame.ts >= start) & (frame.ts <= end))
    current = np.flatnonzero(scored & (frame.ts > analysis.watermark - config.window_seconds))
    if len(reference) < _MIN_ROWS or len(current) < _MIN_ROWS:
        return None
    return _thin(reference, rows), _thin(current, rows)


def build_drift_report(session: Session, frame: TurnFrame, analysis: Analysis, config: AnalysisConfig,
                       inputs: DriftInputs) -> DriftReport | None:
    windows = drift_windows(frame, analysis, config, inputs.rows)
    if windows is None:
        return None
    reference, current = windows
    embeddings: dict[str, np.ndarray | None] = {"reference": None, "current": None}
    if inputs.embeddings:
        prompts = prompts_by_event_id(session, [*frame.event_id[reference], *frame.event_id[current]])
        embedder = inputs.get_embedder()
        for name, index in (("reference", reference), ("current", current)):
            embeddings[name] = embedder.embed([prompts.get(event_id, "") for event_id in frame.event_id[index]])
    return drift_report(drift_table(frame, reference), drift_table(frame, current), columns=COLUMNS,
                        reference_embeddings=embeddings["reference"], current_embeddings=embeddings["current"],
                        title="Input drift: reference windows vs the current window")


def drift_table(frame: TurnFrame, index: np.ndarray) -> pd.DataFrame:
    """The report's numeric columns (:data:`COLUMNS`) of the frame's rows ``index``."""
    table = pd.DataFrame(frame.signals[index], columns=list(SIGNAL_NAMES))
    table.insert(0, "reward", frame.score[index])
    return table


def _thin(index: np.ndarray, rows: int) -> np.ndarray:
    if len(index) <= rows:
        return index
    return index[np.unique(np.linspace(0, len(index) - 1, rows).astype(int))]
