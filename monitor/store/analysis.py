"""Queries of the analyzer's tables (segment states, progress, alerts, analysis runs) and its views
of turns. Each read is bounded by new data or by the current window, never by history.

Services here ``flush()``; the analyzer's run commits at its boundaries (see
:mod:`monitor.analyze.runner`). Nothing here knows how signals or alerts are computed.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, and_, bindparam, case, delete, func, or_, select, text, update
from sqlalchemy.orm import Session

from monitor.signals import SIGNAL_COLUMNS
from monitor.store.db import STAGING_TABLES
from monitor.store.models import (
    Alert,
    AnalysisRun,
    AnalyzerProgress,
    ConsumerOffset,
    RatingRow,
    SegmentState,
    Turn,
    utcnow,
)

#: Arbitrary but fixed key of the PostgreSQL advisory lock that keeps to one analyzer at a time.
ANALYZER_LOCK_KEY = 0x6D6F6E61  # "mona"
#: The watermark is the event time of this many-th latest turn: no single event can move it.
WATERMARK_RANK = 10
#: A window group: (domain, model_version, locale) as stored (None where the event had none).
GroupKey = tuple[str | None, str | None, str | None]
#: Groups per windowed query: bounds the statement's size.
_GROUPS_PER_QUERY = 100
#: Columns of the analyzer's view of a turn (no text).
TURN_COLUMNS = ("id", "event_id", "conversation_id", "turn", "ts", "model_version", "domain", "locale", "score",
                "scorer", "satisfaction", "prompt_harmful", *SIGNAL_COLUMNS)
_SIGNALS_DONE = Turn.sig_length_tokens.is_not(None)


@contextmanager
def analyzer_lock(engine: Engine) -> Iterator[bool]:
    """Hold the analyzer lock for the block; yields False when another analyzer holds it.

    A session-level advisory lock on a connection of its own, so the run's own transactions stay
    short and the lock holds no row locks. SQLite allows one writer anyway: there it is implicit.
    """
    if engine.dialect.name != "postgresql":
        yield True
        return
    with engine.connect() as connection:
        locked = bool(connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": ANALYZER_LOCK_KEY})
                      .scalar())
        connection.commit()
        try:
            yield locked
        finally:
            if locked:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ANALYZER_LOCK_KEY})
                connection.commit()


#: PostgreSQL waits of the analyzer's and the deriver's transactions: they give up rather than
#: queue behind ingest.
LOCK_TIMEOUT_MS = 5_000
STATEMENT_TIMEOUT_MS = 120_000


def bound_waits(session: Session, *, lock_timeout_ms: int = LOCK_TIMEOUT_MS,
                statement_timeout_ms: int = STATEMENT_TIMEOUT_MS) -> None:
    """On PostgreSQL, give up on a lock or a statement instead of waiting behind ingest."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}"))
        session.execute(text(f"SET LOCAL statement_timeout = {int(statement_timeout_ms)}"))


def snapshot_isolation(session: Session) -> None:
    """Every read of this transaction sees one snapshot (PostgreSQL; SQLite's WAL reads already do)."""
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


# --- signals still to derive -------------------------------------------------------------------------


def turns_without_signals(session: Session, limit: int) -> list[Any]:
    """Up to ``limit`` turns whose signals are still to derive (oldest first), with their text."""
    return list(session.execute(
        select(Turn.id, Turn.prompt, Turn.response, Turn.domain, Turn.prompt_harmful, Turn.prompt_risk_source)
        .where(Turn.sig_length_tokens.is_(None)).order_by(Turn.id).limit(limit)))


def store_signals(session: Session, updates: Sequence[Mapping[str, Any]]) -> int:
    """Write derived columns; each mapping has ``turn_id`` and the same column names.

    On PostgreSQL a turn whose row another transaction holds (ingest joining a rating to it) is
    skipped, not waited for: its signals stay NULL and the deriver's next pass takes it. Waiting
    deadlocked with ingest's rating join, which locks the same new turns in another order (seen
    under a 2k events/s soak). Returns how many turns were written.
    """
    return _update_turns(session, updates, skip_locked=True)


