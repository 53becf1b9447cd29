"""The reward model against humans on a cycle's pairs: its pairwise accuracy.

For each labelled pair, the human preferred response A or B (ties are left out of the accuracy,
and counted); the RM agrees when it scored the preferred response higher. Pairs whose two scores
are equal or unknown are left out too. Accuracy is the share of agreements over the decisive,
scored annotations, overall and per segment and per mode. 0.5 is a coin flip; a hacked slice
shows the RM below it (it prefers what people do not).

The 95% interval is Wilson's when each pair was labelled once. When some pairs were labelled by
several annotators their labels are not independent (they judge the same two answers), so the
interval is a bootstrap over pairs instead (:data:`BOOTSTRAP` resamples, percentile), wider and
honest about it.

:func:`mode_effect` holds the RM's accuracy on a cycle's pairs that contrast its mode against
its control pairs (the same slice, not contrasting it), with a bootstrap interval of the
difference: how much worse the RM does exactly where the mode sets two answers apart.

>>> audit = rm_accuracy([AuditPair("cards/*/*", "verbosity", 0.9, 0.2, "A")] * 8
...                     + [AuditPair("cards/*/*", "verbosity", 0.9, 0.2, "B")] * 2)
>>> audit["overall"]["accuracy"], audit["overall"]["pairs"]
(0.8, 10)
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitor.analyze.uncertainty import Z95

#: Resamples of the bootstrap intervals.
BOOTSTRAP = 1000
CONTROL = "none"


@dataclass(frozen=True)
class AuditPair:
    segment: str
    mode: str | None
    reward_a: float | None  # the RM's score of the response shown as A
    reward_b: float | None
    preference: str  # A | B | tie
    pair: int | None = None  # which pair (its review item) this annotation judged; None: its own


def wilson(successes: int, n: int) -> list[float] | None:
    if n == 0:
        return None
    p = successes / n
    centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / (1 + Z95 ** 2 / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def _decisive(pairs: Sequence[AuditPair]) -> list[AuditPair]:
    return [p for p in pairs if p.preference in ("A", "B") and p.reward_a is not None
            and p.reward_b is not None and p.reward_a != p.reward_b]


def _agrees(pair: AuditPair) -> bool:
    return (float(pair.reward_a or 0.0) > float(pair.reward_b or 0.0)) == (pair.preference == "A")


def _clusters(pairs: Sequence[AuditPair]) -> tuple[np.ndarray, np.ndarray]:
    """Per judged pair: its agreements and its decisive annotations (arrays, one row per pair)."""
    agree: dict[object, int] = defaultdict(int)
    total: dict[object, int] = defaultdict(int)
    for k, pair in enumerate(pairs):
        key = pair.pair if pair.pair is not None else ("own", k)
        agree[key] += _agrees(pair)
        total[key] += 1
    keys = list(total)
    return np.array([agree[k] for k in keys], float), np.array([total[k] for k in keys], float)


def _resampled_accuracy(agree: np.ndarray, total: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """:data:`BOOTSTRAP` accuracies of pairs resampled with replacement."""
    picks = rng.integers(0, len(total), (BOOTSTRAP, len(total)))
    return agree[picks].sum(axis=1) / np.maximum(total[picks].sum(axis=1), 1.0)


def _summary(pairs: Sequence[AuditPair]) -> dict[str, Any]:
    decisive = _decisive(pairs)
    agree = sum(_agrees(p) for p in decisive)
    ci = wilson(agree, len(decisive))
    if decisive:
        agreements, totals = _clusters(decisive)
        if len(totals) < len(decisive):
            draws = _resampled_accuracy(agreements, totals, np.random.default_rng(len(decisive)))
            ci = [float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))]
    return {"pairs": len(decisive), "agree": agree, "ties": sum(p.preference == "tie" for p in pairs),
            "accuracy": agree / len(decisive) if decisive else None, "ci95": ci}


def rm_accuracy(pairs: Sequence[AuditPair]) -> dict[str, Any]:
    by_segment: dict[str, list[AuditPair]] = defaultdict(list)
    by_mode: dict[str, list[AuditPair]] = defaultdict(list)
    for pair in pairs:
        by_segment[pair.segment].append(pair)
        by_mode[pair.mode or CONTROL].append(pair)
    return {"overall": _summary(pairs),
            "segments": {name: _summary(members) for name, members in sorted(by_segment.items())},
            "modes": {name: _summary(members) for name, members in sorted(by_mode.items())}}


def mode_effect(pairs: Sequence[AuditPair], mode: str | None) -> dict[str, Any] | None:
    """The RM's accuracy on the pairs contrasting ``mode`` minus its accuracy on the control pairs
    (``mode`` None), with a bootstrap 95% interval over pairs; None without a mode or either set."""
    contrast = _decisive([p for p in pairs if mode is not None and p.mode == mode])
    control = _decisive([p for p in pairs if p.mode is None])
    if not contrast or not control:
        return None
    rng = np.random.default_rng(len(contrast) * 7919 + len(control))
    (a1, t1), (a0, t0) = _clusters(contrast), _clusters(control)
    accuracy_contrast, accuracy_control = a1.sum() / t1.sum(), a0.sum() / t0.sum()
    draws = _resampled_accuracy(a1, t1, rng) - _resampled_accuracy(a0, t0, rng)
    return {"mode": mode, "contrast": {"pairs": len(contrast), "accuracy": float(accuracy_contrast)},
            "control": {"pairs": len(control), "accuracy": float(accuracy_control)},
            "difference": float(accuracy_contrast - accuracy_control),
            "ci95": [float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))]}
