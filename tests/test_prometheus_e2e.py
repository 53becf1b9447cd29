"""A real Prometheus (Debian's `prometheus`) scrapes a running monitor service fed simulated
traffic, evaluates deploy/prometheus/alerts.yml and sends to a real Alertmanager: on S1 (length
hacking) the divergence rule fires and Alertmanager's API shows it, and every query of every
dashboard returns data through Prometheus' HTTP API (``$segment`` set to the alert's segment;
review and relabel panels once an annotator has labelled items and a cycle has ended); on
stationary S0 traffic the divergence rules stay inactive."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from sqlalchemy import func, select

from monitor import dashboards
from monitor.broker import free_port
from monitor.sim.annotators import AnnotatorPool
from monitor.sim.traffic import TrafficSimulator
from monitor.store.db import make_engine, make_session_factory
from monitor.store.models import ReviewItem, Turn
from monitor.store.reads import store_counts
from tests.analysis_data import RATING_RATE, REFERENCE, s1_traffic
from tests.helpers import ServiceThread, produce, wait_for

ROOT = Path(__file__).resolve().parents[1]
DIVERGENCE_RULES = ("MonitorDivergenceAlertFiring", "MonitorSatisfactionGapBeyondThreshold", "MonitorRewardAUCDrop")


def binary(*names: str) -> str:
    for name in names:
        if found := shutil.which(name):
            return found
    pytest.skip(f"{names[0]} is not installed (bash scripts/system-deps.sh)")


@contextmanager
def prometheus_stack(tmp_path: Path, target: str) -> Iterator[tuple[str, str]]:
    """Alertmanager and Prometheus on free loopback ports; Prometheus scrapes ``target`` (host:port)
    every second with the deploy rules. Yields both base URLs; stops both."""
    prometheus, alertmanager = binary("prometheus"), binary("prometheus-alertmanager", "alertmanager")
    am_port, prom_port = free_port(), free_port()
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(
        {"route": {"receiver": "null", "group_wait": "1s"}, "receivers": [{"name": "null"}]}))
    rules = tmp_path / "alerts.yml"
    shutil.copy(ROOT / "deploy" / "prometheus" / "alerts.yml", rules)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                   "external_labels": {"monitor_url": f"http://{target}", "runbook_base": "https://runbooks.test"}},
        "rule_files": [str(rules)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
        "scrape_configs": [{"job_name": "monitor", "static_configs": [{"targets": [target]}]}],
    }))
    processes = [
        subprocess.Popen([alertmanager, f"--config.file={tmp_path / 'alertmanager.yml'}",
                          f"--storage.path={tmp_path / 'am-data'}", f"--web.listen-address=127.0.0.1:{am_port}",
                          "--cluster.listen-address="], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                          f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                          f"--web.listen-address=127.0.0.1:{prom_port}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    urls = (f"http://127.0.0.1:{prom_port}", f"http://127.0.0.1:{am_port}")
    try:
        for url in urls:
            wait_for(lambda u=url: _ready(u), timeout=60, interval=0.5, what=f"{url} ready")
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def query(prometheus: str, expr: str) -> list[dict]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    assert response.status_code == 200, (expr, response.text)
    return response.json()["data"]["result"]


def rule_states(prometheus: str) -> dict[str, list[dict]]:
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    return {rule["name"]: rule["alerts"] for group in groups for rule in group["rules"] if rule["type"] == "alerting"}


def feed(service: ServiceThread, traffic: list) -> None:
    settings = service.settings
    turns = sum(m.kind == "conversation" for m in traffic)
    produce(settings, [(settings.conversations_topic if m.kind == "conversation" else settings.ratings_topic,
                        m.key.encode(), m.value) for m in traffic])
    engine = make_engine(settings.database_url)

    def ingested_and_derived() -> bool:
        with make_session_factory(engine)() as session:
            pending = session.scalar(select(func.count()).select_from(Turn).where(Turn.sig_length_tokens.is_(None)))
            return store_counts(session).turns == turns and pending == 0

    try:
        wait_for(ingested_and_derived, timeout=300, interval=1.0, what="every turn ingested and derived")
    finally:
        engine.dispose()


def annotate_review_items(service: ServiceThread, traffic: list, limit: int = 40) -> int:
    """Simulated annotators label review items (rubric) through the API, from each turn's hidden truth."""
    truth = {json.loads(m.value)["event_id"]: m.truth for m in traffic if m.kind == "conversation"}
    engine = make_engine(service.settings.database_url)
    with make_session_factory(engine)() as session:
        events = dict(session.execute(select(ReviewItem.id, ReviewItem.event_id)).all())
    engine.dispose()
    pool = AnnotatorPool.build(2, seed=3)
    rng = np.random.default_rng(3)
    given = 0
    for annotator in pool.annotators:
        with httpx.Client(base_url=service.url, headers=service.headers("annotator"), timeout=30) as http:
            for _ in range(limit):
                response = http.post("/v1/review/next")
                if response.status_code != 200:
                    break
                item = response.json()
                if item["task"] == "pairwise":
                    labels = {"preference": annotator.prefer(0.5, 0.4, rng)}
                else:
                    labels = annotator.label(truth[str(events[item["item_id"]])], rng)
                posted = http.post(f"/v1/review/items/{item['item_id']}/annotations",
                                   json={"lease_id": item["lease_id"], "labels": labels})
                assert posted.status_code == 201, posted.text
                given += 1
    return given


