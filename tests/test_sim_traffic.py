"""The traffic simulator: deterministic, contract-valid, sorted, with the mix of traffic it promises."""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from monitor.events import ConversationEvent, RatingEvent, parse_conversation, parse_rating
from monitor.sim import SimulatedMessage, TrafficSimulator, banks, paraphrases
from monitor.sim.scenarios import Scenario
from monitor.sim.traffic import DEFAULT_START, DOMAINS

HARMFUL_MARKERS = ("doesn't get flagged", "reporting threshold", "without getting caught", "passes your KYC",
                   "asking customers for their login")


def _parse(message: SimulatedMessage) -> ConversationEvent | RatingEvent:
    return parse_conversation(message.value) if message.kind == "conversation" else parse_rating(message.value)


@pytest.fixture(scope="module")
def stream() -> list[SimulatedMessage]:
    return list(TrafficSimulator(seed=11).messages(rate=40.0, duration=120.0))


@pytest.fixture(scope="module")
def parsed(stream: list[SimulatedMessage]) -> list[ConversationEvent | RatingEvent]:
    return [_parse(message) for message in stream]


def _turns(parsed: list[ConversationEvent | RatingEvent]) -> list[ConversationEvent]:
    return [event for event in parsed if isinstance(event, ConversationEvent)]


def _ratings(parsed: list[ConversationEvent | RatingEvent]) -> list[RatingEvent]:
    return [event for event in parsed if isinstance(event, RatingEvent)]


def test_same_seed_gives_identical_bytes() -> None:
    first = list(TrafficSimulator(seed=3).messages(rate=20.0, duration=30.0))
    second = list(TrafficSimulator(seed=3).messages(rate=20.0, duration=30.0))
    assert first == second
    assert [m.value for m in first] == [m.value for m in second]


def test_each_call_replays_from_the_seed() -> None:
    simulator = TrafficSimulator(seed=3)
    assert simulator.conversations(50) == simulator.conversations(50)


def test_different_seeds_differ() -> None:
    first = [m.value for m in TrafficSimulator(seed=1).messages(rate=20.0, duration=30.0)]
    second = [m.value for m in TrafficSimulator(seed=2).messages(rate=20.0, duration=30.0)]
    assert first != second


def test_every_message_passes_the_strict_parsers(stream: list[SimulatedMessage], parsed: list) -> None:
    for message, event in zip(stream, parsed, strict=True):
        assert message.key == event.conversation_id
        assert event.ts.utcoffset() == timedelta(0)
    assert {m.kind for m in stream} == {"conversation", "rating"}


def test_output_is_sorted_by_emit_time(stream: list[SimulatedMessage]) -> None:
    times = [m.at for m in stream]
    assert times == sorted(times)
    assert times[0] >= 0.0


def test_conversation_ts_is_start_plus_emit_time(stream: list[SimulatedMessage], parsed: list) -> None:
    for message, event in zip(stream, parsed, strict=True):
        if message.kind == "conversation":
            assert abs((event.ts - DEFAULT_START).total_seconds() - message.at) < 1e-5


