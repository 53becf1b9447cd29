"""`Analyzer`: one incremental analysis run against the store, and the schedule that repeats it.

A run, under the analyzer lock (a PostgreSQL advisory lock on a connection of its own):

0. **Sweep**: join ratings two workers' ingest transactions left unjoined beside their turn
   (:mod:`monitor.store.sweep`), so they enter this run like any other.
1. **Derive** the signals of new turns, a chunk per transaction (:mod:`monitor.analyze.derive`),
   unless a :class:`~monitor.analyze.derive.SignalDeriver` does it continuously (``serve``).
2. **Read** one consistent snapshot in one short read-only transaction: the segments' states, the
   checkpoint, the watermarks, the rated turns that entered since the checkpoint, and the turns of
   the current window. Every read is bounded by new data or by the window, never by history:
   a run with more than ``entry_page`` entries due (the first run, ``--recompute``, a long outage)
   feeds them to the engine a page of entry time at a time, checkpointing each page.
3. **Compute** outside any transaction: feed the entries to the engine, score per-sample
   divergence of the window's new turns, the segment table, the drift report when due.
4. **Write** in one short transaction: changed states, the new checkpoint, alerts, divergence,
   the run row.
5. **Publish** alert changes to the flags topic; an alert is marked published once Kafka acked it.

Watermarks: per topic, the earlier of the event time of its 10th latest event and the lowest
latest-event-time of its partitions that are still active (ingest records one per partition with
its offsets), never ahead of the wall clock plus the ingest tolerance: no single event can move it,
and a partition that lags (a backfill, where partitions are consumed at different speeds) holds it
back instead of having its rated turns skipped. Entries settle ``settle_seconds``
behind the slower of the two topics' watermarks, so a rating still in flight on a lagging topic
is not skipped.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from monitor.analyze.derive import fill_signals
from monitor.analyze.drift_window import DriftInputs, build_drift_report, reference_event_ids
from monitor.analyze.engine import Advance, AnalysisConfig, Episode, advance, divergence_scores, entry_order, refit
from monitor.analyze.flags import FlagPublisher
from monitor.analyze.frame import TurnFrame
from monitor.analyze.segments import SegmentScheme
from monitor.analyze.state import SegmentState
from monitor.analyze.window_sample import WindowPlan, plan_window
from monitor.analyze.window_stats import reported_segments, segment_stats
from monitor.config import Settings
from monitor.errors import BrokerUnavailable, StoreUnavailable
from monitor.heap import trim_heap
from monitor.metrics import Metrics
from monitor.relabel.keeper import CycleKeeper
from monitor.review.estimate import VERDICTS
from monitor.review.report import build_report
from monitor.review.rubric import load_rubric
from monitor.review.sampler import ReviewSampler
from monitor.store.analysis import (
    alerts_by_key,
    analyzer_lock,
    bound_waits,
    checkpoint,
    delete_states,
    earliest_unready_entry,
    entry_page_end,
    entry_rows,
    firing_alerts,
    from_seconds,
    latest_run,
    load_states,
    partition_watermark,
    prompts_by_event_id,
    prune_runs,
    recent_entry_rows,
    rows_by_event_id,
    save_checkpoint,
    save_states,
    snapshot_isolation,
    store_divergence,
    undiverged_rows,
    unheard_partitions,
    unpublished_alerts,
    watermarks,
    window_groups,
    window_rows,
)
from monitor.store.models import Alert, AnalysisRun, utcnow
from monitor.store.review import stats as review_stats
from monitor.store.sweep import join_missed_ratings

if TYPE_CHECKING:
    from monitor.analyze.drift import DriftReport

log = logging.getLogger(__name__)

#: Runs kept in ``analysis_runs`` (one a minute: more than an hour and a half of history), and how
#: many of them keep their drift report's HTML (a few MB each).
RUNS_KEPT = 100
REPORTS_KEPT = 3
#: Entries a run reads at once: a catch-up over more goes page by page, so its memory is a page's.
ENTRY_PAGE = 20_000
#: New turns the per-sample divergence reads at once, and at most in one run (newest first; at
#: 2k turns/s a minute's schedule brings 120k).
DIVERGENCE_PAGE = 20_000
DIVERGENCE_PER_RUN = 400_000
#: The review gauges summarise the reviewed turns of this many days (event time) before the watermark.
REVIEW_REPORT_DAYS = 7


@dataclass
class RunSummary:
    """What one run did, for the CLI and the logs."""

    turns: int = 0  # turns of the current window
    entered: int = 0  # rated turns fed to the detectors by this run
    labelled: int = 0  # rated turns fed to the detectors so far (all runs)
    derived: int = 0  # turns whose signals this run derived
    swept: int = 0  # ratings joined by the sweep (their ingest transactions missed each other)
    scored: int = 0  # turns whose per-sample divergence this run set
    fitted: list[str] = field(default_factory=list)
    pages: int = 0  # pages of entry time this run went through (more than 1: a catch-up)
    opened: int = 0
    resolved: int = 0
    firing: int = 0
    published: int = 0
    publish_error: str | None = None
    drift: dict | None = None
    locked: bool = False
    seconds: float = 0.0
    drift_built: bool = False
    checkpoint: datetime | None = None
    queued: dict[str, int] = field(default_factory=dict)  # review items queued, per arm
    review_error: str | None = None
    cycles_opened: list[int] = field(default_factory=list)  # relabeling cycles the policy opened
    cycles_ended: list[int] = field(default_factory=list)  # ... that ended (complete or expired)
    cycles_announced: list[int] = field(default_factory=list)  # ... whose relabel_cycle/v1 event Kafka acknowledged
    relabel_error: str | None = None
    # Seconds per phase of the run: derive, read, compute, write (and publish when it ran).
    phases: dict[str, float] = field(default_factory=dict)

    def report(self) -> str:
        paged = f" in {self.pages} pages" if self.pages > 1 else ""
        lines = [f"entered {self.entered} rated turns{paged} ({self.labelled} so far); window of {self.turns} turns; "
                 f"signals derived for {self.derived}, divergence for {self.scored}; {self.seconds:.1f} s",
                 f"checkpoint: {self.checkpoint.isoformat() if self.checkpoint else 'none yet'}",
                 f"calibrations fitted: {', '.join(self.fitted) or 'none'}",
                 f"alerts: {self.opened} opened, {self.resolved} resolved, {self.firing} firing",
                 f"flags published: {self.published}"
                 + (f" (failed: {self.publish_error})" if self.publish_error else ""),
                 "review items queued: " + (", ".join(f"{n} {arm}" for arm, n in sorted(self.queued.items())) or "none")
                 + (f" (failed: {self.review_error})" if self.review_error else ""),
                 f"relabeling cycles: {_ids(self.cycles_opened)} opened by policy, {_ids(self.cycles_ended)} ended, "
                 f"{_ids(self.cycles_announced)} announced" + (f" (failed: {self.relabel_error})" if self.relabel_error
                                                             else "")]
        if self.drift is None:
            lines.append("drift report: not enough data yet" if self.drift_built else "drift report: not due yet")
        else:
            drifted = ", ".join(self.drift.get("drifted_columns", [])) or "none"
            embeddings = self.drift.get("embeddings") or {}
            lines.append(f"drift report: drifted columns: {drifted}; prompt embeddings drifted: "
                         f"{embeddings.get('drifted', 'n/a')}")
        return "\n".join(lines)


@dataclass
class _Snapshot:
    states: dict[str, SegmentState]
    checkpoint: float | None
    until: float | None  # the new checkpoint
    watermark: float | None
    entries: TurnFrame
    window: TurnFrame  # the current window's turns, a sample of it where ``plan`` says so
    plan: WindowPlan  # the window's exact counts, and how ``window`` samples it
    since: datetime | None  # where the window starts (event time)
    firing: dict[str, tuple[str, list[str]]]  # key -> (segment, modes) of alerts firing before the run
    drift_due: bool
    more: bool = False  # a page of a catch-up: more entries are due after ``until``


class Analyzer:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], *, metrics: Metrics | None = None,
                 publisher_factory: Callable[[], FlagPublisher] | None = None,
                 drift: DriftInputs | None = None, clock: Callable[[], datetime] = utcnow,
                 derive: bool = True, entry_page: int = ENTRY_PAGE, review_seed: int | None = None,
                 keeper: CycleKeeper | None = None) -> None:
        """``derive``: derive missing signals at the start of each run (False where a
        :class:`~monitor.analyze.derive.SignalDeriver` runs beside it). ``entry_page``: a run that
        finds more entries than this due goes through them a page at a time (each checkpointed).
        ``review_seed``: seeds the review sampler's draws (reproducible tests; default: fresh)."""
        if entry_page < 1:
            raise ValueError(f"entry_page must be >= 1, got {entry_page}")
        self.settings = settings
        self.derive = derive
        self.entry_page = entry_page
        self.sessions = sessions
        self.metrics = metrics
        self.scheme = SegmentScheme.from_settings(settings)
        self.config = AnalysisConfig.from_settings(settings, self.scheme)
        self.clock = clock
        self._publisher_factory = publisher_factory or (
            lambda: FlagPublisher(settings.bootstrap_servers, settings.flags_topic))
        self._drift = drift if drift is not None else DriftInputs(rows=settings.analyze_drift_rows)
        self.sampler = ReviewSampler(settings, sessions, seed=review_seed) if settings.review_enabled else None
        # Relabeling cycles: the policy, deadlines and completion, their events and webhook.
        self.keeper = keeper or CycleKeeper(settings, sessions, self.scheme, metrics=metrics)

    def warm_up(self) -> None:
        """Load what the first runs would load in the middle of traffic: the drift report's
        libraries and embedder, and the redactor (presidio, spaCy) the review queue and the
        retention prune use. In a 1M-event soak at 2k events/s the first report alone added
        160 MiB and seconds of GIL to a run that ingest shared the process with."""
        self._drift.warm_up()
        if self.settings.review_enabled or self.settings.retention_raw_text_days > 0:
            from monitor.redaction import redact

            redact("Warming up.")

    def run_once(self, *, publish: bool = True, drift: bool | None = None) -> RunSummary:
        """One run. ``drift``: build the drift report (None: when the last one is older than
        ``analyze_drift_interval_seconds``, so a one-minute schedule does not pay for it every time)."""
        started = time.monotonic()
        summary = RunSummary()
        try:
            with analyzer_lock(self._engine()) as locked:
                if not locked:
                    summary.locked = True
                    self._count("locked")
                    return summary
                self._run(summary, drift)
        except SQLAlchemyError as exc:
            self._count("error")
            raise StoreUnavailable(f"analysis could not read or write the store: {exc}") from exc
        if publish:
            publishing = time.monotonic()
            self._publish(summary)
            summary.phases["publish"] = time.monotonic() - publishing
        keeping = time.monotonic()
        self._keep_cycles(summary, publish)
        summary.phases["relabel"] = time.monotonic() - keeping
        summary.seconds = time.monotonic() - started
        self._count("ok")
        if self.metrics:
            self.metrics.analyze_duration.observe(summary.seconds)
            self.metrics.analyze_last_success.set(time.time())
        return summary

    def refit(self, segments: Sequence[str] | None = None) -> list[str]:
        """Fit the current reward model's calibration of ``segments`` (all: None) again on their most
        recent labels (after a relabeling cycle, say); their open episodes end. Returns the segments
        refitted now (a segment with too few recent labels gathers the rest from new traffic)."""
        with analyzer_lock(self._engine()) as locked:
            if not locked:
                raise StoreUnavailable("another analyzer is running; refit not done")
            with self.sessions.begin() as session:
                self._bound(session)
                states = {name: SegmentState.from_json(value) for name, value in load_states(session).items()}
                until = checkpoint(session)
                wanted = [s for s in (segments if segments is not None else states) if s in states]
                budget = self.config.reference_labels * max(1, len(wanted)) * 4
                recent = TurnFrame.from_rows(recent_entry_rows(session, until, budget), self.scheme) \
                    if until is not None else TurnFrame.from_rows([], self.scheme)
                recent = recent.take(entry_order(recent, self.config))
                result = Advance()
                for segment in wanted:
                    result.extend(refit(states[segment], recent.take(np.flatnonzero(recent.segment == segment)),
                                        self.config))
                save_states(session, {segment: states[segment].to_json() for segment in wanted})
                self._sync_alerts(session, result.episodes)
        return wanted

    def recompute(self) -> int:
        """Forget every segment's state and the checkpoint; the next run recomputes from every stored
        turn. Alerts keep their keys: the recompute updates them, it does not duplicate them."""
        with analyzer_lock(self._engine()) as locked:
            if not locked:
                raise StoreUnavailable("another analyzer is running; nothing forgotten")
            with self.sessions.begin() as session:
                return delete_states(session)

    # --- the run ---------------------------------------------------------------------------------

    def _run(self, summary: RunSummary, drift: bool | None) -> None:
        lap = time.monotonic()
        # Before anything is read: ratings two workers' transactions left unjoined enter this run.
        with self.sessions.begin() as session:
            self._bound(session)
            summary.swept = join_missed_ratings(session)
        if summary.swept and self.metrics:
            self.metrics.ratings_swept.inc(summary.swept)
        lap = _lap(summary.phases, "sweep", lap)
        if self.derive:
            summary.derived = fill_signals(self.sessions, required_language=self.settings.required_language,
                                           prepare=self._bound,
                                           progress=lambda n: log.info("deriving signals", extra={"turns": n}))
            lap = _lap(summary.phases, "derive", lap)
        opened: list[Alert] = []
        while True:
            snapshot = self._read(drift)
            lap = _lap(summary.phases, "read", lap)
            if not snapshot.more:
                break
            # A catch-up (first run, --recompute, a long outage) goes page by page of entry time,
            # each page checkpointed, so its memory is that of a page, not of the history.
            result = advance(snapshot.states, snapshot.entries, self.config)
            lap = _lap(summary.phases, "compute", lap)
            with self.sessions.begin() as session:
                self._bound(session)
                opened += self._save_entries(session, snapshot, result, summary)
            lap = _lap(summary.phases, "write", lap)
            log.info("analysis page", extra={"entered": result.entered, "checkpoint": from_seconds(snapshot.until)})
        result = advance(snapshot.states, snapshot.entries, self.config)
        segments = self._segments(snapshot, result)
        report = self._drift_report(snapshot) if snapshot.drift_due else None
        lap = _lap(summary.phases, "compute", lap)
        with self.sessions.begin() as session:
            self._bound(session)
            opened += self._save_entries(session, snapshot, result, summary)
            session.add(AnalysisRun(
                finished_at=utcnow(), watermark=from_seconds(snapshot.watermark),
                labelled=sum(state.labelled for state in snapshot.states.values()), segments=segments,
                drift_summary=report.summary if report else None, drift_html=report.html if report else None,
            ))
            prune_runs(session, keep=RUNS_KEPT, reports_kept=REPORTS_KEPT)
            firing = firing_alerts(session)
        lap = _lap(summary.phases, "write", lap)
        summary.scored = self._score_new_turns(snapshot)
        lap = _lap(summary.phases, "divergence", lap)
        summary.turns = snapshot.plan.turns
        summary.labelled = sum(state.labelled for state in snapshot.states.values())
        summary.opened, summary.firing = len(opened), len(firing)
        summary.drift, summary.drift_built = (report.summary if report else None), snapshot.drift_due
        summary.checkpoint = from_seconds(snapshot.until if snapshot.until is not None else snapshot.checkpoint)
        self._record(segments, firing, opened, snapshot.watermark)
        self._queue_reviews(summary, snapshot.watermark)
        _lap(summary.phases, "review", lap)
        log.info("analysis run", extra={"entered": summary.entered, "labelled": summary.labelled,
                                        "derived": summary.derived, "swept": summary.swept, "scored": summary.scored,
                                        "fitted": summary.fitted, "opened": summary.opened,
                                        "resolved": summary.resolved, "firing": summary.firing,
                                        "pages": summary.pages,
                                        "phase_seconds": {name: round(value, 3)
                                                          for name, value in summary.phases.items()}})

    def _save_entries(self, session: Session, snapshot: _Snapshot, result: Advance, summary: RunSummary) -> list[Alert]:
        """Write what feeding one snapshot's entries changed (states, checkpoint, alerts) and count
        it in ``summary``; returns the alerts it opened."""
        save_states(session, {name: snapshot.states[name].to_json() for name in sorted(result.changed)})
        if snapshot.until is not None:
            save_checkpoint(session, from_seconds(snapshot.until))
        opened, resolved = self._sync_alerts(session, result.episodes)
        summary.pages += 1
        summary.entered += result.entered
        summary.fitted += result.fitted
        summary.resolved += len(resolved)
        return opened

    def _read(self, drift: bool | None) -> _Snapshot:
        config = self.config
        limit = self.clock() + timedelta(seconds=self.settings.ingest_future_tolerance_seconds)
        with self.sessions.begin() as session:
            snapshot_isolation(session)
            self._bound(session)
            states = {name: SegmentState.from_json(value) for name, value in load_states(session).items()}
            previous = checkpoint(session)
            turns_at, ratings_at = _lowest(watermarks(session), self._partition_watermarks(session))
            watermark = min(turns_at, limit) if turns_at is not None else None
            until = None
            unheard = unheard_partitions(session, self.settings.consumer_group,
                                         [self.settings.conversations_topic, self.settings.ratings_topic],
                                         idle_seconds=self.settings.analyze_partition_idle_seconds)
            if unheard:  # an assigned partition not heard from yet may hold entries behind any checkpoint
                log.info("checkpoint held: partitions not heard from yet",
                         extra={"partitions": [f"{t}:{p}" for t, p in unheard]})
            elif watermark is not None:
                # Entries settle behind the slower topic, and never past a turn whose signals are missing.
                until = min(watermark, ratings_at or watermark) - timedelta(seconds=config.settle_seconds)
                unready = earliest_unready_entry(session)
                if unready is not None and unready <= until:
                    until = unready - timedelta(microseconds=1)
                if previous is not None and until <= previous:
                    until = None
            more = False
            if until is not None:
                page_end = entry_page_end(session, previous, until, self.entry_page)
                if page_end is not None and page_end < until:
                    until, more = page_end, True
            rows = entry_rows(session, previous, until) if until is not None else []
            if more:  # a page of a catch-up: the window, alerts and drift wait for its last page
                return _Snapshot(
                    states=states, checkpoint=_seconds(previous), until=_seconds(until),
                    watermark=_seconds(watermark), entries=_entry_frame(rows, self.scheme, config),
                    window=TurnFrame.from_rows([], self.scheme), plan=plan_window([], self.scheme, max_turns=1),
                    since=None, firing={}, drift_due=False, more=True)
            since = watermark - timedelta(seconds=config.window_seconds) if watermark is not None else None
            # The window's exact counts, then its turns: all of them, or a sample per segment past
            # MONITOR_ANALYZE_WINDOW_MAX_TURNS (at 2k events/s the hour held 740k turns).
            plan = plan_window(window_groups(session, since) if since is not None else [], self.scheme,
                               max_turns=self.settings.analyze_window_max_turns)
            window = [] if since is None else window_rows(session, since, plan.strides if plan.sampled else None)
            firing = {alert.key: (alert.segment, list(alert.evidence.get("attribution", {}).get("modes", [])))
                      for alert in firing_alerts(session)}
            if drift is None:
                last = latest_run(session, with_report=True)
                drift = last is None or (utcnow() - last.finished_at).total_seconds() >= \
                    self.settings.analyze_drift_interval_seconds
        return _Snapshot(
            states=states, checkpoint=_seconds(previous), until=_seconds(until), watermark=_seconds(watermark),
            entries=_entry_frame(rows, self.scheme, config), window=TurnFrame.from_rows(window, self.scheme),
            plan=plan, since=since, firing=firing, drift_due=bool(drift))

    def _score_new_turns(self, snapshot: _Snapshot) -> int:
        """Per-sample divergence of the window's scored turns that have none yet, in segments with a
        calibration, with the states this run saved: newest first, a page at a time, each page
        read, scored and written in transactions of its own (its memory and its row locks are a
        page's, whatever the rate), at most :data:`DIVERGENCE_PER_RUN` a run. Returns how many
        were written. Turns whose reward model has no calibration yet, and turns ingest held,
        stay empty and are tried again next run while they are in the window."""
        calibrated = {name for name, state in snapshot.states.items()
                      if any(track.calibration is not None for track in state.tracks.values())}
        groups = [group for group, segment in snapshot.plan.segments.items() if segment in calibrated]
        written = 0
        before: int | None = None
        read = 0
        while snapshot.since is not None and groups and read < DIVERGENCE_PER_RUN:
            with self.sessions.begin() as session:
                self._bound(session)
                rows = undiverged_rows(session, snapshot.since, groups, before_id=before,
                                       limit=min(DIVERGENCE_PAGE, DIVERGENCE_PER_RUN - read))
            if not rows:
                break
            read += len(rows)
            before = rows[-1]["id"]
            page = TurnFrame.from_rows(rows, self.scheme)
            values = divergence_scores(snapshot.states, page)
            with self.sessions.begin() as session:
                self._bound(session)
                written += store_divergence(session, {int(row_id): float(value) for row_id, value
                                                      in zip(page.row_id, values, strict=True) if math.isfinite(value)})
            if len(rows) < DIVERGENCE_PAGE:
                break
        return written

    def _partition_watermarks(self, session: Session) -> tuple[datetime | None, datetime | None]:
        """Per topic, the lowest event time of its active partitions (a lagging one holds it back)."""
        # A partition idle for MONITOR_ANALYZE_PARTITION_IDLE_SECONDS while others are not stops
        # holding it back: a topic with more partitions than traffic must not stall the analyzer.
        settings, idle = self.settings, self.settings.analyze_partition_idle_seconds
        return (partition_watermark(session, settings.consumer_group, settings.conversations_topic,
                                    idle_seconds=idle),
                partition_watermark(session, settings.consumer_group, settings.ratings_topic, idle_seconds=idle))

    def _segments(self, snapshot: _Snapshot, result: Advance) -> list[dict]:
        firing: dict[str, dict[str, list[str]]] = defaultdict(dict)
        for key, (segment, modes) in snapshot.firing.items():
            firing[segment][key] = modes
        for key, episode in result.episodes.items():
            if episode.state == "firing":
                firing[episode.segment][key] = list(episode.modes) or firing[episode.segment].get(key, [])
            else:
                firing[episode.segment].pop(key, None)
        plan = snapshot.plan
        return [segment_stats(name, snapshot.window, snapshot.states.get(name), list(firing[name].values()),
                              snapshot.watermark, self.config, counts=plan.counts.get(name, (0, 0)),
                              stride=plan.stride_of(name))
                for name in reported_segments(self.scheme, snapshot.window, [*snapshot.states, *plan.counts])]

    def _drift_report(self, snapshot: _Snapshot) -> DriftReport | None:
        if self._drift.rows <= 0:
            return None
        with self.sessions.begin() as session:
            self._bound(session)
            reference = TurnFrame.from_rows(rows_by_event_id(session, reference_event_ids(snapshot.states)),
                                            self.scheme)

        def prompts(event_ids: Sequence[str]) -> dict[str, str]:
            with self.sessions.begin() as session:
                self._bound(session)
                return prompts_by_event_id(session, event_ids)

        return build_drift_report(reference, snapshot.window, self._drift, prompts)

    def _queue_reviews(self, summary: RunSummary, watermark: float | None) -> None:
        """Queue the periods the analyzer has now seen for human review. A failure here (a text
        the redactor chokes on) is logged and retried next run; it never stops the analysis."""
        if self.sampler is None:
            return
        try:
            summary.queued = dict(self.sampler.sample(from_seconds(watermark)))
            if self.metrics:
                self._record_review(from_seconds(watermark))
        except Exception as exc:  # noqa: BLE001 - the analysis must go on; the next run retries
            summary.review_error = f"{type(exc).__name__}: {exc}"
            log.exception("review sampling failed; retrying on the next run")

    def _keep_cycles(self, summary: RunSummary, publish: bool) -> None:
        try:
            kept = self.keeper.run(publish=publish)
        except Exception as exc:  # noqa: BLE001 - the analysis must go on; the next run retries
            summary.relabel_error = f"{type(exc).__name__}: {exc}"
            log.exception("relabeling cycles not kept; retrying on the next run")
            return
        summary.cycles_opened, summary.cycles_ended = kept.opened, kept.ended
        summary.cycles_announced = kept.announced.published
        if kept.announced.publish_error:
            summary.relabel_error = kept.announced.publish_error

    def _record_review(self, watermark: datetime | None) -> None:
        """The review gauges: the queue's stats, and the report over the last REVIEW_REPORT_DAYS of
        event time (intervals but no agreement bootstrap: this runs every minute)."""
        assert self.metrics is not None
        rubric = load_rubric()
        since = watermark - timedelta(days=REVIEW_REPORT_DAYS) if watermark is not None else None
        with self.sessions() as session:
            now = utcnow()
            stats = review_stats(session, now)
            report = build_report(session, rubric, since=since, draws=0)
        self.metrics.record_review(stats, report, VERDICTS)

    def _sync_alerts(self, session: Session, episodes: dict[str, Episode]) -> tuple[list[Alert], list[Alert]]:
        """Upsert one alert per changed episode (its key never changes); returns the alerts this
        call opened and resolved."""
        existing = alerts_by_key(session, sorted(episodes))
        opened: list[Alert] = []
        resolved: list[Alert] = []
        now = utcnow()
        for key, episode in episodes.items():
            alert = existing.get(key)
            if alert is None:
                alert = Alert(key=key, segment=episode.segment, detector=episode.detector,
                              direction=episode.direction, started_at=from_seconds(episode.started_at),
                              first_seen_at=now, published_state=None, mode="", evidence={}, state="firing")
                session.add(alert)
                opened.append(alert)
            if alert.state == "firing" and episode.state == "resolved":
                resolved.append(alert)
            alert.state, alert.resolved_at = episode.state, from_seconds(episode.resolved_at)
            if episode.mode is not None:
                alert.mode = episode.mode
            if episode.evidence is not None:
                alert.evidence = {**(alert.evidence or {}), **episode.evidence, "detections": episode.detections}
            alert.updated_at = now
        session.flush()
        return opened, resolved

    def _publish(self, summary: RunSummary) -> None:
        with self.sessions.begin() as session:
            self._bound(session)
            pending = unpublished_alerts(session)
            if not pending:
                return
            try:
                publisher = self._publisher_factory()
                try:
                    publisher.publish(pending)
                finally:
                    publisher.close()
            except BrokerUnavailable as exc:
                summary.publish_error = str(exc)
                log.warning("flags not published; retrying on the next run",
                            extra={"pending": len(pending), "error": str(exc)})
                return
            for alert in pending:
                if self.metrics:
                    if alert.published_state is None and alert.state == "resolved":
                        self.metrics.flags_published.labels(state="firing").inc()
                    self.metrics.flags_published.labels(state=alert.state).inc()
                alert.published_state = alert.state
            summary.published = len(pending)

    def _record(self, segments: list[dict], firing: list[Alert], opened: list[Alert], watermark: float | None) -> None:
        if not self.metrics:
            return
        counts: dict[tuple[str, str, str], int] = defaultdict(int)
        for alert in firing:
            counts[(alert.segment, alert.detector, alert.mode or "none")] += 1
        self.metrics.record_analysis(segments, dict(counts))
        for alert in opened:
            self.metrics.alerts_opened.labels(detector=alert.detector, mode=alert.mode).inc()
        if watermark is not None:
            self.metrics.analyze_watermark.set(watermark)

    def _bound(self, session: Session) -> None:
        bound_waits(session)

    def _engine(self):  # noqa: ANN202 - the sessionmaker's bound Engine
        return self.sessions.kw["bind"]

    def _count(self, outcome: str) -> None:
        if self.metrics:
            self.metrics.analyze_runs.labels(outcome=outcome).inc()


