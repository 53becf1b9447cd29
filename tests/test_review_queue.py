"""The review queue over real HTTP on SQLite and PostgreSQL: enqueue, lease, annotate, skip, edit,
stats, the audit trail, bad input that writes nothing, and concurrent annotators on PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from importlib import resources

import httpx
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select

from monitor.api.app import create_app
from monitor.api.context import AppContext
from monitor.api.server import ApiServer
from monitor.health import HealthState
from monitor.ingest.records import KafkaRecord
from monitor.scoring.base import ProducerRewardScorer
from monitor.store.db import make_engine, make_session_factory
from monitor.store.models import ReviewAnnotation, ReviewAudit, ReviewItem, ReviewLease
from tests.analysis_data import write_records
from tests.factories import conversation, rating, wire
from tests.helpers import api_key

LABELS = {"overall": 4, "helpfulness": 4, "honesty": 5, "harmless": "yes", "compliance": "not_applicable",
          "overpromise": "no", "length": "about_right", "tone": "appropriate"}
#: What an annotator must never see: it would anchor the judgement.
ANCHORS = ("reward", "score", "divergence", "satisfaction", "rating", "arm", "segment", "inclusion_probability")


@pytest.fixture
def stack(migrated_url: str, topic_settings):
    """A store with ``n`` conversations written through the ingest decoder, and the API on it."""
    engine = make_engine(migrated_url)
    sessions = make_session_factory(engine)
    servers: list[ApiServer] = []

    def start(conversations: int = 5, **overrides: object) -> str:
        records = []
        for i in range(conversations):
            event = conversation(f"c-{i}", response=f"Answer number {i}: " + " ".join(f"w{i}x{k}" for k in range(12)),
                                 ts=f"2026-11-27T10:{i % 60:02d}:00Z")
            event["messages"][0]["content"] = f"Hi, I'm Maria Lopez, card 4111 1111 1111 1111, question {i}"
            records.append(KafkaRecord("conversations", 0, i, f"c-{i}".encode(), wire(event)))
            records.append(KafkaRecord("ratings", 0, i, f"c-{i}".encode(), wire(rating(f"c-{i}", value=i % 2))))
        write_records(sessions, records)
        settings = topic_settings(database_url=migrated_url, **overrides)
        server = ApiServer(create_app(AppContext(settings, engine, sessions, HealthState(), CollectorRegistry(),
                                                 ProducerRewardScorer())), "127.0.0.1", 0)
        server.start()
        servers.append(server)
        return server.url

    yield start, sessions
    for server in servers:
        server.stop()
    engine.dispose()


def table_counts(sessions) -> dict[str, int]:
    with sessions() as session:
        return {model.__tablename__: session.scalar(select(func.count()).select_from(model)) or 0
                for model in (ReviewItem, ReviewLease, ReviewAnnotation, ReviewAudit)}


def test_an_annotator_labels_skips_and_edits_and_the_queue_keeps_score(stack, migrated_url: str) -> None:
    start, sessions = stack
    url = start(3)
    admin, annotator = api_key(migrated_url, "admin"), api_key(migrated_url, "annotator")
    with httpx.Client(base_url=url, timeout=60) as http:
        added = http.post("/v1/review/items", json={"conversation_ids": ["c-0", "c-1", "c-2"]}, headers=admin)
        assert added.status_code == 200, added.text
        assert added.json() == {"added": 3}
        assert http.post("/v1/review/items", json={"conversation_ids": ["c-1"]}, headers=admin).json() == {"added": 0}

        first = http.post("/v1/review/next", headers=annotator)
        assert first.status_code == 200, first.text
        item = first.json()
        assert set(item) == {"item_id", "task", "rubric_version", "context", "prompt", "response", "candidates",
                             "lease_id", "lease_expires_at"}
        assert not any(anchor in json.dumps(item) for anchor in ('"reward"', '"divergence"', '"satisfaction"'))
        assert item["task"] == "rating" and item["rubric_version"] == "fintech-2026.1"
        assert "Maria" not in first.text and "4111" not in first.text and "[CARD]" in item["prompt"]
        # Asking again hands back the lease you hold, not a second item.
        assert http.post("/v1/review/next", headers=annotator).json()["lease_id"] == item["lease_id"]

        before = table_counts(sessions)
        for labels, comment, why in (({**LABELS, "overall": 7}, None, "'overall' must be one of"),
                                     ({k: v for k, v in LABELS.items() if k != "tone"}, None, "'tone' is required"),
                                     ({**LABELS, "vibes": "good"}, None, "unknown item 'vibes'"),
                                     ({**LABELS, "preference": "A"}, None, "a single response has no preference"),
                                     ({**LABELS, "overall": True}, None, "'overall' must be one of"),
                                     (LABELS, "x" * 5000, "at most 2000")):
            bad = http.post(f"/v1/review/items/{item['item_id']}/annotations",
                            json={"lease_id": item["lease_id"], "labels": labels, "comment": comment},
                            headers=annotator)
            assert bad.status_code == 422, (why, bad.text)
            assert why in bad.json()["error"]["message"], (why, bad.text)
        assert table_counts(sessions) == before  # nothing half-written
        assert http.post("/v1/review/items/999999/annotations", json={"lease_id": item["lease_id"], "labels": LABELS},
                         headers=annotator).status_code == 404
        assert http.post(f"/v1/review/items/{item['item_id']}/annotations", json={"lease_id": "nope", "labels": LABELS},
                         headers=annotator).status_code == 404
        other = api_key(migrated_url, "annotator")
        foreign = http.post(f"/v1/review/items/{item['item_id']}/annotations",
                            json={"lease_id": item["lease_id"], "labels": LABELS}, headers=other)
        assert foreign.status_code == 403 and "another annotator" in foreign.json()["error"]["message"]

        done = http.post(f"/v1/review/items/{item['item_id']}/annotations",
                         json={"lease_id": item["lease_id"], "labels": LABELS,
                               "comment": "Mentions maria.lopez@example.com, fine otherwise"}, headers=annotator)
        assert done.status_code == 201, done.text
        assert done.json()["comment"] == "Mentions [EMAIL], fine otherwise"
        again = http.post(f"/v1/review/items/{item['item_id']}/annotations",
                          json={"lease_id": item["lease_id"], "labels": LABELS}, headers=annotator)
        assert again.status_code == 409 and "already annotated" in again.json()["error"]["message"]

        second = http.post("/v1/review/next", headers=annotator).json()
        assert second["item_id"] != item["item_id"]
        assert http.post(f"/v1/review/items/{second['item_id']}/skip", json={"lease_id": second["lease_id"],
                         "reason": "  "}, headers=annotator).status_code == 422
        skipped = http.post(f"/v1/review/items/{second['item_id']}/skip",
                            json={"lease_id": second["lease_id"], "reason": "not in my language"}, headers=annotator)
        assert skipped.status_code == 200, skipped.text
        third = http.post("/v1/review/next", headers=annotator).json()
        assert third["item_id"] not in (item["item_id"], second["item_id"])
        assert http.post(f"/v1/review/items/{third['item_id']}/annotations",
                         json={"lease_id": third["lease_id"], "labels": LABELS}, headers=annotator).status_code == 201
        assert http.post("/v1/review/next", headers=annotator).status_code == 204  # all done or skipped by me
        # Another annotator still gets the item the first one skipped.
        assert http.post("/v1/review/next", headers=other).json()["item_id"] == second["item_id"]

        reopened = http.get(f"/v1/review/items/{item['item_id']}/annotations/mine", headers=annotator)
        assert reopened.status_code == 200 and reopened.json()["annotation"]["labels"] == LABELS
        assert "Maria" not in reopened.text
        edited = http.put(f"/v1/review/items/{item['item_id']}/annotations/mine",
                          json={"labels": {**LABELS, "overall": 2}}, headers=annotator)
        assert edited.status_code == 200 and edited.json()["revision"] == 2
        assert http.put(f"/v1/review/items/{item['item_id']}/annotations/mine",
                        json={"labels": {**LABELS, "overall": 9}}, headers=annotator).status_code == 422
        assert http.get(f"/v1/review/items/{second['item_id']}/annotations/mine", headers=annotator).status_code == 404

        stats = http.get("/v1/review/stats", headers=api_key(migrated_url, "viewer")).json()
        assert stats["depth"] == 1 and stats["complete"] == 2 and stats["skips"] == 1 and stats["leased"] == 1
        assert stats["oldest_open_age_seconds"] is not None
        assert [(g["arm"], g["open"], g["complete"]) for g in stats["groups"]] == [("manual", 1, 2)]
        assert http.get("/v1/review/rubric", headers=annotator).json()["version"] == "fintech-2026.1"
        listed = http.get("/v1/review/items", params={"state": "complete"}, headers=admin).json()["items"]
        assert len(listed) == 2 and all(i["arm"] == "manual" and i["inclusion_probability"] == 1.0 for i in listed)

    with sessions() as session:
        trail = [(a.item_id, a.action, a.rubric_version)
                 for a in session.scalars(select(ReviewAudit).order_by(ReviewAudit.id))]
        annotation = session.scalars(select(ReviewAnnotation).where(ReviewAnnotation.item_id == item["item_id"])).one()
    actions = Counter(action for _, action, _ in trail)
    assert actions == {"enqueued": 3, "leased": 4, "annotated": 2, "skipped": 1, "edited": 1}
    assert all(version == "fintech-2026.1" for _, action, version in trail if action in ("annotated", "edited"))
    assert annotation.labels["overall"] == 2 and annotation.revision == 2


def test_leases_expire_and_go_back_to_the_pool(stack, migrated_url: str) -> None:
    start, sessions = stack
    url = start(1, review_lease_seconds=1.0)
    first, second = api_key(migrated_url, "annotator"), api_key(migrated_url, "annotator")
    with httpx.Client(base_url=url, timeout=60) as http:
        http.post("/v1/review/items", json={"conversation_ids": ["c-0"]}, headers=api_key(migrated_url, "admin"))
        held = http.post("/v1/review/next", headers=first).json()
        assert http.post("/v1/review/next", headers=second).status_code == 204  # one review needed, leased out
        time.sleep(1.2)
        taken = http.post("/v1/review/next", headers=second)
        assert taken.status_code == 200 and taken.json()["item_id"] == held["item_id"]
        late = http.post(f"/v1/review/items/{held['item_id']}/annotations",
                         json={"lease_id": held["lease_id"], "labels": LABELS}, headers=first)
        assert late.status_code == 409 and "expired" in late.json()["error"]["message"]
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(ReviewAnnotation)) == 0
        assert session.scalar(select(ReviewItem.active_leases)) == 1


def test_overlapped_items_need_distinct_annotators(stack, migrated_url: str) -> None:
    start, sessions = stack
    url = start(2)
    keys = [api_key(migrated_url, "annotator") for _ in range(3)]
    with httpx.Client(base_url=url, timeout=60) as http:
        http.post("/v1/review/items", json={"conversation_ids": ["c-0", "c-1"], "reviews_required": 2},
                  headers=api_key(migrated_url, "admin"))
        seen: list[tuple[int, int]] = []
        for who, key in enumerate(keys):
            while (response := http.post("/v1/review/next", headers=key)).status_code == 200:
                item = response.json()
                assert http.post(f"/v1/review/items/{item['item_id']}/annotations",
                                 json={"lease_id": item["lease_id"], "labels": LABELS}, headers=key).status_code == 201
                seen.append((who, item["item_id"]))
    per_item = Counter(item for _, item in seen)
    assert sorted(per_item.values()) == [2, 2] and len(set(seen)) == 4
    assert [who for who, _ in seen] == [0, 0, 1, 1]  # the third annotator finds nothing left
    with sessions() as session:
        assert all(i.state == "complete" and i.reviews_done == 2 for i in session.scalars(select(ReviewItem)))


def test_bad_enqueue_requests_get_clear_errors(stack, migrated_url: str) -> None:
    start, _ = stack
    url = start(1)
    admin = api_key(migrated_url, "admin")
    with httpx.Client(base_url=url, timeout=60) as http:
        for body, status, why in (({}, 422, "exactly one of"),
                                  ({"conversation_ids": ["c-0"], "alert_id": 1}, 422, "exactly one of"),
                                  ({"conversation_ids": []}, 422, "conversation_ids"),
                                  ({"conversation_ids": ["nope"]}, 404, "no stored turns"),
                                  ({"alert_id": 12345}, 404, "alert 12345 not found"),
                                  ({"gold": [{"conversation_id": "c-0", "turn": 0, "labels": {"overall": 3}}]},
                                   422, "is required"),
                                  ({"gold": [{"conversation_id": "c-0", "turn": 5, "labels": LABELS}]},
                                   404, "not stored")):
            response = http.post("/v1/review/items", json=body, headers=admin)
            assert response.status_code == status, (body, response.text)
            assert why in response.json()["error"]["message"], (body, response.text)
        gold = http.post("/v1/review/items", json={"gold": [{"conversation_id": "c-0", "turn": 0, "labels": LABELS}],
                                                   "reviews_required": 3}, headers=admin)
        assert gold.json() == {"added": 1}
        item = http.get("/v1/review/items", headers=admin).json()["items"][0]
        assert item["arm"] == "gold" and item["gold"] is True and item["reviews_required"] == 3


def test_concurrent_annotators_never_share_a_lease(stack, migrated_url: str) -> None:
    """Eight annotators at once: PostgreSQL's FOR UPDATE SKIP LOCKED (SQLite: one leaser at a time)."""
    start, sessions = stack
    url = start(40)
    admin = api_key(migrated_url, "admin")
    httpx.post(f"{url}/v1/review/items", json={"conversation_ids": [f"c-{i}" for i in range(40)]}, headers=admin,
               timeout=120)
    keys = [api_key(migrated_url, "annotator") for _ in range(8)]
    got: list[tuple[int, int, str]] = []
    errors: list[str] = []
    barrier = threading.Barrier(len(keys))

    def work(who: int, key: dict[str, str]) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            barrier.wait()
            while True:
                response = http.post("/v1/review/next", headers=key)
                if response.status_code == 204:
                    return
                if response.status_code != 200:
                    errors.append(response.text)
                    return
                item = response.json()
                got.append((who, item["item_id"], item["lease_id"]))
                submitted = http.post(f"/v1/review/items/{item['item_id']}/annotations",
                                      json={"lease_id": item["lease_id"], "labels": LABELS}, headers=key)
                if submitted.status_code != 201:
                    errors.append(submitted.text)

    threads = [threading.Thread(target=work, args=(who, key)) for who, key in enumerate(keys)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert sorted(item for _, item, _ in got) == sorted({item for _, item, _ in got})  # no item leased twice
    assert len(got) == 40 and len({who for who, _, _ in got}) > 1  # the work was shared out
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(ReviewAnnotation)) == 40
        assert session.scalar(select(func.count()).select_from(ReviewLease)) == 40
        assert set(session.scalars(select(ReviewItem.state))) == {"complete"}


