"""`monitor relabel start | list | show | export`, run for real as subprocesses on a SQLite store:
an idempotent start, the cycle listed and shown, 409-style refusal before labels, the export
(default name in the working directory, and --format parquet --output), and bad input exiting 2
with a one-line error and no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from monitor.analyze.segments import SegmentScheme
from monitor.config import Settings
from monitor.review.queue import ReviewQueue
from monitor.store.db import make_engine, make_session_factory
from monitor.store.migrate import upgrade
from tests.analysis_data import write_records
from tests.test_cli import monitor_env, run
from tests.test_relabel_export import CARD, candidate_conversations

START = ("relabel", "start", "--segment", "payments", "--size", "3", "--strategy", "uncertainty",
         "--since", "2026-11-29T09:00:00Z")


@pytest.fixture
def store(tmp_path):
    url = f"sqlite:///{tmp_path / 'relabel.db'}"
    upgrade(url)
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    write_records(sessions, candidate_conversations([f"cli-{i}" for i in range(3)]))
    yield url, sessions
    engine.dispose()


def test_start_list_show_and_export(store, tmp_path) -> None:
    url, sessions = store
    started = run(*START, "--idempotency-key", "cli-1", database_url=url)
    assert started.returncode == 0, started.stderr
    cycle = json.loads(started.stdout)
    assert (cycle["status"], cycle["created_by"], cycle["progress"]["pairs"]) == ("collecting", "cli", 3)
    assert cycle["pairs_formed_by"] == {"candidates": 3}
    again = run(*START, "--idempotency-key", "cli-1", database_url=url)
    assert again.returncode == 0 and json.loads(again.stdout)["id"] == cycle["id"]
    tuned = run(*START, "--design", "dense", "--labels-per-pair", "2", "--pairs-per-response", "4",
                "--control-share", "0.1", "--idempotency-key", "cli-2", database_url=url)
    assert tuned.returncode == 0, tuned.stderr
    request = json.loads(tuned.stdout)["request"]
    assert (request["design"], request["labels_per_pair"], request["pairs_per_response"], request["control_share"]) \
        == ("dense", 2, 4, 0.1)
    cancelled = run("relabel", "cancel", str(json.loads(tuned.stdout)["id"]), database_url=url)
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["status"] == "cancelled"
    twice = run("relabel", "cancel", str(json.loads(tuned.stdout)["id"]), database_url=url)
    assert twice.returncode == 2 and "only a collecting cycle can be cancelled" in twice.stderr

    listed = run("relabel", "list", database_url=url)
    assert listed.returncode == 0
    assert [line.split()[:3] for line in listed.stdout.splitlines()[1:]][-1] == [str(cycle["id"]), "collecting", "0/3"]
    shown = run("relabel", "show", str(cycle["id"]), database_url=url)
    assert shown.returncode == 0 and json.loads(shown.stdout)["id"] == cycle["id"]

    early = run("relabel", "export", str(cycle["id"]), database_url=url)
    assert early.returncode == 2 and "nothing to export yet: 0 of 3 pairs labelled" in early.stderr

    # Two pairs labelled through the real queue (A, then a tie); the third stays open.
    queue = ReviewQueue(sessions, SegmentScheme.from_settings(Settings(database_url=url)))
    for answer in ("A", "tie"):
        item = queue.next("ann")
        assert item is not None
        queue.submit(item["item_id"], "ann", item["lease_id"], {"preference": answer}, None)

    default = subprocess.run([sys.executable, "-m", "monitor", "relabel", "export", str(cycle["id"])],
                             env=monitor_env(database_url=url), cwd=tmp_path, capture_output=True, text=True,
                             timeout=120)
    assert default.returncode == 0, default.stderr
    written = tmp_path / f"cycle-{cycle['id']}.jsonl"
    assert default.stdout.startswith(f"cycle-{cycle['id']}.jsonl: 1 preference pairs (of 3")
    rows = [json.loads(line) for line in written.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 1 and rows[0]["preference"] == "A" and rows[0]["cycle_id"] == cycle["id"]
    assert CARD not in written.read_text(encoding="utf-8") and "[CARD]" in rows[0]["prompt"][0]["content"]

    target = tmp_path / "out" / "prefs.parquet"
    target.parent.mkdir()
    parquet = run("relabel", "export", str(cycle["id"]), "--format", "parquet", "--output", str(target),
                  database_url=url)
    assert parquet.returncode == 0, parquet.stderr
    assert str(target) in parquet.stdout and "1 preference pairs" in parquet.stdout
    assert pq.read_table(target).to_pylist() == rows


@pytest.mark.parametrize(("args", "status", "why"), [
    (("relabel", "start", "--segment", "payments", "--size", "0"), 2, "--size: Input should be greater than"),
    (("relabel", "start", "--segment", "mortgages", "--size", "3"), 2, "unknown segment"),
    (("relabel", "start", "--segment", "payments", "--size", "3", "--since", "2026-11-29T09:00:00"), 2,
     "--since: Input should have timezone info"),
    (("relabel", "export", "1", "--format", "csv"), 2, "--format must be one of jsonl, parquet"),
    (("relabel", "start", "--segment", "payments", "--size", "3", "--control-share", "0.9"), 2,
     "--control-share: Input should be less than or equal to 0.5"),
    (("relabel", "start", "--segment", "payments", "--size", "3", "--design", "tight"), 2,
     "--design: Input should be 'spread' or 'dense'"),
    (("relabel", "show", "999"), 2, "relabel cycle 999 not found"),
])
def test_bad_input_exits_with_a_one_line_error(store, args: tuple[str, ...], status: int, why: str) -> None:
    url, _ = store
    result = run(*args, database_url=url)
    assert result.returncode == status, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and why in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
