"""`GET /v1/conversations/{conversation_id}`: a conversation's turns, scores and ratings. Admin keys
get the raw text; viewer keys the text with personal data replaced by typed placeholders
(:mod:`monitor.redaction`): prompts, responses and rating comments."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel

from monitor.api.auth import Principal, require
from monitor.api.deps import SessionDep
from monitor.auth import ADMIN, VIEW
from monitor.errors import NotFound
from monitor.redaction import redact_many
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


# `:path`: conversation ids may contain "/" on the wire (any 1-256 characters), so the rest of the path is the id.
@router.get("/{conversation_id:path}")
def get_conversation(conversation_id: Annotated[str, Path(min_length=1, max_length=256)], session: SessionDep,
                     caller: Annotated[Principal, Depends(require(VIEW))]) -> ConversationOut:
    turns = [TurnOut.of(t) for t in conversation_turns(session, conversation_id)]
    ratings = [RatingOut.of(r) for r in conversation_ratings(session, conversation_id)]
    if not turns and not ratings:
        raise NotFound(f"conversation {conversation_id!r} not found")
    if caller.role not in ADMIN:  # raw text for admins only; a name found anywhere goes everywhere
        texts = iter(redact_many([*(x for t in turns for x in (t.prompt, t.response)), *(r.comment for r in ratings)]))
        turns = [t.model_copy(update={"prompt": next(texts), "response": next(texts)}) for t in turns]
        ratings = [r.model_copy(update={"comment": next(texts)}) for r in ratings]
    return ConversationOut(conversation_id=conversation_id, turns=turns, ratings=ratings,
                           ratings_waiting=sum(not r.joined for r in ratings))
