"""Queries of the analyzer's tables (calibrations, alerts, analysis runs) and its view of turns.

Services here ``flush()``; the analyzer run commits once, at its boundary.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, delete, select, text, update
from sqlalchemy.orm import Session

from monitor.analyze.frame import ROW_FIELDS
from monitor.risk import is_harmful
from monitor.signals import DEFAULT_COMPLIANCE, response_signals
from monitor.store.models import Alert, AnalysisRun, Calibration, Turn, utcnow

#: Turns whose signals are derived per round trip (select, compute, update).
FILL_CHUNK = 2000
#: Arbitrary but fixed key of the PostgreSQL advisory lock that keeps to one analyzer at a time.
ANALYZER_LOCK_KEY = 0x6D6F6E61  # "mona"


def try_analyzer_lock(session: Session) -> bool:
    """Take the transaction-scoped analyzer lock; False when another analyzer holds it.

    SQLite allows one writer anyway, so there the lock is implicit.
    """
    if session.get_bind().dialect.name != "postgresql":
        return True
    return bool(session.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": ANALYZER_LOCK_KEY}).scalar())


def turn_rows(session: Session) -> list[dict[str, Any]]:
    """Every turn's analysis columns (no text)."""
    columns = [getattr(Turn, name) for name in ROW_FIELDS]
    return [dict(row._mapping) for row in session.execute(select(*columns))]


def fill_signals(session: Session, *, required_language: Mapping[str, Sequence[str]] | None = None,
                 chunk: int = FILL_CHUNK, progress: Callable[[int], None] | None = None) -> int:
    """Derive the signals (and, where the producer sent none, the prompt risk) of every turn that
    has none yet, and store them; returns how many turns were filled. Runs once per turn."""
    compliance = DEFAULT_COMPLIANCE if required_language is None else required_language
    missing = (Turn.sig_length_tokens.is_(None)) | (Turn.prompt_harmful.is_(None))
    filled = 0
    while True:
        rows = session.execute(select(Turn.id, Turn.prompt, Turn.response, Turn.domain, Turn.prompt_harmful,
                                      Turn.prompt_risk_source)
                               .where(missing).order_by(Turn.id).limit(chunk)).all()
        if not rows:
            return filled
        updates = []
        for row in rows:
            signals = response_signals(row.prompt, row.response, domain=row.domain, compliance=compliance)
            values = signals.as_columns()
            if row.prompt_harmful is None:
                values.update(prompt_harmful=is_harmful(row.prompt), prompt_risk_source="classifier")
            else:  # the producer's verdict stays (every parameter set names the same columns)
                values.update(prompt_harmful=row.prompt_harmful, prompt_risk_source=row.prompt_risk_source)
            updates.append({"turn_id": row.id, **values})
        # A Core statement, so the list of parameter sets runs as one executemany.
        table = Turn.__table__
        session.execute(update(table).where(table.c.id == bindparam("turn_id"))
                        .values({name: bindparam(name) for name in updates[0] if name != "turn_id"}), updates)
        filled += len(rows)
        if progress:
            progress(filled)


def calibration_params(session: Session) -> dict[str, dict]:
    return {row.segment: row.params for row in session.scalars(select(Calibration))}


def save_calibration(session: Session, segment: str, params: dict, *, labels: int, scorer: str | None,
                     reference_from: datetime, reference_to: datetime) -> None:
    session.merge(Calibration(segment=segment, params=params, labels=labels, scorer=scorer,
                              reference_from=reference_from, reference_to=reference_to, fitted_at=utcnow()))
    session.flush()


def delete_calibrations(session: Session, segments: Iterable[str] | None = None) -> int:
    """Forget calibrations (all, or those of ``segments``) so the next run fits them again."""
    query = select(Calibration)
    if segments is not None:
        query = query.where(Calibration.segment.in_(list(segments)))
    rows = list(session.scalars(query))
    for row in rows:
        session.delete(row)
    session.flush()
    return len(rows)


def alerts_by_key(session: Session) -> dict[str, Alert]:
    return {alert.key: alert for alert in session.scalars(select(Alert))}


def unpublished_alerts(session: Session) -> list[Alert]:
    return list(session.scalars(
        select(Alert).where((Alert.published_state.is_(None)) | (Alert.published_state != Alert.state))
        .order_by(Alert.id)))


def list_alerts(session: Session, *, state: str | None = None, segment: str | None = None,
                limit: int = 100) -> list[Alert]:
    query = select(Alert).order_by(Alert.started_at.desc(), Alert.id.desc()).limit(limit)
    if state is not None:
        query = query.where(Alert.state == state)
    if segment is not None:
        query = query.where(Alert.segment == segment)
    return list(session.scalars(query))


def latest_run(session: Session, *, with_report: bool = False) -> AnalysisRun | None:
    query = select(AnalysisRun).order_by(AnalysisRun.id.desc()).limit(1)
    if with_report:
        query = query.where(AnalysisRun.drift_html.is_not(None))  # JSON None is stored as 'null'
    return session.scalars(query).first()


def prune_runs(session: Session, *, keep: int, reports_kept: int) -> None:
    """Keep the latest ``keep`` runs, and the drift HTML of only the latest ``reports_kept``."""
    session.flush()
    ids = list(session.scalars(select(AnalysisRun.id).order_by(AnalysisRun.id.desc()).limit(keep)))
    if ids:
        session.execute(delete(AnalysisRun).where(AnalysisRun.id < ids[-1]))
    with_html = list(session.scalars(select(AnalysisRun.id).where(AnalysisRun.drift_html.is_not(None))
                                     .order_by(AnalysisRun.id.desc()).offset(reports_kept)))
    if with_html:
        session.execute(update(AnalysisRun).where(AnalysisRun.id.in_(with_html)).values(drift_html=None))


def prompts_by_event_id(session: Session, event_ids: Sequence[str]) -> dict[str, str]:
    """The prompt of each turn in ``event_ids`` (500 ids per query, to keep the IN list short)."""
    found: dict[str, str] = {}
    for start in range(0, len(event_ids), 500):
        chunk = [uuid.UUID(event_id) for event_id in event_ids[start:start + 500]]
        for event_id, prompt in session.execute(select(Turn.event_id, Turn.prompt).where(Turn.event_id.in_(chunk))):
            found[str(event_id)] = prompt
    return found


def from_seconds(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)
