"""Which turns go to human review, and with what inclusion probability: the sampling design.

Per segment and sampling period (an hour of event time by default), the period's share of the
segment's daily budget is spent in three arms, in this order:

1. **control**: a uniform random sample of the period's turns, at least ``control_share`` (25%) of
   the budget. Inclusion probability ``k / N``. It is the unbiased view of the whole traffic that
   re-weighted estimates (human satisfaction, the RM-vs-human gap) rest on, so it is drawn first,
   independently of everything else, and near-duplicates are *not* collapsed in it.
2. **targeted**: per firing alert of the segment, its turns of highest per-sample divergence
   (inclusion probability 1: chosen for certain given the data).
3. **stratified**: the rest of the budget spread evenly over the strata (dominant hacking mode x
   domain) of the remaining turns, uniform within each: ``k_s / N_s``. Rare strata (over-refusal
   in mortgages) get seen although uniform sampling would seldom reach them.

Targeted and stratified picks skip near-duplicates (:mod:`monitor.review.dedup`) of what this
period already picked or the queue holds; a kept item counts the duplicates it stands for.

A turn's dominant mode: the reward-hacking mode (:data:`monitor.signals.SIGNAL_MODES`) whose
signal stands furthest above the period's median, in robust z units (median absolute
deviation); ``none`` below one unit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from monitor.review.dedup import NEAR_DUPLICATE, jaccard, shingles
from monitor.signals import SIGNAL_MODES, SIGNAL_NAMES

#: A signal this many robust standard deviations above the period's median names the turn's mode.
MODE_Z = 1.0
#: Turns an arm examines for near-duplicates per pick it wants, at most; texts read per batch.
EXAMINED_PER_PICK = 20
PREFETCH = 64
NO_MODE = "none"


@dataclass(frozen=True)
class Candidate:
    turn_id: int
    domain: str
    divergence: float  # NaN where the analyzer has not scored it
    #: The turn's signals in :data:`monitor.signals.SIGNAL_NAMES` order, NaN where missing
    #: (:func:`signal_values` builds it from a mapping).
    signals: tuple[float, ...]


def signal_values(signals: Mapping[str, float | None]) -> tuple[float, ...]:
    """``signals`` (by name) as a :class:`Candidate` keeps them."""
    values = (signals.get(name) for name in SIGNAL_NAMES)
    return tuple(math.nan if value is None else float(value) for value in values)


@dataclass(frozen=True)
class FiringAlert:
    id: int
    mode: str


@dataclass(frozen=True)
class Design:
    """The knobs of the design (``MONITOR_REVIEW_*``)."""

    control_share: float = 0.25
    targeted_per_alert: int = 5
    overlap_share: float = 0.2
    overlap: int = 2

    def __post_init__(self) -> None:
        if not 0.25 <= self.control_share <= 1.0:
            raise ValueError(f"control_share must be in [0.25, 1], got {self.control_share}")
        if not 0.0 <= self.overlap_share <= 1.0 or self.overlap < 1:
            raise ValueError("overlap_share must be in [0, 1] and overlap >= 1")


@dataclass
class Pick:
    turn_id: int
    arm: str
    inclusion_probability: float
    mode: str
    priority: float = 0.0
    alert_id: int | None = None
    duplicates: int = 0
    reviews_required: int = 1
    extra: dict = field(default_factory=dict)


def dominant_modes(candidates: Sequence[Candidate]) -> list[str]:
    """Each candidate's dominant reward-hacking mode (see the module's docstring)."""
    if not candidates:
        return []
    width = len(SIGNAL_NAMES)
    missing = (math.nan,) * width
    values = np.array([c.signals if len(c.signals) == width else missing for c in candidates], dtype=float)
    present = ~np.all(np.isnan(values), axis=0)
    names = [name for name, seen in zip(SIGNAL_NAMES, present, strict=True) if seen]
    values = values[:, present]
    with np.errstate(all="ignore"):
        median = np.nanmedian(values, axis=0)
        spread = 1.4826 * np.nanmedian(np.abs(values - median), axis=0)
        # A signal that is zero for most turns (refusal, overpromise) has no spread: its unit is then
        # its own scale (1), so one hit stands out.
        spread = np.where(np.isfinite(spread) & (spread > 1e-9), spread, np.maximum(np.abs(median), 1.0))
        z = np.nan_to_num((values - median) / spread, nan=-np.inf)
    if not names:
        return [NO_MODE] * len(candidates)
    best = np.argmax(z, axis=1)
    top = z[np.arange(len(z)), best]
    labels = [SIGNAL_MODES[name] for name in names]
    return [labels[b] if t >= MODE_Z else NO_MODE for b, t in zip(best.tolist(), top.tolist(), strict=True)]


def plan(candidates: Sequence[Candidate], alerts: Sequence[FiringAlert], budget: int, design: Design,
         rng: np.random.Generator, text_of: Callable[[int], str], *, queued: Sequence[str] = (),
         prefetch: Callable[[Sequence[int]], None] | None = None) -> list[Pick]:
    """The picks of one segment's sampling period: ``budget`` items at most, from ``candidates``
    (the period's turns). ``text_of(turn_id)``: the response, for near-duplicate checks against
    each other and against ``queued`` (texts already in the queue); ``prefetch(turn_ids)``, if
    given, is told which texts are about to be read, a batch at a time. An arm examines at most
    :data:`EXAMINED_PER_PICK` turns per pick it wants: where template answers fill a stratum, it
    takes fewer picks rather than read the whole period's text."""
    n = len(candidates)
    if budget <= 0 or n == 0:
        return []
    modes = dominant_modes(candidates)
    picks: list[Pick] = []
    taken: set[int] = set()

    control = min(n, max(1, math.ceil(design.control_share * budget)))
    for index in rng.choice(n, size=control, replace=False).tolist():
        picks.append(Pick(candidates[index].turn_id, "control", control / n, modes[index]))
        taken.add(index)
    left = budget - control

    earlier = [shingles(text) for text in queued]

    def keep(order: Sequence[int], limit: int) -> list[tuple[int, int]]:
        """Up to ``limit`` of ``order`` that duplicate nothing kept: (index, how many later ones it
        stood for). Lazy: texts are read only until ``limit`` are kept."""
        chosen: list[tuple[int, int]] = []
        seen: list[tuple[int, frozenset[int]]] = []
        pending = [i for i in order if i not in taken][:EXAMINED_PER_PICK * max(limit, 1)]
        for position, index in enumerate(pending):
            if len(chosen) >= limit:
                break
            if prefetch is not None and position % PREFETCH == 0:
                prefetch([candidates[i].turn_id for i in pending[position:position + PREFETCH]])
            mine = shingles(text_of(candidates[index].turn_id))
            match = next((k for k, (_, other) in enumerate(seen) if jaccard(mine, other) >= NEAR_DUPLICATE), None)
            if match is not None:
                chosen[match] = (chosen[match][0], chosen[match][1] + 1)
                continue
            if any(jaccard(mine, other) >= NEAR_DUPLICATE for other in earlier):
                continue
            chosen.append((index, 0))
            seen.append((index, mine))
        for index, mine in seen:
            taken.add(index)
            earlier.append(mine)
        return chosen

    for alert in sorted(alerts, key=lambda a: a.id):
        if left <= 0:
            break
        scored = [i for i in range(n) if math.isfinite(candidates[i].divergence)]
        order = sorted(scored, key=lambda i: -candidates[i].divergence)
        for index, duplicates in keep(order, min(left, design.targeted_per_alert)):
            picks.append(Pick(candidates[index].turn_id, "targeted", 1.0, alert.mode or modes[index],
                              alert_id=alert.id, duplicates=duplicates))
            left -= 1

    strata: dict[tuple[str, str], list[int]] = {}
    for index in range(n):
        if index not in taken:
            strata.setdefault((modes[index], candidates[index].domain), []).append(index)
    # In random order: when the budget is smaller than the number of strata, which ones get an item
    # is left to chance, not to the alphabet.
    ordered = sorted(strata.items())
    for position, (_key, members) in enumerate(ordered[i] for i in rng.permutation(len(ordered)).tolist()):
        if left <= 0:
            break
        share = left // (len(strata) - position) or 1  # even shares of what is left
        order = rng.permutation(members).tolist()
        chosen = keep(order, min(share, len(members)))
        for index, duplicates in chosen:
            picks.append(Pick(candidates[index].turn_id, "stratified", len(chosen) / len(members), modes[index],
                              duplicates=duplicates))
        left -= len(chosen)

    # Arms interleave in the queue (an annotator cannot tell them apart): within each arm the
    # first pick gets the highest priority, spread evenly over (0, 1).
    by_arm: dict[str, list[Pick]] = {}
    for pick in picks:
        by_arm.setdefault(pick.arm, []).append(pick)
    for arm_picks in by_arm.values():
        for rank, pick in enumerate(arm_picks):
            pick.priority = 1.0 - (rank + 0.5) / len(arm_picks)
    for pick in picks:
        pick.reviews_required = design.overlap if rng.random() < design.overlap_share else 1
    return picks
