"""Data retention: delete what is past its age and redact raw text past its own (``MONITOR_RETENTION_*``).

:func:`prune` applies a :class:`RetentionPolicy` to the store as of ``now``, in this order:

==================  ============================================  ==========================================
table               action                                        age (``0`` days: never)
==================  ============================================  ==========================================
``dead_letters``    deleted (raw bytes, key and detail with it)   ``received_at`` past ``dead_letters_days``
``turns``           deleted, with every rating of its key         ``ts`` past ``turns_days``
``ratings``         deleted: still waiting, its turn never came   ``ts`` past ``ratings_days``
``turns``           raw text replaced by its redacted form        ``ts`` past ``raw_text_days``
``ratings``         comment replaced by its redacted form         ``ts`` past ``raw_text_days``
==================  ============================================  ==========================================

Turns named by ``protected`` (the analyzer's reference windows, which the drift report reads back
by event id) are kept past their age; their raw text is still redacted.

Every step goes in batches, each its own short transaction, walking the rows in key order (keyset
pagination), so a prune over months of history never holds one long transaction and ingest's
writes interleave with it. Redaction runs Presidio (:mod:`monitor.redaction`, milliseconds per
text) outside any transaction, once per row: ``redacted_at`` records it, and partial indexes hold
only the rows still to redact. A second prune as of the same ``now`` finds nothing to do.

Locks (PostgreSQL; a SQLite file serves one process): the whole prune holds
:data:`RETENTION_LOCK_KEY`, so one process prunes at a time. The deletions of turns and ratings
also hold the analyzer's lock, so no analyzer run fits a reference on a turn being deleted; the
redaction, the slow part, does not, so analysis goes on meanwhile.

Unlike the store's other services, which flush, this module commits its own batches: a prune is
its own boundary, as an ingest batch is.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Engine,
    Table,
    and_,
    bindparam,
    case,
    delete,
    exists,
    false,
    func,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session, sessionmaker

from monitor.redaction import redact_many
from monitor.store.analysis import analyzer_lock, bound_waits
from monitor.store.models import DeadLetter, RatingRow, Turn, utcnow

#: Arbitrary but fixed key of the PostgreSQL advisory lock held while pruning (distinct from the
#: analyzer's and the migrations').
RETENTION_LOCK_KEY = 0x6D6F6E72  # "monr"
#: Rows deleted per transaction.
BATCH_SIZE = 5_000
#: Rows redacted per batch: a few seconds of Presidio, so a caller's ``keep_going`` is asked often.
REDACT_BATCH_SIZE = 200
#: (table, action) of every count a prune reports, in the order it works.
ACTIONS = (("dead_letters", "deleted"), ("turns", "deleted"), ("ratings", "deleted"),
           ("turns", "redacted"), ("ratings", "redacted"))

#: ``progress(step, done, total)``: after each batch; ``total`` is None where it is not counted first.
Progress = Callable[[str, int, int | None], None]

_T = Turn.__table__.c
_R = RatingRow.__table__.c
_D = DeadLetter.__table__.c


@dataclass(frozen=True)
class RetentionPolicy:
    """Ages in days (0: keep forever). Raw text must be redacted no later than its turn is deleted."""

    turns_days: int = 90
    raw_text_days: int = 30
    ratings_days: int = 30
    dead_letters_days: int = 14

    def __post_init__(self) -> None:
        for name in ("turns_days", "raw_text_days", "ratings_days", "dead_letters_days"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: keep forever), got {getattr(self, name)}")
        if _forever(self.raw_text_days) > _forever(self.turns_days):
            raise ValueError(f"raw_text_days ({self.raw_text_days}) must be at most turns_days ({self.turns_days}); "
                             "0 means forever")

    @classmethod
    def from_settings(cls, settings: Any) -> RetentionPolicy:
        """From :class:`monitor.config.Settings` (its ``retention_*_days``)."""
        return cls(settings.retention_turns_days, settings.retention_raw_text_days,
                   settings.retention_ratings_days, settings.retention_dead_letters_days)


@dataclass
class PruneResult:
    """What a prune did (or, dry, would do): rows per (table, action) of :data:`ACTIONS`."""

    dry_run: bool = False
    counts: dict[tuple[str, str], int] = field(default_factory=lambda: dict.fromkeys(ACTIONS, 0))
    kept: int = 0  # turns past their age kept because the analyzer's references read them
    complete: bool = True  # False: stopped (keep_going, a held lock) before all that is due
    locked: bool = False  # another process was pruning: nothing done
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def report(self) -> str:
        if self.locked:
            return "another prune is running; nothing done"
        lines = [f"{'would prune (dry run)' if self.dry_run else 'pruned'} in {self.seconds:.1f} s:"]
        lines += [f"  {table:<13} {action:<9} {self.counts[(table, action)]:>12,}" for table, action in ACTIONS]
        if self.kept:
            lines.append(f"  kept past their age: {self.kept:,} turns the analyzer's reference windows read")
        if not self.complete:
            lines.append("incomplete: " + ("; ".join(self.notes) or "stopped early") + "; run again")
        return "\n".join(lines)


def prune(sessions: sessionmaker[Session], policy: RetentionPolicy, now: datetime, *,
          protected: Callable[[Session], Collection[str]] | None = None, dry_run: bool = False,
          batch_size: int = BATCH_SIZE, redact_batch_size: int = REDACT_BATCH_SIZE,
          keep_going: Callable[[], bool] | None = None, progress: Progress | None = None,
          lock_wait_seconds: float = 0.0) -> PruneResult:
    """Apply ``policy`` as of ``now`` (see the module docstring).

    ``protected``: event ids of turns to keep whatever their age, read under the analyzer's lock.
    ``dry_run``: count what would be pruned; change nothing, take no lock, redact nothing.
    ``keep_going``: asked before each batch; False stops the prune there (``complete`` False), and
    the next prune carries on. ``lock_wait_seconds``: how long to wait for the analyzer's lock
    before leaving the deletions of turns and ratings to the next prune."""
    if batch_size < 1 or redact_batch_size < 1:
        raise ValueError(f"batch sizes must be >= 1, got {batch_size} and {redact_batch_size}")
    started = time.monotonic()
    result = PruneResult(dry_run=dry_run)
    engine: Engine = sessions.kw["bind"]
    with _advisory_lock(engine, RETENTION_LOCK_KEY, skip=dry_run) as locked:
        if not locked:
            result.locked, result.complete = True, False
            return result
        _Prune(sessions, policy, now, result, protected, batch_size, redact_batch_size, keep_going, progress,
               lock_wait_seconds).run()
    result.seconds = time.monotonic() - started
    return result


@contextmanager
def _advisory_lock(engine: Engine, key: int, *, skip: bool = False) -> Iterator[bool]:
    """Try a session-level PostgreSQL advisory lock on a connection of its own (SQLite: implicit)."""
    if skip or engine.dialect.name != "postgresql":
        yield True
        return
    with engine.connect() as connection:
        locked = bool(connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar())
        connection.commit()
        try:
            yield locked
        finally:
            if locked:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()


def _forever(days: int) -> float:
    return float("inf") if days == 0 else float(days)


def _before(now: datetime, days: int) -> datetime | None:
    return None if days == 0 else now - timedelta(days=days)


class _Prune:
    """One prune's steps and counts (see :func:`prune`)."""

    def __init__(self, sessions: sessionmaker[Session], policy: RetentionPolicy, now: datetime, result: PruneResult,
                 protected: Callable[[Session], Collection[str]] | None, batch_size: int, redact_batch_size: int,
                 keep_going: Callable[[], bool] | None, progress: Progress | None, lock_wait_seconds: float) -> None:
        self.sessions = sessions
        self.result = result
        self.dry_run = result.dry_run
        self.protected = protected
        self.batch_size = batch_size
        self.redact_batch_size = redact_batch_size
        self.keep_going = keep_going
        self.progress = progress
        self.lock_wait_seconds = lock_wait_seconds
        self.turns_before = _before(now, policy.turns_days)
        self.raw_before = _before(now, policy.raw_text_days)
        self.ratings_before = _before(now, policy.ratings_days)
        self.dead_letters_before = _before(now, policy.dead_letters_days)
        # Rows counted as deleted whose text is still raw: a dry run, which deletes nothing, leaves
        # them out of its redaction counts.
        self.doomed_unredacted_turns = 0
        self.doomed_unredacted_comments = 0

    def run(self) -> None:
        if not self._dead_letters():
            return
        if self.turns_before is not None or self.ratings_before is not None:
            done = self._deletions() if self.dry_run else self._under_analyzer_lock(self._deletions)
            if done is None:
                self.result.complete = False
                self.result.notes.append("turns and ratings not deleted: an analyzer run held the analyzer lock")
            elif not done:
                return
        if self._redact_turns():
            self._redact_comments()

    # --- deletions --------------------------------------------------------------------------------

    def _dead_letters(self) -> bool:
        if self.dead_letters_before is None:
            return True
        return self._delete_by_id(DeadLetter.__table__, _D.received_at < self.dead_letters_before,
                                  ("dead_letters", "deleted"))

    def _deletions(self) -> bool:
        return self._turns() and self._waiting_ratings()

    def _under_analyzer_lock(self, work: Callable[[], bool]) -> bool | None:
        """``work()`` under the analyzer's lock, waiting up to ``lock_wait_seconds`` for it; None: not had."""
        engine: Engine = self.sessions.kw["bind"]
        waited_until = time.monotonic() + self.lock_wait_seconds
        while True:
            with analyzer_lock(engine) as locked:
                if locked:
                    return work()
            if time.monotonic() >= waited_until or not self._go():
                return None
            time.sleep(0.25)

    def _turns(self) -> bool:
        """Turns past their age and every rating of their keys, a batch of turns per transaction."""
        if self.turns_before is None:
            return True
        protected: set[str] = set()
        if self.protected is not None:
            with self.sessions() as session:
                protected = {str(event_id) for event_id in self.protected(session)}
        cursor: tuple[datetime, int] | None = None
        while self._go():
            with self.sessions.begin() as session:
                bound_waits(session)
                query = select(_T.id, _T.event_id, _T.conversation_id, _T.turn, _T.ts, _T.redacted_at) \
                    .where(_T.ts < self.turns_before)
                if cursor is not None:
                    query = query.where(or_(_T.ts > cursor[0], and_(_T.ts == cursor[0], _T.id > cursor[1])))
                rows = session.execute(query.order_by(_T.ts, _T.id).limit(self.batch_size)).all()
                if not rows:
                    return True
                doomed = [row for row in rows if str(row.event_id) not in protected]
                self.result.kept += len(rows) - len(doomed)
                self.doomed_unredacted_turns += sum(row.redacted_at is None for row in doomed)
                ratings = self._ratings_of(session, {(row.conversation_id, row.turn) for row in doomed})
                if not self.dry_run:
                    self._delete_ids(session, RatingRow.__table__, [row.id for row in ratings])
                    self._delete_ids(session, Turn.__table__, [row.id for row in doomed])
            cursor = (rows[-1].ts, rows[-1].id)
            self._count(("turns", "deleted"), len(doomed))
            self._count(("ratings", "deleted"), len(ratings))
            if len(rows) < self.batch_size:
                return True
        return False

    def _ratings_of(self, session: Session, keys: set[tuple[str, int]]) -> list[Any]:
        """The ratings of exactly these (conversation, turn) keys. Found by the indexed conversation
        id, then matched here: a row-value IN is much slower on both databases."""
        found: list[Any] = []
        conversations = sorted({conversation_id for conversation_id, _ in keys})
        for start in range(0, len(conversations), self.batch_size):
            chunk = conversations[start:start + self.batch_size]
            found += [row for row in session.execute(select(_R.id, _R.conversation_id, _R.turn, self._comment_due())
                                                     .where(_R.conversation_id.in_(chunk)))
                      if (row.conversation_id, row.turn) in keys]
        self.doomed_unredacted_comments += sum(bool(row.comment_due) for row in found)
        return found

    def _waiting_ratings(self) -> bool:
        """Ratings past ``ratings_days`` still waiting for a turn that never came."""
        if self.ratings_before is None:
            return True
        turn_exists = exists().where(_T.conversation_id == _R.conversation_id, _T.turn == _R.turn)
        # `joined = false` as the partial index ix_ratings_unjoined states it, so both databases use it.
        return self._delete_by_id(RatingRow.__table__, and_(_R.joined == false(), _R.ts < self.ratings_before,
                                                            ~turn_exists), ("ratings", "deleted"))

    def _delete_by_id(self, table: Table, condition: Any, counted: tuple[str, str]) -> bool:
        last: int | None = None
        extra = [self._comment_due()] if table is RatingRow.__table__ else []
        while self._go():
            with self.sessions.begin() as session:
                bound_waits(session)
                query = select(table.c.id, *extra).where(condition)
                if last is not None:
                    query = query.where(table.c.id > last)
                rows = session.execute(query.order_by(table.c.id).limit(self.batch_size)).all()
                if not rows:
                    return True
                if not self.dry_run:
                    self._delete_ids(session, table, [row.id for row in rows])
            if extra:
                self.doomed_unredacted_comments += sum(bool(row.comment_due) for row in rows)
            last = rows[-1].id
            self._count(counted, len(rows))
            if len(rows) < self.batch_size:
                return True
        return False

    def _delete_ids(self, session: Session, table: Table, ids: Sequence[int]) -> None:
        for start in range(0, len(ids), self.batch_size):
            session.execute(delete(table).where(table.c.id.in_(ids[start:start + self.batch_size])))

    def _comment_due(self) -> Any:
        """Whether a rating's comment is still raw and past the raw-text age: a deleted rating the
        redaction would otherwise have counted (a dry run's overlap)."""
        if self.raw_before is None:
            return literal(False).label("comment_due")
        due = and_(_R.comment.is_not(None), _R.redacted_at.is_(None), _R.ts < self.raw_before)
        return case((due, True), else_=False).label("comment_due")

    # --- redaction --------------------------------------------------------------------------------

    def _redact_turns(self) -> bool:
        if self.raw_before is None:
            return True
        due = and_(_T.redacted_at.is_(None), _T.ts < self.raw_before)
        # A dry run deleted nothing: leave out the turns it counted as deleted.
        total = self._pending(Turn.__table__, due) - (self.doomed_unredacted_turns if self.dry_run else 0)
        if self.dry_run:
            self._count(("turns", "redacted"), total, total)
            return True
        while self._go():
            with self.sessions.begin() as session:
                bound_waits(session)
                rows = session.execute(select(_T.id, _T.conversation_id, _T.messages, _T.prompt, _T.response,
                                              _T.candidates).where(due).order_by(_T.ts, _T.id)
                                       .limit(self.redact_batch_size)).all()
            if not rows:
                return True
            redacted = _redacted_turns(rows)  # outside any transaction: the slow part
            now = utcnow()
            with self.sessions.begin() as session:
                bound_waits(session)
                session.execute(
                    update(Turn.__table__).where(_T.id == bindparam("b_id"), _T.redacted_at.is_(None))
                    .values(messages=bindparam("b_messages"), prompt=bindparam("b_prompt"),
                            response=bindparam("b_response"), candidates=bindparam("b_candidates"), redacted_at=now),
                    redacted)
            self._count(("turns", "redacted"), len(rows), total)
            if len(rows) < self.redact_batch_size:
                return True
        return False

    def _redact_comments(self) -> bool:
        if self.raw_before is None:
            return True
        due = and_(_R.comment.is_not(None), _R.redacted_at.is_(None), _R.ts < self.raw_before)
        total = self._pending(RatingRow.__table__, due) - (self.doomed_unredacted_comments if self.dry_run else 0)
        if self.dry_run:
            self._count(("ratings", "redacted"), total, total)
            return True
        while self._go():
            with self.sessions.begin() as session:
                bound_waits(session)
                rows = session.execute(select(_R.id, _R.conversation_id, _R.comment).where(due)
                                       .order_by(_R.ts, _R.id).limit(self.redact_batch_size)).all()
            if not rows:
                return True
            redacted = _redacted_comments(rows)
            now = utcnow()
            with self.sessions.begin() as session:
                bound_waits(session)
                session.execute(
                    update(RatingRow.__table__).where(_R.id == bindparam("b_id"), _R.redacted_at.is_(None))
                    .values(comment=bindparam("b_comment"), redacted_at=now),
                    redacted)
            self._count(("ratings", "redacted"), len(rows), total)
            if len(rows) < self.redact_batch_size:
                return True
        return False

    def _pending(self, table: Table, due: Any) -> int:
        with self.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(table).where(due)) or 0)

    # --- bookkeeping ------------------------------------------------------------------------------

    def _go(self) -> bool:
        if self.keep_going is None or self.keep_going():
            return True
        self.result.complete = False
        return False

    def _count(self, counted: tuple[str, str], rows: int, total: int | None = None) -> None:
        self.result.counts[counted] += rows
        if self.progress is not None:
            self.progress(f"{counted[0]} {counted[1]}", self.result.counts[counted], total)


