"""Micro-batching for reward-model forwards: sort by token length, group under a token budget.

A batch costs ``len(batch) * longest`` tokens of compute (padding included), so sorting by length
first keeps the padding small, and the budget bounds memory. ``single=True`` gives one sequence
per forward (no padding at all), which is what a CPU does fastest.

>>> items = [Encoded(str(n), [0] * n) for n in (5, 50, 7, 48)]
>>> [[len(i.input_ids) for i in b] for b in plan_batches(items, max_batch_tokens=100)]
[[5, 7], [48, 50]]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Encoded:
    key: str
    input_ids: list[int]
    token_type_ids: list[int] | None = None
    truncated: bool = False


def plan_batches(items: Sequence[Encoded], *, max_batch_tokens: int, single: bool = False) -> Iterator[list[Encoded]]:
    """Yield batches in ascending length; each batch's ``size * longest`` stays within budget
    (a single sequence longer than the budget still gets a batch of its own)."""
    ordered = sorted(items, key=lambda item: len(item.input_ids))
    if single:
        for item in ordered:
            yield [item]
        return
    batch: list[Encoded] = []
    for item in ordered:
        longest = len(item.input_ids)  # ascending order: the newcomer is the longest
        if batch and (len(batch) + 1) * longest > max_batch_tokens:
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch
