"""Unit tests of `Settings` / `load_settings` (MONITOR_* environment variables).

The autouse ``_no_monitor_env`` fixture in conftest.py clears every MONITOR_* variable first.
"""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from monitor.config import ENV_PREFIX, Settings, load_settings
from monitor.errors import ConfigError, MonitorError


def test_no_monitor_variables_leak_into_tests() -> None:
    assert not [name for name in os.environ if name.upper().startswith(ENV_PREFIX)]


def test_defaults() -> None:
    settings = load_settings()
    assert settings.database_url == "sqlite:///./monitor.db"
    assert settings.db_auto_upgrade is True
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    assert settings.bootstrap_servers == ["127.0.0.1:9092"]
    assert settings.conversations_topic == "conversations"
    assert settings.ratings_topic == "ratings"
    assert settings.dlq_topic == "monitor.dlq"
    assert settings.topics == ("conversations", "ratings")
    assert settings.consumer_group == "monitor-ingest"
    assert settings.batch_size == 500
    assert settings.poll_timeout_ms == 500
    assert settings.max_poll_interval_ms == 300_000
    assert settings.session_timeout_ms == 10_000
    assert settings.lag_refresh_seconds == 5.0
    assert settings.retry_backoff_seconds == 1.0
    assert settings.retry_backoff_max_seconds == 30.0
    assert settings.api_host == "127.0.0.1"
    assert settings.api_port == 8000
    assert settings.log_level == "INFO"


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValidationError):
        settings.batch_size = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        ("MONITOR_BATCH_SIZE", "50", "batch_size", 50),
        ("MONITOR_DATABASE_URL", "postgresql://u@db:5432/monitor", "database_url", "postgresql://u@db:5432/monitor"),
        ("MONITOR_DB_AUTO_UPGRADE", "false", "db_auto_upgrade", False),
        ("MONITOR_DB_AUTO_UPGRADE", "0", "db_auto_upgrade", False),
        ("MONITOR_KAFKA_BOOTSTRAP", "kafka-1:9093", "kafka_bootstrap", "kafka-1:9093"),
        ("MONITOR_CONVERSATIONS_TOPIC", "convs", "conversations_topic", "convs"),
        ("MONITOR_RATINGS_TOPIC", "rates", "ratings_topic", "rates"),
        ("MONITOR_DLQ_TOPIC", "dead", "dlq_topic", "dead"),
        ("MONITOR_CONSUMER_GROUP", "g2", "consumer_group", "g2"),
        ("MONITOR_POLL_TIMEOUT_MS", "250", "poll_timeout_ms", 250),
        ("MONITOR_MAX_POLL_INTERVAL_MS", "60000", "max_poll_interval_ms", 60_000),
        ("MONITOR_SESSION_TIMEOUT_MS", "6000", "session_timeout_ms", 6000),
        ("MONITOR_LAG_REFRESH_SECONDS", "0.5", "lag_refresh_seconds", 0.5),
        ("MONITOR_RETRY_BACKOFF_SECONDS", "2", "retry_backoff_seconds", 2.0),
        ("MONITOR_RETRY_BACKOFF_MAX_SECONDS", "60.5", "retry_backoff_max_seconds", 60.5),
        ("MONITOR_API_HOST", "0.0.0.0", "api_host", "0.0.0.0"),
        ("MONITOR_API_PORT", "9100", "api_port", 9100),
        ("MONITOR_API_PORT", "0", "api_port", 0),
        ("MONITOR_API_PORT", "65535", "api_port", 65535),
        ("MONITOR_LOG_LEVEL", "DEBUG", "log_level", "DEBUG"),
        ("MONITOR_LOG_LEVEL", "warning", "log_level", "WARNING"),
        ("MONITOR_LOG_LEVEL", "Error", "log_level", "ERROR"),
    ],
)
def test_environment_variable_is_read(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str, expected: object
) -> None:
    monkeypatch.setenv(variable, value)
    settings = load_settings()
    assert getattr(settings, field) == expected
    assert type(getattr(settings, field)) is type(expected)


def test_every_field_has_a_monitor_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    # Reading one variable leaves every other field at its default.
    monkeypatch.setenv("MONITOR_BATCH_SIZE", "50")
    settings = load_settings()
    defaults = load_settings(batch_size=500)
    assert settings.batch_size == 50
    assert settings.model_dump(exclude={"batch_size"}) == defaults.model_dump(exclude={"batch_size"})


def test_topics_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONITOR_CONVERSATIONS_TOPIC", "c")
    monkeypatch.setenv("MONITOR_RATINGS_TOPIC", "r")
    assert load_settings().topics == ("c", "r")


def test_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONITOR_BATCH_SIZE", "50")
    assert load_settings(batch_size=10).batch_size == 10


def test_invalid_override_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="MONITOR_BATCH_SIZE"):
        load_settings(batch_size=0)


