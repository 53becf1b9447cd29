"""Relabeling cycles over real HTTP on SQLite and PostgreSQL: the minimal body, idempotent retries
(also concurrent ones), pairs from near-identical prompts (real MiniLM) and from candidate
responses, pairs that contrast a mode beside control pairs, pairwise labels through the review
queue, progress, cancel, and bad input."""

from __future__ import annotations

import threading
from collections import Counter

import httpx
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select

from monitor.api.app import create_app
from monitor.api.context import AppContext
from monitor.api.server import ApiServer
from monitor.health import HealthState
from monitor.ingest.records import KafkaRecord
from monitor.relabel.contrast import contrast
from monitor.scoring.base import ProducerRewardScorer
from monitor.signals import SIGNAL_NAMES, response_signals
from monitor.sim.traffic import TrafficSimulator
from monitor.store.db import make_engine, make_session_factory
from monitor.store.models import RelabelCycle, RelabelPair, ReviewItem, Turn
from tests.analysis_data import write, write_records
from tests.factories import conversation, wire
from tests.helpers import api_key


@pytest.fixture
def relabel(migrated_url: str, topic_settings):
    engine = make_engine(migrated_url)
    sessions = make_session_factory(engine)
    write(sessions, TrafficSimulator(11, rating_rate=0.3).conversations(500))
    server = ApiServer(create_app(AppContext(topic_settings(database_url=migrated_url), engine, sessions,
                                             HealthState(), CollectorRegistry(), ProducerRewardScorer())),
                       "127.0.0.1", 0)
    server.start()
    yield server.url, sessions
    server.stop()
    engine.dispose()


MINIMAL = {"segments": ["investments"], "size": 12, "strategy": "divergence"}


def test_a_minimal_cycle_queues_pairs_and_a_retry_returns_it(relabel, migrated_url: str) -> None:
    url, sessions = relabel
    admin, annotator = api_key(migrated_url, "admin"), api_key(migrated_url, "annotator")
    with httpx.Client(base_url=url, timeout=300) as http:
        first = http.post("/v1/relabel-cycles", json=MINIMAL, headers={**admin, "Idempotency-Key": "k-1"})
        assert first.status_code == 201, first.text
        cycle = first.json()
        assert cycle["status"] == "collecting" and cycle["progress"]["pairs"] == 12
        assert cycle["pairs_formed_by"] == {"similar_prompts": 12}
        assert cycle["request"]["strategy"] == "divergence" and cycle["request"]["deadline"] is None
        retry = http.post("/v1/relabel-cycles", json=MINIMAL, headers={**admin, "Idempotency-Key": "k-1"})
        assert retry.status_code == 200 and retry.json()["id"] == cycle["id"]
        clash = http.post("/v1/relabel-cycles", json={**MINIMAL, "size": 13},
                          headers={**admin, "Idempotency-Key": "k-1"})
        assert clash.status_code == 409 and "another request" in clash.json()["error"]["message"]

        item = http.post("/v1/review/next", headers=annotator).json()
        assert item["task"] == "pairwise" and [c["label"] for c in item["candidates"]] == ["A", "B"]
        assert http.post(f"/v1/review/items/{item['item_id']}/annotations",
                         json={"lease_id": item["lease_id"], "labels": {"preference": "B"}},
                         headers=annotator).status_code == 201
        shown = http.get(f"/v1/relabel-cycles/{cycle['id']}", headers=api_key(migrated_url, "viewer")).json()
        assert shown["progress"] == {"pairs": 12, "labelled": 1, "labels": 1}
        assert shown["preferences"] == {"A": 0, "B": 1, "tie": 0}
        assert [c["id"] for c in http.get("/v1/relabel-cycles", headers=admin).json()["cycles"]] == [cycle["id"]]

        cancelled = http.post(f"/v1/relabel-cycles/{cycle['id']}/cancel", headers=admin)
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        again = http.post(f"/v1/relabel-cycles/{cycle['id']}/cancel", headers=admin)
        assert again.status_code == 409 and "cancelled" in again.json()["error"]["message"]
        assert http.post("/v1/review/next", headers=annotator).status_code == 204  # its pairs left the queue
        assert http.get("/v1/relabel-cycles/999", headers=admin).status_code == 404
    with sessions() as session:
        pairs = list(session.scalars(select(RelabelPair)))
        items = {i.id: i for i in session.scalars(select(ReviewItem))}
    assert len(pairs) == 12 and all(p.turn_b is not None and p.similarity >= 0.9 for p in pairs)
    assert all(items[p.item_id].arm == "relabel" and items[p.item_id].cycle_id == cycle["id"] for p in pairs)
    # Each pair's two responses are different answers, shown as A and B.
    assert all(items[p.item_id].candidates[0]["response"] != items[p.item_id].candidates[1]["response"]
               for p in pairs)


