"""Data retention (`monitor.store.retention`, `monitor.retention`, `monitor db prune`), on SQLite and PostgreSQL.

One store, planted with rows on both sides of every age: turns and their ratings past the turns'
age, turns whose raw text (personal data planted in every text column) is past the raw-text age,
ratings still waiting for a turn, dead letters, and an old turn the analyzer's reference reads.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from monitor.analyze.state import N_SIGNALS, Rows, SegmentState, Track
from monitor.config import Settings, load_settings
from monitor.errors import ConfigError
from monitor.metrics import RETENTION_ACTIONS, Metrics
from monitor.retention import RetentionSchedule
from monitor.signals import SIGNAL_COLUMNS
from monitor.store.analysis import analyzer_lock, save_states
from monitor.store.db import make_engine, make_session_factory
from monitor.store.migrate import upgrade
from monitor.store.models import DeadLetter, RatingRow, Turn
from monitor.store.retention import ACTIONS, RETENTION_LOCK_KEY, RetentionPolicy, _advisory_lock, prune
from tests.helpers import ServiceThread, wait_for
from tests.test_cli import run

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
POLICY = RetentionPolicy(turns_days=90, raw_text_days=30, ratings_days=30, dead_letters_days=14)
#: Personal data planted in every text column of the turns whose raw text must go.
EMAIL, PHONE, CARD = "jo.bloggs@example.com", "+44 20 7946 0958", "4111 1111 1111 1111"
PII = f"Mail me at {EMAIL} or call me on {PHONE}; my card is {CARD}."
PLANTED = (EMAIL, PHONE, CARD, "4111111111111111")


def _days_ago(days: float, now: datetime = NOW) -> datetime:
    return now - timedelta(days=days)


def add_turn(session: Session, conversation_id: str, turn: int, ts: datetime, *, text: str = "How do I freeze it?",
             rating_comment: str | None = None, rating_ts: datetime | None = None) -> Turn:
    """A stored turn with signals derived (nothing for the analyzer to derive) and, with
    ``rating_ts``, a joined rating."""
    row = Turn(
        event_id=uuid.uuid4(), conversation_id=conversation_id, turn=turn, ts=ts, model_version="assistant-1",
        domain="cards", locale="en-GB", channel="app",
        messages=[{"role": "user", "content": f"Hello. {text}"}, {"role": "assistant", "content": "Hi, sure."},
                  {"role": "user", "content": text}, {"role": "assistant", "content": f"Noted: {text}"}],
        prompt=text, response=f"Noted: {text}",
        candidates=[{"content": f"Alternatively: {text}", "model_version": "assistant-0", "reward": 0.2}],
        producer_reward=0.5, score=0.5, scorer="producer", rating_count=0,
        source_topic="conversations", source_partition=0, source_offset=abs(hash((conversation_id, turn))) % 10**9,
        **dict.fromkeys(SIGNAL_COLUMNS, 0.0), prompt_harmful=False,
    )
    session.add(row)
    if rating_ts is not None:
        add_rating(session, conversation_id, turn, rating_ts, comment=rating_comment, joined=True)
        row.rating_count, row.satisfaction, row.rated_at = 1, 1.0, rating_ts
    return row


def add_rating(session: Session, conversation_id: str, turn: int, ts: datetime, *, comment: str | None = None,
               joined: bool = False) -> RatingRow:
    row = RatingRow(event_id=uuid.uuid4(), conversation_id=conversation_id, turn=turn, ts=ts, kind="thumbs",
                    value=1.0, satisfaction=1.0, reasons=[], comment=comment, joined=joined,
                    entry_at=ts if joined else None, source_topic="ratings", source_partition=0,
                    source_offset=uuid.uuid4().int % 10**9)
    session.add(row)
    return row


def add_dead_letter(session: Session, offset: int, received_at: datetime) -> None:
    session.add(DeadLetter(source_topic="conversations", source_partition=0, source_offset=offset,
                           key=b"c-secret", raw=f'{{"comment": "{PII}"}}'.encode(), reason="invalid_json",
                           detail=f"not JSON: {PII}", received_at=received_at))


def plant(sessions: sessionmaker[Session], now: datetime = NOW) -> dict[str, str]:
    """The planted store; returns the event id of the old turn the analyzer's reference reads."""
    with sessions.begin() as session:
        # Past the turns' age: deleted with their ratings (one joined, one never joined: same key).
        add_turn(session, "c-old", 0, _days_ago(100, now), rating_ts=_days_ago(99, now), rating_comment=PII)
        add_turn(session, "c-old", 1, _days_ago(99, now), rating_ts=_days_ago(5, now))  # rated late: still goes
        add_rating(session, "c-old", 1, _days_ago(98, now))
        referenced = add_turn(session, "c-ref", 0, _days_ago(120, now), text=PII, rating_ts=_days_ago(119, now))
        # Past the raw-text age, within the turns': kept, text redacted.
        add_turn(session, "c-mid", 0, _days_ago(50, now), text=PII, rating_ts=_days_ago(50, now), rating_comment=PII)
        add_turn(session, "c-mid", 1, _days_ago(49, now), text="Thanks, Maria Lopez here. " + PII)
        # Recent: everything stays as ingested.
        add_turn(session, "c-new", 0, _days_ago(10, now), text=PII, rating_ts=_days_ago(10, now), rating_comment=PII)
        # Ratings still waiting for their turn: past the ratings' age (goes, its comment unredacted
        # so far: never counted as redacted) and within it (stay).
        add_rating(session, "c-waiting", 0, _days_ago(40, now), comment=PII)
        add_rating(session, "c-waiting", 1, _days_ago(20, now))
        add_rating(session, "c-waiting", 2, _days_ago(25, now))
        for offset, age in enumerate((30, 15, 13, 1)):
            add_dead_letter(session, offset, _days_ago(age, now))
        session.flush()
        return {"referenced": str(referenced.event_id)}