def _update_turns(session: Session, updates: Sequence[Mapping[str, Any]], *, skip_locked: bool = False) -> int:
    """UPDATE turns by id: each mapping has ``turn_id`` and the same column names. On PostgreSQL
    the rows are locked in id order first (or, with ``skip_locked``, those held elsewhere are left
    out), so two such updates never deadlock."""
    if not updates:
        return 0
    table = Turn.__table__
    columns = [name for name in updates[0] if name != "turn_id"]
    if session.get_bind().dialect.name != "postgresql":
        # A Core statement, so the list of parameter sets runs as one executemany.
        session.execute(update(table).where(table.c.id == bindparam("turn_id"))
                        .values({name: bindparam(name) for name in columns}), list(updates))
        return len(updates)
    # COPY into a per-connection staging table, then one UPDATE ... FROM: half the wall time and a
    # quarter of the client CPU of an executemany (10k turns in chunks of 500: 1.2 s vs 2.2 s).
    names = ", ".join(f'"{name}"' for name in columns)
    stage = f"_stage_turn_update_{zlib.crc32(names.encode()):08x}"  # one per set of columns
    connection = session.connection()
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    if stage not in connection.info.setdefault(STAGING_TABLES, set()):
        cursor.execute(f'CREATE TEMP TABLE IF NOT EXISTS "{stage}" ON COMMIT DELETE ROWS AS '
                       f'SELECT id, {names} FROM turns WITH NO DATA')
        connection.info[STAGING_TABLES].add(stage)
    with cursor.copy(f'COPY "{stage}" (id, {names}) FROM STDIN') as copy:
        for row in updates:
            copy.write_row([row["turn_id"], *(row[name] for name in columns)])
    assignments = ", ".join(f'"{name}" = staged."{name}"' for name in columns)
    locked = f'SELECT id FROM turns WHERE id IN (SELECT id FROM "{stage}") ORDER BY id FOR UPDATE'
    if skip_locked:
        cursor.execute(f'UPDATE turns SET {assignments} FROM "{stage}" staged WHERE turns.id = staged.id '
                       f'AND turns.id IN ({locked} SKIP LOCKED)')
    else:
        cursor.execute(locked)
        cursor.execute(f'UPDATE turns SET {assignments} FROM "{stage}" staged WHERE turns.id = staged.id')
    written = cursor.rowcount
    cursor.execute(f'TRUNCATE "{stage}"')
    return written


def earliest_unready_entry(session: Session) -> datetime | None:
    """Entry time of the earliest rating whose turn's signals are still to derive: the checkpoint
    may not pass it, or that rating would never enter the detectors."""
    return session.scalar(select(func.min(RatingRow.entry_at)).join(Turn, _rating_of_turn())
                          .where(Turn.sig_length_tokens.is_(None), RatingRow.entry_at.is_not(None)))


# --- the run's reads -----------------------------------------------------------------------------


def watermarks(session: Session, *, rank: int = WATERMARK_RANK) -> tuple[datetime | None, datetime | None]:
    """Event time of the ``rank``-th latest turn and of the ``rank``-th latest rating (or the
    earliest, when there are fewer): how far each topic's traffic has come."""
    out = []
    for column in (Turn.ts, RatingRow.ts):
        latest = list(session.scalars(select(column).order_by(column.desc()).limit(rank)))
        out.append(latest[-1] if latest else None)
    return out[0], out[1]


def partition_watermark(session: Session, group_id: str, topic: str, *, idle_seconds: float) -> datetime | None:
    """The lowest latest-event-time of ``topic``'s partitions as ``group_id`` stored them, among those
    that stored something in the ``idle_seconds`` (wall clock) before the busiest did: a partition
    that lags holds the watermark back; one with no traffic at all stops doing so once idle. None
    when no partition recorded an event time (a store filled by other means than ingest)."""
    rows = session.execute(
        select(ConsumerOffset.event_time, ConsumerOffset.updated_at)
        .where(ConsumerOffset.group_id == group_id, ConsumerOffset.topic == topic,
               ConsumerOffset.event_time.is_not(None))).all()
    if not rows:
        return None
    busiest = max(updated for _, updated in rows)
    active = [event_time for event_time, updated in rows
              if event_time is not None and (busiest - updated).total_seconds() <= idle_seconds]
    return min(active) if active else None


def unheard_partitions(session: Session, group_id: str, topics: Sequence[str], *,
                       idle_seconds: float) -> list[tuple[str, int]]:
    """Partitions of ``topics`` assigned to ``group_id`` that have stored no event yet, while their
    topic's busiest partition stored something within ``idle_seconds`` (wall clock) of their
    assignment: ratings may wait in them with entry times the checkpoint would otherwise pass. A
    partition that stays empty that long stops holding the checkpoint (a topic with more partitions
    than traffic must not stall the analyzer)."""
    rows = session.execute(
        select(ConsumerOffset.topic, ConsumerOffset.partition, ConsumerOffset.event_time, ConsumerOffset.updated_at)
        .where(ConsumerOffset.group_id == group_id, ConsumerOffset.topic.in_(list(topics)))).all()
    busiest: dict[str, datetime] = {}
    for topic, _, _, updated in rows:
        busiest[topic] = max(busiest.get(topic, updated), updated)
    return sorted((topic, partition) for topic, partition, event_time, updated in rows
                  if event_time is None and (busiest[topic] - updated).total_seconds() <= idle_seconds)


