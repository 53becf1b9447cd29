"""A relabeling cycle's life after it opens, with real components (SQLite and PostgreSQL, the
session's Kafka-wire broker, a real HTTP receiver): it completes when every pair is labelled and
stores what it found; it expires at its deadline; its ``relabel_cycle/v1`` event reaches Kafka and
its webhook, signed, retried with backoff until delivered or given up; the policy opens one cycle
per firing alert, rate-limited, also when two keepers race (PostgreSQL)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select

from monitor.analyze.derive import fill_signals
from monitor.analyze.segments import SegmentScheme
from monitor.config import Settings
from monitor.errors import InvalidInput
from monitor.events import parse_relabel_cycle
from monitor.metrics import Metrics
from monitor.relabel.cycles import CycleRequest, CycleService
from monitor.relabel.keeper import CycleKeeper
from monitor.sim.traffic import TrafficSimulator
from monitor.store.db import make_engine, make_session_factory
from monitor.store.models import Alert, RelabelCycle, ReviewAnnotation, ReviewItem
from tests.analysis_data import write
from tests.helpers import read_topic

SECRET = "s3cret"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def store(migrated_url: str):
    engine = make_engine(migrated_url)
    sessions = make_session_factory(engine)
    write(sessions, TrafficSimulator(11, rating_rate=0.3).conversations(400))
    fill_signals(sessions)  # the modes a policy cycle's slice is filtered by
    yield sessions
    engine.dispose()


def label_all(sessions, cycle_id: int, answer: str = "A", limit: int | None = None) -> None:
    with sessions.begin() as session:
        items = list(session.scalars(select(ReviewItem).where(ReviewItem.cycle_id == cycle_id)
                                     .order_by(ReviewItem.id)))[:limit]
        for item in items:
            session.add(ReviewAnnotation(item_id=item.id, annotator="ann-1", rubric_version="t",
                                         labels={"preference": answer}))
            item.reviews_done, item.state = 1, "complete"


def open_cycle(sessions, clock, size: int = 4, **extra) -> int:
    service = CycleService(sessions, _scheme(), clock=clock, seed=0, embed=_fake_embed)
    cycle, _ = service.create(CycleRequest(segments=["investments"], size=size, **extra), "ops")
    return cycle["id"]


def _scheme() -> SegmentScheme:
    return SegmentScheme.from_settings(Settings())


def keeper(settings, sessions, clock, **extra) -> CycleKeeper:
    return CycleKeeper(settings, sessions, _scheme(), clock=clock, **extra)


def test_a_labelled_cycle_completes_stores_its_results_and_is_announced_on_kafka(store, topic_settings,
                                                                                 migrated_url) -> None:
    clock = Clock()
    settings = topic_settings(database_url=migrated_url)
    cycle_id = open_cycle(store, clock)
    metrics = Metrics(CollectorRegistry())
    keep = keeper(settings, store, clock, metrics=metrics)
    assert keep.run().ended == []  # nothing labelled yet
    label_all(store, cycle_id)
    kept = keep.run()
    assert kept.ended == [cycle_id] and kept.announced.published == [cycle_id]
    with store() as session:
        cycle = session.get(RelabelCycle, cycle_id)
        assert cycle.status == "complete" and cycle.event_published_at is not None
        results = cycle.results
    assert results["labels"] == 4 and results["rm_audit"]["overall"]["pairs"] + \
        results["rm_audit"]["overall"]["ties"] <= 4
    bt = results["bradley_terry"]
    assert bt["comparisons"] == 4 and len(bt["strengths"]) == bt["responses"] >= 4
    assert set(results["reference_accuracy"]["segments"]) == {"investments/*/*"}
    event = parse_relabel_cycle(json.dumps(read_topic(settings, settings.relabel_topic, 1)[0]).encode())
    assert event.cycle_id == cycle_id and event.status == "complete" and event.labelled == 4
    assert event.export == f"/v1/relabel-cycles/{cycle_id}/export" and event.preferences["A"] == 4
    assert keep.run().announced.published == []  # once
    exposition = metrics.registry.get_sample_value("monitor_relabel_cycles", {"status": "complete"})
    assert exposition == 1.0
    assert metrics.registry.get_sample_value("monitor_relabel_events_published_total") == 1.0


def test_a_cycle_past_its_deadline_expires_and_its_open_pairs_leave_the_queue(store, topic_settings,
                                                                             migrated_url) -> None:
    clock = Clock()
    cycle_id = open_cycle(store, clock, deadline=clock.now + timedelta(hours=1))
    label_all(store, cycle_id, "B", limit=1)
    keep = keeper(topic_settings(database_url=migrated_url), store, clock)
    assert keep.run(publish=False).ended == []
    clock.now += timedelta(hours=2)
    assert keep.run(publish=False).ended == [cycle_id]
    with store() as session:
        cycle = session.get(RelabelCycle, cycle_id)
        states = sorted(session.scalars(select(ReviewItem.state).where(ReviewItem.cycle_id == cycle_id)))
    assert cycle.status == "expired" and "1 of 4 pairs labelled" in cycle.detail
    assert states == ["cancelled", "cancelled", "cancelled", "complete"]
    assert cycle.results["labels"] == 1


def test_a_deadline_in_the_past_or_a_size_over_the_maximum_is_refused(store) -> None:
    clock = Clock()
    service = CycleService(store, _scheme(), clock=clock, max_size=10)
    with pytest.raises(InvalidInput, match="over the maximum of 10"):
        service.create(CycleRequest(segments=["investments"], size=11), "ops")
    with pytest.raises(InvalidInput, match="has passed"):
        service.create(CycleRequest(segments=["investments"], size=2, deadline=clock.now - timedelta(minutes=1)),
                       "ops")


class Receiver:
    """A webhook receiver on a free loopback port that fails ``failures`` times, then accepts."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[tuple[dict, bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.calls.append((dict(self.headers), body))
                status = 503 if len(outer.calls) <= outer.failures else 204
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_webhook_is_signed_retried_with_backoff_and_delivered(store, topic_settings, migrated_url) -> None:
    receiver = Receiver(failures=2)
    try:
        clock = Clock()
        settings = topic_settings(database_url=migrated_url, relabel_webhook_url=receiver.url,
                                  relabel_webhook_secret=SECRET, relabel_webhook_backoff_seconds=60)
        cycle_id = open_cycle(store, clock)
        label_all(store, cycle_id)
        keep = keeper(settings, store, clock)
        assert keep.run(publish=False).announced.retrying == [cycle_id]
        with store() as session:
            cycle = session.get(RelabelCycle, cycle_id)
            assert cycle.webhook_attempts == 1 and "HTTP 503" in cycle.webhook_error
            assert cycle.webhook_next_at == clock.now + timedelta(seconds=60)
        assert keep.run(publish=False).announced.retrying == []  # not due yet
        clock.now += timedelta(seconds=61)
        assert keep.run(publish=False).announced.retrying == [cycle_id]
        with store() as session:  # the wait doubled
            assert session.get(RelabelCycle, cycle_id).webhook_next_at == clock.now + timedelta(seconds=120)
        clock.now += timedelta(seconds=121)
        assert keep.run(publish=False).announced.delivered == [cycle_id]
        assert keep.run(publish=False).announced.delivered == []
    finally:
        receiver.close()
    assert len(receiver.calls) == 3
    headers, body = receiver.calls[-1]
    stamp = headers["X-Monitor-Timestamp"]
    expected = "sha256=" + hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert headers["X-Monitor-Signature"] == expected
    assert parse_relabel_cycle(body).cycle_id == cycle_id
    with store() as session:
        cycle = session.get(RelabelCycle, cycle_id)
        assert cycle.webhook_delivered_at is not None and cycle.webhook_error is None


