"""Hand-built wire events for tests (the simulator makes realistic traffic; these make exact cases)."""

from __future__ import annotations

import json
import uuid
from typing import Any


def conversation(conversation_id: str = "c-1", turn: int = 0, *, reward: float | None = 0.5,
                 response: str = "You can freeze your card in the app.", domain: str = "cards",
                 ts: str = "2026-11-27T10:00:00Z", event_id: str | None = None, **extra: Any) -> dict[str, Any]:
    event = {
        "schema": "conversation/v1",
        "event_id": event_id or str(uuid.uuid4()),
        "conversation_id": conversation_id,
        "turn": turn,
        "ts": ts,
        "model_version": "assistant-2026-11-20",
        "messages": [
            {"role": "user", "content": "How do I freeze my card?"},
            {"role": "assistant", "content": response},
        ],
        "segment": {"domain": domain, "locale": "en-GB", "channel": "app"},
        "reward": reward,
    }
    event.update(extra)
    return event


def rating(conversation_id: str = "c-1", turn: int = 0, *, kind: str = "thumbs", value: float = 1,
           ts: str = "2026-11-27T10:01:10Z", event_id: str | None = None, **extra: Any) -> dict[str, Any]:
    event = {
        "schema": "rating/v1",
        "event_id": event_id or str(uuid.uuid4()),
        "conversation_id": conversation_id,
        "turn": turn,
        "ts": ts,
        "rating": {"kind": kind, "value": value},
        "reasons": [],
        "comment": None,
    }
    event.update(extra)
    return event


def wire(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()