def entry_rows(session: Session, after: datetime | None, until: datetime) -> list[dict[str, Any]]:
    """Joined ratings whose entry time is in ``(after, until]`` (turn signals derived), one row each:
    the turn's columns with that rating's satisfaction, ``rated_ts`` and ``rating_id``."""
    query = _entries().where(RatingRow.entry_at <= until)
    if after is not None:
        query = query.where(RatingRow.entry_at > after)
    return _dicts(session, query)


def entry_page_end(session: Session, after: datetime | None, until: datetime, page: int) -> datetime | None:
    """Entry time of the ``page``-th rating entered in ``(after, until]``, or None when fewer: a
    run reads up to there (ties included), so no read holds more than about ``page`` entries."""
    query = select(RatingRow.entry_at).where(RatingRow.entry_at <= until)
    if after is not None:
        query = query.where(RatingRow.entry_at > after)
    return session.scalar(query.order_by(RatingRow.entry_at).offset(page - 1).limit(1))


def _rating_of_turn() -> Any:
    return (RatingRow.conversation_id == Turn.conversation_id) & (RatingRow.turn == Turn.turn)


def _entries() -> Any:
    ratings = RatingRow.__table__.c
    turn_columns = [column for column in _columns() if column.name != "satisfaction"]
    return (select(*turn_columns, ratings.satisfaction, ratings.ts.label("rated_ts"),
                   ratings.event_id.label("rating_id"))
            .select_from(RatingRow.__table__.join(Turn.__table__, _rating_of_turn()))
            .where(_SIGNALS_DONE))


def window_groups(session: Session, since: datetime) -> list[tuple[GroupKey, int, int]]:
    """Per (domain, model_version, locale): the turns with signals after ``since`` (event time)
    and how many of them are rated (a rating and a score): the current window's exact counts."""
    rated = case((Turn.satisfaction.is_not(None) & Turn.score.is_not(None), 1), else_=0)
    query = (select(Turn.domain, Turn.model_version, Turn.locale, func.count(), func.sum(rated))
             .where(Turn.ts > since, _SIGNALS_DONE).group_by(Turn.domain, Turn.model_version, Turn.locale))
    return [((domain, version, locale), int(turns), int(rated or 0))
            for domain, version, locale, turns, rated in session.connection().execute(query)]


def window_rows(session: Session, since: datetime,
                strides: Mapping[GroupKey, int] | None = None) -> list[dict[str, Any]]:
    """Turns with signals after ``since`` (event time): the current window. ``strides``: per group,
    only the turns whose :func:`sampled_id` is a multiple of it (:mod:`monitor.analyze.window_sample`);
    None: all."""
    query = select(*_columns()).where(Turn.ts > since, _SIGNALS_DONE)
    if strides is None:
        return _dicts(session, query)
    rows: list[dict[str, Any]] = []
    items = list(strides.items())
    for start in range(0, len(items), _GROUPS_PER_QUERY):
        rows += _dicts(session, query.where(or_(*(_in_group(group, stride)
                                                 for group, stride in items[start:start + _GROUPS_PER_QUERY]))))
    return rows


