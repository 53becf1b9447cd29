"""The `Scorer` seam: what the ingest loop calls, once per batch, to score assistant responses.

A scorer returns one :class:`ScoreOutcome` per event, in order. A response it cannot score gets an
outcome with ``error`` set (recorded on the row); only a failure of the whole batch (an unreachable
scoring service) raises :class:`~monitor.errors.ScoringError`, and then nothing of the batch is
written and its offsets are not committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class ScoreOutcome:
    score: float | None
    error: str | None = None
    #: The input was cut to fit the model (the response is always kept when it fits alone).
    truncated: bool = False


@dataclass
class ScoringStats:
    """What a scorer's last call did (scorers that run a model expose it as ``.stats``)."""

    sequences: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    forwards: int = 0
    cache_hits: int = 0
    errors: int = 0
    seconds: float = 0.0

    @property
    def padding_ratio(self) -> float:
        total = self.tokens + self.padded_tokens
        return self.padded_tokens / total if total else 0.0


class ScoredMessage(Protocol):
    @property
    def role(self) -> str: ...
    @property
    def content(self) -> str: ...


class ScoredTurn(Protocol):
    """What a scorer reads of an event: a :class:`~monitor.events.ConversationEvent`, or the
    ingest path's :class:`~monitor.ingest.wire.WireConversation`."""

    @property
    def messages(self) -> Sequence[ScoredMessage]: ...
    @property
    def reward(self) -> float | None: ...


def conversations_of(events: Sequence[ScoredTurn]) -> list[list[dict[str, str]]]:
    """Each event's messages as plain dicts, the form model-running scorers take."""
    return [[{"role": message.role, "content": message.content} for message in event.messages] for event in events]


@runtime_checkable
class Scorer(Protocol):
    @property
    def identity(self) -> str:
        """Provenance stored with every score (``kind:model@revision``), so scores of two reward
        models are never mixed silently. Read-only: a plain attribute or a property satisfies it."""
        ...

    def score(self, events: Sequence[ScoredTurn]) -> list[ScoreOutcome]: ...


class ProducerRewardScorer:
    """Takes the producer-side ``reward`` of each event as its score (``None`` when absent)."""

    identity = "producer"

    def score(self, events: Sequence[ScoredTurn]) -> list[ScoreOutcome]:
        return [ScoreOutcome(event.reward) for event in events]
