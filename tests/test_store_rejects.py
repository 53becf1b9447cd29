"""No record the store rejects can stop ingest.

A record that passes validation but that the database still refuses (a value out of a type's
range, a constraint) used to fail its batch on every retry. Now the loop bisects the batch down to
the records the store refuses, dead-letters each (reason ``store_rejected``) and moves on; an outage
(connectivity, a missing table) is still retried, even in the middle of a bisection.

The refusals are rules added to each test's own database only (a CHECK constraint and triggers):
the wire contract keeps every value we know of within the columns, so no natural value is refused
on both databases.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from kafka import KafkaProducer
from sqlalchemy import create_engine, select, text
from sqlalchemy.exc import DBAPIError

from monitor.config import Settings
from monitor.ingest.loop import STORE_REJECTED, describe_store_error, rejects_data
from monitor.store.db import make_engine, make_session_factory, normalise_url
from monitor.store.migrate import upgrade
from monitor.store.models import ConsumerOffset, DeadLetter, RatingRow, Turn
from tests.factories import conversation, rating, wire
from tests.helpers import ServiceThread, read_topic, wait_for

pytestmark = pytest.mark.slow

#: Text of the rejected records: it must never reach a log line.
SECRET = "SECRET-CONVERSATION-TEXT"
#: What the test databases' rules refuse.
MARKER = "reject-me"


def run_sql(url: str, statements: list[str]) -> None:
    engine = create_engine(normalise_url(url))
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(text(statement))
    finally:
        engine.dispose()


def add_rejection_rules(url: str) -> None:
    """Turns whose model_version, and ratings whose comment, contain MARKER are refused: on
    PostgreSQL by a CHECK constraint (an integrity error) and a trigger raising a data exception
    (SQLSTATE 22003, as a value out of range does); on SQLite by triggers that ABORT."""
    if url.startswith("sqlite"):
        run_sql(url, [
            f"CREATE TRIGGER test_reject_turn BEFORE INSERT ON turns WHEN NEW.model_version LIKE '%{MARKER}%' "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
            f"CREATE TRIGGER test_reject_rating BEFORE INSERT ON ratings WHEN NEW.comment LIKE '%{MARKER}%' "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
        ])
        return
    run_sql(url, [
        f"ALTER TABLE turns ADD CONSTRAINT test_reject_turn CHECK (model_version NOT LIKE '%{MARKER}%')",
        "CREATE FUNCTION test_reject_rating() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF NEW.comment LIKE '%{MARKER}%' THEN "
        "RAISE EXCEPTION 'refused by the test' USING ERRCODE = '22003'; END IF; RETURN NEW; END $$",
        "CREATE TRIGGER test_reject_rating BEFORE INSERT ON ratings FOR EACH ROW EXECUTE FUNCTION test_reject_rating()",
    ])


def start_outage(url: str) -> None:
    """Every rating insert fails as an outage does: PostgreSQL raises ``admin_shutdown`` (an
    OperationalError); on SQLite the trigger names a missing table (an OperationalError)."""
    if url.startswith("sqlite"):
        run_sql(url, ["CREATE TRIGGER test_outage BEFORE INSERT ON ratings BEGIN "
                      "INSERT INTO test_outage_is_over VALUES (1); END"])
        return
    run_sql(url, [
        "CREATE FUNCTION test_outage() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "RAISE EXCEPTION 'simulated outage' USING ERRCODE = '57P01'; END $$",
        "CREATE TRIGGER test_outage BEFORE INSERT ON ratings FOR EACH ROW EXECUTE FUNCTION test_outage()",
    ])


def end_outage(url: str) -> None:
    run_sql(url, ["DROP TRIGGER test_outage" + ("" if url.startswith("sqlite") else " ON ratings")])


def send(settings: Settings, items: list[tuple[str, bytes, bytes]]) -> list[tuple[str, int, int]]:
    """Produce (topic, key, value) in order; return each record's (topic, partition, offset)."""
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=5)
    try:
        futures = [producer.send(topic, key=key, value=value) for topic, key, value in items]
        producer.flush(60)
        positions = []
        for future in futures:
            meta = future.get(30)
            positions.append((meta.topic, meta.partition, meta.offset))
        return positions
    finally:
        producer.close(10)


def metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def warnings_seen(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.WARNING, logger="monitor")
    yield caplog


