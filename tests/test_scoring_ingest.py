"""Kafka → reward model → stored score, with the RM's identity on every row and in the metrics."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from monitor.errors import ConfigError
from monitor.scoring.base import ProducerRewardScorer
from monitor.scoring.factory import build_scorer
from monitor.scoring.transformers_scorer import TransformersScorer
from monitor.store.db import make_engine, make_session_factory
from monitor.store.models import Turn
from tests.factories import conversation, wire
from tests.helpers import ServiceThread, counts, produce, wait_for
from tests.rm_fixtures import build_tiny_bert_rm


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    return build_tiny_bert_rm(tmp_path_factory.mktemp("rm"), max_length=64)


def test_the_reward_model_scores_live_traffic(topic_settings, tmp_path, rm_dir) -> None:
    url = f"sqlite:///{tmp_path / 'scored.db'}"
    settings = topic_settings(database_url=url, rm_model=str(rm_dir))
    long_context = conversation("c-long", 0, response="Short answer.")
    long_context["messages"] = [{"role": "user", "content": "background " * 80}] + long_context["messages"]
    events = [conversation(f"c-{i}", 0, response=f"Answer number {i} " * (1 + i % 5), reward=None) for i in range(12)]
    events += [conversation("c-empty", 0, response=" "), long_context]
    produce(settings, [(settings.conversations_topic, e["conversation_id"].encode(), wire(e)) for e in events])

    reference = TransformersScorer(str(rm_dir), cache_size=0)
    with ServiceThread(settings) as service:
        wait_for(lambda: counts(url).turns == len(events), what="all turns scored and stored")
        headers = service.headers()
        identity = httpx.get(f"{service.url}/v1/reward-model", headers=headers).json()["identity"]
        metrics = httpx.get(f"{service.url}/metrics").text
        turn = httpx.get(f"{service.url}/v1/conversations/c-long", headers=headers).json()["turns"][0]
    assert identity == reference.identity and identity.startswith("transformers:")
    assert f'monitor_reward_model_info{{identity="{identity}"}} 1.0' in metrics
    assert "monitor_scoring_errors_total 1.0" in metrics
    assert "monitor_scored_sequences_total 13.0" in metrics
    assert "monitor_scoring_duration_seconds_count" in metrics
    assert turn["scorer"] == identity and turn["score_truncated"] is True

    engine = make_engine(url)
    with make_session_factory(engine)() as session:
        rows = {t.conversation_id: t for t in session.scalars(select(Turn))}
    engine.dispose()
    assert rows["c-empty"].score is None and rows["c-empty"].score_error == "empty response"
    for i in range(12):
        expected = reference.score_conversations([events[i]["messages"]])[0].score
        assert rows[f"c-{i}"].score == pytest.approx(expected, abs=1e-5)
        assert rows[f"c-{i}"].scorer == identity and rows[f"c-{i}"].score_truncated is False


def test_build_scorer_follows_the_settings(topic_settings, rm_dir) -> None:
    from monitor.config import Settings

    assert isinstance(build_scorer(Settings()), ProducerRewardScorer)
    assert isinstance(build_scorer(Settings(rm_model=str(rm_dir))), TransformersScorer)
    with pytest.raises(ConfigError, match="not both"):
        build_scorer(Settings(rm_model=str(rm_dir), rm_url="http://127.0.0.1:1/v1/score"))


def test_an_unreachable_remote_scorer_holds_ingest_back_and_loses_nothing(topic_settings, tmp_path, rm_dir) -> None:
    from monitor.api.server import ApiServer
    from monitor.broker import free_port
    from monitor.scoring.server import create_scoring_app

    port = free_port()
    url = f"sqlite:///{tmp_path / 'remote.db'}"
    settings = topic_settings(database_url=url, rm_url=f"http://127.0.0.1:{port}", rm_retries=1,
                              rm_timeout_seconds=2, retry_backoff_seconds=0.2, retry_backoff_max_seconds=0.5)
    events = [conversation(f"r-{i}", 0, response=f"Remote answer {i}") for i in range(10)]
    produce(settings, [(settings.conversations_topic, e["conversation_id"].encode(), wire(e)) for e in events])
    with ServiceThread(settings) as service:
        ready = httpx.get(f"{service.url}/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["checks"]["scorer"] == {"ok": False}
        no_failure = 'monitor_batch_failures_total{stage="scoring"} 0.0'
        wait_for(lambda: no_failure not in httpx.get(f"{service.url}/metrics").text, what="a failed scoring batch")
        assert counts(url).turns == 0  # nothing stored (and no offsets committed) while scoring is down
        server = ApiServer(create_scoring_app(TransformersScorer(str(rm_dir))), "127.0.0.1", port)
        server.start()
        try:
            wait_for(lambda: counts(url).turns == 10, what="all turns once the scorer is back")
            wait_for(lambda: httpx.get(f"{service.url}/readyz").status_code == 200, what="readiness")
        finally:
            server.stop()
    engine = make_engine(url)
    with make_session_factory(engine)() as session:
        scorers = set(session.scalars(select(Turn.scorer)))
        scores = list(session.scalars(select(Turn.score)))
    engine.dispose()
    assert scorers == {f"remote:{TransformersScorer(str(rm_dir)).identity}"}
    assert all(score is not None for score in scores)
