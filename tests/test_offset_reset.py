"""Stored offsets outside their partition's log (the log was recreated, or retention deleted unread
records) are detected, logged, reset by MONITOR_OFFSET_RESET, counted and shown on /readyz; real
broker, real service, SQLite and PostgreSQL.

The embedded broker (Tansu) cannot delete records (its DeleteRecords is "not yet implemented"), so
the before-start case replaces one answer of the broker, the log start, and runs everything else
for real; the past-end cases use the broker's own answers, its undercounting end offsets included.
"""

from __future__ import annotations

import logging

import httpx
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from sqlalchemy import select

from monitor.store.db import make_engine, make_session_factory
from monitor.store.migrate import upgrade
from monitor.store.models import ConsumerOffset, Turn
from monitor.store.writes import reset_offsets, save_offsets
from tests.factories import conversation, wire
from tests.helpers import ServiceThread, counts, produce, wait_for

FAR_PAST_THE_END = 10_000
SOURCE = "monitor.ingest.source"


@pytest.fixture(autouse=True)
def _quiet_kafka_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("ERROR", logger="kafka")
    caplog.set_level("INFO", logger=SOURCE)


def _store_offsets(url: str, group: str, offsets: dict[tuple[str, int], int]) -> None:
    upgrade(url)
    engine = make_engine(url)
    try:
        with make_session_factory(engine).begin() as session:
            save_offsets(session, group, offsets)
    finally:
        engine.dispose()


def _stored(url: str, group: str) -> dict[tuple[str, int], int]:
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            rows = session.execute(select(ConsumerOffset.topic, ConsumerOffset.partition, ConsumerOffset.next_offset)
                                   .where(ConsumerOffset.group_id == group))
            return {(topic, partition): offset for topic, partition, offset in rows}
    finally:
        engine.dispose()


