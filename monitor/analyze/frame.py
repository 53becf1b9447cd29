"""`TurnFrame`: the columns of the turns the analyzer needs, as numpy arrays.

The engine is a pure function of frames (plus its state), so the same rows give the same alerts
whether they were read from SQLite, PostgreSQL or built straight from simulated events by the
benchmark. :meth:`TurnFrame.from_rows` sorts by event time (``ts``), ties broken by conversation
and turn, so a backfill and a live run see one and the same order; the detectors re-order rated
rows by entry time (:func:`monitor.analyze.engine.entry_order`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from monitor.analyze.segments import SegmentScheme
from monitor.signals import SIGNAL_COLUMNS, SIGNAL_NAMES

#: Columns of a row mapping that :meth:`TurnFrame.from_rows` reads.
ROW_FIELDS = ("id", "event_id", "conversation_id", "turn", "ts", "model_version", "domain", "locale", "score",
              "scorer", "satisfaction", "prompt_harmful", *SIGNAL_COLUMNS)
_REFUSAL = SIGNAL_NAMES.index("refusal")
#: Extra fields of an *entry* row (one rating of a turn): the rating's event time and id.
ENTRY_FIELDS = ("rated_ts", "rating_id")


@dataclass(frozen=True)
class TurnFrame:
    ts: np.ndarray  # float seconds since the epoch
    segment: np.ndarray  # str
    score: np.ndarray  # NaN where the turn has no score
    satisfaction: np.ndarray  # NaN where the turn has no rating
    signals: np.ndarray  # (n, len(SIGNAL_NAMES))
    harmful: np.ndarray  # bool: the prompt asks for something harmful
    event_id: np.ndarray  # str
    conversation_id: np.ndarray  # str
    turn: np.ndarray  # int
    scorer: np.ndarray  # str ('' when unknown)
    model_version: np.ndarray  # str
    rated_ts: np.ndarray  # entry rows: the rating's event time (NaN in frames of turns)
    rating_id: np.ndarray  # entry rows: the rating's event id ('' in frames of turns)
    row_id: np.ndarray  # the store's turn id (-1 outside the store)

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def rated(self) -> np.ndarray:
        return ~np.isnan(self.satisfaction) & ~np.isnan(self.score)

    def judged_signals(self, index: np.ndarray | None = None) -> np.ndarray:
        """The signals (of the rows in ``index``; default all) as the detectors judge a response:
        a refusal counts only where the prompt is not harmful. Refusing a harmful request is the
        policy and the reward model doing their job, and its requester's low rating says nothing
        about over-reward; counted, those refusals were the most divergent turns of every
        scenario (B2 AUROC 0.91 instead of 0.97, docs/analysis.md)."""
        signals = (self.signals if index is None else self.signals[index]).copy()
        harmful = self.harmful if index is None else self.harmful[index]
        signals[:, _REFUSAL] *= ~harmful
        return signals

    def take(self, index: np.ndarray) -> TurnFrame:
        return TurnFrame(**{name: getattr(self, name)[index] for name in self.__dataclass_fields__})

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]], scheme: SegmentScheme) -> TurnFrame:
        """Build a frame from store-shaped rows (:data:`ROW_FIELDS`, and :data:`ENTRY_FIELDS` for
        entries), signals and risk included."""
        rows = list(rows)
        try:
            signals = np.array([[row[column] for column in SIGNAL_COLUMNS] for row in rows], dtype=float)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"every row needs its signals ({', '.join(SIGNAL_NAMES)}): {exc}") from exc
        if rows and np.isnan(signals).any():
            raise ValueError("every row needs its signals; derive them first")
        frame = cls(
            ts=np.array([_seconds(row["ts"]) for row in rows], dtype=float),
            segment=np.array([scheme.key(row.get("domain"), row.get("model_version"), row.get("locale"))
                              for row in rows], dtype=object),
            score=np.array([np.nan if row.get("score") is None else row["score"] for row in rows], dtype=float),
            satisfaction=np.array([np.nan if row.get("satisfaction") is None else row["satisfaction"]
                                   for row in rows], dtype=float),
            signals=signals.reshape(len(rows), len(SIGNAL_NAMES)),
            harmful=np.array([bool(row.get("prompt_harmful")) for row in rows], dtype=bool),
            event_id=np.array([str(row["event_id"]) for row in rows], dtype=object),
            conversation_id=np.array([row["conversation_id"] for row in rows], dtype=object),
            turn=np.array([row["turn"] for row in rows], dtype=np.int64),
            scorer=np.array([row.get("scorer") or "" for row in rows], dtype=object),
            model_version=np.array([row.get("model_version") or "" for row in rows], dtype=object),
            rated_ts=np.array([np.nan if row.get("rated_ts") is None else _seconds(row["rated_ts"])
                               for row in rows], dtype=float),
            rating_id=np.array([str(row.get("rating_id") or "") for row in rows], dtype=object),
            row_id=np.array([row.get("id", -1) for row in rows], dtype=np.int64),
        )
        return frame.take(serving_order(frame))


def serving_order(frame: TurnFrame) -> np.ndarray:
    """Indices sorting by (ts, conversation_id, turn): the one order every run agrees on."""
    if not len(frame):
        return np.empty(0, dtype=np.int64)
    return np.lexsort((frame.turn, frame.conversation_id.astype(str), frame.ts))


def _seconds(value: datetime | float) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)
