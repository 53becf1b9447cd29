"""The remote scorer against real uvicorn servers: one running the transformers scorer on a tiny RM,
and small ones with scripted scorers for the failure modes (slow, failing, lying, swapped)."""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from monitor.api.server import ApiServer
from monitor.errors import ScoringError
from monitor.events import parse_conversation
from monitor.scoring.base import ScoreOutcome, Scorer
from monitor.scoring.remote import RemoteScorer
from monitor.scoring.server import MAX_CONVERSATIONS, create_scoring_app
from monitor.scoring.transformers_scorer import TransformersScorer
from tests.factories import conversation, wire
from tests.rm_fixtures import build_tiny_bert_rm

Conversation = Sequence[Mapping[str, str]]


def conv(prompt: str, response: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


CONVERSATIONS = [
    conv("How do I freeze my card?", "Open the app and tap Freeze."),
    conv("What is APR?", "APR is the annual percentage rate. " * 40),  # over 128 tokens: truncated
    conv("Can I get a refund?", "**Great question!**\n\n- Yes\n- Maybe"),
    conv("hi", "   "),  # unscorable: the error travels back as this response's outcome
    [{"role": "system", "content": "Be brief."}, *conv("Explain ETFs", "A fund traded on an exchange.")],
]


class RecordingScorer:
    """Passes through to a real scorer and records the size of every call the server made."""

    def __init__(self, inner: TransformersScorer) -> None:
        self.inner = inner
        self.calls: list[int] = []

    @property
    def identity(self) -> str:
        return self.inner.identity

    def score_conversations(self, conversations: Sequence[Conversation]) -> list[ScoreOutcome]:
        self.calls.append(len(conversations))
        return self.inner.score_conversations(conversations)


class ScriptedScorer:
    """Scores a response by its length, after ``delay_s``; or fails; or returns a fixed score."""

    def __init__(self, identity: str = "scripted:rm@1", *, delay_s: float = 0.0, fail: bool = False,
                 fixed: float | None = None) -> None:
        self.identity = identity
        self.delay_s = delay_s
        self.fail = fail
        self.fixed = fixed

    def score_conversations(self, conversations: Sequence[Conversation]) -> list[ScoreOutcome]:
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("CUDA out of memory")
        return [ScoreOutcome(self.fixed if self.fixed is not None else float(len(c[-1]["content"])))
                for c in conversations]


class InFlight:
    """ASGI wrapper counting the HTTP requests a server received and the most it had at once."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.requests = 0
        self.now = 0
        self.peak = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.requests += 1
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await self.app(scope, receive, send)
        finally:
            self.now -= 1


@contextmanager
def serving(app: Any, port: int = 0) -> Iterator[tuple[str, InFlight]]:
    counter = InFlight(app)
    server = ApiServer(counter, "127.0.0.1", port)  # type: ignore[arg-type] - any ASGI app runs
    server.start()
    try:
        yield server.url, counter
    finally:
        server.stop()


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    return build_tiny_bert_rm(tmp_path_factory.mktemp("bert-rm"))


@pytest.fixture(scope="module")
def local(rm_dir) -> TransformersScorer:
    return TransformersScorer(str(rm_dir), device="cpu", cache_size=0)


@pytest.fixture(scope="module")
def served(rm_dir) -> Iterator[tuple[str, RecordingScorer]]:
    recording = RecordingScorer(TransformersScorer(str(rm_dir), device="cpu"))
    with serving(create_scoring_app(recording)) as (url, _):
        yield url, recording


def assert_same_outcomes(remote: list[ScoreOutcome], local: list[ScoreOutcome]) -> None:
    assert len(remote) == len(local)
    for got, want in zip(remote, local, strict=True):
        assert (got.error, got.truncated) == (want.error, want.truncated)
        if want.score is None:
            assert got.score is None
        else:
            assert got.score == pytest.approx(want.score, abs=1e-5)


def test_remote_scores_equal_local_scores(served, local) -> None:
    url, _ = served
    expected = local.score_conversations(CONVERSATIONS)
    assert expected[1].truncated and expected[3].error == "empty response"
    with RemoteScorer(url) as remote:
        assert isinstance(remote, Scorer)
        assert_same_outcomes(remote.score_conversations(CONVERSATIONS), expected)
        events = [parse_conversation(wire(conversation(f"c-{i}", response=c[-1]["content"])))
                  for i, c in enumerate(CONVERSATIONS)]
        from_events = remote.score(events)
        assert remote.score([]) == []
    assert_same_outcomes(from_events, local.score([*events]))


def test_large_calls_are_split_sent_concurrently_and_reassembled_in_order(served, local) -> None:
    url, recording = served
    conversations = [conv(f"question {i}", f"answer number {i} " * (1 + i % 7)) for i in range(50)]
    recording.calls.clear()
    with RemoteScorer(url, max_batch=8, max_concurrency=3) as remote:
        outcomes = remote.score_conversations(conversations)
    assert_same_outcomes(outcomes, local.score_conversations(conversations))
    assert sorted(recording.calls) == [2] + [8] * 6


def test_requests_in_flight_never_exceed_max_concurrency() -> None:
    with serving(create_scoring_app(ScriptedScorer(delay_s=0.05))) as (url, counter):
        with RemoteScorer(url, max_batch=5, max_concurrency=3) as remote:
            outcomes = remote.score_conversations([conv("q", "x" * i) for i in range(60)])
    assert [o.score for o in outcomes] == [float(i) for i in range(60)]
    assert counter.requests == 12
    assert 1 < counter.peak <= 3


def test_bad_bodies_get_a_422_json_error_and_are_not_retried(served) -> None:
    url, _ = served
    bad_bodies: list[dict[str, Any]] = [
        {"conversations": "not a list"},
        {"conversations": [[{"role": "narrator", "content": "hi"}]]},
        {"conversations": [[{"role": "user", "content": 3}]]},
        {"conversations": [], "extra": 1},
        {"conversations": [conv("q", "a")] * (MAX_CONVERSATIONS + 1)},
    ]
    for body in bad_bodies:
        response = httpx.post(f"{url}/v1/score", json=body)
        assert response.status_code == 422, body
        assert response.json()["error"]["type"] == "InvalidRequest"
    garbled = httpx.post(f"{url}/v1/score", content=b"{not json", headers={"content-type": "application/json"})
    assert garbled.status_code == 422 and garbled.json()["error"]["message"]

    with serving(create_scoring_app(ScriptedScorer())) as (scripted_url, counter):
        with RemoteScorer(scripted_url, retries=3, backoff_s=0.01) as remote:
            with pytest.raises(ScoringError, match=r"HTTP 422, not retried.*role"):
                remote.score_conversations([[{"role": "narrator", "content": "hi"}]])
    assert counter.requests == 1


def test_an_unreachable_server_fails_after_the_configured_retries(served) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with RemoteScorer(url, retries=2, backoff_s=0.05) as remote:
        started = time.monotonic()
        with pytest.raises(ScoringError, match=r"failed after 3 attempt\(s\): ConnectError"):
            remote.score_conversations(CONVERSATIONS)
        assert time.monotonic() - started < 5
        assert remote.ping() is False
        assert remote.identity == f"remote:{url}"
    with RemoteScorer(served[0]) as remote:
        assert remote.ping() is True


def test_server_errors_and_timeouts_are_retried_then_raise() -> None:
    with serving(create_scoring_app(ScriptedScorer(fail=True))) as (url, counter):
        with RemoteScorer(url, retries=2, backoff_s=0.01) as remote:
            with pytest.raises(ScoringError, match=r"3 attempt\(s\): HTTP 503: .*CUDA out of memory"):
                remote.score_conversations(CONVERSATIONS)
    assert counter.requests == 3

    with serving(create_scoring_app(ScriptedScorer(delay_s=0.3))) as (url, counter):
        with RemoteScorer(url, timeout_s=0.1, retries=1, backoff_s=0.01) as remote:
            started = time.monotonic()
            with pytest.raises(ScoringError, match=r"2 attempt\(s\): ReadTimeout"):
                remote.score_conversations(CONVERSATIONS)
            assert time.monotonic() - started < 3
    assert counter.requests == 2


def test_a_score_issued_while_the_server_is_down_succeeds_once_it_is_back(rm_dir, local) -> None:
    app = create_scoring_app(TransformersScorer(str(rm_dir), device="cpu"))
    first = ApiServer(app, "127.0.0.1", 0)
    first.start()
    port = first.port
    expected = local.score_conversations(CONVERSATIONS)
    restarted: dict[str, Any] = {}

    def restart_on_the_same_port() -> None:
        time.sleep(1.0)
        try:
            server = ApiServer(app, "127.0.0.1", port)
            server.start()
            restarted["server"] = server
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            restarted["error"] = exc

    # Retries wait 0.1, 0.2, 0.4, 0.8, 1.6 s: a 3 s window, enough for a 1 s outage.
    remote = RemoteScorer(first.url, retries=5, backoff_s=0.1, timeout_s=5)
    restarter = threading.Thread(target=restart_on_the_same_port)
    try:
        assert_same_outcomes(remote.score_conversations(CONVERSATIONS), expected)  # a kept-alive connection
        first.stop()
        assert remote.ping() is False
        restarter.start()
        started = time.monotonic()
        outcomes = remote.score_conversations(CONVERSATIONS)
        waited = time.monotonic() - started
        restarter.join()
        assert "error" not in restarted, restarted.get("error")
        assert waited > 0.5  # the call really was made while the server was down
        assert_same_outcomes(outcomes, expected)
        assert remote.ping() is True
    finally:
        remote.close()
        if restarter.is_alive():
            restarter.join()
        if "server" in restarted:
            restarted["server"].stop()


def test_identity_names_the_servers_model(served, local) -> None:
    url, _ = served
    with RemoteScorer(url) as remote:
        assert remote.identity == f"remote:{local.identity}"  # looked up lazily from GET /v1/model
        assert httpx.get(f"{url}/v1/model").json() == {"identity": local.identity}
    with RemoteScorer(url) as remote:
        remote.score_conversations(CONVERSATIONS[:1])
        assert remote.identity.startswith("remote:transformers:")
        assert remote.identity == f"remote:{local.identity}"


def test_a_model_swap_on_the_server_shows_in_the_identity() -> None:
    scorer = ScriptedScorer("scripted:rm@1")
    with serving(create_scoring_app(scorer)) as (url, _):
        with RemoteScorer(url, max_batch=2, max_concurrency=1) as remote:
            remote.score_conversations(CONVERSATIONS[:1])
            assert remote.identity == "remote:scripted:rm@1"
            scorer.identity = "scripted:rm@2"
            remote.score_conversations(CONVERSATIONS[:1])
            assert remote.identity == "remote:scripted:rm@2"

            # One call's chunks answered by two models: the whole call fails (the loop retries it).
            real = scorer.score_conversations

            def swap_after_each_call(conversations: Sequence[Conversation]) -> list[ScoreOutcome]:
                outcomes = real(conversations)
                scorer.identity = "scripted:rm@3" if scorer.identity == "scripted:rm@2" else "scripted:rm@2"
                return outcomes

            scorer.score_conversations = swap_after_each_call  # type: ignore[method-assign]
            with pytest.raises(ScoringError, match="changed model during one call"):
                remote.score_conversations(CONVERSATIONS)


def test_responses_that_break_the_protocol_raise() -> None:
    liar = FastAPI()

    @liar.post("/v1/score")
    def short_answer() -> dict[str, Any]:
        return {"model": "liar", "outcomes": [{"score": 1.0, "error": None, "truncated": False}]}

    with serving(liar) as (url, counter):
        with RemoteScorer(url, retries=2, backoff_s=0.01) as remote:
            with pytest.raises(ScoringError, match="returned 1 outcomes for 2 conversations"):
                remote.score_conversations(CONVERSATIONS[:2])
    assert counter.requests == 1

    with serving(create_scoring_app(ScriptedScorer(fixed=math.nan))) as (url, _):
        with RemoteScorer(url) as remote:
            [outcome] = remote.score_conversations(CONVERSATIONS[:1])
    assert outcome.score is None and outcome.error == "non-finite score (nan)"


def test_healthz(served) -> None:
    response = httpx.get(f"{served[0]}/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"url": "gpu-box:8000"}, "url must be"),
    ({"url": "ftp://gpu-box"}, "url must be"),
    ({"timeout_s": 0}, "timeout_s must be > 0"),
    ({"retries": -1}, r"retries must be in 0\.\.20"),
    ({"backoff_s": -0.5}, "backoff_s must be >= 0"),
    ({"max_concurrency": 0}, r"max_concurrency must be in 1\.\.64"),
    ({"max_batch": MAX_CONVERSATIONS + 1}, rf"max_batch must be in 1\.\.{MAX_CONVERSATIONS}"),
])
def test_bad_arguments_fail_at_construction(kwargs: dict[str, Any], message: str) -> None:
    arguments = {"url": "http://127.0.0.1:1", **kwargs}
    url = arguments.pop("url")
    with pytest.raises(ValueError, match=message):
        RemoteScorer(url, **arguments)
