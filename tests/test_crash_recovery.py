"""Crash test: SIGKILL `monitor serve` at random points, restart it, and compare the final store
with a clean uninterrupted run over the same topics: nothing lost, nothing duplicated."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import select

from monitor.config import Settings
from monitor.sim.traffic import TrafficSimulator
from monitor.store.db import make_engine, make_session_factory
from monitor.store.migrate import upgrade
from monitor.store.models import DeadLetter, RatingRow, Turn
from tests.helpers import counts, produce, wait_for

pytestmark = pytest.mark.slow

KILLS = 6


def serve(settings: Settings, group: str, database_url: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    env.update({
        "MONITOR_DATABASE_URL": database_url,
        "MONITOR_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "MONITOR_CONVERSATIONS_TOPIC": settings.conversations_topic,
        "MONITOR_RATINGS_TOPIC": settings.ratings_topic,
        "MONITOR_DLQ_TOPIC": settings.dlq_topic,
        "MONITOR_CONSUMER_GROUP": group,
        "MONITOR_BATCH_SIZE": "10",  # many small transactions: kills land between and inside them
        "MONITOR_SESSION_TIMEOUT_MS": "6000",
        "MONITOR_MAX_POLL_INTERVAL_MS": "20000",
        "MONITOR_POLL_TIMEOUT_MS": "200",
        "MONITOR_API_PORT": "0",
        "MONITOR_LOG_LEVEL": "WARNING",
    })
    return subprocess.Popen([sys.executable, "-m", "monitor", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def snapshot(database_url: str) -> dict[str, list]:
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            return {
                "turns": sorted(
                    (str(t.event_id), t.conversation_id, t.turn, t.ts, t.domain, t.response, t.score,
                     t.satisfaction, t.rating_count, t.rated_at, t.source_partition, t.source_offset)
                    for t in session.scalars(select(Turn))
                ),
                "ratings": sorted(
                    (str(r.event_id), r.conversation_id, r.turn, r.satisfaction, r.joined, r.source_offset)
                    for r in session.scalars(select(RatingRow))
                ),
                "dead_letters": sorted(
                    (d.source_topic, d.source_partition, d.source_offset, d.reason, d.raw)
                    for d in session.scalars(select(DeadLetter))
                ),
            }
    finally:
        engine.dispose()


def test_random_sigkills_leave_the_same_store_as_a_clean_run(topic_settings, pg_databases) -> None:
    settings = topic_settings()
    # Enough events that six restarts, each killed within 0.6 s of its first stored turn, cannot
    # store them all on a fast day (2,500 could: the sixth restart then had nothing left to store).
    messages = TrafficSimulator(seed=11, rating_rate=0.4, early_rating_rate=0.1).conversations(6000)
    topic_of = {"conversation": settings.conversations_topic, "rating": settings.ratings_topic}
    items = [(topic_of[m.kind], m.key.encode(), m.value) for m in messages]
    rng = random.Random(5)
    for index in sorted(rng.sample(range(len(items)), 40), reverse=True):  # a few dead letters too
        items.insert(index, (settings.conversations_topic, b"bad", b'{"schema": "conversation/v1"}'))
    produce(settings, items)
    n_turns = sum(m.kind == "conversation" for m in messages)
    expected = (n_turns, len(messages) - n_turns, 40)
    assert len(items) >= 3000

    def done(url: str) -> bool:
        c = counts(url)
        return (c.turns, c.ratings, c.dead_letters) == expected

    clean_url, crash_url = pg_databases(), pg_databases()
    upgrade(clean_url)
    upgrade(crash_url)

    def run_to_completion(group: str, url: str) -> None:
        process = serve(settings, group, url)
        try:
            wait_for(lambda: done(url), timeout=180, interval=0.5, what=f"{group} to finish")
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0

    run_to_completion("clean-run", clean_url)

    progress_at_kills = []
    for _ in range(KILLS):
        before = counts(crash_url).turns if progress_at_kills else 0
        process = serve(settings, "crash-run", crash_url)
        # Let it get going (past start-up and the group join), then kill it at a random moment.
        wait_for(lambda process=process, before=before: process.poll() is None and counts(crash_url).turns > before,
                 timeout=60, interval=0.05, what="ingest progress after a restart")
        time.sleep(rng.uniform(0.0, 0.6))
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        progress_at_kills.append(counts(crash_url).turns)
        print(f"killed at {progress_at_kills[-1]} of {n_turns} turns")
    assert all(0 < turns < n_turns for turns in progress_at_kills), progress_at_kills
    assert len(set(progress_at_kills)) == KILLS  # every kill landed at a different point

    run_to_completion("crash-run", crash_url)

    assert snapshot(crash_url) == snapshot(clean_url)