def settings_for(topic_settings, tmp_path: Path):
    return topic_settings(database_url=f"sqlite:///{tmp_path / 'serve.db'}", analyze_interval_seconds=1.0,
                          analyze_reference_labels=REFERENCE, analyze_window_minutes=10.0, analyze_drift_rows=0,
                          review_period_minutes=5.0)


def test_on_s1_the_divergence_rule_fires_into_alertmanager_and_every_dashboard_query_has_data(
        topic_settings, tmp_path) -> None:
    with ServiceThread(settings_for(topic_settings, tmp_path)) as service, \
            prometheus_stack(tmp_path, service.url.removeprefix("http://")) as (prometheus, alertmanager):
        traffic = s1_traffic()
        feed(service, traffic)
        firing = wait_for(lambda: [a for a in rule_states(prometheus).get("MonitorDivergenceAlertFiring", [])
                                   if a["state"] == "firing"], timeout=180, interval=1.0,
                          what="MonitorDivergenceAlertFiring firing in Prometheus")
        hacked = next(a for a in firing if a["labels"]["mode"] == "verbosity")
        segment = hacked["labels"]["segment"]
        assert hacked["annotations"]["page"] == f"{service.url}/alerts?state=firing&segment={segment}"
        received = wait_for(lambda: [a for a in httpx.get(f"{alertmanager}/api/v2/alerts", timeout=10).json()
                                     if a["labels"]["alertname"] == "MonitorDivergenceAlertFiring"],
                            timeout=60, interval=1.0, what="the alert in Alertmanager")
        assert {a["labels"]["segment"] for a in received} >= {segment}

        # People at work: review items labelled, a relabeling cycle on the alert labelled to its end.
        assert annotate_review_items(service, traffic) > 0
        admin = service.headers("admin")
        with httpx.Client(base_url=service.url, timeout=120) as http:
            alert_id = next(a["id"] for a in http.get("/v1/alerts", params={"state": "firing"}, headers=admin)
                            .json()["alerts"] if a["segment"] == segment and a["mode"] == "verbosity")
            cycle = http.post("/v1/relabel-cycles", json={"alert_id": alert_id, "size": 6, "strategy": "random"},
                              headers=admin)
            assert cycle.status_code == 201, cycle.text
            annotate_review_items(service, traffic)
            wait_for(lambda: http.get(f"/v1/relabel-cycles/{cycle.json()['id']}", headers=admin)
                     .json()["status"] == "complete", timeout=60, interval=1.0, what="the cycle complete")

        def empty_queries() -> list[tuple[str, str]]:
            return [(spec.uid, expr) for spec in dashboards.DASHBOARDS
                    for expr in dashboards.queries(spec, segment=segment) if not query(prometheus, expr)]

        # The keeper records the ended cycle on the next analyzer run, Prometheus scrapes it a second later.
        deadline = time.monotonic() + 60
        while (missing := empty_queries()) and time.monotonic() < deadline:
            time.sleep(2)
        assert missing == [], f"{len(missing)} dashboard queries without data"


def test_on_stationary_traffic_the_divergence_rules_stay_inactive(topic_settings, tmp_path) -> None:
    with ServiceThread(settings_for(topic_settings, tmp_path)) as service, \
            prometheus_stack(tmp_path, service.url.removeprefix("http://")) as (prometheus, _):
        traffic = list(TrafficSimulator(3, rating_rate=RATING_RATE).messages(10.0, 820.0))
        feed(service, traffic)
        # The analyzer has judged every segment (reference fitted, window full), for a while.
        wait_for(lambda: query(prometheus, "count(monitor_segment_reward_auc_ratio >= 0)"), timeout=120,
                 interval=1.0, what="segments judged")
        wait_for(lambda: query(prometheus, "increase(monitor_analyze_runs_total{outcome=\"ok\"}[1m]) > 10"),
                 timeout=120, interval=1.0, what="a minute of analyzer runs")
        states = rule_states(prometheus)
        assert all(states[name] == [] for name in DIVERGENCE_RULES), {name: states[name] for name in DIVERGENCE_RULES}
        assert query(prometheus, "max(monitor_alerts_firing)")[0]["value"][1] == "0"
