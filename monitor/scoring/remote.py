"""`RemoteScorer`: the reward model served elsewhere (a GPU box, a model server), over HTTP.

It speaks the JSON protocol documented in :mod:`monitor.scoring.server` (``POST {url}/v1/score``),
so any server implementing that contract can score for the monitor.

* **Chunks, concurrently**: a call is split into requests of at most ``max_batch`` conversations,
  with at most ``max_concurrency`` of them in flight; outcomes come back in event order.
* **Retries**: a request that fails to connect, times out or gets a 5xx is retried after
  ``backoff_s * 2**retry`` seconds, up to ``retries`` times; a 4xx is our bug and is not retried.
  When the retries are spent the call raises :class:`~monitor.errors.ScoringError`, so the ingest
  loop fails the batch, commits no offsets and tries it again later: nothing is lost.
* **Provenance**: ``identity`` is ``remote:`` + the identity the server reports, refreshed from
  every response, so swapping the model on the server shows up in the stored scores. All chunks of
  one call must come from the same model, otherwise the call fails (and is retried whole).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from types import TracebackType

import httpx
from pydantic import ValidationError

from monitor.errors import ScoringError
from monitor.scoring.base import ScoredTurn, ScoreOutcome, conversations_of
from monitor.scoring.server import MAX_CONVERSATIONS, ModelInfo, ScoreResponse

log = logging.getLogger(__name__)

Conversation = Sequence[Mapping[str, str]]

#: Health and identity probes must answer fast: a readiness check should not hang on a dead box.
PROBE_TIMEOUT_S = 2.0
#: After a failed identity lookup, how long ``identity`` answers with the URL before asking again.
IDENTITY_RECHECK_S = 5.0


class RemoteScorer:
    """Scores through a reward-model server; ``url`` is its base (``http://gpu-box:8000``)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        max_concurrency: int = 4,
        max_batch: int = 256,
    ) -> None:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ValueError(f"url must be an http:// or https:// URL, got {url!r}") from exc
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"url must be an http:// or https:// URL with a host, got {url!r}")
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if not 0 <= retries <= 20:
            raise ValueError(f"retries must be in 0..20, got {retries!r}")
        if not (math.isfinite(backoff_s) and backoff_s >= 0):
            raise ValueError(f"backoff_s must be >= 0, got {backoff_s!r}")
        if not 1 <= max_concurrency <= 64:
            raise ValueError(f"max_concurrency must be in 1..64, got {max_concurrency!r}")
        if not 1 <= max_batch <= MAX_CONVERSATIONS:
            raise ValueError(f"max_batch must be in 1..{MAX_CONVERSATIONS} (the protocol's cap), got {max_batch!r}")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_concurrency = max_concurrency
        self.max_batch = max_batch
        limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
        self._client = httpx.Client(timeout=timeout_s, limits=limits)
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="remote-scorer")
        self._server_identity: str | None = None
        self._identity_checked_at = -math.inf

    # -- the Scorer seam ------------------------------------------------------------------------
    @property
    def identity(self) -> str:
        if self._server_identity is None and time.monotonic() - self._identity_checked_at >= IDENTITY_RECHECK_S:
            self._identity_checked_at = time.monotonic()
            self._server_identity = self._fetch_identity()
        return f"remote:{self._server_identity or self.url}"

    def score(self, events: Sequence[ScoredTurn]) -> list[ScoreOutcome]:
        return self.score_conversations(conversations_of(events))

    def score_conversations(self, conversations: Sequence[Conversation]) -> list[ScoreOutcome]:
        """One outcome per conversation (last message = the response), in order."""
        payload = [[{"role": m["role"], "content": m["content"]} for m in c] for c in conversations]
        chunks = [payload[start:start + self.max_batch] for start in range(0, len(payload), self.max_batch)]
        if not chunks:
            return []
        if len(chunks) == 1:
            results = [self._post_with_retries(chunks[0])]
        else:
            results = self._post_concurrently(chunks)
        models = {model for model, _ in results}
        if len(models) > 1:
            raise ScoringError(f"remote scorer {self.url} changed model during one call ({', '.join(sorted(models))})")
        self._server_identity = models.pop()
        return [outcome for _, outcomes in results for outcome in outcomes]

    # -- readiness and lifecycle ----------------------------------------------------------------
    def ping(self) -> bool:
        """Whether the server answers its health check (quickly; no retries)."""
        try:
            response = self._client.get(f"{self.url}/healthz", timeout=min(self.timeout_s, PROBE_TIMEOUT_S))
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    def __enter__(self) -> RemoteScorer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------
    def _post_concurrently(self, chunks: list[list[list[dict[str, str]]]]) -> list[tuple[str, list[ScoreOutcome]]]:
        futures: list[Future[tuple[str, list[ScoreOutcome]]]] = [
            self._pool.submit(self._post_with_retries, chunk) for chunk in chunks
        ]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in done:
            error = future.exception()
            if error is not None:
                # The batch fails as a whole: requests not yet sent would be wasted work.
                for other in pending:
                    other.cancel()
                raise error
        return [future.result() for future in futures]

    def _post_with_retries(self, chunk: list[list[dict[str, str]]]) -> tuple[str, list[ScoreOutcome]]:
        attempts = self.retries + 1
        last_error = ""
        last_exc: Exception | None = None
        for attempt in range(attempts):
            if attempt:
                delay = self.backoff_s * 2 ** (attempt - 1)
                log.warning("remote scorer request failed; retrying",
                            extra={"url": self.url, "error": last_error, "retry_in_s": delay})
                time.sleep(delay)
            try:
                response = self._client.post(f"{self.url}/v1/score", json={"conversations": chunk})
            except httpx.TransportError as exc:  # connect errors, timeouts, dropped connections
                last_error, last_exc = f"{exc.__class__.__name__}: {exc}", exc
                continue
            if response.status_code >= 500:
                last_error, last_exc = f"HTTP {response.status_code}: {_error_message(response)}", None
                continue
            if response.status_code != 200:
                raise ScoringError(f"remote scorer {self.url} rejected the request "
                                   f"(HTTP {response.status_code}, not retried): {_error_message(response)}")
            return self._parse(response, len(chunk))
        raise ScoringError(f"remote scorer {self.url} failed after {attempts} attempt(s): {last_error}") from last_exc

    def _parse(self, response: httpx.Response, expected: int) -> tuple[str, list[ScoreOutcome]]:
        try:
            body = ScoreResponse.model_validate_json(response.content)
        except ValidationError as exc:
            raise ScoringError(f"remote scorer {self.url} sent a response that breaks the protocol: {exc}") from exc
        if len(body.outcomes) != expected:
            raise ScoringError(f"remote scorer {self.url} returned {len(body.outcomes)} outcomes "
                               f"for {expected} conversations")
        return body.model, [ScoreOutcome(o.score, error=o.error, truncated=o.truncated) for o in body.outcomes]

    def _fetch_identity(self) -> str | None:
        try:
            response = self._client.get(f"{self.url}/v1/model", timeout=min(self.timeout_s, PROBE_TIMEOUT_S))
            if response.status_code == 200:
                return ModelInfo.model_validate_json(response.content).identity
        except (httpx.HTTPError, ValidationError):
            pass
        return None


def _error_message(response: httpx.Response) -> str:
    """The server's ``{"error": {"message"}}`` when it sent one, else the start of the body."""
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or response.reason_phrase
