"""Relabeling cycles: open one on a slice, form its pairs, queue them as pairwise review tasks,
follow its progress, cancel it.

A cycle's slice is the scored turns of its segments (or its alert's segment) and time range, the
last :data:`MAX_SLICE` in range. With a mode (given, or its alert's), its pairs contrast the mode:
one answer clearly more verbose (flattering, formatted, ...) than the other
(:mod:`monitor.relabel.contrast`). Its pairs (:mod:`monitor.relabel.pairs`) become review items
(arm ``relabel``, task key ``cycle:<id>:pair:<n>``, redacted like every item) that annotators
label through the queue with ``preference`` A / B / tie. A slice with fewer pairs than asked
gets what it has; one with none is ``insufficient`` (its status says why) instead of waiting for
labels that cannot come.

**Idempotency**: a request with an ``Idempotency-Key`` stores the key and a digest of its body. The
same key again returns the same cycle (the API answers 200 instead of 201); the same key with a
different body is a 409. Two requests with one key at once: the unique key lets one insert, the
other reads its cycle.
"""

from __future__ import annotations

import builtins
import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from monitor.analyze.segments import SegmentScheme
from monitor.analyze.state import SegmentState
from monitor.errors import Conflict, InvalidInput, NotFound
from monitor.redaction import redact_many
from monitor.relabel.audit import rm_accuracy
from monitor.relabel.pairs import (
    PER_TURN,
    SIMILAR,
    STRATEGIES,
    PlannedPair,
    SliceTurn,
    choose,
    dense_pairs,
    form_pairs,
)
from monitor.relabel.results import LabelledPair, Side, audit_pairs, cycle_results, preference_agreement
from monitor.review.queue import ab_sides
from monitor.review.sampling import signal_values
from monitor.signals import MODES, SIGNAL_NAMES, response_signals
from monitor.store import review as review_store
from monitor.store.analysis import load_states
from monitor.store.models import Alert, RelabelCycle, RelabelPair, ReviewAnnotation, ReviewItem, Turn, utcnow

#: Turns a cycle's slice is drawn from, at most (the latest in range).
MAX_SLICE = 5000
#: Largest cycle.
MAX_SIZE = 2000
#: Default time range: the last day before the newest stored turn.
DEFAULT_RANGE = timedelta(days=1)
PRIORITY = 3.0  # ahead of sampled items: an operator asked for these
#: Default share of control pairs in a cycle with a mode.
CONTROL_SHARE = 0.25
#: A cycle is collecting until every pair is labelled (complete) or its deadline passes (expired);
#: cancelled by an operator; insufficient when its slice formed no pair.
COLLECTING, COMPLETE, EXPIRED, CANCELLED, INSUFFICIENT = "collecting", "complete", "expired", "cancelled", \
    "insufficient"
ENDED_WITH_RESULTS = (COMPLETE, EXPIRED)
#: Ended cycles a ``relabel_cycle/v1`` event announces.
ANNOUNCED = (COMPLETE, EXPIRED, INSUFFICIENT)


class CycleRequest(BaseModel):
    """``POST /v1/relabel-cycles``: only ``size`` and a slice (``segments`` or ``alert_id``) are needed."""

    model_config = ConfigDict(extra="forbid")

    segments: Annotated[list[Annotated[str, Field(min_length=1, max_length=256)]] | None,
                        Field(min_length=1, max_length=64)] = None
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None
    mode: Annotated[str | None, Field(max_length=32)] = None
    alert_id: int | None = Field(default=None, ge=1, le=2**63 - 1)  # BIGINT in the store
    size: int = Field(ge=1, le=MAX_SIZE)
    strategy: Literal["divergence", "uncertainty", "random"] = "divergence"
    deadline: AwareDatetime | None = None
    #: Annotators per pair (several: agreement, and Bradley-Terry sees each pair more than once).
    labels_per_pair: int = Field(default=1, ge=1, le=5)
    #: Pairs a response from similar prompts may join (``spread``), the rivals each response of a
    #: family meets (``dense``): more, a denser comparison graph.
    pairs_per_response: int = Field(default=PER_TURN, ge=1, le=8)
    #: Prompts at least this similar (MiniLM cosine) count as near-identical.
    min_similarity: float = Field(default=SIMILAR, ge=0.5, le=1.0)
    #: ``spread``: pairs one by one in the strategy's order; ``dense``: families of responses to
    #: near-identical prompts, every two compared (Bradley-Terry strengths precise and comparable
    #: across each family; see monitor.relabel.pairs).
    design: Literal["spread", "dense"] = "spread"
    #: With a mode: the share of pairs that do not contrast it (control pairs, picked at random from
    #: the same slice), so the RM audit can hold its accuracy on the mode against the rest.
    control_share: float = Field(default=CONTROL_SHARE, ge=0.0, le=0.5)


