"""The API's limits over real HTTP (uvicorn), on SQLite and PostgreSQL: a request body over
``MONITOR_API_MAX_BODY_BYTES`` is a JSON 413 whether its length is declared or it arrives chunked,
and writes nothing; ``/v1`` requests over ``MONITOR_API_RATE_LIMIT_PER_MINUTE`` are a 429 with
``Retry-After``, per API key (another key is unaffected, the budget refills) and per client address
for requests without a known key (a flood of made-up keys is bounded too)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import func, select

from monitor.api.ratelimit import RateLimiter
from monitor.auth import generate_key
from monitor.config import load_settings
from monitor.errors import ConfigError
from monitor.ingest.records import KafkaRecord
from monitor.store.keys import revoke_key
from monitor.store.models import ApiKey, ReviewItem
from tests.analysis_data import write_records
from tests.factories import conversation, wire
from tests.helpers import api_key, running_api

LIMIT = 4096


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def review_items(sessions) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(ReviewItem))


def assert_error(response: httpx.Response, status: int, kind: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["type"] == kind and error["message"]
    return error


# -- body limit ---------------------------------------------------------------------------------------

@pytest.fixture
def limited_api(migrated_url: str):
    with running_api(migrated_url, api_max_body_bytes=LIMIT) as (url, sessions):
        write_records(sessions, [KafkaRecord("conversations", 0, i, b"k", wire(conversation(f"c-{i}", 0)))
                                 for i in range(3)])
        yield url, sessions


def enqueue_body(size: int) -> bytes:
    """A valid manual enqueue of c-0 .. c-2 (they exist), naming them again and again until the
    body is ``size`` bytes or a little more: without a limit, every size would be accepted."""
    ids = ["c-0", "c-1", "c-2"]
    body = json.dumps({"conversation_ids": ids}).encode()
    while len(body) < size:
        ids.append(ids[len(ids) % 3])
        body = json.dumps({"conversation_ids": ids}).encode()
    return body


def chunks(body: bytes, size: int = 500) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start:start + size]


def test_a_body_over_the_limit_with_a_declared_length_is_a_413_that_writes_nothing(limited_api, migrated_url):
    url, sessions = limited_api
    headers = {**api_key(migrated_url, "admin"), "Content-Type": "application/json"}
    too_big = enqueue_body(LIMIT + 1)
    assert len(too_big) > LIMIT
    response = httpx.post(f"{url}/v1/review/items", content=too_big, headers=headers, timeout=30)
    error = assert_error(response, 413, "PayloadTooLarge")
    assert str(LIMIT) in error["message"] and "MONITOR_API_MAX_BODY_BYTES" in error["message"]
    assert review_items(sessions) == 0

    # The same request under the limit goes through: the 413 was the size, nothing else.
    fits = enqueue_body(LIMIT - 200)
    assert len(fits) <= LIMIT
    accepted = httpx.post(f"{url}/v1/review/items", content=fits, headers=headers, timeout=30)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json() == {"added": 3} and review_items(sessions) == 3


def test_a_chunked_body_over_the_limit_is_cut_off_with_a_413(limited_api, migrated_url):
    url, sessions = limited_api
    headers = {**api_key(migrated_url, "admin"), "Content-Type": "application/json"}
    with httpx.Client(timeout=30) as client:
        request = client.build_request("POST", f"{url}/v1/review/items", headers=headers,
                                       content=chunks(enqueue_body(3 * LIMIT)))
        assert request.headers["transfer-encoding"] == "chunked" and "content-length" not in request.headers
        response = client.send(request)
    assert_error(response, 413, "PayloadTooLarge")
    assert review_items(sessions) == 0

    with httpx.Client(timeout=30) as client:
        fits = client.build_request("POST", f"{url}/v1/review/items", headers=headers,
                                    content=chunks(enqueue_body(LIMIT - 200)))
        assert fits.headers["transfer-encoding"] == "chunked"
        accepted = client.send(fits)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json() == {"added": 3} and review_items(sessions) == 3


def test_a_declared_length_over_the_limit_is_refused_before_any_byte_is_read(limited_api, migrated_url):
    """A client that announces 100 MB and sends nothing gets its 413 at once: the server never waits
    for (or reads) the body."""
    url, _ = limited_api
    host, port = url.removeprefix("http://").split(":")
    key = api_key(migrated_url, "admin")["Authorization"]
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /v1/review/items HTTP/1.1\r\nHost: {host}\r\nAuthorization: {key}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n".encode())
        sock.settimeout(10)
        head = sock.recv(65536).decode()
    assert head.startswith("HTTP/1.1 413"), head
    assert '"PayloadTooLarge"' in head


def test_the_body_limit_covers_the_pages_too(limited_api):
    url, _ = limited_api
    response = httpx.post(f"{url}/review/login", content=b"key=" + b"x" * LIMIT,
                          headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=30)
    assert_error(response, 413, "PayloadTooLarge")


# -- rate limit ---------------------------------------------------------------------------------------

def test_a_key_over_its_budget_gets_429_with_retry_after_and_refills(migrated_url: str):
    clock = FakeClock()
    with running_api(migrated_url, rate_limiter=RateLimiter(3, clock=clock)) as (url, _):
        first, second = api_key(migrated_url, "viewer"), api_key(migrated_url, "viewer")
        with httpx.Client(base_url=url, timeout=30) as client:
            assert [client.get("/v1/alerts", headers=first).status_code for _ in range(3)] == [200] * 3
            refused = client.get("/v1/alerts", headers=first)
            error = assert_error(refused, 429, "RateLimited")
            # 3 a minute: one token every 20 s.
            assert refused.headers["retry-after"] == "20" and "3 requests per minute" in error["message"]

            # Another key, the open endpoints and the pages are unaffected.
            assert client.get("/v1/alerts", headers=second).status_code == 200
            assert client.get("/healthz").status_code == 200
            assert client.get("/metrics").status_code == 200
            assert client.get("/readyz").status_code in (200, 503)

            clock.now += 5
            assert client.get("/v1/alerts", headers=first).headers["retry-after"] == "15"
            clock.now += 15
            assert client.get("/v1/alerts", headers=first).status_code == 200
            assert client.get("/v1/alerts", headers=first).status_code == 429
            clock.now += 60  # a quiet minute refills the whole burst, no more
            assert [client.get("/v1/alerts", headers=first).status_code for _ in range(4)] == [200] * 3 + [429]


def test_requests_without_a_known_key_share_their_address_budget(migrated_url: str):
    clock = FakeClock()
    with running_api(migrated_url, rate_limiter=RateLimiter(3, clock=clock)) as (url, sessions):
        good = api_key(migrated_url, "viewer")
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.get("/v1/alerts", headers=good).status_code == 200  # its first request: the address's
            made_up = [{"Authorization": f"Bearer {generate_key()}"} for _ in range(3)]
            assert [client.get("/v1/alerts", headers=h).status_code for h in made_up] == [401, 401, 429]
            # The flood is bounded whatever it sends: no key, a malformed one, a new made-up one.
            assert_error(client.get("/v1/alerts"), 429, "RateLimited")
            assert client.get("/v1/alerts", headers={"Authorization": "Bearer nope"}).status_code == 429
            assert client.get("/v1/alerts", headers={"Authorization": f"Bearer {generate_key()}"}).status_code == 429
            # The known key spends its own budget (2 left of 3).
            assert [client.get("/v1/alerts", headers=good).status_code for _ in range(3)] == [200, 200, 429]

            # Revoked, it is refused and goes back to its address's budget.
            clock.now += 60
            with sessions.begin() as session:
                name = session.scalar(select(ApiKey.name).order_by(ApiKey.id.desc()).limit(1))
                revoke_key(session, name)
            statuses = [client.get("/v1/alerts", headers=good).status_code for _ in range(5)]
            assert statuses == [401, 401, 401, 401, 429], statuses


def test_a_made_up_key_earns_no_budget_of_its_own_on_a_path_without_an_auth_check(migrated_url: str):
    """A 404 says nothing about the key: its requests keep spending the address's budget."""
    with running_api(migrated_url, rate_limiter=RateLimiter(3, clock=FakeClock())) as (url, _):
        made_up = {"Authorization": f"Bearer {generate_key()}"}
        with httpx.Client(base_url=url, timeout=30) as client:
            statuses = [client.get("/v1/nowhere", headers=made_up).status_code for _ in range(2)]
            statuses += [client.get("/v1/alerts").status_code for _ in range(2)]
    assert statuses == [404, 404, 401, 429]


