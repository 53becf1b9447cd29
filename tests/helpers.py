"""Test helpers: run the real service in a thread, wait for conditions, read topics."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from prometheus_client import CollectorRegistry

from monitor.api.app import create_app
from monitor.api.context import AppContext
from monitor.api.ratelimit import RateLimiter
from monitor.api.server import ApiServer
from monitor.config import Settings
from monitor.health import HealthState
from monitor.scoring.base import ProducerRewardScorer, Scorer
from monitor.service import run_service
from monitor.store.db import make_engine, make_session_factory
from monitor.store.keys import create_key
from monitor.store.reads import StoreCounts, store_counts


def wait_for(
    predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def api_key(database_url: str, role: str = "admin") -> dict[str, str]:
    """Headers with a new API key of ``role``, created in the (migrated) store at ``database_url``."""
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine).begin() as session:
            _, key = create_key(session, role)
    finally:
        engine.dispose()
    return {"Authorization": f"Bearer {key}"}


class ServiceThread:
    """`run_service` in a background thread; ``url`` is the API once it listens."""

    def __init__(self, settings: Settings, scorer: Scorer | None = None) -> None:
        self.settings = settings
        self.stop_event = threading.Event()
        self.url: str | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(scorer,), daemon=True)

    def _run(self, scorer: Scorer | None) -> None:
        try:
            run_service(self.settings, self.stop_event, scorer=scorer, on_api_started=self._started)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the test through .error
            self.error = exc

    def _started(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> ServiceThread:
        self._thread.start()
        wait_for(lambda: self.url or self.error or not self._thread.is_alive(), what="the API to start")
        if self.error:
            raise self.error
        return self

    def headers(self, role: str = "admin") -> dict[str, str]:
        """Headers with a new key of ``role`` (the service migrated the store before it listened)."""
        return api_key(self.settings.database_url, role)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_event.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "service did not stop"
        if self.error:
            raise self.error

    def __exit__(self, *exc: object) -> None:
        self.stop()


def counts(database_url: str) -> StoreCounts:
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            return store_counts(session)
    finally:
        engine.dispose()


def produce(
    settings: Settings, items: Iterable[tuple[str, bytes | None, bytes | None]], max_request_size: int = 4 * 1024 * 1024
) -> None:
    """Send (topic, key, value) tuples in order and wait for every acknowledgement."""
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=5,
                             max_request_size=max_request_size)
    try:
        futures = [producer.send(topic, key=key, value=value) for topic, key, value in items]
        producer.flush(60)
        for future in futures:
            future.get(60)
    finally:
        producer.close(10)


def read_topic(settings: Settings, topic: str, expected: int, timeout: float = 30.0) -> list[dict]:
    """Read at least ``expected`` JSON messages from the start of ``topic``."""
    consumer = KafkaConsumer(topic, bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest",
                             group_id=f"reader-{uuid.uuid4().hex[:8]}", enable_auto_commit=False,
                             session_timeout_ms=6000, max_poll_interval_ms=20000,
                             max_partition_fetch_bytes=8 * 1024 * 1024)
    messages: list[dict] = []
    try:
        deadline = time.monotonic() + timeout
        while len(messages) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                messages.extend(json.loads(r.value) for r in records)
    finally:
        consumer.close(autocommit=False)
    return messages


@contextmanager
def running_api(database_url: str, health: HealthState | None = None, *, rate_limiter: RateLimiter | None = None,
                **settings: Any) -> Iterator[tuple[str, Any]]:
    """The API alone on a free loopback port over ``database_url`` with ``settings`` (producer
    rewards, a fresh registry, ``rate_limiter`` if given); yields its URL and a session factory;
    stops it and disposes the engine."""
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    context = AppContext(Settings(database_url=database_url, **settings), engine, sessions,
                         health or HealthState(), CollectorRegistry(), ProducerRewardScorer())
    server = ApiServer(create_app(context, rate_limiter=rate_limiter), "127.0.0.1", 0)
    server.start()
    try:
        yield server.url, sessions
    finally:
        server.stop()
        engine.dispose()
