"""Derive each turn's reward-hacking signals and prompt risk, once, off the ingest path.

Signals come from :func:`monitor.signals.derive_signals`: the lexical features plus the MiniLM
sentence classifiers for sycophancy, hedging, overpromise and refusal, in batches.

The analyzer calls :func:`fill_signals` at the start of every run. Each chunk is read in one short
transaction, computed with none open, and written in another, so ingest never waits behind it and a
run that dies halfway keeps what it derived.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from sqlalchemy.orm import Session, sessionmaker

from monitor.risk import is_harmful
from monitor.signals import DEFAULT_COMPLIANCE, derive_signals
from monitor.store.analysis import store_signals, turns_without_signals

#: Turns whose signals are derived per transaction (select, compute, update).
FILL_CHUNK = 500


def fill_signals(sessions: sessionmaker[Session], *, required_language: Mapping[str, Sequence[str]] | None = None,
                 chunk: int = FILL_CHUNK, limit: int | None = None,
                 prepare: Callable[[Session], None] | None = None,
                 progress: Callable[[int], None] | None = None) -> int:
    """Derive the signals (and, where the producer sent none, the prompt risk) of turns that have
    none yet, ``chunk`` turns per transaction, at most ``limit`` in all; returns how many."""
    compliance = DEFAULT_COMPLIANCE if required_language is None else required_language
    filled = 0
    while limit is None or filled < limit:
        size = chunk if limit is None else min(chunk, limit - filled)
        # Read, derive with no transaction open (new text can take a while through the
        # classifiers), then write: only the analyzer sets these columns, under its lock.
        with sessions.begin() as session:
            if prepare:
                prepare(session)
            rows = turns_without_signals(session, size)
        if not rows:
            return filled
        updates = []
        derived = derive_signals([(row.prompt, row.response, row.domain) for row in rows], compliance=compliance)
        for row, signals in zip(rows, derived, strict=True):
            values: dict[str, object] = dict(signals.as_columns())
            if row.prompt_harmful is None:
                values.update(prompt_harmful=is_harmful(row.prompt), prompt_risk_source="classifier")
            else:  # the producer's verdict stays (every parameter set names the same columns)
                values.update(prompt_harmful=row.prompt_harmful, prompt_risk_source=row.prompt_risk_source)
            updates.append({"turn_id": row.id, **values})
        with sessions.begin() as session:
            if prepare:
                prepare(session)
            store_signals(session, updates)
        filled += len(rows)
        if progress:
            progress(filled)
    return filled
