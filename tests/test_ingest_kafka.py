"""Ingest through the real broker into SQLite and PostgreSQL, read back over real HTTP."""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence

import httpx
import pytest
from sqlalchemy import select

from monitor.errors import ScoringError
from monitor.events import ConversationEvent
from monitor.scoring.base import ScoreOutcome
from monitor.store.db import make_engine, make_session_factory
from monitor.store.migrate import upgrade
from monitor.store.models import RatingRow, Turn
from monitor.store.writes import save_offsets
from tests.factories import conversation, rating, wire
from tests.helpers import ServiceThread, counts, produce, read_topic, wait_for


def test_conversations_ratings_and_dead_letters_flow_end_to_end(topic_settings, database_url: str) -> None:
    settings = topic_settings(database_url=database_url, batch_size=20)
    conv, rate = settings.conversations_topic, settings.ratings_topic
    items = [(rate, b"c-early", wire(rating("c-early", 0, kind="stars", value=2)))]  # before its turn
    items += [(conv, f"c-{i}".encode(), wire(conversation(f"c-{i}", 0, reward=i / 40))) for i in range(40)]
    items += [(rate, f"c-{i}".encode(), wire(rating(f"c-{i}", 0, value=i % 2))) for i in range(0, 40, 4)]
    items += [(conv, b"c-early", wire(conversation("c-early", 0, reward=0.7)))]
    items += [(conv, b"bad", b'{"schema": "conversation/v1", "turn": "zero"}')]
    produce(settings, items)

    with ServiceThread(settings) as service:
        wait_for(lambda: counts(database_url).turns == 41 and counts(database_url).dead_letters == 1,
                 what="41 turns and 1 dead letter")
        with httpx.Client(base_url=service.url, timeout=10, headers=service.headers()) as http:
            assert http.get("/healthz").json() == {"status": "ok"}
            wait_for(lambda: http.get("/readyz").status_code == 200, what="readiness")

            body = http.get("/v1/conversations/c-early").json()
            assert body["turns"][0]["reward"] == 0.7
            assert body["turns"][0]["satisfaction"] == 0.25  # 2 stars
            assert body["turns"][0]["status"] == "rated"
            assert body["ratings_waiting"] == 0
            assert http.get("/v1/conversations/c-1").json()["turns"][0]["status"] == "awaiting_rating"

            missing = http.get("/v1/conversations/nope")
            assert missing.status_code == 404
            assert missing.json()["error"]["type"] == "NotFound"

            metrics = http.get("/metrics").text
            assert f'monitor_messages_consumed_total{{topic="{conv}"}} 42.0' in metrics
            assert f'monitor_messages_consumed_total{{topic="{rate}"}} 11.0' in metrics
            assert 'monitor_dead_letters_total{reason="invalid_fields"} 1.0' in metrics
            assert "monitor_batch_duration_seconds_count" in metrics
            assert f'monitor_consumer_lag_messages{{topic="{conv}"}}' in metrics

    c = counts(database_url)
    assert (c.turns, c.ratings, c.ratings_joined, c.dead_letters) == (41, 11, 11, 1)
    [dead] = read_topic(settings, settings.dlq_topic, expected=1)
    assert dead["reason"] == "invalid_fields" and "turn" in dead["detail"]
    assert dead["source"]["topic"] == conv
    assert base64.b64decode(dead["raw_b64"]) == b'{"schema": "conversation/v1", "turn": "zero"}'


def test_a_restart_resumes_from_the_offsets_in_the_store(topic_settings, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'resume.db'}"
    settings = topic_settings(database_url=url)
    conv = settings.conversations_topic
    produce(settings, [(conv, b"k", wire(conversation(f"a-{i}", 0))) for i in range(30)])
    with ServiceThread(settings):
        wait_for(lambda: counts(url).turns == 30, what="first 30 turns")

    # Move the stored offsets past 5 more events: a restart must start *there*, not at Kafka's
    # committed offsets, proving it resumes from the store.
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    with sessions() as session:
        stored = {(t.source_topic, t.source_partition): 0 for t in session.scalars(select(Turn))}
    skipped = [(conv, b"k", wire(conversation("skipped", i))) for i in range(5)]
    produce(settings, skipped)  # key "k": all on one partition
    with sessions() as session:
        partition = session.scalars(select(Turn.source_partition)).first()
        end = session.scalar(select(Turn.source_offset).where(Turn.source_partition == partition)
                             .order_by(Turn.source_offset.desc()))
    with sessions.begin() as session:
        save_offsets(session, settings.consumer_group, {(conv, partition): end + 1 + 5})
    engine.dispose()
    assert stored

    produce(settings, [(conv, b"k", wire(conversation(f"b-{i}", 0))) for i in range(10)])
    with ServiceThread(settings):
        wait_for(lambda: counts(url).turns == 40, what="10 more turns")
    engine = make_engine(url)
    with make_session_factory(engine)() as session:
        ids = set(session.scalars(select(Turn.conversation_id)))
    engine.dispose()
    assert "skipped" not in ids
    assert {f"b-{i}" for i in range(10)} <= ids


