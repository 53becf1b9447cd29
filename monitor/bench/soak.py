"""`monitor bench soak`: `serve` as deployed under a steady load for a long time (issue 12).

``events`` simulated events (conversation turns with producer-side rewards, so no reward model
runs, and their ratings) are generated up front (:mod:`monitor.bench.paced_load`; their event time starts
at generation, so it trails the wall clock by the few minutes that takes: late events are normal)
and produced to the embedded broker at ``rate`` events per second, paced: event *i* is due
*i / rate* seconds after the first. `monitor serve` (role all: ingest, the signal
deriver, the analyzer's schedule and the API; default settings, unless the caller's environment
sets ``MONITOR_*`` variables) consumes them into a scratch
PostgreSQL database created beside ``database_url`` and dropped afterwards. Serve runs in a process
of its own (:class:`~monitor.bench.serve_process.ServeProcess`), so the memory measured is its alone.
Measured against the issue's targets:

* **memory**: serve's RSS every :data:`RSS_INTERVAL_S`. *start* is the first sample after the
  warm-up (``warmup_s`` of traffic, default 60 s: one analyzer interval, so its first scheduled run,
  the deriver's caches and the API are in it), *end* the sample once every event is stored;
  growth = end - start (at most :data:`TARGET_RSS_GROWTH_MIB`).
* **freshness**, produced to queryable: the produce time of every 20th event is noted as it is
  handed to the producer; a prober asks PostgreSQL for the sampled event ids every 50 ms and notes
  when each one is first there (the start of the poll whose snapshot held it). p99 at most
  :data:`TARGET_FRESHNESS_P99_S`; the resolution is one poll cycle.
* **errors**: ERROR lines (and tracebacks) in serve's log, ingest batches that failed and were
  retried and analyzer runs that failed (serve's ``/metrics``: a batch the database aborts, say in a
  deadlock, is retried and logged as a WARNING only), dead letters in the store, events not stored,
  and serve's exit status after SIGTERM at the end: all must be nil.

The producer must keep pace: the run fails if it falls 10 s behind its schedule or achieves less
than :data:`MIN_RATE_SHARE` of ``rate``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import psutil
import psycopg
from sqlalchemy.engine import make_url

from monitor.bench.ingest import c_crc32c, scratch_database
from monitor.bench.paced_load import (
    SAMPLE_EVERY,
    Freshness,
    FreshnessProbe,
    PacedTraffic,
    ProducerBehind,
    simulated_traffic,
)
from monitor.bench.serve_process import ServeProcess
from monitor.broker import EmbeddedBroker
from monitor.errors import MonitorError
from monitor.sim.produce import produce
from monitor.sim.traffic import SimulatedMessage
from monitor.store.db import normalise_url

TARGET_RSS_GROWTH_MIB = 100.0
TARGET_FRESHNESS_P99_S = 2.0
RSS_INTERVAL_S = 2.0
PROGRESS_INTERVAL_S = 10.0
MIN_RATE_SHARE = 0.95
_READY_TIMEOUT_S = 120.0
_DRAIN_TIMEOUT_S = 180.0
_STOP_TIMEOUT_S = 120.0
_PARTITIONS = {"conversations": 3, "ratings": 3}


@dataclass(frozen=True)
class Memory:
    warmup_s: float
    start_mib: float  # the first sample at or after warmup_s of traffic
    peak_mib: float  # of every sample, warm-up included
    end_mib: float  # once every event is stored
    samples: list[tuple[float, float]] = field(repr=False)  # (seconds since the first event, MiB)

    @property
    def growth_mib(self) -> float:
        return self.end_mib - self.start_mib


@dataclass(frozen=True)
class SoakResult:
    events: int
    rate: float
    produced: int
    stored: int  # turns + ratings rows
    dead_letters: int
    achieved_rate: float
    max_lag_s: float
    produce_seconds: float
    drain_seconds: float  # from the last event produced to every event stored
    memory: Memory
    freshness: Freshness
    error_lines: int
    first_errors: list[str]
    batch_failures: int  # ingest batches that failed and were retried (monitor_batch_failures_total)
    analyzer_failures: int  # scheduled analyzer runs that failed (monitor_analyze_runs_total{outcome="error"})
    warning_lines: int  # reported, not a verdict: a warning may be expected (a retried connection)
    first_warnings: list[str]
    exit_code: int | None  # after SIGTERM; None: killed, it did not stop in time
    serve_cpu_seconds: float  # from the first event to the last stored
    bench_cpu_seconds: float  # this process (producer, prober) over the same time
    machine_busy: float  # share of all the machine's cores busy over the same time (whoever used them)
    analyzer_runs: list[dict[str, Any]]  # each scheduled run's log line, with "seconds": its phases' sum
    database: str  # the scratch PostgreSQL database, dropped afterwards

    @property
    def no_errors(self) -> bool:
        return (self.error_lines == 0 and self.dead_letters == 0 and self.exit_code == 0
                and self.batch_failures == 0 and self.analyzer_failures == 0
                and self.stored == self.produced == self.events and self.freshness.unobserved == 0)

    @property
    def verdicts(self) -> dict[str, bool]:
        return {"rss_growth": self.memory.growth_mib <= TARGET_RSS_GROWTH_MIB,
                "freshness_p99": self.freshness.p99_s <= TARGET_FRESHNESS_P99_S,
                "no_errors": self.no_errors}

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["memory"]["growth_mib"] = self.memory.growth_mib
        data["verdicts"] = self.verdicts
        data["targets"] = {"rss_growth_mib": TARGET_RSS_GROWTH_MIB, "freshness_p99_s": TARGET_FRESHNESS_P99_S}
        data["sample_every"] = SAMPLE_EVERY
        return data

    def report(self) -> str:
        memory, fresh, verdict = self.memory, self.freshness, self.verdicts
        mark = {True: "meets", False: "MISSES"}
        runs = [run["seconds"] for run in self.analyzer_runs]
        analyzer = (f"{len(runs)} run{'s' * (len(runs) != 1)}, first {runs[0]:.1f} s, last {runs[-1]:.1f} s, "
                    f"longest {max(runs):.1f} s" if runs else "no run finished")
        worst_minute = max(fresh.by_minute, key=lambda minute: minute["p99_s"], default=None)
        worst = (f"worst minute of traffic: p99 {worst_minute['p99_s']:.3f} s (minute {worst_minute['minute']:.0f}, "
                 f"{worst_minute['samples']:.0f} samples)" if worst_minute else "")
        exit_status = "killed (no exit within 120 s)" if self.exit_code is None else str(self.exit_code)
        lines = [
            f"events produced         {self.produced:,} of {self.events:,} at {self.achieved_rate:,.0f} events/s "
            f"(target {self.rate:,.0f}; at most {self.max_lag_s:.2f} s behind schedule) "
            f"in {self.produce_seconds:.0f} s",
            f"events stored           {self.stored:,} (PostgreSQL, scratch database {self.database}); the last "
            f"{self.drain_seconds:.1f} s after the last was produced",
            f"serve RSS               start {memory.start_mib:.0f} MiB (after {memory.warmup_s:.0f} s of traffic), "
            f"peak {memory.peak_mib:.0f}, end {memory.end_mib:.0f}: growth {memory.growth_mib:+.0f} MiB",
            f"freshness               produced to queryable: p50 {fresh.p50_s:.3f} s, p95 {fresh.p95_s:.3f}, "
            f"p99 {fresh.p99_s:.3f}, max {fresh.max_s:.3f}",
            f"                        {fresh.samples:,} samples (every {SAMPLE_EVERY}th event), resolution "
            f"{fresh.resolution_s * 1000:.0f} ms (one poll), {fresh.unobserved} never seen",
            f"                        of which produced to received by serve: p50 {fresh.received_p50_s:.3f} s, "
            f"p99 {fresh.received_p99_s:.3f}",
            f"                        {worst}",
            f"errors                  {self.error_lines} ERROR log lines, {self.batch_failures} failed ingest "
            f"batches, {self.analyzer_failures} failed analyzer runs, {self.dead_letters} dead letters, "
            f"exit status {exit_status} after SIGTERM ({self.warning_lines} WARNING lines)",
            f"serve CPU               {self.serve_cpu_seconds:.0f} s "
            f"({self.serve_cpu_seconds / max(self.produced, 1) * 1e6:.0f} µs per event, "
            f"{self.serve_cpu_seconds / max(self.produce_seconds + self.drain_seconds, 1e-9):.2f} cores)",
            f"machine                 {psutil.cpu_count()} cores, {self.machine_busy:.0%} busy meanwhile (this bench "
            f"{self.bench_cpu_seconds / max(self.produce_seconds + self.drain_seconds, 1e-9):.2f} cores; "
            "the rest: PostgreSQL, the broker, anything else running)",
            f"analyzer schedule       {analyzer}",
            f"verdict: RSS growth <= {TARGET_RSS_GROWTH_MIB:.0f} MiB      {mark[verdict['rss_growth']]}",
            f"verdict: freshness p99 <= {TARGET_FRESHNESS_P99_S:.0f} s     {mark[verdict['freshness_p99']]}",
            f"verdict: no errors                {mark[verdict['no_errors']]}",
        ]
        lines += [f"  error: {line[:300]}" for line in self.first_errors]
        lines += [f"  warning: {line[:300]}" for line in self.first_warnings]
        return "\n".join(lines)


def run_soak(*, events: int, rate: float, database_url: str, warmup_s: float = 60.0, seed: int = 2026,
             echo: Callable[[str], None] = print) -> SoakResult:
    """Run the soak (module docstring); raise ``ValueError`` for bad arguments, :class:`MonitorError`
    when the run itself fails (serve dies, the producer cannot keep pace, events never arrive)."""
    if events < 1 or rate <= 0:
        raise ValueError(f"events must be >= 1 and rate > 0, got {events} and {rate}")
    if not 0 <= warmup_s < events / rate:
        raise ValueError(f"the warm-up ({warmup_s:g} s) must be shorter than the run ({events / rate:g} s of traffic)")
    if make_url(normalise_url(database_url)).get_backend_name() != "postgresql":
        raise ValueError(f"the soak runs on PostgreSQL; got {make_url(database_url).get_backend_name()}")
    if not c_crc32c():
        raise MonitorError("kafka-python is using its pure-Python CRC-32C: install the `crc32c` package")
    echo(f"generating {events:,} simulated events...")
    messages = simulated_traffic(events, rate, seed=seed, progress=lambda done: echo(f"  {done:,} generated"))
    with EmbeddedBroker() as broker, scratch_database(database_url) as store_url:
        suffix = uuid.uuid4().hex[:8]
        topics = {"conversations_topic": f"soak-conv-{suffix}", "ratings_topic": f"soak-rate-{suffix}",
                  "dlq_topic": f"soak-dlq-{suffix}", "flags_topic": f"soak-flags-{suffix}",
                  "relabel_topic": f"soak-relabel-{suffix}"}
        broker.create_topics({topics["conversations_topic"]: _PARTITIONS["conversations"],
                              topics["ratings_topic"]: _PARTITIONS["ratings"], topics["dlq_topic"]: 1,
                              topics["flags_topic"]: 1, topics["relabel_topic"]: 1})
        group = f"soak-{suffix}"
        serve = ServeProcess({"database_url": store_url, "kafka_bootstrap": broker.bootstrap, "role": "all",
                              "consumer_group": group, "api_host": "127.0.0.1", "api_port": "0", **topics})
        try:
            return _soak(serve, messages, rate, store_url, group, broker.bootstrap, topics, warmup_s, echo)
        finally:
            serve.stop(timeout=10)  # a no-op after a clean end; after a failure, serve must not outlive the run


def _soak(serve: ServeProcess, messages: list[SimulatedMessage], rate: float, store_url: str, group: str,
          bootstrap: str, topics: dict[str, str], warmup_s: float, echo: Callable[[str], None]) -> SoakResult:
    events = len(messages)
    plain_url = make_url(normalise_url(store_url)).set(drivername="postgresql").render_as_string(hide_password=False)
    echo(f"serve (pid {serve.pid}) starting on {make_url(store_url).database}...")
    api_url = serve.wait_ready(_READY_TIMEOUT_S)
    with psycopg.connect(plain_url, autocommit=True) as connection:
        _wait(lambda: _assigned(connection, group) >= sum(_PARTITIONS.values()), serve, _READY_TIMEOUT_S,
              "serve's consumer was not assigned every partition")
        echo(f"serve ready at {api_url}, consumer assigned; producing {events:,} events at {rate:,.0f}/s")
        probe = FreshnessProbe(plain_url)
        traffic = PacedTraffic(messages, rate, on_sample=probe.expect)
        producer_error: list[BaseException] = []
        stop_producing = threading.Event()

        def send() -> None:
            try:
                produce(traffic, bootstrap_servers=[bootstrap], conversations_topic=topics["conversations_topic"],
                        ratings_topic=topics["ratings_topic"], realtime=False, stop=stop_producing)
            except BaseException as exc:  # noqa: BLE001 - raised again by the main thread
                producer_error.append(exc)

        producer = threading.Thread(target=send, name="soak-producer", daemon=True)
        watch = _Watch(serve, probe, traffic, connection, group, echo)
        probe.start()
        cpu_before, bench_before, machine_before = serve.cpu_seconds(), _own_cpu(), psutil.cpu_times()
        producer.start()
        try:
            watch.until(lambda: not producer.is_alive())
            if producer_error:
                raise producer_error[0]
            if traffic.handed_out < events or traffic.last_at is None:
                raise MonitorError(f"the producer stopped after {traffic.handed_out:,} events")
            if traffic.handed_out > 1 and traffic.achieved_rate < MIN_RATE_SHARE * rate:
                raise ProducerBehind(f"the producer achieved {traffic.achieved_rate:,.0f} of {rate:,.0f} events/s: "
                                     "this machine cannot keep the rate (try a lower --rate)")
            produced_at = traffic.last_at
            watch.until(lambda: _consumed(connection, group) >= events and _stored(connection) >= events,
                        timeout=_DRAIN_TIMEOUT_S, what=f"serve did not store all {events:,} events")
            drained_at = time.monotonic()
            watch.until(lambda: probe.pending == 0, timeout=10, what="")
            end_mib = watch.sample_rss()
            cpu, bench_cpu = serve.cpu_seconds() - cpu_before, _own_cpu() - bench_before
            batch_failures = int(serve.counter("monitor_batch_failures_total"))
            analyzer_failures = int(serve.counter("monitor_analyze_runs_total", outcome="error"))
            machine_busy = _busy_share(machine_before, psutil.cpu_times())
        finally:
            stop_producing.set()
            probe.stop_event.set()
            probe.join(timeout=10)
        if probe.error is not None:
            raise MonitorError(f"the freshness probe failed: {probe.error}") from probe.error
        stored = _stored(connection)
        dead_letters = _count(connection, "SELECT count(*) FROM dead_letters")
    echo("every event stored; stopping serve (SIGTERM)...")
    exit_code = serve.stop(_STOP_TIMEOUT_S)
    started = traffic.first_at or produced_at
    return SoakResult(
        events=events, rate=rate, produced=traffic.handed_out, stored=stored, dead_letters=dead_letters,
        achieved_rate=traffic.achieved_rate, max_lag_s=traffic.max_lag, produce_seconds=produced_at - started,
        drain_seconds=drained_at - produced_at, memory=watch.memory(warmup_s, end_mib),
        freshness=Freshness.of(probe, started),
        error_lines=serve.error_lines, first_errors=list(serve.first_errors), batch_failures=batch_failures,
        analyzer_failures=analyzer_failures, warning_lines=serve.warning_lines,
        first_warnings=list(serve.first_warnings), exit_code=exit_code,
        serve_cpu_seconds=cpu, bench_cpu_seconds=bench_cpu, machine_busy=machine_busy,
        analyzer_runs=list(serve.analyzer_runs), database=str(make_url(store_url).database),
    )


class _Watch:
    """The bench's main thread while it waits: samples serve's RSS, checks serve, the producer's pace and
    the probe, and prints a progress line every :data:`PROGRESS_INTERVAL_S`."""

    def __init__(self, serve: ServeProcess, probe: FreshnessProbe, traffic: PacedTraffic,
                 connection: psycopg.Connection, group: str, echo: Callable[[str], None]) -> None:
        self.serve, self.probe, self.traffic, self.connection, self.group, self.echo = (
            serve, probe, traffic, connection, group, echo)
        self.started = time.monotonic()
        self.samples: list[tuple[float, float]] = []
        self._next_rss = self._next_progress = self.started

    def sample_rss(self) -> float:
        mib = self.serve.rss_mib()
        self.samples.append((time.monotonic() - (self.traffic.first_at or self.started), mib))
        return mib

    def until(self, done: Callable[[], bool], *, timeout: float | None = None, what: str = "") -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done():
            self.serve.check_running()
            if self.probe.error is not None:
                raise MonitorError(f"the freshness probe failed: {self.probe.error}") from self.probe.error
            now = time.monotonic()
            if deadline is not None and now > deadline:
                if not what:
                    return
                raise MonitorError(f"{what} within {timeout:.0f} s (stored offsets cover "
                                   f"{_consumed(self.connection, self.group):,} of {self.traffic.handed_out:,})")
            if now >= self._next_rss:
                self.sample_rss()
                self._next_rss += RSS_INTERVAL_S
            if now >= self._next_progress:
                self._progress(now)
                self._next_progress += PROGRESS_INTERVAL_S
            time.sleep(0.25)

    def _progress(self, now: float) -> None:
        fresh = self.probe.seconds[:]
        p99 = f"{np.percentile(fresh, 99):.3f} s ({len(fresh):,} samples)" if fresh else "-"
        rss = f"{self.samples[-1][1]:.0f} MiB" if self.samples else "-"
        self.echo(f"soak {now - self.started:5.0f} s  produced {self.traffic.handed_out:,}  "
                  f"stored {_consumed(self.connection, self.group):,}  serve RSS {rss}  freshness p99 {p99}  "
                  f"errors {self.serve.error_lines}")

    def memory(self, warmup_s: float, end_mib: float) -> Memory:
        after = [mib for at, mib in self.samples if at >= warmup_s]
        start = after[0] if after else end_mib
        return Memory(warmup_s, start, max(mib for _, mib in self.samples), end_mib, list(self.samples))


def _wait(done: Callable[[], bool], serve: ServeProcess, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        serve.check_running()
        if time.monotonic() > deadline:
            raise MonitorError(f"{what} within {timeout:.0f} s")
        time.sleep(0.2)


def _own_cpu() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


def _busy_share(before: Any, after: Any) -> float:
    """Share of CPU time (all cores) not idle between two ``psutil.cpu_times()``."""
    spent = {name: getattr(after, name) - getattr(before, name) for name in after._fields}
    total = sum(spent.values())
    idle = spent.get("idle", 0.0) + spent.get("iowait", 0.0)
    return (total - idle) / total if total > 0 else 0.0


def _count(connection: psycopg.Connection, query: str, *params: object) -> int:
    row = connection.execute(query, params).fetchone()
    return int(row[0]) if row else 0


def _assigned(connection: psycopg.Connection, group: str) -> int:
    return _count(connection, "SELECT count(*) FROM consumer_offsets WHERE group_id = %s", group)


def _consumed(connection: psycopg.Connection, group: str) -> int:
    """Records stored (rows or dead letters) as the stored offsets count them: the topics are fresh,
    so offsets count records from 0. A tiny table: cheap to read every few seconds."""
    return _count(connection, "SELECT coalesce(sum(greatest(next_offset, 0)), 0) FROM consumer_offsets "
                  "WHERE group_id = %s", group)


def _stored(connection: psycopg.Connection) -> int:
    return _count(connection, "SELECT (SELECT count(*) FROM turns) + (SELECT count(*) FROM ratings)")
