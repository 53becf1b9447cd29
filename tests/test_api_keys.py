"""API keys with roles, on SQLite and PostgreSQL: the `monitor keys` CLI, keys hashed at rest, and
the role of every `/v1` route, walked from the OpenAPI document over real HTTP."""

from __future__ import annotations

import re

import httpx
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from monitor.api.app import create_app
from monitor.api.context import AppContext
from monitor.api.server import ApiServer
from monitor.auth import ADMIN, ANNOTATE, ROLES, VIEW
from monitor.health import HealthState
from monitor.scoring.base import ProducerRewardScorer
from monitor.store.db import make_engine, make_session_factory
from monitor.store.keys import create_key, revoke_key
from monitor.store.models import ApiKey
from tests.test_cli import run

#: Who may call each `/v1` route. A route missing here fails the walk below: a new route must say.
ROUTE_ROLES: dict[tuple[str, str], frozenset[str]] = {
    ("get", "/v1/alerts"): VIEW,
    ("get", "/v1/segments"): VIEW,
    ("get", "/v1/reports/drift"): VIEW,
    ("get", "/v1/reward-model"): VIEW,
    ("get", "/v1/conversations/{conversation_id}"): VIEW,
    ("post", "/v1/review/next"): ANNOTATE,
    ("post", "/v1/review/items/{item_id}/annotations"): ANNOTATE,
    ("post", "/v1/review/items/{item_id}/skip"): ANNOTATE,
    ("get", "/v1/review/items/{item_id}/annotations/mine"): ANNOTATE,
    ("put", "/v1/review/items/{item_id}/annotations/mine"): ANNOTATE,
    ("post", "/v1/review/items"): ADMIN,
    ("get", "/v1/review/items"): VIEW,
    ("get", "/v1/review/stats"): frozenset(ROLES),
    ("get", "/v1/review/report"): VIEW,
    ("post", "/v1/relabel-cycles"): ADMIN,
    ("get", "/v1/relabel-cycles"): VIEW,
    ("get", "/v1/relabel-cycles/{cycle_id}"): VIEW,
    ("get", "/v1/relabel-cycles/{cycle_id}/export"): VIEW,
    ("post", "/v1/relabel-cycles/{cycle_id}/cancel"): ADMIN,
    ("get", "/v1/review/rubric"): frozenset(ROLES),
}
OPEN = ("/healthz", "/readyz", "/metrics")


@pytest.fixture
def store(migrated_url: str):
    engine = make_engine(migrated_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def api(migrated_url: str, store, topic_settings):
    settings = topic_settings(database_url=migrated_url)
    server = ApiServer(create_app(AppContext(settings, store.kw["bind"], store, HealthState(), CollectorRegistry(),
                                             ProducerRewardScorer())), "127.0.0.1", 0)
    server.start()
    yield server.url
    server.stop()


def new_key(store, role: str) -> str:
    with store.begin() as session:
        return create_key(session, role)[1]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_every_v1_route_checks_its_role(api: str, store) -> None:
    keys = {role: new_key(store, role) for role in ROLES}
    revoked = new_key(store, "admin")
    with store.begin() as session:
        name = session.scalar(select(ApiKey.name).order_by(ApiKey.id.desc()).limit(1))
        revoke_key(session, name)
    document = httpx.get(f"{api}/openapi.json", timeout=10).json()
    routes = [(method, path) for path, operations in document["paths"].items() for method in operations]
    v1 = [(method, path) for method, path in routes if path.startswith("/v1/")]
    assert sorted(v1) == sorted(ROUTE_ROLES), "every /v1 route must be listed in ROUTE_ROLES with its roles"
    assert {path for _, path in routes} - {path for _, path in v1} == set(OPEN)
    with httpx.Client(base_url=api, timeout=10) as http:
        for method, path in v1:
            url = re.sub(r"\{[^}]+\}", "c-1", path)
            assert document["paths"][path][method].get("security"), f"{path} shows no security in OpenAPI"
            for headers, why in (({}, "no key"), ({"Authorization": "Basic dXNlcjpwYXNz"}, "not a bearer key"),
                                 (bearer("mon_" + "x" * 43), "an unknown key"), (bearer("nonsense"), "garbage"),
                                 (bearer(revoked), "a revoked key")):
                response = http.request(method, url, headers=headers)
                assert response.status_code == 401, (method, path, why, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
                assert response.json()["error"]["type"] == "Unauthorized"
            for role, key in keys.items():
                response = http.request(method, url, headers=bearer(key))
                if role in ROUTE_ROLES[(method, path)]:
                    assert response.status_code not in (401, 403), (method, path, role, response.text)
                else:
                    assert response.status_code == 403, (method, path, role, response.text)
                    error = response.json()["error"]
                    assert error["type"] == "Forbidden" and role in error["message"]
        for path in OPEN:
            assert http.get(path).status_code in (200, 503), path  # no key needed (503: not ready)


def test_keys_cli_creates_lists_and_revokes_and_stores_only_digests(migrated_url: str, api: str, store) -> None:
    created = run("keys", "create", "--role", "viewer", "--name", "grafana", database_url=migrated_url)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"mon_[A-Za-z0-9_-]{43}", key)
    assert httpx.get(f"{api}/v1/reward-model", headers=bearer(key), timeout=10).status_code == 200

    with store() as session:
        rows = session.execute(select(ApiKey.name, ApiKey.role, ApiKey.digest, ApiKey.prefix)).all()
    assert [(name, role) for name, role, _, _ in rows] == [("grafana", "viewer")]
    assert key not in repr(rows) and rows[0].digest != key and key.startswith(rows[0].prefix)

    listed = run("keys", "list", database_url=migrated_url)
    assert listed.returncode == 0 and "grafana" in listed.stdout and "viewer" in listed.stdout
    assert key not in listed.stdout and f"{key[:8]}..." in listed.stdout

    again = run("keys", "create", "--role", "admin", "--name", "grafana", database_url=migrated_url)
    assert again.returncode == 2 and "exists already" in again.stderr

    revoked = run("keys", "revoke", "grafana", database_url=migrated_url)
    assert revoked.returncode == 0 and "revoked 'grafana'" in revoked.stdout
    assert httpx.get(f"{api}/v1/reward-model", headers=bearer(key), timeout=10).status_code == 401
    relisted = run("keys", "list", database_url=migrated_url).stdout
    assert re.search(r"grafana\s+viewer\s+\S+\s+\S+ \S+\s+\d{4}-", relisted)  # a revocation date

    unnamed = run("keys", "create", "--role", "annotator", database_url=migrated_url)
    assert unnamed.returncode == 0 and re.search(r"created annotator key 'annotator-[0-9a-f]{6}'", unnamed.stdout)


@pytest.mark.parametrize(("args", "code", "message"), [
    (("keys", "create", "--role", "root"), 2, "role must be one of viewer, annotator, admin"),
    (("keys", "create", "--role", "admin", "--name", "has space"), 2, "a key name is 1-64 letters"),
    (("keys", "create", "--role", "admin", "--name", "x" * 65), 2, "a key name is 1-64 letters"),
    (("keys", "revoke", "nobody"), 2, "no key named 'nobody'"),
])
def test_keys_cli_rejects_bad_input(migrated_url: str, args: tuple[str, ...], code: int, message: str) -> None:
    result = run(*args, database_url=migrated_url)
    assert result.returncode == code and message in result.stderr, result.stderr
