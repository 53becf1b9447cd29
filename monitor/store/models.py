"""SQLAlchemy 2 models: the store's tables. Types work on SQLite and PostgreSQL alike.

- ``turns``: one assistant turn per ``(conversation_id, turn)``, its text, score and joined rating.
- ``ratings``: every rating event, whether or not its turn has arrived (``joined`` says which).
- ``consumer_offsets``: the next Kafka offset per (group, topic, partition), written in the same
  transaction as the rows it covers; the consumer resumes from here.
- ``dead_letters``: every payload that broke its contract, raw bytes included (until
  ``MONITOR_RETENTION_DEAD_LETTERS_DAYS``: :mod:`monitor.store.retention`).
- ``segment_states``: the analyzer's checkpointed state per segment (calibrations per reward-model
  identity, detector statistics, open episodes); ``analyzer_progress``: the entry time up to which
  it has consumed rated turns.
- ``alerts``: divergence episodes (firing / resolved) with their evidence, and what was published.
- ``analysis_runs``: one row per analyzer run: the segment table and the drift report it produced.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names, so Alembic migrations name the same thing on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
AutoId = BigInteger().with_variant(Integer, "sqlite")
Json = JSON().with_variant(JSONB, "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out; SQLite returns naive values, so they are re-tagged as UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        offset = value.utcoffset()
        if offset is None:
            raise ValueError("naive datetimes are not stored; pass a timezone-aware value")
        return value if not offset else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    # Every model here maps one Table; saying so lets Core statements on ``Model.__table__`` type-check.
    __table__: ClassVar[Table]


class _FromKafka:
    """Where an event row was consumed from, and when."""

    source_topic: Mapped[str] = mapped_column(String(256))
    source_partition: Mapped[int] = mapped_column(Integer)
    source_offset: Mapped[int] = mapped_column(BigInteger)
    ingested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Turn(_FromKafka, Base):
    __tablename__ = "turns"
    __table_args__ = (
        UniqueConstraint("conversation_id", "turn"),
        Index("ix_turns_domain_ts", "domain", "ts"),
        # The analyzer finds turns whose signals are still to derive without scanning the table.
        Index("ix_turns_signals_pending", "id", sqlite_where=text("sig_length_tokens IS NULL"),
              postgresql_where=text("sig_length_tokens IS NULL")),
        # The retention prune finds turns whose raw text is still to redact without scanning the
        # ones it already redacted (monitor.store.retention).
        Index("ix_turns_unredacted", "ts", sqlite_where=text("redacted_at IS NULL"),
              postgresql_where=text("redacted_at IS NULL")),
    )

    id: Mapped[int] = mapped_column(AutoId, primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    conversation_id: Mapped[str] = mapped_column(String(256))
    turn: Mapped[int] = mapped_column(Integer)
    ts: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    model_version: Mapped[str] = mapped_column(String(128))
    domain: Mapped[str] = mapped_column(String(64))
    locale: Mapped[str | None] = mapped_column(String(32))
    channel: Mapped[str | None] = mapped_column(String(32))
    # Plain JSON, not JSONB: stored as text, never queried inside, and much cheaper to write.
    messages: Mapped[list] = mapped_column(JSON)
    prompt: Mapped[str] = mapped_column(Text)
    response: Mapped[str] = mapped_column(Text)
    # The event's alternative responses ({"content", "model_version", "reward"}), when it carried any.
    candidates: Mapped[list | None] = mapped_column(JSON)
    producer_reward: Mapped[float | None] = mapped_column(Float)
    score: Mapped[float | None] = mapped_column(Float)
    scorer: Mapped[str | None] = mapped_column(String(256))
    score_error: Mapped[str | None] = mapped_column(Text)
    score_truncated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    satisfaction: Mapped[float | None] = mapped_column(Float)
    rating_count: Mapped[int] = mapped_column(Integer, default=0)
    rated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # event time of the latest rating
    # Per-sample divergence (monitor.analyze.engine.divergence_scores), set by the analyzer run
    # after the turn arrived, once its segment's reward model has a calibration.
    divergence: Mapped[float | None] = mapped_column(Float)
    # Reward-hacking signals of the response (monitor.signals), derived by the signal deriver once per
    # turn, off the ingest path; NULL until then.
    sig_length_tokens: Mapped[float | None] = mapped_column(Float)
    sig_length_ratio: Mapped[float | None] = mapped_column(Float)
    sig_markdown_density: Mapped[float | None] = mapped_column(Float)
    sig_sycophancy: Mapped[float | None] = mapped_column(Float)
    sig_hedging: Mapped[float | None] = mapped_column(Float)
    sig_refusal: Mapped[float | None] = mapped_column(Float)
    sig_overpromise: Mapped[float | None] = mapped_column(Float)
    sig_compliance_missing: Mapped[float | None] = mapped_column(Float)
    sig_repetition: Mapped[float | None] = mapped_column(Float)
    prompt_harmful: Mapped[bool | None] = mapped_column(Boolean)
    # "producer" when the event's metadata said so, "classifier" when monitor.risk decided.
    prompt_risk_source: Mapped[str | None] = mapped_column(String(16))
    # When the retention prune replaced the raw text (messages, prompt, response, candidates) by its
    # redacted form (MONITOR_RETENTION_RAW_TEXT_DAYS); NULL: the text is still as ingested.
    redacted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class RatingRow(_FromKafka, Base):
    __tablename__ = "ratings"
    __table_args__ = (Index("ix_ratings_conversation_turn", "conversation_id", "turn"),
                      Index("ix_ratings_ts", "ts"),
                      # The few ratings still waiting for their turn: what monitor.store.sweep reads.
                      Index("ix_ratings_unjoined", "conversation_id", "turn", sqlite_where=text("joined = 0"),
                            postgresql_where=text("joined = false")),
                      # Comments the retention prune has still to redact (monitor.store.retention).
                      Index("ix_ratings_unredacted", "ts",
                            sqlite_where=text("comment IS NOT NULL AND redacted_at IS NULL"),
                            postgresql_where=text("comment IS NOT NULL AND redacted_at IS NULL")))

    id: Mapped[int] = mapped_column(AutoId, primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    conversation_id: Mapped[str] = mapped_column(String(256))
    turn: Mapped[int] = mapped_column(Integer)
    ts: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(16))
    value: Mapped[float] = mapped_column(Float)
    satisfaction: Mapped[float] = mapped_column(Float)
    reasons: Mapped[list] = mapped_column(Json)
    comment: Mapped[str | None] = mapped_column(Text)
    joined: Mapped[bool] = mapped_column(Boolean, default=False)
    # Set when the rating joins its turn: the event time it enters the analyzer's detectors (its
    # own ts, or the turn's when the rating came first). Ratings are consumed in this order.
    entry_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    # When the retention prune replaced the comment by its redacted form; NULL: as ingested.
    redacted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ConsumerOffset(Base):
    __tablename__ = "consumer_offsets"

    group_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    topic: Mapped[str] = mapped_column(String(256), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    next_offset: Mapped[int] = mapped_column(BigInteger)
    # Latest event time stored from this partition (never moves back): the analyzer's watermark is
    # the lowest of the active partitions', so it waits for a partition that lags (a backfill).
    event_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DeadLetter(Base):
    __tablename__ = "dead_letters"
    __table_args__ = (UniqueConstraint("source_topic", "source_partition", "source_offset"),)

    id: Mapped[int] = mapped_column(AutoId, primary_key=True)
    source_topic: Mapped[str] = mapped_column(String(256))
    source_partition: Mapped[int] = mapped_column(Integer)
    source_offset: Mapped[int] = mapped_column(BigInteger)
    key: Mapped[bytes | None] = mapped_column(LargeBinary)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    reason: Mapped[str] = mapped_column(String(32), index=True)
    detail: Mapped[str] = mapped_column(Text)
    # Indexed: the retention prune deletes dead letters by age (MONITOR_RETENTION_DEAD_LETTERS_DAYS).
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class SegmentState(Base):
    """The analyzer's state of one segment (:class:`monitor.analyze.state.SegmentState` as JSON):
    a reference per reward-model identity, frozen once fitted (a refit is an explicit operator
    action: a moving reference would absorb the drift), detector sums, open episodes."""

    __tablename__ = "segment_states"

    segment: Mapped[str] = mapped_column(String(256), primary_key=True)
    # Plain JSON: written whole, never queried inside.
    state: Mapped[dict] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AnalyzerProgress(Base):
    """One row: the entry time up to which the analyzer consumed rated turns."""

    __tablename__ = "analyzer_progress"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    checkpoint: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Alert(Base):
    """One divergence episode of one segment and detector; ``key`` de-duplicates re-detections."""

    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_state_started", "state", "started_at"),)

    id: Mapped[int] = mapped_column(AutoId, primary_key=True)
    key: Mapped[str] = mapped_column(String(512), unique=True)
    segment: Mapped[str] = mapped_column(String(256), index=True)
    detector: Mapped[str] = mapped_column(String(32))
    direction: Mapped[str] = mapped_column(String(8))
    mode: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)  # event time of the detecting sample
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)  # wall clock
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    evidence: Mapped[dict] = mapped_column(Json)
    published_state: Mapped[str | None] = mapped_column(String(16))


class AnalysisRun(Base):
    __tablename__ = "analysis_runs"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    watermark: Mapped[datetime | None] = mapped_column(UTCDateTime)  # latest event ts analysed
    labelled: Mapped[int] = mapped_column(Integer)
    segments: Mapped[list] = mapped_column(Json)
    drift_summary: Mapped[dict | None] = mapped_column(Json)
    drift_html: Mapped[str | None] = mapped_column(Text)


class ApiKey(Base):
    """An API key: its SHA-256 digest (the key itself is shown once, at creation), name and role."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # the key's first characters, to recognise it
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ReviewItem(Base):
    """One turn queued for shadow human evaluation (:mod:`monitor.review`). Its text is stored
    *redacted* (:mod:`monitor.redaction`): no raw personal data is ever written to the review
    tables. ``arm`` and ``inclusion_probability`` say how it was sampled, so estimates over the
    queue can be re-weighted; ``divergence`` and the segment are for operators, never shown to
    annotators (no anchoring)."""

    __tablename__ = "review_items"
    # ``task_key`` is "" for an item about the turn itself (one per turn: re-adding adds nothing);
    # a relabeling cycle's pair of two turns gets "cycle:<id>:pair:<n>".
    __table_args__ = (UniqueConstraint("conversation_id", "turn", "task_key"),
                      Index("ix_review_items_state_priority", "state", "priority"))

    id: Mapped[int] = mapped_column(AutoId, primary_key=True)
    turn_id: Mapped[int] = mapped_column(BigInteger, index=True)
    task_key: Mapped[str] = mapped_column(String(64), default="", server_default="")
    # A relabeling cycle's pair: its cycle, and the other turn (responses to near-identical prompts).
    cycle_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    pair_turn_id: Mapped[int | None] = mapped_column(BigInteger)
    event_id: Mapped[str] = mapped_column(String(64))
    conversation_id: Mapped[str] = mapped_column(String(256))
    turn: Mapped[int] = mapped_column(Integer)
    turn_ts: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    segment: Mapped[str] = mapped_column(String(256), index=True)
    domain: Mapped[str] = mapped_column(String(64))
    mode: Mapped[str | None] = mapped_column(String(32))
    # targeted | stratified | control | manual | gold
    arm: Mapped[str] = mapped_column(String(16))
    inclusion_probability: Mapped[float] = mapped_column(Float)
    priority: Mapped[float] = mapped_column(Float)
    alert_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    divergence: Mapped[float | None] = mapped_column(Float)
    reward: Mapped[float | None] = mapped_column(Float)
    # The reward model's calibrated prediction of the turn's satisfaction (its segment's reward map
    # when it was queued) and that reference's mean satisfaction: what the review report compares
    # human judgements with. NULL where the segment had no calibration yet.
    rm_prediction: Mapped[float | None] = mapped_column(Float)
    reference_satisfaction: Mapped[float | None] = mapped_column(Float)
    # Redacted text: the earlier messages of the conversation, the prompt, the response, and the
    # alternative candidate responses where the event carried them (a pairwise task).
    context: Mapped[list] = mapped_column(JSON)
    prompt: Mapped[str] = mapped_column(Text)
    response: Mapped[str] = mapped_column(Text)
    candidates: Mapped[list | None] = mapped_column(JSON)
    # Near-duplicate turns collapsed into this one when it was sampled.
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    reviews_required: Mapped[int] = mapped_column(Integer)
    reviews_done: Mapped[int] = mapped_column(Integer, default=0)
    # Leases out now. Kept on the row (not counted from review_leases) so that PostgreSQL re-checks
    # ``reviews_done + active_leases < reviews_required`` on the row's latest version when two
    # annotators race for it (FOR UPDATE SKIP LOCKED).
    active_leases: Mapped[int] = mapped_column(Integer, default=0)
    # A gold item's known answer (rubric labels); NULL for every other item.
    gold: Mapped[dict | None] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16))  # open | complete
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ReviewLease(Base):
    """An item handed to one annotator until ``expires_at``; ``outcome`` once it ends (annotated,
    skipped, expired)."""

    __tablename__ = "review_leases"
    __table_args__ = (Index("ix_review_leases_open", "item_id", "outcome"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    item_id: Mapped[int] = mapped_column(BigInteger)
    annotator: Mapped[str] = mapped_column(String(64), index=True)
    leased_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    outcome: Mapped[str | None] = mapped_column(String(16))
    skip_reason: Mapped[str | None] = mapped_column(Text)


class ReviewAnnotation(Base):
    """One annotator's labels of one item under one rubric version (edits bump ``revision``; the
    audit trail keeps every version)."""

    __tablename__ = "review_annotations"
    __table_args__ = (UniqueConstraint("item_id", "annotator"),)

    id: Mapped[int] = mapped_column(AutoId, primary_key=True)
    item_id: Mapped[int] = mapped_column(BigInteger, index=True)
    annotator: Mapped[str] = mapped_column(String(64), index=True)
    rubric_version: Mapped[str] = mapped_column(String(32))
    labels: Mapped[dict] = mapped_column(JSON)
    comment: Mapped[str | None] = mapped_column(Text)  # redacted
    revision: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ReviewAudit(Base):
    """The audit trail of the review queue: who did what to which item, when, under which rubric."""

    __tablename__ = "review_audit"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True)
    item_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    # enqueued | leased | annotated | edited | skipped | expired
    action: Mapped[str] = mapped_column(String(16))
    rubric_version: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[dict] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class ReviewSampling(Base):
    """Per segment: the event time up to which the review sampler has looked, and the items it
    queued on the current day (UTC, event time) against the daily budget."""

    __tablename__ = "review_sampling"

    segment: Mapped[str] = mapped_column(String(256), primary_key=True)
    until: Mapped[datetime] = mapped_column(UTCDateTime)
    day: Mapped[str] = mapped_column(String(10))
    spent: Mapped[int] = mapped_column(Integer, default=0)


class RelabelCycle(Base):
    """A relabeling cycle (:mod:`monitor.relabel`): a slice, a size and a strategy; its pairs go
    through the review queue as pairwise tasks."""

    __tablename__ = "relabel_cycles"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), unique=True)
    request_digest: Mapped[str] = mapped_column(String(64))
    request: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)  # collecting | complete | cancelled | insufficient
    detail: Mapped[str | None] = mapped_column(Text)
    pairs: Mapped[int] = mapped_column(Integer, default=0)
    alert_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    deadline: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    #: What the cycle found, stored when it ends (:mod:`monitor.relabel.results`).
    results: Mapped[dict | None] = mapped_column(JSON)
    #: The ``relabel_cycle/v1`` event: acknowledged by Kafka at; the webhook: delivered at, tries, next try.
    event_published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    webhook_delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    webhook_attempts: Mapped[int] = mapped_column(Integer, default=0)
    webhook_next_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    webhook_error: Mapped[str | None] = mapped_column(Text)


class RelabelPair(Base):
    """One pair of a cycle: two responses to the same (or a near-identical) prompt, how the pair
    was formed, the reward model's scores of both, and the review item that collects its label."""

    __tablename__ = "relabel_pairs"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True)
    cycle_id: Mapped[int] = mapped_column(BigInteger, index=True)
    item_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    turn_a: Mapped[int] = mapped_column(BigInteger)
    turn_b: Mapped[int | None] = mapped_column(BigInteger)  # None: B is turn_a's candidate response
    formed_by: Mapped[str] = mapped_column(String(32))  # candidates | similar_prompts
    similarity: Mapped[float | None] = mapped_column(Float)
    reward_a: Mapped[float | None] = mapped_column(Float)
    reward_b: Mapped[float | None] = mapped_column(Float)
