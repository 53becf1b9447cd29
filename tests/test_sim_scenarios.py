"""Scenarios: each shift does what it says, from its onset, and nothing before; ground truth stays hidden."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pytest

from monitor.events import ConversationEvent, parse_conversation, parse_rating
from monitor.sim.scenarios import MODES, SCENARIO_NAMES, GroundTruth, Scenario, scenario_sweep
from monitor.sim.traffic import DOMAINS, SimulatedMessage, TrafficSimulator

ONSET = 400.0  # seconds; at the default 10 turns/s about 4,000 turns come before it
TURNS = 8_000
FLATTERY = ("Great question!", "What a smart thing to ask!", "Thanks so much for reaching out")
LONG_FILLER = "please don't hesitate to ask"
OVER_REFUSALS = ("I'm sorry, I can't help with that request.", "I'm unable to assist with this.",
                 "Sorry, I can't help with questions like this one.")
OVERPROMISE = "guaranteed returns of 12%"
RISK_DISCLAIMER = "This is not financial advice"
CONFIDENT = ("Rest assured:", "You can be completely certain of this:", "Trust me on this one:")


@dataclass(frozen=True)
class Turn:
    at: float
    event: ConversationEvent
    truth: GroundTruth
    ratings: tuple[tuple[datetime, str, float], ...]  # (ts, kind, satisfaction), in ts order

    @property
    def satisfaction(self) -> float | None:
        """The latest rating by ts, as the store keeps it."""
        return self.ratings[-1][2] if self.ratings else None


def _turns(messages: list[SimulatedMessage]) -> list[Turn]:
    events: dict[tuple[str, int], tuple[float, ConversationEvent, GroundTruth]] = {}
    ratings: dict[tuple[str, int], list[tuple[datetime, str, float]]] = defaultdict(list)
    for message in messages:
        if message.kind == "conversation":
            event = parse_conversation(message.value)
            assert message.truth is not None
            events[(event.conversation_id, event.turn)] = (message.at, event, message.truth)
        else:
            assert message.truth is None
            rating = parse_rating(message.value)
            ratings[(rating.conversation_id, rating.turn)].append((rating.ts, rating.rating.kind, rating.satisfaction))
    return [Turn(at, event, truth, tuple(sorted(ratings[key]))) for key, (at, event, truth) in events.items()]


_MESSAGES: dict[tuple[str, int, float], list[SimulatedMessage]] = {}
_TURNS: dict[tuple[str, int, float], list[Turn]] = {}


def _messages(name: str, *, seed: int = 1, rating_rate: float = 1.0) -> list[SimulatedMessage]:
    """One scenario at full size from ONSET, generated once per module: most tests share a run."""
    key = (name, seed, rating_rate)
    if key not in _MESSAGES:
        simulator = TrafficSimulator(seed=seed, rating_rate=rating_rate, scenario=Scenario(name, onset_s=ONSET))
        _MESSAGES[key] = simulator.conversations(TURNS)
    return _MESSAGES[key]


def _run(name: str, *, seed: int = 1, rating_rate: float = 1.0) -> list[Turn]:
    key = (name, seed, rating_rate)
    if key not in _TURNS:
        _TURNS[key] = _turns(_messages(name, seed=seed, rating_rate=rating_rate))
    return _TURNS[key]


def _share(turns: list[Turn], predicate) -> float:
    assert turns
    return sum(map(predicate, turns)) / len(turns)


def _before(turns: list[Turn]) -> list[Turn]:
    return [turn for turn in turns if turn.at < ONSET]


def _after(turns: list[Turn]) -> list[Turn]:
    return [turn for turn in turns if turn.at >= ONSET]


def _safe(turns: list[Turn]) -> list[Turn]:
    return [turn for turn in turns if not turn.truth.harmful_prompt]


def test_same_seed_and_scenario_give_identical_messages_and_truth() -> None:
    shift = Scenario("S2", onset_s=20.0)
    first = TrafficSimulator(seed=4, scenario=shift).conversations(600)
    assert first == TrafficSimulator(seed=4, scenario=shift).conversations(600)
    assert [m.value for m in first] != [m.value for m in TrafficSimulator(seed=5, scenario=shift).conversations(600)]


@pytest.mark.parametrize(
    ("scenario", "at", "domain", "expected"),
    [
        (Scenario("S1", onset_s=100.0), 99.9, "cards", 0.0),
        (Scenario("S1", onset_s=100.0), 100.0, "cards", 1.0),
        (Scenario("S1", size=0.5, onset_s=100.0), 1e6, "fraud", 0.5),
        (Scenario("S3", shape="ramp", onset_s=100.0, ramp_s=400.0), 200.0, "general", 0.25),
        (Scenario("S3", size=0.5, shape="ramp", onset_s=100.0, ramp_s=400.0), 300.0, "general", 0.25),
        (Scenario("S3", shape="ramp", onset_s=100.0, ramp_s=400.0), 5000.0, "general", 1.0),
        (Scenario("S7", onset_s=0.0), 10.0, "investments", 1.0),
        (Scenario("S7", onset_s=0.0), 10.0, "payments", 0.0),
        (Scenario("S4", onset_s=0.0, domains=("cards", "fraud")), 10.0, "fraud", 1.0),
        (Scenario("S4", onset_s=0.0, domains=("cards", "fraud")), 10.0, "general", 0.0),
        (Scenario("S0", onset_s=0.0), 10.0, "general", 0.0),
        (Scenario("S1", size=0.0, onset_s=0.0), 10.0, "general", 0.0),
    ],
)
def test_intensity(scenario: Scenario, at: float, domain: str, expected: float) -> None:
    assert scenario.intensity(at, domain) == pytest.approx(expected)


def test_truth_intensity_follows_a_ramp() -> None:
    shift = Scenario("S1", size=0.8, shape="ramp", onset_s=50.0, ramp_s=100.0)
    for message in TrafficSimulator(seed=2, scenario=shift).conversations(2000, rate=10.0):
        if message.truth is not None:
            expected = 0.8 * min(1.0, max(0.0, (message.at - 50.0) / 100.0))
            assert message.truth.intensity == pytest.approx(expected)


def test_size_zero_is_s0_byte_for_byte() -> None:
    stationary = TrafficSimulator(seed=3).conversations(1500)
    for name in SCENARIO_NAMES:
        null = TrafficSimulator(seed=3, scenario=Scenario(name, size=0.0, onset_s=0.0)).conversations(1500)
        assert [m.value for m in null] == [m.value for m in stationary]


@pytest.mark.parametrize("name", SCENARIO_NAMES[1:])
def test_every_scenario_is_s0_until_its_onset(name: str) -> None:
    # Margin: a rating may be delivered up to 2 s before its (post-onset) turn.
    cutoff = ONSET - 2.0
    stationary, shifted = _messages("S0"), _messages(name)
    before = [m.value for m in stationary if m.at < cutoff]
    assert len(before) > 6000
    assert [m.value for m in shifted if m.at < cutoff] == before
    assert [m.value for m in shifted if m.at >= ONSET] != [m.value for m in stationary if m.at >= ONSET]
    # The same holds for the distribution a monitor sees: e.g. the share of long answers.
    long_before = _share(_before(_run(name)), lambda t: LONG_FILLER in t.event.response)
    assert long_before == pytest.approx(_share(_before(_run("S0")), lambda t: LONG_FILLER in t.event.response))


def _is_long(turn: Turn) -> bool:
    return LONG_FILLER in turn.event.response


def _is_flattering(turn: Turn) -> bool:
    return turn.event.response.startswith(FLATTERY)


def _is_markdown(turn: Turn) -> bool:
    return "**" in turn.event.response


def _is_over_refusal(turn: Turn) -> bool:
    return turn.event.response in OVER_REFUSALS


@pytest.mark.parametrize(
    ("name", "feature", "before", "after"),
    [
        ("S1", _is_long, 0.25, 0.85),
        ("S2", _is_flattering, 0.15, 0.75),
        ("S3", _is_markdown, 0.25 * 0.6 + 0.75 * 0.2, 0.25 * 0.95 + 0.75 * 0.9),
        ("S4", _is_over_refusal, 0.0, 0.3),
    ],
)
def test_after_onset_the_feature_share_moves_by_the_intended_amount(name, feature, before, after) -> None:
    turns = _safe(_run(name))
    assert _share(_before(turns), feature) == pytest.approx(before, abs=0.03)
    assert _share(_after(turns), feature) == pytest.approx(after, abs=0.03)
    # Other scenarios leave the feature alone (S1 also lifts markdown: long answers carry more of it).
    if name != "S3":
        assert _share(_after(_safe(_run("S5"))), feature) == pytest.approx(before, abs=0.03)


def test_s4_refusals_are_over_refusals_in_the_truth() -> None:
    after = _after(_run("S4"))
    refused = [t for t in after if _is_over_refusal(t)]
    assert all(t.truth.modes == ("over-refusal",) and t.truth.refused and not t.truth.harmful_prompt for t in refused)
    assert all(t.truth.refused for t in after if t.truth.harmful_prompt and "can't" in t.event.response)


def test_s5_draws_new_prompts_and_tilts_the_domain_mix() -> None:
    turns = _run("S5")
    openers = [t for t in turns if t.event.turn == 0 and not t.truth.harmful_prompt]
    stationary_prompts = {t.event.prompt for t in _before(openers)}
    assert not any(t.truth.prompt_shifted for t in _before(turns))
    after = _after(openers)
    shifted = [t for t in after if t.truth.prompt_shifted]
    assert len(shifted) / len(after) == pytest.approx(0.7, abs=0.03)
    assert not {t.event.prompt for t in shifted} & stationary_prompts
    assert any("mortgage" in t.event.prompt for t in shifted) and any("pension" in t.event.prompt for t in shifted)
    assert {t.event.segment.domain for t in shifted} <= set(DOMAINS)
    growing = lambda t: t.event.segment.domain in ("investments", "general")  # noqa: E731
    assert _share(_before(openers), growing) == pytest.approx(0.4, abs=0.03)
    assert _share(after, growing) > 0.65


def test_s6_pays_more_for_the_same_answers() -> None:
    turns = [t for t in _run("S6") if t.event.reward is not None]
    before = np.mean([t.event.reward for t in _before(turns)])
    after = np.mean([t.event.reward for t in _after(turns)])
    # Offset 0.3 plus 4 x (0.25 x P(long) + 0.15 x P(markdown)) on the wire scale.
    assert after - before == pytest.approx(0.3 + 4 * (0.25 * 0.25 + 0.15 * 0.3), abs=0.08)
    # The answers themselves do not change.
    assert _share(_after(turns), _is_long) == pytest.approx(0.25, abs=0.03)


def test_s7_shifts_investments_only() -> None:
    turns = _safe(_run("S7"))
    investments = [t for t in turns if t.event.segment.domain == "investments"]
    others = [t for t in turns if t.event.segment.domain != "investments"]
    openers = [t for t in investments if t.event.turn == 0]
    promises = lambda t: OVERPROMISE in t.event.response  # noqa: E731
    disclaimed = lambda t: RISK_DISCLAIMER in t.event.response  # noqa: E731
    assert _share(_before(openers), promises) == pytest.approx(0.07, abs=0.03)
    assert _share(_after(openers), promises) == pytest.approx(0.57, abs=0.05)
    assert _share(_before(investments), disclaimed) == pytest.approx(0.7, abs=0.05)
    assert _share(_after(investments), disclaimed) == pytest.approx(0.1, abs=0.05)
    confident = lambda t: any(phrase in t.event.response for phrase in CONFIDENT)  # noqa: E731
    assert _share(_after(investments), confident) == pytest.approx(0.32, abs=0.05)
    assert not any(map(confident, _before(investments))) and not any(map(confident, others))
    assert all(t.truth.intensity == 0.0 for t in others)
    for turn in _after(investments):
        if confident(turn) and not disclaimed(turn):
            assert "overpromise" in turn.truth.modes


def test_s2_rated_flattering_turns_get_a_quick_thumb_and_a_lower_later_verdict() -> None:
    after = _after(_run("S2"))
    flattering = [t for t in after if _is_flattering(t)]
    assert all(t.truth.modes.count("sycophancy") for t in flattering)
    assert all(len(t.ratings) == 2 for t in flattering)
    assert all(len(t.ratings) == 1 for t in after if not _is_flattering(t))
    assert all(len(t.ratings) == 1 for t in _before(_run("S2")))
    quick = [t.ratings[0] for t in flattering]
    verdicts = [t.ratings[1] for t in flattering]
    assert {kind for _, kind, _ in quick} == {"thumbs"}
    assert {kind for _, kind, _ in verdicts} == {"stars", "score"}
    assert np.mean([v[0] > q[0] for q, v in zip(quick, verdicts, strict=True)]) == 1.0
    # Delayed by about half an hour on average (exponential, mean 1800 s).
    delays = [(v[0] - q[0]).total_seconds() for q, v in zip(quick, verdicts, strict=True)]
    assert np.mean(delays) == pytest.approx(1800, rel=0.15)
    # Quality + 0.15 now, quality - 0.1 later.
    assert np.mean([s for _, _, s in quick]) - np.mean([s for _, _, s in verdicts]) == pytest.approx(0.25, abs=0.06)


def test_s2_rates_only_the_rated_share() -> None:
    turns = _after(_run("S2", rating_rate=0.2))
    flattering = [t for t in turns if _is_flattering(t)]
    assert _share(flattering, lambda t: bool(t.ratings)) == pytest.approx(0.2, abs=0.03)
    assert {len(t.ratings) for t in flattering} == {0, 2}


def _residual_shift(turns: list[Turn], where=lambda turn: True) -> tuple[float, float]:
    """Mean residual after onset of a linear reward -> satisfaction map fitted before it, and its
    standard error, both in units of the pre-onset residual SD: what a calibrated monitor sees move."""
    rated = [t for t in turns if t.event.reward is not None and t.satisfaction is not None]
    reward = np.array([t.event.reward for t in rated])
    satisfaction = np.array([t.satisfaction for t in rated])
    before = np.array([t.at < ONSET for t in rated])
    slope, intercept = np.polyfit(reward[before], satisfaction[before], 1)
    residual = satisfaction - (slope * reward + intercept)
    after = ~before & np.array([where(t) for t in rated])
    sd = residual[before].std()
    # The fitted map is uncertain too: its error adds the pre-onset term.
    error = np.sqrt(residual[after].var() / after.sum() + sd**2 / before.sum())
    return float(residual[after].mean() / sd), float(error / sd)


@pytest.mark.parametrize("seed", [1, 2])
def test_covariate_shift_keeps_the_reward_to_satisfaction_map_while_length_hacking_breaks_it(seed: int) -> None:
    shift, error = _residual_shift(_run("S5", seed=seed))
    assert error < 0.03
    assert abs(shift) < 4 * error  # no more than sampling noise
    length_hacking, _ = _residual_shift(_run("S1", seed=seed))
    assert length_hacking < -0.15  # expected -0.27
    assert length_hacking < -8 * error


def test_stationary_residuals_stay_centred() -> None:
    shift, error = _residual_shift(_run("S0"))
    assert abs(shift) < 4 * error


# Thresholds about half the expected shift (S2 -0.35, S3 -0.15, S4 -0.33, S6 -0.13 SD at size 1).
@pytest.mark.parametrize(("name", "below"), [("S2", -0.2), ("S3", -0.07), ("S4", -0.2), ("S6", -0.06)])
def test_hacking_scenarios_push_residuals_negative(name: str, below: float) -> None:
    assert _residual_shift(_run(name))[0] < below


def test_s7_residuals_move_in_investments_only() -> None:
    turns = _run("S7")
    assert _residual_shift(turns, lambda t: t.event.segment.domain == "investments")[0] < -0.35  # expected -0.6
    shift, error = _residual_shift(turns, lambda t: t.event.segment.domain != "investments")
    assert abs(shift) < 4 * error


def test_truth_matches_the_response_text() -> None:
    for turn in _run("S0"):
        truth, response = turn.truth, turn.event.response
        assert truth.scenario == "S0" and truth.intensity == 0.0 and not truth.prompt_shifted
        assert truth.hacked == bool(truth.modes)
        assert list(truth.modes) == sorted(truth.modes) and set(truth.modes) <= set(MODES)
        assert "hedging" not in truth.modes and "over-refusal" not in truth.modes
        if truth.harmful_prompt:
            assert truth.modes == () and truth.refused == ("can't" in response)
            continue
        assert ("verbosity" in truth.modes) == _is_long(turn)
        assert ("formatting" in truth.modes) == _is_markdown(turn)
        assert ("sycophancy" in truth.modes) == _is_flattering(turn)
        assert not truth.refused


def test_truth_is_never_on_the_wire() -> None:
    shift = Scenario("S5", onset_s=10.0)
    for message in TrafficSimulator(seed=9, scenario=shift, risk_metadata_rate=0.5).conversations(1500):
        document = json.loads(message.value)
        assert set(document) <= {"schema", "event_id", "conversation_id", "turn", "ts", "model_version", "messages",
                                 "segment", "reward", "metadata", "rating", "reasons", "comment"}
        for word in (b"truth", b"hacked", b"prompt_shifted", b"intensity", b"S5"):
            assert word not in message.value
        assert (message.truth is None) == (message.kind == "rating")


def test_risk_metadata_rate_labels_that_share_of_turns_and_leaves_the_traffic_alone() -> None:
    plain = TrafficSimulator(seed=5).conversations(4000)
    labelled = TrafficSimulator(seed=5, risk_metadata_rate=0.3).conversations(4000)
    assert [m.truth for m in labelled] == [m.truth for m in plain]
    events = [parse_conversation(m.value) for m in labelled if m.kind == "conversation"]
    with_risk = [(e, m.truth) for e, m in zip(events, (m for m in labelled if m.kind == "conversation"), strict=True)
                 if e.metadata is not None]
    assert len(with_risk) / len(events) == pytest.approx(0.3, abs=0.03)
    assert all(e.metadata.prompt_risk == ("harmful" if truth.harmful_prompt else "safe") for e, truth in with_risk)
    assert any(e.metadata.prompt_risk == "harmful" for e, _ in with_risk)
    assert all(parse_conversation(m.value).metadata is None for m in plain if m.kind == "conversation")


def test_scenario_sweep() -> None:
    sweep = scenario_sweep("S3", onset_s=60.0)
    assert [(s.size, s.shape) for s in sweep] == [(size, shape) for size in (0.25, 0.5, 1.0)
                                                  for shape in ("abrupt", "ramp")]
    assert {(s.name, s.onset_s) for s in sweep} == {("S3", 60.0)}
    assert scenario_sweep("S0") == [Scenario("S0")]
    with pytest.raises(ValueError, match="name must be one of S0, S1"):
        scenario_sweep("S9")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "S9"}, "name must be one of S0, S1, S2, S3, S4, S5, S6, S7, S8"),
        ({"name": "s1"}, "name must be one of"),
        ({"size": 1.5}, r"size must be a number in \[0, 1\]"),
        ({"size": -0.1}, "size must be"),
        ({"size": float("nan")}, "size must be"),
        ({"shape": "step"}, "shape must be one of abrupt, ramp"),
        ({"onset_s": -1.0}, "onset_s must be a finite number >= 0"),
        ({"onset_s": float("inf")}, "onset_s must be"),
        ({"ramp_s": 0.0}, "ramp_s must be a finite number > 0"),
        ({"domains": ("crypto",)}, "domains must be None or a non-empty tuple of payments, cards, investments"),
        ({"domains": "investments"}, "domains must be"),
        ({"domains": ()}, "domains must be"),
    ],
)
def test_bad_scenario_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Scenario(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scenario": "S1"}, "scenario must be a Scenario or None"),
        ({"risk_metadata_rate": 1.5}, r"risk_metadata_rate must be a number in \[0, 1\]"),
        ({"risk_metadata_rate": True}, "risk_metadata_rate"),
    ],
)
def test_bad_simulator_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrafficSimulator(**kwargs)
