"""Read queries of the store (``select()`` only), shared by the API and the CLI."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from monitor.store.models import DeadLetter, RatingRow, Turn


def conversation_turns(session: Session, conversation_id: str) -> list[Turn]:
    return list(
        session.scalars(select(Turn).where(Turn.conversation_id == conversation_id).order_by(Turn.turn))
    )


def conversation_ratings(session: Session, conversation_id: str) -> list[RatingRow]:
    return list(
        session.scalars(
            select(RatingRow)
            .where(RatingRow.conversation_id == conversation_id)
            .order_by(RatingRow.turn, RatingRow.ts, RatingRow.event_id)
        )
    )


@dataclass(frozen=True)
class StoreCounts:
    turns: int
    ratings: int
    ratings_joined: int
    dead_letters: int


def store_counts(session: Session) -> StoreCounts:
    return StoreCounts(
        turns=session.scalar(select(func.count()).select_from(Turn)) or 0,
        ratings=session.scalar(select(func.count()).select_from(RatingRow)) or 0,
        ratings_joined=session.scalar(select(func.count()).where(RatingRow.joined.is_(True))) or 0,
        dead_letters=session.scalar(select(func.count()).select_from(DeadLetter)) or 0,
    )
