"""Idempotent writes of one ingest batch. Functions flush, never commit: the caller owns the
transaction, so rows and the consumed offsets land together or not at all.

Replays are harmless: turns are keyed by ``event_id`` and ``(conversation_id, turn)``, ratings by
``event_id``, dead letters by their source ``(topic, partition, offset)``; a row that exists is
left as it is. A turn's satisfaction is always *recomputed* from all its ratings (the latest by
event time wins), never accumulated, so it comes out the same in whatever order rows arrive.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson
import psycopg
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
        stage = _stage(session, table, rows)
        _insert_staged(session, table, stage, list(rows[0]))
        _cursor(session).execute(f'TRUNCATE "{stage}"')
    else:
        session.execute(_dialect_insert(session, table).on_conflict_do_nothing(), list(rows))


def _cursor(session: Session) -> Any:
    return session.connection().connection.driver_connection.cursor()  # type: ignore[union-attr]


def _json_text(value: object) -> str | None:
    # orjson writes the same JSON as json.dumps, several times faster (psycopg's Json calls json.dumps);
    # COPY's text format hands it to the column's JSON input function as is.
    return None if value is None else orjson.dumps(value).decode()


def _stage(session: Session, table: Table, rows: Sequence[Mapping[str, Any]]) -> str:
    """COPY ``rows`` into a per-connection temporary staging table shaped like ``table`` (the
    columns of the first row); return its name. Its rows live until the transaction ends."""
    # COPY, then one INSERT ... SELECT ... ON CONFLICT: several times less client CPU than an
    # executemany, which pays SQLAlchemy and psycopg per row.
    columns = list(rows[0])
    names = ", ".join(f'"{c}"' for c in columns)
    # The staging table's shape is its name: callers with other columns get another one.
    stage = f"_stage_{table.name}_{zlib.crc32(names.encode()):08x}"
    connection = session.connection()
    cursor = _cursor(session)
    if stage not in connection.info.setdefault(STAGING_TABLES, set()):
        cursor.execute(
            f'CREATE TEMP TABLE IF NOT EXISTS "{stage}" ON COMMIT DELETE ROWS AS '
            f'SELECT {names} FROM "{table.name}" WITH NO DATA'
        )
        connection.info[STAGING_TABLES].add(stage)
    _copy_rows(cursor, stage, table, rows)
    return stage


def _copy_rows(cursor: Any, target: str, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """COPY ``rows`` (the columns of the first row) into ``target``, JSON columns of ``table`` as text."""
    columns = list(rows[0])
    positions = [i for i, c in enumerate(columns)
                 if c in table.columns and isinstance(table.columns[c].type, JSON)]
    names = ", ".join(f'"{c}"' for c in columns)
    with cursor.copy(f'COPY "{target}" ({names}) FROM STDIN') as copy:
        for row in rows:
            values = [row[c] for c in columns]
            for i in positions:
                values[i] = _json_text(values[i])
            copy.write_row(values)


def _copy_or_stage(session: Session, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """COPY ``rows`` straight into ``table`` under a savepoint. A redelivered event collides with
    its stored row and fails the whole COPY: then roll back to the savepoint and take the staging
    path (COPY into a temporary table, INSERT ... ON CONFLICT DO NOTHING), which skips it. Batches
    without a replay, nearly all of them, skip the staging table's second write."""
    cursor = _cursor(session)
    cursor.execute("SAVEPOINT direct_copy")
    try:
        _copy_rows(cursor, table.name, table, rows)
    except psycopg.errors.UniqueViolation:
        cursor.execute("ROLLBACK TO SAVEPOINT direct_copy")
        cursor.execute("RELEASE SAVEPOINT direct_copy")
        _insert_staged(session, table, _stage(session, table, rows), list(rows[0]))
    else:
        cursor.execute("RELEASE SAVEPOINT direct_copy")


