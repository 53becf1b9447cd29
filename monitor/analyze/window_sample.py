"""How much of the current window a run reads: every turn up to ``MONITOR_ANALYZE_WINDOW_MAX_TURNS``,
a systematic sample per segment beyond.

The window's exact counts come from one ``GROUP BY`` (domain, model version, locale) in the store;
:func:`plan_window` turns them into per-segment counts and a *stride* per group: a run reads the
group's turns whose scrambled store id (:func:`monitor.store.analysis.sampled_id`) is a multiple of
its stride, the same turns every run. Segments share the budget by water-filling
(smallest first): a segment that fits is read whole, the larger ones split what is left evenly, so
a quiet segment keeps every turn beside a busy one. Every group of a segment gets that segment's
stride, so the sample weighs the segment's groups as the traffic does.

Why: at 10 turns/s the hour-long window holds 36k turns; at 2k events/s it held 740k, read as one
dict each (+144 MiB RSS, and runs of up to 83 s, in `monitor bench soak`). About 6,000 turns a
segment (30,000 over five) resolve its reward mean, AUC and gap to a few hundredths; the counts stay
exact, and the intervals are computed on the rows read, so they are wider than the window's.

>>> plan = plan_window([(("a", None, None), 100, 30), (("b", None, None), 1000, 300)],
...                    SegmentScheme(domains=("a", "b")), max_turns=500)
>>> plan.counts["a/*/*"], plan.strides[("a", None, None)], plan.strides[("b", None, None)]
((100, 30), 1, 3)
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from monitor.analyze.segments import SegmentScheme

if TYPE_CHECKING:
    from monitor.store.analysis import GroupKey


@dataclass(frozen=True)
class WindowPlan:
    counts: dict[str, tuple[int, int]]  # segment -> (turns, rated turns) in the window, exact
    strides: dict[GroupKey, int]  # group -> read one turn in this many (1: all)
    segments: dict[GroupKey, str]  # group -> its segment

    @property
    def sampled(self) -> bool:
        return any(stride > 1 for stride in self.strides.values())

    @property
    def turns(self) -> int:
        return sum(turns for turns, _ in self.counts.values())

    def stride_of(self, segment: str) -> int:
        return max((stride for group, stride in self.strides.items() if self.segments[group] == segment), default=1)


def plan_window(groups: Iterable[tuple[GroupKey, int, int]], scheme: SegmentScheme, *, max_turns: int) -> WindowPlan:
    """``groups``: (group, turns, rated turns) of the window. Reads at most about ``max_turns``."""
    if max_turns < 1:
        raise ValueError(f"max_turns must be >= 1, got {max_turns}")
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    segments: dict[GroupKey, str] = {}
    for group, turns, rated in groups:
        segment = segments[group] = scheme.key(*group)
        counts[segment][0] += turns
        counts[segment][1] += rated
    strides: dict[str, int] = {}
    left = max_turns
    ordered = sorted(counts, key=lambda name: (counts[name][0], name))
    for position, segment in enumerate(ordered):
        turns = counts[segment][0]
        keep = min(turns, max(1, left // (len(ordered) - position)))
        left -= keep
        strides[segment] = math.ceil(turns / keep) if keep else 1
    return WindowPlan(counts={name: (turns, rated) for name, (turns, rated) in counts.items()},
                      strides={group: strides[segment] for group, segment in segments.items()}, segments=segments)
