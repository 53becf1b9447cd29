"""A relabeling cycle's labels as a preference dataset that TRL's ``RewardTrainer`` and
``DPOTrainer`` take as they are: the *conversational preference* format, one row per pair with a
clear human preference.

* ``prompt``: ``[{"role": "user", "content": <prompt>}]``; ``chosen`` and ``rejected``:
  ``[{"role": "assistant", "content": <response>}]``. The text is the review item's, redacted when
  the pair was queued: the raw turn text never leaves the store.
* A pair's preference is the majority of its annotations' ``preference`` answers; a majority of
  ``tie``, an even split (one A, one B) and an unlabelled pair give no row.
* Provenance, in flat columns (parquet and ``datasets`` take them as they are): the cycle, pair
  and review item, the segment, mode, how the pair was formed, which response each side is
  (``turn:<id>`` or ``candidate:0``) and its event id (a candidate has none), the RM's score of each
  side with the identity that produced it (a candidate's reward came with its event: ``producer``),
  whether the RM agrees with the humans, the number of annotations and their agreement with the
  majority.

>>> majority(["A", "A", "B"])
('A', 0.6666666666666666)
>>> majority(["A", "B"]), majority(["tie"]), majority([])
((None, 0.5), ('tie', 1.0), (None, 0.0))
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from monitor.errors import Conflict, NotFound
from monitor.store.models import RelabelCycle, RelabelPair, ReviewAnnotation, ReviewItem, Turn

ExportFormat = Literal["jsonl", "parquet"]
MEDIA_TYPES: dict[str, str] = {"jsonl": "application/jsonl", "parquet": "application/vnd.apache.parquet"}
ANSWERS = ("A", "B", "tie")
#: A candidate response's reward is the one its producer sent with the event.
CANDIDATE_SCORER = "producer"


@dataclass(frozen=True)
class CycleExport:
    cycle_id: int
    pairs: int  # the cycle's pairs
    labelled: int  # pairs with at least one preference answer
    rows: list[dict[str, Any]]

    def require_rows(self) -> CycleExport:
        """This export, or :class:`Conflict` (409) when no pair has a clear preference yet."""
        if not self.rows:
            why = "" if not self.labelled else ", none with a clear preference (ties or split labels)"
            raise Conflict(f"relabel cycle {self.cycle_id}: nothing to export yet: {self.labelled} of "
                           f"{self.pairs} pairs labelled{why}")
        return self


def majority(answers: Sequence[str]) -> tuple[str | None, float]:
    """The majority answer (None when the top answers tie) and the share of answers that agree with it."""
    counts = Counter(a for a in answers if a in ANSWERS).most_common()
    if not counts:
        return None, 0.0
    total = sum(n for _, n in counts)
    top, n = counts[0]
    return (None if len(counts) > 1 and counts[1][1] == n else top), n / total


def cycle_export(session: Session, cycle_id: int) -> CycleExport:
    """The rows of a cycle's export (see the module); :class:`NotFound` for an unknown cycle."""
    cycle = session.get(RelabelCycle, cycle_id)
    if cycle is None:
        raise NotFound(f"relabel cycle {cycle_id} not found")
    pairs = list(session.execute(select(RelabelPair, ReviewItem).join(ReviewItem, ReviewItem.id == RelabelPair.item_id)
                                 .where(RelabelPair.cycle_id == cycle_id).order_by(RelabelPair.id)))
    votes: dict[int, list[str]] = {}
    for item_id, labels in session.execute(
            select(ReviewAnnotation.item_id, ReviewAnnotation.labels)
            .join(RelabelPair, RelabelPair.item_id == ReviewAnnotation.item_id)
            .where(RelabelPair.cycle_id == cycle_id).order_by(ReviewAnnotation.id)):
        if (labels or {}).get("preference") in ANSWERS:
            votes.setdefault(item_id, []).append(labels["preference"])
    turns: dict[int, tuple[str, str | None]] = {}  # turn id -> event id, scorer (never the text)
    for side in (RelabelPair.turn_a, RelabelPair.turn_b):
        for turn_id, event_id, scorer in session.execute(
                select(Turn.id, Turn.event_id, Turn.scorer).join(RelabelPair, side == Turn.id)
                .where(RelabelPair.cycle_id == cycle_id)):
            turns[turn_id] = (str(event_id), scorer)
    rows = [row for pair, item in pairs if (row := _row(pair, item, votes.get(item.id, []), turns)) is not None]
    return CycleExport(cycle_id, cycle.pairs, sum(item.id in votes for _, item in pairs), rows)


