"""Idempotent writes of one ingest batch. Functions flush, never commit: the caller owns the
transaction, so rows and the consumed offsets land together or not at all.

Replays are harmless: turns are keyed by ``event_id`` and ``(conversation_id, turn)``, ratings by
``event_id``, dead letters by their source ``(topic, partition, offset)``; a row that exists is
left as it is. A turn's satisfaction is always *recomputed* from all its ratings (the latest by
event time wins), never accumulated, so it comes out the same in whatever order rows arrive.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from psycopg.types.json import Json
from sqlalchemy import JSON, Table, and_, case, exists, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from monitor.store.db import STAGING_TABLES
from monitor.store.models import ConsumerOffset, DeadLetter, RatingRow, Turn, utcnow

# Keeps each statement well under SQLite's and PostgreSQL's bound-parameter limits.
_KEYS_PER_STATEMENT = 1000

TurnKey = tuple[str, int]


def _dialect_insert(session: Session, table: Table) -> Any:
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"unsupported database dialect {name!r}; use SQLite or PostgreSQL")


def insert_ignoring_duplicates(session: Session, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """INSERT rows; a row that collides with any unique key is skipped (it was stored before)."""
    if not rows:
        return
    if session.get_bind().dialect.name == "postgresql":
        _copy_then_insert(session, table, rows)
    else:
        session.execute(_dialect_insert(session, table).on_conflict_do_nothing(), list(rows))


def _copy_then_insert(session: Session, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    # COPY into a per-connection staging table, then one INSERT ... SELECT ... ON CONFLICT: several
    # times less client CPU than an executemany, which pays SQLAlchemy and psycopg per row.
    columns = list(rows[0])
    json_columns = {c.name for c in table.columns if isinstance(c.type, JSON) and c.name in columns}
    stage = f"_stage_{table.name}"
    names = ", ".join(f'"{c}"' for c in columns)
    connection = session.connection()
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    # The staging table lives as long as the database connection; its rows only until commit.
    if stage not in connection.info.setdefault(STAGING_TABLES, set()):
        cursor.execute(
            f'CREATE TEMP TABLE IF NOT EXISTS "{stage}" ON COMMIT DELETE ROWS AS '
            f'SELECT {names} FROM "{table.name}" WITH NO DATA'
        )
        connection.info[STAGING_TABLES].add(stage)
    with cursor.copy(f'COPY "{stage}" ({names}) FROM STDIN') as copy:
        for row in rows:
            copy.write_row([Json(row[c]) if c in json_columns else row[c] for c in columns])
    cursor.execute(
        f'INSERT INTO "{table.name}" ({names}) SELECT {names} FROM "{stage}" ON CONFLICT DO NOTHING'
    )
    cursor.execute(f'TRUNCATE "{stage}"')


def save_offsets(session: Session, group_id: str, next_offsets: Mapping[tuple[str, int], int],
                 event_times: Mapping[tuple[str, int], datetime] | None = None) -> None:
    """Record the next offset to consume per (topic, partition), and the latest event time stored
    from it; neither ever moves backwards."""
    if not next_offsets:
        return
    now = utcnow()
    times = event_times or {}
    rows = [
        {"group_id": group_id, "topic": t, "partition": p, "next_offset": o, "event_time": times.get((t, p)),
         "updated_at": now}
        for (t, p), o in sorted(next_offsets.items())
    ]
    table = ConsumerOffset.__table__
    statement = _dialect_insert(session, table)
    # A worker that lost its partitions in a rebalance may still finish an older batch; never let
    # it rewind an offset the new owner already moved past.
    newest = case(
        (statement.excluded.next_offset > table.c.next_offset, statement.excluded.next_offset),
        else_=table.c.next_offset,
    )
    latest = case(
        (statement.excluded.event_time > table.c.event_time, statement.excluded.event_time),
        else_=func.coalesce(table.c.event_time, statement.excluded.event_time),
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["group_id", "topic", "partition"],
            set_={"next_offset": newest, "event_time": latest, "updated_at": statement.excluded.updated_at},
        ),
        rows,
    )


#: ``next_offset`` of a partition the group was assigned but has stored nothing from yet.
UNHEARD = -1


def load_offsets(session: Session, group_id: str, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    rows = session.execute(
        select(ConsumerOffset.topic, ConsumerOffset.partition, ConsumerOffset.next_offset).where(
            ConsumerOffset.group_id == group_id, ConsumerOffset.topic.in_(list(topics)),
            ConsumerOffset.next_offset >= 0,
        )
    )
    return {(topic, partition): offset for topic, partition, offset in rows}


def register_partitions(session: Session, group_id: str, positions: Iterable[tuple[str, int]]) -> None:
    """Record assigned partitions that have no row yet (``next_offset`` :data:`UNHEARD`, no event
    time): until one stores its first event, the analyzer's checkpoint waits for it, so the ratings
    it holds are not passed over (see :func:`monitor.store.analysis.unheard_partitions`)."""
    now = utcnow()
    insert_ignoring_duplicates(session, ConsumerOffset.__table__, [
        {"group_id": group_id, "topic": t, "partition": p, "next_offset": UNHEARD, "event_time": None,
         "updated_at": now} for t, p in positions])


def join_ratings(session: Session, keys: Iterable[TurnKey]) -> None:
    """Join ratings to their turns for ``keys``: mark the waiting ratings whose turn exists as
    joined, then recompute ``satisfaction`` / ``rated_at`` (latest rating) and ``rating_count``
    (all) of exactly the turns that gained a rating."""
    unique_keys = sorted(set(keys))
    for start in range(0, len(unique_keys), _KEYS_PER_STATEMENT):
        gained = _mark_joined(session, unique_keys[start : start + _KEYS_PER_STATEMENT])
        if gained:
            _recompute_satisfaction(session, gained)


def _mark_joined(session: Session, keys: list[TurnKey]) -> list[TurnKey]:
    same_turn = and_(Turn.conversation_id == RatingRow.conversation_id, Turn.turn == RatingRow.turn)
    turn_exists = exists().where(same_turn)
    turn_ts = select(Turn.ts).where(same_turn).scalar_subquery()
    # Matching on the (indexed) conversation id alone is much faster than a row-value IN, and
    # harmless: any waiting rating whose turn exists is due to be joined anyway.
    joined = session.execute(
        update(RatingRow)
        .where(RatingRow.conversation_id.in_({c for c, _ in keys}), RatingRow.joined.is_(False), turn_exists)
        # Never before the turn itself: a rating that came first enters with the turn's arrival.
        .values(joined=True, entry_at=case((RatingRow.ts > turn_ts, RatingRow.ts), else_=turn_ts))
        .returning(RatingRow.conversation_id, RatingRow.turn)
        .execution_options(synchronize_session=False)
    )
    return sorted({(conversation_id, turn) for conversation_id, turn in joined})


def _recompute_satisfaction(session: Session, keys: list[TurnKey]) -> None:
    same_turn = and_(RatingRow.conversation_id == Turn.conversation_id, RatingRow.turn == Turn.turn)
    latest = (
        select(RatingRow.satisfaction, RatingRow.ts)
        .where(same_turn)
        .order_by(RatingRow.ts.desc(), RatingRow.event_id.desc())
        .limit(1)
    )
    session.execute(
        update(Turn)
        .where(Turn.conversation_id.in_({c for c, _ in keys}), Turn.turn.in_({t for _, t in keys}))
        .values(
            satisfaction=latest.with_only_columns(RatingRow.satisfaction).scalar_subquery(),
            rated_at=latest.with_only_columns(RatingRow.ts).scalar_subquery(),
            rating_count=select(func.count()).where(same_turn).scalar_subquery(),
        )
        .execution_options(synchronize_session=False)
    )


def write_ingest_batch(
    session: Session,
    *,
    group_id: str,
    turns: Sequence[Mapping[str, Any]],
    ratings: Sequence[Mapping[str, Any]],
    dead_letters: Sequence[Mapping[str, Any]],
    next_offsets: Mapping[tuple[str, int], int],
) -> None:
    """Write one consumed batch: rows, rating joins and offsets (the caller commits)."""
    insert_ignoring_duplicates(session, Turn.__table__, turns)
    insert_ignoring_duplicates(session, RatingRow.__table__, ratings)
    insert_ignoring_duplicates(session, DeadLetter.__table__, dead_letters)
    keys = [(row["conversation_id"], row["turn"]) for row in (*turns, *ratings)]
    join_ratings(session, keys)
    event_times: dict[tuple[str, int], datetime] = {}
    for row in (*turns, *ratings):
        position = (row["source_topic"], row["source_partition"])
        if position not in event_times or row["ts"] > event_times[position]:
            event_times[position] = row["ts"]
    save_offsets(session, group_id, next_offsets, event_times)
    session.flush()
