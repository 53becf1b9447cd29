"""The retention prune as the service and the CLI run it: settings, protected turns, the schedule.

:func:`prune_store` applies the ``MONITOR_RETENTION_*`` settings (:mod:`monitor.store.retention`),
keeping the turns of the analyzer's reference windows: the drift report reads them back by event
id for as long as a calibration stands (a reference is frozen until an operator refits it), so
deleting them by age would leave the report without its reference.

:class:`RetentionSchedule` is what ``serve`` runs (roles ``all`` and ``analyzer``): the analyzer
thread calls :meth:`~RetentionSchedule.tick` after each run; once
``MONITOR_RETENTION_PRUNE_INTERVAL_SECONDS`` have passed since the last complete prune (the first
prune: :data:`FIRST_PRUNE_SECONDS` after start), it prunes for at most :data:`SLICE_SECONDS`. A
prune over a long history (the first one, say) thus goes a slice after each analyzer run until it
is through, and analysis never waits longer than a slice.
With several analyzers, one prunes at a time (the prune's own lock); a failure is logged and
retried the next period, never fatal.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from monitor.config import Settings
from monitor.metrics import Metrics
from monitor.store.analysis import load_states
from monitor.store.models import utcnow
from monitor.store.retention import BATCH_SIZE, Progress, PruneResult, RetentionPolicy, prune

log = logging.getLogger(__name__)

#: Longest a scheduled prune runs before it gives the analyzer its thread back.
SLICE_SECONDS = 30.0
#: The first prune waits this long after start (or one interval, if shorter): a process restarted
#: often (a crash loop, a rolling deploy) does not prune each time it starts.
FIRST_PRUNE_SECONDS = 600.0
#: A scheduled prune logs its progress at most this often.
PROGRESS_LOG_SECONDS = 10.0


def analyzer_references(session: Session) -> set[str]:
    """Event ids of the turns in every segment's reference windows, under every reward model (the
    current one, earlier ones a rollback would return to, and references still gathering)."""
    # Read from the stored JSON (SegmentState.to_json: tracks -> reference -> ids of
    # [event_id, conversation_id, turn]) rather than through SegmentState, which would decode every
    # array of the state and load scipy into `monitor db prune` for three ids a row.
    ids: set[str] = set()
    for value in load_states(session).values():
        for track in value["tracks"].values():
            ids.update(str(row[0]) for row in track["reference"]["ids"])
    return ids


def prune_store(settings: Settings, sessions: sessionmaker[Session], *, now: datetime | None = None,
                dry_run: bool = False, batch_size: int = BATCH_SIZE, keep_going: Callable[[], bool] | None = None,
                progress: Progress | None = None, lock_wait_seconds: float = 0.0) -> PruneResult:
    """:func:`monitor.store.retention.prune` with ``settings``' policy, keeping the analyzer's references."""
    return prune(sessions, RetentionPolicy.from_settings(settings), now or utcnow(), protected=analyzer_references,
                 dry_run=dry_run, batch_size=batch_size, keep_going=keep_going, progress=progress,
                 lock_wait_seconds=lock_wait_seconds)


class RetentionSchedule:
    """Prunes every ``MONITOR_RETENTION_PRUNE_INTERVAL_SECONDS``, a slice per :meth:`tick` (see the module)."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], *, metrics: Metrics | None = None,
                 stop: threading.Event | None = None, slice_seconds: float = SLICE_SECONDS,
                 batch_size: int = BATCH_SIZE, first_prune_after: float | None = None) -> None:
        """``first_prune_after``: seconds from now to the first prune (default: the shorter of
        :data:`FIRST_PRUNE_SECONDS` and the interval)."""
        if settings.retention_prune_interval_seconds <= 0:
            raise ValueError("MONITOR_RETENTION_PRUNE_INTERVAL_SECONDS is 0: no scheduled prune")
        self.settings = settings
        self.sessions = sessions
        self.metrics = metrics
        self.stop = stop or threading.Event()
        self.interval = settings.retention_prune_interval_seconds
        self.slice_seconds = slice_seconds
        self.batch_size = batch_size
        first = min(FIRST_PRUNE_SECONDS, self.interval) if first_prune_after is None else first_prune_after
        self._due = time.monotonic() + first
        self._logged = 0.0

    def tick(self) -> PruneResult | None:
        """Prune for up to a slice if one is due; the result, or None when none was due or it failed."""
        started = time.monotonic()
        if started < self._due:
            return None
        deadline = started + self.slice_seconds
        try:
            result = prune_store(self.settings, self.sessions, batch_size=self.batch_size, progress=self._progress,
                                 keep_going=lambda: time.monotonic() < deadline and not self.stop.is_set())
        except Exception:  # noqa: BLE001 - retention must never stop the service; the next period retries
            log.exception("retention prune failed; retrying next period")
            self._due = time.monotonic() + self.interval
            self._record("error", None)
            return None
        outcome = "skipped" if result.locked else "complete" if result.complete else "partial"
        # A partial prune carries on after the next analyzer run; the others wait a period.
        self._due = time.monotonic() + (0 if outcome == "partial" else self.interval)
        self._record(outcome, result)
        log.info("retention prune", extra={"outcome": outcome, "seconds": round(result.seconds, 3),
                                           "kept": result.kept, "notes": result.notes,
                                           "rows": {f"{table}_{action}": n for (table, action), n in
                                                    result.counts.items()}})
        return result

    def _progress(self, step: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - self._logged >= PROGRESS_LOG_SECONDS:
            self._logged = now
            log.info("retention prune progress", extra={"step": step, "done": done, "total": total})

    def _record(self, outcome: str, result: PruneResult | None) -> None:
        if self.metrics is None:
            return
        self.metrics.retention_prunes.labels(outcome=outcome).inc()
        if result is None:
            return
        for (table, action), rows in result.counts.items():
            if rows:
                self.metrics.retention_pruned_rows.labels(table=table, action=action).inc(rows)
        if outcome == "complete":
            self.metrics.retention_last_prune.set(time.time())
