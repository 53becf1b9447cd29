"""Benjamini-Hochberg over the many tests of one analysis pass (segments x metrics).

Every pass tests each segment's agreement drop; without a correction some segment would "drop"
by chance on most passes. Benjamini-Hochberg bounds the expected share of false discoveries
among the flagged tests at ``q``.

>>> benjamini_hochberg([0.001, 0.008, 0.039, 0.041, 0.20], q=0.05)
[True, True, False, False, False]
>>> benjamini_hochberg([0.01, float("nan"), 0.02], q=0.05)
[True, False, True]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def benjamini_hochberg(p_values: Sequence[float], q: float = 0.05) -> list[bool]:
    """Which tests are discoveries at false discovery rate ``q`` (BH-adjusted p <= q).

    A NaN p-value (a test that could not run) counts as 1: it is never a discovery, but it still
    counts as a test.
    """
    if not (isinstance(q, (int, float)) and 0 < q < 1):
        raise ValueError(f"q must lie in the open interval (0, 1), got {q!r}")
    p = np.asarray(p_values, dtype=float).reshape(-1)
    if len(p) == 0:
        return []
    bad = [float(v) for v in p if not (math.isnan(v) or 0 <= v <= 1)]
    if bad:
        raise ValueError(f"p-values must lie in [0, 1] (or be NaN), got {bad[:5]}")
    adjusted = stats.false_discovery_control(np.where(np.isnan(p), 1.0, p), method="bh")
    return [bool(v <= q) for v in adjusted]
