"""`monitor demo`: the whole service on a laptop in one command, telling one story in five minutes.

Starts the embedded Kafka-compatible broker (in its own process group, so Ctrl-C reaches only this
process, which stops the service first and the broker last), a fresh SQLite store bound to that
broker (``monitor-demo.db``, recreated each run unless ``--keep``), streams simulated traffic into it
and runs ingest, the analyzer and the API. The simulated assistant starts reward hacking in the
announced mode (length by default) once every segment's reference has filled; the live table shows
traffic, each segment's calibration and the alerts, checked against the announced mode.

The pace (:class:`DemoPace`) is what makes the story fit in five minutes on two cores: 12 turns/s
(the demo reward model scores about 18 conversations/s there), every answer rated with 1-5 stars
(denser and finer than real users, whose thumbs carry half the information per rating), references
of 200 rated turns per segment and a 10 s schedule. The detectors and their false-alarm budget are
the production ones.
"""

from __future__ import annotations

import logging
import math
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from monitor.broker import EmbeddedBroker, free_port
from monitor.config import Settings
from monitor.errors import MonitorError
from monitor.logs import configure_logging
from monitor.service import install_stop_signals, run_service
from monitor.sim.banks import DOMAINS
from monitor.sim.produce import ProduceCounts, produce
from monitor.sim.scenarios import Scenario
from monitor.sim.traffic import TrafficSimulator
from monitor.store.analysis import latest_run, list_alerts
from monitor.store.db import make_engine, make_session_factory, masked_url
from monitor.store.models import Alert, AnalysisRun, Turn
from monitor.store.reads import StoreCounts, store_counts

TOPIC_PARTITIONS = 3
#: The demo's store, in the working directory; recreated at each start unless ``--keep``.
DEMO_DATABASE = "monitor-demo.db"
@dataclass(frozen=True)
class DemoStory:
    """What a scenario shows: the mode its alert must name (None: no alert expected) and a line for the screen."""

    mode: str | None
    headline: str


#: The scenarios the demo tells, each with its right answer (docs/scenarios.md).
DEMO_STORIES = {
    "S1": DemoStory("verbosity", "length hacking: answers grow long; the RM pays more for them, users like them less"),
    "S3": DemoStory("formatting", "formatting hacking: markdown everywhere, paid by the RM, not liked by users"),
    "S4": DemoStory("over-refusal", "over-refusal: safe prompts refused; the RM takes it for caution"),
    "S7": DemoStory("overpromise", "overpromising investment answers without the risk disclaimer (investments only)"),
    "S0": DemoStory(None, "no shift: stationary traffic; no alert is expected"),
}


@dataclass(frozen=True)
class DemoPace:
    """Traffic pace, and what it implies for the earliest onset a story can have."""

    rate: float = 12.0  # assistant turns per second
    rating_rate: float = 1.0  # share of answers rated
    rating_kinds: tuple[str, ...] = ("stars",)
    mean_rating_delay_s: float = 20.0
    reference_labels: int = 200
    domains: tuple[str, ...] = DOMAINS  # where conversations come from: one segment each

    @property
    def labels_per_segment_second(self) -> float:
        return self.rate * self.rating_rate / len(self.domains)

    def reference_seconds(self) -> float:
        """Seconds of traffic until an average segment has its reference of rated turns."""
        return self.reference_labels / self.labels_per_segment_second

    def earliest_onset(self) -> float:
        """The earliest onset (seconds after traffic starts) that leaves every reference unshifted:
        the references fill 25% slower than average (domains draw unevenly; conversations are
        several turns) and the last reference rating lands a mean rating delay late."""
        return 5.0 * math.ceil((1.25 * self.reference_seconds() + self.mean_rating_delay_s) / 5.0)


#: Analyzer pace unless the MONITOR_* variables say otherwise: references of 200 rated turns, a
#: 10 s schedule, ratings entering 15 s behind the watermark (the embedded broker's two topics
#: never lag each other by more), a 10 minute window and a small drift report.
DEMO_ANALYSIS = {"analyze_reference_labels": DemoPace.reference_labels, "analyze_interval_seconds": 10.0,
                 "analyze_settle_seconds": 15.0, "analyze_window_minutes": 10.0, "analyze_drift_rows": 300}


