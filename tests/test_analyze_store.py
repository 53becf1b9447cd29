"""The analyzer against the real store (SQLite and PostgreSQL), the real broker and the real API."""

from __future__ import annotations

import json
import threading
import time
import uuid
import zlib
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import delete, select, update

from monitor.analyze import derive
from monitor.analyze.derive import SignalDeriver, fill_signals
from monitor.analyze.engine import AnalysisConfig
from monitor.analyze.runner import Analyzer
from monitor.analyze.state import SegmentState as State
from monitor.api.app import create_app
from monitor.api.context import AppContext
from monitor.api.server import ApiServer
from monitor.broker import free_port
from monitor.events import parse_flag
from monitor.health import HealthState
from monitor.ingest.records import KafkaRecord
from monitor.metrics import Metrics
from monitor.scoring.base import ProducerRewardScorer
from monitor.sim.traffic import TrafficSimulator
from monitor.store.analysis import earliest_unready_entry, partition_watermark, prune_runs, unheard_partitions
from monitor.store.db import make_engine, make_session_factory
from monitor.store.migrate import upgrade
from monitor.store.models import Alert, AnalysisRun, ConsumerOffset, SegmentState, Turn, utcnow
from monitor.store.writes import load_offsets, register_partitions, save_offsets
from tests.analysis_data import REFERENCE, assert_same_states, s1_traffic, write, write_records
from tests.helpers import api_key, read_topic, wait_for


