"""Events dated implausibly far ahead of the ingest clock, or before the floor, are dead letters.

Unit tests inject the clock (``decode_batch(now=...)``); the last test goes through the real
broker and service with the real wall clock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from monitor.config import Settings, load_settings
from monitor.errors import ConfigError
from monitor.events import DEAD_LETTER_REASONS, timestamp
from monitor.ingest.decode import DEFAULT_TIMESTAMP_BOUNDS, TimestampBounds, decode_batch
from monitor.ingest.records import KafkaRecord
from monitor.store.db import make_engine, make_session_factory
from monitor.store.models import DeadLetter, RatingRow, Turn
from tests.factories import conversation, rating, wire
from tests.helpers import ServiceThread, counts, produce, read_topic, wait_for

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
BOUNDS = TimestampBounds(future_tolerance=timedelta(minutes=5), floor=datetime(2000, 1, 1, tzinfo=UTC))


def decode(*events: dict, now: datetime = NOW, bounds: TimestampBounds = BOUNDS):
    records = [
        KafkaRecord("conversations" if e["schema"] == "conversation/v1" else "ratings", 0, offset,
                    e["conversation_id"].encode(), wire(e))
        for offset, e in enumerate(events)
    ]
    return decode_batch(records, conversations_topic="conversations", ratings_topic="ratings", now=now,
                        timestamps=bounds)


def reasons(batch) -> list[tuple[int, str]]:
    return [(d.record.offset, d.reason) for d in batch.dead_letters]


def test_the_new_reasons_are_metric_labels() -> None:
    assert {"future_timestamp", "ancient_timestamp"} <= set(DEAD_LETTER_REASONS)


@pytest.mark.parametrize("make", [conversation, rating])
def test_a_ts_up_to_the_tolerance_ahead_is_accepted_and_one_second_more_is_not(make) -> None:
    at_limit = make("c-1", ts=timestamp(NOW + timedelta(minutes=5)))
    past_limit = make("c-2", ts=timestamp(NOW + timedelta(minutes=5, seconds=1)))
    batch = decode(at_limit, past_limit)
    assert len(batch.conversations) + len(batch.ratings) == 1
    assert reasons(batch) == [(1, "future_timestamp")]
    assert "301 s ahead of the ingest clock" in batch.dead_letters[0].detail


@pytest.mark.parametrize("make", [conversation, rating])
def test_a_ts_a_year_ahead_is_a_future_timestamp(make) -> None:
    batch = decode(make("c-1", ts="2027-11-27T12:00:00Z"), make("c-2", ts=timestamp(NOW)))
    assert reasons(batch) == [(0, "future_timestamp")]
    # The good event in the same batch is kept, and its offset still advances the batch.
    assert len(batch.conversations) + len(batch.ratings) == 1
    assert batch.next_offsets == {("conversations" if make is conversation else "ratings", 0): 2}


@pytest.mark.parametrize("make", [conversation, rating])
def test_a_ts_before_the_floor_is_an_ancient_timestamp(make) -> None:
    batch = decode(make("c-1", ts="1999-12-31T23:59:59Z"), make("c-2", ts="2000-01-01T00:00:00Z"),
                   make("c-3", ts="1970-01-01T00:00:00Z"))
    assert reasons(batch) == [(0, "ancient_timestamp"), (2, "ancient_timestamp")]
    assert "before 2000-01-01T00:00:00+00:00" in batch.dead_letters[0].detail


def test_the_clock_decides_not_the_calendar() -> None:
    event = conversation("c-1", ts="2026-11-27T13:00:00Z")
    assert reasons(decode(event, now=NOW)) == [(0, "future_timestamp")]
    assert reasons(decode(event, now=NOW + timedelta(hours=1))) == []


def test_extreme_dates_with_offsets_are_rejected_without_overflow() -> None:
    # Converting either to UTC overflows datetime's range; the check compares without converting.
    batch = decode(conversation("c-1", ts="9999-12-31T23:59:59-05:00"), rating("c-2", ts="0001-01-01T00:00:00+01:00"))
    assert reasons(batch) == [(0, "future_timestamp"), (1, "ancient_timestamp")]


def test_the_timestamp_check_comes_after_the_contract() -> None:
    broken = conversation("c-1", ts="2099-01-01T00:00:00Z", turn="zero")
    assert reasons(decode(broken)) == [(0, "invalid_fields")]


def test_a_rejected_future_copy_does_not_shadow_a_valid_event_with_the_same_id() -> None:
    future = conversation("c-1", ts="2099-01-01T00:00:00Z", event_id="0b6f7c52-6f1e-4c43-a1d2-1b1c55c1c0de")
    valid = conversation("c-1", ts=timestamp(NOW), event_id="0b6f7c52-6f1e-4c43-a1d2-1b1c55c1c0de")
    batch = decode(future, valid)
    assert reasons(batch) == [(0, "future_timestamp")]
    assert len(batch.conversations) == 1 and batch.duplicates == 0


def test_the_wall_clock_is_the_default() -> None:
    ahead = datetime.now(UTC) + timedelta(days=1)
    records = [KafkaRecord("conversations", 0, 0, b"c", wire(conversation(ts=timestamp(ahead))))]
    batch = decode_batch(records, conversations_topic="conversations", ratings_topic="ratings")
    assert reasons(batch) == [(0, "future_timestamp")]


def test_the_decoder_defaults_are_the_settings_defaults() -> None:
    settings = Settings()
    assert DEFAULT_TIMESTAMP_BOUNDS == TimestampBounds(
        future_tolerance=timedelta(seconds=settings.ingest_future_tolerance_seconds),
        floor=settings.ingest_timestamp_floor,
    )


def test_the_bounds_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONITOR_INGEST_FUTURE_TOLERANCE_SECONDS", "30")
    monkeypatch.setenv("MONITOR_INGEST_TIMESTAMP_FLOOR", "2020-01-01T00:00:00Z")
    settings = load_settings()
    assert settings.ingest_future_tolerance_seconds == 30.0
    assert settings.ingest_timestamp_floor == datetime(2020, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MONITOR_INGEST_FUTURE_TOLERANCE_SECONDS", "-1"),
        ("MONITOR_INGEST_FUTURE_TOLERANCE_SECONDS", "inf"),
        ("MONITOR_INGEST_FUTURE_TOLERANCE_SECONDS", "nan"),
        ("MONITOR_INGEST_FUTURE_TOLERANCE_SECONDS", "86401"),
        ("MONITOR_INGEST_FUTURE_TOLERANCE_SECONDS", "soon"),
        ("MONITOR_INGEST_TIMESTAMP_FLOOR", "2000-01-01T00:00:00"),  # no timezone
        ("MONITOR_INGEST_TIMESTAMP_FLOOR", "3000-01-01T00:00:00Z"),  # would reject every event
        ("MONITOR_INGEST_TIMESTAMP_FLOOR", "last year"),
    ],
)
def test_invalid_bounds_fail_at_start(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        load_settings()


def test_through_the_broker_future_and_ancient_events_are_dead_letters_and_good_ones_are_stored(
    topic_settings, tmp_path
) -> None:
    url = f"sqlite:///{tmp_path / 'skew.db'}"
    settings = topic_settings(database_url=url, ingest_future_tolerance_seconds=3600,
                              ingest_timestamp_floor=datetime(2020, 1, 1, tzinfo=UTC))
    conv, rate = settings.conversations_topic, settings.ratings_topic
    now = datetime.now(UTC)
    items = [(conv, f"good-{i}".encode(), wire(conversation(f"good-{i}", 0))) for i in range(5)]
    items += [(rate, b"good-0", wire(rating("good-0", 0, value=0)))]
    # Within the configured hour of tolerance: stored.
    items += [(conv, b"skewed", wire(conversation("skewed", 0, ts=timestamp(now + timedelta(minutes=30)))))]
    future = wire(conversation("future", 0, ts=timestamp(now + timedelta(days=365))))
    future_rating = wire(rating("good-1", 0, ts=timestamp(now + timedelta(days=365))))
    ancient = wire(conversation("ancient", 0, ts="2019-12-31T23:59:59Z"))
    items += [(conv, b"future", future), (rate, b"good-1", future_rating), (conv, b"ancient", ancient)]
    produce(settings, items)

    with ServiceThread(settings):
        wait_for(lambda: (c := counts(url)).turns == 6 and c.ratings == 1 and c.dead_letters == 3,
                 what="6 turns, 1 rating and 3 dead letters")

    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            stored = sorted(session.scalars(select(Turn.conversation_id)))
            assert stored == ["good-0", "good-1", "good-2", "good-3", "good-4", "skewed"]
            assert [r.conversation_id for r in session.scalars(select(RatingRow))] == ["good-0"]
            dead = {bytes(d.raw): d.reason for d in session.scalars(select(DeadLetter))}
    finally:
        engine.dispose()
    assert dead == {future: "future_timestamp", future_rating: "future_timestamp", ancient: "ancient_timestamp"}
    on_topic = read_topic(settings, settings.dlq_topic, expected=3)
    assert sorted(m["reason"] for m in on_topic) == ["ancient_timestamp", "future_timestamp", "future_timestamp"]
    assert all("ahead of the ingest clock" in m["detail"] for m in on_topic if m["reason"] == "future_timestamp")