def test_the_webhook_gives_up_after_its_attempts(store, topic_settings, migrated_url) -> None:
    receiver = Receiver(failures=100)
    try:
        clock = Clock()
        settings = topic_settings(database_url=migrated_url, relabel_webhook_url=receiver.url,
                                  relabel_webhook_secret=SECRET, relabel_webhook_attempts=2,
                                  relabel_webhook_backoff_seconds=1)
        cycle_id = open_cycle(store, clock)
        label_all(store, cycle_id)
        keep = keeper(settings, store, clock)
        keep.run(publish=False)
        clock.now += timedelta(seconds=5)
        assert keep.run(publish=False).announced.gave_up == [cycle_id]
        clock.now += timedelta(hours=5)
        keep.run(publish=False)
    finally:
        receiver.close()
    assert len(receiver.calls) == 2
    with store() as session:
        assert session.get(RelabelCycle, cycle_id).webhook_error.startswith("gave up after 2 tries: HTTP 503")


def firing_alert(sessions, key: str, segment: str = "investments/*/*", mode: str = "verbosity") -> int:
    with sessions.begin() as session:
        alert = Alert(key=key, segment=segment, detector="cusum", direction="down", mode=mode,
                      started_at=datetime.now(UTC), first_seen_at=datetime.now(UTC), state="firing", evidence={},
                      published_state=None)
        session.add(alert)
        session.flush()
        return alert.id