def _row(pair: RelabelPair, item: ReviewItem, answers: list[str],
         turns: dict[int, tuple[str, str | None]]) -> dict[str, Any] | None:
    winner, agreement = majority(answers)
    sides = {str(c.get("label")): c for c in item.candidates or []}
    if winner not in ("A", "B") or set(sides) != {"A", "B"}:
        return None
    chosen, rejected = sides[winner], sides["B" if winner == "A" else "A"]
    about = {label: _side(pair, entry, turns) for label, entry in (("chosen", chosen), ("rejected", rejected))}
    score_chosen, score_rejected = about["chosen"][2], about["rejected"][2]
    agrees = (None if score_chosen is None or score_rejected is None or score_chosen == score_rejected
              else score_chosen > score_rejected)
    return {
        "prompt": [{"role": "user", "content": item.prompt}],
        "chosen": [{"role": "assistant", "content": str(chosen.get("response", ""))}],
        "rejected": [{"role": "assistant", "content": str(rejected.get("response", ""))}],
        "cycle_id": pair.cycle_id, "pair_id": pair.id, "item_id": item.id, "segment": item.segment,
        "mode": item.mode, "formed_by": pair.formed_by, "similarity": pair.similarity,
        "source_chosen": str(chosen.get("source")), "source_rejected": str(rejected.get("source")),
        "event_id_chosen": about["chosen"][0], "event_id_rejected": about["rejected"][0],
        "rm_chosen": about["chosen"][1], "rm_rejected": about["rejected"][1],
        "rm_score_chosen": score_chosen, "rm_score_rejected": score_rejected, "rm_agrees": agrees,
        "preference": winner, "annotations": len(answers), "agreement": agreement,
    }


def _side(pair: RelabelPair, entry: dict, turns: dict[int, tuple[str, str | None]]
          ) -> tuple[str | None, str | None, float | None]:
    """A shown side's event id, the identity of its score, and the score."""
    source = str(entry.get("source"))
    if source == f"turn:{pair.turn_a}":
        return *turns.get(pair.turn_a, (None, None)), pair.reward_a
    if pair.turn_b is not None and source == f"turn:{pair.turn_b}":
        return *turns.get(pair.turn_b, (None, None)), pair.reward_b
    return None, (CANDIDATE_SCORER if pair.reward_b is not None else None), pair.reward_b


def to_jsonl(rows: Sequence[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(row, ensure_ascii=False, allow_nan=False).encode() + b"\n" for row in rows)


def to_parquet(rows: Sequence[dict[str, Any]]) -> bytes:
    import pyarrow as pa  # type: ignore[import-untyped]  # no stubs; imported when a parquet file is asked for
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    types = {"prompt": messages, "chosen": messages, "rejected": messages, "cycle_id": pa.int64(),
             "pair_id": pa.int64(), "item_id": pa.int64(), "similarity": pa.float64(), "rm_score_chosen": pa.float64(),
             "rm_score_rejected": pa.float64(), "rm_agrees": pa.bool_(), "annotations": pa.int64(),
             "agreement": pa.float64()}
    schema = pa.schema([(name, types.get(name, pa.string())) for name in COLUMNS])
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(list(rows), schema=schema), buffer)
    return buffer.getvalue()


COLUMNS = ("prompt", "chosen", "rejected", "cycle_id", "pair_id", "item_id", "segment", "mode", "formed_by",
           "similarity", "source_chosen", "source_rejected", "event_id_chosen", "event_id_rejected", "rm_chosen",
           "rm_rejected", "rm_score_chosen", "rm_score_rejected", "rm_agrees", "preference", "annotations",
           "agreement")
WRITERS: dict[str, Callable[[Sequence[dict[str, Any]]], bytes]] = {"jsonl": to_jsonl, "parquet": to_parquet}


def render(rows: Sequence[dict[str, Any]], fmt: str) -> bytes:
    if fmt not in WRITERS:
        raise ValueError(f"format must be one of {', '.join(WRITERS)}, got {fmt!r}")
    return WRITERS[fmt](rows)


def write(rows: Sequence[dict[str, Any]], fmt: str, path: str | Path) -> Path:
    target = Path(path)
    target.write_bytes(render(rows, fmt))
    return target


__all__ = ["COLUMNS", "MEDIA_TYPES", "CycleExport", "ExportFormat", "cycle_export", "majority", "render", "write"]
