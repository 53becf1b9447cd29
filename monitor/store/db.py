"""Engines and sessions: SQLite (the embedded default) or PostgreSQL, chosen by URL."""

from __future__ import annotations

from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from monitor.errors import StoreUnavailable


def normalise_url(url: str) -> str:
    """Use psycopg 3 for a bare ``postgresql://`` URL (psycopg2 is not a dependency).

    >>> normalise_url("postgresql://localhost/test")
    'postgresql+psycopg://localhost/test'
    """
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


#: The database URLs :func:`make_engine` takes, as messages spell them.
URL_FORMS = "sqlite:///PATH (sqlite:// in memory) or postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
#: Backends and the drivers of them that are dependencies ("": the backend's default, which
#: :func:`normalise_url` maps to psycopg 3 for PostgreSQL; psycopg2 is not installed).
_DRIVERS = {"sqlite": ("", "pysqlite"), "postgresql": ("", "psycopg")}


def check_url(url: str) -> None:
    """Raise ``ValueError`` unless :func:`make_engine` takes ``url``; the message shows no password.

    Checked when the settings load, so that a typo fails at start in one line, not as a driver's
    traceback from the first command that opens the store.

    >>> check_url("postgres://monitor:s3cret@db/monitor")
    >>> check_url("mysql://monitor:s3cret@db/monitor")
    Traceback (most recent call last):
    ...
    ValueError: mysql://monitor:***@db/monitor: unsupported database 'mysql'; expected sqlite:///PATH ...
    """
    try:
        parsed = make_url(normalise_url(url))
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ValueError(f"not a database URL; expected {URL_FORMS}") from None
    backend, _, driver = parsed.drivername.partition("+")
    if driver not in _DRIVERS.get(backend, ()):
        raise ValueError(f"{masked_url(url)}: unsupported database {parsed.drivername!r}; expected {URL_FORMS}")


def masked_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for logs and messages.

    >>> masked_url("postgresql://monitor:s3cret@db:5432/monitor")
    'postgresql://monitor:***@db:5432/monitor'
    """
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy parses: show nothing of it rather than a secret
        return "<unparsable database URL>"


def make_engine(url: str) -> Engine:
    """An engine for ``url``. Statement parameters (conversation text) never appear in its errors."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, hide_parameters=True)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, hide_parameters=True)
    event.listen(engine, "rollback", _forget_staging_tables)
    return engine


#: `Connection.info` key: the temporary staging tables created on that database connection.
STAGING_TABLES = "monitor_staging_tables"


def _forget_staging_tables(connection: Connection) -> None:
    # A rollback also undoes a CREATE TEMP TABLE made in that transaction.
    connection.info.pop(STAGING_TABLES, None)


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    # WAL lets the API read while the ingest loop writes; NORMAL sync is durable in WAL mode
    # against process crashes (the crash test SIGKILLs the writer).
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def ping(engine: Engine) -> None:
    """Raise :class:`StoreUnavailable` unless the database answers ``SELECT 1``."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"database unreachable: {exc.__class__.__name__}: {exc}") from exc
