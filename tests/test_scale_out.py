"""Scale-out: `monitor serve --role worker|analyzer|api`, the rating-join sweep, and three workers
plus two analyzers as real processes on the real broker and PostgreSQL, one worker SIGKILLed
mid-run and the analyzer holding the lock SIGKILLed while it holds it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, text

from monitor.analyze.runner import Analyzer
from monitor.broker import free_port
from monitor.config import Settings
from monitor.events import parse_conversation, parse_rating
from monitor.ingest.decode import decode_batch, rating_row, turn_row
from monitor.ingest.records import KafkaRecord
from monitor.metrics import Metrics
from monitor.scoring.base import ScoreOutcome
from monitor.sim.traffic import SimulatedMessage, TrafficSimulator
from monitor.store.analysis import ANALYZER_LOCK_KEY
from monitor.store.db import make_engine, make_session_factory
from monitor.store.migrate import upgrade
from monitor.store.models import AnalysisRun, RatingRow, Turn, utcnow
from monitor.store.sweep import join_missed_ratings
from monitor.store.writes import insert_ignoring_duplicates, write_ingest_batch
from tests.factories import conversation, rating, wire
from tests.helpers import ServiceThread, counts, produce, wait_for

# --- the sweep, on both databases ------------------------------------------------------------------


@pytest.fixture
def sessions(migrated_url: str):
    engine = make_engine(migrated_url)
    yield make_session_factory(engine)
    engine.dispose()


def decoded(*events: dict, partition: int = 0) -> tuple[list[dict], list[dict], dict[tuple[str, int], int]]:
    """The turn and rating rows (and next offsets) ingest would write for ``events``."""
    records = [KafkaRecord("conversations" if e["schema"] == "conversation/v1" else "ratings", partition, offset,
                           e["conversation_id"].encode(), wire(e)) for offset, e in enumerate(events)]
    batch = decode_batch(records, conversations_topic="conversations", ratings_topic="ratings")
    now = utcnow()
    return ([turn_row(r, e, ScoreOutcome(e.reward), "producer", now) for r, e in batch.conversations],
            [rating_row(r, e, now) for r, e in batch.ratings], batch.next_offsets)


def turn_of(sessions, conversation_id: str, number: int = 0) -> Turn:
    with sessions() as session:
        return session.scalars(select(Turn).where(Turn.conversation_id == conversation_id, Turn.turn == number)).one()


def unjoined(sessions) -> list[tuple[str, int]]:
    with sessions() as session:
        return sorted(session.execute(select(RatingRow.conversation_id, RatingRow.turn)
                                      .where(RatingRow.joined.is_(False))).all())


def test_the_sweep_joins_ratings_left_unjoined_beside_their_turn(sessions) -> None:
    # The state two workers' transactions leave behind (rows stored, no join ran that saw both),
    # written here without a join; an orphan rating (no turn yet) beside them.
    turns, ratings, _ = decoded(
        conversation("c-1", 0), conversation("c-2", 0),
        rating("c-1", 0, value=0, ts="2026-11-27T10:01:00Z"), rating("c-1", 0, value=1, ts="2026-11-27T10:02:00Z"),
        rating("c-2", 0, kind="stars", value=4), rating("c-3", 0))
    with sessions.begin() as session:
        insert_ignoring_duplicates(session, Turn.__table__, turns)
        insert_ignoring_duplicates(session, RatingRow.__table__, ratings)
    assert len(unjoined(sessions)) == 4 and turn_of(sessions, "c-1").satisfaction is None

    with sessions.begin() as session:
        assert join_missed_ratings(session, limit=2) == 2  # bounded: the rest waits for the next sweep
    with sessions.begin() as session:
        assert join_missed_ratings(session) == 1
    with sessions.begin() as session:
        assert join_missed_ratings(session) == 0  # the orphan waits for its turn

    assert unjoined(sessions) == [("c-3", 0)]
    first, second = turn_of(sessions, "c-1"), turn_of(sessions, "c-2")
    assert (first.satisfaction, first.rating_count, first.rated_at) == (1.0, 2, datetime(2026, 11, 27, 10, 2,
                                                                                          tzinfo=UTC))
    assert (second.satisfaction, second.rating_count) == (0.75, 1)
    with sessions() as session:
        entries = session.scalars(select(RatingRow.entry_at).where(RatingRow.joined.is_(True))).all()
    assert len(entries) == 3 and None not in entries


def test_the_sweep_reads_the_partial_index_of_unjoined_ratings(sessions) -> None:
    with sessions() as session:
        statement = (select(RatingRow.conversation_id, RatingRow.turn)
                     .where(RatingRow.joined == False)  # noqa: E712 - the sweep's predicate, as SQL
                     .limit(10))
        sql = str(statement.compile(session.get_bind(), compile_kwargs={"literal_binds": True}))
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SET LOCAL enable_seqscan = off"))  # an empty table: make the choice visible
            plan = "\n".join(session.execute(text(f"EXPLAIN {sql}")).scalars())
        else:
            plan = "\n".join(str(row[-1]) for row in session.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
    assert "ix_ratings_unjoined" in plan, plan


# --- two ingest transactions that miss each other (PostgreSQL: SQLite has one writer at a time) ---


def test_two_concurrent_ingest_transactions_miss_the_join_and_the_analyzer_sweeps_it(pg_databases) -> None:
    url = pg_databases()
    upgrade(url)
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    try:
        turn_rows, _, turn_offsets = decoded(conversation("c-race", 0, ts="2026-11-27T10:00:00Z"), partition=0)
        _, rating_rows, rating_offsets = decoded(rating("c-race", 0, kind="stars", value=2,
                                                        ts="2026-11-27T10:00:30Z"), partition=1)
        # Worker A writes the turn, worker B the rating; neither has committed when the other writes.
        worker_a, worker_b = sessions(), sessions()
        write_ingest_batch(worker_a, group_id="g", turns=turn_rows, ratings=[], dead_letters=[],
                           next_offsets=turn_offsets)
        write_ingest_batch(worker_b, group_id="g", turns=[], ratings=rating_rows, dead_letters=[],
                           next_offsets=rating_offsets)
        worker_a.commit()
        worker_b.commit()
        worker_a.close()
        worker_b.close()
        # The race is real: both committed, and the rating is not joined to the turn beside it.
        assert unjoined(sessions) == [("c-race", 0)]
        assert turn_of(sessions, "c-race").satisfaction is None

        registry = CollectorRegistry()
        analyzer = Analyzer(Settings(database_url=url, review_enabled=False, analyze_drift_rows=0), sessions,
                            metrics=Metrics(registry), derive=False)
        summary = analyzer.run_once(publish=False)

        assert summary.swept == 1 and unjoined(sessions) == []
        swept = turn_of(sessions, "c-race")
        assert (swept.satisfaction, swept.rating_count) == (0.25, 1)
        assert registry.get_sample_value("monitor_ratings_swept_total") == 1
        assert analyzer.run_once(publish=False).swept == 0
    finally:
        engine.dispose()


# --- three workers and two analyzers as processes ------------------------------------------------

CONVERSATIONS = 500


class Process:
    """One `monitor serve --role ...` subprocess; its log goes to a file, shown if the test fails."""

    def __init__(self, name: str, role: str, env: dict[str, str], log_dir: Path) -> None:
        self.name, self.role = name, role
        self.port = free_port()
        self.log = log_dir / f"{name}.log"
        env = {**env, "MONITOR_API_PORT": str(self.port), "PGAPPNAME": name}
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen([sys.executable, "-m", "monitor", "serve", "--role", role], env=env,
                                          stdout=out, stderr=subprocess.STDOUT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The sum of the series of ``name`` whose labels include ``labels`` (0 when absent)."""
        body = httpx.get(f"{self.url}/metrics", timeout=5).text
        return sum(sample.value for family in text_string_to_metric_families(body) for sample in family.samples
                   if sample.name == name and (labels or {}).items() <= sample.labels.items())

    def kill(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    started: list[Process] = []

    def start(name: str, role: str, env: dict[str, str]) -> Process:
        started.append(Process(name, role, env, tmp_path))
        return started[-1]

    try:
        yield start
    finally:
        for process in started:
            if process.popen.poll() is None:
                process.popen.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.popen.wait(30)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait(10)
        for process in started:
            sys.stderr.write(f"--- {process.name} (exit {process.popen.returncode}) ---\n"
                             + process.log.read_text(errors="replace")[-3000:] + "\n")


def expected_turns(messages: list[SimulatedMessage]) -> dict[tuple[str, int], tuple[float | None, int]]:
    """(satisfaction, rating count) per turn as one transaction per event would store them: the
    latest rating by event time (event id breaks ties) wins."""
    ratings = defaultdict(list)
    for message in messages:
        if message.kind == "rating":
            event = parse_rating(message.value)
            ratings[(event.conversation_id, event.turn)].append((event.ts, event.event_id, event.satisfaction))
    expected = {}
    for message in messages:
        if message.kind == "conversation":
            event = parse_conversation(message.value)
            rated = ratings.get((event.conversation_id, event.turn), [])
            expected[(event.conversation_id, event.turn)] = (max(rated)[2] if rated else None, len(rated))
    return expected


def stored_turns(database_url: str) -> dict[tuple[str, int], tuple[float | None, int]]:
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            return {(c, t): (s, n) for c, t, s, n in session.execute(
                select(Turn.conversation_id, Turn.turn, Turn.satisfaction, Turn.rating_count))}
    finally:
        engine.dispose()


def scalar(database_url: str, statement) -> object:  # noqa: ANN001 - any select() of one value
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            return session.execute(statement).scalar()
    finally:
        engine.dispose()


def lock_holder(database_url: str) -> str | None:
    """The application name (the process's name here) of the session holding the analyzer lock."""
    # A bigint advisory key is stored as classid (high 32 bits) and objid (low 32 bits).
    with psycopg.connect(database_url, autocommit=True) as connection:
        row = connection.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s",
            (ANALYZER_LOCK_KEY >> 32, ANALYZER_LOCK_KEY & 0xFFFFFFFF)).fetchone()
    return row[0] if row else None


