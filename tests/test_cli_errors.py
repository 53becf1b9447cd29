"""Every documented CLI failure, through the real command (`python -m monitor ...`, a subprocess):
exit code 2 and one ``error: ...`` line on stderr, never a traceback (README, "Exit codes")."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.test_cli import monitor_env

#: Port 1 refuses at once; the password must never reach the output.
UNREACHABLE = "postgresql://monitor:s3cret@127.0.0.1:1/x"
REACH_FAILED = "error: cannot reach the database postgresql://monitor:***@127.0.0.1:1/x: connection failed: "
SUPPORTED = "expected sqlite:///PATH (sqlite:// in memory) or postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"


def run_in(tmp_path, *args: str, **settings: object) -> subprocess.CompletedProcess[str]:
    """The command in ``tmp_path``: a default SQLite store would land there, not in the checkout."""
    return subprocess.run([sys.executable, "-m", "monitor", *args], env=monitor_env(**settings), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("args", "settings", "expected"), [
    pytest.param(("db", "current"), {"database_url": "garbage"},
                 f"error: invalid setting(s): MONITOR_DATABASE_URL: not a database URL; {SUPPORTED}",
                 id="unparsable-url"),
    pytest.param(("db", "current"), {"database_url": "mysql://monitor:s3cret@db/monitor"},
                 "error: invalid setting(s): MONITOR_DATABASE_URL: mysql://monitor:***@db/monitor: unsupported "
                 f"database 'mysql'; {SUPPORTED}", id="unsupported-backend"),
    pytest.param(("keys", "list"), {"database_url": "postgresql+psycopg2://monitor:s3cret@db/monitor"},
                 "error: invalid setting(s): MONITOR_DATABASE_URL: postgresql+psycopg2://monitor:***@db/monitor: "
                 "unsupported database 'postgresql+psycopg2'", id="unsupported-driver"),
    pytest.param(("db", "current"), {"database_url": UNREACHABLE}, REACH_FAILED, id="unreachable-db-current"),
    pytest.param(("db", "upgrade"), {"database_url": UNREACHABLE}, REACH_FAILED, id="unreachable-db-upgrade"),
    pytest.param(("keys", "list"), {"database_url": UNREACHABLE}, REACH_FAILED, id="unreachable-keys-list"),
    pytest.param(("db", "current"), {"database_url": "sqlite:///no/such/dir/monitor.db"},
                 "error: cannot reach the database sqlite:///no/such/dir/monitor.db: unable to open database file",
                 id="sqlite-in-a-missing-directory"),
    pytest.param(("db", "current"), {"analyze_interval_seconds": -1},
                 "error: invalid setting(s): MONITOR_ANALYZE_INTERVAL_SECONDS: Input should be greater than or "
                 "equal to 0", id="bad-number"),
    pytest.param(("relabel", "show", "1"), {"db_auto_upgrade": "false"},
                 "error: the database schema is not at the latest migration: run `monitor db upgrade`",
                 id="schema-behind"),
])
def test_an_error_is_one_line_and_exit_2(tmp_path, args: tuple[str, ...], settings: dict[str, object],
                                         expected: str) -> None:
    result = run_in(tmp_path, *args, **settings)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "s3cret" not in result.stderr + result.stdout
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(expected), result.stderr
    if "database_url" in settings or "analyze_interval_seconds" in settings:
        assert list(tmp_path.iterdir()) == []  # never a fallback to the default store


@pytest.mark.parametrize("args", [
    pytest.param(("relabel", "list", "--limit", "0"), id="option-out-of-range"),
    pytest.param(("db", "prune", "--dry-rum"), id="unknown-option"),
])
def test_a_usage_error_is_typers_box_and_exit_2(tmp_path, args: tuple[str, ...]) -> None:
    result = run_in(tmp_path, *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Usage: monitor" in result.stderr and "Traceback" not in result.stderr