def logged_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured log line with its structured fields, as a service would write them."""
    return "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)


def test_records_the_store_rejects_are_dead_lettered_and_ingest_goes_on(
        topic_settings, database_url, warnings_seen) -> None:
    settings = topic_settings(database_url=database_url, batch_size=500)
    upgrade(database_url)
    add_rejection_rules(database_url)
    conv, rate = settings.conversations_topic, settings.ratings_topic
    poisoned_turns = {5, 17, 28}
    items: list[tuple[str, bytes, bytes]] = []
    for i in range(40):
        key = f"c-{i}".encode()
        model = f"assistant-{MARKER}" if i in poisoned_turns else "assistant-2026-11-20"
        response = f"{SECRET} {i}" if i in poisoned_turns else f"answer {i}"
        if i % 4 == 1:  # a rating that arrives before its turn, in the same batch
            items.append((rate, key, wire(rating(f"c-{i}", 0, value=1))))
        items.append((conv, key, wire(conversation(f"c-{i}", 0, response=response, model_version=model))))
        if i % 4 == 2:
            comment = f"{MARKER} {SECRET}" if i == 10 else "fine"
            items.append((rate, key, wire(rating(f"c-{i}", 0, value=0, comment=comment))))
    positions = send(settings, items)
    rejected = {position: value for position, (_, _, value) in zip(positions, items, strict=True)
                if MARKER.encode() in value}
    assert len(rejected) == 4
    n_turns, n_ratings = 40 - len(poisoned_turns), sum(topic == rate for topic, _, _ in items) - 1

    engine = make_engine(database_url)
    sessions = make_session_factory(engine)

    def stored() -> tuple[int, int, int]:
        with sessions() as session:
            return (len(session.scalars(select(Turn.id)).all()), len(session.scalars(select(RatingRow.id)).all()),
                    len(session.scalars(select(DeadLetter.id)).all()))

    try:
        with ServiceThread(settings) as service:
            wait_for(lambda: stored() == (n_turns, n_ratings, len(rejected)), timeout=60,
                     what=f"{n_turns} turns, {n_ratings} ratings, {len(rejected)} dead letters")
            assert metric(service.url, f'monitor_dead_letters_total{{reason="{STORE_REJECTED}"}}') == len(rejected)
            # A refused record is not a failed batch: nothing was retried.
            assert metric(service.url, 'monitor_batch_failures_total{stage="store"}') == 0
            assert metric(service.url, "monitor_store_up") == 1

            # Ingest goes on after the refusals.
            later = send(settings, [(conv, b"later", wire(conversation("later", 0)))])
            wait_for(lambda: stored()[0] == n_turns + 1, what="the event sent afterwards")
            assert service.alive

        with sessions() as session:
            dead = {(d.source_topic, d.source_partition, d.source_offset): d
                    for d in session.scalars(select(DeadLetter))}
            assert set(dead) == set(rejected)
            for position, row in dead.items():
                assert row.reason == STORE_REJECTED and row.raw == rejected[position]
                assert row.detail.startswith("the store rejected it: ") and SECRET not in row.detail
            # Every partition's stored offset is past its last record: nothing unwritten was skipped.
            offsets = {(o.topic, o.partition): o.next_offset for o in session.scalars(
                select(ConsumerOffset).where(ConsumerOffset.group_id == settings.consumer_group))}
            expected_offsets: dict[tuple[str, int], int] = {}
            for topic, partition, offset in positions + later:
                expected_offsets[(topic, partition)] = max(expected_offsets.get((topic, partition), 0), offset + 1)
            assert {k: v for k, v in offsets.items() if v >= 0} == expected_offsets
            # The rating join still holds across the parts of a bisected batch.
            turns = {t.conversation_id: t for t in session.scalars(select(Turn))}
            assert not {f"c-{i}" for i in poisoned_turns} & set(turns)
            for r in session.scalars(select(RatingRow)):
                # The ratings of the refused turns (c-5, c-17) wait for a turn that never comes.
                assert r.joined == (r.conversation_id not in {f"c-{i}" for i in poisoned_turns}), r.conversation_id
                if r.joined:
                    assert turns[r.conversation_id].satisfaction == r.satisfaction
                    assert turns[r.conversation_id].rating_count == 1
    finally:
        engine.dispose()

    messages = read_topic(settings, settings.dlq_topic, expected=len(rejected))
    by_source = {(m["source"]["topic"], m["source"]["partition"], m["source"]["offset"]): m for m in messages}
    assert set(by_source) == set(rejected)
    for position, message in by_source.items():
        assert message["reason"] == STORE_REJECTED
        assert base64.b64decode(message["raw_b64"]) == rejected[position]

    refusals = [r for r in warnings_seen.records if r.getMessage() == "the store rejected a record; dead-lettered"]
    assert sorted((r.topic, r.partition, r.offset) for r in refusals) == sorted(rejected)  # type: ignore[attr-defined]
    assert all(r.levelno == logging.WARNING for r in refusals)
    assert SECRET not in logged_text(warnings_seen)


def test_an_outage_met_while_bisecting_is_retried_and_nothing_is_lost(
        topic_settings, database_url, warnings_seen) -> None:
    settings = topic_settings(database_url=database_url, batch_size=500, retry_backoff_seconds=0.1,
                              retry_backoff_max_seconds=0.5)
    upgrade(database_url)
    add_rejection_rules(database_url)
    start_outage(database_url)
    conv, rate = settings.conversations_topic, settings.ratings_topic
    # One key, one partition: the turn the store refuses comes first, so the bisection dead-letters
    # it, then meets the outage in the part with the ratings.
    items = [(conv, b"k", wire(conversation("c-bad", 0, model_version=f"assistant-{MARKER}", response=SECRET)))]
    for i in range(10):
        items.append((conv, b"k", wire(conversation(f"c-{i}", 0))))
        items.append((rate, b"k", wire(rating(f"c-{i}", 0, value=1))))
    positions = send(settings, items)

    engine = make_engine(database_url)
    sessions = make_session_factory(engine)

    def stored() -> tuple[int, int, list[tuple[str, str]]]:
        with sessions() as session:
            return (len(session.scalars(select(Turn.id)).all()), len(session.scalars(select(RatingRow.id)).all()),
                    [(d.reason, d.source_topic) for d in session.scalars(select(DeadLetter))])

    try:
        with ServiceThread(settings) as service:
            # The outage is retried, never dead-lettered: the ratings wait, the store is reported down.
            wait_for(lambda: metric(service.url, 'monitor_batch_failures_total{stage="store"}') >= 3,
                     timeout=60, what="the outage to be retried")
            assert metric(service.url, "monitor_store_up") == 0
            turns, ratings, dead = stored()
            assert ratings == 0
            assert all(reason == STORE_REJECTED for reason, _ in dead) and len(dead) <= 1
            health = httpx.get(f"{service.url}/readyz")
            assert health.status_code == 503 and "the last ingest write failed" in health.text
            assert SECRET not in health.text

            end_outage(database_url)
            wait_for(lambda: stored() == (10, 10, [(STORE_REJECTED, conv)]), timeout=60,
                     what="every good record stored and the refused one dead-lettered once")
            wait_for(lambda: metric(service.url, "monitor_store_up") == 1, what="the store reported up")
            assert service.alive
        with sessions() as session:
            offsets = {(o.topic, o.partition): o.next_offset for o in session.scalars(
                select(ConsumerOffset).where(ConsumerOffset.group_id == settings.consumer_group))}
            for topic, partition, offset in positions:
                assert offsets[(topic, partition)] >= offset + 1
            assert all(r.joined for r in session.scalars(select(RatingRow)))
    finally:
        engine.dispose()
    assert SECRET not in logged_text(warnings_seen)


def _error_of(url: str, statements: list[str], failing: str, **params: object) -> Exception:
    run_sql(url, statements)
    engine = create_engine(normalise_url(url), hide_parameters=True)
    try:
        with engine.begin() as connection:
            connection.execute(text(failing), params)
    except DBAPIError as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError(f"{failing!r} did not fail")


def test_only_errors_about_the_values_count_as_rejections(database_url) -> None:
    """The classification on real errors of each database: values refused → bisect; a missing
    table, a NOT NULL column the code does not fill (schema drift) or a lost connection → retry."""
    table = ["CREATE TABLE t (a INTEGER NOT NULL, b TEXT CHECK (b <> 'no'))"]
    refused_value = _error_of(database_url, table, "INSERT INTO t VALUES (1, :b)", b="no")
    assert rejects_data(refused_value)
    assert describe_store_error(refused_value) == (
        "IntegrityError: CHECK constraint failed: b <> 'no'" if database_url.startswith("sqlite")
        else 'CheckViolation (SQLSTATE 23514): new row for relation "t" violates check constraint "t_b_check"')
    assert not rejects_data(_error_of(database_url, [], "INSERT INTO t VALUES (NULL, 'x')"))
    assert not rejects_data(_error_of(database_url, [], "INSERT INTO missing VALUES (1)"))
    if database_url.startswith("sqlite"):
        assert not rejects_data(_error_of(database_url, [], "INSERT INTO t VALUES (1, 'x') RETURNING nope()"))
        return
    assert rejects_data(_error_of(database_url, [], "INSERT INTO t VALUES (99999999999, 'x')"))  # out of range
    assert rejects_data(_error_of(database_url, [], "INSERT INTO t VALUES (1, :b)", b=f"{SECRET}\x00"))
    assert SECRET not in describe_store_error(_error_of(
        database_url, [], "INSERT INTO t VALUES (1, :b::int)", b=SECRET))  # DETAIL/CONTEXT lines left out
    with pytest.raises(psycopg.OperationalError) as lost:
        psycopg.connect("postgresql://postgres@127.0.0.1:1/test", connect_timeout=2)
    assert not rejects_data(lost.value)