@pytest.mark.parametrize(
    ("value", "servers"),
    [
        ("a:1", ["a:1"]),
        ("kafka-1:9092,kafka-2:9092,kafka-3:9092", ["kafka-1:9092", "kafka-2:9092", "kafka-3:9092"]),
        ("kafka-1:9092, kafka-2:9092 ,kafka-3:9092", ["kafka-1:9092", "kafka-2:9092", "kafka-3:9092"]),
        ("10.0.0.1:9092,[::1]:9093", ["10.0.0.1:9092", "[::1]:9093"]),
    ],
)
def test_bootstrap_servers_splits_a_comma_list(monkeypatch: pytest.MonkeyPatch, value: str, servers: list[str]) -> None:
    monkeypatch.setenv("MONITOR_KAFKA_BOOTSTRAP", value)
    settings = load_settings()
    assert settings.kafka_bootstrap == value
    assert settings.bootstrap_servers == servers


@pytest.mark.parametrize("variable", ["MONITOR_BATCHSIZE", "MONITOR_DB_URL", "MONITOR_", "monitor_batchsize"])
def test_unknown_variable_is_rejected_by_name(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, "50")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert variable in message
    assert "unknown" in message
    assert "MONITOR_BATCH_SIZE" in message  # the known names are listed to help fix the typo


def test_unknown_variable_is_rejected_even_next_to_valid_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONITOR_BATCH_SIZE", "50")
    monkeypatch.setenv("MONITOR_BATCHSIZE", "50")
    with pytest.raises(ConfigError, match="MONITOR_BATCHSIZE"):
        load_settings()


def test_unrelated_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONITORING_LEVEL", "high")
    monkeypatch.setenv("BATCH_SIZE", "7")
    assert load_settings().batch_size == 500


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MONITOR_BATCH_SIZE", "0"),
        ("MONITOR_BATCH_SIZE", "-5"),
        ("MONITOR_BATCH_SIZE", "abc"),
        ("MONITOR_BATCH_SIZE", "1.5"),
        ("MONITOR_POLL_TIMEOUT_MS", "0"),
        ("MONITOR_MAX_POLL_INTERVAL_MS", "-1"),
        ("MONITOR_SESSION_TIMEOUT_MS", "ten"),
        ("MONITOR_LAG_REFRESH_SECONDS", "0"),
        ("MONITOR_RETRY_BACKOFF_SECONDS", "-1"),
        ("MONITOR_RETRY_BACKOFF_MAX_SECONDS", "soon"),
        ("MONITOR_KAFKA_BOOTSTRAP", "nohostport"),
        ("MONITOR_KAFKA_BOOTSTRAP", "host:"),
        ("MONITOR_KAFKA_BOOTSTRAP", ":9092"),
        ("MONITOR_KAFKA_BOOTSTRAP", "host:port"),
        ("MONITOR_KAFKA_BOOTSTRAP", "a:1,nohostport"),
        ("MONITOR_KAFKA_BOOTSTRAP", "a:1,"),
        ("MONITOR_KAFKA_BOOTSTRAP", ""),
        ("MONITOR_LOG_LEVEL", "LOUD"),
        ("MONITOR_LOG_LEVEL", "CRITICAL"),
        ("MONITOR_LOG_LEVEL", ""),
        ("MONITOR_API_PORT", "70000"),
        ("MONITOR_API_PORT", "65536"),
        ("MONITOR_API_PORT", "-1"),
        ("MONITOR_API_PORT", "http"),
        ("MONITOR_DB_AUTO_UPGRADE", "maybe"),
    ],
)
def test_invalid_value_is_rejected_by_name(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert variable in message
    assert "invalid" in message
    assert isinstance(info.value.__cause__, ValidationError)


def test_every_invalid_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONITOR_BATCH_SIZE", "0")
    monkeypatch.setenv("MONITOR_API_PORT", "70000")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "MONITOR_BATCH_SIZE" in str(info.value)
    assert "MONITOR_API_PORT" in str(info.value)


def test_config_error_is_a_monitor_error() -> None:
    assert issubclass(ConfigError, MonitorError)


def test_settings_constructor_reads_the_environment_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONITOR_DLQ_TOPIC", "dead")
    assert Settings().dlq_topic == "dead"


def test_secrets_come_from_files_named_by_file_variables(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    url = tmp_path / "database_url"
    url.write_text("postgresql://monitor:s3cret@db/monitor\n")
    secret = tmp_path / "webhook"
    secret.write_text("hook-secret")
    monkeypatch.setenv("MONITOR_DATABASE_URL_FILE", str(url))
    monkeypatch.setenv("MONITOR_RELABEL_WEBHOOK_SECRET_FILE", str(secret))
    settings = load_settings()
    assert settings.database_url == "postgresql://monitor:s3cret@db/monitor"  # the newline stripped
    assert settings.relabel_webhook_secret is not None
    assert settings.relabel_webhook_secret.get_secret_value() == "hook-secret"
    # The plain variable and an explicit override win over the file.
    assert load_settings(database_url="sqlite:///x.db").database_url == "sqlite:///x.db"
    monkeypatch.setenv("MONITOR_DATABASE_URL", "sqlite:///y.db")
    assert load_settings().database_url == "sqlite:///y.db"
    monkeypatch.delenv("MONITOR_DATABASE_URL")
    monkeypatch.setenv("MONITOR_DATABASE_URL_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="MONITOR_DATABASE_URL_FILE: cannot read"):
        load_settings()
