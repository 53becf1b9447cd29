"""What the human labels say about the reward model: re-weighted means with 95% intervals, and a
verdict per segment or alert.

Each reviewed item ``i`` gives a human satisfaction ``h_i`` (the mean of its annotators'
``(overall - 1) / 4``), the RM's calibrated prediction ``p_i`` (the segment's reward map at the
turn's score, frozen when the item was queued) and, where the user rated the turn, the user's
satisfaction ``u_i``. Items carry inclusion probabilities ``pi_i``; means are Hajek estimates
``sum(w y) / sum(w)`` with ``w = 1 / pi``, their variance by linearisation,
``n / (n - 1) * sum(w^2 (y - mean)^2) / sum(w)^2``, and the interval Student's t with ``n - 1``
degrees of freedom. Gaps (human - RM, human - users) are means of the paired differences over the
items that have both.

Verdicts (``MARGIN`` = 0.05 on the satisfaction scale). A report has a verdict per segment and
alert, so a verdict that names a culprit is decided on the **99%** interval (the report shows the
95% ones): with five segments, a stationary report names a false culprit about 2% of the time
instead of 10% (``monitor bench review``).

* ``rm_misaligned``: humans below the RM: the gap's 99% interval below 0 and the gap at most
  -MARGIN (the RM promises what people do not find);
* ``user_rating_bias``: humans above the users (99% interval above 0, gap at least MARGIN) while
  not below the RM: the RM is right, the users' ratings moved;
* ``policy_regression``: humans, RM and users all below the reference's mean satisfaction by more
  than MARGIN (99% intervals), the gaps not decided: the answers got worse and the RM saw it;
* ``aligned``: none of these, and the human - RM gap's 95% interval within ``+-MARGIN`` (shown to
  be small, not merely not shown to be large);
* ``insufficient_data``: everything else: fewer than :data:`MIN_ITEMS` reviewed items, no RM
  prediction, or intervals too wide to say either.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from monitor.analyze.uncertainty import Interval

MARGIN = 0.05
MIN_ITEMS = 20
#: Confidence of the intervals a verdict is decided on.
DECISION_LEVEL = 0.99
VERDICTS = ("rm_misaligned", "user_rating_bias", "policy_regression", "aligned", "insufficient_data")


@dataclass(frozen=True)
class Unit:
    """One reviewed item, as the estimates see it."""

    item_id: int
    weight: float  # 1 / inclusion probability
    human: float
    rm: float | None
    user: float | None
    reference: float | None


def hajek(values: Sequence[float], weights: Sequence[float], level: float = 0.95) -> Interval | None:
    """The weighted (Hajek) mean of ``values`` with its ``level`` interval; None below 2 values."""
    y, w = np.asarray(values, dtype=float), np.asarray(weights, dtype=float)
    n = len(y)
    if n < 2:
        return None
    mean = float(np.sum(w * y) / np.sum(w))
    variance = n / (n - 1) * float(np.sum(w * w * (y - mean) ** 2)) / float(np.sum(w)) ** 2
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * math.sqrt(variance)
    return Interval(mean, mean - half, mean + half)


def _mean(units: Sequence[Unit], value: Callable[[Unit], float | None], level: float = 0.95) -> Interval | None:
    kept = [(v, u.weight) for u in units if (v := value(u)) is not None]
    return hajek([v for v, _ in kept], [w for _, w in kept], level) if kept else None


def _out(interval: Interval | None) -> dict[str, Any] | None:
    return None if interval is None else {"estimate": interval.estimate, "ci95": interval.as_list()}


def summarise(units: Sequence[Unit]) -> dict[str, Any]:
    """The estimates and verdict of a set of reviewed items (a segment's control arm, an alert's items)."""
    means = {name: [_mean(units, value, level) for level in (0.95, DECISION_LEVEL)] for name, value in (
        ("human", lambda u: u.human), ("rm", lambda u: u.rm), ("users", lambda u: u.user),
        ("gap_rm", lambda u: None if u.rm is None else u.human - u.rm),
        ("gap_users", lambda u: None if u.user is None else u.human - u.user))}
    human, rm, users, gap_rm, gap_users = (means[name][0] for name in ("human", "rm", "users", "gap_rm", "gap_users"))
    references = [u.reference for u in units if u.reference is not None]
    reference = float(np.mean(references)) if references else None
    return {
        "items": len(units), "rated_by_users": sum(u.user is not None for u in units),
        "human_satisfaction": _out(human), "rm_prediction": _out(rm), "user_satisfaction": _out(users),
        "gap_human_rm": _out(gap_rm), "gap_human_users": _out(gap_users), "reference_satisfaction": reference,
        "verdict": verdict(len(units), means["human"][1], means["rm"][1], means["users"][1], means["gap_rm"][1],
                           means["gap_users"][1], reference, gap_rm),
    }


def verdict(n: int, human: Interval | None, rm: Interval | None, users: Interval | None, gap_rm: Interval | None,
            gap_users: Interval | None, reference: float | None, gap_rm_95: Interval | None = None) -> str:
    """The verdict from the decision-level (99%) intervals, and the 95% one of the human - RM gap
    for ``aligned`` (see the module)."""
    if n < MIN_ITEMS or gap_rm is None or human is None or rm is None:
        return "insufficient_data"
    if gap_rm.high < 0 and gap_rm.estimate <= -MARGIN:
        return "rm_misaligned"
    if gap_users is not None and gap_users.low > 0 and gap_users.estimate >= MARGIN:
        return "user_rating_bias"
    if reference is not None and all(x is not None and x.high < reference - MARGIN for x in (human, rm)) \
            and (users is None or users.high < reference - MARGIN):
        return "policy_regression"
    shown = gap_rm_95 or gap_rm
    if -MARGIN <= shown.low and shown.high <= MARGIN:
        return "aligned"
    return "insufficient_data"
