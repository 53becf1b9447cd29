"""What the analyzer found: ``GET /v1/alerts``, ``GET /v1/segments``, ``GET /v1/reports/drift``.

All three read what the latest analyzer run wrote to the store; none of them computes anything,
so every API replica answers the same. Viewer and admin keys.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse
from pydantic import BaseModel
from sqlalchemy import select

from monitor.api.auth import require
from monitor.api.deps import ContextDep, SessionDep
from monitor.auth import VIEW
from monitor.config import Settings
from monitor.errors import NotFound
from monitor.store.analysis import latest_run, list_alerts
from monitor.store.models import Alert, AnalysisRun, RelabelCycle

router = APIRouter(prefix="/v1", tags=["analysis"], dependencies=[Depends(require(VIEW))])


class AlertOut(BaseModel):
    id: int
    key: str
    segment: str
    detector: str
    direction: str
    mode: str
    modes: list[str]
    state: str
    started_at: datetime
    resolved_at: datetime | None
    first_seen_at: datetime
    updated_at: datetime
    published: bool
    evidence: dict[str, Any]
    #: Relabeling cycles opened for this alert (by an operator or the policy), oldest first.
    relabel_cycles: list[int] = []

    @classmethod
    def of(cls, alert: Alert, cycles: list[int] | None = None) -> AlertOut:
        return cls(
            id=alert.id, key=alert.key, segment=alert.segment, detector=alert.detector, direction=alert.direction,
            mode=alert.mode, modes=list(alert.evidence.get("attribution", {}).get("modes", [])),
            state=alert.state, started_at=alert.started_at, resolved_at=alert.resolved_at,
            first_seen_at=alert.first_seen_at, updated_at=alert.updated_at,
            published=alert.published_state == alert.state, evidence=alert.evidence, relabel_cycles=cycles or [],
        )


class AlertsOut(BaseModel):
    alerts: list[AlertOut]


class RunOut(BaseModel):
    id: int
    finished_at: datetime
    watermark: datetime | None
    labelled: int

    @classmethod
    def of(cls, run: AnalysisRun) -> RunOut:
        return cls(id=run.id, finished_at=run.finished_at, watermark=run.watermark, labelled=run.labelled)


class SegmentsOut(BaseModel):
    run: RunOut
    segments: list[dict[str, Any]]


class DriftOut(BaseModel):
    run: RunOut
    report: dict[str, Any]


@router.get("/alerts")
def alerts(
    session: SessionDep,
    state: Literal["firing", "resolved"] | None = None,
    segment: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AlertsOut:
    """Divergence alerts, newest first (by event time of the first detection)."""
    found = list_alerts(session, state=state, segment=segment, limit=limit)
    cycles: dict[int | None, list[int]] = defaultdict(list)
    for alert_id, cycle_id in session.execute(select(RelabelCycle.alert_id, RelabelCycle.id).where(
            RelabelCycle.alert_id.in_([a.id for a in found])).order_by(RelabelCycle.id)):
        cycles[alert_id].append(cycle_id)
    return AlertsOut(alerts=[AlertOut.of(a, cycles.get(a.id)) for a in found])


@router.get("/segments")
def segments(session: SessionDep, context: ContextDep) -> SegmentsOut:
    """Per segment, from the latest analyzer run: reward mean, realised and estimated satisfaction,
    their gap with a 95% CI, AUC, signal means, safety rates, status and firing alerts."""
    run = latest_run(session)
    if run is None:
        raise NotFound(_no_run_yet(context.settings.analyze_interval_seconds))
    return SegmentsOut(run=RunOut.of(run), segments=run.segments)


@router.get("/reports/drift", response_model=None)
def drift_report(
    session: SessionDep, context: ContextDep, format: Literal["json", "html"] = "json"
) -> DriftOut | HTMLResponse:
    """The latest input-drift report: a JSON summary, or evidently's HTML with ``format=html``."""
    run = latest_run(session, with_report=True)
    if run is None or run.drift_html is None:
        raise NotFound(_no_report_yet(latest_run(session), context.settings))
    if format == "html":
        return HTMLResponse(run.drift_html)
    return DriftOut(run=RunOut.of(run), report=run.drift_summary or {})


def _no_report_yet(latest: AnalysisRun | None, settings: Settings) -> str:
    """Why there is no drift report: no analyzer run yet, or what the latest run lacked; and when one can come.

    Until a first report exists every run tries to build one, so the next run with the data does."""
    if latest is None:
        return "no drift report yet: " + _no_run_yet(settings.analyze_interval_seconds)
    if settings.analyze_drift_rows <= 0:
        return "no drift report: MONITOR_ANALYZE_DRIFT_ROWS is 0, which turns the report off"
    lacked = []
    if all(segment.get("status") == "warming_up" for segment in latest.segments):
        # One fitted segment is enough: the report compares all reference windows with the current one.
        needed = min((segment.get("reference_labels_needed") or 0 for segment in latest.segments), default=0)
        lacked.append("a fitted reference window (every segment is warming up"
                      + (f"; the nearest needs {needed} more rated turns)" if needed else ")"))
    turns = sum(segment.get("turns") or 0 for segment in latest.segments)
    if turns < 30:
        lacked.append(f"30 turns in the current window (it held {turns})")
    # Neither: too few of the turns had a reward, on one side or the other.
    why = " and ".join(lacked) or "30 scored turns in its reference windows and in the current window"
    return (f"no drift report yet: the latest analyzer run (#{latest.id}, finished "
            f"{latest.finished_at.isoformat(timespec='seconds')}) lacked {why}; the next run that has them builds "
            f"one ({_schedule(settings.analyze_interval_seconds)}, or run `monitor analyze`), then scheduled runs "
            f"rebuild it at most every {settings.analyze_drift_interval_seconds:g} s "
            "(MONITOR_ANALYZE_DRIFT_INTERVAL_SECONDS)")


def _schedule(interval: float) -> str:
    return f"`monitor serve` runs the analyzer every {interval:g} s" if interval else "the schedule is off"


def _no_run_yet(interval: float) -> str:
    return f"no analysis has run yet: {_schedule(interval)}, or run `monitor analyze`"
