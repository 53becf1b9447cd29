"""`monitor analyze`, `monitor bench detect` (as subprocesses) and the analyzer schedule in `serve`."""

from __future__ import annotations

import math

import httpx
from sqlalchemy import func, select

from monitor.store.analysis import earliest_unready_entry, watermarks
from monitor.store.db import make_engine, make_session_factory
from monitor.store.migrate import upgrade
from monitor.store.models import AnalysisRun, AnalyzerProgress, ConsumerOffset, Turn, utcnow
from monitor.store.reads import store_counts
from tests.analysis_data import REFERENCE, s1_traffic, write
from tests.helpers import ServiceThread, produce, wait_for
from tests.test_cli import run


def test_analyze_once_then_recompute_then_refit(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'analyze.db'}"
    upgrade(url)
    engine = make_engine(url)
    write(make_session_factory(engine), s1_traffic())
    engine.dispose()
    settings = {"database_url": url, "analyze_reference_labels": REFERENCE, "analyze_window_minutes": 10}

    first = run("analyze", "--no-publish", **settings)
    assert first.returncode == 0, first.stderr
    assert '"msg": "deriving signals"' in first.stderr  # progress of the one-off derivation
    fitted = first.stdout.split("calibrations fitted: ")[1].splitlines()[0]
    assert sorted(name.split(" @ ")[0] for name in fitted.split(", ")) == [
        "cards/*/*", "fraud/*/*", "general/*/*", "investments/*/*", "payments/*/*"]
    assert " @ producer@assistant-2026-11-20" in fitted  # the reward model each reference belongs to
    assert "drifted columns:" in first.stdout and "length_tokens" in first.stdout
    opened = int(first.stdout.split("alerts: ")[1].split(" opened")[0])
    assert opened >= 1

    nothing_new = run("analyze", "--no-publish", analyze_drift_rows=0, **settings)
    assert "entered 0 rated turns" in nothing_new.stdout and "alerts: 0 opened" in nothing_new.stdout

    again = run("analyze", "--no-publish", "--recompute", analyze_drift_rows=0, **settings)
    assert again.returncode == 0, again.stderr
    assert "forgot the state of 5 segment(s)" in again.stderr
    assert "alerts: 0 opened" in again.stdout  # from scratch: the same episodes under the same keys

    refit = run("analyze", "--no-publish", "--refit", analyze_drift_rows=0, **settings)
    assert refit.returncode == 0, refit.stderr
    assert "refitted 5 segment(s) on their latest labels" in refit.stderr
    assert "alerts: 0 opened" in refit.stdout


def test_analyze_reports_an_unreachable_database() -> None:
    result = run("analyze", database_url="postgresql://nobody@127.0.0.1:1/none")
    assert result.returncode == 2 and "error:" in result.stderr and "Traceback" not in result.stderr


def test_bench_detect_prints_every_figure() -> None:
    result = run("bench", "detect", "--b1-labels", "3000", "--b1-kind-streams", "2", "--trials", "20",
                 "--scenarios", "S1", "--labels-after-onset", "400", timeout=600)
    assert result.returncode == 0, result.stderr
    for figure in ("false alarms:", "river PageHinkley", "delay to a 0.5 SD shift: median", "stars: false alarms:",
                   "x the CUSUM's", "S1 1 abrupt 20% seed 1",
                   "B2 AUROC", "attribution macro-F1", "S5 divergence alerts"):
        assert figure in result.stdout
    assert "cusum/down/verbosity" in result.stdout


def test_bench_detect_rejects_an_unknown_scenario() -> None:
    result = run("bench", "detect", "--scenarios", "S1,S9")
    assert result.returncode == 2 and "unknown scenario(s) S9" in result.stderr