def digest(request: CycleRequest) -> str:
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def cycle_view(session: Session, cycle: RelabelCycle) -> dict[str, Any]:
    """Status, progress (pairs labelled), the preferences and the RM audit so far, agreement, and
    what the cycle found once it ended (``results``)."""
    items = list(session.execute(select(ReviewItem.id, ReviewItem.state).where(ReviewItem.cycle_id == cycle.id)))
    labelled = labelled_pairs(session, cycle.id)
    preferences = {"A": 0, "B": 0, "tie": 0}
    by_item: dict[int, list[str]] = defaultdict(list)
    for item_id, pair in labelled:
        preferences[pair.preference] += 1
        by_item[item_id].append(pair.preference)
    formed = dict(session.execute(select(RelabelPair.formed_by, func.count()).where(RelabelPair.cycle_id == cycle.id)
                                  .group_by(RelabelPair.formed_by)).all())
    return {
        "id": cycle.id, "status": cycle.status, "detail": cycle.detail, "request": cycle.request,
        "alert_id": cycle.alert_id, "created_by": cycle.created_by, "created_at": cycle.created_at.isoformat(),
        "deadline": cycle.deadline.isoformat() if cycle.deadline else None,
        "finished_at": cycle.finished_at.isoformat() if cycle.finished_at else None,
        "progress": {"pairs": cycle.pairs, "labelled": sum(state == review_store.COMPLETE for _, state in items),
                     "labels": len(labelled)},
        "pairs_formed_by": formed, "preferences": preferences,
        "rm_audit": rm_accuracy(audit_pairs([p for _, p in labelled])),
        "agreement": preference_agreement(by_item),
        "results": cycle.results,
        "announced": {"event_published_at": _iso(cycle.event_published_at),
                      "webhook_delivered_at": _iso(cycle.webhook_delivered_at),
                      "webhook_attempts": cycle.webhook_attempts, "webhook_error": cycle.webhook_error},
        "export": f"/v1/relabel-cycles/{cycle.id}/export",
    }


