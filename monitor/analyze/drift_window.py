"""Which turns the drift report compares: the reference periods against the current window.

Reference: the turns of every segment's current reference (the labels its calibration was fitted
on); current: the turns of the last ``window_seconds`` of event time. Each side is thinned to at
most ``rows`` turns, evenly spaced in serving order, so the report (and the prompt embeddings it
needs) costs the same whatever the traffic. Columns: the reward and every signal; prompts enter as
MiniLM embeddings.

pandas, evidently and torch load on the first report, not at import: a scheduled run that builds
no report (most of them: the report has its own interval) costs the analyzer none of their memory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from monitor.analyze.frame import TurnFrame
from monitor.analyze.state import SegmentState
from monitor.signals import SIGNAL_NAMES

if TYPE_CHECKING:
    import pandas as pd

    from monitor.analyze.drift import DriftReport
    from monitor.analyze.embeddings import PromptEmbedder

COLUMNS = ("reward", *SIGNAL_NAMES)
_MIN_ROWS = 30


@dataclass
class DriftInputs:
    rows: int = 1000  # per window; 0 turns the report off
    embeddings: bool = True
    embedder: PromptEmbedder | None = None  # created on first use

    def warm_up(self) -> None:
        """Build a small report from random numbers now, not the first real one in the middle of
        traffic: the import of pandas and evidently (160 MiB, 2 s mostly holding the GIL), what
        evidently loads on its first report, and the embedder's weights."""
        if self.rows <= 0:
            return
        import pandas as pd

        from monitor.analyze.drift import MIN_ROWS, drift_report

        rng = np.random.default_rng(0)
        tables = [pd.DataFrame(rng.random((2 * MIN_ROWS, len(COLUMNS))), columns=list(COLUMNS)) for _ in range(2)]
        embeddings: list[np.ndarray | None] = [None, None]
        if self.embeddings:
            embedder = self.get_embedder()
            embeddings = [embedder.embed([f"warming up {side} {i}" for i in range(2 * MIN_ROWS)]) for side in range(2)]
        drift_report(tables[0], tables[1], columns=COLUMNS, reference_embeddings=embeddings[0],
                     current_embeddings=embeddings[1], title="warm-up")

    def get_embedder(self) -> PromptEmbedder:
        if self.embedder is None:
            from monitor.analyze.embeddings import PromptEmbedder

            self.embedder = PromptEmbedder()
        return self.embedder


def reference_event_ids(states: Mapping[str, SegmentState]) -> list[str]:
    """Event ids of the turns behind every segment's current calibration."""
    ids: list[str] = []
    for state in states.values():
        track = state.track
        if track is not None and track.calibration is not None:
            ids += [row[0] for row in track.reference.ids]
    return ids


def drift_samples(reference: TurnFrame, current: TurnFrame, rows: int) -> tuple[TurnFrame, TurnFrame] | None:
    """The scored turns of each side thinned to ``rows``, or None when either is too small."""
    if rows <= 0:
        return None
    samples = []
    for frame in (reference, current):
        scored = np.flatnonzero(~np.isnan(frame.score))
        if len(scored) < _MIN_ROWS:
            return None
        samples.append(frame.take(_thin(scored, rows)))
    return samples[0], samples[1]


def build_drift_report(reference: TurnFrame, current: TurnFrame, inputs: DriftInputs,
                       prompts: Callable[[Sequence[str]], Mapping[str, str]]) -> DriftReport | None:
    """The report of ``current`` against ``reference``; ``prompts`` maps event ids to prompt texts."""
    samples = drift_samples(reference, current, inputs.rows)
    if samples is None:
        return None
    from monitor.analyze.drift import drift_report

    embeddings: list[np.ndarray | None] = [None, None]
    if inputs.embeddings:
        texts = prompts([*samples[0].event_id, *samples[1].event_id])
        embedder = inputs.get_embedder()
        embeddings = [embedder.embed([texts.get(event_id, "") for event_id in sample.event_id]) for sample in samples]
    return drift_report(drift_table(samples[0]), drift_table(samples[1]), columns=COLUMNS,
                        reference_embeddings=embeddings[0], current_embeddings=embeddings[1],
                        title="Input drift: reference windows vs the current window")


def drift_table(frame: TurnFrame) -> pd.DataFrame:
    """The report's numeric columns (:data:`COLUMNS`) of the frame's rows."""
    import pandas as pd

    table = pd.DataFrame(frame.signals, columns=list(SIGNAL_NAMES))
    table.insert(0, "reward", frame.score)
    return table


def _thin(index: np.ndarray, rows: int) -> np.ndarray:
    if len(index) <= rows:
        return index
    return index[np.unique(np.linspace(0, len(index) - 1, rows).astype(int))]
