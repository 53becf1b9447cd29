"""The sampling design (arms, inclusion probabilities, near-duplicates) and the sampler the
analyzer runs on simulated traffic with a firing alert, against the real store."""

from __future__ import annotations

import math
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import select

from monitor.analyze.runner import Analyzer
from monitor.analyze.segments import SegmentScheme
from monitor.review.sampling import Candidate, Design, FiringAlert, dominant_modes, plan, signal_values
from monitor.store.db import make_engine, make_session_factory
from monitor.store.models import Alert, ReviewItem, ReviewSampling, Turn
from tests.analysis_data import REFERENCE, s1_traffic, write


def candidates(n: int, rng: np.random.Generator) -> list[Candidate]:
    return [Candidate(i, ("cards", "loans")[i % 2], float(rng.normal()),
                      signal_values({"length_tokens": float(rng.normal(100, 10)),
                                     "hedging": float(rng.normal(0.1, 0.02)), "refusal": 0.0})) for i in range(n)]


def unique_text(turn_id: int) -> str:
    """Words no other turn's text shares (digits would all normalise to 0)."""
    letters = "".join("abcdefghij"[int(d)] for d in str(turn_id))
    return " ".join(f"{letters}q{'z' * k}" for k in range(10))


def test_arms_share_the_budget_with_a_quarter_at_random() -> None:
    rng = np.random.default_rng(1)
    pool = candidates(400, rng)
    picks = plan(pool, [FiringAlert(7, "verbosity")], 40, Design(targeted_per_alert=8), rng, unique_text)
    arms = Counter(p.arm for p in picks)
    assert len(picks) == 40 and len({p.turn_id for p in picks}) == 40
    assert arms["control"] == 10 and arms["targeted"] == 8 and arms["stratified"] == 22
    assert all(p.inclusion_probability == 10 / 400 for p in picks if p.arm == "control")
    targeted = [p for p in picks if p.arm == "targeted"]
    assert all(p.alert_id == 7 and p.inclusion_probability == 1.0 and p.mode == "verbosity" for p in targeted)
    control_ids = {p.turn_id for p in picks if p.arm == "control"}
    top = [c.turn_id for c in sorted(pool, key=lambda c: -c.divergence) if c.turn_id not in control_ids][:8]
    assert [p.turn_id for p in targeted] == top
    for pick in (p for p in picks if p.arm == "stratified"):
        assert 0 < pick.inclusion_probability < 1
    # Arms interleave: each arm's priorities spread over (0, 1).
    for arm in arms:
        values = sorted(p.priority for p in picks if p.arm == arm)
        assert values[0] < 0.5 < values[-1] or len(values) == 1


def test_the_control_arm_is_a_uniform_sample() -> None:
    """Over many draws every turn is in the control arm as often as its inclusion probability says,
    whatever its divergence (the targeted arm takes the top ones after)."""
    pool = candidates(50, np.random.default_rng(2))
    hits = Counter()
    draws = 4000
    for seed in range(draws):
        for pick in plan(pool, [FiringAlert(1, "verbosity")], 8, Design(), np.random.default_rng(seed), unique_text):
            if pick.arm == "control":
                hits[pick.turn_id] += 1
                probability = pick.inclusion_probability
    assert probability == 2 / 50
    expected = draws * probability
    counts = np.array([hits[c.turn_id] for c in pool])
    # Binomial spread: each count within 5 standard deviations, the mean exact.
    assert np.all(np.abs(counts - expected) < 5 * math.sqrt(expected * (1 - probability)))
    assert counts.sum() == draws * 2


def test_near_duplicates_collapse_outside_the_control_arm() -> None:
    rng = np.random.default_rng(3)
    pool = candidates(60, rng)
    template = "Your refund of £{} will arrive within {} working days. Is there anything else I can help with today?"

    templated = {c.turn_id for c in sorted(pool, key=lambda c: -c.divergence)[:20]}

    def text(turn_id: int) -> str:  # the 20 most divergent turns are one template
        return template.format(turn_id, turn_id % 7) if turn_id in templated else unique_text(turn_id)

    picks = plan(pool, [FiringAlert(1, "verbosity")], 12, Design(control_share=0.25, targeted_per_alert=5), rng, text)
    targeted = [p for p in picks if p.arm == "targeted"]
    templated = [p for p in targeted if text(p.turn_id).startswith("Your refund")]
    assert len(templated) == 1 and templated[0].duplicates >= 1  # one stands for the rest
    assert len(targeted) == 5
    # Against the queue: a text already queued is not queued again.
    again = plan(pool, [FiringAlert(1, "verbosity")], 12, Design(), np.random.default_rng(4), text,
                 queued=[template.format(1, 1)])
    assert not [p for p in again if p.arm != "control" and text(p.turn_id).startswith("Your refund")]