def test_candidate_responses_make_pairs(relabel, migrated_url: str) -> None:
    url, sessions = relabel
    records = [KafkaRecord("conversations", 3, i, f"cand-{i}".encode(), wire(conversation(
        f"cand-{i}", domain="payments", ts="2026-11-29T10:00:00Z", reward=0.5 + i / 10,
        candidates=[{"content": f"A different answer number {i}.", "reward": 0.1}]))) for i in range(3)]
    write_records(sessions, records)
    response = httpx.post(f"{url}/v1/relabel-cycles", json={"segments": ["payments/*/*"], "size": 3,
                                                            "strategy": "uncertainty",
                                                            "since": "2026-11-29T09:00:00Z"},
                          headers=api_key(migrated_url, "admin"), timeout=300)
    assert response.status_code == 201, response.text
    assert response.json()["pairs_formed_by"] == {"candidates": 3}
    with sessions() as session:
        pairs = list(session.scalars(select(RelabelPair).order_by(RelabelPair.id)))
    # uncertainty: the pairs the RM scores most nearly equal first (0.5 vs 0.1 before 0.7 vs 0.1).
    assert [round(p.reward_a - p.reward_b, 2) for p in pairs] == [0.4, 0.5, 0.6]

    # Humans prefer the candidate the RM scored lower (twice) and call the third a tie: the audit
    # shows the RM against them on every decisive pair.
    annotator = api_key(migrated_url, "annotator")
    with sessions() as session:
        sides = {i.id: {c["label"]: c["source"] for c in i.candidates} for i in session.scalars(select(ReviewItem))}
    for n in range(3):
        item = httpx.post(f"{url}/v1/review/next", headers=annotator, timeout=60).json()
        candidate = next(label for label, source in sides[item["item_id"]].items() if source == "candidate:0")
        answer = "tie" if n == 2 else candidate
        assert httpx.post(f"{url}/v1/review/items/{item['item_id']}/annotations", headers=annotator, timeout=60,
                          json={"lease_id": item["lease_id"], "labels": {"preference": answer}}).status_code == 201
    cycle = httpx.get(f"{url}/v1/relabel-cycles/{response.json()['id']}", headers=api_key(migrated_url, "viewer"),
                      timeout=60).json()
    assert cycle["status"] == "complete" and cycle["progress"]["labelled"] == 3
    audit = cycle["rm_audit"]
    assert audit["overall"] == {"pairs": 2, "agree": 0, "ties": 1, "accuracy": 0.0, "ci95": audit["overall"]["ci95"]}
    assert audit["overall"]["ci95"][0] == 0.0 and 0.5 < audit["overall"]["ci95"][1] < 0.9  # Wilson, n = 2
    assert audit["segments"]["payments/*/*"]["pairs"] == 2


