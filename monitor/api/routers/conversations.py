"""`GET /v1/conversations/{conversation_id}`: a conversation's turns, scores and ratings (admin keys:
the raw text)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from monitor.api.auth import require
from monitor.api.deps import SessionDep
from monitor.auth import ADMIN
from monitor.errors import NotFound
from monitor.store.models import RatingRow, Turn
from monitor.store.reads import conversation_ratings, conversation_turns

router = APIRouter(prefix="/v1/conversations", tags=["conversations"])


class RatingOut(BaseModel):
    event_id: str
    turn: int
    ts: datetime
    kind: str
    value: float
    satisfaction: float
    reasons: list[str]
    comment: str | None
    joined: bool

    @classmethod
    def of(cls, row: RatingRow) -> RatingOut:
        return cls(
            event_id=str(row.event_id), turn=row.turn, ts=row.ts, kind=row.kind, value=row.value,
            satisfaction=row.satisfaction, reasons=row.reasons, comment=row.comment, joined=row.joined,
        )


class TurnOut(BaseModel):
    turn: int
    event_id: str
    ts: datetime
    model_version: str
    segment: dict[str, str | None]
    prompt: str
    response: str
    reward: float | None
    scorer: str | None
    score_error: str | None
    score_truncated: bool
    satisfaction: float | None
    rating_count: int
    #: Per-sample divergence: how much more the reward model pays for this response's features
    #: than the segment's users value them (None until the analyzer scored it; it needs no rating).
    divergence: float | None
    #: ``rated``: at least one rating joined; ``awaiting_rating``: none yet.
    status: Literal["rated", "awaiting_rating"]

    @classmethod
    def of(cls, row: Turn) -> TurnOut:
        return cls(
            turn=row.turn, event_id=str(row.event_id), ts=row.ts, model_version=row.model_version,
            segment={"domain": row.domain, "locale": row.locale, "channel": row.channel},
            prompt=row.prompt, response=row.response, reward=row.score, scorer=row.scorer,
            score_error=row.score_error, score_truncated=row.score_truncated, satisfaction=row.satisfaction,
            rating_count=row.rating_count,
            divergence=row.divergence,
            status="rated" if row.rating_count else "awaiting_rating",
        )


class ConversationOut(BaseModel):
    conversation_id: str
    turns: list[TurnOut]
    ratings: list[RatingOut]
    #: Ratings that arrived before their turn; they join when the turn arrives.
    ratings_waiting: int


# Raw text: admin keys only. Viewers get the redacted text once PII redaction lands (issue 9).
@router.get("/{conversation_id}", dependencies=[Depends(require(ADMIN))])
def get_conversation(conversation_id: str, session: SessionDep) -> ConversationOut:
    turns = conversation_turns(session, conversation_id)
    ratings = conversation_ratings(session, conversation_id)
    if not turns and not ratings:
        raise NotFound(f"conversation {conversation_id!r} not found")
    return ConversationOut(
        conversation_id=conversation_id,
        turns=[TurnOut.of(t) for t in turns],
        ratings=[RatingOut.of(r) for r in ratings],
        ratings_waiting=sum(not r.joined for r in ratings),
    )
