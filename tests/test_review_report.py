"""What the labels say, end to end: simulated traffic through the store and the analyzer, the
sampler queues turns, a simulated annotator pool (known noise, judging the simulator's hidden
quality) labels them through the queue, and the report's verdict names the right cause: the RM on
S1 (length hacking), the users on S8 (users rate lower than the answers deserve)."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from monitor.analyze.runner import Analyzer
from monitor.analyze.segments import SegmentScheme
from monitor.api.app import create_app
from monitor.api.context import AppContext
from monitor.api.server import ApiServer
from monitor.health import HealthState
from monitor.metrics import Metrics
from monitor.review.estimate import VERDICTS
from monitor.review.queue import ReviewQueue
from monitor.review.report import build_report
from monitor.review.rubric import load_rubric
from monitor.scoring.base import ProducerRewardScorer
from monitor.sim.annotators import AnnotatorPool
from monitor.sim.scenarios import Scenario
from monitor.sim.traffic import SimulatedMessage, TrafficSimulator
from monitor.sim.truth import GroundTruth
from monitor.store.db import make_engine, make_session_factory
from monitor.store.models import Alert, ReviewItem
from tests.analysis_data import REFERENCE, write
from tests.helpers import api_key

ONSET_S = 420.0


def traffic(name: str, seed: int) -> list[SimulatedMessage]:
    simulator = TrafficSimulator(seed, rating_rate=0.5, scenario=Scenario(name, onset_s=ONSET_S))
    return list(simulator.messages(10.0, ONSET_S + 600))


def truths(messages: list[SimulatedMessage]) -> dict[tuple[str, int], GroundTruth]:
    out = {}
    for message in messages:
        if message.truth is not None:
            event = json.loads(message.value)
            out[(event["conversation_id"], event["turn"])] = message.truth
    return out


def label_everything(queue: ReviewQueue, sessions, truth: dict[tuple[str, int], GroundTruth],
                     pool: AnnotatorPool, seed: int) -> int:
    """Every annotator of the pool asks for work in random order until the queue has none left."""
    rng = np.random.default_rng(seed)
    with sessions() as session:
        where = {item.id: (item.conversation_id, item.turn) for item in session.scalars(select(ReviewItem))}
    active = list(pool.annotators)
    labelled = 0
    while active:
        annotator = active[int(rng.integers(len(active)))]
        item = queue.next(annotator.name)
        if item is None:
            active.remove(annotator)
            continue
        queue.submit(item["item_id"], annotator.name, item["lease_id"],
                     annotator.label(truth[where[item["item_id"]]], rng), None)
        labelled += 1
    return labelled


def run(name: str, migrated_url: str, topic_settings, seed: int = 5):
    engine = make_engine(migrated_url)
    sessions = make_session_factory(engine)
    messages = traffic(name, seed)
    write(sessions, messages)
    settings = topic_settings(database_url=migrated_url, analyze_reference_labels=REFERENCE,
                              analyze_drift_rows=0, analyze_window_minutes=10.0,
                              flags_topic=f"flags-{uuid.uuid4().hex[:8]}", review_period_minutes=1.0,
                              review_daily_budget=24 * 1440, review_control_share=0.5,
                              review_targeted_per_alert=6, review_overlap_share=0.3)
    summary = Analyzer(settings, sessions, review_seed=seed).run_once(publish=False)
    assert summary.review_error is None
    queue = ReviewQueue(sessions, SegmentScheme.from_settings(settings))
    pool = AnnotatorPool.build(6, seed=seed, careless={5: 0.6})
    assert label_everything(queue, sessions, truths(messages), pool, seed) > 200
    start = TrafficSimulator(seed).start
    return engine, sessions, settings, start + timedelta(seconds=ONSET_S)


def test_s1_humans_side_with_users_against_the_rm(migrated_url: str, topic_settings) -> None:
    engine, sessions, settings, onset = run("S1", migrated_url, topic_settings)
    try:
        server = ApiServer(create_app(AppContext(settings, engine, sessions, HealthState(), CollectorRegistry(),
                                                 ProducerRewardScorer())), "127.0.0.1", 0)
        server.start()
        try:
            viewer = api_key(migrated_url, "viewer")
            after = httpx.get(f"{server.url}/v1/review/report", params={"since": onset.isoformat()},
                              headers=viewer, timeout=120)
            before = httpx.get(f"{server.url}/v1/review/report", params={"until": onset.isoformat()},
                               headers=viewer, timeout=120)
            bad = httpx.get(f"{server.url}/v1/review/report", params={"since": onset.isoformat(),
                            "until": (onset - timedelta(hours=1)).isoformat()}, headers=viewer, timeout=30)
        finally:
            server.stop()
        assert bad.status_code == 422
        report = after.json()
        verdicts = {s["segment"]: s["verdict"] for s in report["segments"]}
        assert list(verdicts.values()).count("rm_misaligned") >= 3, report["segments"]
        assert set(verdicts.values()) <= {"rm_misaligned", "insufficient_data"}, report["segments"]
        for segment in report["segments"]:
            if segment["verdict"] == "rm_misaligned":
                assert segment["gap_human_rm"]["ci95"][1] < 0
                # Humans and users agree: their gap's interval holds 0.
                low, high = segment["gap_human_users"]["ci95"]
                assert low < 0.05 and high > -0.05
        with sessions() as session:
            hacked = {a.id for a in session.scalars(select(Alert)) if a.mode == "verbosity"}
        alerts = {a["alert_id"]: a["verdict"] for a in report["alerts"]}
        assert hacked & set(alerts) and all(alerts[a] == "rm_misaligned" for a in hacked & set(alerts)
                                            if alerts[a] != "insufficient_data")
        # Before the onset the RM was calibrated: no segment says otherwise.
        assert {s["verdict"] for s in before.json()["segments"]} <= {"aligned", "insufficient_data"}, before.text
        # The gauges: a run after the labels exports the report (last 7 days) and the queue's depth.
        registry = CollectorRegistry()
        Analyzer(settings, sessions, metrics=Metrics(registry)).run_once(publish=False)
        with sessions() as session:
            full = build_report(session, load_rubric(), draws=0)
        for segment in full["segments"]:
            shown = [v for v in VERDICTS if registry.get_sample_value(
                "monitor_review_verdict", {"segment": segment["segment"], "verdict": v}) == 1]
            assert shown == [segment["verdict"]]
            assert registry.get_sample_value("monitor_review_gap_human_rm_ratio", {"segment": segment["segment"]}) \
                == pytest.approx(segment["gap_human_rm"]["estimate"])
            assert registry.get_sample_value("monitor_review_gap_human_rm_bound_ratio",
                                             {"segment": segment["segment"], "bound": "upper"}) \
                == pytest.approx(segment["gap_human_rm"]["ci95"][1])
        assert registry.get_sample_value("monitor_review_queue_depth", {"arm": "control"}) == 0  # all labelled
        assert registry.get_sample_value("monitor_review_annotations") > 200
        assert registry.get_sample_value("monitor_review_agreement_alpha", {"item": "overall"}) \
            == pytest.approx(full["agreement"]["overall"]["alpha"])
        # Agreement on the overlapped items (flags need gold items: see the last test).
        assert report["agreement"]["overall"]["items"] >= 10 and report["agreement"]["overall"]["alpha"] > 0.3
        assert report["agreement"]["overall"]["ci95"] is not None
    finally:
        engine.dispose()


def test_s8_humans_side_with_the_rm_against_the_users(migrated_url: str, topic_settings) -> None:
    engine, sessions, settings, onset = run("S8", migrated_url, topic_settings, seed=6)
    try:
        with sessions() as session:
            report = build_report(session, load_rubric(), since=onset, draws=0)
        verdicts = [s["verdict"] for s in report["segments"]]
        assert verdicts.count("user_rating_bias") >= 3 and set(verdicts) <= {"user_rating_bias", "insufficient_data"}, \
            report["segments"]
        for segment in report["segments"]:
            if segment["verdict"] == "user_rating_bias":
                # Users a good deal further below the humans than the RM is (S8 takes 0.25 off ratings).
                assert segment["gap_human_users"]["ci95"][0] > 0
                assert segment["gap_human_users"]["estimate"] > 0.1 + abs(segment["gap_human_rm"]["estimate"])
    finally:
        engine.dispose()


@pytest.mark.parametrize("careless_share", [0.7])
def test_gold_items_flag_a_careless_annotator(careless_share: float, migrated_url: str, topic_settings) -> None:
    engine = make_engine(migrated_url)
    sessions = make_session_factory(engine)
    try:
        messages = traffic("S0", 7)[:800]
        write(sessions, messages)
        truth = truths(messages)
        settings = topic_settings(database_url=migrated_url)
        queue = ReviewQueue(sessions, SegmentScheme.from_settings(settings))
        pool = AnnotatorPool.build(5, seed=7, careless={4: careless_share})
        rng = np.random.default_rng(7)
        keys = sorted(truth)[:12]
        gold = {key: pool.annotators[0].label(truth[key], rng) | {"overall": int(round(1 + 4 * truth[key].quality))}
                for key in keys}
        assert queue.enqueue_conversations(sorted({c for c, _ in keys}), "admin", gold=gold, reviews_required=5) == 12
        label_everything(queue, sessions, truth, pool, 7)
        with sessions() as session:
            report = build_report(session, load_rubric(), draws=200)
        flags = {a["annotator"]: a["flagged"] for a in report["annotators"]}
        assert flags["sim-annotator-4"] is True
        assert sum(flags.values()) == 1
        assert report["segments"] == []  # gold items are not traffic samples
        assert report["agreement"]["overall"]["items"] == 12
    finally:
        engine.dispose()