def test_the_rate_limit_comes_from_the_settings_and_0_turns_it_off(migrated_url: str):
    headers = api_key(migrated_url, "viewer")
    with running_api(migrated_url, api_rate_limit_per_minute=2) as (url, _):
        statuses = [httpx.get(f"{url}/v1/segments", headers=headers, timeout=30).status_code for _ in range(3)]
    assert statuses == [404, 404, 429]  # 404: no analyzer run yet
    with running_api(migrated_url, api_rate_limit_per_minute=0) as (url, _):
        with httpx.Client(base_url=url, timeout=30) as client:
            assert {client.get("/v1/segments", headers=headers).status_code for _ in range(50)} == {404}


def test_the_limiter_is_thread_safe() -> None:
    """32 threads racing for a burst of 100 get exactly 100 tokens."""
    limiter = RateLimiter(100, clock=lambda: 0.0)
    granted: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(32)

    def race() -> None:
        start.wait()
        got = sum(limiter.acquire("k") == 0.0 for _ in range(10))
        with lock:
            granted.append(got)

    threads = [threading.Thread(target=race) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == 100


@pytest.mark.parametrize(("name", "value"), [
    ("MONITOR_API_MAX_BODY_BYTES", "10"), ("MONITOR_API_MAX_BODY_BYTES", "1MB"),
    ("MONITOR_API_RATE_LIMIT_PER_MINUTE", "-1"), ("MONITOR_API_RATE_LIMIT_PER_MINUTE", "lots"),
])
def test_an_invalid_limit_stops_the_process_naming_it(monkeypatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings()
