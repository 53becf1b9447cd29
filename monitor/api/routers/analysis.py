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
        raise NotFound(
            "no drift report yet: it needs a fitted reference window and at least 30 turns in the current "
            "window (and MONITOR_ANALYZE_DRIFT_ROWS > 0); " + _no_run_yet(context.settings.analyze_interval_seconds))
    if format == "html":
        return HTMLResponse(run.drift_html)
    return DriftOut(run=RunOut.of(run), report=run.drift_summary or {})


def _no_run_yet(interval: float) -> str:
    schedule = f"`monitor serve` runs it every {interval:g} s" if interval else "the schedule is off"
    return f"no analysis has run yet: {schedule}, or run `monitor analyze`"
