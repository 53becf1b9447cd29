"""`monitor bench ingest`: our ingest vs a bare kafka-python consume loop, same events.

Three paths read the same N events (simulated traffic with producer-side rewards) from the same
topics, each in its own consumer group:

(a) the bare loop: poll, commit; what a competent engineer's fastest consumer does;
(b) the real `IngestLoop` alone: validate, score (producer rewards), write rows + offsets in one
    transaction, commit to Kafka;
(c) `serve` as deployed (:func:`monitor.service.run_service`): the same loop beside the API, the
    signal deriver and the analyzer's schedule, in one process;
(d) with ``workers`` > 0: that many ``serve --role worker`` processes in one consumer group
    (scale-out, docs/ingest.md), started and settled in the group before the events are produced
    again to fresh topics.

The bare loop is run three times and its fastest run is the baseline (a bare run is short, and one
that the scheduler interrupts would flatter every ratio).

Every path runs with kafka-python's C CRC-32C (the `crc32c` package, a dependency): the bench
refuses to run with the pure-Python fallback, which costs a third of a bare loop's CPU and would
flatter the ratio. The clock of each path starts at its first record, so the consumer-group join
(identical for all) is not counted. The store is a scratch database created next to
``database_url`` and dropped afterwards.
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
from sqlalchemy import text
from sqlalchemy.engine import make_url

from monitor.broker import EmbeddedBroker
from monitor.config import Settings
from monitor.errors import MonitorError
from monitor.gc_tuning import tune_gc
from monitor.health import HealthState
from monitor.ingest.dead_letters import DeadLetterPublisher
from monitor.ingest.loop import IngestLoop
from monitor.ingest.records import KafkaRecord
from monitor.ingest.source import KafkaEventSource
from monitor.metrics import Metrics
from monitor.scoring.base import ProducerRewardScorer
from monitor.service import offsets_from_store, run_service
from monitor.sim.produce import produce
from monitor.sim.traffic import TrafficSimulator
from monitor.store.db import make_engine, make_session_factory, normalise_url
from monitor.store.migrate import upgrade

#: `serve` as deployed, over the bare loop (issue 12: at least 0.25; 0.4 the stretch).
TARGET_RATIO = 0.25
STRETCH_RATIO = 0.4


def c_crc32c() -> bool:
    """Whether kafka-python checks record batches with the C CRC-32C (the `crc32c` package)."""
    from kafka.record import util

    return util.crc32c_c is not None and util.calc_crc32c.__defaults__ == (util.crc32c_c,)


#: Bare runs per bench; the fastest is the baseline.
BARE_RUNS = 3


@dataclass(frozen=True)
class IngestBenchResult:
    events: int
    bare_seconds: float
    loop_seconds: float
    serve_seconds: float
    store: str
    workers: int = 0
    workers_seconds: float | None = None
    bare_runs: tuple[float, ...] = ()

    def rate(self, seconds: float) -> float:
        return self.events / seconds

    @property
    def loop_ratio(self) -> float:
        return self.bare_seconds / self.loop_seconds

    @property
    def ratio(self) -> float:
        """`serve` as deployed over the bare loop: the figure the target is about."""
        return self.bare_seconds / self.serve_seconds

    def report(self) -> str:
        verdict = "meets" if self.ratio >= TARGET_RATIO else "MISSES"
        stretch = "meets" if self.ratio >= STRETCH_RATIO else "misses"
        runs = ", ".join(f"{self.rate(seconds):,.0f}" for seconds in self.bare_runs)
        workers = ""
        if self.workers and self.workers_seconds is not None:
            workers = (f"(d) {self.workers} worker processes -> {self.store:<6} "
                       f"{self.rate(self.workers_seconds):,.0f} events/s ({self.workers_seconds:.2f} s)  "
                       f"{self.bare_seconds / self.workers_seconds:.2f} of (a)\n")
        return (
            f"events                           {self.events:,} (C CRC-32C on every path)\n"
            f"(a) bare kafka-python loop       {self.rate(self.bare_seconds):,.0f} events/s "
            f"({self.bare_seconds:.2f} s; the fastest of {len(self.bare_runs) or 1} runs: {runs})\n"
            f"(b) ingest loop -> {self.store:<13} {self.rate(self.loop_seconds):,.0f} events/s "
            f"({self.loop_seconds:.2f} s)  {self.loop_ratio:.2f} of (a)\n"
            f"(c) serve as deployed -> {self.store:<7} {self.rate(self.serve_seconds):,.0f} events/s "
            f"({self.serve_seconds:.2f} s)\n"
            f"{workers}"
            f"ratio (c)/(a)                    {self.ratio:.2f}  ({verdict} the >= {TARGET_RATIO} target; "
            f"{stretch} the {STRETCH_RATIO} stretch)"
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
    """Our real source, noting when the first record arrived; it asks the loop to stop once it has
    handed out ``events`` records (the loop still writes the batch in flight before it returns)."""

    first_record_at: float | None = None
    handed_out = 0
    events = 0
    stop: threading.Event | None = None

    def poll(self) -> list[KafkaRecord]:
        records = super().poll()
        if records:
            if self.first_record_at is None:
                self.first_record_at = time.perf_counter()
            self.handed_out += len(records)
            if self.handed_out >= self.events and self.stop is not None:
                self.stop.set()
        return records


def _our_loop(settings: Settings, events: int) -> float:
    """The real `IngestLoop.run` (pipelined), stopped once every event is in the store."""
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    source = _TimedSource(settings, offsets_from_store(sessions, settings.consumer_group))
    dlq = DeadLetterPublisher(settings.bootstrap_servers, settings.dlq_topic)
    loop = IngestLoop(settings, source=source, sessions=sessions, scorer=ProducerRewardScorer(),
                      dead_letter_sink=dlq, metrics=Metrics(CollectorRegistry()), health=HealthState())
    # No watcher thread polling the metrics registry: it took the GIL from the loop (14% of its samples).
    source.stop, source.events = threading.Event(), events
    tune_gc()  # as `serve` does before it ingests
    try:
        loop.run(source.stop)
        finished = time.perf_counter()
        return finished - (source.first_record_at or finished)
    finally:
        source.close()
        dlq.close()
        engine.dispose()


def _serve(settings: Settings, events: int) -> float:
    """`run_service` as `monitor serve` runs it, stopped once every event is in the store; the
    clock runs from the first batch's receipt (its rows' ``ingested_at``) to the moment the stored
    offsets cover every event (the topics are fresh: offsets count records from 0)."""
    engine = make_engine(settings.database_url)
    stop = threading.Event()
    service = threading.Thread(target=run_service, args=(settings, stop),
                               kwargs={"scorer": ProducerRewardScorer(), "tune_collector": True}, daemon=True)
    service.start()
    try:
        with engine.connect() as connection:
            # A tiny table, read every 50 ms: counting the growing event tables instead took a
            # noticeable share of the database's CPU from the path under test.
            while connection.execute(text(_CONSUMED), {"group": settings.consumer_group}).scalar_one() < events:
                connection.rollback()
                if not service.is_alive():
                    raise MonitorError("serve stopped before it stored every event")
                time.sleep(0.05)
            finished = time.time()
            stored, first = connection.execute(text(_STORED)).one()
        if stored != events:
            raise MonitorError(f"serve stored {stored} of {events} events")
        return finished - first.timestamp()
    finally:
        stop.set()
        service.join(timeout=60)
        engine.dispose()


_CONSUMED = "SELECT coalesce(sum(greatest(next_offset, 0)), 0) FROM consumer_offsets WHERE group_id = :group"
# Rows stored and the first one's receipt (each batch's rows carry the wall clock of its receipt).
_STORED = """
SELECT (SELECT count(*) FROM turns) + (SELECT count(*) FROM ratings) + (SELECT count(*) FROM dead_letters),
       (SELECT min(ingested_at) FROM (SELECT min(ingested_at) AS ingested_at FROM turns
                                      UNION ALL SELECT min(ingested_at) FROM ratings) AS firsts)
