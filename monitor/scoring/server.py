"""`create_scoring_app`: a reward model behind HTTP, and the protocol :class:`RemoteScorer` speaks.

The protocol is the contract for any model server that wants to score for the monitor (this app,
or one written for another stack). Version 1, JSON over HTTP:

``POST /v1/score``
    Request: ``{"conversations": [[{"role": ..., "content": ...}, ...], ...]}``, at most
    :data:`MAX_CONVERSATIONS` conversations of at most ``MAX_MESSAGES`` messages each; ``role`` is
    one of ``system``, ``user``, ``assistant``, ``tool``. The last message of each conversation is
    the response to score.

    Response (200): ``{"model": "<identity>", "outcomes": [{"score": float | null,
    "error": str | null, "truncated": bool}, ...]}``, one outcome per conversation, **in request
    order**. ``model`` names the reward model that produced these scores (``kind:name@revision``);
    it may change between responses when the model is swapped. A conversation the model cannot
    score (empty response, not ending with the assistant) gets ``score: null`` and an ``error``;
    that is not a request failure. A non-finite score is reported the same way.

    Errors: 422 for a body that breaks the schema (not worth retrying); 503 when the model cannot
    score at all (worth retrying). Error bodies are ``{"error": {"type": ..., "message": ...}}``.

``GET /v1/model``
    ``{"identity": "<identity>"}``.

``GET /healthz``
    ``{"status": "ok"}`` while the server is up.

The scorer is called under a lock: 🤗 models and the scorer's cache are not thread-safe, and the
device runs one forward at a time anyway.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import Annotated, Protocol

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from monitor.errors import ScoringError
from monitor.events import MAX_MESSAGES, Message
from monitor.http_errors import install_error_handlers
from monitor.scoring.base import ScoreOutcome

#: The most conversations one request may carry (a client splits larger calls).
MAX_CONVERSATIONS = 4096


class ConversationScorer(Protocol):
    """What the app serves: :class:`~monitor.scoring.transformers_scorer.TransformersScorer` fits."""

    identity: str

    def score_conversations(self, conversations: Sequence[Sequence[Mapping[str, str]]]) -> list[ScoreOutcome]: ...


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    conversations: Annotated[
        list[Annotated[list[Message], Field(max_length=MAX_MESSAGES)]],
        Field(max_length=MAX_CONVERSATIONS),
    ]


class WireOutcome(BaseModel):
    score: float | None
    error: str | None = None
    truncated: bool = False


class ScoreResponse(BaseModel):
    model: str
    outcomes: list[WireOutcome]


class ModelInfo(BaseModel):
    identity: str


def _wire(outcome: ScoreOutcome) -> WireOutcome:
    # JSON has no NaN or infinity; an overflowed logit is this response's error, not the request's.
    if outcome.score is not None and not math.isfinite(outcome.score):
        return WireOutcome(score=None, error=f"non-finite score ({outcome.score})", truncated=outcome.truncated)
    return WireOutcome(score=outcome.score, error=outcome.error, truncated=outcome.truncated)


def create_scoring_app(scorer: ConversationScorer) -> FastAPI:
    app = FastAPI(title="monitor reward-model server", description="Scores responses (protocol v1, see module docs)")
    lock = threading.Lock()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/model")
    def model() -> ModelInfo:
        return ModelInfo(identity=scorer.identity)

    @app.post("/v1/score")
    def score(request: ScoreRequest) -> ScoreResponse:
        conversations = [[message.model_dump() for message in conversation] for conversation in request.conversations]
        with lock:
            try:
                outcomes = scorer.score_conversations(conversations)
            except ScoringError:
                raise
            except Exception as exc:  # noqa: BLE001 - any model failure is a 503 the client may retry
                raise ScoringError(f"scorer failed: {exc.__class__.__name__}: {exc}") from exc
            identity = scorer.identity
        if len(outcomes) != len(conversations):
            raise ScoringError(f"scorer returned {len(outcomes)} outcomes for {len(conversations)} conversations")
        return ScoreResponse(model=identity, outcomes=[_wire(outcome) for outcome in outcomes])

    install_error_handlers(app)
    return app
