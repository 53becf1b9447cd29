"""`Backlog`: whether ingest is behind the log right now, for work that should give way to it.

The ingest loop notes every poll: a full batch (``batch_size`` records) means more are waiting.
While that is so, the signal deriver (:class:`monitor.analyze.derive.SignalDeriver`) defers its
passes, so a process catching up on a backlog spends its CPU on consuming it (the deriver runs
MiniLM classifiers; on a 2-core machine it took a third of `serve`'s ingest rate, see
docs/ingest.md). A deferral is bounded: the deriver still makes one pass per ``max_defer``
seconds, so its work never stops altogether under a permanent backlog.

>>> clock = iter([0.0, 0.5, 0.6, 3.0]).__next__
>>> backlog = Backlog(batch_size=500, settle=2.0, clock=clock)
>>> backlog.note_poll(500)   # t=0: a full batch
>>> backlog.behind()         # t=0.5
True
>>> backlog.note_poll(12)    # t=0.6: caught up
>>> backlog.behind()         # t=3.0
False
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Backlog:
    def __init__(self, batch_size: int, *, settle: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._batch_size = batch_size
        self._settle = settle
        self._clock = clock
        self._full_until = float("-inf")

    def note_poll(self, records: int) -> None:
        """Called by the ingest loop after each poll with the number of records it returned."""
        if records >= self._batch_size:
            self._full_until = self._clock() + self._settle
        else:
            self._full_until = float("-inf")

    def behind(self) -> bool:
        """Whether the last poll returned a full batch, within the last ``settle`` seconds."""
        return self._clock() < self._full_until
