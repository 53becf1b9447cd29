"""`monitor bench redaction`: recall and precision of :mod:`monitor.redaction` per PII type on the
shipped corpora (:mod:`monitor.sim.pii_corpus`): the one the recognizers were tuned on and the
held-out one (other sentences and cue words, other draws).

* **recall** of a type: the share of its planted values whose every character (spaces and
  punctuation aside) ends up inside some placeholder: nothing of it survives;
* **precision** of a placeholder: the share of its findings that overlap a planted value (of any
  type; a NINO redacted as ``[NATIONAL_ID]`` is still redacted);
* **clean records**: findings in records that hold no PII (amounts, dates, reference numbers).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from monitor.redaction import Redactor
from monitor.sim.pii_corpus import CORPUS_PATH, HOLDOUT_PATH, TYPES, Record, load


@dataclass
class CorpusResult:
    name: str
    records: int
    seconds: float
    planted: Counter = field(default_factory=Counter)
    redacted: Counter = field(default_factory=Counter)  # planted values fully redacted
    found: Counter = field(default_factory=Counter)  # findings per placeholder
    right: Counter = field(default_factory=Counter)  # findings that overlap a planted value
    clean_findings: int = 0
    misses: list[tuple[str, str]] = field(default_factory=list)  # (type, value) not fully redacted

    def recall(self, kind: str) -> float:
        return self.redacted[kind] / self.planted[kind] if self.planted[kind] else float("nan")

    def precision(self, placeholder: str) -> float:
        return self.right[placeholder] / self.found[placeholder] if self.found[placeholder] else float("nan")


def measure(name: str, records: list[Record], redactor: Redactor | None = None) -> CorpusResult:
    redactor = redactor or Redactor()
    started = time.perf_counter()
    result = CorpusResult(name, len(records), 0.0)
    for record in records:
        findings = redactor.findings(record.text)
        covered = {i for f in findings for i in range(f.start, f.end)}
        for span in record.spans:
            result.planted[span["type"]] += 1
            chars = [i for i in range(span["start"], span["end"]) if record.text[i].isalnum()]
            if all(i in covered for i in chars):
                result.redacted[span["type"]] += 1
            else:
                result.misses.append((span["type"], span["value"]))
        for finding in findings:
            result.found[finding.placeholder] += 1
            result.right[finding.placeholder] += any(
                finding.start < span["end"] and span["start"] < finding.end for span in record.spans)
            result.clean_findings += not record.spans
    result.seconds = time.perf_counter() - started
    return result


def run_redaction_benchmark(echo: Callable[[str], None] = lambda line: None) -> list[CorpusResult]:
    redactor = Redactor()
    results = []
    for name, path in (("tuning", CORPUS_PATH), ("held out", HOLDOUT_PATH)):
        echo(f"{name}: {path}")
        results.append(measure(name, load(path), redactor))
    return results


def report(results: list[CorpusResult]) -> list[str]:
    lines = ["type         " + "  ".join(f"{r.name + ' recall':>18s}" for r in results)]
    for kind in TYPES:
        lines.append(f"{kind:12s} " + "  ".join(
            f"{r.redacted[kind]:>7d}/{r.planted[kind]:<4d} {r.recall(kind):5.2f}" for r in results))
    lines.append("placeholder  " + "  ".join(f"{r.name + ' precision':>18s}" for r in results))
    for placeholder in sorted({p for r in results for p in r.found}):
        lines.append(f"{placeholder:12s} " + "  ".join(
            f"{r.right[placeholder]:>7d}/{r.found[placeholder]:<4d} {r.precision(placeholder):5.2f}" for r in results))
    for r in results:
        lines.append(f"{r.name}: {r.records} records in {r.seconds:.1f} s ({r.records / r.seconds:.0f}/s), "
                     f"{r.clean_findings} findings in records without PII")
    return lines