def pipeline_state(database_url: str, http: httpx.Client) -> str:
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            counts = store_counts(session)
            pending = session.scalar(select(func.count()).select_from(Turn).where(Turn.sig_length_tokens.is_(None)))
            progress = session.scalar(select(AnalyzerProgress.checkpoint))
            runs = session.scalar(select(func.count()).select_from(AnalysisRun))
            last = session.execute(select(AnalysisRun.finished_at, AnalysisRun.watermark)
                                   .order_by(AnalysisRun.id.desc()).limit(1)).first()
            unready = earliest_unready_entry(session)
            latest = watermarks(session)
            partitions = [(row.topic.split("-")[0], row.partition, str(row.event_time), str(row.updated_at))
                          for row in session.scalars(select(ConsumerOffset))]
    finally:
        engine.dispose()
    metrics = [line for line in http.get("/metrics").text.splitlines()
               if line.startswith(("monitor_analyze_runs_total", "monitor_signals_derived_total",
                                   "monitor_messages_consumed_total"))]
    return (f"{counts}; signals pending for {pending} turns; checkpoint {progress}; {runs} analysis runs, "
            f"the last finished at {last[0] if last else None} (watermark {last[1] if last else None}), now "
            f"{utcnow()}; earliest unready entry {unready}; watermarks {latest}; partitions "
            f"(topic, partition, event time, updated) {partitions}; {metrics}")


def test_serve_runs_the_analyzer_on_its_schedule(topic_settings, tmp_path) -> None:
    settings = topic_settings(database_url=f"sqlite:///{tmp_path / 'serve.db'}", analyze_interval_seconds=1.0,
                              analyze_reference_labels=REFERENCE, analyze_window_minutes=10.0,
                              analyze_drift_rows=100)
    with ServiceThread(settings) as service, httpx.Client(base_url=service.url, timeout=10,
                                                          headers=service.headers()) as http:
        traffic = s1_traffic()
        turns = sum(m.kind == "conversation" for m in traffic)
        ratings = len(traffic) - turns
        produce(settings, [(settings.conversations_topic if m.kind == "conversation" else settings.ratings_topic,
                            m.key.encode(), m.value) for m in traffic])

        def firing() -> list[dict]:
            return http.get("/v1/alerts", params={"state": "firing"}).json()["alerts"]

        def ingested_and_derived() -> bool:
            engine = make_engine(settings.database_url)
            try:
                with make_session_factory(engine)() as session:
                    counts = store_counts(session)
                    pending = session.scalar(select(func.count()).select_from(Turn)
                                             .where(Turn.sig_length_tokens.is_(None)))
            finally:
                engine.dispose()
            return counts.turns == turns and counts.ratings_joined == ratings and pending == 0

        try:
            # Two stages, so a failure says which one was slow: ingest and the deriver, then the schedule.
            wait_for(ingested_and_derived, timeout=300, interval=1.0, what="every turn ingested and derived")
            alerts = wait_for(firing, timeout=120, interval=1.0, what="a firing alert")
        except AssertionError as exc:  # say where the pipeline stood
            raise AssertionError(f"{exc}: {pipeline_state(settings.database_url, http)}") from exc
        assert any(a["mode"] == "verbosity" and a["direction"] == "down" for a in alerts)
        wait_for(lambda: all(a["published"] for a in firing()), timeout=60, what="alerts published")
        metrics = http.get("/metrics").text
        assert 'monitor_analyze_runs_total{outcome="ok"}' in metrics
        # The signals came from serve's deriver, not from the analyzer's runs.
        derived = [line for line in metrics.splitlines() if line.startswith("monitor_signals_derived_total ")]
        assert derived and float(derived[0].split()[1]) > 0
        assert "monitor_alerts_firing{" in metrics and "monitor_segment_satisfaction_ratio{" in metrics
        # The gap's 95% interval as two series of their own, around the gap (NaN for a segment whose
        # window holds fewer than 10 rated turns: no interval yet).
        bounded = 0
        for segment in {a["segment"] for a in firing()} | {s["segment"] for s in
                                                          http.get("/v1/segments").json()["segments"]}:
            gap = _sample(metrics, f'monitor_segment_satisfaction_gap_ratio{{segment="{segment}"}}')
            lower, upper = (_sample(metrics, f'monitor_segment_satisfaction_gap_bound_ratio{{bound="{bound}",'
                                             f'segment="{segment}"}}') for bound in ("lower", "upper"))
            if math.isfinite(lower) and math.isfinite(upper):
                assert lower < gap < upper, (segment, lower, gap, upper)
                bounded += 1
        assert bounded, metrics
        assert http.get("/v1/segments").status_code == 200


def _sample(metrics: str, series: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(series + " ")]
    assert values, f"no {series} in /metrics"
    return values[0]
