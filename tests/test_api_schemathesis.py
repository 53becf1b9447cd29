"""Schemathesis over the API's own OpenAPI document, with an admin key, on SQLite and PostgreSQL
holding a little data (conversations, ratings, queued review items): every documented operation gets
generated requests (valid and invalid), and none may answer a 5xx; answers must carry a documented
status and content type and, where the document gives one, match the response schema.

Bounded and reproducible: a fixed number of examples per operation, derandomized (the same cases every
run), no example database, no shrinking (a failure prints its case as a curl command anyway).
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from prometheus_client import CollectorRegistry
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from monitor.api.app import create_app
from monitor.api.context import AppContext
from monitor.config import Settings
from monitor.health import HealthState
from monitor.ingest.records import KafkaRecord
from monitor.scoring.base import ProducerRewardScorer
from monitor.store.db import make_engine, make_session_factory
from tests.analysis_data import write_records
from tests.factories import conversation, rating, wire
from tests.helpers import api_key, running_api

#: Generated requests per operation and database (about 20 operations): the bound on the test's time.
EXAMPLES = 12
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def admin(migrated_url: str) -> dict[str, str]:
    return api_key(migrated_url, "admin")


@pytest.fixture
def api_schema(migrated_url: str):
    engine = make_engine(migrated_url)
    sessions = make_session_factory(engine)
    records = []
    for i in range(6):
        records.append(KafkaRecord("conversations", 0, i, b"k", wire(conversation(f"c-{i}", 0, reward=i / 6))))
        records.append(KafkaRecord("ratings", 0, i, b"k", wire(rating(f"c-{i}", 0, value=i % 2))))
    write_records(sessions, records)
    health = HealthState()
    health.mark_broker(True)  # a ready process: /readyz's 503 while the broker is away is by design
    # The rate limit is off: the generated requests come far faster than an operator's.
    context = AppContext(Settings(database_url=migrated_url, api_rate_limit_per_minute=0), engine, sessions,
                         health, CollectorRegistry(), ProducerRewardScorer())
    context.review.enqueue_conversations([f"c-{i}" for i in range(6)], "seed")
    app = create_app(context)
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    engine.dispose()


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
def test_no_operation_answers_a_server_error(case, admin) -> None:
    case.call_and_validate(headers=admin, checks=CHECKS)


# -- the server errors it found, pinned -----------------------------------------------------------------

HUGE = str(2**64)


@pytest.mark.parametrize("path", [
    f"/v1/review/items/{HUGE}/annotations/mine", f"/v1/relabel-cycles/{HUGE}", f"/v1/relabel-cycles/{HUGE}/export",
    f"/alerts/{HUGE}", f"/cycles/{HUGE}",
])
def test_an_id_beyond_the_stores_range_is_a_422(migrated_url: str, admin, path: str) -> None:
    with running_api(migrated_url) as (url, _):
        response = httpx.get(url + path, headers=admin, timeout=30)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["type"] == "InvalidRequest"


@pytest.mark.parametrize(("body", "statuses"), [
    # PostgreSQL cannot hold a NUL in text (422); SQLite can, and finds no such conversation (404).
    ('{"conversation_ids": ["c-\\u0000"]}', {"postgresql": 422, "sqlite": 404}),
    # An unpaired surrogate escape decodes to text UTF-8 cannot encode (refused by validation).
    ('{"conversation_ids": ["c-\\ud800"]}', {"postgresql": 422, "sqlite": 422}),
    ('{"gold": [{"conversation_id": "c-0", "turn": 99999999999, "labels": {}}]}', {"postgresql": 422, "sqlite": 422}),
    ('{"alert_id": 99999999999999999999999}', {"postgresql": 422, "sqlite": 422}),
])
def test_text_or_numbers_the_store_cannot_hold_are_a_4xx(migrated_url: str, admin, body: str,
                                                        statuses: dict[str, int]) -> None:
    with running_api(migrated_url) as (url, _):
        response = httpx.post(f"{url}/v1/review/items", content=body,
                              headers={**admin, "Content-Type": "application/json"}, timeout=30)
    expected = statuses["postgresql" if migrated_url.startswith("postgresql") else "sqlite"]
    assert response.status_code == expected, response.text
    if expected == 422 and "u0000" in body:  # refused by the store, not by validation
        assert "no store can hold" in response.json()["error"]["message"]
