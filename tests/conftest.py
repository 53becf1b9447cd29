"""Real components for tests: the Tansu broker, fresh PostgreSQL databases, SQLite files."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest

from monitor.broker import EmbeddedBroker
from monitor.config import ENV_PREFIX, Settings
from monitor.store.migrate import upgrade

#: The PostgreSQL server the suite creates its databases on (trust auth on this machine and in CI).
POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(autouse=True)
def _no_monitor_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from the defaults, whatever MONITOR_* variables the shell has."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as running:
        yield running


def _pg_url(database: str) -> str:
    base, _, _ = POSTGRES_ADMIN_URL.rpartition("/")
    return f"{base}/{database}"


@pytest.fixture(scope="module")
def pg_databases() -> Iterator[Callable[[], str]]:
    """A factory of fresh, empty PostgreSQL databases, dropped when the module ends."""
    created: list[str] = []

    def create() -> str:
        name = f"monitor_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return _pg_url(name)

    yield create
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as connection:
        for name in created:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path, pg_databases: Callable[[], str]) -> str:
    """An empty database of each kind; store tests run once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'monitor.db'}"
    return pg_databases()


@pytest.fixture
def migrated_url(database_url: str) -> str:
    upgrade(database_url)
    return database_url


@pytest.fixture
def topic_settings(broker: EmbeddedBroker) -> Callable[..., Settings]:
    """Settings on the session broker with topics of their own (3 partitions for conversations and
    ratings, 1 for dead letters, flags and relabel events)."""

    def make(**overrides: object) -> Settings:
        suffix = uuid.uuid4().hex[:8]
        values: dict[str, object] = {
            "kafka_bootstrap": broker.bootstrap,
            "conversations_topic": f"conversations-{suffix}",
            "ratings_topic": f"ratings-{suffix}",
            "dlq_topic": f"dlq-{suffix}",
            # The topics the service writes too: a test reading one from the start sees only its own.
            "flags_topic": f"flags-{suffix}",
            "relabel_topic": f"relabel-cycles-{suffix}",
            "consumer_group": f"group-{suffix}",
            "session_timeout_ms": 6000,
            "max_poll_interval_ms": 20_000,
            "poll_timeout_ms": 200,
            "lag_refresh_seconds": 0.5,
            "retry_backoff_seconds": 0.2,
            "api_port": 0,
        }
        values.update(overrides)
        settings = Settings(**values)  # type: ignore[arg-type]
        broker.create_topics({settings.conversations_topic: 3, settings.ratings_topic: 3, settings.dlq_topic: 1,
                              settings.flags_topic: 1, settings.relabel_topic: 1})
        return settings

    return make