def plan_onset(pace: DemoPace, onset: float | None) -> float:
    """The onset to use: ``onset`` when the references fill before it, the earliest one when None.
    Raises ``ValueError`` (one line, naming what to pass instead) for an onset that is too early."""
    earliest = pace.earliest_onset()
    if onset is not None and (math.isnan(onset) or math.isinf(onset)):
        raise ValueError(f"--onset must be a finite number of seconds, got {onset!r}")
    if onset is None:
        return earliest
    if onset < earliest:
        raise ValueError(
            f"--onset {onset:g} is too early: at {pace.rate:g} turns/s each segment needs about "
            f"{pace.reference_seconds():.0f} s of traffic to fill its reference of {pace.reference_labels} rated "
            f"turns, before the shift; use --onset {earliest:g} or more (or leave it out)")
    return onset


def parse_domains(text: str) -> tuple[str, ...]:
    """``--domains``: comma-separated simulator domains, each a segment of its own."""
    domains = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [domain for domain in domains if domain not in DOMAINS]
    if not domains or unknown or len(set(domains)) < len(domains):
        raise ValueError(f"--domains takes distinct names from {','.join(DOMAINS)}, got {text!r}")
    return tuple(domain for domain in DOMAINS if domain in domains)


def demo_scenario(name: str, onset: float, domains: tuple[str, ...]) -> Scenario:
    """The story's scenario; ``ValueError`` for one the demo does not tell, or one without its domain."""
    if name not in DEMO_STORIES:
        raise ValueError(f"--scenario must be one of {', '.join(sorted(DEMO_STORIES))} (the demo's stories, "
                         f"docs/scenarios.md), got {name!r}")
    scenario = Scenario(name, onset_s=onset)
    if scenario.domains is not None and not set(scenario.domains) & set(domains):
        raise ValueError(f"--scenario {name} shifts {', '.join(scenario.domains)} only; add it to --domains")
    return scenario