def undiverged_rows(session: Session, since: datetime, groups: Sequence[GroupKey], *, before_id: int | None,
                    limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` scored turns of the window in ``groups`` with no divergence yet, newest
    (highest id) first, below ``before_id`` when given: the analyzer scores them a page at a time."""
    if not groups:
        return []
    query = select(*_columns()).where(Turn.ts > since, _SIGNALS_DONE, Turn.divergence.is_(None),
                                      Turn.score.is_not(None))
    if before_id is not None:
        query = query.where(Turn.id < before_id)
    found: list[dict[str, Any]] = []
    for start in range(0, len(groups), _GROUPS_PER_QUERY):
        chunk = groups[start:start + _GROUPS_PER_QUERY]
        found += _dicts(session, query.where(or_(*(_in_group(group) for group in chunk)))
                        .order_by(Turn.id.desc()).limit(limit))
    found.sort(key=lambda row: row["id"], reverse=True)
    return found[:limit]


def _in_group(group: GroupKey, stride: int = 1) -> Any:
    parts = [column.is_(None) if value is None else column == value
             for column, value in zip((Turn.domain, Turn.model_version, Turn.locale), group, strict=True)]
    if stride > 1:
        parts.append(sampled_id(Turn.id) % stride == 0)
    return and_(*parts)


def sampled_id(turn_id: Any) -> Any:
    """``turn_id`` scrambled (``id × 40503 mod 65521``, a permutation of the residues of a prime):
    a stride over it draws a stable pseudo-random sample, where one over the raw id would alias
    with any period in how ids were handed out (a producer cycling through domains, say). Works
    on Python ints and on SQL expressions alike; no overflow below ids of 2^47."""
    return (turn_id * 40503) % 65521


def rows_by_event_id(session: Session, event_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The analyzer's view of the turns in ``event_ids`` (500 ids per query)."""
    found: list[dict[str, Any]] = []
    for start in range(0, len(event_ids), 500):
        chunk = [uuid.UUID(event_id) for event_id in event_ids[start:start + 500]]
        found += _dicts(session, select(*_columns()).where(Turn.event_id.in_(chunk)))
    return found


def recent_entry_rows(session: Session, until: datetime, limit: int) -> list[dict[str, Any]]:
    """The ``limit`` latest entries (as :func:`entry_rows`) with entry time up to ``until``."""
    query = _entries().where(RatingRow.entry_at <= until).order_by(RatingRow.entry_at.desc()).limit(limit)
    return _dicts(session, query)


def _dicts(session: Session, query: Any) -> list[dict[str, Any]]:
    """The rows of a Core ``query`` as dicts, run on the session's connection: ``Session.execute``
    would take the ORM's execution path, about 40% more client CPU on the window's 36k rows
    (``monitor bench analyze``) for nothing a Core select needs."""
    result = session.connection().execute(query)
    keys = list(result.keys())
    return [dict(zip(keys, row, strict=True)) for row in result]


def _columns() -> list[Any]:
    # Table columns, not ORM attributes: a Core select skips the ORM's row loading (3x faster here).
    return [Turn.__table__.c[name] for name in TURN_COLUMNS]


def prompts_by_event_id(session: Session, event_ids: Sequence[str]) -> dict[str, str]:
    """The prompt of each turn in ``event_ids`` (500 ids per query, to keep the IN list short)."""
    found: dict[str, str] = {}
    for start in range(0, len(event_ids), 500):
        chunk = [uuid.UUID(event_id) for event_id in event_ids[start:start + 500]]
        for event_id, prompt in session.execute(select(Turn.event_id, Turn.prompt).where(Turn.event_id.in_(chunk))):
            found[str(event_id)] = prompt
    return found


# --- state and progress --------------------------------------------------------------------------


def load_states(session: Session) -> dict[str, dict]:
    return {row.segment: row.state for row in session.scalars(select(SegmentState))}


def save_states(session: Session, states: Mapping[str, dict]) -> None:
    now = utcnow()
    for segment, state in states.items():
        session.merge(SegmentState(segment=segment, state=state, updated_at=now))
    session.flush()


def delete_states(session: Session) -> int:
    """Forget every segment's state and the checkpoint: the next run starts from scratch."""
    count = len(list(session.scalars(select(SegmentState.segment))))
    session.execute(delete(SegmentState))
    session.execute(delete(AnalyzerProgress))
    session.flush()
    return count


def checkpoint(session: Session) -> datetime | None:
    progress = session.get(AnalyzerProgress, 1)
    return progress.checkpoint if progress else None


def save_checkpoint(session: Session, value: datetime | None) -> None:
    session.merge(AnalyzerProgress(id=1, checkpoint=value, updated_at=utcnow()))
    session.flush()


def store_divergence(session: Session, values: Mapping[int, float]) -> int:
    """Set the per-sample divergence of turns by id; returns how many were written. A turn whose
    row another transaction holds (ingest joining a rating to it) is skipped, as by
    :func:`store_signals`, and keeps NULL for the next run: the analyzer waiting for locks in id
    order while ingest's rating join took them in its own order deadlocked (3 times in a 1M-event
    soak at 2k events/s)."""
    return _update_turns(session, [{"turn_id": turn_id, "divergence": value} for turn_id, value in values.items()],
                         skip_locked=True)


# --- alerts and runs -----------------------------------------------------------------------------


def alerts_by_key(session: Session, keys: Sequence[str]) -> dict[str, Alert]:
    found: dict[str, Alert] = {}
    for start in range(0, len(keys), 500):
        found.update({alert.key: alert for alert in session.scalars(
            select(Alert).where(Alert.key.in_(list(keys[start:start + 500]))))})
    return found


def firing_alerts(session: Session) -> list[Alert]:
    return list(session.scalars(select(Alert).where(Alert.state == "firing")))


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


def from_seconds(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)