@pytest.mark.slow
def test_three_workers_one_killed_store_every_event_once_and_a_killed_analyzer_hands_over(
        topic_settings, pg_databases, processes) -> None:
    settings = topic_settings()
    url = pg_databases()  # empty: the five processes migrate it together, in turn
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    env.update({
        "MONITOR_DATABASE_URL": url,
        "MONITOR_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "MONITOR_CONVERSATIONS_TOPIC": settings.conversations_topic,
        "MONITOR_RATINGS_TOPIC": settings.ratings_topic,
        "MONITOR_DLQ_TOPIC": settings.dlq_topic,
        "MONITOR_FLAGS_TOPIC": settings.flags_topic,
        "MONITOR_RELABEL_TOPIC": settings.relabel_topic,
        "MONITOR_CONSUMER_GROUP": settings.consumer_group,
        "MONITOR_BATCH_SIZE": "10",  # many small transactions, so workers' batches interleave
        "MONITOR_SESSION_TIMEOUT_MS": "6000",
        "MONITOR_MAX_POLL_INTERVAL_MS": "20000",
        "MONITOR_POLL_TIMEOUT_MS": "200",
        "MONITOR_ANALYZE_INTERVAL_SECONDS": "1",
        "MONITOR_ANALYZE_DRIFT_ROWS": "0",
        "MONITOR_REVIEW_ENABLED": "false",
        "MONITOR_LOG_LEVEL": "INFO",
    })
    workers = [processes(f"worker-{i}", "worker", env) for i in range(3)]
    analyzers = [processes(f"analyzer-{i}", "analyzer", env) for i in range(2)]
    for process in workers + analyzers:
        wait_for(process.ready, timeout=90, interval=0.3, what=f"{process.name} to be ready")
    # Each role serves probes and metrics only: no /v1 route beside ingest or the analyzer.
    assert httpx.get(f"{workers[0].url}/v1/alerts", timeout=5).status_code == 404
    assert "broker" not in httpx.get(f"{analyzers[0].url}/readyz", timeout=5).json()["checks"]

    messages = TrafficSimulator(seed=21, rating_rate=0.5, early_rating_rate=0.1).conversations(CONVERSATIONS)
    topic_of = {"conversation": settings.conversations_topic, "rating": settings.ratings_topic}
    items = [(topic_of[m.kind], m.key.encode(), m.value) for m in messages]
    n_turns = sum(m.kind == "conversation" for m in messages)
    n_ratings = len(messages) - n_turns

    # Traffic arrives a slice at a time until the victim has written some of it; it dies mid-run,
    # batches of its own in flight, and the rest arrives while the group rebalances without it.
    victim, survivors = workers[0], workers[1:]
    sent = 0
    while victim.metric("monitor_events_accepted_total") == 0:
        assert sent < len(items) // 2, "the victim worker never got a partition"
        produce(settings, items[sent:sent + 60])
        sent += 60
        wait_for(lambda: victim.metric("monitor_events_accepted_total") > 0 or counts(url).turns > 0,
                 timeout=30, interval=0.1, what="ingest progress")
        time.sleep(0.3)
    rest = threading.Thread(target=produce, args=(settings, items[sent:]))
    rest.start()
    time.sleep(0.2)
    victim.kill()
    rest.join(60)
    assert counts(url).turns < n_turns  # the kill landed mid-run

    wait_for(lambda: (counts(url).turns, counts(url).ratings) == (n_turns, n_ratings), timeout=90, interval=0.5,
             what="every event stored")
    assert all(worker.metric("monitor_events_accepted_total") > 0 for worker in survivors)
    ingested_at = utcnow()
    # Runs are serialised by the lock, so the second run recorded after the last write started after
    # it: its sweep joined whatever two workers' batches missed.
    wait_for(lambda: scalar(url, select(func.count()).where(AnalysisRun.started_at > ingested_at)) >= 2,
             timeout=30, interval=0.3, what="two analyzer runs after ingest")

    # Exactly once: the stored events are the produced ones.
    produced_ids = {str(parse_conversation(m.value).event_id) if m.kind == "conversation"
                    else str(parse_rating(m.value).event_id) for m in messages}
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            stored_ids = {str(i) for i in session.scalars(select(Turn.event_id))} | \
                {str(i) for i in session.scalars(select(RatingRow.event_id))}
            unjoined_beside_turn = session.execute(select(func.count()).select_from(RatingRow).where(
                RatingRow.joined.is_(False),
                select(Turn.id).where(Turn.conversation_id == RatingRow.conversation_id,
                                      Turn.turn == RatingRow.turn).exists())).scalar()
    finally:
        engine.dispose()
    assert stored_ids == produced_ids
    assert unjoined_beside_turn == 0
    assert stored_turns(url) == expected_turns(messages)

    # The analyzer lock. Hold the ratings table so that a run (the sweep reads it first) waits while
    # holding the lock: the holder is known, the other is refused meanwhile, and the holder dies
    # holding it. The wait gives up after 5 s (LOCK_TIMEOUT_MS), so a late look is tried again.
    with psycopg.connect(url) as blocker:
        blocker.execute("LOCK TABLE ratings IN ACCESS EXCLUSIVE MODE")
        for _attempt in range(4):
            holder_name = wait_for(lambda: lock_holder(url), timeout=15, interval=0.05,
                                   what="an analyzer holding the lock")
            holder = next(a for a in analyzers if a.name == holder_name)
            other = next(a for a in analyzers if a is not holder)
            refused = other.metric("monitor_analyze_runs_total", {"outcome": "locked"})
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline and \
                    other.metric("monitor_analyze_runs_total", {"outcome": "locked"}) <= refused:
                time.sleep(0.1)
            if other.metric("monitor_analyze_runs_total", {"outcome": "locked"}) > refused \
                    and lock_holder(url) == holder_name:  # refused while the holder is still stuck
                break
        else:
            pytest.fail("no analyzer stayed stuck in a run holding the lock while the other was refused")
        done = other.metric("monitor_analyze_runs_total", {"outcome": "ok"})
        holder.kill()
        killed_at, took_over = utcnow(), time.monotonic()
        blocker.rollback()
    wait_for(lambda: lock_holder(url) != holder_name, timeout=10, interval=0.05, what="the dead holder's lock to go")
    wait_for(lambda: other.metric("monitor_analyze_runs_total", {"outcome": "ok"}) > done
             and scalar(url, select(func.count()).where(AnalysisRun.started_at > killed_at)),
             timeout=10, interval=0.1, what="the other analyzer to run")
    assert time.monotonic() - took_over < 10
    assert other.popen.poll() is None and all(worker.popen.poll() is None for worker in survivors)


