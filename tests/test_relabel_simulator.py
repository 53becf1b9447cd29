"""End to end on the simulator: S1 (length hacking) fires divergence alerts; a relabeling cycle
opens on the verbosity alert through the API (dense families of answers that contrast verbosity,
and control pairs that do not) and one per alert by policy; simulated annotators, who see each
answer's hidden quality through noise, label the pairs through the review API; the cycle
completes, its Bradley-Terry strengths rank the answers like their hidden quality (Spearman at
least 0.9 within families), its RM audit shows the RM far less accurate on the pairs verbosity
sets apart than on the control pairs, and its export loads with ``datasets``, the chosen answer
the better one. One store
(SQLite) for the module: the analysis takes half a minute."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import timedelta

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from monitor.analyze.runner import Analyzer
from monitor.analyze.segments import SegmentScheme
from monitor.api.app import create_app
from monitor.api.context import AppContext
from monitor.api.server import ApiServer
from monitor.config import Settings
from monitor.health import HealthState
from monitor.relabel.bradley_terry import spearman
from monitor.relabel.cycles import labelled_pairs
from monitor.relabel.keeper import CycleKeeper
from monitor.scoring.base import ProducerRewardScorer
from monitor.sim.annotators import AnnotatorPool
from monitor.sim.traffic import DEFAULT_START
from monitor.store.db import make_engine, make_session_factory
from monitor.store.migrate import upgrade
from monitor.store.models import RelabelCycle, ReviewItem, Turn
from tests.analysis_data import ONSET_S, REFERENCE, s1_traffic, write
from tests.helpers import api_key

datasets = pytest.importorskip("datasets")

ANNOTATORS = 3


@pytest.fixture(scope="module")
def s1(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('s1') / 'monitor.db'}"
    upgrade(url)
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    traffic = s1_traffic()
    write(sessions, traffic)
    settings = Settings(database_url=url, analyze_reference_labels=REFERENCE, analyze_window_minutes=10,
                        analyze_drift_rows=0, review_enabled=False)
    Analyzer(settings, sessions).run_once(publish=False)
    quality = {json.loads(m.value)["event_id"]: m.truth.quality for m in traffic if m.kind == "conversation"}
    with sessions() as session:
        by_turn = {turn_id: quality[str(event_id)] for turn_id, event_id in session.execute(
            select(Turn.id, Turn.event_id))}
    server = ApiServer(create_app(AppContext(settings, engine, sessions, HealthState(), CollectorRegistry(),
                                             ProducerRewardScorer())), "127.0.0.1", 0)
    server.start()
    yield settings, sessions, server.url, by_turn
    server.stop()
    engine.dispose()


def label_through_the_queue(url: str, sessions, quality: dict[int, float], seed: int = 5) -> int:
    """Every open pair, by each simulated annotator once, through /v1/review/next and the
    annotation route; returns how many labels were given. (The page shows A and B blind; the
    simulator looks up which turn each is, to know its hidden quality.)"""
    with sessions() as session:
        sources = {item_id: {c["label"]: int(c["source"].split(":")[1]) for c in candidates}
                   for item_id, candidates in session.execute(select(ReviewItem.id, ReviewItem.candidates)
                                                              .where(ReviewItem.cycle_id.is_not(None)))}
    database_url = str(sessions.kw["bind"].url.render_as_string(hide_password=False))
    pool = AnnotatorPool.build(ANNOTATORS, seed=seed)
    rng = np.random.default_rng(seed)
    given = 0
    for annotator in pool.annotators:
        headers = api_key(database_url, "annotator")
        with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
            while (response := http.post("/v1/review/next")).status_code == 200:
                item = response.json()
                sides = {label: quality[turn] for label, turn in sources[item["item_id"]].items()}
                answer = annotator.prefer(sides["A"], sides["B"], rng)
                posted = http.post(f"/v1/review/items/{item['item_id']}/annotations",
                                   json={"lease_id": item["lease_id"], "labels": {"preference": answer}})
                assert posted.status_code == 201, posted.text
                given += 1
            assert response.status_code == 204, response.text
    return given


def within_families(strengths: list[dict], labelled_sides: list[tuple[str, str]],
                    truth: dict[str, float]) -> tuple[float, float]:
    """How strengths rank the answers against their hidden quality, within each connected
    component of the comparison graph (strengths are comparable only there; components of 3+
    answers): Spearman's rho of the component-centred values, and Goodman-Kruskal's gamma over
    pairs of answers of one component whose quality differs (the simulator's quality takes few
    values, half the answers share one: Spearman counts the order BT must invent inside such a
    tie against it, gamma leaves those pairs out)."""
    parent: dict[str, str] = {}

    def find(node: str) -> str:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for a, b in labelled_sides:
        parent[find(a)] = find(b)
    members: dict[str, list[dict]] = defaultdict(list)
    for row in strengths:
        members[find(row["response"])].append(row)
    xs: list[float] = []
    ys: list[float] = []
    concordant = discordant = 0
    for rows in members.values():
        if len(rows) >= 3:
            s = np.array([r["strength"] for r in rows])
            q = np.array([truth[r["response"]] for r in rows])
            xs += list(s - s.mean())
            ys += list(q - q.mean())
            agree = np.sign(s[:, None] - s[None, :]) * np.sign(q[:, None] - q[None, :])
            concordant += int((agree > 0).sum()) // 2
            discordant += int((agree < 0).sum()) // 2
    return spearman(np.array(xs), np.array(ys)), (concordant - discordant) / (concordant + discordant)


def test_a_cycle_on_a_hacked_segment_recovers_the_truth_and_audits_the_rm(s1, tmp_path) -> None:
    settings, sessions, url, quality = s1
    admin = api_key(settings.database_url, "admin")
    with httpx.Client(base_url=url, headers=admin, timeout=300) as http:
        alerts = http.get("/v1/alerts", params={"state": "firing"}).json()["alerts"]
        hacked = next(a for a in alerts if a["mode"] == "verbosity" and a["segment"].startswith("investments"))
        body = {"alert_id": hacked["id"], "since": (DEFAULT_START + timedelta(seconds=ONSET_S)).isoformat(),
                "size": 150, "strategy": "divergence", "labels_per_pair": ANNOTATORS, "pairs_per_response": 8,
                "design": "dense"}
        created = http.post("/v1/relabel-cycles", json=body)
        assert created.status_code == 201, created.text
        cycle_id = created.json()["id"]
        assert created.json()["progress"]["pairs"] == 150
        assert label_through_the_queue(url, sessions, quality) == 150 * ANNOTATORS
        cycle = http.get(f"/v1/relabel-cycles/{cycle_id}").json()
        page = http.post("/login", data={"key": admin["Authorization"].removeprefix("Bearer "),
                                         "next": f"/cycles/{cycle_id}"}, follow_redirects=True)
        exported = http.get(f"/v1/relabel-cycles/{cycle_id}/export", params={"format": "jsonl"})
    assert cycle["status"] == "complete" and cycle["progress"]["labels"] == 150 * ANNOTATORS
    results = cycle["results"]
    bt = results["bradley_terry"]
    truth = {row["response"]: quality[int(row["response"].split(":")[1])] for row in bt["strengths"]}
    with sessions() as session:
        sides = [(p.a.key, p.b.key) for _, p in labelled_pairs(session, cycle_id)]
    rho, gamma = within_families(bt["strengths"], sides, truth)
    print(f"BT: {bt['responses']} answers, {bt['comparisons']} comparisons, {bt['components']} families, "
          f"within families Spearman {rho:.3f}, gamma {gamma:.3f}; style {bt['style']}")
    assert rho >= 0.9 and gamma >= 0.8, (rho, gamma)
    # The RM against people: on the pairs verbosity sets apart it does much worse than on the
    # control pairs of the same slice, labelled by the same annotators.
    arms = results["rm_audit"]["modes"]
    effect = results["rm_mode_effect"]
    print("RM audit by arm:", {m: (round(f["accuracy"], 3), f["pairs"], [round(b, 3) for b in f["ci95"]])
                               for m, f in arms.items()}, "difference", round(effect["difference"], 3),
          [round(b, 3) for b in effect["ci95"]], "reference (users)", results["reference_accuracy"]["segments"])
    by_contrast = results["rm_audit_by_contrast"]
    print("by contrast:", {m: (round(f["accuracy"], 3), f["pairs"]) for m, f in by_contrast.items()})
    assert set(arms) == {"verbosity", "none"} and arms["none"]["pairs"] >= 0.2 * 150 * ANNOTATORS * 0.8
    assert effect["mode"] == "verbosity" and effect["ci95"][1] < 0 and effect["difference"] < -0.15
    assert arms["verbosity"]["ci95"][0] < arms["verbosity"]["accuracy"] < arms["verbosity"]["ci95"][1]
    assert by_contrast["verbosity"]["pairs"] >= arms["verbosity"]["pairs"]
    assert page.status_code == 200 and 'id="mode-effect"' in page.text and "control pairs" in page.text
    assert results["reference_accuracy"]["segments"][hacked["segment"]]["pairs"] > 0
    assert bt["style"]["features"] == ["log_length_tokens", "markdown_density"]
    # The export: one row per pair with a clear majority, the chosen answer the better one.
    assert exported.status_code == 200
    path = tmp_path / f"cycle-{cycle_id}.jsonl"
    path.write_bytes(exported.content)
    rows = datasets.load_dataset("json", data_files=str(path), split="train")
    assert len(rows) >= 100
    truths = [(quality[int(r["source_chosen"].split(":")[1])], quality[int(r["source_rejected"].split(":")[1])])
              for r in rows]
    decided = [chosen > rejected for chosen, rejected in truths if chosen != rejected]
    assert sum(decided) / len(decided) >= 0.9  # the chosen answer is the better one
    for row in rows.select(range(20)):
        assert row["prompt"][0]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
        assert row["cycle_id"] == cycle_id


def test_the_policy_opens_a_cycle_per_alert_and_the_alerts_link_them(s1) -> None:
    settings, sessions, url, _ = s1
    with httpx.Client(base_url=url, headers=api_key(settings.database_url, "viewer"), timeout=60) as http:
        before = http.get("/v1/alerts", params={"state": "firing"}).json()["alerts"]
    policy = settings.model_copy(update={"relabel_auto_enabled": True, "relabel_auto_size": 20})
    kept = CycleKeeper(policy, sessions, SegmentScheme.from_settings(policy)).run(publish=False)
    with httpx.Client(base_url=url, headers=api_key(settings.database_url, "viewer"), timeout=60) as http:
        alerts = http.get("/v1/alerts", params={"state": "firing"}).json()["alerts"]
    # The other test's cycle, opened on an alert, already covers it: the policy opens the rest.
    uncovered = [a for a in before if not a["relabel_cycles"]]
    assert len(alerts) >= 2 and len(kept.opened) == len(uncovered) >= 1
    with sessions() as session:
        cycles = {c.id: c for c in session.scalars(select(RelabelCycle))}
    for alert in alerts:
        assert len(alert["relabel_cycles"]) == 1
        cycle = cycles[alert["relabel_cycles"][0]]
        assert cycle.request["mode"] == alert["mode"]
        assert cycle.created_by == "policy" or alert["id"] not in {a["id"] for a in uncovered}
