"""`Settings`: every knob of the service, read from ``MONITOR_*`` environment variables.

An unknown ``MONITOR_*`` variable or an invalid value fails at start with a :class:`ConfigError`
that names the variable, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import math
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from monitor.errors import ConfigError

ENV_PREFIX = "MONITOR_"

PositiveInt = Annotated[int, Field(gt=0)]


#: The ``role`` values that consume Kafka, run the analyzer schedule, and serve the API (not just probes).
INGEST_ROLES = ("all", "worker")
ANALYZER_ROLES = ("all", "analyzer")
API_ROLES = ("all", "api")


class Settings(BaseSettings):
    """Configuration of one `monitor` process. Field ``x`` is read from ``MONITOR_X``."""

    # hide_input_in_errors: a refused MONITOR_DATABASE_URL (with its password) stays out of tracebacks.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True, hide_input_in_errors=True)

    database_url: str = "sqlite:///./monitor.db"
    db_auto_upgrade: bool = Field(
        default=True, description="Run Alembic migrations to head when `monitor serve` starts."
    )

    kafka_bootstrap: str = "127.0.0.1:9092"
    conversations_topic: str = "conversations"
    ratings_topic: str = "ratings"
    dlq_topic: str = "monitor.dlq"
    consumer_group: str = "monitor-ingest"
    batch_size: PositiveInt = 500
    poll_timeout_ms: PositiveInt = 500
    max_poll_interval_ms: PositiveInt = 300_000
    session_timeout_ms: PositiveInt = 10_000
    lag_refresh_seconds: float = Field(default=5.0, gt=0)
    retry_backoff_seconds: float = Field(default=1.0, gt=0)
    retry_backoff_max_seconds: float = Field(default=30.0, gt=0)
    ingest_future_tolerance_seconds: float = Field(
        default=300.0, ge=0, le=86_400, allow_inf_nan=False,
        description="An event whose ts is further ahead of the ingest clock is dead-lettered (future_timestamp).",
    )
    offset_reset: Literal["earliest", "latest", "none"] = Field(
        default="earliest", description="Where a partition whose stored offset lies outside its log (past the "
        "end: the log was recreated; before the start: retention deleted unread records) restarts: earliest "
        "(re-reading is harmless, writes are idempotent), latest, or none (paused, /readyz not ready).",
    )
    ingest_timestamp_floor: AwareDatetime = Field(
        default=datetime(2000, 1, 1, tzinfo=UTC),
        description="An event whose ts is earlier is dead-lettered (ancient_timestamp).",
    )

    rm_model: str | None = Field(
        default=None, description="Reward model: a local directory or a hub id; unset: use producer rewards."
    )
    rm_revision: str | None = None
    rm_label_index: int = Field(default=0, ge=0)
    rm_device: str = "auto"
    rm_dtype: str = "auto"
    rm_max_length: PositiveInt | None = None
    rm_max_batch_tokens: PositiveInt = 16_384
    rm_strategy: str = "auto"
    rm_cache_size: int = Field(default=10_000, ge=0)
    rm_url: str | None = Field(default=None, description="A remote scoring endpoint (see monitor.scoring.server).")
    rm_timeout_seconds: float = Field(default=30.0, gt=0)
    rm_retries: int = Field(default=3, ge=0, le=20)
    rm_max_concurrency: int = Field(default=4, ge=1, le=64)

    flags_topic: str = "monitor.flags"
    segment_domains: str = Field(
        default="payments,cards,investments,fraud,general",
        description="Comma-separated domains watched as their own segment; others fall into `other`; empty: one `*`.",
    )
    segment_model_versions: str = Field(
        default="", description="As segment_domains, for the assistant's model_version."
    )
    segment_locales: str = Field(default="", description="As segment_domains, for the locale.")
    required_language: dict[str, list[str]] | None = Field(
        default=None,
        description="JSON {domain: [regex, ...]}: language a response in that domain must contain; "
        "unset: the built-in rules (investments need a risk disclaimer).",
    )
    analyze_interval_seconds: float = Field(
        default=60.0, ge=0, description="How often `serve` runs the analyzer; 0 turns the schedule off."
    )
    derive_interval_seconds: float = Field(
        default=2.0, ge=0, description="`serve` derives the signals of new turns continuously, looking for "
        "more this often once caught up; 0: the analyzer derives them at the start of each run instead.",
    )
    analyze_reference_labels: int = Field(
        default=500, ge=50,
        description="Rated turns in each reference window: a segment's first ones under each reward model.",
    )
    analyze_window_minutes: float = Field(
        default=60.0, gt=0, description="The current window (event time) of segment statistics and drift."
    )
    analyze_window_max_turns: int = Field(
        default=30_000, ge=1000, description="Turns a run reads of the current window at most: beyond, a "
        "systematic sample per segment (counts stay exact; a quiet segment is read whole beside a busy one)."
    )
    analyze_false_alarm_labels: int = Field(
        default=10_000, ge=100, description="False-alarm budget: at most one per this many rated turns per segment."
    )
    analyze_shift_sd: float = Field(
        default=0.5, gt=0, le=5, description="Residual shift (in reference SDs) the CUSUM is tuned to catch fastest."
    )
    analyze_rank_window: int = Field(default=300, ge=30, description="Rated turns per rank-agreement window.")
    analyze_rank_fdr: float = Field(
        default=0.001, gt=0, lt=1,
        description="False-positive level of the rank-agreement drop tests, "
        "shared (Bonferroni) by the configured segments.",
    )
    analyze_resolve_labels: int = Field(
        default=300, ge=10, description="Rated turns without a new detection before an alert resolves."
    )
    analyze_rating_horizon_minutes: float = Field(
        default=60.0, gt=0, description="A rating later than this after its turn (event time) never enters the "
        "detectors: the turn has settled. Ratings within it update alerts, never re-key them.",
    )
    analyze_settle_seconds: float = Field(
        default=120.0, ge=0, description="Rated turns enter the detectors this far behind the slower of the "
        "conversations' and ratings' watermarks (event time), so ratings still in flight are not skipped.",
    )
    analyze_partition_idle_seconds: float = Field(
        default=300.0, gt=0, description="A partition that stored nothing for this long (wall clock) while "
        "others did stops holding the analyzer's watermark back.",
    )
    analyze_drift_interval_seconds: float = Field(
        default=600.0, ge=0, description="Scheduled runs rebuild the drift report at most this often."
    )
    analyze_drift_rows: int = Field(
        default=1000, ge=0, description="Turns sampled per window for the drift report; 0 turns the report off."
    )

    review_enabled: bool = Field(
        default=True, description="The analyzer queues sampled turns for shadow human review after each run."
    )
    review_daily_budget: int = Field(
        default=200, ge=0, le=1_000_000, description="Items the sampler queues per segment and day (event time)."
    )
    review_period_minutes: float = Field(
        default=60.0, gt=0, le=1440, description="The sampler spends the daily budget in periods of this "
        "much event time (each a share of the day's budget, spent once the analyzer has seen the period).",
    )
    review_control_share: float = Field(
        default=0.25, ge=0.25, le=1.0, description="Share of each period's budget in the uniform random control "
        "arm (at least 25%: the unbiased view re-weighted estimates rest on).",
    )
    review_targeted_per_alert: int = Field(
        default=5, ge=0, le=1000, description="Items per firing alert and period: its turns of highest divergence."
    )
    review_overlap_share: float = Field(
        default=0.2, ge=0, le=1, description="Share of items that several annotators label (agreement statistics)."
    )
    review_overlap: int = Field(default=2, ge=1, le=20, description="Reviews required of an overlapped item.")
    review_lease_seconds: float = Field(
        default=900.0, gt=0, le=86_400, description="An item leased to an annotator goes back to the pool after this."
    )
    review_lookback_hours: float = Field(
        default=24.0, gt=0, description="On its first run the sampler looks back this far, not over the history."
    )

    relabel_max_size: int = Field(
        default=500, ge=1, le=2000, description="Largest relabeling cycle (pairs) an operator or the policy may open."
    )
    relabel_auto_enabled: bool = Field(
        default=False, description="A firing divergence alert opens a relabeling cycle for its segment and mode."
    )
    relabel_auto_size: int = Field(default=50, ge=1, le=2000, description="Pairs of a cycle the policy opens.")
    relabel_auto_strategy: Literal["divergence", "uncertainty", "random"] = Field(
        default="divergence", description="Pair order of a cycle the policy opens."
    )
    relabel_auto_interval_hours: float = Field(
        default=24.0, gt=0, description="The policy opens at most one cycle per segment and mode in this long."
    )
    relabel_auto_max_per_day: int = Field(
        default=4, ge=0, le=1000, description="The policy opens at most this many cycles in any 24 hours, in all."
    )
    relabel_topic: str = Field(
        default="monitor.relabel-cycles", description="Kafka topic of `relabel_cycle/v1` events (a cycle ended)."
    )
    relabel_webhook_url: str | None = Field(
        default=None, description="POSTed the `relabel_cycle/v1` event when a cycle ends (HMAC-signed), if set."
    )
    relabel_webhook_secret: SecretStr | None = Field(
        default=None, description="Key of the webhook's HMAC-SHA256 signature (X-Monitor-Signature); required "
        "with relabel_webhook_url.",
    )
    relabel_webhook_attempts: int = Field(
        default=8, ge=1, le=50, description="Deliveries tried before the webhook gives up on one event."
    )
    relabel_webhook_backoff_seconds: float = Field(
        default=30.0, gt=0, le=3600, description="Wait before the first retry; doubled each retry (at most 1 hour)."
    )

    # Retention (docs/retention.md): ages in days, by event time (dead letters: by arrival); 0 keeps forever.
    retention_turns_days: int = Field(
        default=90, ge=0, le=36_500, description="Turns older than this are deleted with their ratings, except "
        "those the analyzer's reference windows still read; 0: kept forever.",
    )
    retention_raw_text_days: int = Field(
        default=30, ge=0, le=36_500, description="After this, a turn's raw text (messages, prompt, response, "
        "candidates) and a rating's comment are replaced by their redacted form; 0: never; at most "
        "retention_turns_days.",
    )
    retention_ratings_days: int = Field(
        default=30, ge=0, le=36_500, description="Ratings still waiting for their turn after this are deleted; "
        "0: they wait forever. Joined ratings go with their turn.",
    )
    retention_dead_letters_days: int = Field(
        default=14, ge=0, le=36_500, description="Dead letters (raw bytes, key, detail) are deleted this long "
        "after they arrived; 0: kept forever.",
    )
    retention_prune_interval_seconds: float = Field(
        default=3600.0, ge=0, le=7 * 86_400, description="The analyzer schedule of `serve` prunes this often "
        "(after an analyzer run); 0: no scheduled prune (run `monitor db prune`).",
    )

    role: Literal["all", "worker", "analyzer", "api"] = Field(
        default="all", description="What `monitor serve` runs: all (ingest, analyzer, API), worker (ingest), "
        "analyzer (signal deriver, analyzer schedule) or api (the API); `--role` overrides it (docs/ingest.md).",
    )
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    api_max_body_bytes: int = Field(
        default=1_048_576, ge=1024, le=1_073_741_824,
        description="Largest request body the API reads (413 beyond it); the largest legitimate ones, "
        "1000-item manual enqueues, stay well under the default 1 MiB.",
    )
    api_rate_limit_per_minute: int = Field(
        default=600, ge=0, le=1_000_000,
        description="Requests per minute each API key may make to /v1 (a burst of as many), and each client "
        "address without a known key; 429 beyond it. Per API process; 0 turns the limit off.",
    )

    log_level: str = "INFO"

    @model_validator(mode="after")
    def _signed_webhook(self) -> Settings:
        if self.relabel_webhook_url and self.relabel_webhook_secret is None:
            raise ValueError("relabel_webhook_url needs relabel_webhook_secret: the webhook is always signed")
        if self.relabel_webhook_url and not self.relabel_webhook_url.startswith(("http://", "https://")):
            raise ValueError(f"relabel_webhook_url must be an http(s) URL, got {self.relabel_webhook_url!r}")
        return self

    @model_validator(mode="after")
    def _analyzer_scheduled(self) -> Settings:
        if self.role == "analyzer" and self.analyze_interval_seconds == 0:
            raise ValueError("MONITOR_ROLE=analyzer runs the analyzer schedule: "
                             "MONITOR_ANALYZE_INTERVAL_SECONDS must be > 0")
        return self

    @model_validator(mode="after")
    def _retention_consistent(self) -> Settings:
        def days(value: int) -> float:
            return math.inf if value == 0 else value

        if days(self.retention_raw_text_days) > days(self.retention_turns_days):
            raise ValueError(
                f"MONITOR_RETENTION_RAW_TEXT_DAYS ({self.retention_raw_text_days or 'forever'}) must be at most "
                f"MONITOR_RETENTION_TURNS_DAYS ({self.retention_turns_days or 'forever'}): raw text is redacted "
                "before its turn is deleted, never kept to the end (0 means forever)")
        if self.retention_turns_days:
            # What the analyzer and the review sampler read back from `turns` (event time).
            needs = {"MONITOR_ANALYZE_WINDOW_MINUTES": self.analyze_window_minutes,
                     "MONITOR_ANALYZE_RATING_HORIZON_MINUTES": self.analyze_rating_horizon_minutes,
                     "MONITOR_REVIEW_LOOKBACK_HOURS": self.review_lookback_hours * 60}
            name, minutes = max(needs.items(), key=lambda item: item[1])
            if self.retention_turns_days * 1440 <= minutes:
                raise ValueError(
                    f"MONITOR_RETENTION_TURNS_DAYS ({self.retention_turns_days}) must be longer than {name} "
                    f"({minutes / 1440:g} days): the analyzer reads those turns back")
        return self

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, value: str) -> str:
        from monitor.store.db import check_url  # SQLAlchemy: imported by the commands that open the store anyway

        check_url(value)
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        levels = ("DEBUG", "INFO", "WARNING", "ERROR")
        if value.upper() not in levels:
            raise ValueError(f"must be one of {', '.join(levels)}")
        return value.upper()

    @field_validator("ingest_timestamp_floor")
    @classmethod
    def _floor_in_the_past(cls, value: datetime) -> datetime:
        if value >= datetime.now(UTC):
            raise ValueError("must be in the past (a floor in the future would reject every event)")
        return value

    @field_validator("kafka_bootstrap")
    @classmethod
    def _host_port_list(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {value!r}")
        return value

    @field_validator("rm_device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value.split(":")[0] not in ("auto", "cpu", "cuda", "mps"):
            raise ValueError("must be one of auto, cpu, cuda, cuda:N, mps")
        return value

    @field_validator("rm_dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        if value not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError("must be one of auto, float32, bfloat16, float16")
        return value

    @field_validator("rm_strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value not in ("auto", "single", "bucketed"):
            raise ValueError("must be one of auto, single, bucketed")
        return value

    @field_validator("required_language")
    @classmethod
    def _compilable(cls, value: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        for domain, patterns in (value or {}).items():
            for pattern in patterns:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(f"{domain}: {pattern!r} is not a valid regular expression: {exc}") from exc
        return value

    @property
    def bootstrap_servers(self) -> list[str]:
        return [server.strip() for server in self.kafka_bootstrap.split(",")]

    @property
    def topics(self) -> tuple[str, str]:
        return (self.conversations_topic, self.ratings_topic)


#: Settings that may come from a file instead (``MONITOR_<NAME>_FILE``: a container secret's path).
FILE_SETTINGS = ("database_url", "relabel_webhook_secret")


def _unknown_env_vars(environ: dict[str, str]) -> list[str]:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    known |= {f"{ENV_PREFIX}{name.upper()}_FILE" for name in FILE_SETTINGS}
    return sorted(k for k in environ if k.upper().startswith(ENV_PREFIX) and k.upper() not in known)


def _from_files(environ: dict[str, str], overrides: dict[str, object]) -> dict[str, object]:
    """``MONITOR_<NAME>_FILE`` settings read from their files (surrounding whitespace stripped);
    the plain variable, or an override, wins over the file."""
    found: dict[str, object] = {}
    for name in FILE_SETTINGS:
        path = environ.get(f"{ENV_PREFIX}{name.upper()}_FILE")
        if path is None or name in overrides or f"{ENV_PREFIX}{name.upper()}" in environ:
            continue
        try:
            found[name] = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{ENV_PREFIX}{name.upper()}_FILE: cannot read {path}: {exc}") from exc
    return found


def load_settings(**overrides: object) -> Settings:
    """Build :class:`Settings` from the environment plus ``overrides``; raise :class:`ConfigError`.

    >>> load_settings(batch_size=10).batch_size
    10
    """
    environ = dict(os.environ)
    unknown = _unknown_env_vars(environ)
    if unknown:
        raise ConfigError(
            f"unknown setting(s): {', '.join(unknown)}; known: "
            + ", ".join(ENV_PREFIX + n.upper() for n in Settings.model_fields)
        )
    overrides = {**_from_files(environ, overrides), **overrides}
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        # Our validators' ValueErrors come as "Value error, <message>": the message is the news.
        problems = "; ".join(
            f"{ENV_PREFIX}{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg'].removeprefix('Value error, ')}"
            if err["loc"]
            # A check across settings (a model validator) names its variables in its message.
            else err["msg"].removeprefix("Value error, ")
            for err in exc.errors()
        )
        raise ConfigError(f"invalid setting(s): {problems}") from exc
