"""`monitor bench analyze` end to end at tiny sizes, on PostgreSQL: the table, not the timings."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime

import psycopg
import pytest

from monitor.bench.analyze import AnalyzeBenchResult, RunMeasurement, SizeResult
from monitor.bench.bulk_turns import SyntheticTurns
from tests.conftest import POSTGRES_ADMIN_URL

SIZES = (2000, 5000)
NEW = 500


def _bench_databases() -> set[str]:
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as connection:
        return {name for (name,) in connection.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'monitor_bench_analyze_2000_%' "
            "OR datname LIKE 'monitor_bench_analyze_5000_%'")}


def test_bench_analyze_prints_a_row_per_size_and_drops_its_databases() -> None:
    before = _bench_databases()
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "bench", "analyze", "--sizes", ",".join(map(str, SIZES)),
         "--new", str(NEW), "--varied", "100", "--database-url", POSTGRES_ADMIN_URL],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {int(match[1].replace(",", "")): [float(value) for value in re.findall(r"\d+\.?\d*", match[2])]
            for match in re.finditer(r"^\s*([\d,]+) \|(.*)$", result.stdout, re.MULTILINE)}
    assert sorted(rows) == list(SIZES), result.stdout
    for values in rows.values():
        # load, catch-up, warm-up, scheduled, read, compute, write, its CPU, RSS before, peak RSS,
        # then the deriver's seconds, turns/s, CPU and peak RSS, and its turns/s on varied text
        (load, catch_up, warm_up, scheduled, read, compute, write, cpu, rss_before, peak,
         deriving, rate, deriver_cpu, deriver_peak, varied_rate) = values
        assert min(load, catch_up, warm_up, scheduled, cpu, deriving, deriver_cpu) > 0
        assert read + compute + write <= scheduled + 0.02  # each printed to 0.01
        assert rate == pytest.approx(NEW / deriving, rel=0.02, abs=1)
        assert 0 < varied_rate < rate  # every sentence through the encoder: slower than cached text
        assert 50 < rss_before <= peak < 4096 and peak < deriver_peak  # the run loads no classifier
    assert re.search(r"scheduled run at 5,000 / at 2,000 stored turns: \d+\.\d\d", result.stdout)
    assert re.search(r"importing the analyzer: \d+\.\d s, peak RSS \d+ MiB \(scipy\)", result.stdout)
    assert re.search(r"the deriver keeps up with ingest up to about \d+ new turns/s here on simulated text, "
                     r"\d+ on text whose every sentence is new", result.stdout)
    assert re.search(r"at 5,000 stored turns: \d+\.\d\d s \((meets|MISSES)", result.stdout)
    assert "loading 5,000 turns: 5,000" in result.stderr  # progress lines when not on a terminal
    assert _bench_databases() == before


def test_bench_analyze_rejects_sizes_that_are_not_numbers() -> None:
    result = subprocess.run([sys.executable, "-m", "monitor", "bench", "analyze", "--sizes", "1k"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--sizes takes comma-separated integers" in result.stderr


def _measurement(seconds: float) -> RunMeasurement:
    return RunMeasurement(seconds=seconds, cpu_seconds=seconds / 2, phases={"read": 0.1},
                          import_seconds=9.0, imported=["torch"], import_peak_mib=420.0, rss_before_mib=430.0,
                          peak_mib=650.0, derived=10_000, entered=3000, turns=36_000, scored=10_000)


def test_report_gives_the_flatness_ratio_and_the_verdicts() -> None:
    result = AnalyzeBenchResult(new=10_000, sizes=[
        SizeResult(100_000, 10.0, _measurement(20.0), _measurement(0.5), _measurement(2.0), _measurement(20.0),
                   _measurement(10.0)),
        SizeResult(1_000_000, 100.0, _measurement(200.0), _measurement(0.5), _measurement(2.5), _measurement(25.0),
                   _measurement(100.0)),
    ])
    report = result.report()
    assert result.flatness == pytest.approx(1.25)
    assert "scheduled run at 1,000,000 / at 100,000 stored turns: 1.25 (flat: ~1)" in report
    assert "2.50 s (meets the <= 3 s target), peak RSS 650 MiB (MISSES the <= 600 MiB target)" in report
    assert "keeps up with ingest up to about 400 new turns/s here on simulated text, 100 on text" in report


def test_synthetic_turns_need_an_aware_start_and_sane_shares() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        SyntheticTurns(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="rated_share"):
        SyntheticTurns(datetime(2026, 1, 1, tzinfo=UTC), rated_share=1.5)
