"""The reward model against humans on a cycle's pairs: its pairwise accuracy.

For each labelled pair, the human preferred response A or B (ties are left out of the accuracy,
and counted); the RM agrees when it scored the preferred response higher. Pairs whose two scores
are equal or unknown are left out too. Accuracy is the share of agreements over the decisive,
scored pairs, with a Wilson 95% interval, overall and per segment and per mode. 0.5 is a coin
flip; a hacked slice shows the RM below it (it prefers what people do not).

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

from monitor.analyze.uncertainty import Z95


@dataclass(frozen=True)
class AuditPair:
    segment: str
    mode: str | None
    reward_a: float | None  # the RM's score of the response shown as A
    reward_b: float | None
    preference: str  # A | B | tie


def wilson(successes: int, n: int) -> list[float] | None:
    if n == 0:
        return None
    p = successes / n
    centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / (1 + Z95 ** 2 / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def _summary(pairs: Sequence[AuditPair]) -> dict[str, Any]:
    decisive = [p for p in pairs if p.preference in ("A", "B") and p.reward_a is not None
                and p.reward_b is not None and p.reward_a != p.reward_b]
    agree = sum((float(p.reward_a or 0.0) > float(p.reward_b or 0.0)) == (p.preference == "A") for p in decisive)
    return {"pairs": len(decisive), "agree": agree, "ties": sum(p.preference == "tie" for p in pairs),
            "accuracy": agree / len(decisive) if decisive else None, "ci95": wilson(agree, len(decisive))}


def rm_accuracy(pairs: Sequence[AuditPair]) -> dict[str, Any]:
    by_segment: dict[str, list[AuditPair]] = defaultdict(list)
    by_mode: dict[str, list[AuditPair]] = defaultdict(list)
    for pair in pairs:
        by_segment[pair.segment].append(pair)
        by_mode[pair.mode or "none"].append(pair)
    return {"overall": _summary(pairs),
            "segments": {name: _summary(members) for name, members in sorted(by_segment.items())},
            "modes": {name: _summary(members) for name, members in sorted(by_mode.items())}}
