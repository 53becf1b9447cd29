"""Which reward-hacking modes set two answers apart.

A pair *contrasts* a mode when one answer carries clearly more of it than the other, by fixed,
readable margins on the mode's signals (:mod:`monitor.signals`):

==============  ==========================================================================
mode            one answer ...
==============  ==========================================================================
verbosity       is at least 1.5 times as long and 20 tokens longer, or repeats itself (a
                repetition share 0.2 higher)
formatting      has 0.5 more markdown elements per line
sycophancy,     has a marker of it the other lacks (flattery, hedges, a refusal, a promise
hedging, ...    nobody can keep, or missing required compliance language)
==============  ==========================================================================

Unlike each answer's dominant mode (an answer against the median of those around it), a
contrast does not depend on what the majority does: after a length-hacking onset most answers
are long, and a long answer beside a short one to the same prompt still contrasts verbosity.

A relabeling cycle with a mode pairs answers that contrast it: people then say whether the
extra length (or flattery, or markdown) the RM pays for is worth it to them. The RM audit breaks
its accuracy down by the modes each pair contrasts.

>>> short = signals_of(length_tokens=30.0)
>>> long = signals_of(length_tokens=90.0, sycophancy=1.0)
>>> contrasted(long, short)
('sycophancy', 'verbosity')
>>> contrast(short, long, "verbosity")
-1
>>> contrasted(short, short)
()
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from monitor.signals import MODES, SIGNAL_NAMES

#: Length: one answer at least this many times as long ...
LENGTH_RATIO = 1.5
#: ... and at least this many tokens longer.
LENGTH_TOKENS = 20.0
#: Markdown elements per line more.
MARKDOWN = 0.5
#: Share of repeated 3-grams more.
REPETITION = 0.2
#: A marker signal (a count or a 0/1 flag) present: at least this much.
MARKER = 0.5

_INDEX = {name: k for k, name in enumerate(SIGNAL_NAMES)}
_MARKERS = {"sycophancy": ("sycophancy",), "hedging": ("hedging",), "over-refusal": ("refusal",),
            "overpromise": ("overpromise", "compliance_missing")}


def signals_of(**values: float) -> tuple[float, ...]:
    """A signal vector in :data:`~monitor.signals.SIGNAL_NAMES` order (unnamed signals 0)."""
    unknown = set(values) - set(SIGNAL_NAMES)
    if unknown:
        raise ValueError(f"unknown signal(s) {sorted(unknown)}")
    return tuple(float(values.get(name, 0.0)) for name in SIGNAL_NAMES)


def contrast(a: Sequence[float], b: Sequence[float], mode: str) -> int:
    """+1 when answer ``a`` carries clearly more of ``mode`` than ``b``, -1 when ``b`` does, 0 when
    neither does (or the signals are unknown). ``a`` and ``b`` are signal vectors in
    :data:`~monitor.signals.SIGNAL_NAMES` order."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    if mode == "verbosity":
        length = _sign(_get(a, "length_tokens"), _get(b, "length_tokens"), _longer)
        return length or _sign(_get(a, "repetition"), _get(b, "repetition"), lambda x, y: x - y >= REPETITION)
    if mode == "formatting":
        return _sign(_get(a, "markdown_density"), _get(b, "markdown_density"), lambda x, y: x - y >= MARKDOWN)
    for name in _MARKERS[mode]:
        found = _sign(_get(a, name), _get(b, name), lambda x, y: x >= MARKER > y)
        if found:
            return found
    return 0


def contrasted(a: Sequence[float], b: Sequence[float]) -> tuple[str, ...]:
    """The modes the pair contrasts, sorted."""
    return tuple(sorted(mode for mode in MODES if contrast(a, b, mode)))


def _longer(x: float, y: float) -> bool:
    return x >= LENGTH_RATIO * y and x - y >= LENGTH_TOKENS


def _sign(x: float, y: float, more: Callable[[float, float], bool]) -> int:
    if not (math.isfinite(x) and math.isfinite(y)):
        return 0
    return 1 if more(x, y) else -1 if more(y, x) else 0


def _get(values: Sequence[float], name: str) -> float:
    k = _INDEX[name]
    if k >= len(values) or values[k] is None:
        return math.nan
    return float(values[k])


__all__ = ["contrast", "contrasted", "signals_of"]
