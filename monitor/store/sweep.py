"""The rating-join sweep: ratings left unjoined although their turn is stored, joined after all.

Each ingest transaction joins the ratings it can see (:func:`monitor.store.writes.join_ratings`).
With several workers, a turn and its rating can be written by two transactions open at the same
time, each on its own partition: neither sees the other's uncommitted row, both commit, and the
rating stays ``joined = false`` beside its turn, which keeps no satisfaction. No later batch
touches that key again, so without this sweep the join would never happen.

:func:`join_missed_ratings` finds such ratings (a partial index holds the unjoined ones, which are
few: ratings waiting for a turn that has not arrived) and joins them with the same
``join_ratings`` ingest uses, so a swept turn ends exactly as if one transaction had written both.
The analyzer calls it at the start of every run, under its lock, before it reads what entered.
"""

from __future__ import annotations

from sqlalchemy import and_, exists, false, select
from sqlalchemy.orm import Session

from monitor.store.models import RatingRow, Turn
from monitor.store.writes import join_ratings

#: Ratings one sweep joins at most; more (after a long outage of the analyzer) wait for the next run.
SWEEP_LIMIT = 5_000


def join_missed_ratings(session: Session, *, limit: int = SWEEP_LIMIT) -> int:
    """Join up to ``limit`` ratings that are unjoined although their turn is stored; returns how
    many it found. Flushes, never commits: the caller owns the transaction."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    same_turn = and_(Turn.conversation_id == RatingRow.conversation_id, Turn.turn == RatingRow.turn)
    # `joined = false` as the partial index ix_ratings_unjoined states it, so both databases use it.
    missed = session.execute(
        select(RatingRow.conversation_id, RatingRow.turn)
        .where(RatingRow.joined == false(), exists().where(same_turn))
        .order_by(RatingRow.id)
        .limit(limit)
    ).all()
    if missed:
        join_ratings(session, [(conversation_id, turn) for conversation_id, turn in missed])
        session.flush()
    return len(missed)