def labelled_pairs(session: Session, cycle_id: int) -> list[tuple[int, LabelledPair]]:
    """Every annotation of the cycle's pairs with a preference, the sides as shown (item id first)."""
    rows = session.execute(
        select(ReviewItem.id, ReviewAnnotation.labels, ReviewItem.segment, ReviewItem.mode, ReviewItem.candidates,
               RelabelPair.reward_a, RelabelPair.reward_b, RelabelPair.turn_a, ReviewItem.prompt)
        .join(ReviewItem, ReviewItem.id == ReviewAnnotation.item_id)
        .join(RelabelPair, RelabelPair.item_id == ReviewItem.id)
        .where(ReviewItem.cycle_id == cycle_id).order_by(ReviewAnnotation.id))
    out = []
    for item_id, labels, segment, mode, candidates, reward_a, reward_b, turn_a, prompt in rows:
        preference = labels.get("preference")
        if preference not in ("A", "B", "tie") or len(candidates or []) != 2:
            continue
        rewards = {f"turn:{turn_a}": reward_a}
        sides = []
        for side in candidates:
            source = str(side.get("source", ""))
            key = f"candidate:{turn_a}:{source.split(':', 1)[1]}" if source.startswith("candidate:") else source
            reward = rewards[source] if source in rewards else reward_b
            sides.append(Side(key, str(side.get("response", "")), reward))
        out.append((item_id, LabelledPair(segment, mode, sides[0], sides[1], preference, prompt or "", item_id)))
    return out


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def finish(session: Session, cycle: RelabelCycle, status: str, detail: str | None, now: datetime) -> None:
    """End ``cycle``: its open items leave the queue, and what its labels say is stored."""
    cycle.status, cycle.finished_at, cycle.updated_at = status, now, now
    if detail is not None:
        cycle.detail = detail
    session.execute(update(ReviewItem.__table__).where(ReviewItem.__table__.c.cycle_id == cycle.id,
                                                       ReviewItem.__table__.c.state == review_store.OPEN)
                    .values(state="cancelled"))
    if status in ENDED_WITH_RESULTS:
        labelled = [pair for _, pair in labelled_pairs(session, cycle.id)]
        segments = {pair.segment for pair in labelled} | set(cycle.request.get("segments") or [])
        states = {name: SegmentState.from_json(value) for name, value in load_states(session).items()
                  if name in segments}
        cycle.results = cycle_results(labelled, states, mode=cycle.request.get("mode"), seed=cycle.id)
    session.flush()


