"""Per-sample divergence: how much more the reward model pays for this response's features than
users value them.

Two linear views of the same signals (standardised over the rated turns), refitted on every run:

- the **RM's slopes**: the calibrated reward, ``P(satisfied | reward)``, regressed on the signals
  over every scored turn;
- the **users' slopes**: the satisfaction itself regressed on the signals over the rated turns.

A signal whose RM slope exceeds the users' slope is over-rewarded (length, markdown, flattery and
promises in the simulator; whatever the RM learned to like in production). A response's
divergence is the sum of its over-rewarded parts, ``max(0, (rm_slope - user_slope) * z)`` per
signal: the positive parts only, so a short refusal is not excused by being short. It needs no
rating of the turn itself, so unrated turns are ranked too (the review queue samples from them);
a turn's own rating enters the picture through its residual instead (:mod:`monitor.analyze.engine`).
The benchmark (`monitor bench detect`) measures its AUROC for the simulator's hacked turns.
"""

from __future__ import annotations

import numpy as np

from monitor.analyze.calibration import fit_reward_map, reward_map

#: Below this many rated turns there is nothing to learn the users' view from.
MIN_LABELS = 50
_RIDGE = 1.0


def _slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    centred = x - x.mean(axis=0)
    return np.linalg.solve(centred.T @ centred + _RIDGE * np.eye(x.shape[1]), centred.T @ (y - y.mean()))


def divergence_scores(frame) -> np.ndarray:  # noqa: ANN001 - a TurnFrame; imported lazily by callers
    """One score per turn of ``frame`` (NaN where the turn has no reward score or too few labels)."""
    out = np.full(len(frame), np.nan)
    rated = frame.rated
    scored = ~np.isnan(frame.score)
    if rated.sum() < MIN_LABELS:
        return out
    promise = reward_map(frame.score[scored], *fit_reward_map(frame.score[rated], frame.satisfaction[rated]))

    mean, sd = frame.signals[rated].mean(axis=0), frame.signals[rated].std(axis=0)
    z = (frame.signals[scored] - mean) / np.where(sd > 1e-9, sd, 1.0)
    over_reward = _slopes(z, promise) - _slopes(z[rated[scored]], frame.satisfaction[rated])
    out[scored] = np.maximum(z * over_reward, 0.0).sum(axis=1)
    return out