# --- redacted text ---------------------------------------------------------------------------------


def _redacted_turns(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """Update parameters of each turn with its text redacted. The turns of one conversation are
    redacted together (a name found in one is redacted in all), and each distinct text once: every
    turn repeats the conversation so far in its messages, and its prompt and response are messages."""
    by_conversation: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        by_conversation[row.conversation_id].append(row)
    out = []
    for turns in by_conversation.values():
        texts = list(dict.fromkeys(text for row in turns for text in _texts(row)))
        redacted = dict(zip(texts, redact_many(texts), strict=True))
        for row in turns:
            out.append({
                "b_id": row.id, "b_prompt": redacted[row.prompt], "b_response": redacted[row.response],
                "b_messages": [_with_content(m, redacted) for m in row.messages or []],
                "b_candidates": None if row.candidates is None
                else [_with_content(c, redacted) for c in row.candidates],
            })
    return out


def _texts(row: Any) -> list[str]:
    contents = [entry.get("content") for entry in [*(row.messages or []), *(row.candidates or [])]
                if isinstance(entry, dict)]
    return [row.prompt, row.response, *(content for content in contents if isinstance(content, str))]


def _with_content(entry: Any, redacted: dict[str, str | None]) -> Any:
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return {**entry, "content": redacted[entry["content"]]}
    return entry


def _redacted_comments(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """Update parameters of each rating with its comment redacted, a conversation's together."""
    by_conversation: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        by_conversation[row.conversation_id].append(row)
    out = []
    for ratings in by_conversation.values():
        for row, comment in zip(ratings, redact_many([row.comment for row in ratings]), strict=True):
            out.append({"b_id": row.id, "b_comment": comment})
    return out
