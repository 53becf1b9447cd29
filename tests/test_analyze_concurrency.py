"""Ingest at full speed while the analyzer runs back to back and the signal deriver works beside
it, on SQLite and PostgreSQL: their short transactions never make an ingest batch fail, and every
event is stored."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
from prometheus_client.parser import text_string_to_metric_families

from monitor.sim.scenarios import Scenario
from monitor.sim.traffic import DEFAULT_START, TrafficSimulator
from monitor.store.db import make_engine, make_session_factory
from tests.analysis_data import RATING_RATE, REFERENCE, write
from tests.helpers import ServiceThread, counts, produce, wait_for


def samples(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(metrics: dict[tuple[str, tuple], float], name: str, **labels: str) -> float:
    return sum(value for (metric, pairs), value in metrics.items()
               if metric == name and all(dict(pairs).get(k) == v for k, v in labels.items()))


def test_ingest_at_full_speed_while_the_analyzer_runs_loses_and_fails_nothing(migrated_url, topic_settings):
    # History the analyzer has to work through (signals to derive, references to fit, a window to read).
    engine = make_engine(migrated_url)
    try:
        write(make_session_factory(engine), TrafficSimulator(8, rating_rate=RATING_RATE).conversations(4000))
    finally:
        engine.dispose()
    before = counts(migrated_url)
    settings = topic_settings(database_url=migrated_url, analyze_interval_seconds=0.2,
                              analyze_reference_labels=REFERENCE, analyze_window_minutes=10.0,
                              analyze_drift_rows=0, flags_topic=f"flags-{uuid.uuid4().hex[:8]}",
                              batch_size=500)
    # Traffic that goes on where the history stops, 40 turns per second of event time.
    after_history = DEFAULT_START + timedelta(hours=1)
    live = list(TrafficSimulator(9, rating_rate=RATING_RATE, scenario=Scenario("S1"), start=after_history)
                .messages(40.0, 150.0))
    topic = {"conversation": settings.conversations_topic, "rating": settings.ratings_topic}
    with ServiceThread(settings) as service:
        assert service.url is not None
        wait_for(lambda: total(samples(service.url), "monitor_analyze_runs_total", outcome="ok") >= 1,
                 timeout=120, what="a first analyzer run")
        runs_before = total(samples(service.url), "monitor_analyze_runs_total", outcome="ok")
        produce(settings, ((topic[m.kind], m.key.encode(), m.value) for m in live))
        expected_turns = before.turns + sum(m.kind == "conversation" for m in live)
        wait_for(lambda: counts(migrated_url).turns >= expected_turns, timeout=240, what="every turn stored")
        runs_during_ingest = total(samples(service.url), "monitor_analyze_runs_total", outcome="ok")
        # serve's signal deriver works beside both (on a loaded machine its model may still be
        # loading when ingest is done: wait for its first pass rather than race it).
        wait_for(lambda: total(samples(service.url), "monitor_signals_derived_total") > 0, timeout=180,
                 what="the signal deriver's first pass")
        metrics = samples(service.url)
    assert counts(migrated_url).turns == expected_turns
    assert total(metrics, "monitor_batch_failures_total") == 0
    assert total(metrics, "monitor_analyze_runs_total", outcome="error") == 0
    assert runs_during_ingest - runs_before >= 1  # the analyzer worked while ingest wrote
    assert total(metrics, "monitor_signals_derived_total") > 0  # and so did serve's signal deriver
