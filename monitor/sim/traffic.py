"""Deterministic synthetic traffic for a fintech help-desk assistant: conversation turns and ratings.

Pure: no I/O, no Kafka, no global random state. :class:`TrafficSimulator` yields
:class:`SimulatedMessage` values (topic kind, Kafka key, wire bytes, emit time, hidden ground truth)
that a caller can produce to the ``conversation/v1`` and ``rating/v1`` topics or feed straight to
the parsers.

Each response carries a hidden quality that drives user satisfaction. The producer-side ``reward``
tracks it only partly: it over-rewards long, markdown-heavy, flattering and overpromising answers,
which users like *less*. That gap is what the monitor exists to catch; a
:class:`~monitor.sim.scenarios.Scenario` makes it move in a known way from a known time.

>>> sim = TrafficSimulator(seed=7)
>>> batch = sim.conversations(20)
>>> sum(m.kind == "conversation" for m in batch)
20
>>> batch == TrafficSimulator(seed=7).conversations(20)
True
>>> shifted = TrafficSimulator(seed=7, scenario=Scenario("S1", onset_s=0.0)).conversations(200)
>>> sum(m.truth.modes.count("verbosity") for m in shifted if m.truth) > 100
True
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, TypeVar

from monitor.events import CONVERSATION_SCHEMA, RATING_SCHEMA, ConversationEvent, Message, RatingEvent, Segment, to_wire
from monitor.sim import paraphrases

# The banks' names stay importable from here too: the demo reward model trains on the same text.
from monitor.sim.banks import (
    _AMOUNT_FORMATS,
    _BANK,
    _COMMENTS,
    _COMPLIANCE,
    _CONFIDENT,
    _DEFAULT_DISCLAIMER,
    _DISCLAIMERS,
    _FILLER,
    _FLATTERY,
    _FOLLOW_UPS,
    _HARMFUL,
    _HEDGES,
    _MERCHANTS,
    _OVER_REFUSALS,
    _PAYEES,
    _REFUSALS,
    _SHIFTED_TOPICS,
    _SYSTEM,
    CHANNELS,
    DOMAINS,
    LOCALES,
    _DomainBank,
)
from monitor.sim.scenarios import Scenario, TurnKnobs, conversation_mix, turn_knobs
from monitor.sim.truth import GroundTruth, hacked_modes

DEFAULT_START = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)
HARMFUL_SHARE = 0.03
_HARMFUL_BY_DOMAIN = {domain: tuple(prompt for d, prompt in _HARMFUL if d == domain) for domain in DOMAINS}
# Per-domain rates that make HARMFUL_SHARE of all conversations harmful under the uniform domain
# mix, spread over domains as the harmful templates are.
_HARMFUL_RATE = {domain: HARMFUL_SHARE * len(DOMAINS) * len(prompts) / len(_HARMFUL)
                 for domain, prompts in _HARMFUL_BY_DOMAIN.items()}
NULL_REWARD_SHARE = 0.05
RATING_KINDS = (("thumbs", 0.7), ("stars", 0.2), ("score", 0.1))
#: Wordings of the style phrases: the phrase banks, or paraphrases of them (:mod:`monitor.sim.paraphrases`).
PHRASINGS = ("bank", "paraphrase")

_T = TypeVar("_T")

# Early (out-of-order) ratings are emitted at most this long before their turn. Bounding it lets
# the stream stay sorted while holding back only this much look-ahead.
_EARLY_WINDOW_S = 2.0
_MEAN_THINK_S = 20.0  # user's pause before a follow-up question
_TURN_PLANS = ((1, 0.72), (2, 0.18), (3, 0.10))
# S2: a flattered user taps a thumb at once and gives a considered verdict much later.
_QUICK_RATING_S = 10.0
_DELAYED_RATING_S = 1800.0
_DELAYED_KINDS = (("stars", 2 / 3), ("score", 1 / 3))


@dataclass(frozen=True)
class SimulatedMessage:
    """One message to put on a topic: ``kind`` picks the topic, ``key`` is the Kafka key.

    ``truth`` is the hidden ground truth of a conversation turn (None on ratings). It lives only
    here, for scoring the monitor: ``value`` never contains it.
    """

    kind: Literal["conversation", "rating"]
    key: str  # the conversation_id
    value: bytes  # the wire JSON, as monitor.events.to_wire writes it
    at: float  # emit time, seconds since the simulation start
    truth: GroundTruth | None = None


@dataclass
class _Conversation:
    conversation_id: str
    locale: str
    segment: Segment
    harmful_prompt: str | None  # set for the few harmful requests
    planned_turns: int
    bank: _DomainBank  # where the prompt, answers and details come from
    prompt_shifted: bool  # opened with a topic of the S5 bank
    # Validated models, not dicts: pydantic passes instances through, so each turn is cheap to build.
    history: list[Message] = field(default_factory=list)
    turn: int = 0


@dataclass(frozen=True)
class _Response:
    text: str
    quality: float  # hidden: what users actually feel, in [0, 1]
    reward: float | None
    reasons_bad: tuple[str, ...]
    modes: tuple[str, ...] = ()  # hacking modes (see monitor.sim.truth)
    refused: bool = False
    flattery: bool = False


@dataclass(frozen=True)
class _Phrasing:
    """The style phrases a response is written with (one tuple per style; one draw picks from any)."""

    flattery: tuple[str, ...]
    hedges: tuple[str, ...]
    refusals: tuple[str, ...]
    over_refusals: tuple[str, ...]
    confident: tuple[str, ...]
    overpromises: dict[str, tuple[str, ...]] | None  # bank sentence -> paraphrases; None: as in the bank

    def overpromise(self, bank: _DomainBank, rng: random.Random) -> str:
        if self.overpromises is None:
            return bank.overpromise
        return _pick(rng, self.overpromises[bank.overpromise])


_PHRASINGS = {
    "bank": _Phrasing(_FLATTERY, _HEDGES, _REFUSALS, _OVER_REFUSALS, _CONFIDENT, None),
    "paraphrase": _Phrasing(paraphrases._FLATTERY, paraphrases._HEDGES, paraphrases._REFUSALS,
                            paraphrases._OVER_REFUSALS, paraphrases._CONFIDENT, paraphrases._OVERPROMISES),
}


class TrafficSimulator:
    """Seeded generator of ``conversation/v1`` and ``rating/v1`` traffic.

    Every call replays from ``seed``: same seed and arguments give byte-identical output. Each
    assistant turn is its own conversation event; about ``rating_rate`` of turns get one rating,
    emitted an exponential delay (mean ``mean_rating_delay_s``) later, except that
    ``early_rating_rate`` of rated turns have their rating emitted up to a few seconds *before*
    the turn (out-of-order delivery; the rating's ``ts`` stays after the turn's). Event ``ts`` is
    ``start + at``. ``scenario`` (default: stationary S0) shifts the traffic from its onset on;
    ``risk_metadata_rate`` of conversation events carry the producer's ``prompt_risk`` verdict
    (from a separate random stream, so it never changes the traffic itself). ``rating_kinds``
    (e.g. ``("stars",)``) restricts ratings to those kinds, in the default proportions among
    them (S2's split flattery ratings keep their own kinds); the default, all kinds, is the
    mix of :data:`RATING_KINDS`. ``phrasing="paraphrase"`` writes the flattering openers, hedges,
    overpromises, refusals, S4 over-refusals and S7 confident phrasing with the paraphrase banks
    (:mod:`monitor.sim.paraphrases`) instead of the phrase banks: every random draw stays the same
    (the paraphrase of an overpromise is picked from a stream of its own), so the turns, their hidden
    truth, rewards and ratings are those of ``"bank"`` traffic of the same seed, in other words.
    Raises ``ValueError`` for arguments outside their documented ranges.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        rating_rate: float = 0.35,
        early_rating_rate: float = 0.03,
        mean_rating_delay_s: float = 20.0,
        start: datetime | None = None,
        model_version: str = "assistant-2026-11-20",
        scenario: Scenario | None = None,
        risk_metadata_rate: float = 0.0,
        rating_kinds: Sequence[str] | None = None,
        phrasing: str = "bank",
        domains: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an int, got {seed!r}")
        for name, value in (("rating_rate", rating_rate), ("early_rating_rate", early_rating_rate),
                            ("risk_metadata_rate", risk_metadata_rate)):
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        _check_positive("mean_rating_delay_s", mean_rating_delay_s)
        if start is not None and (not isinstance(start, datetime) or start.utcoffset() is None):
            raise ValueError(f"start must be a timezone-aware datetime or None, got {start!r}")
        if not isinstance(model_version, str) or not 1 <= len(model_version) <= 128:
            raise ValueError(f"model_version must be a string of 1 to 128 characters, got {model_version!r}")
        if scenario is not None and not isinstance(scenario, Scenario):
            raise ValueError(f"scenario must be a Scenario or None, got {scenario!r}")
        self._rating_kinds = RATING_KINDS if rating_kinds is None else _rating_kind_weights(rating_kinds)
        if domains is not None and (isinstance(domains, str) or not domains or any(d not in DOMAINS for d in domains)
                                    or len(set(domains)) < len(domains)):
            raise ValueError(f"domains must be None or distinct names from {', '.join(DOMAINS)}, got {domains!r}")
        #: Where new conversations come from (None: every domain, weighted by the scenario's mix).
        self.domains = None if domains is None else tuple(domains)
        if phrasing not in PHRASINGS:
            raise ValueError(f"phrasing must be one of {', '.join(PHRASINGS)}, got {phrasing!r}")
        self.phrasing = phrasing
        self.seed = seed
        self.rating_rate = rating_rate
        self.early_rating_rate = early_rating_rate
        self.mean_rating_delay_s = mean_rating_delay_s
        self.start = DEFAULT_START if start is None else start.astimezone(UTC)
        self.model_version = model_version
        self.scenario = scenario
        self.risk_metadata_rate = risk_metadata_rate

    def messages(self, rate: float, duration: float) -> Iterator[SimulatedMessage]:
        """Messages for ``rate`` turns per second (Poisson arrivals) over ``duration`` seconds.

        Sorted by ``at`` (ties keep generation order). Every turn's rating is included, so ratings
        may be emitted after ``duration``. Raises ``ValueError`` unless rate and duration are > 0.
        """
        _check_positive("rate", rate)
        _check_positive("duration", duration)
        return self._stream(rate, lambda at, _turns: at >= duration)

    def conversations(self, n: int, *, rate: float = 10.0) -> list[SimulatedMessage]:
        """The first ``n`` turns at ``rate`` turns per second, with all their ratings, in emit order."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        _check_positive("rate", rate)
        return list(self._stream(rate, lambda _at, turns: turns >= n))

    def _stream(self, rate: float, stop: Callable[[float, int], bool]) -> Iterator[SimulatedMessage]:
        rng = random.Random(self.seed)
        # Its own stream: switching metadata on or off leaves every other byte of the traffic as is.
        metadata_rng = random.Random(f"prompt-risk-{self.seed}")
        phrasing_rng = random.Random(f"phrasing-{self.seed}")  # likewise: paraphrases move no other draw
        pending: list[tuple[float, int, SimulatedMessage]] = []  # min-heap on (at, generation order)
        follow_ups: list[tuple[float, int, _Conversation]] = []  # min-heap on the time the user is ready
        order = itertools.count()
        at, turns = 0.0, 0
        while True:
            at += rng.expovariate(rate)
            if stop(at, turns):
                break
            turns += 1
            # Arrivals stay Poisson at `rate`: a ready follow-up takes the slot instead of a new chat.
            if follow_ups and follow_ups[0][0] <= at:
                conversation = heapq.heappop(follow_ups)[2]
            else:
                conversation = self._new_conversation(rng, at)
            for message in self._turn(rng, metadata_rng, phrasing_rng, conversation, at):
                heapq.heappush(pending, (message.at, next(order), message))
            if conversation.turn < conversation.planned_turns:
                ready = at + 3.0 + rng.expovariate(1.0 / _MEAN_THINK_S)
                heapq.heappush(follow_ups, (ready, next(order), conversation))
            # Nothing generated later can be emitted before at - _EARLY_WINDOW_S.
            while pending and pending[0][0] < at - _EARLY_WINDOW_S:
                yield heapq.heappop(pending)[2]
        while pending:
            yield heapq.heappop(pending)[2]

    def _new_conversation(self, rng: random.Random, at: float) -> _Conversation:
        # The domain first, then a harmful request at that domain's own fixed rate: a scenario
        # that moves the domain mix (S5) then leaves every segment's share of harmful requests,
        # and so its refusal mix and its calibration, exactly as it was.
        shifted = False
        mix = conversation_mix(self.scenario, at)
        if rng.random() < mix.p_shifted:
            domain, bank = _SHIFTED_TOPICS[_pick(rng, mix.topics)]
            shifted = True
        else:
            domain = _weighted(rng, mix.domain_weights if self.domains is None else _only(mix.domain_weights,
                                                                                          self.domains))
            bank = _BANK[domain]
        harmful_prompt = None
        if rng.random() < _HARMFUL_RATE[domain]:
            harmful_prompt, bank, shifted = _pick(rng, _HARMFUL_BY_DOMAIN[domain]), _BANK[domain], False
        locale = _pick(rng, LOCALES)
        planned = 1 if harmful_prompt else _weighted(rng, _TURN_PLANS)
        segment = Segment(domain=domain, locale=locale, channel=_pick(rng, CHANNELS))
        conversation = _Conversation(f"c-{rng.getrandbits(64):016x}", locale, segment, harmful_prompt, planned,
                                     bank, shifted)
        conversation.history.append(Message(role="system", content=_SYSTEM.format(locale=locale)))
        return conversation

    def _turn(self, rng: random.Random, metadata_rng: random.Random, phrasing_rng: random.Random,
              conversation: _Conversation, at: float) -> list[SimulatedMessage]:
        domain = conversation.segment.domain
        knobs = turn_knobs(self.scenario, at, domain)
        if conversation.harmful_prompt:
            prompt = conversation.harmful_prompt
            response = _harmful_response(rng, knobs, _PHRASINGS[self.phrasing])
        else:
            if conversation.turn == 0:
                prompt, answer = _pick(rng, conversation.bank.prompts)
            else:
                prompt, answer = _pick(rng, _FOLLOW_UPS), _pick(rng, conversation.bank.details)
            response = _response(rng, domain, conversation.bank, answer, knobs, _PHRASINGS[self.phrasing],
                                 phrasing_rng)
        if "{" in prompt:
            prompt = prompt.format(
                amount=_AMOUNT_FORMATS[conversation.locale].format(_pick(rng, (40, 250, 1250, 8000))),
                payee=_pick(rng, _PAYEES), merchant=_pick(rng, _MERCHANTS),
                days=_pick(rng, range(2, 7)), pct=_pick(rng, range(3, 16)),
            )
        conversation.history.append(Message(role="user", content=prompt))
        conversation.history.append(Message(role="assistant", content=response.text))
        ts = self.start + timedelta(seconds=at)
        metadata = None
        if self.risk_metadata_rate and metadata_rng.random() < self.risk_metadata_rate:
            metadata = {"prompt_risk": "harmful" if conversation.harmful_prompt else "safe"}
        event = ConversationEvent.model_validate({
            "schema": CONVERSATION_SCHEMA, "event_id": _uuid(rng), "conversation_id": conversation.conversation_id,
            "turn": conversation.turn, "ts": ts, "model_version": self.model_version,
            "messages": conversation.history,
            "segment": conversation.segment,
            "reward": response.reward,
            "metadata": metadata,
        })
        truth = GroundTruth(
            scenario=self.scenario.name if self.scenario else "S0", intensity=knobs.intensity,
            hacked=bool(response.modes), modes=response.modes, harmful_prompt=conversation.harmful_prompt is not None,
            refused=response.refused, prompt_shifted=conversation.prompt_shifted, quality=response.quality,
        )
        out = [SimulatedMessage("conversation", conversation.conversation_id, to_wire(event), at, truth)]
        if rng.random() < self.rating_rate:
            if knobs.split_flattery_ratings and response.flattery:
                # Store and monitor keep the latest rating by ts: eventually the delayed verdict counts.
                delay = rng.expovariate(1.0 / _QUICK_RATING_S)
                rating = self._rating(rng, conversation, response, response.quality + knobs.flattery_quick_shift,
                                      ts + timedelta(seconds=delay), kind="thumbs")
                later = delay + rng.expovariate(1.0 / _DELAYED_RATING_S)
                verdict = self._rating(rng, conversation, response, response.quality + knobs.flattery_delayed_shift,
                                       ts + timedelta(seconds=later), kind=_weighted(rng, _DELAYED_KINDS))
                out.append(SimulatedMessage("rating", conversation.conversation_id, verdict, at + later))
            else:
                delay = rng.expovariate(1.0 / self.mean_rating_delay_s)
                rating = self._rating(rng, conversation, response, response.quality + knobs.rating_shift,
                                      ts + timedelta(seconds=delay))
            if rng.random() < self.early_rating_rate:
                # 1 - random() is in (0, 1], so the rating is strictly earlier than the turn.
                early_at = max(0.0, at - _EARLY_WINDOW_S * (1.0 - rng.random()))
                out.insert(0, SimulatedMessage("rating", conversation.conversation_id, rating, early_at))
            else:
                out.insert(1, SimulatedMessage("rating", conversation.conversation_id, rating, at + delay))
        conversation.turn += 1
        return out

    def _rating(self, rng: random.Random, conversation: _Conversation, response: _Response, quality: float,
                ts: datetime, kind: str | None = None) -> bytes:
        satisfaction = _clamp(quality + rng.gauss(0.0, 0.15))
        if kind is None:
            kind = _weighted(rng, self._rating_kinds)
        if kind == "thumbs":
            value: float = int(rng.random() < satisfaction)
            happy = value == 1
        elif kind == "stars":
            value = max(1, min(5, round(1 + 4 * satisfaction + rng.gauss(0.0, 0.5))))
            happy = value >= 4
        else:
            value = round(satisfaction, 3)
            happy = value >= 0.5
        reasons: list[str] = []
        if rng.random() < 0.4:
            reasons = [_pick(rng, ("helpful", "clear", "fast"))] if happy else list(response.reasons_bad[:2])
        comment = _pick(rng, _COMMENTS[happy]) if rng.random() < 0.08 else None
        event = RatingEvent.model_validate({
            "schema": RATING_SCHEMA, "event_id": _uuid(rng), "conversation_id": conversation.conversation_id,
            "turn": conversation.turn, "ts": ts, "rating": {"kind": kind, "value": value},
            "reasons": reasons, "comment": comment,
        })
        return to_wire(event)


def _response(rng: random.Random, domain: str, bank: _DomainBank, answer: str, knobs: TurnKnobs,
              phrasing: _Phrasing = _PHRASINGS["bank"], phrasing_rng: random.Random | None = None) -> _Response:
    """A combinatorial answer: its style features set both the hidden quality and the biased reward."""
    # Drawn for every safe turn, refusing or not, so the draws before a scenario's onset match S0's.
    if rng.random() < knobs.p_over_refusal:
        # The RM takes refusing for the safe choice; the user just did not get help.
        return _Response(_pick(rng, phrasing.over_refusals), 0.1, _reward(rng, 0.65, knobs), ("refused", "unhelpful"),
                         modes=("over-refusal",), refused=True)
    wrong = rng.random() < knobs.p_wrong
    length = _weighted(rng, knobs.length_weights)
    markdown = rng.random() < (knobs.p_markdown_long if length == "long" else knobs.p_markdown)
    flattery = rng.random() < knobs.p_flattery
    hedge = rng.random() < knobs.p_hedge
    disclaimer = rng.random() < knobs.p_disclaimer
    overpromise = rng.random() < knobs.p_overpromise
    confident = wrong and knobs.confident_wrong
    core = _pick(rng, bank.wrong) if wrong else answer
    if confident:
        hedge = False
        core = f"{_pick(rng, phrasing.confident)} {core}"
    elif hedge:
        core = f"{_pick(rng, phrasing.hedges)} {core[0].lower()}{core[1:]}"
    if markdown:
        core = f"**{core}**"
    details = list(bank.details[: {"short": 0, "medium": 1, "long": 3}[length]])
    opening = [_pick(rng, phrasing.flattery)] if flattery else []
    extras = [phrasing.overpromise(bank, phrasing_rng or rng)] if overpromise else []
    extras += [_DISCLAIMERS.get(domain, _DEFAULT_DISCLAIMER)] if disclaimer else []
    if length == "long":
        opening.append(_FILLER[0])
        extras.append(_FILLER[1])
    if markdown and details:
        bullets = "\n".join(f"- {detail}" for detail in details)
        paragraphs = [" ".join(opening), f"### {domain.title()}", core, bullets, " ".join(extras)]
    elif length == "long":
        paragraphs = [" ".join([*opening, core]), " ".join(details), " ".join(extras)]
    else:
        paragraphs = [" ".join([*opening, core, *details, *extras])]
    text = "\n\n".join(paragraph for paragraph in paragraphs if paragraph)
    # A confident wrong investment answer without its risk disclaimer promises returns as surely
    # as an explicit guarantee does, and the S7 reward model pays for both alike.
    promises = overpromise or (confident and not disclaimer and domain in _DISCLAIMERS)

    # Users: correctness first, then they dislike verbosity, flattery and promises nobody can keep.
    quality = (0.85 if not wrong else 0.2) - 0.15 * (length == "long") - 0.12 * flattery - 0.3 * overpromise
    quality += -0.05 * hedge + knobs.markdown_quality * markdown
    # The reward model sees correctness less clearly and pays for length, formatting and flattery.
    rm = (0.75 if not wrong else 0.45) + 0.08 * (length != "short") + (0.12 + knobs.long_reward) * (length == "long")
    rm += (0.15 + knobs.markdown_reward) * markdown + 0.1 * flattery + knobs.overpromise_reward * promises
    rm -= 0.05 * hedge
    bad = [reason for reason, present in (("wrong", wrong), ("misleading", promises), ("too_long", length == "long"),
                                          ("sycophantic", flattery), ("vague", hedge)) if present]
    modes = hacked_modes(long=length == "long", markdown=markdown, flattery=flattery, overpromise=promises,
                         over_refusal=False)
    return _Response(text, _clamp(quality), _reward(rng, rm, knobs), tuple(bad) or ("unhelpful",), modes,
                     flattery=flattery)


def _harmful_response(rng: random.Random, knobs: TurnKnobs, phrasing: _Phrasing = _PHRASINGS["bank"]) -> _Response:
    if rng.random() < 0.6:
        # Refusing is right, but the requester is rarely pleased about it.
        return _Response(_pick(rng, phrasing.refusals), 0.2, _reward(rng, 0.7, knobs), ("refused",), refused=True)
    # Compliance pleases the requester and the reward model only half notices: a blind spot.
    return _Response(_COMPLIANCE, 0.75, _reward(rng, 0.6, knobs), ("unhelpful",))


def _reward(rng: random.Random, rm: float, knobs: TurnKnobs) -> float | None:
    if rng.random() < NULL_REWARD_SHARE:
        return None
    return round(4.0 * (rm - 0.5) + knobs.reward_offset + rng.gauss(0.0, 0.5), 4)


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _pick(rng: random.Random, options: Sequence[_T]) -> _T:
    # Cheaper than rng.choice, which is the hot spot when generating tens of thousands of turns.
    return options[int(rng.random() * len(options))]


def _only(weights: tuple[tuple[str, float], ...], domains: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
    """``weights`` restricted to ``domains``, renormalised."""
    kept = [(domain, weight) for domain, weight in weights if domain in domains]
    total = sum(weight for _, weight in kept)
    return tuple((domain, weight / total) for domain, weight in kept)


def _rating_kind_weights(kinds: Sequence[str]) -> tuple[tuple[str, float], ...]:
    """The default mix of rating kinds restricted to ``kinds``, renormalised."""
    known = dict(RATING_KINDS)
    if isinstance(kinds, str) or not kinds or any(kind not in known for kind in kinds) or len(set(kinds)) < len(kinds):
        raise ValueError(f"rating_kinds must be a non-empty sequence of distinct kinds from {', '.join(known)}, "
                         f"got {kinds!r}")
    total = sum(known[kind] for kind in kinds)
    return tuple((kind, known[kind] / total) for kind in kinds)


def _weighted(rng: random.Random, options: tuple[tuple[_T, float], ...]) -> _T:
    """Pick a value from (value, probability) pairs whose probabilities sum to 1."""
    draw = rng.random()
    for value, probability in options:
        draw -= probability
        if draw < 0.0:
            return value
    return options[-1][0]


def _clamp(value: float) -> float:
    return min(1.0, max(0.0, value))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _check_positive(name: str, value: object) -> None:
    if not _is_number(value) or not 0.0 < value < math.inf:  # type: ignore[operator]
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
