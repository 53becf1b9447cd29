"""The review queue as the API uses it: enqueue, lease, annotate, skip, edit, stats.

An annotator receives an :func:`annotator_view` of an item: the redacted conversation and nothing
that could anchor the judgement: no RM score or reward, no divergence, no user rating or
satisfaction, no arm or segment. Text is redacted when the item is queued
(:mod:`monitor.redaction`), so the review tables never hold raw personal data.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from monitor.analyze.segments import SegmentScheme
from monitor.analyze.state import SegmentState
from monitor.errors import Conflict, Forbidden, InvalidInput, NotFound
from monitor.redaction import redact, redact_many
from monitor.review.predict import rm_predictions
from monitor.review.rubric import Rubric, check_comment, load_rubric
from monitor.review.sampling import NO_MODE, Pick
from monitor.store import review as store
from monitor.store.models import Alert, ReviewAnnotation, ReviewItem, ReviewLease, Turn, utcnow

#: Earlier messages shown with an item, and the characters kept of each.
CONTEXT_MESSAGES = 10
CONTEXT_CHARS = 4000
MAX_SKIP_REASON = 500
#: SQLite has one writer: leases are handed out one at a time in the process.
_SQLITE_LEASES = threading.Lock()


def item_rows(session: Session, turns: Sequence[Turn], picks: Sequence[Pick], scheme: SegmentScheme, *,
              states: dict[str, SegmentState] | None = None) -> list[dict[str, Any]]:
    """``review_items`` rows of ``turns`` (same order as ``picks``), their text redacted (a name
    found anywhere in the batch's texts is replaced everywhere in them), with what the reward
    model promised for each (:mod:`monitor.review.predict`)."""
    promised = rm_predictions(session, turns, scheme, states=states)
    contexts = [_context(turn) for turn in turns]
    rivals = [_rival(turn) for turn in turns]
    texts = [x for turn, context, rival in zip(turns, contexts, rivals, strict=True)
             for x in (turn.prompt, turn.response, *(m["content"] for m in context), *rival)]
    redacted_texts = iter(redact_many(texts))
    rows = []
    for turn, pick, raw_context, rival in zip(turns, picks, contexts, rivals, strict=True):
        prompt, response = next(redacted_texts), next(redacted_texts)
        context = [{"role": m["role"], "content": next(redacted_texts)} for m in raw_context]
        candidates = ab_sides(turn.event_id, {"response": response or "", "source": "served"},
                              {"response": next(redacted_texts) or "", "source": "candidate:0"}) if rival else None
        rows.append({
            "turn_id": turn.id, "task_key": "", "cycle_id": None, "pair_turn_id": None,
            "event_id": str(turn.event_id), "conversation_id": turn.conversation_id,
            "turn": turn.turn, "turn_ts": turn.ts, "segment": scheme.key(turn.domain, turn.model_version, turn.locale),
            "domain": turn.domain, "mode": pick.mode if pick.mode != NO_MODE else None, "arm": pick.arm,
            "inclusion_probability": pick.inclusion_probability, "priority": pick.priority,
            "alert_id": pick.alert_id, "divergence": turn.divergence, "reward": turn.score,
            "rm_prediction": promised.get(turn.id, (None, None))[0],
            "reference_satisfaction": promised.get(turn.id, (None, None))[1],
            "context": context, "prompt": prompt, "response": response, "candidates": candidates,
            "duplicates": pick.duplicates, "reviews_required": pick.reviews_required, "reviews_done": 0,
            "active_leases": 0, "gold": pick.extra.get("gold"), "state": store.OPEN, "created_at": utcnow(),
        })
    return rows


def _rival(turn: Turn) -> list[str]:
    """The alternative response a pairwise task sets against the served one: the event's first."""
    candidates = turn.candidates or []
    return [str(candidates[0].get("content", ""))] if candidates else []


def ab_sides(event_id: object, first: dict[str, str], second: dict[str, str]) -> list[dict[str, str]]:
    """Two responses (``{"response", "source"}``) as A and B, in an order drawn per turn (stable:
    from its event id), so that neither letter means "served"; ``source`` stays with the item,
    never shown. Pairwise items of a turn's candidates and of relabeling cycles both use it."""
    pair = [first, second]
    if uuid.UUID(str(event_id)).int % 2:
        pair.reverse()
    return [{"label": label, **entry} for label, entry in zip(("A", "B"), pair, strict=True)]


def _context(turn: Turn) -> list[dict[str, str]]:
    """The conversation before the prompt: user and assistant messages, the latest ones."""
    messages = list(turn.messages or [])[:-1]
    for position in range(len(messages) - 1, -1, -1):  # drop the prompt itself
        if messages[position].get("role") == "user":
            messages = messages[:position]
            break
    kept = [m for m in messages if m.get("role") in ("user", "assistant")][-CONTEXT_MESSAGES:]
    return [{"role": m["role"], "content": str(m.get("content", ""))[:CONTEXT_CHARS]} for m in kept]


def annotator_view(item: ReviewItem, lease: ReviewLease | None, rubric: Rubric) -> dict[str, Any]:
    """What an annotator sees of an item: redacted text, the task and rubric version, the lease."""
    view: dict[str, Any] = {
        "item_id": item.id,
        "task": "pairwise" if item.candidates else "rating",
        "rubric_version": rubric.version,
        "context": item.context,
        "prompt": item.prompt,
        "response": item.response,
        "candidates": [{"label": c["label"], "response": c["response"]} for c in item.candidates or []] or None,
    }
    if lease is not None:
        view["lease_id"] = lease.id
        view["lease_expires_at"] = lease.expires_at.isoformat()
    return view


def annotation_view(annotation: ReviewAnnotation) -> dict[str, Any]:
    return {"item_id": annotation.item_id, "annotator": annotation.annotator,
            "rubric_version": annotation.rubric_version, "labels": annotation.labels, "comment": annotation.comment,
            "revision": annotation.revision, "created_at": annotation.created_at.isoformat(),
            "updated_at": annotation.updated_at.isoformat()}


class ReviewQueue:
    def __init__(self, sessions: sessionmaker[Session], scheme: SegmentScheme, *, lease_seconds: float = 900.0,
                 rubric: Rubric | None = None, clock: Callable[[], datetime] = utcnow) -> None:
        self.sessions = sessions
        self.scheme = scheme
        self.lease_seconds = lease_seconds
        self.rubric = rubric or load_rubric()
        self.clock = clock

    @contextmanager
    def _leasing(self) -> Iterator[Session]:
        sqlite = self.sessions.kw["bind"].dialect.name == "sqlite"
        if sqlite:
            _SQLITE_LEASES.acquire()
        try:
            with self.sessions.begin() as session:
                yield session
        finally:
            if sqlite:
                _SQLITE_LEASES.release()

    # --- annotators --------------------------------------------------------------------------

    def next(self, annotator: str) -> dict[str, Any] | None:
        """Lease the next item to ``annotator`` (or hand back the one it holds); None: nothing left."""
        with self._leasing() as session:
            found = store.lease_next(session, annotator, self.clock(), self.lease_seconds)
            return None if found is None else annotator_view(found[1], found[0], self.rubric)

    def submit(self, item_id: int, annotator: str, lease_id: str, labels: Any, comment: str | None) -> dict[str, Any]:
        now = self.clock()
        try:
            with self._leasing() as session:
                item, lease = self._held(session, item_id, annotator, lease_id, now)
                labels = self.rubric.check(labels, pairwise=bool(item.candidates))
                comment = check_comment(comment)
                annotation = ReviewAnnotation(item_id=item.id, annotator=annotator, rubric_version=self.rubric.version,
                                              labels=labels, comment=redact(comment) if comment else None,
                                              revision=1, created_at=now, updated_at=now)
                session.add(annotation)
                store.end_lease(session, lease, item, "annotated", now)
                store.audit(session, item.id, annotator, "annotated", rubric_version=self.rubric.version, at=now,
                            lease_id=lease.id, labels=labels)
                session.flush()
                return annotation_view(annotation)
        except IntegrityError as exc:  # the same annotator submitting twice at once
            raise Conflict(f"item {item_id} is already annotated by {annotator!r}; edit it with "
                           f"PUT /v1/review/items/{item_id}/annotations/mine") from exc

    def skip(self, item_id: int, annotator: str, lease_id: str, reason: str) -> dict[str, Any]:
        reason = (reason or "").strip()
        if not reason or len(reason) > MAX_SKIP_REASON:
            raise InvalidInput(f"a skip needs a reason of 1-{MAX_SKIP_REASON} characters")
        now = self.clock()
        with self._leasing() as session:
            item, lease = self._held(session, item_id, annotator, lease_id, now)
            store.end_lease(session, lease, item, "skipped", now, reason=redact(reason))
            store.audit(session, item.id, annotator, "skipped", at=now, lease_id=lease.id, reason=redact(reason))
            return {"item_id": item.id, "skipped": True}

    def _held(self, session: Session, item_id: int, annotator: str, lease_id: str,
              now: datetime) -> tuple[ReviewItem, ReviewLease]:
        """The item and the caller's live lease on it, or the error that says why not."""
        item = store.item_for_update(session, item_id)
        if item is None:
            raise NotFound(f"review item {item_id} not found")
        lease = session.get(ReviewLease, lease_id) if lease_id else None
        if lease is None or lease.item_id != item.id:
            raise NotFound(f"lease {lease_id!r} not found on item {item_id}; ask for work with POST /v1/review/next")
        if lease.annotator != annotator:
            raise Forbidden(f"lease {lease_id} on item {item_id} belongs to another annotator")
        if store.annotation_of(session, item.id, annotator) is not None:
            raise Conflict(f"item {item_id} is already annotated by {annotator!r}; edit it with "
                           f"PUT /v1/review/items/{item_id}/annotations/mine")
        if lease.outcome == "skipped":
            raise Conflict(f"lease {lease_id} ended: the item was skipped")
        if lease.outcome == "expired" or lease.expires_at <= now:
            raise Conflict(f"lease {lease_id} expired at {lease.expires_at.isoformat()}; the item went back to the "
                           f"pool: ask for work with POST /v1/review/next")
        return item, lease

    def mine(self, item_id: int, annotator: str) -> dict[str, Any]:
        """Re-open one's own annotation of an item: the item (as annotators see it) and the labels."""
        with self.sessions() as session:
            item = session.get(ReviewItem, item_id)
            annotation = store.annotation_of(session, item_id, annotator) if item is not None else None
            if item is None or annotation is None:
                raise NotFound(f"no annotation of item {item_id} by {annotator!r}")
            return {"item": annotator_view(item, None, self.rubric), "annotation": annotation_view(annotation)}

    def edit(self, item_id: int, annotator: str, labels: Any, comment: str | None) -> dict[str, Any]:
        now = self.clock()
        with self.sessions.begin() as session:
            item = session.get(ReviewItem, item_id)
            annotation = store.annotation_of(session, item_id, annotator) if item is not None else None
            if item is None or annotation is None:
                raise NotFound(f"no annotation of item {item_id} by {annotator!r} to edit")
            labels = self.rubric.check(labels, pairwise=bool(item.candidates))
            comment = check_comment(comment)
            store.audit(session, item.id, annotator, "edited", rubric_version=self.rubric.version, at=now,
                        previous=annotation.labels, previous_rubric_version=annotation.rubric_version, labels=labels)
            annotation.labels, annotation.comment = labels, redact(comment) if comment else None
            annotation.rubric_version, annotation.revision, annotation.updated_at = \
                self.rubric.version, annotation.revision + 1, now
            session.flush()
            return annotation_view(annotation)

    # --- operators ---------------------------------------------------------------------------

    def enqueue_conversations(self, conversation_ids: Sequence[str], actor: str, *,
                              gold: dict[tuple[str, int], dict[str, Any]] | None = None,
                              reviews_required: int = 1) -> int:
        """Queue every turn of these conversations (arm ``manual``, or ``gold`` with known answers);
        returns how many items were added (turns already queued add nothing)."""
        with self.sessions.begin() as session:
            turns = list(session.scalars(select(Turn).where(Turn.conversation_id.in_(list(conversation_ids)))
                                         .order_by(Turn.conversation_id, Turn.turn)))
            found = {t.conversation_id for t in turns}
            missing = [c for c in conversation_ids if c not in found]
            if missing:
                raise NotFound(f"no stored turns for conversation(s) {missing[:5]}")
            if gold is not None:
                unknown = sorted(set(gold) - {(t.conversation_id, t.turn) for t in turns})
                if unknown:
                    raise NotFound(f"gold answers for turns that are not stored: {unknown[:5]}")
                turns = [t for t in turns if (t.conversation_id, t.turn) in gold]
                for (_, _), labels in gold.items():
                    self.rubric.check(labels, pairwise=False)
            picks = [Pick(t.id, "gold" if gold is not None else "manual", 1.0, NO_MODE, priority=2.0,
                          reviews_required=reviews_required,
                          extra={"gold": gold[(t.conversation_id, t.turn)]} if gold is not None else {})
                     for t in turns]
            return self._insert(session, turns, picks, actor)

    def enqueue_alert(self, alert_id: int, actor: str, *, limit: int = 20) -> int:
        """Queue an alert's turns: its evidence's top examples, then the segment's turns of highest
        divergence since the alert started (arm ``targeted``)."""
        with self.sessions.begin() as session:
            alert = session.get(Alert, alert_id)
            if alert is None:
                raise NotFound(f"alert {alert_id} not found")
            examples = [e.get("event_id") for e in (alert.evidence or {}).get("top_examples", [])]
            turns = list(session.scalars(select(Turn).where(Turn.event_id.in_([_uuid(e) for e in examples if e]))))
            since = alert.started_at - timedelta(hours=1)
            recent = session.scalars(select(Turn).where(Turn.ts >= since, Turn.divergence.is_not(None))
                                     .order_by(Turn.divergence.desc()).limit(limit * 20))
            seen = {t.id for t in turns}
            for turn in recent:
                if len(turns) >= limit:
                    break
                segment = self.scheme.key(turn.domain, turn.model_version, turn.locale)
                if turn.id not in seen and segment == alert.segment:
                    turns.append(turn)
                    seen.add(turn.id)
            turns = turns[:limit]
            picks = [Pick(t.id, "targeted", 1.0, alert.mode or NO_MODE, priority=2.0 - rank / max(len(turns), 1),
                          alert_id=alert.id) for rank, t in enumerate(turns)]
            return self._insert(session, turns, picks, actor)

    def _insert(self, session: Session, turns: Sequence[Turn], picks: Sequence[Pick], actor: str) -> int:
        rows = item_rows(session, turns, picks, self.scheme)
        return len(store.insert_items(session, rows, actor=actor, at=self.clock()))

    def stats(self) -> dict[str, Any]:
        now = self.clock()
        with self.sessions.begin() as session:
            store.expire_leases(session, now)
            return store.stats(session, now)


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None
