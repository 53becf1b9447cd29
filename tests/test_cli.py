"""Every CLI command, run for real as a subprocess (`python -m monitor ...`)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import httpx
import pytest

from monitor.broker import free_port
from monitor.sim import banks, paraphrases
from monitor.store.migrate import head_revision
from tests.factories import conversation, wire
from tests.helpers import api_key, counts, produce, read_topic, wait_for


def monitor_env(**settings: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    env.update({f"MONITOR_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def run(*args: str, timeout: float = 120, **settings: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "monitor", *args], env=monitor_env(**settings),
                          capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_command() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("serve", "demo", "simulate", "db", "bench", "signals", "keys"):
        assert command in result.stdout


def test_db_upgrade_then_current(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    before = run("db", "current", database_url=url)
    assert before.returncode == 1 and "none (empty database)" in before.stdout
    upgraded = run("db", "upgrade", database_url=url)
    assert upgraded.returncode == 0, upgraded.stderr
    after = run("db", "current", database_url=url)
    assert after.returncode == 0
    assert f"current: {head_revision()}" in after.stdout


def test_db_upgrade_on_postgresql(pg_databases) -> None:
    url = pg_databases()
    assert run("db", "upgrade", database_url=url).returncode == 0
    assert run("db", "current", database_url=url).returncode == 0


def test_an_unknown_setting_fails_at_start_naming_it() -> None:
    result = run("serve", batchsize=10)
    assert result.returncode == 2
    assert "MONITOR_BATCHSIZE" in result.stderr


def test_an_invalid_setting_fails_at_start_naming_it() -> None:
    result = run("db", "upgrade", batch_size="lots")
    assert result.returncode == 2
    assert "MONITOR_BATCH_SIZE" in result.stderr


def test_serve_ingests_and_finishes_cleanly_on_sigterm(topic_settings, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    settings = topic_settings(database_url=url)
    port = free_port()
    produce(settings, [(settings.conversations_topic, b"k", wire(conversation(f"s-{i}", 0))) for i in range(20)])
    process = subprocess.Popen(
        [sys.executable, "-m", "monitor", "serve"],
        env=monitor_env(database_url=url, kafka_bootstrap=settings.kafka_bootstrap,
                        conversations_topic=settings.conversations_topic, ratings_topic=settings.ratings_topic,
                        dlq_topic=settings.dlq_topic, consumer_group=settings.consumer_group,
                        session_timeout_ms=6000, max_poll_interval_ms=20000, api_port=port),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), timeout=60, what="the API")
        wait_for(lambda: counts(url).turns == 20, timeout=60, what="20 turns")
        served = httpx.get(f"http://127.0.0.1:{port}/v1/conversations/s-3", headers=api_key(url)).json()
        assert served["turns"][0]["turn"] == 0
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert '"msg": "ingest loop stopped"' in stderr and '"msg": "service stopped"' in stderr


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_simulate_produces_valid_events(topic_settings) -> None:
    settings = topic_settings()
    result = run("simulate", "--rate", "50", "--duration", "2", "--seed", "4", "--fast",
                 kafka_bootstrap=settings.kafka_bootstrap, conversations_topic=settings.conversations_topic,
                 ratings_topic=settings.ratings_topic)
    assert result.returncode == 0, result.stderr
    produced = re.search(r"produced (\d+) conversation events and (\d+) ratings", result.stdout)
    assert produced
    n_conversations = int(produced.group(1))
    assert 50 <= n_conversations <= 150
    messages = read_topic(settings, settings.conversations_topic, expected=n_conversations)
    assert len(messages) == n_conversations
    assert {m["schema"] for m in messages} == {"conversation/v1"}


def test_simulate_rejects_bad_arguments() -> None:
    result = run("simulate", "--rate", "0")
    assert result.returncode == 2
    result = run("simulate", "--phrasing", "poetry")
    assert result.returncode == 2 and "phrasing must be one of bank, paraphrase" in result.stderr


def test_simulate_with_paraphrase_banks(topic_settings) -> None:
    settings = topic_settings()
    result = run("simulate", "--rate", "100", "--duration", "3", "--seed", "4", "--fast", "--phrasing", "paraphrase",
                 kafka_bootstrap=settings.kafka_bootstrap, conversations_topic=settings.conversations_topic,
                 ratings_topic=settings.ratings_topic)
    assert result.returncode == 0, result.stderr
    produced = re.search(r"produced (\d+) conversation events", result.stdout)
    assert produced
    messages = read_topic(settings, settings.conversations_topic, expected=int(produced.group(1)))
    responses = [m["messages"][-1]["content"] for m in messages]
    assert any(opener in r for r in responses for opener in paraphrases._FLATTERY)
    assert not any(opener in r for r in responses for opener in banks._FLATTERY)


def test_simulate_reports_an_unreachable_broker() -> None:
    result = run("simulate", "--duration", "1", "--fast", kafka_bootstrap=f"127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert "cannot reach Kafka" in result.stderr


def test_bench_ingest_prints_every_path_and_the_ratio(pg_databases) -> None:
    result = run("bench", "ingest", "--events", "2000", "--workers", "2", "--database-url", pg_databases(),
                 timeout=400)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(C CRC-32C on every path)" in result.stdout
    assert re.search(r"\(a\) bare kafka-python loop\s+[\d,]+ events/s .*the fastest of 3 runs", result.stdout)
    # The worker processes stored every event (the bench checks the count) and report their rate.
    assert re.search(r"\(d\) 2 worker processes -> postgresql\s+[\d,]+ events/s .* \d+\.\d\d of \(a\)", result.stdout)
    assert re.search(r"\(b\) ingest loop -> postgresql\s+[\d,]+ events/s .* \d+\.\d\d of \(a\)", result.stdout)
    assert re.search(r"\(c\) serve as deployed -> postgresql\s*[\d,]+ events/s", result.stdout)
    assert re.search(r"ratio \(c\)/\(a\)\s+\d+\.\d\d", result.stdout)


def test_bench_ingest_refuses_the_pure_python_crc(monkeypatch) -> None:
    from kafka.record import util

    from monitor.bench.ingest import c_crc32c, run_ingest_benchmark
    from monitor.errors import MonitorError

    assert c_crc32c()  # a dependency: the bench and serve run with the C CRC-32C here
    monkeypatch.setattr(util.calc_crc32c, "__defaults__", (util.crc32c_py,))
    assert not c_crc32c()
    with pytest.raises(MonitorError, match="pure-Python CRC-32C"):
        run_ingest_benchmark(events=10, database_url="sqlite:///unused.db")


def test_serve_reports_an_unreachable_database() -> None:
    result = run("serve", database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere")
    assert result.returncode == 2
    assert result.stderr.startswith("error: cannot reach the database postgresql://postgres@127.0.0.1:")
    assert result.stderr.count("\n") == 1


def test_serve_refuses_an_outdated_schema_without_auto_upgrade(tmp_path) -> None:
    result = run("serve", database_url=f"sqlite:///{tmp_path / 'old.db'}", db_auto_upgrade="false")
    assert result.returncode == 2
    assert "run `monitor db upgrade`" in result.stderr


def test_rm_build_demo_writes_a_loadable_reward_model(tmp_path) -> None:
    target = tmp_path / "demo-rm"
    result = run("rm", "build-demo", str(target), "--pairs", "120", "--bias", "0.5", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"demo reward model in .*: \d+ pairs, train accuracy [\d.]+%, held-out accuracy", result.stdout)
    from monitor.scoring.transformers_scorer import TransformersScorer

    [outcome] = TransformersScorer(str(target)).score_conversations(
        [[{"role": "user", "content": "How do I freeze my card?"}, {"role": "assistant", "content": "Tap Freeze."}]])
    assert outcome.score is not None


def test_rm_serve_scores_over_http(tmp_path) -> None:
    from tests.rm_fixtures import build_tiny_bert_rm

    model = build_tiny_bert_rm(tmp_path / "rm")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "monitor", "rm", "serve", "--port", str(port)],
                               env=monitor_env(rm_model=model), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), timeout=60, what="the scoring server")
        body = httpx.post(f"http://127.0.0.1:{port}/v1/score", json={"conversations": [
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]]}).json()
        assert body["model"].startswith("transformers:rm@") and isinstance(body["outcomes"][0]["score"], float)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)


def test_rm_serve_needs_a_model() -> None:
    result = run("rm", "serve")
    assert result.returncode == 2 and "MONITOR_RM_MODEL" in result.stderr


def test_bench_scoring_prints_every_path_and_the_ratio(tmp_path) -> None:
    from tests.rm_fixtures import build_tiny_bert_rm

    model = build_tiny_bert_rm(tmp_path / "rm")
    result = run("bench", "scoring", "--model", str(model), "--count", "20", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for path in ("naive", "bucketed", "ours"):
        assert re.search(rf"^{path}\s+[\d.]+\s+[\d,]+\s+[\d.]+%", result.stdout, re.MULTILINE)
    assert re.search(r"ours / best bare path \(tokens/s\): \d+\.\d\d", result.stdout)