def test_the_policy_opens_one_cycle_per_alert_rate_limited(store, topic_settings, migrated_url) -> None:
    clock = Clock()
    first = firing_alert(store, "a-1")
    off = keeper(topic_settings(database_url=migrated_url), store, clock)
    assert off.run(publish=False).opened == []  # off by default
    settings = topic_settings(database_url=migrated_url, relabel_auto_enabled=True, relabel_auto_size=3,
                              relabel_auto_interval_hours=6, relabel_auto_max_per_day=2)
    keep = keeper(settings, store, clock, embed=_fake_embed)
    opened = keep.run(publish=False).opened
    assert len(opened) == 1
    with store() as session:
        cycle = session.get(RelabelCycle, opened[0])
        assert cycle.alert_id == first and cycle.created_by == "policy" and cycle.request["mode"] == "verbosity"
    # Same segment and mode within the interval: no second cycle; another segment: one (2 a day).
    firing_alert(store, "a-2")
    third = firing_alert(store, "a-3", segment="payments/*/*", mode="formatting")
    firing_alert(store, "a-4", segment="cards/*/*", mode="formatting")
    again = keep.run(publish=False).opened
    with store() as session:
        by_alert = {alert: cycle for alert, cycle in session.execute(select(RelabelCycle.alert_id, RelabelCycle.id))}
    assert again == [by_alert[third]] and len(by_alert) == 2  # the daily limit stops the fourth
    clock.now += timedelta(days=1, hours=1)
    assert len(keep.run(publish=False).opened) == 2  # a new day, past the interval


def test_two_keepers_racing_on_one_alert_open_one_cycle(store, topic_settings, migrated_url) -> None:
    firing_alert(store, "race")
    settings = topic_settings(database_url=migrated_url, relabel_auto_enabled=True, relabel_auto_size=3)
    keepers = [keeper(settings, store, Clock(), embed=_fake_embed) for _ in range(2)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(k: CycleKeeper) -> None:
        barrier.wait()
        try:
            k.policy.run()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in keepers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    with store() as session:
        assert session.scalar(select(func.count()).select_from(RelabelCycle)) == 1
        assert session.scalar(select(func.count()).select_from(ReviewItem)
                              .where(ReviewItem.cycle_id.is_not(None))) == 3


def _fake_embed(texts: list[str]) -> np.ndarray:
    """Prompts' embeddings by their text's hash bucket (tests of the policy need pairs, not MiniLM)."""
    vectors = np.zeros((len(texts), 8))
    for i, text in enumerate(texts):
        vectors[i, int(hashlib.sha256(text.encode()).hexdigest(), 16) % 8] = 1.0
    return vectors
