"""`monitor bench ingest`: our ingest path vs a bare kafka-python consume loop, same events.

Both paths read the same N events (simulated traffic with producer-side rewards) from the same
topics, each in its own consumer group. The clock of each path starts at its first record, so the
consumer-group join (identical for both) is not counted. Our path runs the real `IngestLoop`:
validate, score (producer rewards), write rows + offsets in one transaction, commit to Kafka.
The store is a scratch database created next to ``database_url`` and dropped afterwards.
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from kafka import KafkaConsumer
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import make_url

from monitor.broker import EmbeddedBroker
from monitor.config import Settings
from monitor.health import HealthState
from monitor.ingest.dead_letters import DeadLetterPublisher
from monitor.ingest.loop import IngestLoop
from monitor.ingest.records import KafkaRecord
from monitor.ingest.source import KafkaEventSource
from monitor.metrics import Metrics
from monitor.scoring.base import ProducerRewardScorer
from monitor.service import offsets_from_store
from monitor.sim.produce import produce
from monitor.sim.traffic import TrafficSimulator
from monitor.store.db import make_engine, make_session_factory, normalise_url
from monitor.store.migrate import upgrade

TARGET_RATIO = 0.4


@dataclass(frozen=True)
class IngestBenchResult:
    events: int
    bare_seconds: float
    ours_seconds: float
    store: str

    @property
    def bare_rate(self) -> float:
        return self.events / self.bare_seconds

    @property
    def ours_rate(self) -> float:
        return self.events / self.ours_seconds

    @property
    def ratio(self) -> float:
        return self.ours_rate / self.bare_rate

    def report(self) -> str:
        verdict = "meets" if self.ratio >= TARGET_RATIO else "MISSES"
        return (
            f"events                      {self.events:,}\n"
            f"(a) bare kafka-python loop  {self.bare_rate:,.0f} events/s ({self.bare_seconds:.2f} s)\n"
            f"(b) monitor ingest -> {self.store:<6}{self.ours_rate:,.0f} events/s ({self.ours_seconds:.2f} s)\n"
            f"ratio (b)/(a)               {self.ratio:.2f}  ({verdict} the >= {TARGET_RATIO} target)"
        )


@contextmanager
def scratch_database(database_url: str) -> Iterator[str]:
    """A fresh database beside ``database_url`` (same PostgreSQL server), dropped afterwards."""
    url = make_url(normalise_url(database_url))
    if url.get_backend_name() == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite:///{Path(folder) / 'bench.db'}"
        return
    name = f"monitor_bench_{uuid.uuid4().hex[:10]}"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _bare_loop(settings: Settings, events: int) -> float:
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, group_id=f"bench-bare-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=settings.batch_size,
        session_timeout_ms=6000, max_poll_interval_ms=60_000,
    )
    consumer.subscribe(list(settings.topics))
    seen, started = 0, None
    try:
        while seen < events:
            polled = consumer.poll(timeout_ms=500, max_records=settings.batch_size)
            batch = sum(len(records) for records in polled.values())
            if batch and started is None:
                started = time.perf_counter()
            seen += batch
            if polled:
                consumer.commit()
        return time.perf_counter() - (started or time.perf_counter())
    finally:
        consumer.close(autocommit=False)


class _TimedSource(KafkaEventSource):
    """Our real source, noting when the first record arrived."""

    first_record_at: float | None = None

    def poll(self) -> list[KafkaRecord]:
        records = super().poll()
        if records and self.first_record_at is None:
            self.first_record_at = time.perf_counter()
        return records


def _our_loop(settings: Settings, events: int) -> float:
    """The real `IngestLoop.run` (pipelined), stopped once every event is in the store."""
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    source = _TimedSource(settings, offsets_from_store(sessions, settings.consumer_group))
    dlq = DeadLetterPublisher(settings.bootstrap_servers, settings.dlq_topic)
    registry = CollectorRegistry()
    loop = IngestLoop(settings, source=source, sessions=sessions, scorer=ProducerRewardScorer(),
                      dead_letter_sink=dlq, metrics=Metrics(registry), health=HealthState())
    stop = threading.Event()

    def consumed() -> float:
        return sum(registry.get_sample_value("monitor_messages_consumed_total", {"topic": topic}) or 0.0
                   for topic in settings.topics)

    def stop_when_done() -> None:
        while not stop.is_set():
            if consumed() >= events:
                stop.set()
            time.sleep(0.05)  # cheap: reading the registry takes the GIL from the loop

    watcher = threading.Thread(target=stop_when_done, daemon=True)
    watcher.start()
    try:
        loop.run(stop)
        finished = time.perf_counter()
        return finished - (source.first_record_at or finished)
    finally:
        stop.set()
        source.close()
        dlq.close()
        engine.dispose()


def run_ingest_benchmark(*, events: int, database_url: str, bootstrap: str | None = None,
                         echo: Callable[[str], None] = print) -> IngestBenchResult:
    broker = None
    if bootstrap is None:
        broker = EmbeddedBroker().start()
        bootstrap = broker.bootstrap
    try:
        suffix = uuid.uuid4().hex[:8]
        with scratch_database(database_url) as store_url:
            settings = Settings(
                database_url=store_url, kafka_bootstrap=bootstrap, conversations_topic=f"bench-conv-{suffix}",
                ratings_topic=f"bench-rate-{suffix}", dlq_topic=f"bench-dlq-{suffix}",
                consumer_group=f"bench-ours-{suffix}", session_timeout_ms=6000, max_poll_interval_ms=60_000,
            )
            if broker is not None:
                topics = {settings.conversations_topic: 3, settings.ratings_topic: 3, settings.dlq_topic: 1}
                broker.create_topics(topics)
            echo(f"generating {events:,} events...")
            messages = _first_messages(events)
            echo("producing them to Kafka...")
            produce(messages, bootstrap_servers=settings.bootstrap_servers,
                    conversations_topic=settings.conversations_topic, ratings_topic=settings.ratings_topic,
                    realtime=False, stop=threading.Event())
            upgrade(store_url)
            echo("(a) bare kafka-python consume loop...")
            bare = _bare_loop(settings, events)
            echo(f"(b) monitor ingest into {make_url(normalise_url(store_url)).get_backend_name()}...")
            ours = _our_loop(settings, events)
            return IngestBenchResult(events, bare, ours, make_url(normalise_url(store_url)).get_backend_name())
    finally:
        if broker is not None:
            broker.stop()


def _first_messages(events: int) -> list:
    simulator = TrafficSimulator(seed=2026)
    turns = max(events // 2, 1)
    while True:
        messages = simulator.conversations(turns)
        if len(messages) >= events:
            return messages[:events]
        turns *= 2
