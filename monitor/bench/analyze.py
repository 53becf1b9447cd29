"""`monitor bench analyze`: the cost of a scheduled analyzer run as the store grows (PostgreSQL).

For each size: a fresh database migrated to head, ``size`` synthetic turns bulk-loaded with their
signals derived (:mod:`monitor.bench.bulk_turns`, 10 turns/s of event time by default, ``--rate``
to fill the analyzer's window faster, 30% rated), then

1. **catch-up**: the analyzer's first run, from scratch, over every stored turn;
2. ``new`` more turns after the last one, signals not derived (as ingest leaves them);
3. **deriving**: the signal deriver (``serve``'s :class:`~monitor.analyze.derive.SignalDeriver`,
   which works as turns arrive, between the analyzer's runs) derives their signals;
4. **scheduled run**: one more analyzer run, as ``serve`` schedules it: it feeds the new rated
   turns to the detectors and scores the window's new turns; it derives nothing;
5. **varied text**: 1,000 more turns whose every sentence is new (:func:`~monitor.bench.bulk_turns.
   tag_sentences`), derived by the same deriver: what text as varied as production's costs it (the
   simulator's responses repeat a few hundred sentences, which the classifier caches).

New turns are distinct simulated turns (their own pool), so deriving their signals meets new text
as production does, not the sentence classifier's cache of the stored turns' text.

The analyzer and the deriver run in processes of their own (``python -m monitor.bench.analyze
--measure URL``, one ``run`` or ``derive`` per line on its stdin), so each one's RSS is its own: the
catch-up in a fresh process; the scheduled run in another one that has already done a *warm-up*
run over 100 new turns (the service's previous tick), so it is warm as in ``serve``: statements
compiled, pool connected; the deriver likewise warm (its models loaded by the warm-up turns).
Measured: wall time per phase, the process's CPU time, RSS before and peak RSS (the kernel's
high-water mark, reset just before), and, apart, what importing the analyzer costs. The drift
report is off (``DriftInputs(rows=0)``): it has its own interval and budget.

Targets (issue 8): at 1M stored turns a run after 10k new turns in at most 3 s, in at most
600 MiB, and the cost flat from 100k to 1M (scheduled run at 1M / at 100k ~ 1).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg
from sqlalchemy.engine import make_url

from monitor.errors import MonitorError
from monitor.store.db import normalise_url

DEFAULT_SIZES = (100_000, 300_000, 1_000_000)
DEFAULT_NEW = 10_000
#: Turns per second of event time (bulk_turns.TURNS_PER_SECOND, not imported: see _bench_size).
DEFAULT_RATE = 10.0
#: New turns before the warm-up run, the measured run's previous tick.
WARM_UP_NEW = 100
#: Turns of varied text (every sentence new) the deriver is timed on.
VARIED_NEW = 1000
TARGET_SECONDS = 3.0
TARGET_RSS_MIB = 600.0
#: Modules whose import shows in the import cost (the analyzer needs none of them for a run
#: without the drift report).
HEAVY_MODULES = ("torch", "transformers", "evidently", "pandas", "scipy", "sklearn")
#: Event time between the last new turn and the wall clock, so no turn is ahead of the watermark limit.
_LEAD = timedelta(minutes=10)


class BenchFailed(MonitorError):
    """A measured run failed; the message carries the end of its output."""


@dataclass(frozen=True)
class RunMeasurement:
    """One analyzer run, measured in a process of its own."""

    seconds: float
    cpu_seconds: float  # the analyzer process's own CPU time (user + system) in the run
    phases: dict[str, float]
    import_seconds: float
    imported: list[str]  # heavy modules the analyzer's import pulled in
    import_peak_mib: float  # the process's peak RSS after the imports
    rss_before_mib: float  # resident just before the run
    peak_mib: float  # the run's peak RSS (reset before the run where the kernel allows)
    derived: int
    entered: int
    turns: int
    scored: int

    @property
    def growth_mib(self) -> float:
        return self.peak_mib - self.rss_before_mib


@dataclass(frozen=True)
class SizeResult:
    stored: int
    load_seconds: float
    catch_up: RunMeasurement  # the first run, from scratch, in a fresh process
    warm_up: RunMeasurement  # the previous run, over WARM_UP_NEW new turns, in the measured run's process
    scheduled: RunMeasurement  # the next run, after the new turns, in that same warm process
    deriving: RunMeasurement  # the deriver over the new turns, in a warm process of its own
    varied: RunMeasurement  # the same deriver over turns whose every sentence is new (VARIED_NEW by default)


@dataclass
class AnalyzeBenchResult:
    new: int
    sizes: list[SizeResult] = field(default_factory=list)

    @property
    def flatness(self) -> float | None:
        """Scheduled run at the largest size / at the smallest (None with fewer than two sizes)."""
        if len(self.sizes) < 2:
            return None
        return self.sizes[-1].scheduled.seconds / self.sizes[0].scheduled.seconds

    def report(self) -> str:
        header = (f"{'stored turns':>12} | {'load (s)':>8} | {'catch-up run (s)':>16} | {'warm-up run (s)':>15} | "
                  f"{f'scheduled run after {self.new:,} new (s)':>34} | {'read / compute / write (s)':>26} | "
                  f"{'its CPU (s)':>11} | {'RSS before (MiB)':>16} | {'peak RSS (MiB)':>14} | "
                  f"{f'deriver: {self.new:,} new (s)':>26} | {'turns/s':>7} | {'deriver CPU (s)':>15} | "
                  f"{'deriver peak RSS (MiB)':>22} | {'varied text: turns/s':>20}")
        lines = [header, "-" * len(header)]
        for size in self.sizes:
            run, deriving = size.scheduled, size.deriving
            split = " / ".join(f"{run.phases.get(name, 0.0):.2f}" for name in ("read", "compute", "write"))
            lines.append(f"{size.stored:>12,} | {size.load_seconds:>8.1f} | {size.catch_up.seconds:>16.2f} | "
                         f"{size.warm_up.seconds:>15.2f} | {run.seconds:>34.2f} | {split:>26} | "
                         f"{run.cpu_seconds:>11.2f} | {run.rss_before_mib:>16.0f} | {run.peak_mib:>14.0f} | "
                         f"{deriving.seconds:>26.2f} | {deriving.derived / deriving.seconds:>7.0f} | "
                         f"{deriving.cpu_seconds:>15.2f} | {deriving.peak_mib:>22.0f} | "
                         f"{size.varied.derived / size.varied.seconds:>20.0f}")
        if not self.sizes:
            return "\n".join(lines)
        largest, smallest = self.sizes[-1], self.sizes[0]
        run = largest.scheduled
        lines.append("catch-up runs' peak RSS (MiB): "
                     + ", ".join(f"{size.stored:,}: {size.catch_up.peak_mib:.0f}" for size in self.sizes))
        lines.append(f"importing the analyzer: {run.import_seconds:.1f} s, peak RSS {run.import_peak_mib:.0f} MiB "
                     f"({', '.join(run.imported) or 'no heavy modules'}); once per process, not in the runs above")
        rate = largest.deriving.derived / largest.deriving.seconds
        varied = largest.varied.derived / largest.varied.seconds
        lines.append(f"the deriver keeps up with ingest up to about {rate:.0f} new turns/s here on simulated text, "
                     f"{varied:.0f} on text whose every sentence is new; it works while turns arrive, between the "
                     f"analyzer's runs")
        if self.flatness is not None:
            lines.append(f"scheduled run at {largest.stored:,} / at {smallest.stored:,} stored turns: "
                         f"{self.flatness:.2f} (flat: ~1)")
        in_time, in_memory = run.seconds <= TARGET_SECONDS, run.peak_mib <= TARGET_RSS_MIB
        lines.append(f"at {largest.stored:,} stored turns: {run.seconds:.2f} s "
                     f"({'meets' if in_time else 'MISSES'} the <= {TARGET_SECONDS:g} s target), "
                     f"peak RSS {run.peak_mib:.0f} MiB ({'meets' if in_memory else 'MISSES'} the "
                     f"<= {TARGET_RSS_MIB:g} MiB target)")
        return "\n".join(lines)


@contextmanager
def bench_database(database_url: str, label: str, *, keep: bool = False) -> Iterator[str]:
    """A fresh PostgreSQL database beside ``database_url``, migrated to head; dropped afterwards
    unless ``keep``."""
    from monitor.store.migrate import upgrade

    url = make_url(normalise_url(database_url))
    if url.get_backend_name() != "postgresql":
        raise ValueError(f"the analyze bench needs PostgreSQL, got {url.get_backend_name()!r}")
    name = f"monitor_bench_analyze_{label}_{uuid.uuid4().hex[:8]}"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    created = url.set(drivername="postgresql", database=name).render_as_string(hide_password=False)
    try:
        upgrade(created)
        yield created
    finally:
        if not keep:
            with psycopg.connect(admin, autocommit=True) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_analyze_benchmark(*, sizes: tuple[int, ...] = DEFAULT_SIZES, new: int = DEFAULT_NEW, varied: int = VARIED_NEW,
                          rate: float = DEFAULT_RATE,
                          database_url: str = "postgresql://postgres@127.0.0.1:5432/test", keep: bool = False,
                          echo: Callable[[str], None] = print,
                          progress: Callable[[str, int], Callable[[int], None]] | None = None) -> AnalyzeBenchResult:
    """Run the bench at each of ``sizes`` (stored turns) with ``new`` new turns before the measured
    run, ``rate`` turns per second of event time (at 10, the default hour-long window holds 36k turns;
    at 1,000, every stored turn of a 1M store is in it). ``progress(description, total)`` returns a
    callback taking the rows loaded so far."""
    if not sizes or min(sizes) < 1 or new < 1 or varied < 1 or not rate > 0:
        raise ValueError(f"sizes, new, varied and rate must be positive, got sizes={sizes}, new={new}, "
                         f"varied={varied}, rate={rate}")
    result = AnalyzeBenchResult(new=new)
    for size in sizes:
        with bench_database(database_url, str(size), keep=keep) as url:
            if keep:
                echo(f"database kept: {url}")
            result.sizes.append(_bench_size(url, size, new, varied, rate, echo, progress))
            echo(f"{size:,} stored: catch-up {result.sizes[-1].catch_up.seconds:.2f} s, "
                 f"scheduled run {result.sizes[-1].scheduled.seconds:.2f} s")
    return result


def _bench_size(url: str, size: int, new: int, varied: int, rate: float, echo: Callable[[str], None],
                progress: Callable[[str, int], Callable[[int], None]] | None) -> SizeResult:
    # Imported here, not at the top: the measuring child's import cost stays the analyzer's own.
    from monitor.bench.bulk_turns import SyntheticTurns

    # The stream ends _LEAD before now, so every turn's event time is already past.
    start = datetime.now(UTC) - _LEAD - timedelta(seconds=(size + WARM_UP_NEW + new + varied) / rate)
    turns = SyntheticTurns(start, rate=rate)
    fresh = SyntheticTurns(start, seed=1, pool=WARM_UP_NEW + new, rate=rate)  # every new turn its own text
    started = time.perf_counter()
    turns.load(url, 0, size, derived=True, progress=progress(f"loading {size:,} turns", size) if progress else None)
    _vacuum_analyze(url)
    load_seconds = time.perf_counter() - started
    echo(f"{size:,} turns loaded in {load_seconds:.1f} s; catch-up run...")
    with MeasuredAnalyzer(url) as analyzer:
        catch_up = analyzer.run()
    # Steady state: autovacuum has seen the history (the catch-up rewrote the window's divergence);
    # the new turns below are too few to trigger it, as between two scheduled runs.
    _vacuum_analyze(url)
    echo("deriving and scheduled run...")
    with MeasuredAnalyzer(url) as analyzer, MeasuredAnalyzer(url) as deriver:
        fresh.load(url, size, WARM_UP_NEW, derived=False)
        deriver.derive()
        warm_up = analyzer.run()  # the service's previous tick
        fresh.load(url, size + WARM_UP_NEW, new, derived=False,
                   progress=progress(f"adding {new:,} new turns", new) if progress else None)
        deriving = deriver.derive()
        scheduled = analyzer.run()
        fresh.load(url, size + WARM_UP_NEW + new, varied, derived=False, unique_sentences=True)
        on_varied_text = deriver.derive()
    return SizeResult(size, load_seconds, catch_up, warm_up, scheduled, deriving, on_varied_text)


def _vacuum_analyze(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE turns")
        connection.execute("VACUUM ANALYZE ratings")


class MeasuredAnalyzer:
    """An analyzer in a process of its own (``python -m monitor.bench.analyze --measure URL``): each
    :meth:`run` has it run once (each :meth:`derive`, derive every missing signal) and returns the
    measurement. Between runs the process stays up, warm, as the service's between two runs."""

    def __init__(self, url: str, *, profile: str | None = None) -> None:
        command = [sys.executable, "-m", "monitor.bench.analyze", "--measure", url]
        if profile:
            command += ["--profile", profile]
        self._errors = tempfile.TemporaryFile("w+")
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._errors, text=True)

    def run(self) -> RunMeasurement:
        return self._command("run")

    def derive(self) -> RunMeasurement:
        return self._command("derive")

    def _command(self, command: str) -> RunMeasurement:
        assert self._process.stdin is not None and self._process.stdout is not None
        try:
            self._process.stdin.write(f"{command}\n")
            self._process.stdin.flush()
        except BrokenPipeError:
            pass  # the child died; its output says why
        line = self._process.stdout.readline()
        if not line:
            self._process.wait()
            self._errors.seek(0)
            raise BenchFailed(f"the measured analyzer failed (exit {self._process.returncode}): "
                              f"{self._errors.read()[-2000:]}")
        return RunMeasurement(**json.loads(line))

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._errors.close()

    def __enter__(self) -> MeasuredAnalyzer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_measurements(url: str, *, commands: Iterator[str], out: Callable[[str], None],
                       profile: str | None = None) -> None:
    """Import the analyzer, then per command (a line on stdin) run it once against ``url``
    (``run``) or derive every missing signal as the deriver does (``derive``), writing each one's
    :class:`RunMeasurement` as a JSON line. Meant for a fresh process: the import cost and the RSS
    figures are the process's own. ``profile``: cProfile the last command into this path."""
    started = time.perf_counter()
    from monitor.analyze.derive import fill_signals
    from monitor.analyze.drift_window import DriftInputs
    from monitor.analyze.runner import Analyzer, RunSummary
    from monitor.config import Settings
    from monitor.store.db import make_engine, make_session_factory, ping

    import_seconds = time.perf_counter() - started
    import_peak = _peak_mib()
    imported = [name for name in HEAVY_MODULES if name in sys.modules]
    engine = make_engine(url)
    try:
        ping(engine)  # a scheduled run finds the pool connected
        sessions = make_session_factory(engine)
        analyzer = Analyzer(Settings(database_url=url), sessions, drift=DriftInputs(rows=0), derive=False)
        for command in commands:
            if command.strip() not in ("run", "derive"):
                raise ValueError(f"unknown command {command.strip()!r}: run or derive")
            rss_before = _rss_mib()
            reset = _reset_peak()
            profiler = cProfile.Profile() if profile else None
            if profiler is not None:
                profiler.enable()
            started, cpu = time.perf_counter(), time.process_time()
            if command.strip() == "run":
                summary = analyzer.run_once(publish=False)
            else:
                summary = RunSummary(derived=fill_signals(sessions))
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            if profiler is not None and profile:
                profiler.disable()
                profiler.dump_stats(profile)
            peak = _peak_mib() if reset else max(_peak_mib(), rss_before)
            out(json.dumps(asdict(RunMeasurement(
                seconds=seconds, cpu_seconds=cpu, phases=summary.phases, import_seconds=import_seconds,
                imported=imported, import_peak_mib=import_peak, rss_before_mib=rss_before, peak_mib=peak,
                derived=summary.derived, entered=summary.entered, turns=summary.turns, scored=summary.scored))))
    finally:
        engine.dispose()


def _rss_mib() -> float:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return _peak_mib()


def _peak_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def _reset_peak() -> bool:
    """Reset the process's RSS high-water mark (Linux >= 4.0), so the run's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the analyzer (a line 'run') or the signal deriver ('derive') "
                                     "once per line on stdin, measured (the child of `monitor bench analyze`).")
    parser.add_argument("--measure", required=True, metavar="URL", help="the store to run the analyzer against")
    parser.add_argument("--profile", metavar="PATH", help="also write a cProfile of the last run here")
    args = parser.parse_args(argv)
    serve_measurements(args.measure, commands=iter(sys.stdin.readline, ""),
                       out=lambda line: print(line, flush=True), profile=args.profile)


if __name__ == "__main__":
    _main()
