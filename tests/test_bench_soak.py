"""`monitor bench soak`: the real thing, small (6,000 events at 500/s through `serve` on PostgreSQL),
and the pacing and verdicts on their own."""

from __future__ import annotations

import dataclasses
import itertools
import json
import subprocess
import sys

import psycopg
import pytest

from monitor.bench.paced_load import SAMPLE_EVERY, Freshness, PacedTraffic, ProducerBehind, simulated_traffic
from monitor.bench.soak import Memory, SoakResult, run_soak
from monitor.sim.traffic import SimulatedMessage
from tests.conftest import POSTGRES_ADMIN_URL

EVENTS, RATE = 6000, 500


def test_bench_soak_pushes_every_event_through_serve_and_measures_it(tmp_path) -> None:
    out = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "bench", "soak", "--events", str(EVENTS), "--rate", str(RATE),
         "--warmup", "3", "--database-url", POSTGRES_ADMIN_URL, "--output", str(out)],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())

    assert report["produced"] == report["stored"] == EVENTS
    assert abs(report["achieved_rate"] - RATE) < 0.05 * RATE
    assert report["dead_letters"] == 0 and report["error_lines"] == 0 and report["first_errors"] == [], \
        report["first_errors"]
    assert report["batch_failures"] == 0 and report["analyzer_failures"] == 0
    assert report["exit_code"] == 0

    fresh = report["freshness"]
    assert fresh["samples"] == EVENTS // SAMPLE_EVERY and fresh["unobserved"] == 0
    assert 0 < fresh["p50_s"] <= fresh["p95_s"] <= fresh["p99_s"] <= fresh["max_s"] < 30
    assert 0.04 <= fresh["resolution_s"] < 0.5
    assert sum(minute["samples"] for minute in fresh["by_minute"]) == fresh["samples"]
    assert 0 < fresh["received_p50_s"] <= fresh["received_p99_s"] <= fresh["max_s"]

    memory = report["memory"]
    assert memory["warmup_s"] == 3
    assert len(memory["samples"]) >= EVENTS / RATE / 2  # one every 2 s
    assert 100 < memory["start_mib"] <= memory["peak_mib"] and memory["end_mib"] <= memory["peak_mib"]
    assert memory["growth_mib"] == pytest.approx(memory["end_mib"] - memory["start_mib"])
    assert report["serve_cpu_seconds"] > 0 and report["bench_cpu_seconds"] > 0 and 0 < report["machine_busy"] <= 1
    assert set(report["verdicts"]) == {"rss_growth", "freshness_p99", "no_errors"}
    assert report["verdicts"]["no_errors"] is True

    assert "verdict: no errors                meets" in result.stdout
    assert f"events produced         {EVENTS:,} of {EVENTS:,}" in result.stdout
    assert "soak " in result.stderr and " stored " in result.stderr and "freshness p99" in result.stderr
    with psycopg.connect(POSTGRES_ADMIN_URL) as connection:  # the scratch database is gone
        assert connection.execute("SELECT count(*) FROM pg_database WHERE datname = %s",
                                  (report["database"],)).fetchone() == (0,)


def test_bench_soak_refuses_sqlite_and_a_warmup_longer_than_the_run() -> None:
    with pytest.raises(ValueError, match="runs on PostgreSQL"):
        run_soak(events=100, rate=10, warmup_s=1, database_url="sqlite:///soak.db")
    with pytest.raises(ValueError, match="must be shorter than the run"):
        run_soak(events=100, rate=10, warmup_s=10, database_url=POSTGRES_ADMIN_URL)


def test_paced_traffic_hands_out_events_on_schedule_and_samples_every_twentieth() -> None:
    messages = simulated_traffic(200, 2000)
    assert len(messages) == 200 and {message.kind for message in messages} == {"conversation", "rating"}
    sampled: list[SimulatedMessage] = []
    traffic = PacedTraffic(messages, 2000, on_sample=lambda message, _at: sampled.append(message))
    assert list(traffic) == messages and traffic.handed_out == 200
    assert sampled == messages[::SAMPLE_EVERY]
    assert traffic.achieved_rate == pytest.approx(2000, rel=0.1)


def test_paced_traffic_fails_clearly_when_it_falls_behind() -> None:
    ticks = itertools.count()  # a clock on which every event takes a second to send
    traffic = PacedTraffic(simulated_traffic(100, 1000), 1000, max_lag_s=5, clock=lambda: float(next(ticks)),
                           sleep=lambda _s: None)
    with pytest.raises(ProducerBehind, match="cannot send 1,000 events/s"):
        list(traffic)
    assert 0 < traffic.handed_out < 10


def _result(growth: float, p99: float, error_lines: int = 0) -> SoakResult:
    return SoakResult(
        events=1000, rate=100, produced=1000, stored=1000, dead_letters=0, achieved_rate=100, max_lag_s=0.1,
        produce_seconds=10, drain_seconds=0.5, memory=Memory(3, 500, 500 + growth, 500 + growth, [(0, 500)]),
        freshness=Freshness(50, 0, 0.05, p99 / 2, p99, p99, p99, p99 / 4, p99 / 2), error_lines=error_lines,
        first_errors=["boom"] if error_lines else [], batch_failures=0, analyzer_failures=0, warning_lines=1,
        first_warnings=["careful"], exit_code=0, serve_cpu_seconds=5, bench_cpu_seconds=2,
        machine_busy=0.5, analyzer_runs=[{"seconds": 0.5}, {"seconds": 0.7}],
        database="monitor_bench_x",
    )


def test_verdicts_follow_the_targets() -> None:
    assert _result(100, 2.0).verdicts == {"rss_growth": True, "freshness_p99": True, "no_errors": True}
    assert _result(101, 2.01, error_lines=1).verdicts == {"rss_growth": False, "freshness_p99": False,
                                                          "no_errors": False}
    report = _result(101, 1.0, error_lines=1).report()
    assert "verdict: RSS growth <= 100 MiB      MISSES" in report and "  error: boom" in report
    assert "  warning: careful" in report
    failed_batch = dataclasses.replace(_result(0, 1.0), batch_failures=1)
    assert failed_batch.verdicts == {"rss_growth": True, "freshness_p99": True, "no_errors": False}
    assert "2 runs, first 0.5 s, last 0.7 s, longest 0.7 s" in report
