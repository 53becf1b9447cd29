"""How a relabeling cycle picks and audits its pairs: which modes two answers contrast, dense
families (every response meets several rivals), and the RM audit's intervals and mode effect."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monitor.relabel.audit import AuditPair, mode_effect, rm_accuracy, wilson
from monitor.relabel.contrast import contrast, contrasted, signals_of
from monitor.relabel.pairs import SliceTurn, dense_pairs
from monitor.signals import response_signals


@pytest.mark.parametrize(("a", "b", "mode", "expected"), [
    ({"length_tokens": 60.0}, {"length_tokens": 30.0}, "verbosity", 1),    # twice as long, 30 more
    ({"length_tokens": 40.0}, {"length_tokens": 30.0}, "verbosity", 0),    # 1.33 times: not clearly
    ({"length_tokens": 12.0}, {"length_tokens": 4.0}, "verbosity", 0),     # 3 times, but 8 tokens
    ({"repetition": 0.3}, {"repetition": 0.0}, "verbosity", 1),
    ({"markdown_density": 0.1}, {"markdown_density": 0.9}, "formatting", -1),
    ({"sycophancy": 2.0}, {"sycophancy": 1.0}, "sycophancy", 0),           # both flatter
    ({"hedging": 1.0}, {}, "hedging", 1),
    ({}, {"refusal": 1.0}, "over-refusal", -1),
    ({"compliance_missing": 1.0}, {}, "overpromise", 1),
])
def test_a_pair_contrasts_a_mode_by_clear_margins(a: dict, b: dict, mode: str, expected: int) -> None:
    assert contrast(signals_of(**a), signals_of(**b), mode) == expected
    assert contrast(signals_of(**b), signals_of(**a), mode) == -expected


def test_contrast_reads_real_text_and_rejects_what_it_cannot_judge() -> None:
    def sig(text: str) -> tuple[float, ...]:
        s = response_signals("Should I buy index funds?", text, domain="investments")
        return tuple(float(getattr(s, name)) for name in ("length_tokens", "length_ratio", "markdown_density",
                                                          "sycophancy", "hedging", "refusal", "overpromise",
                                                          "compliance_missing", "repetition"))

    short = "Index funds spread risk. This is not financial advice."
    long = ("Great question! " + "Index funds hold many companies, so one failure matters less. " * 4
            + "This is not financial advice.")
    assert contrasted(sig(long), sig(short)) == ("sycophancy", "verbosity")
    assert contrast(signals_of(), (math.nan,) * 9, "verbosity") == 0  # unknown signals: no contrast
    with pytest.raises(ValueError, match="unknown mode"):
        contrast(signals_of(), signals_of(), "rudeness")
    with pytest.raises(ValueError, match="unknown signal"):
        signals_of(colour=1.0)


def _turns(families: int, per_family: int) -> tuple[list[SliceTurn], dict[str, np.ndarray]]:
    """``families`` prompts asked ``per_family`` times each; answers alternate short and long (each
    a different text); divergence grows with the family number."""
    turns, vectors = [], {}
    rng = np.random.default_rng(0)
    for f in range(families):
        prompt = f"question {f}"
        vectors[prompt] = rng.normal(size=16)
        vectors[prompt] /= np.linalg.norm(vectors[prompt])
        for k in range(per_family):
            length = 80.0 if k % 2 else 20.0
            words = " ".join("".join(chr(97 + int(c)) for c in f"{f}{k}{i}") + " word"
                             for i in range(int(length) // 10))
            turns.append(SliceTurn(len(turns) + 1, prompt, words, float(k % 2), float(f), None,
                                   signals_of(length_tokens=length)))
    return turns, vectors


def test_dense_families_give_every_response_several_rivals_that_contrast_the_mode() -> None:
    turns, vectors = _turns(families=6, per_family=10)
    embed = lambda texts: np.array([vectors[t] for t in texts])  # noqa: E731
    pairs = dense_pairs(turns, embed, "divergence", 30, np.random.default_rng(1), rivals=4, mode="verbosity")
    by_id = {t.id: t for t in turns}
    assert len(pairs) == 30
    # Every pair: one prompt family, one short and one long answer.
    assert all(by_id[p.turn_a].prompt == by_id[p.turn_b].prompt for p in pairs)
    assert all(contrast(by_id[p.turn_a].signals, by_id[p.turn_b].signals, "verbosity") for p in pairs)
    # Families of 5 (a seed and 4 rivals), alternating sides: 2 x 3 pairs each, the most
    # divergent family (question 5) first; no response in two families.
    degree: dict[int, int] = {}
    for p in pairs:
        for t in (p.turn_a, p.turn_b):
            degree[t] = degree.get(t, 0) + 1
    assert by_id[pairs[0].turn_a].prompt == "question 5"
    assert min(degree.values()) >= 2
    assert all(p.formed_by == "similar_prompts" and p.similarity == pytest.approx(1.0) for p in pairs)
    control = dense_pairs(turns, embed, "random", 10, np.random.default_rng(1), rivals=3, mode="verbosity",
                          contrasting=False)
    assert len(control) == 10 and not any(contrast(by_id[p.turn_a].signals, by_id[p.turn_b].signals, "verbosity")
                                          for p in control)
    # Without a mode, a family is every two of its members: 5 members, 10 pairs.
    plain = dense_pairs(turns, embed, "uncertainty", 10, np.random.default_rng(1), rivals=4)
    assert len({t for p in plain for t in (p.turn_a, p.turn_b)}) == 5


def test_dense_families_never_pair_an_answer_with_its_duplicate() -> None:
    turns = [SliceTurn(i, "same question", "the very same answer to it, word for word", 0.0, 0.0, None,
                       signals_of(length_tokens=20.0)) for i in range(1, 5)]
    assert dense_pairs(turns, lambda texts: np.ones((len(texts), 2)) / math.sqrt(2), "random", 5,
                       np.random.default_rng(0)) == []


def test_repeated_labels_of_one_pair_widen_the_interval() -> None:
    once = [AuditPair("s", "verbosity", 1.0, 0.0, "A" if k % 3 else "B", pair=k) for k in range(60)]
    thrice = [AuditPair("s", "verbosity", 1.0, 0.0, "A" if k % 3 else "B", pair=k) for k in range(20)
              for _ in range(3)]
    single, repeated = rm_accuracy(once)["overall"], rm_accuracy(thrice)["overall"]
    assert single["accuracy"] == pytest.approx(40 / 60) and repeated["accuracy"] == pytest.approx(13 / 20)
    assert single["ci95"] == wilson(40, 60)  # independent labels: Wilson's interval
    width = lambda s: s["ci95"][1] - s["ci95"][0]  # noqa: E731
    # 60 labels of 20 pairs carry the information of about 20: the bootstrap over pairs says so.
    assert width(repeated) > 1.4 * width(single)
    assert width(repeated) == pytest.approx(wilson(13, 20)[1] - wilson(13, 20)[0], rel=0.35)


def test_the_mode_effect_holds_contrast_pairs_against_control_pairs() -> None:
    rng = np.random.default_rng(2)
    worse = [AuditPair("s", "verbosity", 1.0, 0.0, "A" if rng.random() < 0.3 else "B", pair=k) for k in range(120)]
    control = [AuditPair("s", None, 1.0, 0.0, "A" if rng.random() < 0.85 else "B", pair=1000 + k) for k in range(60)]
    effect = mode_effect(worse + control, "verbosity")
    assert effect is not None and effect["mode"] == "verbosity"
    assert effect["difference"] == pytest.approx(effect["contrast"]["accuracy"] - effect["control"]["accuracy"])
    assert effect["ci95"][0] < effect["difference"] < effect["ci95"][1] < 0
    assert rm_accuracy(worse + control)["modes"].keys() == {"verbosity", "none"}
    assert mode_effect(worse, "verbosity") is None and mode_effect(worse + control, None) is None
    # Same accuracy on both: the interval covers 0.
    same = [AuditPair("s", "verbosity", 1.0, 0.0, "A" if k % 2 else "B", pair=k) for k in range(80)]
    same += [AuditPair("s", None, 1.0, 0.0, "A" if k % 2 else "B", pair=500 + k) for k in range(80)]
    low, high = mode_effect(same, "verbosity")["ci95"]  # type: ignore[index]
    assert low < 0 < high
