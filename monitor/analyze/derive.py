"""Derive each turn's reward-hacking signals and prompt risk, once, off the ingest path.

Signals come from :func:`monitor.signals.derive_signals`: the lexical features plus the MiniLM
sentence classifiers for sycophancy, hedging, overpromise and refusal, in batches.

In ``serve``, :class:`SignalDeriver` calls :func:`fill_signals` continuously, a few seconds behind
ingest, so the work follows the arrival of turns and the analyzer's scheduled run finds it done
(the run's checkpoint never passes a rated turn whose signals are missing). With no deriver
running (``monitor analyze``, or ``MONITOR_DERIVE_INTERVAL_SECONDS=0``) the analyzer calls
:func:`fill_signals` at the start of its run. Each chunk is read in one short transaction, computed
with none open, and written in another, so ingest never waits behind it and a deriver that dies
halfway keeps what it derived.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from sqlalchemy.orm import Session, sessionmaker

from monitor.metrics import Metrics
from monitor.risk import is_harmful
from monitor.signals import DEFAULT_COMPLIANCE, derive_signals
from monitor.store.analysis import bound_waits, store_signals, turns_without_signals

log = logging.getLogger(__name__)

#: Turns whose signals are derived per transaction (select, compute, update).
FILL_CHUNK = 500


def fill_signals(sessions: sessionmaker[Session], *, required_language: Mapping[str, Sequence[str]] | None = None,
                 chunk: int = FILL_CHUNK, limit: int | None = None,
                 prepare: Callable[[Session], None] | None = None,
                 progress: Callable[[int], None] | None = None) -> int:
    """Derive the signals (and, where the producer sent none, the prompt risk) of turns that have
    none yet, ``chunk`` turns per transaction, at most ``limit`` in all; returns how many."""
    compliance = DEFAULT_COMPLIANCE if required_language is None else required_language
    filled = 0
    while limit is None or filled < limit:
        size = chunk if limit is None else min(chunk, limit - filled)
        # Read, derive with no transaction open (new text can take a while through the
        # classifiers), then write. Two derivers that meet on a turn write the same values.
        with sessions.begin() as session:
            if prepare:
                prepare(session)
            rows = turns_without_signals(session, size)
        if not rows:
            return filled
        updates = []
        derived = derive_signals([(row.prompt, row.response, row.domain) for row in rows], compliance=compliance)
        for row, signals in zip(rows, derived, strict=True):
            values: dict[str, object] = dict(signals.as_columns())
            if row.prompt_harmful is None:
                values.update(prompt_harmful=is_harmful(row.prompt), prompt_risk_source="classifier")
            else:  # the producer's verdict stays (every parameter set names the same columns)
                values.update(prompt_harmful=row.prompt_harmful, prompt_risk_source=row.prompt_risk_source)
            updates.append({"turn_id": row.id, **values})
        with sessions.begin() as session:
            if prepare:
                prepare(session)
            stored = store_signals(session, updates)
        filled += stored
        if progress:
            progress(filled)
        if stored < len(rows):  # turns ingest holds right now: the next pass takes them
            return filled
    return filled


#: Longest a deriver pass waits for ingest to catch up (``SignalDeriver.defer_to``).
MAX_DEFER_SECONDS = 5.0


class SignalDeriver(threading.Thread):
    """Derives the signals of new turns as they arrive: after each pass that found nothing to do
    it waits ``interval`` seconds (or until ``stop``); a failed pass is logged and retried, never
    fatal to the service. While ``defer_to()`` is true (ingest is behind the log: see
    :class:`monitor.ingest.backlog.Backlog`) a pass waits, at most ``max_defer`` seconds."""

    def __init__(self, sessions: sessionmaker[Session], stop: threading.Event, *, interval: float,
                 required_language: Mapping[str, Sequence[str]] | None = None,
                 prepare: Callable[[Session], None] | None = bound_waits, metrics: Metrics | None = None,
                 chunk: int = FILL_CHUNK, defer_to: Callable[[], bool] | None = None,
                 max_defer: float = MAX_DEFER_SECONDS) -> None:
        super().__init__(name="signal-deriver", daemon=True)
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        self.sessions, self.stop_event, self.interval = sessions, stop, interval
        self.required_language, self.prepare, self.metrics, self.chunk = required_language, prepare, metrics, chunk
        self.defer_to, self.max_defer = defer_to, max_defer
        self.deferred_seconds = 0.0
        #: Set once the classifiers are loaded (or failed to load: the passes retry and log it).
        self.ready = threading.Event()

    def warm_up(self) -> None:
        """Load the sentence classifiers (torch, transformers, MiniLM weights: 6-10 s of CPU that
        holds the GIL most of the time) now, before ingest starts, rather than in the middle of it."""
        started = time.monotonic()
        try:
            derive_signals([("", "Warming up.", None)])
        except Exception:  # noqa: BLE001 - the first pass retries and logs why
            log.exception("loading the signal classifiers failed; the deriver retries")
        else:
            log.info("signal classifiers loaded", extra={"seconds": round(time.monotonic() - started, 1)})
        finally:
            self.ready.set()

    def _give_way(self) -> None:
        if self.defer_to is None:
            return
        started = time.monotonic()
        deadline = started + self.max_defer
        while self.defer_to() and time.monotonic() < deadline and not self.stop_event.wait(0.1):
            pass
        self.deferred_seconds += time.monotonic() - started

    def run(self) -> None:
        self.warm_up()
        while not self.stop_event.is_set():
            self._give_way()
            started = time.monotonic()
            try:
                derived = fill_signals(self.sessions, required_language=self.required_language, chunk=self.chunk,
                                       limit=self.chunk, prepare=self.prepare)
            except Exception:  # noqa: BLE001 - the deriver must outlive one bad pass
                log.exception("deriving signals failed; retrying", extra={"retry_in_s": self.interval})
                self.stop_event.wait(self.interval)
                continue
            if self.metrics and derived:
                self.metrics.signals_derived.inc(derived)
                self.metrics.signals_derive_duration.observe(time.monotonic() - started)
            if derived < self.chunk:  # caught up: wait for new turns
                self.stop_event.wait(self.interval)