def test_start_moves_the_timestamps() -> None:
    start = datetime(2027, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    first = TrafficSimulator(seed=5, start=start).conversations(1)[0]
    event = parse_conversation(first.value)
    assert event.ts.utcoffset() == timedelta(0)
    assert abs((event.ts - start).total_seconds() - first.at) < 1e-5


def test_event_ids_are_unique_uuid4s(parsed: list) -> None:
    ids = [event.event_id for event in parsed]
    assert len(set(ids)) == len(ids)
    assert {event_id.version for event_id in ids} == {4}


def test_rating_rate_is_close_to_the_setting_and_below_one(parsed: list) -> None:
    turns, ratings = _turns(parsed), _ratings(parsed)
    share = len(ratings) / len(turns)
    assert share == pytest.approx(0.35, abs=0.04)
    assert share < 1.0
    rated = Counter((r.conversation_id, r.turn) for r in ratings)
    assert max(rated.values()) == 1  # at most one rating per turn
    assert set(rated) <= {(t.conversation_id, t.turn) for t in turns}  # every rating is for a generated turn


def test_rating_rate_setting_is_honoured() -> None:
    parsed = [_parse(m) for m in TrafficSimulator(seed=2, rating_rate=0.8).conversations(2000)]
    assert len(_ratings(parsed)) / len(_turns(parsed)) == pytest.approx(0.8, abs=0.04)
    none = TrafficSimulator(seed=2, rating_rate=0.0).conversations(500)
    assert {m.kind for m in none} == {"conversation"}


def test_rating_kinds_are_mixed_with_thumbs_most_common(parsed: list) -> None:
    kinds = Counter(r.rating.kind for r in _ratings(parsed))
    assert set(kinds) == {"thumbs", "stars", "score"}
    assert kinds.most_common(1)[0][0] == "thumbs"
    assert any(r.reasons for r in _ratings(parsed))
    assert any(r.comment for r in _ratings(parsed))


@pytest.mark.parametrize("kinds", [("stars",), ("thumbs", "score")])
def test_rating_kinds_can_be_restricted(kinds: tuple[str, ...]) -> None:
    ratings = _ratings([_parse(m) for m in TrafficSimulator(seed=3, rating_kinds=kinds).conversations(600)])
    assert {r.rating.kind for r in ratings} == set(kinds) and len(ratings) > 150
    # The default is the full mix, unchanged: the same seed gives the same bytes with or without it spelled out.
    assert (TrafficSimulator(seed=3).conversations(300)
            == TrafficSimulator(seed=3, rating_kinds=("thumbs", "stars", "score")).conversations(300))
    with pytest.raises(ValueError, match="rating_kinds must be a non-empty sequence of distinct kinds"):
        TrafficSimulator(rating_kinds=("likes",))
    with pytest.raises(ValueError, match="rating_kinds must be"):
        TrafficSimulator(rating_kinds="stars")


def test_some_ratings_are_emitted_before_their_turn() -> None:
    stream = TrafficSimulator(seed=4, early_rating_rate=0.1).conversations(3000)
    turn_at = {(m.key, _parse(m).turn): (i, m.at) for i, m in enumerate(stream) if m.kind == "conversation"}
    early = 0
    for index, message in enumerate(stream):
        if message.kind == "rating":
            rating = parse_rating(message.value)
            turn_index, at = turn_at[(rating.conversation_id, rating.turn)]
            if index < turn_index:
                early += 1
                assert message.at < at
                # Event time still follows the turn: only delivery is out of order.
                assert rating.ts >= DEFAULT_START + timedelta(seconds=at)
    ratings = sum(m.kind == "rating" for m in stream)
    assert 0 < early < ratings
    assert early / ratings == pytest.approx(0.1, abs=0.04)


def test_ratings_after_the_duration_are_still_emitted() -> None:
    stream = list(TrafficSimulator(seed=6, mean_rating_delay_s=60.0).messages(rate=10.0, duration=30.0))
    assert all(m.at < 30.0 for m in stream if m.kind == "conversation")
    assert any(m.at > 30.0 for m in stream if m.kind == "rating")


def test_multi_turn_conversations_grow_their_history(parsed: list) -> None:
    by_conversation: dict[str, list[ConversationEvent]] = {}
    for event in _turns(parsed):
        by_conversation.setdefault(event.conversation_id, []).append(event)
    multi = [events for events in by_conversation.values() if len(events) > 1]
    assert multi
    assert any(len(events) == 3 for events in multi)
    for events in multi:
        assert [e.turn for e in events] == list(range(len(events)))
        for earlier, later in zip(events, events[1:], strict=False):
            assert later.messages[: len(earlier.messages)] == earlier.messages
            assert len(later.messages) == len(earlier.messages) + 2
            assert later.ts > earlier.ts
        assert all(e.messages[-1].role == "assistant" for e in events)
    assert all(e.conversation_id.startswith("c-") for e in _turns(parsed))


def test_domains_locales_channels_and_harmful_prompts_appear(parsed: list) -> None:
    turns = _turns(parsed)
    assert {t.segment.domain for t in turns} == set(DOMAINS)
    assert {t.segment.locale for t in turns} == {"en-GB", "en-US", "de-DE", "fr-FR"}
    assert {t.segment.channel for t in turns} == {"app", "web"}
    harmful = [t for t in turns if any(marker in t.prompt for marker in HARMFUL_MARKERS)]
    assert 0.01 < len(harmful) / len(turns) < 0.06
    assert {t.segment.domain for t in harmful} <= {"payments", "cards", "fraud"}
    refusals = sum("can't" in t.response for t in harmful)
    assert 0 < refusals < len(harmful)  # some refused, some complied


def test_responses_vary_in_style(parsed: list) -> None:
    responses = [t.response for t in _turns(parsed)]
    assert any("###" in r and "\n- " in r for r in responses)
    assert any("\n" not in r and len(r) < 200 for r in responses)
    assert any(r.count("\n\n") >= 2 for r in responses)
    assert any(r.startswith("Great question!") for r in responses)
    assert any("guarantee" in r for r in responses)


def test_reward_is_mostly_present(parsed: list) -> None:
    rewards = [t.reward for t in _turns(parsed)]
    missing = sum(r is None for r in rewards) / len(rewards)
    assert 0.01 < missing < 0.1


def test_users_are_less_satisfied_than_the_reward_with_long_answers() -> None:
    stream = TrafficSimulator(seed=8, rating_rate=1.0).conversations(4000)
    turns = {(e.conversation_id, e.turn): e for e in map(_parse, stream) if isinstance(e, ConversationEvent)}
    satisfaction: dict[bool, list[float]] = {True: [], False: []}
    reward: dict[bool, list[float]] = {True: [], False: []}
    for message in stream:
        if message.kind == "rating":
            rating = parse_rating(message.value)
            turn = turns[(rating.conversation_id, rating.turn)]
            is_long = turn.response.count("\n\n") >= 2
            satisfaction[is_long].append(rating.satisfaction)
            if turn.reward is not None:
                reward[is_long].append(turn.reward)

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    assert mean(reward[True]) > mean(reward[False])
    assert mean(satisfaction[True]) < mean(satisfaction[False])


def test_rate_and_duration_set_the_number_of_turns() -> None:
    for rate, duration in ((5.0, 200.0), (100.0, 20.0)):
        stream = TrafficSimulator(seed=9).messages(rate=rate, duration=duration)
        turns = sum(m.kind == "conversation" for m in stream)
        expected = rate * duration
        assert abs(turns - expected) < 5 * expected**0.5  # Poisson: sd = sqrt(mean)


def test_conversations_returns_n_turns() -> None:
    stream = TrafficSimulator(seed=1).conversations(300)
    assert sum(m.kind == "conversation" for m in stream) == 300
    assert TrafficSimulator(seed=1).conversations(0) == []


def test_generating_many_turns_is_fast() -> None:
    began = time.perf_counter()
    stream = TrafficSimulator(seed=12).conversations(5000, rate=100.0)
    assert time.perf_counter() - began < 5.0  # 50,000 turns take a few seconds; this is a loose guard
    assert sum(m.kind == "conversation" for m in stream) == 5000


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rating_rate": 1.5}, r"rating_rate must be a number in \[0, 1\]"),
        ({"rating_rate": -0.1}, r"rating_rate must be a number in \[0, 1\]"),
        ({"early_rating_rate": 2}, r"early_rating_rate must be a number in \[0, 1\]"),
        ({"rating_rate": float("nan")}, "rating_rate"),
        ({"mean_rating_delay_s": 0}, "mean_rating_delay_s must be a finite number > 0"),
        ({"mean_rating_delay_s": float("inf")}, "mean_rating_delay_s"),
        ({"start": datetime(2026, 1, 1)}, "timezone-aware"),
        ({"model_version": ""}, "model_version must be a string of 1 to 128"),
        ({"seed": 1.5}, "seed must be an int"),
        ({"phrasing": "poetry"}, "phrasing must be one of bank, paraphrase"),
    ],
)
def test_bad_constructor_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrafficSimulator(**kwargs)