def snapshot(sessions: sessionmaker[Session]) -> dict[str, Any]:
    with sessions() as session:
        return {
            "turns": sorted((t.conversation_id, t.turn, json.dumps(t.messages), t.prompt, t.response,
                             json.dumps(t.candidates), t.redacted_at is not None)
                            for t in session.scalars(select(Turn))),
            "ratings": sorted((r.conversation_id, r.turn, r.ts.isoformat(), r.comment or "", r.redacted_at is not None)
                              for r in session.scalars(select(RatingRow))),
            "dead_letters": sorted(d.source_offset for d in session.scalars(select(DeadLetter))),
        }


def texts_of(sessions: sessionmaker[Session], conversation_id: str) -> list[str]:
    """Every text column of a conversation's turns and ratings."""
    with sessions() as session:
        turns = list(session.scalars(select(Turn).where(Turn.conversation_id == conversation_id)))
        ratings = list(session.scalars(select(RatingRow).where(RatingRow.conversation_id == conversation_id)))
    return [*(json.dumps([t.messages, t.prompt, t.response, t.candidates]) for t in turns),
            *(r.comment or "" for r in ratings)]


@pytest.fixture
def sessions(migrated_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(migrated_url)
    yield make_session_factory(engine)
    engine.dispose()


def protecting(*event_ids: str) -> Callable[[Session], set[str]]:
    return lambda _session: set(event_ids)


EXPECTED = {("dead_letters", "deleted"): 2, ("turns", "deleted"): 2, ("ratings", "deleted"): 4,
            ("turns", "redacted"): 3, ("ratings", "redacted"): 1}


def test_prune_deletes_redacts_and_keeps_by_age(sessions) -> None:
    planted = plant(sessions)
    recent_before = texts_of(sessions, "c-new")

    steps: list[tuple[str, int, int | None]] = []
    result = prune(sessions, POLICY, NOW, protected=protecting(planted["referenced"]), batch_size=2,
                   redact_batch_size=2, progress=lambda *step: steps.append(step))

    assert result.complete and not result.locked
    assert result.counts == EXPECTED
    # Progress after each batch; the redaction's against its total, counted first.
    assert [step for step in steps if step[0] == "turns deleted"] == [("turns deleted", 1, None),
                                                                      ("turns deleted", 2, None)]
    assert [step for step in steps if step[0].endswith("redacted")] == [
        ("turns redacted", 2, 3), ("turns redacted", 3, 3), ("ratings redacted", 1, 1)]
    assert result.kept == 1
    after = snapshot(sessions)
    assert [(c, t, redacted) for c, t, *_, redacted in after["turns"]] == [
        ("c-mid", 0, True), ("c-mid", 1, True), ("c-new", 0, False), ("c-ref", 0, True)]
    # c-old's ratings went with their turns, whenever they were given; the waiting rating past its
    # age went, the younger ones stay.
    assert [(c, t, redacted) for c, t, _, _, redacted in after["ratings"]] == [
        ("c-mid", 0, True), ("c-new", 0, False), ("c-ref", 0, False), ("c-waiting", 1, False),
        ("c-waiting", 2, False)]
    assert after["dead_letters"] == [2, 3]  # received 13 days and 1 day ago
    # The raw text is gone from every column of the redacted turns and ratings; placeholders stand in.
    for conversation_id in ("c-mid", "c-ref"):
        for stored in texts_of(sessions, conversation_id):
            assert not [value for value in PLANTED if value in stored], stored
    mid = " ".join(texts_of(sessions, "c-mid"))
    assert "[EMAIL]" in mid and "[PHONE]" in mid and "[CARD]" in mid and "[NAME]" in mid and "Lopez" not in mid
    assert texts_of(sessions, "c-new") == recent_before  # recent text stays raw
    assert EMAIL in recent_before[0]


def test_a_dry_run_counts_exactly_a_prune_stopped_and_carried_on_then_nothing_is_left(sessions) -> None:
    planted = plant(sessions)
    keep = protecting(planted["referenced"])
    before = snapshot(sessions)
    dry = prune(sessions, POLICY, NOW, protected=keep, dry_run=True, batch_size=2)
    assert snapshot(sessions) == before  # changes nothing
    assert dry.dry_run and dry.complete and dry.counts == EXPECTED and "would prune (dry run)" in dry.report()

    budget = iter(range(4))  # four batches, then stop: the next prune carries on
    stopped = prune(sessions, POLICY, NOW, protected=keep, batch_size=1, redact_batch_size=1,
                    keep_going=lambda: next(budget, None) is not None)
    assert not stopped.complete and "incomplete" in stopped.report()
    assert 0 < sum(stopped.counts.values()) < sum(EXPECTED.values())
    rest = prune(sessions, POLICY, NOW, protected=keep, batch_size=1, redact_batch_size=1)
    assert rest.complete
    assert {key: stopped.counts[key] + rest.counts[key] for key in ACTIONS} == EXPECTED
    pruned = snapshot(sessions)

    for policy in (POLICY, RetentionPolicy(0, 0, 0, 0)):  # idempotent; 0 days keeps forever
        again = prune(sessions, policy, NOW, protected=keep)
        assert again.complete and set(again.counts.values()) == {0}
        assert set(prune(sessions, policy, NOW, protected=keep, dry_run=True).counts.values()) == {0}
    assert snapshot(sessions) == pruned


def test_postgresql_prunes_one_at_a_time_and_never_under_a_running_analyzer(pg_databases) -> None:
    url = pg_databases()
    upgrade(url)
    engine, other = make_engine(url), make_engine(url)  # `other`: another process's connections
    sessions = make_session_factory(engine)
    try:
        planted = plant(sessions)
        before = snapshot(sessions)
        with _advisory_lock(other, RETENTION_LOCK_KEY) as held:  # another process prunes
            assert held
            assert prune(sessions, POLICY, NOW).locked
        assert snapshot(sessions) == before
        with analyzer_lock(other) as running:  # an analyzer run: no deletions, redaction goes on
            assert running
            partial = prune(sessions, POLICY, NOW, protected=protecting(planted["referenced"]))
        assert not partial.complete and "analyzer lock" in partial.report()
        assert partial.counts[("turns", "deleted")] == partial.counts[("ratings", "deleted")] == 0
        assert partial.counts[("dead_letters", "deleted")] == 2 and partial.counts[("turns", "redacted")] == 5
        rest = prune(sessions, POLICY, NOW, protected=protecting(planted["referenced"]))
        assert rest.complete and rest.counts[("turns", "deleted")] == 2
    finally:
        engine.dispose()
        other.dispose()


def test_the_policy_and_the_settings_refuse_raw_text_kept_longer_than_turns() -> None:
    with pytest.raises(ValueError, match="raw_text_days"):
        RetentionPolicy(turns_days=30, raw_text_days=60)
    with pytest.raises(ValueError, match="raw_text_days"):
        RetentionPolicy(turns_days=30, raw_text_days=0)  # 0: forever
    with pytest.raises(ConfigError, match="MONITOR_RETENTION_RAW_TEXT_DAYS .* MONITOR_RETENTION_TURNS_DAYS"):
        load_settings(retention_turns_days=30, retention_raw_text_days=60)
    with pytest.raises(ConfigError, match="MONITOR_RETENTION_TURNS_DAYS .* MONITOR_REVIEW_LOOKBACK_HOURS"):
        load_settings(retention_turns_days=1, retention_raw_text_days=1)
    with pytest.raises(ConfigError, match="MONITOR_RETENTION_DEAD_LETTERS_DAYS"):
        load_settings(retention_dead_letters_days=-1)
    settings = load_settings(retention_turns_days=0, retention_raw_text_days=0)
    assert RetentionPolicy.from_settings(settings) == RetentionPolicy(0, 0, 30, 14)
    assert RetentionPolicy.from_settings(load_settings()) == RetentionPolicy(90, 30, 30, 14)


def test_the_metric_labels_are_the_prune_actions() -> None:
    assert RETENTION_ACTIONS == ACTIONS


def reference_state(event_id: str) -> dict:
    """A segment state whose reference window holds one turn (as the analyzer stores it)."""
    rows = Rows(np.array([0.5]), np.array([1.0]), np.zeros((1, N_SIGNALS)), np.array([0.0]),
                [[event_id, "c-ref", 0]], np.array([0.0]), np.array([0.0]))
    return SegmentState("cards/*/*", {"producer@assistant-1": Track("producer@assistant-1", reference=rows)},
                        current="producer@assistant-1").to_json()


def test_db_prune_dry_run_then_prune(migrated_url) -> None:
    now = datetime.now(UTC)
    engine = make_engine(migrated_url)
    sessions = make_session_factory(engine)
    try:
        planted = plant(sessions, now)
        with sessions.begin() as session:
            save_states(session, {"cards/*/*": reference_state(planted["referenced"])})
            # Redacted by an earlier prune: nothing left to redact, so no Presidio to load in the subprocesses.
            session.execute(update(Turn).where(Turn.conversation_id == "c-ref").values(redacted_at=now))
        before = snapshot(sessions)
        settings = {"database_url": migrated_url, "retention_raw_text_days": 90}

        dry = run("db", "prune", "--dry-run", **settings)
        assert dry.returncode == 0, dry.stderr
        assert snapshot(sessions) == before
        counts = _counts(dry.stdout)
        assert counts == {("dead_letters", "deleted"): 2, ("turns", "deleted"): 2, ("ratings", "deleted"): 4,
                          ("turns", "redacted"): 0, ("ratings", "redacted"): 0}
        assert "would prune (dry run)" in dry.stdout and "kept past their age: 1 turns" in dry.stdout

        done = run("db", "prune", **settings)
        assert done.returncode == 0, done.stderr
        assert _counts(done.stdout) == counts and "turns deleted: 2" in done.stderr  # progress on stderr
        with sessions() as session:  # c-ref stays: the analyzer's stored reference reads it
            assert sorted(session.scalars(select(Turn.conversation_id))) == ["c-mid", "c-mid", "c-new", "c-ref"]
    finally:
        engine.dispose()


def _counts(report: str) -> dict[tuple[str, str], int]:
    return {(table, action): int(rows.replace(",", ""))
            for table, action, rows in re.findall(r"^\s+(\w+)\s+(deleted|redacted)\s+([\d,]+)$", report, re.M)}


def test_db_prune_refuses_a_bad_setting_in_one_line(tmp_path) -> None:
    result = run("db", "prune", database_url=f"sqlite:///{tmp_path / 'x.db'}", retention_turns_days=30,
                 retention_raw_text_days=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "MONITOR_RETENTION_RAW_TEXT_DAYS (60)" in result.stderr
    assert not (tmp_path / "x.db").exists()


def test_a_failed_scheduled_prune_is_counted_and_retried_next_period(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'unmigrated.db'}"  # no tables: every prune fails
    engine = make_engine(url)
    metrics = Metrics(CollectorRegistry())
    schedule = RetentionSchedule(Settings(database_url=url, retention_prune_interval_seconds=3600),
                                 make_session_factory(engine), metrics=metrics, first_prune_after=0)
    try:
        assert schedule.tick() is None
        assert schedule.tick() is None  # not due again before the next period
    finally:
        engine.dispose()
    registry = metrics.registry
    assert registry.get_sample_value("monitor_retention_prunes_total", {"outcome": "error"}) == 1
    assert registry.get_sample_value("monitor_retention_last_prune_timestamp_seconds") == 0


def test_serve_prunes_on_the_analyzer_schedule(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    upgrade(url)
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    plant(sessions, datetime.now(UTC))
    settings = Settings(database_url=url, role="analyzer", analyze_interval_seconds=0.2, derive_interval_seconds=0,
                        review_enabled=False, analyze_drift_rows=0, retention_prune_interval_seconds=1,
                        api_port=0)
    started = time.time()
    try:
        with ServiceThread(settings) as service, httpx.Client(base_url=service.url, timeout=10) as http:
            def pruned() -> str | None:  # the first prune comes one interval after start
                text = http.get("/metrics").text
                return text if _sample(text, 'monitor_retention_prunes_total{outcome="complete"}') >= 1 else None

            metrics = wait_for(pruned, timeout=60, interval=0.2, what="a scheduled prune")
        assert 'monitor_retention_pruned_rows_total{action="deleted",table="turns"} 3.0' in metrics  # no references
        assert 'monitor_retention_pruned_rows_total{action="redacted",table="turns"} 2.0' in metrics
        assert started <= _sample(metrics, "monitor_retention_last_prune_timestamp_seconds") <= time.time()
        with sessions() as session:
            assert sorted(session.scalars(select(Turn.conversation_id))) == ["c-mid", "c-mid", "c-new"]
        for stored in texts_of(sessions, "c-mid"):
            assert EMAIL not in stored and "[EMAIL]" in stored
    finally:
        engine.dispose()


def _sample(metrics: str, series: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(series + " ")]
    assert values, f"no {series} in /metrics"
    return values[0]
