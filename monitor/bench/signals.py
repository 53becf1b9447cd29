"""`monitor bench signals`: throughput of :func:`monitor.signals.derive_signals`, the production path.

Two kinds of text, each run twice through one fresh :class:`~monitor.style_model.StyleClassifier`
(empty cache, the process's already-loaded encoder):

- **simulator**: responses of ``TrafficSimulator(seed)``, boilerplate-heavy like production help-desk
  traffic, so a few hundred distinct sentences cover thousands of responses;
- **holdout-like**: responses of 2 to 6 sentences drawn from the labelled set's holdout split, each
  sentence tagged with a case number so that every one is new to the cache: free-form answers that
  repeat nothing, the worst case for the cache.

**cold** is the first pass (every distinct sentence encoded), **warm** the second (all cached).
The phrase-list-only :func:`~monitor.signals.response_signals` on the same rows is the baseline.
"""

from __future__ import annotations

import functools
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from monitor.events import parse_conversation
from monitor.signals import derive_signals, response_signals
from monitor.sim.traffic import TrafficSimulator
from monitor.style_model import StyleClassifier, shared_classifier, split_sentences
from monitor.style_training import load_labelled

Rows = list[tuple[str, str, str | None]]


@dataclass(frozen=True)
class ThroughputRow:
    text: str
    cache: str  # "cold", "warm" or "phrase lists only"
    responses: int
    sentences: int
    distinct_sentences: int
    seconds: float

    @property
    def responses_per_s(self) -> float:
        return self.responses / self.seconds

    @property
    def sentences_per_s(self) -> float:
        return self.sentences / self.seconds


@dataclass
class SignalsBenchmark:
    load_seconds: float  # the encoder's first load (0 when the process had it already)
    threads: int
    load_average: float
    rows: list[ThroughputRow] = field(default_factory=list)

    def report(self) -> str:
        lines = [f"derive_signals throughput ({self.threads} torch threads, 1-min load average "
                 f"{self.load_average:.1f}; encoder load {self.load_seconds:.1f} s)",
                 f"{'text':<14} {'cache':<18} {'responses':>9} {'sentences':>9} {'distinct':>8} "
                 f"{'responses/s':>12} {'sentences/s':>12}"]
        for r in self.rows:
            lines.append(f"{r.text:<14} {r.cache:<18} {r.responses:>9} {r.sentences:>9} {r.distinct_sentences:>8} "
                         f"{r.responses_per_s:>12.1f} {r.sentences_per_s:>12.1f}")
        return "\n".join(lines)


def simulator_rows(count: int, seed: int = 0) -> Rows:
    events = [parse_conversation(m.value) for m in TrafficSimulator(seed).conversations(count)
              if m.kind == "conversation"]
    return [(event.prompt, event.response, event.segment.domain) for event in events]


def holdout_like_rows(count: int, seed: int = 0) -> Rows:
    sentences = [s.text for s in load_labelled() if s.split == "holdout"]
    rng = random.Random(seed)
    case = iter(range(10**9))
    return [("How do I do this?", " ".join(f"{text[:-1]} (case {next(case)}){text[-1]}"
                                           for text in rng.sample(sentences, rng.randint(2, 6))), None)
            for _ in range(count)]


def _timed(text: str, cache: str, rows: Rows, run: Callable[[Rows], object]) -> ThroughputRow:
    sentences = [s for _, response, _ in rows for s in split_sentences(response)]
    started = time.perf_counter()
    run(rows)
    return ThroughputRow(text, cache, len(rows), len(sentences), len(set(sentences)), time.perf_counter() - started)


def run_signals_benchmark(*, count: int = 2000, seed: int = 0,
                          echo: Callable[[str], None] = print) -> SignalsBenchmark:
    """Cold and warm :func:`derive_signals` on ``count`` simulator and ``count`` holdout-like responses."""
    import torch

    started = time.perf_counter()
    shared = shared_classifier()
    shared.encoder.encode(["load the weights"])
    benchmark = SignalsBenchmark(time.perf_counter() - started, torch.get_num_threads(), os.getloadavg()[0])
    for text, rows in (("simulator", simulator_rows(count, seed)), ("holdout-like", holdout_like_rows(count, seed))):
        classifier = StyleClassifier(shared.heads, shared.encoder)
        for cache in ("cold", "warm"):
            echo(f"{text}, {cache} cache ...")
            benchmark.rows.append(_timed(text, cache, rows, functools.partial(derive_signals, classifier=classifier)))
        benchmark.rows.append(_timed(text, "phrase lists only", rows,
                                     lambda r: [response_signals(p, t, domain=d) for p, t, d in r]))
    return benchmark