@pytest.mark.parametrize(("rate", "duration"), [(0, 10), (-1, 10), (10, 0), (10, float("inf")), (True, 10)])
def test_bad_messages_arguments_raise_at_call_time(rate: float, duration: float) -> None:
    with pytest.raises(ValueError, match="must be a finite number > 0"):
        TrafficSimulator().messages(rate, duration)


def test_bad_conversations_arguments_raise() -> None:
    with pytest.raises(ValueError, match="n must be an int >= 0"):
        TrafficSimulator().conversations(-1)
    with pytest.raises(ValueError, match="rate must be"):
        TrafficSimulator().conversations(10, rate=0)


# -- phrasing="paraphrase": the same traffic, its style phrases in other words -------------------------
def _bank_style_phrases() -> list[str]:
    overpromises = [bank.overpromise for bank in banks._BANK.values()]
    return [*banks._FLATTERY, *banks._HEDGES, *banks._REFUSALS, *banks._OVER_REFUSALS, *banks._CONFIDENT,
            *overpromises, *(bank.overpromise for _, bank in banks._SHIFTED_TOPICS)]


@pytest.mark.parametrize("name", ["S2", "S4", "S7"])
def test_paraphrase_phrasing_changes_only_the_words(name: str) -> None:
    scenario = Scenario(name, onset_s=30.0)
    bank = TrafficSimulator(seed=9, scenario=scenario).conversations(1500)
    reworded = TrafficSimulator(seed=9, scenario=scenario, phrasing="paraphrase").conversations(1500)
    assert [(m.kind, m.key, m.at, m.truth) for m in bank] == [(m.kind, m.key, m.at, m.truth) for m in reworded]
    assert [m.value for m in bank if m.kind == "rating"] == [m.value for m in reworded if m.kind == "rating"]
    bank_phrases = _bank_style_phrases()
    written = {p for group in (paraphrases._FLATTERY, paraphrases._HEDGES, paraphrases._REFUSALS,
                               paraphrases._OVER_REFUSALS, paraphrases._CONFIDENT) for p in group}
    written |= {p for variants in paraphrases._OVERPROMISES.values() for p in variants}
    seen: set[str] = set()
    changed = 0
    for before, after in zip(bank, reworded, strict=True):
        if before.kind != "conversation":
            continue
        old, new = parse_conversation(before.value), parse_conversation(after.value)
        assert old.reward == new.reward and old.segment == new.segment and old.prompt == new.prompt
        assert not any(phrase in new.response for phrase in bank_phrases), new.response
        if any(phrase in old.response for phrase in bank_phrases):
            changed += 1
            assert new.response != old.response
        else:
            assert new.response == old.response
        seen |= {phrase for phrase in written if phrase in new.response}
    assert changed > 100
    # Each scenario's own style shows up in its new words.
    expected = {"S2": paraphrases._FLATTERY, "S4": paraphrases._OVER_REFUSALS, "S7": paraphrases._CONFIDENT}[name]
    assert set(expected) <= seen
