"""The shadow review queue (``/v1/review/...``): annotators lease items and label them against the
rubric; admins queue conversations, alerts and gold items; everyone may read the stats and rubric.

Annotators see redacted text only and nothing that could anchor them (no RM score, no rating):
:func:`monitor.review.queue.annotator_view`. Errors: unknown item or lease 404, a lease of another
annotator 403, an expired lease or a double submit 409, labels outside the rubric or an oversized
comment 422; none of them writes anything.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select

from monitor.api.auth import Principal, require
from monitor.api.deps import MAX_ROW_ID, ContextDep, RowId, SessionDep
from monitor.auth import ADMIN, ANNOTATE, ROLES, VIEW
from monitor.errors import InvalidInput
from monitor.events import MAX_TURN
from monitor.review.report import build_report
from monitor.review.rubric import MAX_COMMENT
from monitor.store.models import ReviewItem

router = APIRouter(prefix="/v1/review", tags=["review"])

Annotator = Annotated[Principal, Depends(require(ANNOTATE))]
Admin = Annotated[Principal, Depends(require(ADMIN))]
Anyone = Annotated[Principal, Depends(require(frozenset(ROLES)))]
Viewer = Annotated[Principal, Depends(require(VIEW))]
#: Conversations one manual enqueue may name.
MAX_ENQUEUE = 1000


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AnnotationIn(_Body):
    lease_id: Annotated[str, Field(min_length=1, max_length=64)]
    labels: dict[str, Any]
    # Checked against MAX_COMMENT by the queue (a clear 422), not here, with some slack for the parser.
    comment: Annotated[str | None, Field(max_length=MAX_COMMENT * 4)] = None


class EditIn(_Body):
    labels: dict[str, Any]
    comment: Annotated[str | None, Field(max_length=MAX_COMMENT * 4)] = None


class SkipIn(_Body):
    lease_id: Annotated[str, Field(min_length=1, max_length=64)]
    reason: Annotated[str, Field(max_length=2000)]


class GoldIn(_Body):
    conversation_id: Annotated[str, Field(min_length=1, max_length=256)]
    turn: Annotated[int, Field(ge=0, le=MAX_TURN)]
    labels: dict[str, Any]


class EnqueueIn(_Body):
    conversation_ids: Annotated[list[Annotated[str, Field(min_length=1, max_length=256)]] | None,
                                Field(min_length=1, max_length=MAX_ENQUEUE)] = None
    alert_id: Annotated[int | None, Field(ge=1, le=MAX_ROW_ID)] = None
    gold: Annotated[list[GoldIn] | None, Field(min_length=1, max_length=MAX_ENQUEUE)] = None
    #: Annotators each item needs (gold items: every annotator who should be checked on it).
    reviews_required: Annotated[int, Field(ge=1, le=50)] = 1

    @model_validator(mode="after")
    def _one_source(self) -> EnqueueIn:
        given = [name for name in ("conversation_ids", "alert_id", "gold") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of conversation_ids, alert_id or gold")
        return self


@router.post("/next", responses={204: {"description": "Nothing left to review."}})
def next_item(context: ContextDep, caller: Annotator) -> Any:
    """Lease the next item (or get back the one you hold). 204 when nothing is left for you."""
    item = context.review.next(caller.name)
    return Response(status_code=204) if item is None else item


@router.post("/items/{item_id}/annotations", status_code=201)
def submit(item_id: RowId, body: AnnotationIn, context: ContextDep, caller: Annotator) -> dict[str, Any]:
    return context.review.submit(item_id, caller.name, body.lease_id, body.labels, body.comment)


@router.post("/items/{item_id}/skip")
def skip(item_id: RowId, body: SkipIn, context: ContextDep, caller: Annotator) -> dict[str, Any]:
    return context.review.skip(item_id, caller.name, body.lease_id, body.reason)


@router.get("/items/{item_id}/annotations/mine")
def mine(item_id: RowId, context: ContextDep, caller: Annotator) -> dict[str, Any]:
    """Re-open your annotation of an item."""
    return context.review.mine(item_id, caller.name)


@router.put("/items/{item_id}/annotations/mine")
def edit(item_id: RowId, body: EditIn, context: ContextDep, caller: Annotator) -> dict[str, Any]:
    """Change your annotation of an item (the audit trail keeps the previous labels)."""
    return context.review.edit(item_id, caller.name, body.labels, body.comment)


@router.post("/items")
def enqueue(body: EnqueueIn, context: ContextDep, caller: Admin) -> dict[str, int]:
    """Queue turns by hand: every turn of ``conversation_ids``, an alert's turns (``alert_id``) or
    gold items with known answers (``gold``). Re-adding a queued turn adds nothing."""
    if body.conversation_ids is not None:
        added = context.review.enqueue_conversations(body.conversation_ids, caller.name,
                                                     reviews_required=body.reviews_required)
    elif body.alert_id is not None:
        added = context.review.enqueue_alert(body.alert_id, caller.name)
    else:
        assert body.gold is not None
        gold = {(g.conversation_id, g.turn): g.labels for g in body.gold}
        if len(gold) != len(body.gold):
            raise InvalidInput("gold names the same turn twice")
        added = context.review.enqueue_conversations(sorted({c for c, _ in gold}), caller.name, gold=gold,
                                                     reviews_required=body.reviews_required)
    return {"added": added}


@router.get("/items")
def list_items(session: SessionDep, _caller: Viewer,
               state: Annotated[str | None, Query(pattern="^(open|complete)$")] = None,
               arm: Annotated[str | None, Query(max_length=16)] = None,
               segment: Annotated[str | None, Query(max_length=256)] = None,
               limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    """The queue's items for operators: how each was sampled, its state, its (redacted) text."""
    query = select(ReviewItem).order_by(ReviewItem.id.desc()).limit(limit)
    for column, value in ((ReviewItem.state, state), (ReviewItem.arm, arm), (ReviewItem.segment, segment)):
        if value is not None:
            query = query.where(column == value)
    return {"items": [{
        "id": item.id, "conversation_id": item.conversation_id, "turn": item.turn, "segment": item.segment,
        "mode": item.mode, "arm": item.arm, "inclusion_probability": item.inclusion_probability,
        "priority": item.priority, "alert_id": item.alert_id, "divergence": item.divergence,
        "duplicates": item.duplicates, "reviews_required": item.reviews_required, "reviews_done": item.reviews_done,
        "gold": item.gold is not None, "state": item.state, "created_at": item.created_at.isoformat(),
        "prompt": item.prompt, "response": item.response,
    } for item in session.scalars(query)]}


@router.get("/report")
def report(session: SessionDep, context: ContextDep, _caller: Viewer,
           segment: Annotated[str | None, Query(max_length=256)] = None,
           since: Annotated[AwareDatetime | None, Query(description="Turns from this event time on.")] = None,
           until: Annotated[AwareDatetime | None, Query(description="Turns before this event time.")] = None,
           ) -> dict[str, Any]:
    """What the human labels say: per segment (control arm, re-weighted) and per alert (its
    targeted items), human satisfaction vs the RM's calibrated prediction vs the users' realised
    satisfaction with 95% intervals and a verdict; agreement per rubric item; annotators' gold
    accuracy. See docs/review.md."""
    if since is not None and until is not None and since >= until:
        raise InvalidInput("since must be before until")
    return build_report(session, context.review.rubric, segment=segment, since=since, until=until)


@router.get("/stats")
def stats(context: ContextDep, _caller: Anyone) -> dict[str, Any]:
    """Queue depth, the age of the oldest open item, per arm and segment."""
    return context.review.stats()


@router.get("/rubric")
def rubric(context: ContextDep, _caller: Anyone) -> dict[str, Any]:
    """The rubric annotations are checked against, with its version."""
    return context.review.rubric.document
