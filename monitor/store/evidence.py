"""Reads behind the operator pages (``/alerts/{id}``): a segment's reward and satisfaction in time
bins, the text of an alert's top examples, the latest drift verdict, the cycles opened on an alert.
Each read is bounded: bins aggregate in the database, examples are a handful of ids."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func, literal, select
from sqlalchemy.orm import Session

from monitor.store.models import AnalysisRun, RelabelCycle, Turn


@dataclass(frozen=True)
class BinGroup:
    """Sums of one time bin for one (domain, model version, locale): the caller maps these to
    segments and adds up the groups of one segment."""

    bin: int
    domain: str
    model_version: str
    locale: str | None
    reward_sum: float
    rewards: int
    satisfaction_sum: float
    ratings: int


def time_span(session: Session) -> tuple[datetime | None, datetime | None]:
    """Event time of the earliest and the latest stored turn."""
    row = session.execute(select(func.min(Turn.ts), func.max(Turn.ts))).one()
    return row[0], row[1]


def binned_turns(session: Session, edges: Sequence[datetime], *, domain: str | None = None) -> list[BinGroup]:
    """Per bin ``[edges[i], edges[i + 1])`` and (domain, model version, locale): the sum and count of
    scored turns' rewards and of rated turns' satisfaction. One query; ``domain`` narrows it."""
    if len(edges) < 2:
        return []
    inner = edges[1:-1]
    number = (case(*[(Turn.ts < edge, i) for i, edge in enumerate(inner)], else_=len(inner)) if inner
              else literal(0)).label("bin")
    query = (select(number, Turn.domain, Turn.model_version, Turn.locale, func.sum(Turn.score), func.count(Turn.score),
                    func.sum(Turn.satisfaction), func.count(Turn.satisfaction))
             .where(Turn.ts >= edges[0], Turn.ts < edges[-1])
             .group_by(number, Turn.domain, Turn.model_version, Turn.locale))
    if domain is not None:
        query = query.where(Turn.domain == domain)
    return [BinGroup(int(b), d, m, loc, float(rs or 0.0), int(rn), float(ss or 0.0), int(sn))
            for b, d, m, loc, rs, rn, ss, sn in session.execute(query)]


def example_texts(session: Session, event_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """``event_id -> (prompt, response)`` of the turns in ``event_ids`` (raw: redact before showing)."""
    wanted = []
    for event_id in event_ids:
        try:
            wanted.append(uuid.UUID(str(event_id)))
        except ValueError:
            continue
    if not wanted:
        return {}
    rows = session.execute(select(Turn.event_id, Turn.prompt, Turn.response).where(Turn.event_id.in_(wanted[:500])))
    return {str(event_id): (prompt, response) for event_id, prompt, response in rows}


def latest_drift(session: Session, *, look_back: int = 50) -> tuple[int, datetime, dict] | None:
    """``(run id, finished at, drift summary)`` of the latest analyzer run (of the last ``look_back``)
    that built a drift report: a run builds one only every ``analyze_drift_interval_seconds`` and
    stores JSON null otherwise. The report's HTML is not read."""
    rows = session.execute(select(AnalysisRun.id, AnalysisRun.finished_at, AnalysisRun.drift_summary)
                           .order_by(AnalysisRun.id.desc()).limit(look_back))
    return next(((run_id, at, summary) for run_id, at, summary in rows if summary), None)


def alert_cycles(session: Session, alert_id: int) -> list[RelabelCycle]:
    """The relabeling cycles opened on ``alert_id``, newest first."""
    return list(session.scalars(select(RelabelCycle).where(RelabelCycle.alert_id == alert_id)
                                .order_by(RelabelCycle.id.desc())))
