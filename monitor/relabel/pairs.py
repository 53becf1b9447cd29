"""Pairs for a relabeling cycle: two responses to the same prompt, and which pairs to label first.

* **candidates**: a turn whose event carried alternative responses (``conversation/v1``
  ``candidates``) is paired with its first candidate;
* **similar_prompts**: otherwise two turns whose prompts are near-identical (all-MiniLM-L6-v2
  cosine similarity at least :data:`SIMILAR`) and whose responses are not near-duplicates of each
  other; each turn in at most :data:`PER_TURN` pairs, the most similar prompts first.

Strategies order the pairs; a cycle labels the first ``size``:

* ``divergence``: highest disagreement first: the pair's summed per-sample divergence (how much
  more the RM pays for the two responses' features than users value them);
* ``uncertainty``: the pairs the RM scores most nearly equal first (its preference is a coin flip
  there, so a human label teaches it most);
* ``random``: uniform.

A cycle's ``design`` says how the first ``size`` are taken: ``spread`` (pair by pair in that
order: the most pairs the strategy wants most) or ``dense`` (family by family, see
:func:`by_family`: fewer families, each labelled through, so Bradley-Terry can rank their
responses).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from monitor.review.dedup import NEAR_DUPLICATE, jaccard, shingles

SIMILAR = 0.9
PER_TURN = 2
STRATEGIES = ("divergence", "uncertainty", "random")


@dataclass(frozen=True)
class SliceTurn:
    id: int
    prompt: str
    response: str
    reward: float | None
    divergence: float | None
    candidate: dict | None  # the first candidate response, when the event carried any


@dataclass(frozen=True)
class PlannedPair:
    turn_a: int
    turn_b: int | None  # None: B is turn_a's candidate
    formed_by: str
    similarity: float | None
    reward_a: float | None
    reward_b: float | None
    divergence: float  # summed, NaN-free (0 where unknown)


def form_pairs(turns: Sequence[SliceTurn], embed: Callable[[list[str]], np.ndarray], *,
               similar: float = SIMILAR, per_turn: int = PER_TURN) -> list[PlannedPair]:
    """Every pair the slice offers (see the module)."""
    pairs = [PlannedPair(t.id, None, "candidates", None, t.reward, _number(t.candidate.get("reward")),
                         _finite(t.divergence)) for t in turns if t.candidate]
    rest = [t for t in turns if not t.candidate]
    if len(rest) < 2:
        return pairs
    vectors = np.asarray(embed([t.prompt for t in rest]), dtype=float)
    similarity = vectors @ vectors.T
    upper = np.triu(similarity, 1)
    rows, cols = np.nonzero(upper >= similar)
    order = np.argsort(-upper[rows, cols], kind="stable")
    used = np.zeros(len(rest), dtype=int)
    texts: dict[int, frozenset[int]] = {}
    for k in order.tolist():
        i, j = int(rows[k]), int(cols[k])
        if used[i] >= per_turn or used[j] >= per_turn:
            continue
        a, b = rest[i], rest[j]
        for index, turn in ((i, a), (j, b)):
            if index not in texts:
                texts[index] = shingles(turn.response)
        if jaccard(texts[i], texts[j]) >= NEAR_DUPLICATE:
            continue  # the same answer twice: nothing to prefer
        pairs.append(PlannedPair(a.id, b.id, "similar_prompts", float(upper[i, j]), a.reward, b.reward,
                                 _finite(a.divergence) + _finite(b.divergence)))
        used[i] += 1
        used[j] += 1
    return pairs


def choose(pairs: Sequence[PlannedPair], strategy: str, size: int, rng: np.random.Generator, *,
           dense: bool = False) -> list[PlannedPair]:
    """The first ``size`` pairs under ``strategy``; ``dense``: whole families at a time (see
    :func:`by_family`)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if strategy == "random":
        ordered = [pairs[i] for i in rng.permutation(len(pairs)).tolist()]
    elif strategy == "divergence":
        ordered = sorted(pairs, key=lambda p: -p.divergence)
    else:
        ordered = sorted(pairs, key=lambda p: math.inf if p.reward_a is None or p.reward_b is None
                         else abs(p.reward_a - p.reward_b))
    return list((by_family(ordered) if dense else ordered)[:size])


def by_family(ordered: Sequence[PlannedPair]) -> list[PlannedPair]:
    """``ordered`` regrouped by family (a connected component of the pairs' graph: responses to one
    family of near-identical prompts), families in the order of their first pair, each family's
    pairs together in their own order. Taking the first ``size`` then labels a few families
    through and through instead of a pair here and there: every response meets several rivals,
    so Bradley-Terry strengths are comparable across a family (they are only ever comparable
    within a connected component).

    >>> pairs = [PlannedPair(a, b, "similar_prompts", 0.95, None, None, 0.0) for a, b in
    ...          [(1, 2), (10, 11), (2, 3), (11, 12), (3, 1)]]
    >>> [(p.turn_a, p.turn_b) for p in by_family(pairs)]
    [(1, 2), (2, 3), (3, 1), (10, 11), (11, 12)]
    """
    parent: dict[tuple[str, int], tuple[str, int]] = {}

    def find(node: tuple[str, int]) -> tuple[str, int]:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    def sides(pair: PlannedPair) -> tuple[tuple[str, int], tuple[str, int]]:
        return ("turn", pair.turn_a), ("turn", pair.turn_b) if pair.turn_b is not None else ("candidate", pair.turn_a)

    for pair in ordered:
        a, b = sides(pair)
        parent[find(a)] = find(b)
    families: dict[tuple[str, int], list[PlannedPair]] = {}
    for pair in ordered:  # dicts keep insertion order: families by their first pair
        families.setdefault(find(sides(pair)[0]), []).append(pair)
    return [pair for family in families.values() for pair in family]


def _finite(value: float | None) -> float:
    return 0.0 if value is None or not math.isfinite(value) else float(value)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
