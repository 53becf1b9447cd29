"""The `monitor` command: serve | demo | simulate | db | bench."""

from __future__ import annotations

import threading
from typing import Annotated

import typer

from monitor.config import Settings, load_settings
from monitor.errors import ConfigError, MonitorError

app = typer.Typer(help="Watch an RLHF assistant and catch its reward model diverging from users.",
                  no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print throughput ratios.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(bench_app, name="bench")


def _settings(**overrides: object) -> Settings:
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _fail(exc: MonitorError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(1)


@app.command()
def serve() -> None:
    """Run ingest (Kafka -> store) and the HTTP API until SIGTERM / Ctrl-C."""
    from monitor.logs import configure_logging
    from monitor.service import install_stop_signals, run_service

    settings = _settings()
    configure_logging(settings.log_level)
    stop = threading.Event()
    install_stop_signals(stop)
    try:
        run_service(settings, stop)
    except MonitorError as exc:
        raise _fail(exc) from exc


@app.command()
def simulate(
    rate: Annotated[float, typer.Option(help="Assistant turns per second.", min=0.001)] = 10.0,
    duration: Annotated[float, typer.Option(help="Seconds of traffic to generate.", min=0.001)] = 60.0,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same traffic.")] = 0,
    rating_rate: Annotated[float, typer.Option(help="Share of turns that get a rating.", min=0, max=1)] = 0.35,
    fast: Annotated[bool, typer.Option("--fast", help="Send as fast as possible, not in real time.")] = False,
) -> None:
    """Produce simulated conversation/v1 and rating/v1 events into Kafka."""
    from monitor.sim.produce import produce
    from monitor.sim.traffic import TrafficSimulator

    settings = _settings()
    try:
        simulator = TrafficSimulator(seed, rating_rate=rating_rate)
        counts = produce(
            simulator.messages(rate, duration),
            bootstrap_servers=settings.bootstrap_servers,
            conversations_topic=settings.conversations_topic,
            ratings_topic=settings.ratings_topic,
            realtime=not fast,
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except MonitorError as exc:
        raise _fail(exc) from exc
    typer.echo(f"produced {counts.conversations} conversation events and {counts.ratings} ratings")


@app.command()
def demo(
    rate: Annotated[float, typer.Option(help="Simulated assistant turns per second.", min=0.001)] = 20.0,
    duration: Annotated[float, typer.Option(help="Stop after this many seconds (0: run until Ctrl-C).", min=0)] = 0.0,
    seed: Annotated[int, typer.Option(help="Simulator seed.")] = 0,
) -> None:
    """Embedded broker + SQLite + simulated traffic + the service, in one command. Ctrl-C stops."""
    from monitor.demo import run_demo

    settings = _settings()
    try:
        run_demo(settings, rate=rate, duration=duration, seed=seed)
    except MonitorError as exc:
        raise _fail(exc) from exc


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Migrate the database at MONITOR_DATABASE_URL to the latest schema."""
    from sqlalchemy.exc import SQLAlchemyError

    from monitor.store.migrate import upgrade

    settings = _settings()
    try:
        upgrade(settings.database_url, revision)
    except SQLAlchemyError as exc:
        typer.echo(f"error: migration failed on {settings.database_url}: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"database at {revision}: {settings.database_url}")


@db_app.command("current")
def db_current() -> None:
    """Print the database's schema revision and the latest one."""
    from monitor.store.db import make_engine
    from monitor.store.migrate import current_revision, head_revision

    settings = _settings()
    engine = make_engine(settings.database_url)
    try:
        current = current_revision(engine)
    finally:
        engine.dispose()
    head = head_revision()
    typer.echo(f"current: {current or 'none (empty database)'}\nhead:    {head}")
    if current != head:
        raise typer.Exit(1)


@bench_app.command("ingest")
def bench_ingest(
    events: Annotated[int, typer.Option(help="Events to push through both paths.", min=1)] = 50_000,
    database_url: Annotated[str, typer.Option(help="Store for our path (PostgreSQL recommended).")] = (
        "postgresql://postgres@127.0.0.1:5432/test"
    ),
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap; default: start the embedded broker.")] = None,
) -> None:
    """Bare kafka-python consume loop vs our ingest into the store, on the same events."""
    from monitor.bench.ingest import run_ingest_benchmark

    try:
        result = run_ingest_benchmark(events=events, database_url=database_url, bootstrap=bootstrap,
                                      echo=typer.echo)
    except MonitorError as exc:
        raise _fail(exc) from exc
    typer.echo(result.report())