@pytest.fixture
def sessions(migrated_url: str):
    engine = make_engine(migrated_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def traffic() -> list:
    return s1_traffic()


def analyzer_settings(topic_settings, url: str, **overrides):
    values = {"analyze_reference_labels": REFERENCE, "analyze_drift_rows": 150, "analyze_window_minutes": 10.0,
              "database_url": url, "flags_topic": f"flags-{uuid.uuid4().hex[:8]}"}
    values.update(overrides)
    return topic_settings(**values)


def alerts(sessions) -> list[Alert]:
    with sessions() as session:
        return list(session.scalars(select(Alert).order_by(Alert.key)))


def test_length_hacking_is_flagged_persisted_published_and_served(traffic, sessions, migrated_url, topic_settings):
    write(sessions, traffic)
    settings = analyzer_settings(topic_settings, migrated_url)
    registry = CollectorRegistry()
    analyzer = Analyzer(settings, sessions, metrics=Metrics(registry))
    summary = analyzer.run_once()

    assert len(summary.fitted) == 5 and summary.opened >= 1 and summary.publish_error is None
    stored = alerts(sessions)
    hacked = [a for a in stored if a.detector == "cusum" and a.direction == "down" and a.state == "firing"]
    assert hacked and {a.mode for a in hacked} == {"verbosity"}
    assert all(a.published_state == a.state for a in stored)
    assert registry.get_sample_value("monitor_flags_published_total", {"state": "firing"}) == len(
        [a for a in stored if a.state == "firing"])
    firing_series = sum(registry.get_sample_value("monitor_alerts_firing", {"segment": a.segment,
                                                                            "detector": a.detector,
                                                                            "mode": a.mode}) or 0
                        for a in {(a.segment, a.detector, a.mode): a for a in hacked}.values())
    assert firing_series >= 1
    assert registry.get_sample_value("monitor_analyze_runs_total", {"outcome": "ok"}) == 1

    published = read_topic(settings, settings.flags_topic, len(stored))
    flags = [parse_flag(json.dumps(message).encode()) for message in published]
    assert {f.alert_key for f in flags} == {a.key for a in stored}
    assert all(f.mode == "verbosity" for f in flags if f.alert_key in {a.key for a in hacked})

    # A second run over the same store re-detects the same episodes: nothing new, nothing re-sent.
    again = analyzer.run_once()
    assert again.opened == 0 and again.published == 0 and again.fitted == []
    assert [a.key for a in alerts(sessions)] == [a.key for a in stored]

    engine = make_engine(migrated_url)
    api = ApiServer(create_app(AppContext(settings, engine, sessions, HealthState(), registry,
                                          ProducerRewardScorer())), "127.0.0.1", 0)
    api.start()
    try:
        with httpx.Client(base_url=api.url, timeout=10, headers=api_key(migrated_url)) as http:
            listed = http.get("/v1/alerts", params={"state": "firing"}).json()["alerts"]
            assert {a["key"] for a in listed} == {a.key for a in stored if a.state == "firing"}
            first = next(a for a in listed if a["key"] == hacked[0].key)
            assert first["mode"] == "verbosity" and first["published"] is True
            assert first["evidence"]["attribution"]["by_mode"]["verbosity"] < 0
            assert first["evidence"]["top_examples"]
            assert http.get("/v1/alerts", params={"state": "nonsense"}).status_code == 422

            segments = http.get("/v1/segments").json()
            by_name = {s["segment"]: s for s in segments["segments"]}
            diverging = by_name[hacked[0].segment]
            assert diverging["status"] == "diverging" and "verbosity" in diverging["modes"]
            assert diverging["estimated_satisfaction"] > diverging["realised_satisfaction"]
            assert diverging["gap_ci95"][0] < diverging["gap"] < diverging["gap_ci95"][1] < 0
            low, high = diverging["estimated_satisfaction_ci95"]
            assert low < diverging["estimated_satisfaction"] < high
            low, high = diverging["auc_ci95"]
            assert 0 <= low < diverging["auc"] < high <= 1
            assert first["evidence"]["window"]["gap_ci95"][1] < 0
            assert diverging["reward_model"] == "producer@assistant-2026-11-20"
            assert diverging["reward_model_changes"][0]["identity"] == diverging["reward_model"]

            # Per-sample divergence is stored per turn and served with the conversation.
            example = first["evidence"]["top_examples"][0]
            turns = http.get(f"/v1/conversations/{example['conversation_id']}").json()["turns"]
            served = next(t for t in turns if t["turn"] == example["turn"])
            assert served["divergence"] is not None and served["divergence"] > 0

            drift = http.get("/v1/reports/drift").json()
            # Length hacking moves the length signals away from the reference: the report says so.
            assert "length_tokens" in drift["report"]["drifted_columns"]
            page = http.get("/v1/reports/drift", params={"format": "html"})
            assert page.headers["content-type"].startswith("text/html") and "length_tokens" in page.text
    finally:
        api.stop()
        engine.dispose()


def test_unpublished_alerts_are_sent_once_the_broker_is_back(traffic, sessions, migrated_url, topic_settings):
    write(sessions, traffic)
    down = analyzer_settings(topic_settings, migrated_url, kafka_bootstrap=f"127.0.0.1:{free_port()}",
                             analyze_drift_rows=0)
    summary = Analyzer(down, sessions).run_once()
    assert summary.opened >= 1 and summary.published == 0 and "flags topic" in summary.publish_error
    assert all(a.published_state is None for a in alerts(sessions))

    up = analyzer_settings(topic_settings, migrated_url, analyze_drift_rows=0)
    retry = Analyzer(up, sessions).run_once()
    assert retry.opened == 0 and retry.published == len(alerts(sessions))
    assert len(read_topic(up, up.flags_topic, retry.published)) == retry.published


def test_alerts_do_not_depend_on_how_many_workers_wrote_the_rows_or_in_what_order(
        traffic, migrated_url, tmp_path, topic_settings):
    """Two 'workers' (split by conversation, as Kafka partitions would) writing in reverse batch
    order give the same alerts as one worker writing in order."""
    results = []
    for layout in ("one worker", "two workers"):
        url = migrated_url if layout == "one worker" else f"sqlite:///{tmp_path / 'two.db'}"
        upgrade(url)
        engine = make_engine(url)
        sessions = make_session_factory(engine)
        if layout == "one worker":
            write(sessions, traffic)
        else:
            workers = [[m for m in traffic if zlib.crc32(m.key.encode()) % 2 == w] for w in (0, 1)]
            for worker in workers:
                chunks = [worker[i:i + 700] for i in range(0, len(worker), 700)]
                for chunk in reversed(chunks):
                    write(sessions, chunk)
        Analyzer(analyzer_settings(topic_settings, url, analyze_drift_rows=0), sessions).run_once(publish=False)
        results.append([(a.key, a.state, a.mode) for a in alerts(sessions)])
        engine.dispose()
    assert results[0] and results[0] == results[1]


def test_a_from_scratch_recompute_gives_the_same_alerts_under_the_same_keys(traffic, sessions, migrated_url,
                                                                           topic_settings):
    write(sessions, traffic)
    settings = analyzer_settings(topic_settings, migrated_url, analyze_drift_rows=0)
    analyzer = Analyzer(settings, sessions)
    analyzer.run_once(publish=False)
    before = [(a.key, a.state, a.started_at, a.resolved_at, a.mode) for a in alerts(sessions)]
    assert before
    with sessions.begin() as session:
        # As if written before the analyzer existed: no signals, no prompt risk, no state.
        session.execute(update(Turn).values(sig_length_tokens=None, prompt_harmful=None, divergence=None))
    assert analyzer.recompute() == 5
    with sessions() as session:
        assert session.scalars(select(SegmentState)).first() is None
    summary = analyzer.run_once(publish=False)
    assert summary.opened == 0 and len(summary.fitted) == 5
    assert [(a.key, a.state, a.started_at, a.resolved_at, a.mode) for a in alerts(sessions)] == before


def test_an_empty_store_gives_an_empty_run_and_the_api_says_why(sessions, migrated_url, topic_settings):
    settings = analyzer_settings(topic_settings, migrated_url, analyze_drift_interval_seconds=900)
    engine = make_engine(migrated_url)
    api = ApiServer(create_app(AppContext(settings, engine, sessions, HealthState(), CollectorRegistry(),
                                          ProducerRewardScorer())), "127.0.0.1", 0)
    api.start()
    headers = api_key(migrated_url, "viewer")
    try:
        before = httpx.get(f"{api.url}/v1/reports/drift", timeout=10, headers=headers)
        assert before.status_code == 404 and "no analysis has run yet" in before.json()["error"]["message"]
        summary = Analyzer(settings, sessions).run_once()
        assert (summary.turns, summary.opened, summary.drift) == (0, 0, None)
        assert "not enough data" in summary.report()
        segments = httpx.get(f"{api.url}/v1/segments", timeout=10, headers=headers).json()
        assert all(s["status"] == "warming_up" and s["reference_labels_needed"] == REFERENCE
                   for s in segments["segments"])
        missing = httpx.get(f"{api.url}/v1/reports/drift", timeout=10, headers=headers)
        message = missing.json()["error"]["message"]
        assert missing.status_code == 404 and "no analysis has run yet" not in message  # a run, without a report
        assert f"the latest analyzer run (#{segments['run']['id']}," in message
        assert "lacked a fitted reference window (every segment is warming up; the nearest needs " \
            f"{REFERENCE} more rated turns)" in message
        assert "and 30 turns in the current window (it held 0)" in message
        assert "rebuild it at most every 900 s" in message
        assert httpx.get(f"{api.url}/v1/alerts", timeout=10, headers=headers).json() == {"alerts": []}
    finally:
        api.stop()
        engine.dispose()


def test_config_defaults_match_the_engine_defaults(topic_settings) -> None:
    settings = topic_settings()
    config = AnalysisConfig.from_settings(settings)
    assert config.reference_labels == AnalysisConfig().reference_labels
    assert config.false_alarm_labels == AnalysisConfig().false_alarm_labels


def test_old_runs_and_old_report_pages_are_pruned(sessions) -> None:
    with sessions.begin() as session:
        for n in range(6):
            session.add(AnalysisRun(labelled=n, segments=[], drift_summary={"n": n}, drift_html=f"<html>{n}</html>"))
        session.flush()
        prune_runs(session, keep=4, reports_kept=2)
    with sessions() as session:
        runs = list(session.scalars(select(AnalysisRun).order_by(AnalysisRun.id)))
    assert [r.labelled for r in runs] == [2, 3, 4, 5]
    assert [r.drift_html is not None for r in runs] == [False, False, True, True]
    assert all(r.drift_summary for r in runs)  # summaries are small and stay


def pending(sessions) -> int:
    with sessions() as session:
        return len(list(session.scalars(select(Turn.id).where(Turn.sig_length_tokens.is_(None)))))


def test_the_deriver_keeps_up_with_new_turns_and_outlives_a_failed_pass(sessions, monkeypatch) -> None:
    simulator = TrafficSimulator(11)
    write(sessions, simulator.conversations(300))
    calls = {"n": 0}
    real = derive.derive_signals

    def failing_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the first pass (call 1 is the warm-up)
            raise RuntimeError("the classifier fell over")
        return real(*args, **kwargs)

    monkeypatch.setattr(derive, "derive_signals", failing_once)
    registry = CollectorRegistry()
    stop = threading.Event()
    deriver = SignalDeriver(sessions, stop, interval=0.2, chunk=64, metrics=Metrics(registry))
    deriver.start()
    try:
        wait_for(lambda: pending(sessions) == 0, timeout=60, interval=0.2, what="the first 300 turns derived")
        write(sessions, simulator.conversations(100))  # new traffic after it caught up
        wait_for(lambda: pending(sessions) == 0, timeout=60, interval=0.2, what="the next 100 derived")
    finally:
        stop.set()
        deriver.join(timeout=30)
    assert not deriver.is_alive()
    assert deriver.ready.is_set()
    assert calls["n"] >= 3  # the failed pass was retried
    with sessions() as session:
        total = len(list(session.scalars(select(Turn.id))))
    assert registry.get_sample_value("monitor_signals_derived_total") == total
    with pytest.raises(ValueError, match="interval"):
        SignalDeriver(sessions, stop, interval=0)


def test_signals_skip_a_turn_another_transaction_holds_and_take_it_on_the_next_pass(sessions) -> None:
    """Ingest's rating join holds a new turn's row: the deriver neither waits (that deadlocked with
    the join, which locks in another order) nor loops on it; its next pass derives it."""
    write(sessions, TrafficSimulator(13).conversations(12))
    with sessions() as session:
        held = session.scalars(select(Turn.id).order_by(Turn.id)).first()
    holder = sessions()
    try:
        holder.execute(update(Turn).where(Turn.id == held).values(rating_count=Turn.rating_count))
        if holder.get_bind().dialect.name == "postgresql":
            started = time.monotonic()
            fill_signals(sessions, chunk=500)  # returns, does not wait for the holder
            assert time.monotonic() - started < 30
            with sessions() as session:
                assert session.scalars(select(Turn.id).where(Turn.sig_length_tokens.is_(None))).all() == [held]
    finally:
        holder.rollback()
        holder.close()
    fill_signals(sessions, chunk=500)
    assert pending(sessions) == 0


def test_the_deriver_is_ready_once_its_classifiers_loaded_or_failed_to(sessions, monkeypatch) -> None:
    stop = threading.Event()
    stop.set()  # no passes: only the warm-up
    loaded = []
    monkeypatch.setattr(derive, "derive_signals", lambda rows: loaded.append(rows) or [])
    deriver = SignalDeriver(sessions, stop, interval=0.2)
    assert not deriver.ready.is_set()
    deriver.run()
    assert deriver.ready.is_set() and len(loaded) == 1

    def broken(rows):
        raise RuntimeError("no weights")

    monkeypatch.setattr(derive, "derive_signals", broken)
    failing = SignalDeriver(sessions, stop, interval=0.2)
    failing.run()  # logs, does not raise: the passes retry
    assert failing.ready.is_set()  # ingest never waits for a classifier that cannot load


def test_the_analyzer_thread_loads_the_drift_stack_and_redactor_before_its_first_run(
        sessions, migrated_url, topic_settings, monkeypatch) -> None:
    from monitor import redaction
    from monitor.analyze.runner import AnalyzerThread

    stop = threading.Event()
    stop.set()  # no runs: only the warm-up
    analyzer = Analyzer(analyzer_settings(topic_settings, migrated_url), sessions)
    thread = AnalyzerThread(analyzer, 60.0, stop)
    redaction._analyzer.cache_clear()
    thread.run()
    assert thread.ready.is_set()
    assert analyzer._drift.embedder is not None and analyzer._drift.embedder._model is not None
    assert redaction._analyzer.cache_info().currsize == 1

    def broken() -> None:
        raise RuntimeError("no evidently")

    failing = Analyzer(analyzer_settings(topic_settings, migrated_url), sessions)
    monkeypatch.setattr(failing, "warm_up", broken)
    thread = AnalyzerThread(failing, 60.0, stop)
    thread.run()  # logs, does not raise: the runs load what they need
    assert thread.ready.is_set()  # ingest never waits for a warm-up that cannot finish


def test_the_deriver_gives_way_while_ingest_is_behind_but_never_stops(sessions) -> None:
    write(sessions, TrafficSimulator(12).conversations(40))
    derive.derive_signals([("Can I freeze my card?", "Yes, in the app.", "cards")])  # classifiers loaded
    behind = threading.Event()
    behind.set()
    stop = threading.Event()
    deriver = SignalDeriver(sessions, stop, interval=0.2, chunk=16, defer_to=behind.is_set, max_defer=1.5)
    started = time.monotonic()
    deriver.start()
    try:
        time.sleep(0.8)
        assert pending(sessions) == 40  # ingest is behind: nothing derived yet
        # Still behind: one pass per max_defer seconds, so the work goes on, slowly.
        wait_for(lambda: pending(sessions) < 40, timeout=30, interval=0.05, what="a pass after max_defer")
        assert time.monotonic() - started >= 1.5
        left = pending(sessions)
        assert left > 0
        behind.clear()  # caught up: the rest follows at once
        wait_for(lambda: pending(sessions) == 0, timeout=60, interval=0.1, what="every turn derived")
    finally:
        stop.set()
        deriver.join(timeout=30)
    assert deriver.deferred_seconds >= 1.5


def test_a_run_that_does_not_derive_stops_before_the_first_rated_turn_without_signals(
        traffic, sessions, migrated_url, topic_settings) -> None:
    write(sessions, traffic)
    settings = analyzer_settings(topic_settings, migrated_url)
    analyzer = Analyzer(settings, sessions, derive=False)
    fill_signals(sessions, limit=len(traffic) // 4)  # the deriver is a quarter of the way through
    partial = analyzer.run_once(publish=False)
    assert partial.derived == 0 and "derive" not in partial.phases
    with sessions() as session:
        unready = earliest_unready_entry(session)
    assert unready is not None and partial.checkpoint is not None
    assert partial.checkpoint < unready.replace(tzinfo=partial.checkpoint.tzinfo) and partial.entered > 0

    fill_signals(sessions)  # the deriver catches up; the next run enters the rest
    rest = analyzer.run_once(publish=False)
    assert rest.derived == 0 and rest.entered > 0
    done = [(a.key, a.state, a.started_at) for a in alerts(sessions)]

    with sessions.begin() as session:  # the same traffic analysed by one run that derives
        session.execute(delete(Alert))
    Analyzer(settings, sessions).recompute()
    once = Analyzer(settings, sessions).run_once(publish=False)
    assert once.entered == partial.entered + rest.entered
    assert [(a.key, a.state, a.started_at) for a in alerts(sessions)] == done


def test_a_catch_up_in_pages_of_entry_time_gives_what_one_read_gives(traffic, sessions, migrated_url,
                                                                      topic_settings) -> None:
    write(sessions, traffic)
    settings = analyzer_settings(topic_settings, migrated_url)
    fill_signals(sessions)

    def outcome() -> tuple[list, dict, np.ndarray]:
        with sessions() as session:
            states = {row.segment: State.from_json(row.state) for row in session.scalars(select(SegmentState))}
            divergence = np.array([np.nan if value is None else value for _, value in
                                   sorted(session.execute(select(Turn.id, Turn.divergence)).all())])
        return [(a.key, a.state, a.started_at, a.resolved_at, a.mode) for a in alerts(sessions)], states, divergence

    paged = Analyzer(settings, sessions, entry_page=250).run_once(publish=False)
    assert paged.pages > 3 and paged.opened >= 1 and "pages" in paged.report()
    in_pages = outcome()

    with sessions.begin() as session:
        session.execute(delete(Alert))
        session.execute(update(Turn).values(divergence=None))
    Analyzer(settings, sessions).recompute()
    whole = Analyzer(settings, sessions).run_once(publish=False)
    assert whole.pages == 1 and whole.entered == paged.entered and whole.opened == paged.opened
    # The same alerts and states; the divergence moments and so the scores only up to float
    # rounding (their sums are added in another order).
    again = outcome()
    assert again[0] == in_pages[0]
    assert_same_states(again[1], in_pages[1])
    assert np.allclose(again[2], in_pages[2], rtol=1e-9, equal_nan=True) and np.isfinite(again[2]).any()
    with pytest.raises(ValueError, match="entry_page"):
        Analyzer(settings, sessions, entry_page=0)


def write_partitioned(sessions, messages, lagging: int | None = None, hold_after: float | None = None) -> list:
    """Write ``messages`` as ingest would from two partitions per topic (by conversation), offsets and
    event times included; the ones of partition ``lagging`` past ``hold_after`` seconds of event time
    are returned instead of written (a partition that ingest has not caught up on)."""
    held, start = [], None
    by_partition: dict[tuple[str, int], list] = {}
    for message in messages:
        partition = zlib.crc32(message.key.encode()) % 2
        ts = json.loads(message.value)["ts"]
        start = start or ts
        if lagging == partition and hold_after is not None and \
                datetime.fromisoformat(ts) - datetime.fromisoformat(start) > timedelta(seconds=hold_after):
            held.append(message)
            continue
        by_partition.setdefault((message.kind + "s", partition), []).append(message)
    for (topic, partition), batch in by_partition.items():
        write_at(sessions, topic, partition, batch)
    return held


def write_at(sessions, topic: str, partition: int, messages: list, first_offset: int = 0) -> None:
    records = [KafkaRecord(topic, partition, first_offset + i, m.key.encode(), m.value)
               for i, m in enumerate(messages)]
    write_records(sessions, records, group_id="monitor", next_offsets={(topic, partition): first_offset + len(records)})


def test_a_partition_that_lags_holds_the_checkpoint_back_and_none_of_its_ratings_is_skipped(
        traffic, sessions, migrated_url, topic_settings) -> None:
    settings = analyzer_settings(topic_settings, migrated_url, consumer_group="monitor",
                                 conversations_topic="conversations", ratings_topic="ratings")
    held = write_partitioned(sessions, traffic, lagging=1, hold_after=400.0)
    assert 100 < len(held) < len(traffic) // 2
    analyzer = Analyzer(settings, sessions)
    early = analyzer.run_once(publish=False)
    with sessions() as session:
        lagging_at = session.scalar(select(ConsumerOffset.event_time).where(ConsumerOffset.partition == 1,
                                                                            ConsumerOffset.topic == "conversations"))
    assert early.checkpoint is not None and early.checkpoint <= lagging_at.replace(tzinfo=early.checkpoint.tzinfo)

    # Partition 1 catches up; the next run enters its rated turns too: as many as one run over
    # everything written in order.
    for topic in ("conversations", "ratings"):
        write_at(sessions, topic, 1, [m for m in held if m.kind + "s" == topic], first_offset=10**6)
    late = analyzer.run_once(publish=False)
    caught_up = (early.entered + late.entered, [(a.key, a.state, a.started_at) for a in alerts(sessions)])
    with sessions.begin() as session:
        session.execute(delete(Alert))
    analyzer.recompute()
    whole = analyzer.run_once(publish=False)
    assert caught_up == (whole.entered, [(a.key, a.state, a.started_at) for a in alerts(sessions)])


def test_a_partition_assigned_but_not_heard_from_holds_the_checkpoint(
        traffic, sessions, migrated_url, topic_settings) -> None:
    """At start-up the first batches may come from some partitions only: the checkpoint must not
    pass the ratings still waiting in the others (CI once lost a whole scenario's alert to this)."""
    settings = analyzer_settings(topic_settings, migrated_url, consumer_group="monitor",
                                 conversations_topic="conversations", ratings_topic="ratings")
    assigned = [(topic, partition) for topic in ("conversations", "ratings") for partition in (0, 1)]
    with sessions.begin() as session:  # what the ingest's rebalance listener does on assignment
        register_partitions(session, "monitor", assigned)
        assert load_offsets(session, "monitor", ["conversations", "ratings"]) == {}  # nothing to seek to
    by_partition: dict[tuple[str, int], list] = {}
    for message in traffic:
        by_partition.setdefault((message.kind + "s", zlib.crc32(message.key.encode()) % 2), []).append(message)
    for topic in ("conversations", "ratings"):
        write_at(sessions, topic, 0, by_partition[(topic, 0)])
    analyzer = Analyzer(settings, sessions)
    held = analyzer.run_once(publish=False)
    assert held.entered == 0 and held.checkpoint is None
    with sessions() as session:
        assert unheard_partitions(session, "monitor", ["conversations", "ratings"], idle_seconds=300) == [
            ("conversations", 1), ("ratings", 1)]
        # Once the heard partitions stored something well after it was assigned, an empty one stops holding.
        assert unheard_partitions(session, "monitor", ["conversations"], idle_seconds=0) == []

    for topic in ("conversations", "ratings"):
        write_at(sessions, topic, 1, by_partition[(topic, 1)])
    caught_up = analyzer.run_once(publish=False)
    alerts_caught_up = [(a.key, a.state, a.started_at) for a in alerts(sessions)]
    with sessions.begin() as session:
        session.execute(delete(Alert))
    analyzer.recompute()
    whole = analyzer.run_once(publish=False)
    assert caught_up.entered == whole.entered > 0
    assert alerts_caught_up == [(a.key, a.state, a.started_at) for a in alerts(sessions)]


def test_partition_watermark_takes_the_lowest_active_partition_and_never_moves_back(sessions) -> None:
    base = datetime(2026, 11, 1, tzinfo=UTC)
    with sessions.begin() as session:
        save_offsets(session, "g", {("t", 0): 10, ("t", 1): 10}, {("t", 0): base + timedelta(hours=2),
                                                                    ("t", 1): base + timedelta(hours=1)})
        save_offsets(session, "g", {("t", 1): 20}, {("t", 1): base})  # an older event: no step back
        assert partition_watermark(session, "g", "t", idle_seconds=300) == base + timedelta(hours=1)
        assert partition_watermark(session, "other", "t", idle_seconds=300) is None
        session.execute(update(ConsumerOffset).where(ConsumerOffset.partition == 1)
                        .values(updated_at=utcnow() - timedelta(minutes=10)))  # partition 1 went idle
        save_offsets(session, "g", {("t", 0): 30}, {("t", 0): base + timedelta(hours=3)})
        assert partition_watermark(session, "g", "t", idle_seconds=300) == base + timedelta(hours=3)


def test_signals_are_derived_once_off_the_ingest_path_and_the_producers_risk_wins(sessions) -> None:
    messages = TrafficSimulator(5, risk_metadata_rate=0.5).conversations(300)
    write(sessions, messages)
    with sessions() as session:
        stored = list(session.scalars(select(Turn)))
    assert all(t.sig_length_tokens is None for t in stored)  # ingest leaves them to the analyzer
    from_producer = {t.event_id: t.prompt_harmful for t in stored if t.prompt_risk_source == "producer"}
    assert 0 < len(from_producer) < len(stored)
    assert all(t.prompt_harmful is None for t in stored if t.prompt_risk_source is None)

    assert fill_signals(sessions, chunk=64) == len(stored)
    assert fill_signals(sessions) == 0  # once per turn
    with sessions() as session:
        filled = list(session.scalars(select(Turn)))
    assert all(t.sig_length_tokens > 0 and t.prompt_harmful is not None for t in filled)
    assert {t.event_id: t.prompt_harmful for t in filled if t.prompt_risk_source == "producer"} == from_producer
    classified = [t for t in filled if t.prompt_risk_source == "classifier"]
    assert len(classified) == len(stored) - len(from_producer)
    flattering = next(t for t in filled if t.response.startswith("Great question!"))
    assert flattering.sig_sycophancy >= 1
