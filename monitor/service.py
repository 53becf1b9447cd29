"""`run_service`: wires settings into a running process (store, scorer, Kafka, ingest loop, API).

`monitor serve` calls it; so does `monitor demo`. SIGTERM or SIGINT finishes the batch in flight,
closes the consumer and the API server, and returns.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from monitor.analyze.derive import SignalDeriver
from monitor.analyze.runner import Analyzer, AnalyzerThread
from monitor.api.app import create_app
from monitor.api.context import AppContext
from monitor.api.server import ApiServer
from monitor.config import Settings
from monitor.errors import BrokerUnavailable, StoreUnavailable
from monitor.health import HealthState
from monitor.ingest.dead_letters import DeadLetterPublisher
from monitor.ingest.loop import IngestLoop
from monitor.ingest.source import KafkaEventSource, Position
from monitor.metrics import Metrics
from monitor.scoring.base import Scorer
from monitor.scoring.factory import build_scorer
from monitor.store.db import make_engine, make_session_factory, masked_url
from monitor.store.migrate import is_at_head, upgrade
from monitor.store.writes import load_offsets, register_partitions

log = logging.getLogger(__name__)


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
            upgrade(settings.database_url)
        elif not is_at_head(settings.database_url):
            raise StoreUnavailable(
                "the database schema is not at the latest migration: run `monitor db upgrade` "
                "(or set MONITOR_DB_AUTO_UPGRADE=true)"
            )
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"cannot prepare the database at {masked_url(settings.database_url)}: {exc}") from exc


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
) -> None:
    """Run ingest and the API until ``stop`` is set. Blocks."""
    prepare_database(settings)
    scorer = scorer or build_scorer(settings)
    log.info("scorer ready", extra={"scorer": scorer.identity})
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    health = HealthState()
    app = create_app(AppContext(settings, engine, sessions, health, registry, scorer))
    api = ApiServer(app, settings.api_host, settings.api_port)
    api.start()
    log.info("API listening", extra={"url": api.url})
    analyzer = deriver = None
    if settings.analyze_interval_seconds > 0:
        if settings.derive_interval_seconds > 0:
            deriver = SignalDeriver(sessions, stop, interval=settings.derive_interval_seconds,
                                    required_language=settings.required_language, metrics=metrics)
            deriver.start()
        analyzer = AnalyzerThread(
            Analyzer(settings, sessions, metrics=metrics, derive=deriver is None),
            settings.analyze_interval_seconds, stop,
        )
        analyzer.start()
    if on_api_started:
        on_api_started(api.url)
    source = dlq = None
    try:
        source, dlq = _connect(settings, sessions, health, stop)
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
        )
        loop.run(stop)
    finally:
        if source is not None:
            source.close()
        if dlq is not None:
            dlq.close()
        api.stop()
        if analyzer is not None:
            stop.set()  # ingest may have ended on its own (no broker); the schedule ends with it
            analyzer.join(timeout=60)
        if deriver is not None:
            deriver.join(timeout=60)
        engine.dispose()
        log.info("service stopped")


def _connect(
    settings: Settings, sessions: sessionmaker[Session], health: HealthState, stop: threading.Event
) -> tuple[KafkaEventSource | None, DeadLetterPublisher | None]:
    """Connect to Kafka, retrying with backoff (readyz says why) until it answers or stop is set."""
    backoff = settings.retry_backoff_seconds
    while not stop.is_set():
        try:
            dlq = DeadLetterPublisher(settings.bootstrap_servers, settings.dlq_topic)
            try:
                source = KafkaEventSource(settings, offsets_from_store(sessions, settings.consumer_group))
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