# --- the roles' HTTP surface --------------------------------------------------------------------


def test_the_api_role_is_ready_without_a_broker_and_serves_the_api(migrated_url: str) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    with ServiceThread(Settings(database_url=migrated_url, kafka_bootstrap=nowhere, api_port=0, role="api")) as api:
        ready = httpx.get(f"{api.url}/readyz", timeout=10)
        assert ready.status_code == 200 and list(ready.json()["checks"]) == ["database"]
        assert httpx.get(f"{api.url}/v1/alerts", headers=api.headers("viewer"), timeout=10).status_code == 200
    # A worker with the same settings serves probes only, and is not ready without its broker.
    with ServiceThread(Settings(database_url=migrated_url, kafka_bootstrap=nowhere, api_port=0,
                                role="worker", retry_backoff_seconds=0.2)) as worker:
        not_ready = httpx.get(f"{worker.url}/readyz", timeout=10)
        assert not_ready.status_code == 503 and not_ready.json()["checks"]["broker"]["ok"] is False
        assert httpx.get(f"{worker.url}/v1/alerts", headers=worker.headers("viewer"), timeout=10).status_code == 404
        assert "monitor_events_accepted_total" in httpx.get(f"{worker.url}/metrics", timeout=10).text


def test_an_unknown_role_stops_serve_with_one_line_naming_the_setting() -> None:
    result = subprocess.run([sys.executable, "-m", "monitor", "serve", "--role", "leader"], capture_output=True,
                            text=True, timeout=60, env={k: v for k, v in os.environ.items()
                                                        if not k.startswith("MONITOR_")})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: invalid setting(s): MONITOR_ROLE: Input should be 'all', 'worker', 'analyzer' or 'api'"]