def test_no_structured_pii_reaches_the_review_tables(stack, migrated_url: str) -> None:
    """Held-out PII corpus records as customer messages: none of the structured values planted in
    them (cards, IBANs, e-mails, national ids, sort codes, account numbers) is in any review table
    or in what annotators receive. Names, addresses, phones and IPs: see docs/redaction.md."""
    start, sessions = stack
    url = start(0)
    lines = resources.files("monitor.data").joinpath("pii_corpus_holdout.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines[:120]]
    events = []
    for i, record in enumerate(records):
        event = conversation(f"p-{i}", response="Thanks, I have passed this to the team.")
        event["messages"][0]["content"] = record["text"]
        events.append(KafkaRecord("conversations", 1, i, f"p-{i}".encode(), wire(event)))
    write_records(sessions, events)
    structured = {"EMAIL", "CARD", "IBAN", "SSN", "NINO", "NATIONAL_ID", "SORT_CODE", "ACCOUNT"}
    planted = [span["value"] for record in records for span in record["spans"] if span["type"] in structured]
    assert len(planted) > 60
    annotator = api_key(migrated_url, "annotator")
    with httpx.Client(base_url=url, timeout=300) as http:
        added = http.post("/v1/review/items", json={"conversation_ids": [f"p-{i}" for i in range(len(records))]},
                          headers=api_key(migrated_url, "admin"))
        assert added.json() == {"added": len(records)}
        served = []
        for _ in range(10):
            item = http.post("/v1/review/next", headers=annotator)
            served.append(item.text)
            http.post(f"/v1/review/items/{item.json()['item_id']}/skip",
                      json={"lease_id": item.json()["lease_id"], "reason": "checking"}, headers=annotator)
    with sessions() as session:
        stored = [json.dumps([i.prompt, i.response, i.context]) for i in session.scalars(select(ReviewItem))]
    for value in planted:
        assert not any(value in text for text in stored), value
        assert not any(value in text for text in served), value


def test_an_event_with_candidates_becomes_a_blind_pairwise_task(stack, migrated_url: str) -> None:
    start, sessions = stack
    url = start(0)
    event = conversation("pair-1", response="Served: freeze it in the app.", reward=0.9,
                         candidates=[{"content": "Candidate: call us on +44 20 7946 0958.", "reward": 0.1}])
    write_records(sessions, [KafkaRecord("conversations", 2, 0, b"pair-1", wire(event))])
    annotator = api_key(migrated_url, "annotator")
    with httpx.Client(base_url=url, timeout=60) as http:
        assert http.post("/v1/review/items", json={"conversation_ids": ["pair-1"]},
                         headers=api_key(migrated_url, "admin")).json() == {"added": 1}
        item = http.post("/v1/review/next", headers=annotator).json()
        assert item["task"] == "pairwise"
        assert [c["label"] for c in item["candidates"]] == ["A", "B"]
        assert all(set(c) == {"label", "response"} for c in item["candidates"])  # which one was served: hidden
        texts = {c["response"] for c in item["candidates"]}
        assert texts == {"Served: freeze it in the app.", "Candidate: call us on [PHONE]."}
        assert "7946" not in json.dumps(item)
        rating_labels = http.post(f"/v1/review/items/{item['item_id']}/annotations",
                                  json={"lease_id": item["lease_id"], "labels": LABELS}, headers=annotator)
        assert rating_labels.status_code == 422 and "preference" in rating_labels.json()["error"]["message"]
        chose = http.post(f"/v1/review/items/{item['item_id']}/annotations",
                          json={"lease_id": item["lease_id"], "labels": {"preference": "tie"}}, headers=annotator)
        assert chose.status_code == 201, chose.text
    with sessions() as session:
        stored = session.scalars(select(ReviewItem)).one()
    assert {c["source"] for c in stored.candidates} == {"served", "candidate:0"}