def _insert_staged(session: Session, table: Table, stage: str, columns: list[str]) -> None:
    names = ", ".join(f'"{c}"' for c in columns)
    _cursor(session).execute(
        f'INSERT INTO "{table.name}" ({names}) SELECT {names} FROM "{stage}" ON CONFLICT DO NOTHING'
    )


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
    if session.get_bind().dialect.name == "postgresql":
        _write_rows_postgresql(session, turns, ratings)
    else:
        insert_ignoring_duplicates(session, Turn.__table__, turns)
        insert_ignoring_duplicates(session, RatingRow.__table__, ratings)
        join_ratings(session, [(row["conversation_id"], row["turn"]) for row in (*turns, *ratings)])
    insert_ignoring_duplicates(session, DeadLetter.__table__, dead_letters)
    event_times: dict[tuple[str, int], datetime] = {}
    for row in (*turns, *ratings):
        position = (row["source_topic"], row["source_partition"])
        if position not in event_times or row["ts"] > event_times[position]:
            event_times[position] = row["ts"]
    save_offsets(session, group_id, next_offsets, event_times)
    session.flush()


def _write_rows_postgresql(session: Session, turns: Sequence[Mapping[str, Any]],
                           ratings: Sequence[Mapping[str, Any]]) -> None:
    """Turns and ratings by COPY (:func:`_copy_or_stage`), then the rating join in one statement
    over the batch's keys (two arrays): the same result as :func:`join_ratings`."""
    for table, rows in ((Turn.__table__, turns), (RatingRow.__table__, ratings)):
        if rows:
            _copy_or_stage(session, table, rows)
    keys = sorted({(row["conversation_id"], row["turn"]) for row in (*turns, *ratings)})
    if keys:
        _cursor(session).execute(_JOIN_STAGED, ([c for c, _ in keys], [t for _, t in keys]))
    # No TRUNCATE of a staging table: it empties itself at commit (ON COMMIT DELETE ROWS), and a
    # batch's transaction stages each table at most once. A TRUNCATE cost 13 µs per event.


# Mark the waiting ratings of the batch's keys whose turn exists as joined (entering the detectors
# no earlier than their turn), then recompute satisfaction (latest rating by event time, then
# event id), rated_at and rating_count of exactly the turns that gained one. The final UPDATE reads
# `ratings` as it was before the CTE's UPDATE, which changes neither satisfaction nor ts.
_JOIN_STAGED = """
WITH batch AS (SELECT * FROM unnest(%s::text[], %s::integer[]) AS k(conversation_id, turn)),
joined AS (
    UPDATE ratings AS r SET joined = true, entry_at = GREATEST(r.ts, t.ts)
    FROM batch AS b, turns AS t
    WHERE r.conversation_id = b.conversation_id AND r.turn = b.turn AND NOT r.joined
      AND t.conversation_id = r.conversation_id AND t.turn = r.turn
    RETURNING r.conversation_id, r.turn
),
latest AS (
    SELECT DISTINCT ON (r.conversation_id, r.turn) r.conversation_id, r.turn, r.satisfaction, r.ts,
           count(*) OVER (PARTITION BY r.conversation_id, r.turn) AS ratings
    FROM ratings AS r JOIN (SELECT DISTINCT conversation_id, turn FROM joined) AS g
      ON r.conversation_id = g.conversation_id AND r.turn = g.turn
    ORDER BY r.conversation_id, r.turn, r.ts DESC, r.event_id DESC
)
UPDATE turns AS t SET satisfaction = l.satisfaction, rated_at = l.ts, rating_count = l.ratings
FROM latest AS l WHERE t.conversation_id = l.conversation_id AND t.turn = l.turn
"""


def reset_offsets(session: Session, group_id: str,
                  resets: Mapping[tuple[str, int], tuple[int, int]]) -> list[tuple[str, int]]:
    """Move stored offsets that lay outside their partition's log, ``{(topic, partition): (stored,
    reset_to)}``, backwards too: the one explicit exception to :func:`save_offsets`' rule, which
    still guards every batch. Compare-and-set: a row no longer at ``stored`` (another worker moved
    it meanwhile) is left alone. Returns the positions moved."""
    moved = []
    for (topic, partition), (stored, reset_to) in sorted(resets.items()):
        row = session.execute(
            update(ConsumerOffset)
            .where(ConsumerOffset.group_id == group_id, ConsumerOffset.topic == topic,
                   ConsumerOffset.partition == partition, ConsumerOffset.next_offset == stored)
            .values(next_offset=reset_to, updated_at=utcnow())
            .returning(ConsumerOffset.partition)
            .execution_options(synchronize_session=False)
        ).first()
        if row is not None:
            moved.append((topic, partition))
    session.flush()
    return moved
