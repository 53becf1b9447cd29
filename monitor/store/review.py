"""The review queue's reads and writes (tables in :mod:`monitor.store.models`: ``review_*``).

Leasing is the one contended write: two annotators asking for work at once must never get the same
lease. On PostgreSQL the next item is locked with ``FOR UPDATE SKIP LOCKED`` (a second caller
passes over it instead of waiting), and the row's own ``active_leases`` counter is in the
predicate, so a row committed by the first caller is re-checked on its latest version. SQLite has
one writer at a time; the caller serialises leasing in the process (:mod:`monitor.review.queue`).
Every function here runs inside the caller's transaction: it writes all or, on an error, nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from monitor.signals import SIGNAL_NAMES
from monitor.store.models import ReviewAnnotation, ReviewAudit, ReviewItem, ReviewLease, ReviewSampling, Turn

OPEN = "open"
COMPLETE = "complete"


def is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def audit(session: Session, item_id: int | None, actor: str, action: str, *, rubric_version: str | None = None,
          at: datetime, **detail: Any) -> None:
    session.add(ReviewAudit(item_id=item_id, actor=actor, action=action, rubric_version=rubric_version,
                            detail=detail, at=at))


def insert_items(session: Session, rows: Sequence[dict[str, Any]], *, actor: str, at: datetime) -> list[int]:
    """Insert ``rows`` (``review_items`` columns); a turn already queued is left alone. Returns the
    ids of the items added."""
    if not rows:
        return []
    table = ReviewItem.__table__
    dialect_insert = pg_insert if is_postgresql(session) else sqlite_insert
    added: list[int] = []
    for start in range(0, len(rows), 500):
        statement = (dialect_insert(table).values(list(rows[start:start + 500]))
                     .on_conflict_do_nothing(index_elements=["conversation_id", "turn", "task_key"])
                     .returning(table.c.id, table.c.arm))
        for item_id, arm in session.execute(statement).all():
            added.append(int(item_id))
            audit(session, int(item_id), actor, "enqueued", at=at, arm=arm)
    return added


def queued_between(session: Session, since: datetime, until: datetime) -> set[int]:
    """Turns with event time in ``(since, until]`` that are queued already."""
    return set(session.scalars(select(ReviewItem.turn_id).where(ReviewItem.turn_ts > since,
                                                                ReviewItem.turn_ts <= until)))


def turn_ids_of(session: Session, item_ids: Sequence[int]) -> list[int]:
    if not item_ids:
        return []
    return list(session.scalars(select(ReviewItem.turn_id).where(ReviewItem.id.in_(list(item_ids)))))


def recent_responses(session: Session, segment: str, limit: int) -> list[str]:
    """The (redacted) responses of the segment's latest queued items: near-duplicates of these are
    not queued again."""
    return list(session.scalars(select(ReviewItem.response).where(ReviewItem.segment == segment)
                                .order_by(ReviewItem.id.desc()).limit(limit)))


def expire_leases(session: Session, now: datetime) -> int:
    """End every lease past its expiry; its item goes back to the pool."""
    leases = ReviewLease.__table__
    expired = session.execute(
        update(leases).where(leases.c.outcome.is_(None), leases.c.expires_at <= now)
        .values(outcome="expired", ended_at=leases.c.expires_at)
        .returning(leases.c.id, leases.c.item_id, leases.c.annotator)).all()
    for lease_id, item_id, annotator in expired:
        session.execute(update(ReviewItem.__table__).where(ReviewItem.__table__.c.id == item_id)
                        .values(active_leases=ReviewItem.__table__.c.active_leases - 1))
        audit(session, int(item_id), annotator, "expired", at=now, lease_id=lease_id)
    return len(expired)


def current_lease(session: Session, annotator: str, now: datetime) -> ReviewLease | None:
    return session.scalars(select(ReviewLease).where(ReviewLease.annotator == annotator, ReviewLease.outcome.is_(None),
                                                     ReviewLease.expires_at > now)
                           .order_by(ReviewLease.leased_at).limit(1)).first()


def lease_next(session: Session, annotator: str, now: datetime,
               seconds: float) -> tuple[ReviewLease, ReviewItem] | None:
    """The caller's open lease if it holds one, else a new lease on the open item of highest
    priority that still needs a review and that the caller has not labelled or skipped; None when
    there is none."""
    expire_leases(session, now)
    held = current_lease(session, annotator, now)
    if held is not None:
        item = session.get(ReviewItem, held.item_id)
        assert item is not None
        return held, item
    done_by_me = exists().where(ReviewLease.item_id == ReviewItem.id, ReviewLease.annotator == annotator,
                                ReviewLease.outcome.in_(("annotated", "skipped")))
    annotated_by_me = exists().where(ReviewAnnotation.item_id == ReviewItem.id, ReviewAnnotation.annotator == annotator)
    query = (select(ReviewItem)
             .where(ReviewItem.state == OPEN,
                    ReviewItem.reviews_done + ReviewItem.active_leases < ReviewItem.reviews_required,
                    ~done_by_me, ~annotated_by_me)
             .order_by(ReviewItem.priority.desc(), ReviewItem.id).limit(1))
    if is_postgresql(session):
        query = query.with_for_update(skip_locked=True, of=ReviewItem)
    item = session.scalars(query).first()
    if item is None:
        return None
    lease = ReviewLease(id=str(uuid.uuid4()), item_id=item.id, annotator=annotator, leased_at=now,
                        expires_at=now + timedelta(seconds=seconds))
    session.add(lease)
    item.active_leases += 1
    audit(session, item.id, annotator, "leased", at=now, lease_id=lease.id, expires_at=lease.expires_at.isoformat())
    session.flush()
    return lease, item


def item_for_update(session: Session, item_id: int) -> ReviewItem | None:
    query = select(ReviewItem).where(ReviewItem.id == item_id)
    if is_postgresql(session):
        query = query.with_for_update()
    return session.scalars(query).first()


def annotation_of(session: Session, item_id: int, annotator: str) -> ReviewAnnotation | None:
    return session.scalars(select(ReviewAnnotation).where(ReviewAnnotation.item_id == item_id,
                                                          ReviewAnnotation.annotator == annotator)).first()


def end_lease(session: Session, lease: ReviewLease, item: ReviewItem, outcome: str, now: datetime,
              reason: str | None = None) -> None:
    lease.outcome, lease.ended_at, lease.skip_reason = outcome, now, reason
    item.active_leases = max(0, item.active_leases - 1)
    if outcome == "annotated":
        item.reviews_done += 1
        if item.reviews_done >= item.reviews_required:
            item.state, item.completed_at = COMPLETE, now


def sampling_cursor(session: Session, segment: str) -> ReviewSampling | None:
    return session.get(ReviewSampling, segment)


#: What the sampler reads of every turn of a period: no text (an hour of traffic is tens of
#: thousands of turns); the text of the few it picks is read by :func:`turns_by_id`.
SAMPLING_COLUMNS = ("id", "ts", "domain", "model_version", "locale", "score", "divergence",
                    *(f"sig_{name}" for name in SIGNAL_NAMES))


def turns_between(session: Session, since: datetime, until: datetime, limit: int) -> list[Any]:
    """The :data:`SAMPLING_COLUMNS` of scored turns with derived signals and event time in
    ``(since, until]``, oldest first."""
    table = Turn.__table__
    return list(session.execute(
        select(*(table.c[name] for name in SAMPLING_COLUMNS))
        .where(table.c.ts > since, table.c.ts <= until, table.c.score.is_not(None),
               table.c.sig_length_tokens.is_not(None)).order_by(table.c.ts, table.c.id).limit(limit)).all())


def turns_by_id(session: Session, turn_ids: Sequence[int]) -> dict[int, Turn]:
    found: dict[int, Turn] = {}
    for start in range(0, len(turn_ids), 500):
        chunk = list(turn_ids[start:start + 500])
        found.update((turn.id, turn) for turn in session.scalars(select(Turn).where(Turn.id.in_(chunk))))
    return found


def responses_of(session: Session, turn_ids: Sequence[int]) -> dict[int, str]:
    if not turn_ids:
        return {}
    return {turn_id: response or "" for turn_id, response in
            session.execute(select(Turn.id, Turn.response).where(Turn.id.in_(list(turn_ids))))}


def response_of(session: Session, turn_id: int) -> str:
    return session.scalar(select(Turn.response).where(Turn.id == turn_id)) or ""


def first_turn_after(session: Session, since: datetime) -> datetime | None:
    """Event time of the first turn after ``since`` (with its signals derived)."""
    return session.scalar(select(func.min(Turn.ts)).where(Turn.ts > since, Turn.sig_length_tokens.is_not(None)))


def stats(session: Session, now: datetime) -> dict[str, Any]:
    """Queue depth (open items still needing a review), the age of the oldest, per arm and segment,
    with the leases out and the annotations and skips so far."""
    rows = session.execute(
        select(ReviewItem.arm, ReviewItem.segment, ReviewItem.state, func.count(), func.min(ReviewItem.created_at),
               func.sum(ReviewItem.active_leases), func.sum(ReviewItem.reviews_done))
        .group_by(ReviewItem.arm, ReviewItem.segment, ReviewItem.state)).all()
    skips = session.scalar(select(func.count()).select_from(ReviewLease).where(ReviewLease.outcome == "skipped")) or 0
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for arm, segment, state, count, first, leased, done in rows:
        group = groups.setdefault((arm, segment), {"arm": arm, "segment": segment, "open": 0, "complete": 0,
                                                   "leased": 0, "annotations": 0, "oldest_open_age_seconds": None})
        group[state] = group.get(state, 0) + int(count)
        group["leased"] += int(leased or 0)
        group["annotations"] += int(done or 0)
        if state == OPEN and first is not None:
            group["oldest_open_age_seconds"] = max(0.0, (now - first).total_seconds())
    return {
        "depth": sum(g["open"] for g in groups.values()),
        "complete": sum(g["complete"] for g in groups.values()),
        "leased": sum(g["leased"] for g in groups.values()),
        "annotations": sum(g["annotations"] for g in groups.values()),
        "skips": int(skips),
        "oldest_open_age_seconds": max((g["oldest_open_age_seconds"] for g in groups.values()
                                        if g["oldest_open_age_seconds"] is not None), default=None),
        "groups": sorted(groups.values(), key=lambda g: (g["segment"], g["arm"])),
    }