"""


def _workers(settings: Settings, events: int, workers: int, messages: list,
             topics: Callable[[dict[str, int]], None] | None, echo: Callable[[str], None]) -> float:
    """``workers`` processes of ``serve --role worker`` in one group: started, ready, settled in
    the group, then the events produced to fresh topics; seconds from the first row's receipt to
    the stored offsets covering every event."""
    from monitor.bench.serve_process import ServeProcess

    env = {"database_url": settings.database_url, "kafka_bootstrap": settings.kafka_bootstrap,
           "conversations_topic": settings.conversations_topic, "ratings_topic": settings.ratings_topic,
           "dlq_topic": settings.dlq_topic, "consumer_group": settings.consumer_group, "role": "worker",
           "api_port": "0", "session_timeout_ms": "6000", "max_poll_interval_ms": "60000"}
    if topics is not None:
        topics({settings.conversations_topic: 3, settings.ratings_topic: 3, settings.dlq_topic: 1})
    processes = [ServeProcess(env) for _ in range(workers)]
    engine = make_engine(settings.database_url)
    try:
        for process in processes:
            process.wait_ready(timeout=120)
        # Joining the group takes a few seconds per member on the embedded broker; the clock
        # starts at the first stored row, so rebalances still under way would count.
        time.sleep(WORKERS_SETTLE_SECONDS)
        echo(f"    {workers} workers ready; producing the events again to fresh topics...")
        produce(messages, bootstrap_servers=settings.bootstrap_servers,
                conversations_topic=settings.conversations_topic, ratings_topic=settings.ratings_topic,
                realtime=False, stop=threading.Event())
        with engine.connect() as connection:
            while connection.execute(text(_CONSUMED), {"group": settings.consumer_group}).scalar_one() < events:
                connection.rollback()
                for process in processes:
                    process.check_running()
                time.sleep(0.05)
            finished = time.time()
            stored, first = connection.execute(text(_STORED)).one()
        if stored != events:
            raise MonitorError(f"the workers stored {stored} of {events} events")
        return finished - first.timestamp()
    finally:
        for process in processes:
            process.stop(timeout=60)
        engine.dispose()


#: How long the worker processes are given to settle in their consumer group before the events come.
WORKERS_SETTLE_SECONDS = 15.0


def run_ingest_benchmark(*, events: int, database_url: str, bootstrap: str | None = None, workers: int = 0,
                         echo: Callable[[str], None] = print) -> IngestBenchResult:
    if not c_crc32c():
        raise MonitorError("kafka-python is using its pure-Python CRC-32C: install the `crc32c` package "
                           "(a dependency of monitor) so that no path pays it")
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
            echo(f"(a) bare kafka-python consume loop ({BARE_RUNS} runs)...")
            bare_runs = tuple(_bare_loop(settings, events) for _ in range(BARE_RUNS))
            bare = min(bare_runs)
            backend = make_url(normalise_url(store_url)).get_backend_name()
            echo(f"(b) the ingest loop into {backend}...")
            loop = _our_loop(settings, events)
            echo(f"(c) serve as deployed (API, signal deriver, analyzer schedule) into a fresh {backend} database...")
            with scratch_database(database_url) as serve_url:
                upgrade(serve_url)
                serve_settings = settings.model_copy(update={
                    "database_url": serve_url, "consumer_group": f"bench-serve-{suffix}", "api_port": 0})
                served = _serve(serve_settings, events)
            workers_seconds = None
            if workers:
                echo(f"(d) {workers} `serve --role worker` processes in one consumer group into a fresh "
                     f"{backend} database...")
                with scratch_database(database_url) as workers_url:
                    upgrade(workers_url)
                    workers_seconds = _workers(settings.model_copy(update={
                        "database_url": workers_url, "consumer_group": f"bench-workers-{suffix}",
                        "conversations_topic": f"bench-conv-w-{suffix}", "ratings_topic": f"bench-rate-w-{suffix}",
                        "dlq_topic": f"bench-dlq-w-{suffix}"}), events, workers, messages,
                        broker.create_topics if broker is not None else None, echo)
            return IngestBenchResult(events, bare, loop, served, backend, workers, workers_seconds, bare_runs)
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
