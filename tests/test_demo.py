"""`monitor demo`: its pace and checks, its live view, and the real command end to end.

The end-to-end test runs the real CLI with the default story (S1, length hacking, references of 200
stars-rated turns, the production detectors) on two of the five domains (``--domains``, documented:
fewer segments reach the same story sooner), so that it fits in CI.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import select

from monitor.broker import free_port
from monitor.config import load_settings
from monitor.demo import (
    DEMO_ANALYSIS,
    DEMO_DATABASE,
    DEMO_STORIES,
    DemoPace,
    _Demo,
    _progress_view,
    _Snapshot,
    demo_scenario,
    demo_settings,
    parse_domains,
    plan_onset,
)
from monitor.sim.produce import ProduceCounts
from monitor.store.db import make_engine, make_session_factory
from monitor.store.keys import active_key
from monitor.store.models import Alert, AnalysisRun
from monitor.store.reads import StoreCounts
from tests.helpers import api_key, counts, wait_for
from tests.test_cli import _answers, monitor_env

#: The promise: a correctly attributed alert within five minutes of the command.
BUDGET_SECONDS = 300


def demo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "monitor", "demo", *args]


# ---- pace, onset and options -------------------------------------------------------------------

def test_the_default_pace_fills_references_before_its_onset() -> None:
    pace = DemoPace()
    # 12 turns/s, all rated, over five domains: 2.4 rated turns a second per segment.
    assert pace.labels_per_segment_second == pytest.approx(2.4)
    assert pace.reference_seconds() == pytest.approx(200 / 2.4)
    assert plan_onset(pace, None) == 125.0  # 1.25 x 83 s + a 20 s mean rating delay, in steps of 5 s
    assert plan_onset(pace, 400.0) == 400.0
    # Fewer domains: each segment fills sooner, so the same story can start sooner.
    assert plan_onset(DemoPace(domains=("cards", "payments")), None) == 65.0


@pytest.mark.parametrize("onset", [0.0, 60.0, 120.0])
def test_an_onset_before_the_references_fill_is_refused_with_the_earliest_valid_one(onset: float) -> None:
    with pytest.raises(ValueError, match=r"--onset .* is too early: .* fill its reference of 200 rated turns.*"
                                         r"use --onset 125 or more"):
        plan_onset(DemoPace(), onset)


def test_domains_and_scenarios_are_checked() -> None:
    assert parse_domains("general, cards") == ("cards", "general")  # the simulator's order
    for bad in ("", "cards,cards", "shoes", ","):
        with pytest.raises(ValueError, match="--domains takes distinct names"):
            parse_domains(bad)
    assert demo_scenario("S1", 125.0, ("cards",)).onset_s == 125.0
    with pytest.raises(ValueError, match="--scenario must be one of S0, S1, S3, S4, S7"):
        demo_scenario("S5", 125.0, ("cards",))
    with pytest.raises(ValueError, match="S7 shifts investments only; add it to --domains"):
        demo_scenario("S7", 125.0, ("cards",))


def test_every_story_names_the_mode_its_alert_must_have() -> None:
    assert {name: story.mode for name, story in DEMO_STORIES.items()} == {
        "S1": "verbosity", "S3": "formatting", "S4": "over-refusal", "S7": "overpromise", "S0": None}


def test_each_demo_gets_a_fresh_store_unless_kept(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("MONITOR_"):
            monkeypatch.delenv(name)
    path = tmp_path / DEMO_DATABASE
    settings, line = demo_settings(load_settings(), keep=False)
    assert settings.database_url == f"sqlite:///{path}" and "(new; --keep keeps it)" in line
    assert settings.analyze_reference_labels == DEMO_ANALYSIS["analyze_reference_labels"]
    path.write_bytes(b"last run")
    (tmp_path / f"{DEMO_DATABASE}-wal").write_bytes(b"last run's log")
    _, line = demo_settings(load_settings(), keep=True)
    assert path.read_bytes() == b"last run" and "kept from the last demo" in line
    _, line = demo_settings(load_settings(), keep=False)
    assert not path.exists() and not (tmp_path / f"{DEMO_DATABASE}-wal").exists() and "recreated" in line
    # A store the operator named is never emptied; MONITOR_* pace settings win over the demo's.
    monkeypatch.setenv("MONITOR_DATABASE_URL", f"sqlite:///{tmp_path / 'mine.db'}")
    monkeypatch.setenv("MONITOR_ANALYZE_REFERENCE_LABELS", "300")
    settings, line = demo_settings(load_settings(), keep=False)
    assert settings.database_url.endswith("mine.db") and "kept as it is" in line
    assert settings.analyze_reference_labels == 300


def test_the_live_view_labels_its_clocks_adds_up_and_hides_segments_without_traffic() -> None:
    from rich.console import Console

    now = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
    demo = _Demo(DEMO_STORIES["S1"], demo_scenario("S1", 125.0, DemoPace().domains),
                 traffic_started=(now - timedelta(seconds=200)).timestamp())
    demo.produced = ProduceCounts(conversations=2_400, ratings=2_200)
    segment = {"turns": 480, "reference_labels_needed": 0, "labelled_total": 400, "gap": -0.07,
               "gap_ci95": [-0.11, -0.03]}
    run = AnalysisRun(finished_at=now, watermark=now - timedelta(seconds=17), labelled=2000, segments=[
        {**segment, "segment": "cards/*/*", "status": "diverging"},
        {**segment, "segment": "fraud/*/*", "status": "warming_up", "reference_labels_needed": 40,
         "labelled_total": 160},
        {"segment": "other/*/*", "status": "warming_up", "turns": 0}])
    alert = Alert(segment="cards/*/*", detector="cusum", direction="down", mode="verbosity", state="firing",
                  started_at=now - timedelta(seconds=50), first_seen_at=now - timedelta(seconds=30))
    snapshot = _Snapshot(StoreCounts(turns=2_390, ratings=2_150, ratings_joined=2_140, dead_letters=0),
                         now - timedelta(seconds=2), run, [alert])
    console = Console(width=200, record=True)
    console.print(_progress_view(demo, snapshot, 210.0, now))
    text = console.export_text()
    assert "wall clock 12:00:00 UTC   running 3m30s" in text
    assert "starts at 11:58:45 event time (1m15s ago); expected alert mode: verbosity" in text
    assert re.search(r"conversation turns\s*│\s*2,400\s*│\s*2,390\s*│\s*10", text)  # produced = stored + in flight
    assert re.search(r"ratings\s*│\s*2,200\s*│\s*2,150 \(2,140 joined, 10 before their turn\)\s*│\s*50", text)
    assert "11:59:58 (2 s behind the wall clock)" in text
    assert "40 more needed" in text and "-0.070 [-0.110, -0.030]" in text
    assert "other/*/*" not in text.split("hidden:")[0] and "hidden: other/*/* (no demo traffic" in text
    assert "ALERT firing   cards/*/*  mode verbosity = the announced mode" in text


@pytest.mark.parametrize("args, message", [
    (["--onset", "30"], "--onset 30 is too early"),
    (["--scenario", "S5"], "--scenario must be one of"),
    (["--domains", "shoes"], "--domains takes distinct names"),
])
def test_bad_demo_options_are_one_line_and_exit_2(tmp_path, args: list[str], message: str) -> None:
    result = subprocess.run(demo_command(*args), env=monitor_env(), cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {message}") and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / DEMO_DATABASE).exists()  # nothing started


# ---- the real command -----------------------------------------------------------------------------

def _alerts(url: str) -> list[Alert]:
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            return list(session.scalars(select(Alert).order_by(Alert.id)))
    finally:
        engine.dispose()


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines()
            if re.search(r'"level": ?"(error|critical)"|Traceback|Exception ignored|ERROR', line)]


@pytest.mark.slow
def test_demo_tells_the_announced_story_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    api_port = free_port()
    url = f"sqlite:///{tmp_path / DEMO_DATABASE}"
    started = datetime.now(UTC)
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(demo_command("--domains", "cards,payments"), env=monitor_env(api_port=api_port),
                                   cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_for(lambda: bool(_answers(f"http://127.0.0.1:{api_port}/readyz")), timeout=90, what="a ready demo")
        children = psutil.Process(process.pid).children(recursive=True)
        assert children, "the embedded broker runs as a child process"
        identity = httpx.get(f"http://127.0.0.1:{api_port}/v1/reward-model", headers=api_key(url, "viewer")).json()
        assert identity["identity"].startswith("transformers:demo-rm-v1@")  # the bundled demo RM scores

        def firing() -> bool:
            return any(alert.state == "firing" for alert in _alerts(url))
        wait_for(firing, timeout=BUDGET_SECONDS, interval=2.0, what="the first alert")
        first = min((a for a in _alerts(url) if a.state == "firing"), key=lambda a: (a.first_seen_at, a.id))
        to_first_alert = (first.first_seen_at - started).total_seconds()
        print(f"first alert {to_first_alert:.0f} s after the command: {first.segment} {first.mode}")
        assert to_first_alert <= BUDGET_SECONDS
        time.sleep(45)  # it stays firing while the demo goes on (no flapping): checked below
        process.send_signal(signal.SIGINT)  # Ctrl-C
        process.wait(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = stderr_path.read_text()
    assert process.returncode == 0, output[-3000:]
    assert not _error_lines(output), _error_lines(output)
    assert not [child.pid for child in children if _alive(child)], "the broker outlived the demo"
    alerts = _alerts(url)
    assert alerts and all(alert.mode == "verbosity" for alert in alerts), \
        [(a.segment, a.mode) for a in alerts]
    assert all(alert.state == "firing" and alert.resolved_at is None for alert in alerts)  # none withdrawn
    assert "mode verbosity = the announced mode" in output and "demo stopped cleanly" in output
    # Where to look: the alert's API URL and page, the review page with an annotator key.
    assert f"http://127.0.0.1:{api_port}/v1/alerts" in output and f"/alerts/{first.id}" in output
    keys = re.findall(r"API key  (mon_\S+)  \((admin|annotator)", output)
    assert [role for _, role in keys] == ["admin", "annotator"]
    assert f"sign in with the annotator key {keys[1][0]}" in output
    engine = make_engine(url)
    with make_session_factory(engine)() as session:
        assert active_key(session, keys[0][0]).role == "admin"  # type: ignore[union-attr]
    engine.dispose()


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_second_demo_in_the_same_folder_ingests_and_keep_adds_to_the_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / DEMO_DATABASE}"

    def demo(*args: str) -> int:
        result = subprocess.run(demo_command("--duration", "20", *args), env=monitor_env(api_port=free_port()),
                                cwd=tmp_path, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "demo stopped cleanly" in result.stderr and not _error_lines(result.stderr)
        return counts(url).turns

    first = demo()
    assert first > 20
    second = demo()  # a fresh store, bound to this run's broker: it ingests again
    assert second > 20
    kept = demo("--keep")  # the same store; a fresh seed, so the new events are not replays
    assert kept > second + 20

