"""What the reward model promised for a queued turn: its segment's reward map (the calibration
frozen on the segment's reference under the turn's reward model) at the turn's score, and that
reference's mean satisfaction. The review report compares human judgements with both."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy.orm import Session

from monitor.analyze.engine import identity_of
from monitor.analyze.segments import SegmentScheme
from monitor.analyze.state import SegmentState
from monitor.store.analysis import load_states
from monitor.store.models import Turn


def segment_states(session: Session) -> dict[str, SegmentState]:
    """The analyzer's segment states (read them once for many :func:`rm_predictions` calls)."""
    return {name: SegmentState.from_json(value) for name, value in load_states(session).items()}


def rm_predictions(session: Session, turns: Sequence[Turn], scheme: SegmentScheme, *,
                   states: dict[str, SegmentState] | None = None) -> dict[int, tuple[float, float]]:
    """``{turn id: (calibrated prediction, reference mean satisfaction)}`` for the turns whose
    segment and reward model have a calibration (``states``: already read, else read here)."""
    if not turns:
        return {}
    if states is None:
        states = segment_states(session)
    out: dict[int, tuple[float, float]] = {}
    for turn in turns:
        state = states.get(scheme.key(turn.domain, turn.model_version, turn.locale))
        track = state.tracks.get(identity_of(turn.scorer or "", turn.model_version)) if state else None
        if track is None or track.calibration is None or turn.score is None:
            continue
        prediction = float(track.calibration.predict(np.array([turn.score]))[0])
        if np.isfinite(prediction):
            out[turn.id] = (prediction, float(track.calibration.satisfaction_mean))
    return out
