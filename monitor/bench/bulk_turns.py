"""Bulk-load synthetic turns (and their ratings) straight into a migrated store, by COPY.

For benchmarks that need a store of a given size fast, without the Kafka ingest path. The text
comes from :class:`~monitor.sim.traffic.TrafficSimulator`: a pool of simulated turns (a few thousand
by default), each with its producer reward, a rating's satisfaction, its signals and prompt risk
worked out once, tiled over as many turns as asked: ``pool`` consecutive turns are all distinct.
Turn ``i`` happens at ``start + i / rate`` (event time) in a conversation of its own; about
``rated_share`` of turns are rated once, an exponential delay after the turn (their ``ratings`` row
is joined). Turns are written either *derived* (signals and prompt risk set, as the analyzer leaves
them) or not (NULL, as ingest writes them). ``unique_sentences`` tags every sentence of a response
with its turn's number, so no sentence repeats and the sentence classifier's cache never helps: the
cost of text as varied as production's.

Rows are written in COPY's text format from pre-escaped pieces, so PostgreSQL's index maintenance
is what a load waits on (1M turns in about 2 minutes on a busy 2-core machine).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import psycopg

from monitor.events import parse_conversation, parse_rating
from monitor.risk import is_harmful
from monitor.signals import SIGNAL_COLUMNS, response_signals
from monitor.sim.traffic import TrafficSimulator

TURNS_PER_SECOND = 10.0
RATED_SHARE = 0.3
MEAN_RATING_DELAY_S = 60.0
MODEL_VERSION = "assistant-2026-11-20"
SCORER = "producer"
#: Turns per COPY (and per transaction).
CHUNK = 50_000

_TURN_COLUMNS = ("event_id", "conversation_id", "turn", "ts", "model_version", "domain", "locale", "channel",
                 "messages", "prompt", "response", "producer_reward", "score", "scorer", "score_truncated",
                 "satisfaction", "rating_count", "rated_at", *SIGNAL_COLUMNS, "prompt_harmful",
                 "prompt_risk_source", "source_topic", "source_partition", "source_offset", "ingested_at")
_RATING_COLUMNS = ("event_id", "conversation_id", "turn", "ts", "kind", "value", "satisfaction", "reasons",
                   "comment", "joined", "source_topic", "source_partition", "source_offset", "ingested_at",
                   "entry_at")
_NULL = r"\N"
_MESSAGES = '[{"role": "assistant", "content": "(bench)"}]'  # tiny: the analyzer never reads it
_PARTITIONS = 3


@dataclass(frozen=True)
class _Template:
    """One simulated turn, its fields already in COPY text form."""

    domain: str
    locale: str
    channel: str
    prompt: str
    response: str
    response_text: str  # unescaped
    reward: str
    satisfaction: str
    signals: str  # the sig_* values, tab-separated
    harmful: str


def _copy_text(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _templates(seed: int, count: int) -> list[_Template]:
    """``count`` distinct simulated turns; every one rated, so each carries a realistic satisfaction."""
    messages = TrafficSimulator(seed, rating_rate=1.0, early_rating_rate=0.0).conversations(count)
    satisfaction: dict[tuple[str, int], float] = {}
    for message in messages:
        if message.kind == "rating":
            rating = parse_rating(message.value)
            satisfaction.setdefault((rating.conversation_id, rating.turn), rating.satisfaction)
    out = []
    for message in messages:
        if message.kind != "conversation":
            continue
        event = parse_conversation(message.value)
        signals = response_signals(event.prompt, event.response, domain=event.segment.domain).as_columns()
        reward = _NULL if event.reward is None else repr(float(event.reward))
        out.append(_Template(
            domain=event.segment.domain, locale=event.segment.locale or _NULL, channel=event.segment.channel or _NULL,
            prompt=_copy_text(event.prompt), response=_copy_text(event.response), response_text=event.response,
            reward=reward,
            satisfaction=repr(satisfaction[(event.conversation_id, event.turn)]),
            signals="\t".join(repr(float(signals[column])) for column in SIGNAL_COLUMNS),
            harmful="t" if is_harmful(event.prompt) else "f",
        ))
    return out


_SENTENCE_END = re.compile(r"([.!?])(?=\s|$)")


def tag_sentences(text: str, number: int) -> str:
    """``text`` with ``(ref N)`` before every sentence's end, so each sentence is one of a kind:

    >>> tag_sentences("Yes. It works!\\n- a list item", 7)
    'Yes (ref 7). It works (ref 7)!\\n- a list item (ref 7)'
    """
    lines = []
    for line in text.split("\n"):
        tagged = _SENTENCE_END.sub(rf" (ref {number})\1", line)
        if tagged == line and line.strip():
            tagged = f"{line} (ref {number})"
        lines.append(tagged)
    return "\n".join(lines)


def _uuid(prefix: str, index: int) -> str:
    return f"{prefix[:8]}-{prefix[8:12]}-{prefix[12:16]}-{prefix[16:20]}-{index:012x}"


def _timestamps(start: np.datetime64, seconds: np.ndarray) -> list[str]:
    """ISO text (UTC) of ``start + seconds``, vectorised."""
    values = start + np.round(seconds * 1e6).astype("timedelta64[us]")
    return [f"{text}+00" for text in np.datetime_as_string(values, unit="us")]


class SyntheticTurns:
    """Writes turns ``first .. first + count - 1`` of one synthetic stream into a store.

    >>> SyntheticTurns(datetime.fromisoformat("2026-01-01T00:00:00+00:00")).event_time(25)
    datetime.datetime(2026, 1, 1, 0, 0, 2, 500000, tzinfo=datetime.timezone.utc)
    """

    def __init__(self, start: datetime, *, seed: int = 0, pool: int = 3000, rate: float = TURNS_PER_SECOND,
                 rated_share: float = RATED_SHARE, mean_rating_delay_s: float = MEAN_RATING_DELAY_S) -> None:
        if start.utcoffset() is None:
            raise ValueError("start must be a timezone-aware datetime")
        if pool < 1 or rate <= 0 or not 0 <= rated_share <= 1 or mean_rating_delay_s <= 0:
            raise ValueError(f"need pool >= 1, rate > 0, 0 <= rated_share <= 1 and mean_rating_delay_s > 0; got "
                             f"{pool}, {rate}, {rated_share}, {mean_rating_delay_s}")
        self.start = start
        self.seed = seed
        self.rate = rate
        self.rated_share = rated_share
        self.mean_rating_delay_s = mean_rating_delay_s
        self._pool = pool
        self._templates: list[_Template] | None = None
        # Distinct 20-hex-digit prefixes keep the event ids of turns and ratings (and of two runs) apart.
        prefix = random.Random(f"bulk-{seed}-{start.isoformat()}").getrandbits(80)
        self._turn_ids = f"{prefix:020x}"
        self._rating_ids = f"{prefix ^ 1:020x}"

    def event_time(self, index: int) -> datetime:
        return datetime.fromtimestamp(self.start.timestamp() + index / self.rate, self.start.tzinfo)

    def load(self, url: str, first: int, count: int, *, derived: bool, unique_sentences: bool = False,
             progress: Callable[[int], None] | None = None) -> int:
        """COPY turns ``first ..`` into ``url`` (a psycopg URL), ``CHUNK`` per transaction; returns the
        ratings written. ``derived``: with their signals and prompt risk set, else NULL (and then
        ``unique_sentences`` makes every sentence of every response new: :func:`tag_sentences`)."""
        if derived and unique_sentences:
            raise ValueError("unique_sentences is for turns still to derive (derived=False)")
        if self._templates is None:
            self._templates = _templates(self.seed, self._pool)
        rng = np.random.default_rng([self.seed, first])
        start = np.datetime64(round(self.start.timestamp() * 1e6), "us")
        ratings = 0
        with psycopg.connect(url) as connection:
            for offset in range(0, count, CHUNK):
                size = min(CHUNK, count - offset)
                ratings += self._copy_chunk(connection, rng, start, first + offset, size, derived, unique_sentences)
                connection.commit()
                if progress:
                    progress(offset + size)
        return ratings

    def _copy_chunk(self, connection: psycopg.Connection, rng: np.random.Generator, start: np.datetime64,
                    first: int, size: int, derived: bool, unique_sentences: bool = False) -> int:
        templates = self._templates
        assert templates is not None
        index = np.arange(first, first + size)
        seconds = index / self.rate
        picks = (index % len(templates)).tolist()  # so `pool` consecutive turns are all distinct
        rated = (rng.random(size) < self.rated_share).tolist()
        rated_seconds = seconds + rng.exponential(self.mean_rating_delay_s, size)
        ts, rated_ts = _timestamps(start, seconds), _timestamps(start, rated_seconds)
        ingested = _timestamps(start, seconds + 0.5)
        unknown = "\t".join([_NULL] * (len(SIGNAL_COLUMNS) + 2))
        turns, rating_lines = [], []
        for k, i in enumerate(index.tolist()):
            t = templates[picks[k]]
            conversation = f"bench-{i:010d}"
            partition, source_offset = i % _PARTITIONS, i // _PARTITIONS
            if rated[k]:
                # The rating comes after its turn, so its own ts is its entry time.
                rating = f"{t.satisfaction}\t1\t{rated_ts[k]}"
                rating_lines.append(f"{_uuid(self._rating_ids, i)}\t{conversation}\t0\t{rated_ts[k]}\tscore\t"
                                    f"{t.satisfaction}\t{t.satisfaction}\t[]\t{_NULL}\tt\tratings\t{partition}\t"
                                    f"{source_offset}\t{rated_ts[k]}\t{rated_ts[k]}\n")
            else:
                rating = f"{_NULL}\t0\t{_NULL}"
            derived_values = f"{t.signals}\t{t.harmful}\tclassifier" if derived else unknown
            response = _copy_text(tag_sentences(t.response_text, i)) if unique_sentences else t.response
            turns.append(f"{_uuid(self._turn_ids, i)}\t{conversation}\t0\t{ts[k]}\t{MODEL_VERSION}\t{t.domain}\t"
                         f"{t.locale}\t{t.channel}\t{_MESSAGES}\t{t.prompt}\t{response}\t{t.reward}\t"
                         f"{t.reward}\t{SCORER}\tf\t{rating}\t{derived_values}\tconversations\t{partition}\t"
                         f"{source_offset}\t{ingested[k]}\n")
        with connection.cursor() as cursor:
            with cursor.copy(f"COPY turns ({', '.join(_TURN_COLUMNS)}) FROM STDIN") as copy:
                copy.write("".join(turns))
            if rating_lines:
                with cursor.copy(f"COPY ratings ({', '.join(_RATING_COLUMNS)}) FROM STDIN") as copy:
                    copy.write("".join(rating_lines))
        return len(rating_lines)
