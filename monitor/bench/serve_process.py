"""`ServeProcess`: `monitor serve` in a process of its own, watched from outside.

A bench that runs `serve` as deployed in a thread of its own process cannot tell serve's memory
from its own; here serve is ``python -m monitor serve`` with the caller's environment and the
``MONITOR_*`` settings it is given on top (so ``MONITOR_ANALYZE_WINDOW_MINUTES=5 monitor bench soak``
tries another setting; with ``MONITOR_RM_MODEL`` unset, no reward model runs). The bench reads its
resident memory and CPU time with psutil and its log (JSON lines on stderr, monitor.logs) line by
line: the API's URL when it listens, every ERROR, and each analyzer run's summary.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from monitor.config import ENV_PREFIX
from monitor.errors import MonitorError

#: Log levels that count as errors (monitor.logs writes the level in lower case).
ERROR_LEVELS = frozenset({"error", "critical"})
_KEPT_LINES = 5


class ServeProcess:
    """Start ``python -m monitor serve`` with ``settings`` as ``MONITOR_*`` variables."""

    def __init__(self, settings: dict[str, str]) -> None:
        env = dict(os.environ)
        env.update({f"{ENV_PREFIX}{name.upper()}": value for name, value in settings.items()})
        self._process = subprocess.Popen(
            [sys.executable, "-m", "monitor", "serve"], env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, errors="replace",
        )
        self._psutil = psutil.Process(self._process.pid)
        self.error_lines = 0
        self.first_errors: list[str] = []
        self.warning_lines = 0
        self.first_warnings: list[str] = []
        self.tail: deque[str] = deque(maxlen=20)
        self.api_url: str | None = None
        #: Each analyzer run's log line: its counts, ``phase_seconds`` and ``seconds`` (their sum).
        self.analyzer_runs: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read_log, name="serve-log", daemon=True)
        self._reader.start()

    def _read_log(self) -> None:
        assert self._process.stderr is not None
        for line in self._process.stderr:
            line = line.rstrip("\n")
            self.tail.append(line)
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if isinstance(entry, dict):
                if entry.get("msg") in ("API listening", "probes listening"):  # probes: --role worker
                    self.api_url = str(entry.get("url"))
                elif entry.get("msg") == "analysis run" and isinstance(entry.get("phase_seconds"), dict):
                    run = {key: value for key, value in entry.items() if key not in ("level", "logger", "msg")}
                    self.analyzer_runs.append({**run, "seconds": sum(entry["phase_seconds"].values())})
                is_error = entry.get("level") in ERROR_LEVELS
                if entry.get("level") == "warning":
                    self.warning_lines += 1
                    if len(self.first_warnings) < _KEPT_LINES:
                        self.first_warnings.append(line[:2000])
            else:  # not one of our log lines: an uncaught exception's traceback is what matters
                is_error = line.startswith("Traceback")
            if is_error:
                self.error_lines += 1
                if len(self.first_errors) < _KEPT_LINES:
                    self.first_errors.append(line[:2000])

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    def rss_mib(self) -> float:
        try:
            return self._psutil.memory_info().rss / 2**20
        except psutil.Error as exc:
            self.check_running()
            raise MonitorError(f"cannot read serve's memory: {exc}") from exc

    def cpu_seconds(self) -> float:
        try:
            times = self._psutil.cpu_times()
        except psutil.Error as exc:
            self.check_running()
            raise MonitorError(f"cannot read serve's CPU time: {exc}") from exc
        return times.user + times.system

    def check_running(self) -> None:
        if not self.running:
            raise MonitorError(f"serve exited with status {self._process.returncode}; its last lines:\n"
                               + "\n".join(self.tail))

    def wait_ready(self, timeout: float) -> str:
        """Wait until the API listens and ``/readyz`` says 200 (store and broker reachable)."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            self.check_running()
            if self.api_url is not None:
                try:
                    response = httpx.get(f"{self.api_url}/readyz", timeout=2)
                    if response.status_code == 200:
                        return self.api_url
                    last = response.text[:500]
                except httpx.HTTPError as exc:
                    last = str(exc)
            time.sleep(0.2)
        raise MonitorError(f"serve not ready after {timeout:.0f} s: {last}")

    def counter(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples (with these labels) on serve's ``/metrics`` now."""
        if self.api_url is None:
            raise MonitorError("serve's API is not listening")
        try:
            text = httpx.get(f"{self.api_url}/metrics", timeout=10).text
        except httpx.HTTPError as exc:
            raise MonitorError(f"cannot read serve's metrics: {exc}") from exc
        return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                   if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))

    def stop(self, timeout: float) -> int | None:
        """SIGTERM, then wait for the exit status; killed (and None) if it does not exit in time."""
        if self.running:
            self._process.send_signal(signal.SIGTERM)
        try:
            code: int | None = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
            code = None
        self._reader.join(timeout=5)
        return code