class CycleService:
    def __init__(self, sessions: sessionmaker[Session], scheme: SegmentScheme, *,
                 embed: Callable[[list[str]], np.ndarray] | None = None, seed: int | None = None,
                 clock: Callable[[], datetime] = utcnow, max_size: int = MAX_SIZE) -> None:
        self.sessions = sessions
        self.scheme = scheme
        self.max_size = max_size
        self._embed = embed
        self.seed = seed
        self.clock = clock

    def embed(self, texts: list[str]) -> np.ndarray:
        if self._embed is None:  # MiniLM, loaded on the first cycle that needs similar prompts
            from monitor.analyze.embeddings import PromptEmbedder

            self._embed = PromptEmbedder().embed
        return self._embed(texts)

    def create(self, request: CycleRequest, actor: str, idempotency_key: str | None = None) -> tuple[dict, bool]:
        """The cycle and whether this call created it (False: an idempotent retry)."""
        if request.size > self.max_size:
            raise InvalidInput(f"size {request.size} is over the maximum of {self.max_size} pairs "
                               f"(MONITOR_RELABEL_MAX_SIZE)")
        wanted = digest(request)
        if idempotency_key is not None:
            with self.sessions() as session:
                found = self._by_key(session, idempotency_key, wanted)
                if found is not None:
                    return found, False
        try:
            with self.sessions.begin() as session:
                return self._create(session, request, actor, idempotency_key, wanted), True
        except IntegrityError:  # the same key inserted by a concurrent request
            if idempotency_key is None:
                raise
            with self.sessions() as session:
                found = self._by_key(session, idempotency_key, wanted)
            if found is None:
                raise
            return found, False

    def _by_key(self, session: Session, key: str, wanted: str) -> dict | None:
        cycle = session.scalars(select(RelabelCycle).where(RelabelCycle.idempotency_key == key)).first()
        if cycle is None:
            return None
        if cycle.request_digest != wanted:
            raise Conflict(f"Idempotency-Key {key!r} was used for another request (cycle {cycle.id}); "
                           f"use a new key for a new cycle")
        return cycle_view(session, cycle)

    def _create(self, session: Session, request: CycleRequest, actor: str, key: str | None, wanted: str) -> dict:
        segments, mode = self._slice_of(session, request)
        now = self.clock()
        if request.deadline is not None and request.deadline <= now:
            raise InvalidInput(f"the deadline {request.deadline.isoformat()} has passed")
        turns = self._slice(session, request, segments)
        if not turns:
            raise InvalidInput(f"the slice holds no scored turns (segments {segments}, mode {mode or 'any'}); "
                               f"widen the time range or pick another segment")
        # Random picks reproducible: from the service's seed, else from the request and the cycles before it.
        before = session.scalar(select(func.max(RelabelCycle.id))) or 0
        rng = np.random.default_rng(self.seed if self.seed is not None else [int(wanted[:15], 16), before])
        planned, control = self._plan(request, [_slice_turn(t) for t in turns], mode, rng)
        cycle = RelabelCycle(idempotency_key=key, request_digest=wanted,
                             request={**request.model_dump(mode="json"), "segments": segments, "mode": mode},
                             status=COLLECTING if planned else INSUFFICIENT, pairs=len(planned),
                             alert_id=request.alert_id, created_by=actor, created_at=now, updated_at=now,
                             deadline=request.deadline, webhook_attempts=0)
        if not planned:
            why = (f"no two answers to near-identical prompts contrast {mode} (one clearly more {mode} than the "
                   f"other)" if mode else "no event carried alternative responses and no two prompts are "
                                          "near-identical")
            cycle.detail, cycle.finished_at = f"the slice's {len(turns)} turns form no pair: {why}", now
        elif len(planned) < request.size:
            cycle.detail = f"the slice forms {len(planned)} pairs, fewer than the {request.size} asked for"
        session.add(cycle)
        session.flush()
        self._queue(session, cycle, planned, {t.id: t for t in turns}, now, control)
        return cycle_view(session, cycle)

    def _plan(self, request: CycleRequest, turns: Sequence[SliceTurn], mode: str | None,
              rng: np.random.Generator) -> tuple[builtins.list[PlannedPair], int]:
        """The cycle's pairs, and how many of them (the last) are control pairs."""
        cache: dict[str, np.ndarray] = {}

        def embed(texts: builtins.list[str]) -> np.ndarray:  # each distinct prompt embedded once
            missing = builtins.list(dict.fromkeys(t for t in texts if t not in cache))
            if missing:
                cache.update(zip(missing, np.asarray(self.embed(missing), dtype=float), strict=True))
            return np.array([cache[t] for t in texts]).reshape(len(texts), -1)

        def pick(strategy: str, size: int, contrasting: bool) -> builtins.list[PlannedPair]:
            if size <= 0:
                return []
            picked: builtins.list[PlannedPair] = []
            if request.design == "dense":
                picked = dense_pairs(turns, embed, strategy, size, rng, rivals=request.pairs_per_response,
                                     similar=request.min_similarity, mode=mode, contrasting=contrasting)
            if len(picked) < size:  # spread, or what families could not fill (candidate pairs among them)
                taken = {(p.turn_a, p.turn_b) for p in picked}
                rest = [p for p in form_pairs(turns, embed, per_turn=request.pairs_per_response,
                                              similar=request.min_similarity, mode=mode, contrasting=contrasting)
                        if (p.turn_a, p.turn_b) not in taken and (p.turn_b, p.turn_a) not in taken]
                picked += choose(rest, strategy, size - len(picked), rng)
            return picked

        wanted = round(request.size * request.control_share) if mode is not None and request.size > 1 else 0
        control = pick("random", wanted, contrasting=False)
        return pick(request.strategy, request.size - len(control), contrasting=True) + control, len(control)

    def _slice_of(self, session: Session, request: CycleRequest) -> tuple[list[str], str | None]:
        known = self.scheme.all_keys()
        segments = list(request.segments or [])
        mode = request.mode
        if request.alert_id is not None:
            alert = session.get(Alert, request.alert_id)
            if alert is None:
                raise NotFound(f"alert {request.alert_id} not found")
            segments = segments or [alert.segment]
            mode = mode or (alert.mode if alert.mode in MODES else None)
        if not segments:
            raise InvalidInput("give segments or an alert_id: the cycle needs a slice")
        unknown = [s for s in segments if s not in known]
        if unknown:
            shown = [s.split("/")[0] for s in unknown]
            resolved = [k for s in shown for k in known if k.split("/")[0] == s]
            if len(resolved) == len(unknown) and all("/" not in s for s in unknown):
                segments = [s for s in segments if s in known] + resolved  # a bare domain names its segments
            else:
                raise InvalidInput(f"unknown segment(s) {unknown}; known: {', '.join(known)}")
        if mode is not None and mode not in MODES:
            raise InvalidInput(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
        if request.since and request.until and request.since >= request.until:
            raise InvalidInput("since must be before until")
        return segments, mode

    def _slice(self, session: Session, request: CycleRequest, segments: Sequence[str]) -> list[Turn]:
        until = request.until or session.scalar(select(func.max(Turn.ts)))
        if until is None:
            return []
        since = request.since or until - DEFAULT_RANGE
        query = (select(Turn).where(Turn.ts >= since, Turn.ts <= until, Turn.score.is_not(None))
                 .order_by(Turn.ts.desc()).limit(MAX_SLICE * 4))
        turns = [t for t in session.scalars(query) if self.scheme.key(t.domain, t.model_version, t.locale) in segments]
        return turns[:MAX_SLICE]

    def _queue(self, session: Session, cycle: RelabelCycle, planned: Sequence[PlannedPair], turns: dict[int, Turn],
               now: datetime, control: int = 0) -> None:
        """Queue ``planned`` as review items; the last ``control`` are control pairs (no mode)."""
        texts: list[str] = []
        for pair in planned:
            a = turns[pair.turn_a]
            rival = (a.candidates or [{}])[0]
            b_text = turns[pair.turn_b].response if pair.turn_b is not None else str(rival.get("content", ""))
            texts += [a.prompt, a.response, b_text]
        redacted = iter(redact_many(texts))
        for number, pair in enumerate(planned):
            a = turns[pair.turn_a]
            prompt, served, other = next(redacted) or "", next(redacted) or "", next(redacted) or ""
            sides = ab_sides(a.event_id, {"response": served, "source": f"turn:{a.id}"},
                             {"response": other, "source": f"turn:{pair.turn_b}" if pair.turn_b else "candidate:0"})
            row = {
                "turn_id": a.id, "task_key": f"cycle:{cycle.id}:pair:{number}", "cycle_id": cycle.id,
                "pair_turn_id": pair.turn_b, "event_id": str(a.event_id), "conversation_id": a.conversation_id,
                "turn": a.turn, "turn_ts": a.ts, "segment": self.scheme.key(a.domain, a.model_version, a.locale),
                "domain": a.domain, "mode": None if number >= len(planned) - control else cycle.request.get("mode"),
                "arm": "relabel", "inclusion_probability": 1.0,
                "priority": PRIORITY - _position(number, len(planned) - control, control), "alert_id": cycle.alert_id,
                "divergence": a.divergence, "reward": a.score, "rm_prediction": None, "reference_satisfaction": None,
                "context": [], "prompt": prompt, "response": served,
                "candidates": sides,
                "duplicates": 0, "reviews_required": int(cycle.request.get("labels_per_pair") or 1),
                "reviews_done": 0, "active_leases": 0, "gold": None,
                "state": review_store.OPEN, "created_at": now,
            }
            item_id, = review_store.insert_items(session, [row], actor=cycle.created_by, at=now)
            session.add(RelabelPair(cycle_id=cycle.id, item_id=item_id, turn_a=a.id, turn_b=pair.turn_b,
                                    formed_by=pair.formed_by, similarity=pair.similarity,
                                    reward_a=pair.reward_a, reward_b=pair.reward_b))

    def list(self, limit: int = 100) -> list[dict]:
        with self.sessions.begin() as session:
            cycles = list(session.scalars(select(RelabelCycle).order_by(RelabelCycle.id.desc()).limit(limit)))
            return [self._refresh(session, cycle) for cycle in cycles]

    def get(self, cycle_id: int) -> dict:
        with self.sessions.begin() as session:
            cycle = session.get(RelabelCycle, cycle_id)
            if cycle is None:
                raise NotFound(f"relabel cycle {cycle_id} not found")
            return self._refresh(session, cycle)

    def _refresh(self, session: Session, cycle: RelabelCycle) -> dict:
        """The cycle's view; a collecting cycle whose every pair is labelled completes here, one
        past its deadline expires."""
        self._settle(session, cycle)
        return cycle_view(session, cycle)

    def _settle(self, session: Session, cycle: RelabelCycle) -> bool:
        """End a collecting cycle that is done or past its deadline; True when it ended now."""
        if cycle.status != COLLECTING:
            return False
        now = self.clock()
        labelled = session.scalar(select(func.count()).select_from(ReviewItem).where(
            ReviewItem.cycle_id == cycle.id, ReviewItem.state == review_store.COMPLETE)) or 0
        if cycle.pairs and labelled >= cycle.pairs:
            finish(session, cycle, COMPLETE, None, now)
            return True
        if cycle.deadline is not None and cycle.deadline <= now:
            finish(session, cycle, EXPIRED, f"the deadline passed with {labelled} of {cycle.pairs} pairs labelled; "
                                            f"the rest left the queue", now)
            return True
        return False

    def settle(self) -> builtins.list[int]:
        """End every collecting cycle that is done or past its deadline (the analyzer calls this
        each run, so a cycle ends, and is announced, without anyone looking at it)."""
        ended: builtins.list[int] = []
        with self.sessions.begin() as session:
            for cycle in session.scalars(select(RelabelCycle).where(RelabelCycle.status == COLLECTING)
                                         .with_for_update(skip_locked=True)):
                if self._settle(session, cycle):
                    ended.append(cycle.id)
        return ended

    def cancel(self, cycle_id: int, actor: str) -> dict:
        with self.sessions.begin() as session:
            cycle = session.get(RelabelCycle, cycle_id, with_for_update=True)
            if cycle is None:
                raise NotFound(f"relabel cycle {cycle_id} not found")
            self._settle(session, cycle)
            if cycle.status != COLLECTING:
                raise Conflict(f"relabel cycle {cycle_id} is {cycle.status}; only a collecting cycle can be cancelled")
            finish(session, cycle, CANCELLED, f"cancelled by {actor}", self.clock())
            return cycle_view(session, cycle)


def _position(number: int, contrast: int, control: int) -> float:
    """Where pair ``number`` comes in the queue, in [0, 1): the contrast pairs in their order, the
    control pairs spread evenly among them, so a cycle cut short by its deadline has both."""
    if number < contrast:
        return number / max(contrast, 1)
    return (number - contrast + 0.5) / control


def _slice_turn(turn: Turn) -> SliceTurn:
    """A turn as pairing sees it; signals not derived yet (a turn just ingested) are read here from
    the phrase lists, which give the length and markdown signals exactly."""
    candidates = turn.candidates or []
    rival = candidates[0] if candidates else None
    signals = signal_values({name: getattr(turn, f"sig_{name}") for name in SIGNAL_NAMES})
    if turn.sig_length_tokens is None:
        signals = _signals(turn.prompt, turn.response, turn.domain)
    return SliceTurn(turn.id, turn.prompt, turn.response, turn.score, turn.divergence, rival, signals,
                     _signals(turn.prompt, str(rival.get("content", "")), turn.domain) if rival is not None else ())


def _signals(prompt: str, response: str, domain: str) -> tuple[float, ...]:
    found = response_signals(prompt, response, domain=domain)
    return signal_values({name: getattr(found, name) for name in SIGNAL_NAMES})


__all__ = ["ANNOUNCED", "COLLECTING", "COMPLETE", "EXPIRED", "MAX_SIZE", "STRATEGIES", "CycleRequest",
           "CycleService", "cycle_view", "finish", "labelled_pairs"]
