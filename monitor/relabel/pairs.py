"""Pairs for a relabeling cycle: two responses to the same prompt, and which pairs to label first.

* **candidates**: a turn whose event carried alternative responses (``conversation/v1``
  ``candidates``) is paired with its first candidate;
* **similar_prompts**: otherwise two turns whose prompts are near-identical (all-MiniLM-L6-v2
  cosine similarity at least :data:`SIMILAR`) and whose responses are not near-duplicates of each
  other; each turn in at most :data:`PER_TURN` pairs, the most similar prompts first.

With a ``mode``, only pairs that contrast it (:mod:`monitor.relabel.contrast`: one answer carries
clearly more of it) are formed: the cycle then asks people whether what the RM pays for is worth it;
``contrasting=False`` forms the pairs that do not, the control pairs the RM audit holds them against.

Strategies order the pairs; a cycle labels the first ``size``:

* ``divergence``: highest disagreement first: the pair's summed per-sample divergence (how much
  more the RM pays for the two responses' features than users value them);
* ``uncertainty``: the pairs the RM scores most nearly equal first (its preference is a coin flip
  there, so a human label teaches it most);
* ``random``: uniform.

A cycle's ``design`` says how its pairs are formed:

* ``spread`` (:func:`form_pairs`, then :func:`choose`): every pair the slice offers, the first
  ``size`` in the strategy's order: the most pairs the strategy wants most, each response in a
  pair or two;
* ``dense`` (:func:`dense_pairs`): families, each a seed response and up to ``rivals`` others
  to prompts near-identical to the seed's, every two of them compared (with a mode: every
  two that contrast it). Each response meets several rivals, so Bradley-Terry strengths are
  precise and comparable across the family. Seeds and members follow the strategy: the most
  divergent first, answers the RM scores most like the seed's first, or at random.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from monitor.relabel.contrast import contrast
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
    signals: tuple[float, ...] = ()  # the response's, in monitor.signals.SIGNAL_NAMES order
    candidate_signals: tuple[float, ...] = ()  # the first candidate's


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
               similar: float = SIMILAR, per_turn: int = PER_TURN, mode: str | None = None,
               contrasting: bool = True) -> list[PlannedPair]:
    """Every pair the slice offers; with ``mode``, every pair contrasting it (``contrasting=False``:
    every pair not contrasting it). See the module."""

    def contrasts(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return mode is None or (contrast(a, b, mode) != 0) == contrasting

    pairs = [PlannedPair(t.id, None, "candidates", None, t.reward, _number(t.candidate.get("reward")),
                         _finite(t.divergence)) for t in turns if t.candidate
             and contrasts(t.signals, t.candidate_signals)]
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
        if not contrasts(a.signals, b.signals):
            continue
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
    """The first ``size`` pairs under ``strategy``; ``dense``: whole connected families of
    ``pairs`` at a time (see :func:`by_family`)."""
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


def dense_pairs(turns: Sequence[SliceTurn], embed: Callable[[list[str]], np.ndarray], strategy: str, size: int,
                rng: np.random.Generator, *, rivals: int = 4, similar: float = SIMILAR, mode: str | None = None,
                contrasting: bool = True) -> list[PlannedPair]:
    """Up to ``size`` pairs in families (see the module): family after family, each a seed and at
    most ``rivals`` members whose prompts are at least ``similar`` to the seed's, each turn in one
    family. With ``mode``, a family's pairs are those that contrast it (``contrasting=False``: that
    do not), and when contrasting, members alternate between answers that contrast the seed and
    answers like it, so both sides of the contrast meet several rivals."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if size <= 0 or len(turns) < 2:
        return []
    vectors = np.asarray(embed([t.prompt for t in turns]), dtype=float)
    divergence = np.array([_finite(t.divergence) for t in turns])
    reward = np.array([math.nan if t.reward is None else float(t.reward) for t in turns])
    if strategy == "random":
        seeds = rng.permutation(len(turns))
    else:  # divergence; uncertainty seeds by divergence too: its members are the answers scored most alike
        seeds = np.argsort(-divergence, kind="stable")
    shingled: dict[int, frozenset[int]] = {}

    def text(k: int) -> frozenset[int]:
        if k not in shingled:
            shingled[k] = shingles(turns[k].response)
        return shingled[k]

    def accept(i: int, j: int) -> bool:
        return mode is None or (contrast(turns[i].signals, turns[j].signals, mode) != 0) == contrasting

    used = np.zeros(len(turns), dtype=bool)
    out: list[PlannedPair] = []
    for seed in seeds.tolist():
        if used[seed]:
            continue
        used[seed] = True
        similarity = vectors @ vectors[seed]
        near = np.nonzero((similarity >= similar) & ~used)[0]
        if strategy == "divergence":
            near = near[np.argsort(-divergence[near], kind="stable")]
        elif strategy == "uncertainty":
            gap = np.abs(reward[near] - reward[seed])
            near = near[np.argsort(np.where(np.isfinite(gap), gap, np.inf), kind="stable")]
        else:
            near = rng.permutation(near)
        if mode is not None and contrasting:  # alternate: one that contrasts the seed, one like it
            unlike = [j for j in near.tolist() if accept(seed, j)]
            like = [j for j in near.tolist() if not accept(seed, j)]
            ordered = [j for duo in itertools.zip_longest(unlike, like) for j in duo if j is not None]
        else:
            ordered = [j for j in near.tolist() if accept(seed, j)]
        members = [seed]
        for j in ordered:
            if len(members) > rivals:
                break
            if any(jaccard(text(j), text(m)) >= NEAR_DUPLICATE for m in members):
                continue  # the same answer twice: nothing to prefer
            if accept(seed, j) or any(accept(j, m) for m in members[1:]):
                members.append(j)
        family = [(a, b) for a, b in itertools.combinations(members, 2) if accept(a, b)]
        if not family:
            continue
        used[members] = True
        family.sort(key=lambda ab: -(divergence[ab[0]] + divergence[ab[1]]) if strategy == "divergence"
                    else float(np.nan_to_num(abs(reward[ab[0]] - reward[ab[1]]), nan=np.inf))
                    if strategy == "uncertainty" else 0.0)
        for a, b in family[:size - len(out)]:
            ta, tb = turns[a], turns[b]
            out.append(PlannedPair(ta.id, tb.id, "similar_prompts", round(float(vectors[a] @ vectors[b]), 6),
                                   ta.reward, tb.reward, _finite(ta.divergence) + _finite(tb.divergence)))
        if len(out) >= size:
            break
    return out


def _finite(value: float | None) -> float:
    return 0.0 if value is None or not math.isfinite(value) else float(value)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