def _conversation_ids(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            return set(session.scalars(select(Turn.conversation_id)))
    finally:
        engine.dispose()


def _metric(http: httpx.Client, line_start: str, default: float | None = None) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    if default is not None:
        return default
    raise AssertionError(f"no sample {line_start}")


def _resets(http: httpx.Client, topic: str, reason: str) -> float:
    return _metric(http, f'monitor_offset_resets_total{{reason="{reason}",topic="{topic}"}}')


def _records(caplog: pytest.LogCaptureFixture, level: int, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == SOURCE and r.levelno == level and text in r.getMessage()]


def test_offsets_past_the_log_end_are_reset_to_earliest_and_a_restart_does_not_repeat_it(
    topic_settings, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = topic_settings(database_url=database_url, batch_size=25)
    conv = settings.conversations_topic
    # The old run's offsets, far past the end of the log that exists now.
    _store_offsets(database_url, settings.consumer_group, {(conv, p): FAR_PAST_THE_END for p in range(3)})
    produce(settings, [(conv, f"c-{i}".encode(), wire(conversation(f"c-{i}", 0))) for i in range(60)])

    with ServiceThread(settings) as service, httpx.Client(base_url=service.url, timeout=10) as http:
        wait_for(lambda: counts(database_url).turns == 60, what="every event stored")
        assert _resets(http, conv, "past_end") == 3
        assert _resets(http, conv, "before_start") == 0
        ready = wait_for(lambda: (r := http.get("/readyz")).status_code == 200 and r.json(), what="ready")
        assert ready["checks"]["offsets"] == {"ok": True}
        last = ready["last_offset_reset"]
        assert (last["topic"], last["reason"], last["stored_offset"]) == (conv, "past_end", FAR_PAST_THE_END)
        assert (last["policy"], last["reset_to"], last["log_start"], last["store_moved"]) == ("earliest", 0, 0, True)

    warnings = _records(caplog, logging.WARNING, "past the log end")
    assert len(warnings) == 3
    assert {(w.topic, w.partition) for w in warnings} == {(conv, p) for p in range(3)}
    assert all(w.stored_offset == FAR_PAST_THE_END and w.reset_to == 0 for w in warnings)
    assert all("resetting to the earliest offset 0" in w.getMessage() for w in warnings)
    stored = _stored(database_url, settings.consumer_group)
    assert all(stored[(conv, p)] < FAR_PAST_THE_END for p in range(3))
    assert sum(stored[(conv, p)] for p in range(3)) == 60  # every record read, once per partition

    # The store was moved with the reset: a restart resumes there and resets nothing. The broker's
    # end offsets undercount (one past the first record of the last batch): the check reads the tail
    # before it calls an offset past the end, so a consumer that read everything is left alone.
    caplog.clear()
    with ServiceThread(settings) as service, httpx.Client(base_url=service.url, timeout=10) as http:
        wait_for(lambda: http.get("/readyz").status_code == 200, what="ready after the restart")
        produce(settings, [(conv, b"c-new", wire(conversation("c-new", 0)))])
        wait_for(lambda: counts(database_url).turns == 61, what="the new event")
        assert _resets(http, conv, "past_end") == 0
        assert _metric(http, f'monitor_messages_consumed_total{{topic="{conv}"}}') == 1  # nothing re-read
        assert http.get("/readyz").json()["last_offset_reset"] is None
    assert not _records(caplog, logging.WARNING, "past the log end")


def test_a_log_recreated_under_the_running_service_is_noticed_and_read_from_its_start(
    topic_settings, broker, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = topic_settings(database_url=database_url)
    conv = settings.conversations_topic
    produce(settings, [(conv, f"old-{i}".encode(), wire(conversation(f"old-{i}", 0))) for i in range(30)])
    with ServiceThread(settings) as service, httpx.Client(base_url=service.url, timeout=10) as http:
        wait_for(lambda: counts(database_url).turns == 30, what="the first log's events")
        admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
        try:
            admin.delete_topics([conv])
        finally:
            admin.close()
        broker.create_topics({conv: 3})
        produce(settings, [(conv, f"new-{i}".encode(), wire(conversation(f"new-{i}", 0))) for i in range(6)])
        wait_for(lambda: counts(database_url).turns == 36, timeout=60, what="the new log's events")
        assert _resets(http, conv, "past_end") >= 1
    assert _records(caplog, logging.WARNING, "past the log end")
    # The stored offsets were moved back with the consumer: they count the new log's records only.
    stored = _stored(database_url, settings.consumer_group)
    assert sum(stored[(conv, p)] for p in range(3)) == 6


def test_policy_latest_skips_the_old_events_and_consumes_the_new(topic_settings, database_url: str,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    settings = topic_settings(database_url=database_url, offset_reset="latest")
    conv = settings.conversations_topic
    _store_offsets(database_url, settings.consumer_group, {(conv, p): FAR_PAST_THE_END for p in range(3)})
    produce(settings, [(conv, f"old-{i}".encode(), wire(conversation(f"old-{i}", 0))) for i in range(30)])

    with ServiceThread(settings) as service, httpx.Client(base_url=service.url, timeout=10) as http:
        # The series appears once the partitions are assigned: until then, keep waiting.
        wait_for(lambda: _metric(http, f'monitor_offset_resets_total{{reason="past_end",topic="{conv}"}}',
                                 default=0.0) == 3, what="three resets")
        produce(settings, [(conv, f"new-{i}".encode(), wire(conversation(f"new-{i}", 0))) for i in range(12)])
        wait_for(lambda: counts(database_url).turns == 12, what="the new events")
        assert http.get("/readyz").json()["last_offset_reset"]["policy"] == "latest"

    assert _conversation_ids(database_url) == {f"new-{i}" for i in range(12)}
    warnings = _records(caplog, logging.WARNING, "resetting to the latest offset")
    assert len(warnings) == 3
    # Each partition restarted at its true end (past all 30 old records), not at the undercounted one.
    assert sum(w.reset_to for w in warnings) == 30


def test_policy_none_pauses_the_partitions_and_readyz_says_why(topic_settings, database_url: str,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    settings = topic_settings(database_url=database_url, offset_reset="none")
    conv = settings.conversations_topic
    _store_offsets(database_url, settings.consumer_group, {(conv, 0): FAR_PAST_THE_END})
    produce(settings, [(conv, f"c-{i}".encode(), wire(conversation(f"c-{i}", 0))) for i in range(30)])

    with ServiceThread(settings) as service, httpx.Client(base_url=service.url, timeout=10) as http:
        def offsets_check() -> dict:
            response = http.get("/readyz")
            check = response.json()["checks"]["offsets"]
            # Right after the assignment it reads "not yet checked"; then the check's finding.
            return response.status_code == 503 and "past the end" in check.get("error", "") and check

        check = wait_for(offsets_check, what="not ready, blaming the offsets")
        assert check["ok"] is False
        assert f"{conv}:0: stored offset {FAR_PAST_THE_END} is past the end" in check["error"]
        assert "MONITOR_OFFSET_RESET=none" in check["error"]
        # The other partitions (nothing stored) are consumed; partition 0 is not.
        wait_for(lambda: counts(database_url).turns > 0, what="the other partitions' events")
        engine = make_engine(database_url)
        with make_session_factory(engine)() as session:
            assert 0 not in set(session.scalars(select(Turn.source_partition)))
        engine.dispose()
        assert http.get("/readyz").status_code == 503
        assert _resets(http, conv, "past_end") == 0
    assert _stored(database_url, settings.consumer_group)[(conv, 0)] == FAR_PAST_THE_END
    assert _records(caplog, logging.ERROR, "MONITOR_OFFSET_RESET=none")


def test_an_offset_before_the_log_start_is_data_loss_logged_loudly_and_reset(
    topic_settings, database_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = topic_settings(database_url=database_url)
    conv = settings.conversations_topic
    produce(settings, [(conv, b"one-key", wire(conversation(f"c-{i}", 0))) for i in range(10)])  # one partition
    partition = _partition_of(settings, conv, "c-0")
    _store_offsets(database_url, settings.consumer_group, {(conv, partition): 2})

    # Tansu cannot delete records: pretend retention deleted offsets 0-4 of this partition.
    log_start = 5
    real_beginning_offsets = KafkaConsumer.beginning_offsets

    def beginning_offsets(self: KafkaConsumer, partitions, timeout_ms=None):
        starts = real_beginning_offsets(self, partitions, timeout_ms=timeout_ms)
        return {tp: max(start, log_start) if tp == TopicPartition(conv, partition) else start
                for tp, start in starts.items()}

    monkeypatch.setattr(KafkaConsumer, "beginning_offsets", beginning_offsets)
    with ServiceThread(settings) as service, httpx.Client(base_url=service.url, timeout=10) as http:
        wait_for(lambda: counts(database_url).turns == 5, what="the five records after the log start")
        assert _resets(http, conv, "before_start") == 1
        last = http.get("/readyz").json()["last_offset_reset"]
        assert (last["reason"], last["stored_offset"], last["log_start"], last["reset_to"]) == ("before_start", 2, 5, 5)

    assert _conversation_ids(database_url) == {f"c-{i}" for i in range(5, 10)}
    [error] = _records(caplog, logging.ERROR, "DATA LOSS")
    assert "records 2-4 were deleted" in error.getMessage()
    assert _stored(database_url, settings.consumer_group)[(conv, partition)] == 10


def _partition_of(settings, topic: str, conversation_id: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False)
    try:
        for p in range(3):
            tp = TopicPartition(topic, p)
            consumer.assign([tp])
            consumer.seek(tp, 0)
            for records in consumer.poll(timeout_ms=2000).values():
                if any(conversation_id.encode() in r.value for r in records):
                    return p
    finally:
        consumer.close()
    raise AssertionError(f"{conversation_id} not found in {topic}")


def test_reset_offsets_moves_backwards_only_from_the_offset_it_was_given(migrated_url: str) -> None:
    engine = make_engine(migrated_url)
    sessions = make_session_factory(engine)
    with sessions.begin() as session:
        save_offsets(session, "g", {("t", 0): FAR_PAST_THE_END, ("t", 1): 40})
    with sessions.begin() as session:
        moved = reset_offsets(session, "g", {("t", 0): (FAR_PAST_THE_END, 0), ("t", 1): (FAR_PAST_THE_END, 0),
                                             ("t", 2): (5, 0)})
    assert moved == [("t", 0)]  # t:1 moved on meanwhile; t:2 has no row
    with sessions.begin() as session:
        save_offsets(session, "g", {("t", 0): 20})  # batches move it forward again, never back
        save_offsets(session, "g", {("t", 0): 7})
    engine.dispose()
    assert _stored(migrated_url, "g") == {("t", 0): 20, ("t", 1): 40}