def _lap(phases: dict[str, float], name: str, since: float) -> float:
    """Add the seconds since ``since`` to phase ``name``; returns now, the next phase's start."""
    now = time.monotonic()
    phases[name] = phases.get(name, 0.0) + now - since
    return now


def _ids(ids: list[int]) -> str:
    return f"{len(ids)} ({', '.join(map(str, ids))})" if ids else "0"


def _lowest(*pairs: tuple[datetime | None, datetime | None]) -> tuple[datetime | None, datetime | None]:
    """Element-wise the earliest of the known values (None where none is known)."""
    out = []
    for values in zip(*pairs, strict=True):
        known = [value for value in values if value is not None]
        out.append(min(known) if known else None)
    return out[0], out[1]


def _entry_frame(rows: list[dict], scheme: SegmentScheme, config: AnalysisConfig) -> TurnFrame:
    entries = TurnFrame.from_rows(rows, scheme)
    return entries.take(entry_order(entries, config))


def _seconds(value: datetime | None) -> float | None:
    return None if value is None else value.astimezone(UTC).timestamp()


class AnalyzerThread(threading.Thread):
    """Runs the analyzer every ``interval`` seconds until ``stop`` is set; a failed run is logged
    and retried on the next tick, never fatal to ingest. ``after_run`` (the retention schedule,
    :class:`monitor.retention.RetentionSchedule`) is called after each run, in this thread, so it
    never overlaps this process's runs; it too is logged and retried if it fails."""

    def __init__(self, analyzer: Analyzer, interval: float, stop: threading.Event,
                 after_run: Callable[[], object] | None = None) -> None:
        super().__init__(name="analyzer", daemon=True)
        self.analyzer = analyzer
        self.interval = interval
        self.stop_event = stop
        self.after_run = after_run
        self.ready = threading.Event()  # set once warmed up (Analyzer.warm_up), whether that worked or not

    def run(self) -> None:
        started = time.monotonic()
        try:
            self.analyzer.warm_up()
        except Exception:  # noqa: BLE001 - the runs load what they need, and log why if they cannot
            log.exception("warming up the analyzer failed; its runs load what they need")
        else:
            log.info("analyzer warmed up", extra={"seconds": round(time.monotonic() - started, 1)})
        finally:
            self.ready.set()
        while not self.stop_event.wait(self.interval):
            try:
                self.analyzer.run_once()
            except Exception:  # noqa: BLE001 - the schedule must outlive one bad run
                log.exception("analysis run failed; retrying on the next tick")
            if self.after_run is not None and not self.stop_event.is_set():
                try:
                    self.after_run()
                except Exception:  # noqa: BLE001 - housekeeping never stops the schedule
                    log.exception("after-run task failed; retrying on the next tick")
            trim_heap()  # what the run read is freed; give its pages back (monitor.heap)
