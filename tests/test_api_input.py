"""Hostile URLs get a clear 4xx, never a 500, on SQLite and PostgreSQL: a NUL character in a path or
query string (PostgreSQL cannot hold one in text) is a 400 before any route runs; a conversation id
with "/" (valid on the wire) is fetched like any other; an unexpected failure answers JSON that
leaks nothing of what the database said, and database errors never carry the statement's
parameters (conversation text); /readyz fails, blaming the database, while its writes fail."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from monitor.health import HealthState
from monitor.ingest.records import KafkaRecord
from monitor.store.db import make_engine
from tests.analysis_data import write_records
from tests.factories import conversation, wire
from tests.helpers import api_key, running_api


@pytest.fixture
def api(migrated_url: str):
    with running_api(migrated_url) as api:
        yield api


@pytest.mark.parametrize("path", [
    "/v1/alerts?segment=cards%00", "/v1/conversations/c%00-1", "/v1/review/items?segment=%00",
    "/v1/relabel-cycles/1%00", "/alerts?segment=a%00b", "/v1/segments?x=%00",
])
def test_a_nul_character_in_a_path_or_query_is_a_400(api, migrated_url: str, path: str) -> None:
    url, _ = api
    response = httpx.get(url + path, headers=api_key(migrated_url, "admin"), timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"] == "NUL characters are not allowed in paths or query strings"


def test_a_conversation_id_with_slashes_is_fetched(api, migrated_url: str) -> None:
    url, sessions = api
    write_records(sessions, [KafkaRecord("conversations", 0, 0, b"k", wire(conversation("team/eu/c-1", 0)))])
    headers = api_key(migrated_url, "admin")
    found = httpx.get(f"{url}/v1/conversations/team/eu/c-1", headers=headers, timeout=30)
    assert found.status_code == 200, found.text
    assert found.json()["conversation_id"] == "team/eu/c-1" and len(found.json()["turns"]) == 1
    escaped = httpx.get(f"{url}/v1/conversations/team%2Feu%2Fc-1", headers=headers, timeout=30)
    assert escaped.status_code == 200 and escaped.json()["turns"] == found.json()["turns"]
    missing = httpx.get(f"{url}/v1/conversations/team/eu", headers=headers, timeout=30)
    assert missing.status_code == 404 and "team/eu" in missing.json()["error"]["message"]


def test_an_unexpected_failure_is_a_json_500_that_leaks_nothing(api, migrated_url: str, monkeypatch) -> None:
    url, _ = api

    def broken(*_args, **_kwargs):
        raise RuntimeError("SELECT ... [parameters: {'content': 'my card number is 4111'}]")

    monkeypatch.setattr("monitor.api.routers.conversations.conversation_turns", broken)
    response = httpx.get(f"{url}/v1/conversations/c-1", headers=api_key(migrated_url, "admin"), timeout=30)
    assert response.status_code == 500
    assert response.json() == {"error": {"type": "InternalError",
                                         "message": "internal error; the service log has the details"}}


def test_readyz_fails_while_store_writes_fail_and_says_so(migrated_url: str) -> None:
    health = HealthState()
    health.mark_broker(True)
    with running_api(migrated_url, health) as (url, _):
        assert httpx.get(f"{url}/readyz", timeout=30).status_code == 200  # no write tried yet
        health.mark_store(False, "OperationalError: could not extend file: No space left on device")
        failing = httpx.get(f"{url}/readyz", timeout=30)
        assert failing.status_code == 503
        assert failing.json()["checks"]["database"] == {
            "ok": False, "error": "the last ingest write failed: OperationalError: could not extend file: "
                                  "No space left on device"}
        assert failing.json()["checks"]["broker"]["ok"] is True  # the right dependency is blamed
        health.mark_store(True)
        assert httpx.get(f"{url}/readyz", timeout=30).status_code == 200


def test_database_errors_do_not_carry_the_statement_parameters(migrated_url: str) -> None:
    engine = make_engine(migrated_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE leak_probe (id INTEGER PRIMARY KEY, body TEXT)"))
        with pytest.raises(SQLAlchemyError) as raised, engine.begin() as connection:
            for _ in range(2):
                connection.execute(text("INSERT INTO leak_probe (id, body) VALUES (1, :body)"),
                                   {"body": "my card number is 4111 1111 1111 1111"})
        assert "4111" not in str(raised.value) and "hidden due to hide_parameters" in str(raised.value)
    finally:
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE IF EXISTS leak_probe"))
        engine.dispose()
