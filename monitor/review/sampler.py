"""The review sampler: after each analyzer run, queue the periods of event time the analyzer has
seen (design in :mod:`monitor.review.sampling`, settings ``MONITOR_REVIEW_*``).

Each segment keeps a cursor (``review_sampling``): the end of the last period it sampled, and what
it spent of the current day's budget. A period is sampled once the analyzer's watermark passed its
end, so its turns' divergence is there for the targeted arm. A segment's day spends
``round(budget x elapsed share of the day) - spent`` per period (at most one period's share), the
whole budget by the day's end.
On its first run the sampler starts ``review_lookback_hours`` back, not at the start of history.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from monitor.analyze.segments import SegmentScheme
from monitor.config import Settings
from monitor.review.predict import segment_states
from monitor.review.queue import item_rows
from monitor.review.sampling import Candidate, Design, FiringAlert, plan
from monitor.signals import SIGNAL_NAMES
from monitor.store import review as store
from monitor.store.models import Alert, ReviewSampling, utcnow

log = logging.getLogger(__name__)

#: Periods sampled per call at most (a long outage catches up over several runs).
PERIODS_PER_CALL = 48
#: Turns read per period at most (the control arm's denominator is what was read).
TURNS_PER_PERIOD = 50_000
#: Queued responses a new pick is compared with for near-duplicates.
RECENT_QUEUED = 200


def _floor(value: datetime, period: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + ((value - epoch) // period) * period


def _day_fraction(value: datetime) -> float:
    start = value.replace(hour=0, minute=0, second=0, microsecond=0)
    return (value - start).total_seconds() / 86_400.0 or 1.0  # midnight ends the previous day


class ReviewSampler:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], *, seed: int | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.sessions = sessions
        self.scheme = SegmentScheme.from_settings(settings)
        self.design = Design(control_share=settings.review_control_share,
                             targeted_per_alert=settings.review_targeted_per_alert,
                             overlap_share=settings.review_overlap_share, overlap=settings.review_overlap)
        self.period = timedelta(minutes=settings.review_period_minutes)
        self.rng = np.random.default_rng(seed)
        self.clock = clock

    def sample(self, watermark: datetime | None) -> Counter[str]:
        """Queue every whole period up to ``watermark``; returns the items added per arm."""
        added: Counter[str] = Counter()
        if watermark is None or self.settings.review_daily_budget == 0:
            return added
        with self.sessions.begin() as session:
            cursors = {row.segment: row for row in session.scalars(select(ReviewSampling))}
            first = _floor(watermark - timedelta(hours=self.settings.review_lookback_hours), self.period)
            start = min((c.until for c in cursors.values()), default=first)
            start = max(start, first) if not cursors else start
            for _ in range(PERIODS_PER_CALL):
                # Quiet stretches (no turns at all) are passed over in one step.
                following = store.first_turn_after(session, start)
                if following is not None and following >= start + self.period:
                    start = _floor(following, self.period)
                end = start + self.period
                if end > watermark:
                    break
                added += self._period(session, cursors, start, end, first)
                start = end
        if added:
            log.info("review items queued", extra={"added": dict(added)})
        return added

    def _budget(self, spent: int, end: datetime) -> int:
        """The day's budget so far (its elapsed share, rounded) less what it spent, at most one
        period's share (rounded up): after a gap the sampler does not spend the day at once."""
        daily = self.settings.review_daily_budget
        due = round(daily * _day_fraction(end)) - spent
        return max(0, min(due, math.ceil(daily * self.period / timedelta(days=1))))

    def _period(self, session: Session, cursors: dict[str, ReviewSampling], start: datetime, end: datetime,
                first: datetime) -> Counter[str]:
        turns = store.turns_between(session, start, end, TURNS_PER_PERIOD)
        by_segment: dict[str, list[Any]] = {}
        for turn in turns:
            by_segment.setdefault(self.scheme.key(turn.domain, turn.model_version, turn.locale), []).append(turn)
        firing: dict[str, list[FiringAlert]] = {}
        for alert in session.scalars(select(Alert).where(Alert.state == "firing")):
            firing.setdefault(alert.segment, []).append(FiringAlert(alert.id, alert.mode))
        added: Counter[str] = Counter()
        day = start.date().isoformat()
        queued = store.queued_between(session, start, end)
        states = segment_states(session)
        responses: dict[int, str] = {}

        def text_of(turn_id: int) -> str:  # read only for the turns a near-duplicate check reaches
            if turn_id not in responses:
                responses[turn_id] = store.response_of(session, turn_id)
            return responses[turn_id]

        def prefetch(turn_ids: Sequence[int]) -> None:
            responses.update(store.responses_of(session, [t for t in turn_ids if t not in responses]))

        for segment in sorted(set(by_segment) | set(cursors)):
            cursor = cursors.get(segment)
            if cursor is None:
                cursor = cursors[segment] = ReviewSampling(segment=segment, until=max(start, first), day=day, spent=0)
                session.add(cursor)
            if cursor.until >= end:
                continue
            if cursor.day != day:
                cursor.day, cursor.spent = day, 0
            members = [t for t in by_segment.get(segment, []) if t.id not in queued]
            budget = self._budget(cursor.spent, end)
            cursor.until = end
            if not members or budget == 0:
                continue
            first_signal = len(store.SAMPLING_COLUMNS) - len(SIGNAL_NAMES)
            candidates = [Candidate(t.id, t.domain, t.divergence if t.divergence is not None else math.nan,
                                    tuple(math.nan if v is None else v for v in t[first_signal:])) for t in members]
            picks = plan(candidates, firing.get(segment, []), budget, self.design, self.rng, text_of,
                         queued=store.recent_responses(session, segment, RECENT_QUEUED), prefetch=prefetch)
            chosen = store.turns_by_id(session, [p.turn_id for p in picks])
            rows = item_rows(session, [chosen[p.turn_id] for p in picks], picks, self.scheme, states=states)
            ids = store.insert_items(session, rows, actor="sampler", at=self.clock())
            cursor.spent += len(ids)
            arms = {row["turn_id"]: row["arm"] for row in rows}
            added.update(arms[turn_id] for turn_id in store.turn_ids_of(session, ids))
        return added