class FlakyScorer:
    """Fails the first ``failures`` batches, as an unreachable remote reward model would."""

    identity = "flaky-test"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def score(self, events: Sequence[ConversationEvent]) -> list[ScoreOutcome]:
        self.calls += 1
        if self.calls <= self.failures:
            raise ScoringError("reward model unreachable")
        return [ScoreOutcome(1.0 if e.reward is None else e.reward * 2) for e in events]


def test_a_failing_batch_is_retried_from_its_first_offset_and_nothing_is_lost(topic_settings, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'retry.db'}"
    settings = topic_settings(database_url=url, batch_size=7)
    produce(settings, [(settings.conversations_topic, f"k{i}".encode(), wire(conversation(f"c-{i}", 0, reward=0.25)))
                       for i in range(25)]
            + [(settings.ratings_topic, b"k1", wire(rating("c-1", 0)))])
    scorer = FlakyScorer(failures=3)
    with ServiceThread(settings, scorer=scorer) as service:
        wait_for(lambda: counts(url).turns == 25 and counts(url).ratings_joined == 1, what="all events")
        metrics = httpx.get(f"{service.url}/metrics").text
        # Three failed scorer calls; the batch decoded beside a failing write is dropped with it,
        # so up to three batches fail (one call can be that dropped batch's).
        failures = re.search(r'monitor_batch_failures_total\{stage="scoring"\} (\S+)', metrics)
        assert failures is not None and 1 <= float(failures.group(1)) <= 3
        assert scorer.calls > 3
    engine = make_engine(url)
    with make_session_factory(engine)() as session:
        turns = session.scalars(select(Turn)).all()
        assert {(t.score, t.scorer) for t in turns} == {(0.5, "flaky-test")}
        assert session.scalars(select(RatingRow)).one().joined
    engine.dispose()


def test_readyz_is_false_while_the_broker_is_unreachable(tmp_path) -> None:
    from monitor.broker import free_port
    from monitor.config import Settings

    url = f"sqlite:///{tmp_path / 'ready.db'}"
    upgrade(url)
    settings = Settings(database_url=url, kafka_bootstrap=f"127.0.0.1:{free_port()}", api_port=0,
                        retry_backoff_seconds=0.2, lag_refresh_seconds=0.5)
    with ServiceThread(settings) as service:
        response = httpx.get(f"{service.url}/readyz", timeout=10)
        assert response.status_code == 503
        body = response.json()
        assert body["ready"] is False
        assert body["checks"]["database"] == {"ok": True}
        assert body["checks"]["broker"]["ok"] is False
        assert httpx.get(f"{service.url}/healthz").status_code == 200


def test_readyz_turns_false_when_the_broker_goes_away(tmp_path) -> None:
    from monitor.broker import EmbeddedBroker
    from monitor.config import Settings

    url = f"sqlite:///{tmp_path / 'gone.db'}"
    broker = EmbeddedBroker().start()
    try:
        broker.create_topics({"conversations": 1, "ratings": 1})
        settings = Settings(database_url=url, kafka_bootstrap=broker.bootstrap, api_port=0,
                            retry_backoff_seconds=0.2, lag_refresh_seconds=0.3, poll_timeout_ms=200,
                            session_timeout_ms=6000, max_poll_interval_ms=20000)
        with ServiceThread(settings) as service:
            wait_for(lambda: httpx.get(f"{service.url}/readyz").status_code == 200, what="ready")
            broker.stop()
            wait_for(lambda: httpx.get(f"{service.url}/readyz").status_code == 503, timeout=30, what="not ready")
            assert httpx.get(f"{service.url}/readyz").json()["checks"]["broker"]["ok"] is False
    finally:
        broker.stop()


@pytest.fixture(autouse=True)
def _quiet_kafka_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("ERROR", logger="kafka")