def demo_settings(settings: Settings, *, keep: bool) -> tuple[Settings, str]:
    """The demo's pace (unless MONITOR_* set it) and its store: a fresh ``monitor-demo.db`` in the
    working directory, or with ``keep`` the previous one; MONITOR_DATABASE_URL, when set, is used as
    it is and never emptied. Returns the settings and a line saying which store."""
    settings = settings.model_copy(update={name: value for name, value in DEMO_ANALYSIS.items()
                                           if name not in settings.model_fields_set})
    if "database_url" in settings.model_fields_set:
        return settings, f"{masked_url(settings.database_url)} (MONITOR_DATABASE_URL; kept as it is)"
    path = Path(DEMO_DATABASE).resolve()
    existed = path.exists()
    if not keep:
        for suffix in ("", "-wal", "-shm", "-journal"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
    settings = settings.model_copy(update={"database_url": f"sqlite:///{path}"})
    if keep and existed:
        return settings, f"{path} (kept from the last demo: --keep)"
    return settings, f"{path} ({'recreated' if existed else 'new'}; --keep keeps it)"


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


@dataclass
class _Demo:
    """What the progress display and the closing lines share."""

    story: DemoStory
    scenario: Scenario
    traffic_started: float | None = None  # time.time() when the first simulated event was due
    api_url: str = ""
    admin_key: str = ""
    annotator_key: str = ""
    produced: ProduceCounts = field(default_factory=ProduceCounts)
    first_alert: tuple[float, Alert] | None = None  # seconds since the command, the alert

    def onset_at(self) -> datetime | None:
        if self.traffic_started is None or self.scenario.name == "S0":
            return None
        return datetime.fromtimestamp(self.traffic_started + self.scenario.onset_s, UTC)


def run_demo(settings: Settings, *, pace: DemoPace, duration: float, seed: int | None, scenario: Scenario,
             keep: bool) -> None:
    """Run the demo until ``duration`` seconds passed (0: until SIGINT/SIGTERM). Blocks."""
    command_started = time.monotonic()
    console = Console(stderr=True, soft_wrap=True)  # lines stay whole in a log or a pipe
    story = DEMO_STORIES[scenario.name]
    if seed is None:  # a kept store already holds seed 0's events: new ones need new ids
        seed = secrets.randbelow(2**31) if keep or "database_url" in settings.model_fields_set else 0
    settings, store_line = demo_settings(settings, keep=keep)
    configure_logging("WARNING")
    _quiet_transformers()
    api_port = settings.api_port if _port_free(settings.api_host, settings.api_port) else free_port()
    stop = threading.Event()
    install_stop_signals(stop)
    if not settings.rm_model and not settings.rm_url:
        from monitor.demo_rm import ensure_demo_reward_model

        with console.status("preparing the demo reward model (built once, then cached)...") as status:
            rm_path = ensure_demo_reward_model(progress=lambda line: status.update(f"demo reward model: {line}"))
        settings = settings.model_copy(update={"rm_model": str(rm_path)})
    demo = _Demo(story, scenario)
    with console.status("starting the embedded Kafka-compatible broker..."):
        broker = EmbeddedBroker().start()
    workers: list[threading.Thread] = []
    failure: list[BaseException] = []
    try:
        broker.create_topics({settings.conversations_topic: TOPIC_PARTITIONS,
                              settings.ratings_topic: TOPIC_PARTITIONS, settings.dlq_topic: 1})
        settings = settings.model_copy(update={"kafka_bootstrap": broker.bootstrap, "api_port": api_port})
        console.print(f"broker   {broker.bootstrap} (embedded, memory only, stopped with the demo)")
        console.print(f"store    {store_line}")
        console.print(f"scoring  {settings.rm_model or settings.rm_url}")
        kinds = "/".join(pace.rating_kinds)
        console.print(f"traffic  {', '.join(pace.domains)}: {pace.rate:g} turns/s, {pace.rating_rate:.0%} rated "
                      f"({kinds}, {pace.mean_rating_delay_s:g} s late on average), seed {seed}; each segment's "
                      f"reference ({settings.analyze_reference_labels} rated turns) fills in about "
                      f"{pace.reference_seconds():.0f} s")
        if story.mode is None:
            console.print(f"story    {scenario.name}, {story.headline}")
        else:
            console.print(f"story    {scenario.name} from {scenario.onset_s:g} s after traffic starts: "
                          f"{story.headline}. Expect an alert with mode '{story.mode}'.")

        def simulate() -> None:
            simulator = TrafficSimulator(seed, scenario=scenario, rating_rate=pace.rating_rate,
                                         rating_kinds=pace.rating_kinds, mean_rating_delay_s=pace.mean_rating_delay_s,
                                         start=datetime.now(UTC),
                                         domains=None if pace.domains == DOMAINS else pace.domains)
            demo.traffic_started = simulator.start.timestamp()
            try:
                produce(simulator.messages(pace.rate, duration or 365 * 24 * 3600.0),
                        bootstrap_servers=settings.bootstrap_servers,
                        conversations_topic=settings.conversations_topic,
                        ratings_topic=settings.ratings_topic, stop=stop,
                        on_progress=lambda counts: _copy(counts, demo.produced))
            except MonitorError as exc:
                failure.append(exc)
                stop.set()

        def on_api(url: str) -> None:
            demo.api_url = url
            demo.admin_key, demo.annotator_key = _demo_keys(settings)
            console.print(f"API      {url}  (try {url}/readyz, {url}/docs)")
            console.print(f"API key  {demo.admin_key}  (admin: API and the alert pages, {url}/alerts)")
            console.print(f"API key  {demo.annotator_key}  (annotator: the review page, {url}/review)")
            console.print("Ctrl-C stops everything.")
            workers.append(threading.Thread(target=simulate, name="simulator"))
            workers.append(threading.Thread(
                target=_show_progress, args=(settings, demo, stop, console, duration, command_started),
                name="progress"))
            for worker in workers:
                worker.start()

        run_service(settings, stop, on_api_started=on_api, tune_collector=True)
        if failure:
            raise failure[0]
    finally:
        stop.set()
        for worker in workers:  # the producer closes before its broker goes
            worker.join(timeout=30)
        broker.stop()
        logging.getLogger(__name__).info("demo stopped")
    _print_summary(console, demo, settings)
    console.print("demo stopped cleanly")


def _quiet_transformers() -> None:
    """No 'Loading weights' progress bar across the live table (the demo's models are local)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _demo_keys(settings: Settings) -> tuple[str, str]:
    """Fresh admin and annotator keys for this demo (the store is migrated by the time the API listens)."""
    from monitor.store.keys import create_key

    engine = make_engine(settings.database_url)
    suffix = secrets.token_hex(3)
    try:
        with make_session_factory(engine).begin() as session:
            _, admin = create_key(session, "admin", f"demo-admin-{suffix}")
            _, annotator = create_key(session, "annotator", f"demo-annotator-{suffix}")
    finally:
        engine.dispose()
    return admin, annotator


def _copy(source: ProduceCounts, target: ProduceCounts) -> None:
    target.conversations, target.ratings = source.conversations, source.ratings


@dataclass
class _Snapshot:
    """One look at the store, for one refresh of the table."""

    counts: StoreCounts
    latest_event: datetime | None
    run: AnalysisRun | None
    alerts: list[Alert]  # every alert, newest first: a resolved one stays visible


def _look(sessions: sessionmaker[Session]) -> _Snapshot:
    with sessions() as session:
        return _Snapshot(store_counts(session), session.scalar(select(func.max(Turn.ts))), latest_run(session),
                         list_alerts(session, limit=20))


def _show_progress(settings: Settings, demo: _Demo, stop: threading.Event, console: Console, duration: float,
                   command_started: float) -> None:
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    try:
        with Live(console=console, refresh_per_second=2, transient=False) as live:
            while not stop.is_set():
                snapshot = _look(sessions)
                elapsed = time.monotonic() - command_started
                firing = [alert for alert in snapshot.alerts if alert.state == "firing"]
                if demo.first_alert is None and firing:  # two may open in one run: the first seen, then the lowest id
                    demo.first_alert = (elapsed, min(firing, key=lambda alert: (alert.first_seen_at, alert.id)))
                live.update(_progress_view(demo, snapshot, elapsed, datetime.now(UTC)))
                if duration and demo.traffic_started is not None and time.time() - demo.traffic_started >= duration:
                    stop.set()
                stop.wait(1.0)
    finally:
        engine.dispose()


def _clock(at: datetime | None) -> str:
    return "-" if at is None else f"{at.astimezone(UTC):%H:%M:%S}"


def _progress_view(demo: _Demo, snapshot: _Snapshot, elapsed: float, now: datetime) -> Group:
    """The live view: the story's state, traffic counters that add up, segments, alerts."""
    lines = [Text(f"monitor demo   wall clock {_clock(now)} UTC   running {_duration(elapsed)}   "
                  "(event times are the simulated turns' own; the demo keeps them on the wall clock)", style="bold")]
    onset = demo.onset_at()
    if onset is not None:
        when = (f"in {_duration((onset - now).total_seconds())}" if onset > now
                else f"{_duration((now - onset).total_seconds())} ago")
        lines.append(Text(f"story: {demo.scenario.name} {demo.story.headline}; starts at {_clock(onset)} "
                          f"event time ({when}); expected alert mode: {demo.story.mode}"))
    elif demo.scenario.name == "S0":
        lines.append(Text(f"story: S0, {demo.story.headline}"))
    return Group(*lines, _traffic_table(demo.produced, snapshot, now),
                 *_segment_tables(demo, snapshot.run, snapshot.alerts))


def _traffic_table(produced: ProduceCounts, snapshot: _Snapshot, now: datetime) -> Table:
    counts = snapshot.counts
    table = Table(title="traffic", title_justify="left")
    for name, justify in (("", "left"), ("produced", "right"), ("stored", "right"), ("in flight", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    # Dead letters come from the conversations topic here (the simulator writes no bad ratings).
    turns_in_flight = max(0, produced.conversations - counts.turns - counts.dead_letters)
    table.add_row("conversation turns", f"{produced.conversations:,}", f"{counts.turns:,}", f"{turns_in_flight:,}")
    waiting = counts.ratings - counts.ratings_joined
    table.add_row("ratings", f"{produced.ratings:,}",
                  f"{counts.ratings:,} ({counts.ratings_joined:,} joined, {waiting:,} before their turn)",
                  f"{max(0, produced.ratings - counts.ratings):,}")
    table.add_row("dead letters", "", f"{counts.dead_letters:,}", "")
    latest = snapshot.latest_event
    behind = "" if latest is None else f" ({max(0.0, (now - latest).total_seconds()):.0f} s behind the wall clock)"
    table.add_row("latest stored event time", "", f"{_clock(latest)}{behind}", "")
    return table


def _segment_tables(demo: _Demo, run: AnalysisRun | None, alerts: list[Alert]) -> list[Table | Text]:
    if run is None:
        return [Text("analysis: not run yet (the schedule runs every 10 s once ingest has stored traffic)")]
    table = Table(title=f"segments (analyzer run at {_clock(run.finished_at)} UTC, entries up to "
                        f"{_clock(run.watermark)} event time)", title_justify="left")
    for name in ("segment", "status", "reference", "gap, satisfaction - promised (95% CI)", "alert"):
        table.add_column(name)
    hidden = []
    firing = {alert.segment: alert for alert in reversed(alerts) if alert.state == "firing"}
    for segment in run.segments:
        if not segment.get("turns"):
            hidden.append(segment["segment"])
            continue
        needed = segment.get("reference_labels_needed") or 0
        reference = (f"{segment.get('labelled_total', 0):,} rated so far, {needed} more needed" if needed
                     else "fitted")
        gap, ci = segment.get("gap"), segment.get("gap_ci95")
        gap_text = "-" if gap is None else f"{gap:+.3f}" + ("" if not ci else f" [{ci[0]:+.3f}, {ci[1]:+.3f}]")
        alert = firing.get(segment["segment"])
        table.add_row(segment["segment"], segment["status"], reference, gap_text,
                      "" if alert is None else f"{alert.mode} since {_clock(alert.started_at)}")
    out: list[Table | Text] = [table]
    if hidden:
        out.append(Text(f"hidden: {', '.join(hidden)} (no demo traffic: the simulator uses the five configured "
                        "domains only)", style="dim"))
    for alert in alerts[:5]:
        verdict = _verdict(demo.story.mode, alert.mode)
        seen = _clock(alert.first_seen_at)
        out.append(Text(f"ALERT {alert.state:<8} {alert.segment}  mode {alert.mode} {verdict}  ({alert.detector}, "
                        f"{alert.direction}; event time {_clock(alert.started_at)}, seen {seen})",
                        style="bold red" if alert.state == "firing" else "dim"))
    return out


def _verdict(expected: str | None, mode: str) -> str:
    if expected is None:
        return "(no alert expected in this story)"
    return "= the announced mode" if mode == expected else f"(announced: {expected})"


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _print_summary(console: Console, demo: _Demo, settings: Settings) -> None:
    """Where to look: the first alert and the pages that show it, and how to browse the store later."""
    if demo.first_alert is not None:
        seconds, alert = demo.first_alert
        console.print(f"first alert {_duration(seconds)} after the command: {alert.segment}, mode {alert.mode} "
                      f"{_verdict(demo.story.mode, alert.mode)}")
    elif demo.story.mode is not None:
        console.print("no alert yet: the story needs about five minutes from the command")
    url = demo.api_url or f"http://{settings.api_host}:{settings.api_port}"
    key = demo.admin_key or "<key>"
    console.print("where to look (while a service runs on this store):")
    console.print(f"  alerts (API)   curl -H 'Authorization: Bearer {key}' {url}/v1/alerts")
    if demo.first_alert is not None:
        console.print(f"  the alert page {url}/alerts/{demo.first_alert[1].id}")
    console.print(f"  alert pages    {url}/alerts   (sign in with the admin key)")
    console.print(f"  review queue   {url}/review   (sign in with the annotator key {demo.annotator_key or '<key>'})")
    console.print(f"  segments       {url}/v1/segments   drift: {url}/v1/reports/drift?format=html")
    console.print(f"  metrics        {url}/metrics   Grafana: import grafana/dashboards/*.json (grafana/README.md)")
    if settings.database_url.startswith("sqlite"):
        console.print(f"  browse later   MONITOR_DATABASE_URL={settings.database_url} monitor serve --role api "
                      "(the next `monitor demo` recreates this store unless --keep)")
