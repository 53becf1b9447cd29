"""`run_service`: wires settings into a running process (store, scorer, Kafka, ingest loop, API).

`monitor serve` calls it; so does `monitor demo`. SIGTERM or SIGINT finishes the batch in flight,
closes the consumer and the API server, and returns.

What runs depends on the role (``MONITOR_ROLE`` or ``monitor serve --role``, docs/ingest.md):

======== ========================================== ==========================================
role     runs                                       serves on ``MONITOR_API_PORT``
======== ========================================== ==========================================
all      ingest, signal deriver, analyzer schedule  the API (``/v1``, pages, probes, metrics)
worker   ingest (one member of the consumer group)  ``/healthz``, ``/readyz``, ``/metrics``
analyzer signal deriver, analyzer schedule          ``/healthz``, ``/readyz``, ``/metrics``
api      nothing in the background                  the API
======== ========================================== ==========================================

The analyzer schedule also runs the retention prune (:mod:`monitor.retention`, docs/retention.md).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from monitor.analyze.derive import SignalDeriver
from monitor.analyze.runner import Analyzer, AnalyzerThread
from monitor.api.app import create_app
from monitor.api.context import AppContext
from monitor.api.probes import create_probe_app
from monitor.api.server import ApiServer
from monitor.config import ANALYZER_ROLES, API_ROLES, INGEST_ROLES, Settings
from monitor.errors import BrokerUnavailable, StoreUnavailable
from monitor.gc_tuning import tune_gc
from monitor.health import HealthState
from monitor.ingest.backlog import Backlog
from monitor.ingest.dead_letters import DeadLetterPublisher
from monitor.ingest.loop import IngestLoop
from monitor.ingest.source import KafkaEventSource, Position, stored_offset_resets
from monitor.metrics import Metrics
from monitor.retention import RetentionSchedule
from monitor.scoring.base import ProducerRewardScorer, Scorer
from monitor.scoring.factory import build_scorer
from monitor.store.db import make_engine, make_session_factory, masked_url
from monitor.store.migrate import is_at_head, upgrade
from monitor.store.writes import load_offsets, register_partitions

log = logging.getLogger(__name__)

#: Arbitrary but fixed key of the PostgreSQL advisory lock held while migrating (distinct from
#: the analyzer's): processes started together (N workers, an analyzer, the API) migrate in turn.
MIGRATION_LOCK_KEY = 0x6D6F6E6D  # "monm"

#: Longest ingest waits for the signal deriver's models to load before it starts anyway.
WARM_UP_SECONDS = 60.0


def offsets_from_store(
    sessions: sessionmaker[Session], group_id: str
) -> Callable[[list[Position]], Mapping[Position, int]]:
    def load(positions: list[Position]) -> Mapping[Position, int]:
        """The stored offsets of newly assigned partitions; those without any are registered."""
        with sessions.begin() as session:
            stored = load_offsets(session, group_id, {topic for topic, _ in positions})
            register_partitions(session, group_id, positions)
        return {position: stored[position] for position in positions if position in stored}

    return load


def prepare_database(settings: Settings) -> None:
    """Migrate the store to head (or check it is there); raise :class:`StoreUnavailable`."""
    try:
        if settings.db_auto_upgrade:
            with _migration_lock(settings.database_url):
                upgrade(settings.database_url)
        elif not is_at_head(settings.database_url):
            raise StoreUnavailable(
                "the database schema is not at the latest migration: run `monitor db upgrade` "
                "(or set MONITOR_DB_AUTO_UPGRADE=true)"
            )
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"cannot prepare the database at {masked_url(settings.database_url)}: {exc}") from exc


@contextmanager
def _migration_lock(url: str) -> Iterator[None]:
    """Hold :data:`MIGRATION_LOCK_KEY` for the block (PostgreSQL; SQLite serves one process anyway).

    Alembic reads the current revision before it migrates, so two processes migrating at once
    would both try to create the same tables; the one that waits finds the schema at head."""
    engine = make_engine(url)
    try:
        if engine.dialect.name != "postgresql":
            yield
            return
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            connection.commit()
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
                connection.commit()
    finally:
        engine.dispose()


def install_stop_signals(stop: threading.Event) -> None:
    def handle(signum: int, _frame: object) -> None:
        log.info("stop requested", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def run_service(
    settings: Settings,
    stop: threading.Event,
    *,
    scorer: Scorer | None = None,
    on_api_started: Callable[[str], None] | None = None,
    tune_collector: bool = False,
) -> None:
    """Run what ``settings.role`` runs (see the module docstring) until ``stop`` is set. Blocks.
    ``on_api_started`` is called with the URL of the HTTP server (the API, or the probes).
    ``tune_collector`` (the CLI's processes, not tests that run the service in a thread) applies
    :func:`monitor.gc_tuning.tune_gc` once everything is loaded, before ingest starts."""
    role = settings.role
    prepare_database(settings)
    if role != "analyzer":
        scorer = scorer or build_scorer(settings)
        log.info("scorer ready", extra={"scorer": scorer.identity})
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    health = HealthState()
    # The analyzer scores nothing (it reads stored scores); its /readyz does not ask a scorer.
    context = AppContext(settings, engine, sessions, health, registry, scorer or ProducerRewardScorer())
    api = ApiServer(create_app(context) if role in API_ROLES else create_probe_app(context),
                    settings.api_host, settings.api_port)
    api.start()
    log.info("API listening" if role in API_ROLES else "probes listening", extra={"url": api.url, "role": role})
    analyzer = deriver = None
    # In one process with ingest, the deriver gives way while ingest is behind the log (both need
    # the CPU; a backlog is consumed first, and signals follow within seconds of catching up).
    backlog = Backlog(settings.batch_size) if role in INGEST_ROLES else None
    if role in ANALYZER_ROLES and settings.analyze_interval_seconds > 0:
        if settings.derive_interval_seconds > 0:
            deriver = SignalDeriver(sessions, stop, interval=settings.derive_interval_seconds,
                                    required_language=settings.required_language, metrics=metrics,
                                    defer_to=backlog.behind if backlog is not None else None)
            deriver.start()
        # The retention prune runs in the analyzer's thread, between its runs (monitor.retention).
        retention = RetentionSchedule(settings, sessions, metrics=metrics, stop=stop) \
            if settings.retention_prune_interval_seconds > 0 else None
        analyzer = AnalyzerThread(
            Analyzer(settings, sessions, metrics=metrics, derive=deriver is None),
            settings.analyze_interval_seconds, stop, after_run=retention.tick if retention is not None else None,
        )
        analyzer.start()
    if on_api_started:
        on_api_started(api.url)
    try:
        if role in INGEST_ROLES:
            assert scorer is not None
            if deriver is not None:
                # Its models load while the API starts and Kafka is reached; ingest waits for them
                # rather than share the GIL with torch's import (it halved a backlog's first minute).
                # The analyzer's warm-up (AnalyzerThread: evidently, the embedder and a first report,
                # 7 s on an idle machine) goes on beside ingest's first seconds: waiting for it too
                # made restarts slow enough to fail the crash-recovery test's 60 s budget.
                deriver.ready.wait(WARM_UP_SECONDS)
            if tune_collector:
                tune_gc()  # after the models loaded: their objects are frozen too
            _ingest(settings, sessions, scorer, metrics, health, stop, backlog)
        else:
            stop.wait()
    finally:
        api.stop()
        if analyzer is not None:
            stop.set()  # ingest may have ended on its own (no broker); the schedule ends with it
            analyzer.join(timeout=60)
        if deriver is not None:
            deriver.join(timeout=60)
        engine.dispose()
        log.info("service stopped", extra={"role": role})


def _ingest(
    settings: Settings,
    sessions: sessionmaker[Session],
    scorer: Scorer,
    metrics: Metrics,
    health: HealthState,
    stop: threading.Event,
    backlog: Backlog | None = None,
) -> None:
    """Consume as one member of ``settings.consumer_group`` until ``stop`` is set."""
    source = dlq = None
    try:
        source, dlq = _connect(settings, sessions, health, stop, metrics)
        if source is None or dlq is None:
            return
        loop = IngestLoop(
            settings,
            source=source,
            sessions=sessions,
            scorer=scorer,
            dead_letter_sink=dlq,
            metrics=metrics,
            health=health,
            backlog=backlog,
        )
        loop.run(stop)
    finally:
        if source is not None:
            source.close()
        if dlq is not None:
            dlq.close()


def _connect(
    settings: Settings, sessions: sessionmaker[Session], health: HealthState, stop: threading.Event,
    metrics: Metrics | None = None,
) -> tuple[KafkaEventSource | None, DeadLetterPublisher | None]:
    """Connect to Kafka, retrying with backoff (readyz says why) until it answers or stop is set."""
    backoff = settings.retry_backoff_seconds
    while not stop.is_set():
        try:
            dlq = DeadLetterPublisher(settings.bootstrap_servers, settings.dlq_topic)
            try:
                source = KafkaEventSource(settings, offsets_from_store(sessions, settings.consumer_group),
                                          reset_stored=stored_offset_resets(sessions, settings.consumer_group),
                                          metrics=metrics, health=health)
            except BrokerUnavailable:
                dlq.close()
                raise
            return source, dlq
        except BrokerUnavailable as exc:
            health.mark_broker(False, str(exc))
            log.warning("Kafka unreachable; retrying", extra={"error": str(exc), "retry_in_s": backoff})
            stop.wait(backoff)
            backoff = min(backoff * 2, settings.retry_backoff_max_seconds)
    return None, None
