"""The current window read whole up to MONITOR_ANALYZE_WINDOW_MAX_TURNS, sampled per segment beyond:
exact counts, statistics of the sample, and every new turn still scored (SQLite and PostgreSQL)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select, update

from monitor.analyze.runner import Analyzer
from monitor.analyze.segments import SegmentScheme
from monitor.analyze.window_sample import plan_window
from monitor.store.db import make_engine, make_session_factory
from monitor.store.models import AnalysisRun, Turn
from tests.analysis_data import REFERENCE, s1_traffic, write

SCHEME = SegmentScheme(domains=("a", "b", "c"))


def test_a_window_under_the_budget_is_read_whole() -> None:
    plan = plan_window([(("a", "v1", "en"), 300, 90), (("a", "v2", "en"), 200, 60), (("b", None, None), 400, 0)],
                       SCHEME, max_turns=900)
    assert not plan.sampled and set(plan.strides.values()) == {1}
    assert plan.counts == {"a/*/*": (500, 150), "b/*/*": (400, 0)} and plan.turns == 900


def test_a_quiet_segment_is_read_whole_beside_a_busy_one_and_the_busy_one_shares_one_stride() -> None:
    groups = [(("a", "v1", "en"), 60_000, 9000), (("a", "v2", "de"), 40_000, 6000), (("b", "v1", None), 500, 100),
              (("mortgages", None, None), 2000, 10), (("loans", None, None), 1000, 5)]
    plan = plan_window(groups, SCHEME, max_turns=10_000)
    assert plan.counts == {"a/*/*": (100_000, 15_000), "b/*/*": (500, 100), "other/*/*": (3000, 15)}
    assert plan.strides[("b", "v1", None)] == 1
    assert plan.strides[("mortgages", None, None)] == plan.strides[("loans", None, None)] == 1
    # Both groups of the busy segment get its one stride: the sample weighs them as the traffic does.
    # 10,000 - 500 - 3,000 = 6,500 left for a's 100,000: one in 16.
    assert plan.strides[("a", "v1", "en")] == plan.strides[("a", "v2", "de")] == plan.stride_of("a/*/*") == 16
    read = sum(turns / plan.strides[group] for group, turns, _ in groups)
    assert 9000 < read <= 10_000


def test_segments_past_their_share_split_what_the_quiet_ones_leave() -> None:
    plan = plan_window([(("a", None, None), 9000, 0), (("b", None, None), 3000, 0), (("c", None, None), 100, 0)],
                       SCHEME, max_turns=3100)
    # c is read whole (100); a and b split the other 3000: 1500 each.
    assert (plan.stride_of("c/*/*"), plan.stride_of("b/*/*"), plan.stride_of("a/*/*")) == (1, 2, 6)
    with pytest.raises(ValueError, match="max_turns"):
        plan_window([], SCHEME, max_turns=0)


@pytest.fixture
def sessions(migrated_url: str):
    engine = make_engine(migrated_url)
    yield make_session_factory(engine)
    engine.dispose()


def _run(sessions, settings) -> tuple[dict[str, dict], dict[int, float]]:
    Analyzer(settings, sessions, derive=True).run_once(publish=False, drift=False)
    with sessions() as session:
        run = session.scalars(select(AnalysisRun).order_by(AnalysisRun.id.desc()).limit(1)).one()
        divergence = dict(session.execute(select(Turn.id, Turn.divergence).where(Turn.divergence.is_not(None))).all())
    return {segment["segment"]: segment for segment in run.segments}, divergence


def test_a_sampled_window_keeps_exact_counts_close_statistics_and_scores_every_new_turn(
        sessions, migrated_url, topic_settings) -> None:
    write(sessions, s1_traffic())
    common = {"analyze_reference_labels": REFERENCE, "analyze_window_minutes": 10.0, "database_url": migrated_url}
    sampled, sampled_divergence = _run(sessions, topic_settings(analyze_window_max_turns=1000, **common))

    # The same store from scratch, the window read whole.
    with sessions.begin() as session:
        session.execute(update(Turn).values(divergence=None))
    whole_settings = topic_settings(analyze_window_max_turns=100_000, **common)
    Analyzer(whole_settings, sessions).recompute()
    whole, whole_divergence = _run(sessions, whole_settings)

    busy = [name for name, stats in whole.items() if stats["turns"] > 1000]
    assert len(busy) == 5 and sum(whole[name]["turns"] for name in busy) > 5000
    for name in busy:
        full, part = whole[name], sampled[name]
        assert full["sample"] is None
        assert (part["turns"], part["rated"]) == (full["turns"], full["rated"])  # exact, from the store
        assert part["sample"]["one_in"] > 1 and 150 <= part["sample"]["turns"] <= 250  # ~200 each
        assert part["sample"]["rated"] < part["rated"]
        # About 100 rated turns a segment in the sample: within three standard errors of the whole.
        assert abs(part["realised_satisfaction"] - full["realised_satisfaction"]) < 0.1
        assert abs(part["reward_mean"] - full["reward_mean"]) < 0.1
        # Intervals are the sample's: wider than the whole window's, and they hold its value.
        low, high = part["gap_ci95"]
        assert high - low > full["gap_ci95"][1] - full["gap_ci95"][0]
        assert low <= full["gap"] <= high
    # Every scored turn of the window gets its divergence, sampled or not, with the same value.
    assert len(sampled_divergence) > 5000
    assert sampled_divergence.keys() == whole_divergence.keys()
    assert all(abs(sampled_divergence[key] - whole_divergence[key]) < 1e-9 for key in whole_divergence)


def test_divergence_skips_a_turn_ingest_holds_and_writes_it_on_the_next_run(
        sessions, migrated_url, topic_settings) -> None:
    """The divergence pass never waits for a row lock (waiting in id order deadlocked with ingest's
    rating join under a 2k events/s soak); the turn it skipped is scored by the next run."""
    write(sessions, s1_traffic())
    settings = topic_settings(analyze_reference_labels=REFERENCE, analyze_window_minutes=10.0,
                              database_url=migrated_url)
    with sessions() as session:
        held = session.scalars(select(Turn.id).order_by(Turn.id.desc()).limit(1)).one()
    holder = sessions()
    try:
        holder.execute(update(Turn).where(Turn.id == held).values(rating_count=Turn.rating_count))
        postgresql = holder.get_bind().dialect.name == "postgresql"
        if postgresql:  # SQLite has one writer: the holder would block the run outright
            started = time.monotonic()
            _, divergence = _run(sessions, settings)
            assert time.monotonic() - started < 60
            assert held not in divergence and len(divergence) > 5000
    finally:
        holder.rollback()
        holder.close()
    _, divergence = _run(sessions, settings)
    assert held in divergence and len(divergence) > 5000
