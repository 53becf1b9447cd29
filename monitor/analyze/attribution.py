"""Attribution: which reward-hacking mode explains a segment's residual shift.

The residual of a rated turn is ``satisfaction - P(satisfied | reward)``. Regressing it on the
response's signals (reference and current window pooled, signals standardised by the reference)
gives, per signal, how much more the reward model pays for it than users value it: the RM's
slope minus the users' slope, in satisfaction units. A signal explains the shift when it is both
mis-priced *and* more common than in the reference:

    contribution_j = coefficient_j * (mean_window_j - mean_reference_j)

Contributions add up per mode (:data:`monitor.signals.SIGNAL_MODES`). A mode is named when its
contribution points the same way as the shift and covers a fair share of it
(:data:`EXPLAINED_SHARE`); no such mode means the signals do not explain the shift
(``unexplained``). A shift of the inputs that the RM prices correctly moves no residual at all,
so it never reaches this code: the drift report is where it shows (``none - input shift``).

>>> import numpy as np
>>> rng = np.random.default_rng(1)
>>> ref = rng.random((400, 2)); win = rng.random((400, 2)); win[:, 0] += 0.5   # signal 0 grows
>>> ref_r = -0.3 * (ref[:, 0] - 0.5) + rng.normal(0, .1, 400)
>>> win_r = -0.3 * (win[:, 0] - 0.5) + rng.normal(0, .1, 400)
>>> attribute(ref, ref_r, win, win_r, names=("length_tokens", "sycophancy")).mode
'verbosity'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from monitor.signals import SIGNAL_MODES

#: A mode must explain at least this share of the window's mean residual shift to be named.
EXPLAINED_SHARE = 0.2
UNEXPLAINED = "unexplained"
INPUT_SHIFT = "none - input shift"
# Ridge on standardised signals: keeps near-collinear signals (length tokens and length ratio)
# from trading huge opposite coefficients.
_RIDGE = 1.0


@dataclass(frozen=True)
class Attribution:
    mode: str  # the top mode, or UNEXPLAINED
    modes: tuple[str, ...]  # every named mode, strongest first
    shift: float  # window mean residual minus reference mean residual (satisfaction units)
    by_mode: dict[str, float]  # summed contribution per mode
    by_signal: dict[str, dict[str, float]]  # coefficient, prevalence change, contribution

    def as_dict(self) -> dict:
        return {"mode": self.mode, "modes": list(self.modes), "shift": self.shift,
                "by_mode": self.by_mode, "by_signal": self.by_signal}


def attribute(
    reference_signals: np.ndarray,
    reference_residuals: np.ndarray,
    window_signals: np.ndarray,
    window_residuals: np.ndarray,
    *,
    names: Sequence[str],
) -> Attribution:
    """Explain ``mean(window_residuals) - mean(reference_residuals)`` by the signals in ``names``."""
    reference_signals = np.asarray(reference_signals, dtype=float)
    window_signals = np.asarray(window_signals, dtype=float)
    if reference_signals.shape[1] != len(names) or window_signals.shape[1] != len(names):
        raise ValueError(f"signal matrices must have one column per name ({len(names)})")
    unknown = [name for name in names if name not in SIGNAL_MODES]
    if unknown:
        raise ValueError(f"unknown signal(s) {unknown}; known: {', '.join(SIGNAL_MODES)}")
    mean = reference_signals.mean(axis=0)
    sd = reference_signals.std(axis=0)
    # A signal constant in the reference (no refusals at all, say) is scaled by the window instead.
    sd = np.where(sd > 1e-9, sd, window_signals.std(axis=0))
    sd = np.where(sd > 1e-9, sd, 1.0)
    pooled = (np.vstack([reference_signals, window_signals]) - mean) / sd
    residuals = np.concatenate([reference_residuals, window_residuals])
    centred = pooled - pooled.mean(axis=0)
    coefficients = np.linalg.solve(centred.T @ centred + _RIDGE * np.eye(len(names)),
                                   centred.T @ (residuals - residuals.mean()))
    prevalence = (window_signals.mean(axis=0) - mean) / sd
    contributions = coefficients * prevalence
    shift = float(np.mean(window_residuals) - np.mean(reference_residuals))

    by_mode: dict[str, float] = {}
    for name, contribution in zip(names, contributions, strict=True):
        mode = SIGNAL_MODES[name]
        by_mode[mode] = by_mode.get(mode, 0.0) + float(contribution)
    sign = -1.0 if shift < 0 else 1.0
    named = sorted((m for m, c in by_mode.items() if sign * c >= EXPLAINED_SHARE * abs(shift) and sign * c > 0),
                   key=lambda m: -sign * by_mode[m])
    by_signal = {name: {"coefficient": float(c), "prevalence_change_sd": float(p), "contribution": float(x)}
                 for name, c, p, x in zip(names, coefficients, prevalence, contributions, strict=True)}
    return Attribution(named[0] if named else UNEXPLAINED, tuple(named), shift, by_mode, by_signal)
