"""The store on SQLite and PostgreSQL: migrations, idempotent batch writes, rating joins, offsets."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select

from monitor.ingest.decode import decode_batch, rating_row, turn_row
from monitor.ingest.records import KafkaRecord
from monitor.scoring.base import ScoreOutcome
from monitor.store.db import make_engine, make_session_factory
from monitor.store.migrate import current_revision, head_revision, is_at_head
from monitor.store.models import Base, ConsumerOffset, DeadLetter, RatingRow, Turn
from monitor.store.writes import load_offsets, write_ingest_batch
from tests.factories import conversation, rating, wire

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@pytest.fixture
def sessions(migrated_url: str):
    engine = make_engine(migrated_url)
    yield make_session_factory(engine)
    engine.dispose()


def records(*events: dict, topic_of=None) -> list[KafkaRecord]:
    out = []
    for offset, event in enumerate(events):
        topic = "conversations" if event["schema"] == "conversation/v1" else "ratings"
        out.append(KafkaRecord(topic, 0, offset, event["conversation_id"].encode(), wire(event)))
    return out


def write(sessions, recs: list[KafkaRecord], group: str = "g") -> None:
    batch = decode_batch(recs, conversations_topic="conversations", ratings_topic="ratings")
    with sessions.begin() as session:
        write_ingest_batch(
            session,
            group_id=group,
            turns=[turn_row(r, e, ScoreOutcome(e.reward), "producer", NOW) for r, e in batch.conversations],
            ratings=[rating_row(r, e, NOW) for r, e in batch.ratings],
            dead_letters=[d.row(NOW) for d in batch.dead_letters],
            next_offsets=batch.next_offsets,
        )


def snapshot(sessions) -> dict:
    with sessions() as session:
        return {
            "turns": sorted(
                (t.conversation_id, t.turn, t.score, t.satisfaction, t.rating_count, t.rated_at)
                for t in session.scalars(select(Turn))
            ),
            "ratings": sorted((str(r.event_id), r.joined, r.satisfaction) for r in session.scalars(select(RatingRow))),
            "dead": sorted((d.source_topic, d.source_offset, d.reason) for d in session.scalars(select(DeadLetter))),
        }


def test_migrations_reach_head_and_match_the_models(migrated_url: str) -> None:
    engine = make_engine(migrated_url)
    try:
        assert current_revision(engine) == head_revision()
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert diff == []
    finally:
        engine.dispose()
    assert is_at_head(migrated_url)


def test_an_empty_database_is_not_at_head(database_url: str) -> None:
    assert not is_at_head(database_url)


def test_writing_the_same_batch_twice_changes_nothing(sessions) -> None:
    batch = records(conversation("c-1", 0, reward=0.9), rating("c-1", 0, value=0), conversation("c-2", 0))
    write(sessions, batch)
    first = snapshot(sessions)
    write(sessions, batch)
    assert snapshot(sessions) == first
    assert len(first["turns"]) == 2 and len(first["ratings"]) == 1


def test_a_batch_that_replays_part_of_an_earlier_one_stores_only_its_new_rows(sessions) -> None:
    # PostgreSQL COPYs a batch straight into its table; a replayed row fails that COPY, and the
    # batch is then written through the staging table, skipping the stored rows.
    turn, thumb = conversation("c-1", 0), rating("c-1", 0, value=0)
    write(sessions, records(turn, thumb))
    other = conversation("c-2", 0)  # twice in the batch: the producer retried
    partly_new = records(turn, other, other, thumb, rating("c-2", 0, value=1),
                         rating("c-1", 0, value=1, ts="2026-11-27T10:05:00Z"))
    write(sessions, partly_new)
    state = snapshot(sessions)
    assert [(c, t, satisfaction, count) for c, t, _, satisfaction, count, _ in state["turns"]] == [
        ("c-1", 0, 1.0, 2), ("c-2", 0, 1.0, 1)]
    assert len(state["ratings"]) == 3 and all(joined for _, joined, _ in state["ratings"])
    write(sessions, partly_new)
    assert snapshot(sessions) == state


def test_a_rating_that_arrives_first_waits_then_joins(sessions) -> None:
    early = rating("c-9", 2, kind="stars", value=5)
    write(sessions, records(early))
    with sessions() as session:
        row = session.scalars(select(RatingRow)).one()
        assert row.joined is False and row.satisfaction == 1.0
        assert session.scalars(select(Turn)).all() == []
    write(sessions, records(conversation("c-9", 2)))
    with sessions() as session:
        assert session.scalars(select(RatingRow)).one().joined is True
        turn = session.scalars(select(Turn)).one()
        assert (turn.satisfaction, turn.rating_count) == (1.0, 1)
        assert turn.rated_at == datetime(2026, 11, 27, 10, 1, 10, tzinfo=UTC)


@pytest.mark.parametrize("order", ["late_first", "early_first"])
def test_the_latest_rating_by_event_time_wins_in_any_arrival_order(sessions, order: str) -> None:
    early = rating("c-3", 0, value=1, ts="2026-11-27T10:01:00Z")
    late = rating("c-3", 0, value=0, ts="2026-11-27T10:05:00Z")
    first, second = (late, early) if order == "late_first" else (early, late)
    write(sessions, records(conversation("c-3", 0)))
    write(sessions, records(first))
    write(sessions, records(second))
    with sessions() as session:
        turn = session.scalars(select(Turn)).one()
    assert (turn.satisfaction, turn.rating_count) == (0.0, 2)


def test_dead_letters_are_stored_once_per_source_offset(sessions) -> None:
    bad = [KafkaRecord("conversations", 1, 7, None, b"\xff\xfe not utf-8"),
           KafkaRecord("ratings", 0, 3, b"k", b'{"schema": "rating/v9"}')]
    write(sessions, bad)
    write(sessions, bad)
    with sessions() as session:
        rows = session.scalars(select(DeadLetter).order_by(DeadLetter.source_topic)).all()
    assert [(r.source_topic, r.source_offset, r.reason, r.raw) for r in rows] == [
        ("conversations", 7, "invalid_utf8", b"\xff\xfe not utf-8"),
        ("ratings", 3, "unknown_schema", b'{"schema": "rating/v9"}'),
    ]


def test_offsets_are_saved_with_the_rows_and_never_move_backwards(sessions) -> None:
    events = [conversation(f"c-{i}", 0) for i in range(5)]
    write(sessions, records(*events))
    with sessions() as session:
        assert load_offsets(session, "g", ["conversations"]) == {("conversations", 0): 5}
    write(sessions, records(*events[:2]))  # an older batch replayed by a worker that lost the partition
    with sessions() as session:
        assert load_offsets(session, "g", ["conversations"]) == {("conversations", 0): 5}
        assert load_offsets(session, "other-group", ["conversations"]) == {}
        assert session.scalar(select(ConsumerOffset.next_offset)) == 5


def test_a_failed_transaction_leaves_neither_rows_nor_offsets(sessions) -> None:
    good = records(conversation("c-1", 0))
    batch = decode_batch(good, conversations_topic="conversations", ratings_topic="ratings")
    with pytest.raises(RuntimeError):
        with sessions.begin() as session:
            write_ingest_batch(session, group_id="g",
                               turns=[turn_row(r, e, ScoreOutcome(None), "producer", NOW)
                                      for r, e in batch.conversations],
                               ratings=[], dead_letters=[], next_offsets=batch.next_offsets)
            raise RuntimeError("crash before commit")
    assert snapshot(sessions)["turns"] == []
    with sessions() as session:
        assert load_offsets(session, "g", ["conversations"]) == {}


def test_a_rolled_back_batch_does_not_break_the_next_one(sessions) -> None:
    """PostgreSQL stages rows in a temporary table created in the first transaction; a rollback
    drops that table again, and the next batch must recreate it rather than fail forever."""
    with pytest.raises(RuntimeError):
        with sessions.begin() as session:
            write_ingest_batch(session, group_id="g", turns=[], ratings=[], dead_letters=[], next_offsets={})
            recs = records(conversation("c-1", 0))
            batch = decode_batch(recs, conversations_topic="conversations", ratings_topic="ratings")
            write_ingest_batch(session, group_id="g",
                               turns=[turn_row(r, e, ScoreOutcome(None), "producer", NOW)
                                      for r, e in batch.conversations],
                               ratings=[], dead_letters=[], next_offsets=batch.next_offsets)
            raise RuntimeError("crash before commit")
    write(sessions, records(conversation("c-2", 0)))
    assert [t[0] for t in snapshot(sessions)["turns"]] == ["c-2"]


def test_any_utc_offset_the_contract_accepts_is_stored_in_utc(sessions) -> None:
    # PostgreSQL's COPY rejects an offset past 15:59 ("time zone displacement out of range"): rows
    # carry UTC, so a valid event is never refused (or dead-lettered) for its producer's zone.
    write(sessions, records(conversation("c-far", ts="2026-11-27T10:00:00+23:59"),
                            rating("c-far", ts="2026-11-27T10:00:00-23:59", value=0)))
    with sessions() as session:
        turn = session.scalars(select(Turn)).one()
        stored = session.scalars(select(RatingRow)).one()
    assert turn.ts == datetime(2026, 11, 26, 10, 1, tzinfo=UTC)
    assert stored.ts == datetime(2026, 11, 28, 9, 59, tzinfo=UTC)
    assert (stored.joined, stored.entry_at, turn.satisfaction, turn.rated_at) == (True, stored.ts, 0.0, stored.ts)