@pytest.mark.parametrize(("body", "status", "why"), [
    ({"segments": ["mortgages"], "size": 5}, 422, "unknown segment"),
    ({"segments": ["investments"], "size": 5, "mode": "rudeness"}, 422, "unknown mode"),
    ({"segments": ["investments"], "size": 0}, 422, "size"),
    ({"segments": ["investments"], "size": 100_000}, 422, "size"),
    ({"size": 5}, 422, "segments or an alert_id"),
    ({"alert_id": 999, "size": 5}, 404, "alert 999 not found"),
    ({"segments": ["investments"], "size": 5, "since": "2001-01-01T00:00:00Z", "until": "2001-01-02T00:00:00Z"},
     422, "no scored turns"),
    ({"segments": ["investments"], "size": 5, "strategy": "loudest"}, 422, "strategy"),
    ({"segments": ["investments"], "size": 5, "colour": "red"}, 422, "colour"),
])
def test_bad_requests_get_clear_errors_and_write_nothing(relabel, migrated_url: str, body: dict, status: int,
                                                         why: str) -> None:
    url, sessions = relabel
    response = httpx.post(f"{url}/v1/relabel-cycles", json=body, headers=api_key(migrated_url, "admin"), timeout=60)
    assert response.status_code == status, response.text
    assert why in response.json()["error"]["message"]
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(RelabelCycle)) == 0


def test_concurrent_retries_with_one_key_open_one_cycle(relabel, migrated_url: str) -> None:
    url, sessions = relabel
    admin = {**api_key(migrated_url, "admin"), "Idempotency-Key": "same-key"}
    httpx.post(f"{url}/v1/relabel-cycles", json={**MINIMAL, "size": 1}, headers={**admin, "Idempotency-Key": "warm"},
               timeout=300)  # loads MiniLM, so the racers below meet in the store, not in the model load
    results: list[httpx.Response] = []
    barrier = threading.Barrier(4)

    def post() -> None:
        barrier.wait()
        results.append(httpx.post(f"{url}/v1/relabel-cycles", json=MINIMAL, headers=admin, timeout=300))

    threads = [threading.Thread(target=post) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert sorted(r.status_code for r in results) == [200, 200, 200, 201], [r.text for r in results]
    assert len({r.json()["id"] for r in results}) == 1
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(RelabelCycle)
                              .where(RelabelCycle.idempotency_key == "same-key")) == 1
        assert session.scalar(select(func.count()).select_from(RelabelPair)) == 13  # 1 + 12, none twice


def test_a_cycle_with_a_mode_pairs_answers_that_contrast_it_and_keeps_control_pairs(relabel, migrated_url: str) -> None:
    url, sessions = relabel
    body = {"segments": ["investments"], "size": 16, "mode": "verbosity", "design": "dense", "pairs_per_response": 4,
            "control_share": 0.25}
    response = httpx.post(f"{url}/v1/relabel-cycles", json=body, headers=api_key(migrated_url, "admin"), timeout=300)
    assert response.status_code == 201, response.text
    cycle = response.json()
    assert cycle["progress"]["pairs"] == 16 and cycle["request"]["control_share"] == 0.25
    with sessions() as session:
        rows = list(session.execute(select(RelabelPair, ReviewItem.mode, ReviewItem.priority)
                                    .join(ReviewItem, ReviewItem.id == RelabelPair.item_id)))
        # Not derived yet (no analyzer ran): the cycle read them from the text, and so does the test.
        signals = {t.id: tuple(getattr(response_signals(t.prompt, t.response, domain=t.domain), n)
                               for n in SIGNAL_NAMES) for t in session.scalars(select(Turn))}
    contrasting = [(p, prio) for p, mode, prio in rows if mode == "verbosity"]
    control = [(p, prio) for p, mode, prio in rows if mode is None]
    assert len(contrasting) == 12 and len(control) == 4
    # One answer clearly longer than the other in every contrast pair, in no control pair.
    assert all(contrast(signals[p.turn_a], signals[p.turn_b], "verbosity") != 0 for p, _ in contrasting)
    assert all(contrast(signals[p.turn_a], signals[p.turn_b], "verbosity") == 0 for p, _ in control)
    # Families: a response of a contrast pair meets several rivals.
    seen = Counter(t for p, _ in contrasting for t in (p.turn_a, p.turn_b))
    assert max(seen.values()) >= 3
    # Control pairs are spread through the queue, not left to the end.
    by_priority = sorted(rows, key=lambda row: -row[2])
    assert any(mode is None for _, mode, _ in by_priority[:8])