def test_dominant_mode_is_the_signal_furthest_above_the_median() -> None:
    base = {"length_tokens": 100.0, "markdown_density": 0.1, "hedging": 0.1, "refusal": 0.0}
    pool = [Candidate(i, "cards", 0.0, signal_values({**base, "length_tokens": 100.0 + i % 5})) for i in range(20)]
    pool.append(Candidate(20, "cards", 0.0, signal_values({**base, "length_tokens": 400.0})))
    pool.append(Candidate(21, "cards", 0.0, signal_values({**base, "refusal": 1.0})))
    pool.append(Candidate(22, "cards", 0.0, ()))  # no signals at all
    modes = dominant_modes(pool)
    assert modes[20] == "verbosity" and modes[21] == "over-refusal" and modes[0] == "none" and modes[22] == "none"


def test_design_refuses_a_control_share_below_a_quarter() -> None:
    with pytest.raises(ValueError, match="control_share"):
        Design(control_share=0.1)


def test_the_analyzer_queues_each_period_once_with_a_random_control(migrated_url: str, topic_settings) -> None:
    engine = make_engine(migrated_url)
    sessions = make_session_factory(engine)
    try:
        write(sessions, s1_traffic())
        settings = topic_settings(database_url=migrated_url, analyze_reference_labels=REFERENCE,
                                  analyze_drift_rows=0, analyze_window_minutes=10.0,
                                  flags_topic=f"flags-{uuid.uuid4().hex[:8]}", review_period_minutes=5.0,
                                  review_daily_budget=20 * 288, review_targeted_per_alert=4)
        analyzer = Analyzer(settings, sessions)
        summary = analyzer.run_once(publish=False)
        assert summary.review_error is None and sum(summary.queued.values()) > 0
        assert "review items queued:" in summary.report()
        with sessions() as session:
            items = list(session.scalars(select(ReviewItem)))
            alerts = {a.id: a for a in session.scalars(select(Alert))}
            turns = list(session.scalars(select(Turn).where(Turn.score.is_not(None))))
            cursors = list(session.scalars(select(ReviewSampling)))
        scheme = SegmentScheme.from_settings(settings)
        population: dict[tuple[str, datetime], list[Turn]] = defaultdict(list)
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        period = timedelta(minutes=5)

        def slot(ts: datetime) -> datetime:
            return epoch + ((ts - epoch) // period) * period

        for turn in turns:
            population[(scheme.key(turn.domain, turn.model_version, turn.locale), slot(turn.ts))].append(turn)
        by_period: dict[tuple[str, datetime], list[ReviewItem]] = defaultdict(list)
        for item in items:
            by_period[(item.segment, slot(item.turn_ts))].append(item)
        assert len({(i.conversation_id, i.turn) for i in items}) == len(items)
        assert {i.arm for i in items} == {"control", "targeted", "stratified"}
        for key, members in by_period.items():
            control = [i for i in members if i.arm == "control"]
            assert len(members) <= 20 and len(control) >= 0.25 * len(members), key
            assert all(i.inclusion_probability == pytest.approx(len(control) / len(population[key])) for i in control)
        for item in (i for i in items if i.arm == "targeted"):
            assert alerts[item.alert_id].segment == item.segment and item.divergence is not None
        # Redacted text only, and no anchor in what annotators will get.
        assert all(i.prompt and i.response for i in items)
        assert {c.segment for c in cursors} == {i.segment for i in items}

        again = analyzer.run_once(publish=False)
        assert sum(again.queued.values()) == 0  # every whole period was sampled once
        with sessions() as session:
            assert len(list(session.scalars(select(ReviewItem.id)))) == len(items)
    finally:
        engine.dispose()
