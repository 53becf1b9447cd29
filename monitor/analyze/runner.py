"""`Analyzer`: one analysis run against the store, and the schedule that repeats it inside `serve`.

A run reads every turn's analysis columns, fits the calibrations of segments that have just
gathered their reference, detects and explains divergence episodes, builds the drift report,
and writes calibrations, alerts and the run's segment table in one transaction (under an
advisory lock on PostgreSQL, so only one analyzer works at a time). Alert state changes are then
published to the flags topic; an alert is marked published only once Kafka acknowledged it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from monitor.analyze.calibration import Calibration
from monitor.analyze.drift_window import DriftInputs, build_drift_report
from monitor.analyze.engine import Analysis, AnalysisConfig, Episode, analyze
from monitor.analyze.flags import FlagPublisher
from monitor.analyze.frame import TurnFrame
from monitor.analyze.segments import SegmentScheme
from monitor.config import Settings
from monitor.errors import BrokerUnavailable, StoreUnavailable
from monitor.metrics import Metrics
from monitor.store.analysis import (
    alerts_by_key,
    calibration_params,
    fill_signals,
    from_seconds,
    latest_run,
    prune_runs,
    save_calibration,
    try_analyzer_lock,
    turn_rows,
    unpublished_alerts,
)
from monitor.store.models import Alert, AnalysisRun, utcnow

log = logging.getLogger(__name__)

#: Runs kept in ``analysis_runs`` (one a minute: more than an hour and a half of history), and how
#: many of them keep their drift report's HTML (a few MB each).
RUNS_KEPT = 100
REPORTS_KEPT = 3


@dataclass
class RunSummary:
    """What one run did, for the CLI and the logs."""

    turns: int = 0
    labelled: int = 0
    derived: int = 0  # turns whose signals this run derived
    fitted: list[str] = field(default_factory=list)
    opened: int = 0
    resolved: int = 0
    firing: int = 0
    published: int = 0
    publish_error: str | None = None
    drift: dict | None = None
    locked: bool = False
    seconds: float = 0.0
    drift_built: bool = False

    def report(self) -> str:
        lines = [f"analysed {self.turns} turns ({self.labelled} rated; signals derived for {self.derived}) "
                 f"in {self.seconds:.1f} s",
                 f"calibrations fitted: {', '.join(self.fitted) or 'none'}",
                 f"alerts: {self.opened} opened, {self.resolved} resolved, {self.firing} firing",
                 f"flags published: {self.published}" + (f" (failed: {self.publish_error})" if self.publish_error else "")]
        if self.drift is None:
            lines.append("drift report: not enough data yet" if self.drift_built else "drift report: not due yet")
        else:
            drifted = ", ".join(self.drift.get("drifted_columns", [])) or "none"
            embeddings = self.drift.get("embeddings") or {}
            lines.append(f"drift report: drifted columns: {drifted}; prompt embeddings drifted: "
                         f"{embeddings.get('drifted', 'n/a')}")
        return "\n".join(lines)


class Analyzer:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], *, metrics: Metrics | None = None,
                 publisher_factory: Callable[[], FlagPublisher] | None = None,
                 drift: DriftInputs | None = None) -> None:
        self.settings = settings
        self.sessions = sessions
        self.metrics = metrics
        self.config = AnalysisConfig.from_settings(settings)
        self.scheme = SegmentScheme.from_settings(settings)
        self._publisher_factory = publisher_factory or (
            lambda: FlagPublisher(settings.bootstrap_servers, settings.flags_topic))
        self._drift = drift if drift is not None else DriftInputs(rows=settings.analyze_drift_rows)

    def run_once(self, *, publish: bool = True, drift: bool | None = None) -> RunSummary:
        """One run. ``drift``: build the drift report (None: when the last one is older than
        ``analyze_drift_interval_seconds``, so a one-minute schedule does not pay for it every time)."""
        started = time.monotonic()
        summary = RunSummary()
        try:
            with self.sessions() as session, session.begin():
                if not try_analyzer_lock(session):
                    summary.locked = True
                    self._count("locked")
                    return summary
                self._analyze(session, summary, drift)
        except SQLAlchemyError as exc:
            self._count("error")
            raise StoreUnavailable(f"analysis could not read or write the store: {exc}") from exc
        if publish:
            self._publish(summary)
        summary.seconds = time.monotonic() - started
        self._count("ok")
        if self.metrics:
            self.metrics.analyze_duration.observe(summary.seconds)
            self.metrics.analyze_last_success.set(time.time())
        return summary

    def _analyze(self, session: Session, summary: RunSummary, drift: bool | None) -> None:
        summary.derived = fill_signals(session, required_language=self.settings.required_language,
                                       progress=lambda n: log.info("deriving signals", extra={"turns": n}))
        frame = TurnFrame.from_rows(turn_rows(session), self.scheme)
        calibrations = {segment: Calibration.from_params(params)
                        for segment, params in calibration_params(session).items()}
        analysis = analyze(frame, calibrations, self.config, self.scheme)
        for segment in analysis.fitted:
            calibration = analysis.calibrations[segment]
            scorers = sorted(set(frame.scorer[(frame.segment == segment) & (frame.ts <= calibration.reference_to)]))
            save_calibration(session, segment, calibration.to_params(), labels=calibration.labels,
                             scorer=",".join(scorers)[:256] or None,
                             reference_from=from_seconds(calibration.reference_from),
                             reference_to=from_seconds(calibration.reference_to))
        opened, resolved, firing = _sync_alerts(session, analysis.episodes)
        if drift is None:
            last = latest_run(session, with_report=True)
            drift = last is None or (utcnow() - last.finished_at).total_seconds() >= \
                self.settings.analyze_drift_interval_seconds
        report = build_drift_report(session, frame, analysis, self.config, self._drift) if drift else None
        session.add(AnalysisRun(
            finished_at=utcnow(), watermark=from_seconds(analysis.watermark), labelled=analysis.labelled,
            segments=analysis.segments, drift_summary=report.summary if report else None,
            drift_html=report.html if report else None,
        ))
        summary.turns, summary.labelled, summary.fitted = len(frame), analysis.labelled, analysis.fitted
        summary.opened, summary.resolved, summary.firing = len(opened), len(resolved), len(firing)
        summary.drift = report.summary if report else None
        summary.drift_built = drift
        prune_runs(session, keep=RUNS_KEPT, reports_kept=REPORTS_KEPT)
        self._record(analysis, firing, opened)
        log.info("analysis run", extra={"turns": summary.turns, "labelled": summary.labelled,
                                        "fitted": analysis.fitted, "opened": summary.opened,
                                        "resolved": summary.resolved, "firing": summary.firing})

    def _publish(self, summary: RunSummary) -> None:
        with self.sessions() as session, session.begin():
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
                alert.published_state = alert.state
                if self.metrics:
                    self.metrics.flags_published.labels(state=alert.state).inc()
            summary.published = len(pending)

    def _record(self, analysis: Analysis, firing: list[Alert], opened: list[Alert]) -> None:
        if not self.metrics:
            return
        counts = Counter((alert.segment, alert.detector) for alert in firing)
        self.metrics.record_analysis(analysis.segments, dict(counts))
        for alert in opened:
            self.metrics.alerts_opened.labels(detector=alert.detector, mode=alert.mode).inc()
        if analysis.watermark is not None:
            self.metrics.analyze_watermark.set(analysis.watermark)

    def _count(self, outcome: str) -> None:
        if self.metrics:
            self.metrics.analyze_runs.labels(outcome=outcome).inc()


def _sync_alerts(session: Session, episodes: list[Episode]) -> tuple[list[Alert], list[Alert], list[Alert]]:
    """Upsert one alert per episode (keyed, so re-detection never duplicates); returns the alerts
    opened and resolved by this run, and those firing after it."""
    existing = alerts_by_key(session)
    opened: list[Alert] = []
    resolved: list[Alert] = []
    firing: list[Alert] = []
    now = utcnow()
    for episode in episodes:
        alert = existing.pop(episode.key, None)
        if alert is None:
            alert = Alert(key=episode.key, segment=episode.segment, detector=episode.detector,
                          direction=episode.direction, started_at=from_seconds(episode.started_at),
                          first_seen_at=now, published_state=None)
            session.add(alert)
            opened.append(alert)
        elif alert.state == "firing" and episode.state == "resolved":
            resolved.append(alert)
        alert.state, alert.resolved_at = episode.state, from_seconds(episode.resolved_at)
        alert.mode, alert.evidence, alert.updated_at = episode.mode, episode.evidence, now
        if alert.state == "firing":
            firing.append(alert)
    # An episode a recomputation no longer finds (its calibration was refitted, or late ratings
    # changed the stream) is closed, not deleted: it was real when it was published.
    for alert in existing.values():
        if alert.state == "firing":
            alert.state, alert.resolved_at, alert.updated_at = "resolved", alert.started_at, now
            alert.evidence = {**alert.evidence, "withdrawn": True}
            resolved.append(alert)
    session.flush()
    return opened, resolved, firing


class AnalyzerThread(threading.Thread):
    """Runs the analyzer every ``interval`` seconds until ``stop`` is set; a failed run is logged
    and retried on the next tick, never fatal to ingest."""

    def __init__(self, analyzer: Analyzer, interval: float, stop: threading.Event) -> None:
        super().__init__(name="analyzer", daemon=True)
        self.analyzer = analyzer
        self.interval = interval
        self.stop_event = stop

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            try:
                self.analyzer.run_once()
            except Exception:  # noqa: BLE001 - the schedule must outlive one bad run
                log.exception("analysis run failed; retrying on the next tick")
