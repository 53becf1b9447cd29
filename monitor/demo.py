"""`monitor demo`: the whole service on a laptop in one command.

Starts the embedded Kafka-compatible broker on a free loopback port, uses the SQLite default
store, streams simulated traffic into it (by default with length hacking setting in after ten
minutes), runs ingest, the analyzer and the API, and shows live progress: stored events, segment
status and firing alerts with their mode. Ctrl-C (or ``--duration``) stops everything cleanly.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

from monitor.broker import EmbeddedBroker, free_port
from monitor.config import Settings
from monitor.errors import MonitorError
from monitor.logs import configure_logging
from monitor.service import install_stop_signals, run_service
from monitor.sim.produce import ProduceCounts, produce
from monitor.sim.scenarios import Scenario
from monitor.sim.traffic import TrafficSimulator
from monitor.store.analysis import latest_run, list_alerts
from monitor.store.db import make_engine, make_session_factory, masked_url
from monitor.store.models import Alert, AnalysisRun
from monitor.store.reads import StoreCounts, store_counts

TOPIC_PARTITIONS = 3
#: Demo pace for the analyzer unless the MONITOR_* variables say otherwise: small references and a
#: short schedule, so a few minutes of traffic at 5 turns/s already show calibrated segments.
DEMO_ANALYSIS = {"analyze_reference_labels": 100, "analyze_interval_seconds": 10.0,
                 "analyze_window_minutes": 10.0, "analyze_drift_rows": 300}


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def run_demo(settings: Settings, *, rate: float, duration: float, seed: int,
             scenario: Scenario | None = None) -> None:
    console = Console(stderr=True)
    settings = settings.model_copy(update={name: value for name, value in DEMO_ANALYSIS.items()
                                           if name not in settings.model_fields_set})
    configure_logging("WARNING")
    api_port = settings.api_port if _port_free(settings.api_host, settings.api_port) else free_port()
    stop = threading.Event()
    install_stop_signals(stop)
    if not settings.rm_model and not settings.rm_url:
        from monitor.demo_rm import ensure_demo_reward_model

        with console.status("preparing the demo reward model (built once, then cached)...") as status:
            rm_path = ensure_demo_reward_model(progress=lambda line: status.update(f"demo reward model: {line}"))
        settings = settings.model_copy(update={"rm_model": str(rm_path)})
    with console.status("starting the embedded Kafka-compatible broker..."):
        broker = EmbeddedBroker().start()
    try:
        broker.create_topics({settings.conversations_topic: TOPIC_PARTITIONS,
                              settings.ratings_topic: TOPIC_PARTITIONS, settings.dlq_topic: 1})
        settings = settings.model_copy(update={"kafka_bootstrap": broker.bootstrap, "api_port": api_port})
        console.print(f"broker   {broker.bootstrap} (embedded, memory only)")
        console.print(f"store    {masked_url(settings.database_url)}")
        console.print(f"scoring  {settings.rm_model or settings.rm_url}")
        if scenario is not None and scenario.name != "S0":
            console.print(f"traffic  scenario {scenario.name} from {scenario.onset_s:,.0f}s (size {scenario.size:g})")
        produced = ProduceCounts()
        failure: list[BaseException] = []

        def simulate() -> None:
            simulator = TrafficSimulator(seed, scenario=scenario)
            try:
                produce(simulator.messages(rate, duration or 365 * 24 * 3600.0),
                        bootstrap_servers=settings.bootstrap_servers,
                        conversations_topic=settings.conversations_topic,
                        ratings_topic=settings.ratings_topic, stop=stop,
                        on_progress=lambda counts: _copy(counts, produced))
            except MonitorError as exc:
                failure.append(exc)
                stop.set()

        def on_api(url: str) -> None:
            key = _demo_admin_key(settings)
            console.print(f"API      {url}  (try {url}/readyz, {url}/docs)")
            console.print(f"API key  {key}  (admin; curl -H 'Authorization: Bearer {key}' {url}/v1/alerts)")
            console.print(f"Review   {url}/review  (sign in with the key above; the queue fills as the analyzer runs)")
            console.print(f"metrics  {url}/metrics")
            console.print("Ctrl-C stops everything.")
            threading.Thread(target=simulate, name="simulator", daemon=True).start()
            threading.Thread(target=_show_progress, args=(settings, produced, stop, console, duration),
                             name="progress", daemon=True).start()

        run_service(settings, stop, on_api_started=on_api, tune_collector=True)
        if failure:
            raise failure[0]
    finally:
        stop.set()
        broker.stop()
        logging.getLogger(__name__).info("demo stopped")
    console.print("demo stopped cleanly")


def _demo_admin_key(settings: Settings) -> str:
    """A fresh admin key for this demo (the store is migrated by the time the API listens)."""
    from monitor.store.keys import create_key

    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine).begin() as session:
            _, key = create_key(session, "admin", f"demo-admin-{secrets.token_hex(3)}")
    finally:
        engine.dispose()
    return key


def _copy(source: ProduceCounts, target: ProduceCounts) -> None:
    target.conversations, target.ratings = source.conversations, source.ratings


def _show_progress(settings: Settings, produced: ProduceCounts, stop: threading.Event,
                   console: Console, duration: float) -> None:
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    started = time.monotonic()
    try:
        with Live(console=console, refresh_per_second=2, transient=False) as live:
            while not stop.is_set():
                with sessions() as session:
                    counts = store_counts(session)
                    run = latest_run(session)
                    firing = list_alerts(session, state="firing", limit=5)
                live.update(_progress_table(produced, counts, time.monotonic() - started, run, firing))
                if duration and time.monotonic() - started >= duration:
                    stop.set()
                stop.wait(1.0)
    finally:
        engine.dispose()


def _progress_table(produced: ProduceCounts, counts: StoreCounts, elapsed: float, run: AnalysisRun | None = None,
                    firing: list[Alert] | None = None) -> Table:
    table = Table(title=f"monitor demo - {elapsed:,.0f}s", show_header=True)
    table.add_column("")
    table.add_column("produced", justify="right")
    table.add_column("stored", justify="right")
    table.add_row("conversation turns", f"{produced.conversations:,}", f"{counts.turns:,}")
    table.add_row("ratings", f"{produced.ratings:,}", f"{counts.ratings:,} ({counts.ratings_joined:,} joined)")
    table.add_row("dead letters", "", f"{counts.dead_letters:,}")
    if run is None:
        table.add_row("analysis", "", "not run yet")
        return table
    statuses: dict[str, int] = {}
    for segment in run.segments:
        statuses[segment["status"]] = statuses.get(segment["status"], 0) + 1
    table.add_row("segments", "", ", ".join(f"{n} {status}" for status, n in sorted(statuses.items())))
    for alert in firing or []:
        table.add_row(f"ALERT {alert.segment}", alert.detector, f"{alert.mode} since {alert.started_at:%H:%M:%S}")
    return table
