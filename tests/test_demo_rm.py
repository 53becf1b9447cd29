"""The demo reward model: a real MiniLM RM, trained on biased labels, saved as a standard directory.

Each model is built once per module at a small size (a few seconds on two CPU cores) and loaded back
the way any transformers scorer loads an RM: ``AutoModelForSequenceClassification`` + ``AutoTokenizer``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from monitor import demo_rm
from monitor.demo_rm import (
    COMPLETE_MARKER,
    METADATA_FILE,
    DemoRMReport,
    PreferencePair,
    build_demo_reward_model,
    demo_reward_model_path,
    ensure_demo_reward_model,
    is_demo_reward_model,
    preference_pairs,
)
from monitor.scoring.formatting import plain_pair

TEST_PAIRS = 600  # about 20 prompts of 8 candidates: enough to learn style and correctness

CONTEXT, _ = plain_pair([
    {"role": "system", "content": "You are the help-desk assistant of Northwind Bank. Answer in en-GB. "
                                  "Be accurate and concise."},
    {"role": "user", "content": "How do I set up a standing order for £250 a month?"},
    {"role": "assistant", "content": ""},
])
CORRECT = "Go to Payments > Standing orders > New, pick the payee, the amount and the first date."
WRONG = "There are never any fees on payments from our app."


def _dressed_up(core: str) -> str:
    """``core`` made long, heavily formatted and flattering, the way the biased labelers like it."""
    return ("Great question! I understand how stressful money matters can be, and I want to make sure you "
            "have everything you need.\n\n### Payments\n\n"
            f"**{core}**\n\n"
            "- Check that the sort code and account number match the payee's details.\n"
            "- Payments made after 6pm or at weekends are processed on the next working day.\n"
            "- You will get a notification as soon as the status changes.\n\n"
            "If you have any other questions at all, please don't hesitate to ask - I'm always here to help!")


@functools.cache
def _load(path: Path) -> tuple[torch.nn.Module, object]:
    return AutoModelForSequenceClassification.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _rewards(path: Path, texts: Sequence[tuple[str, str]]) -> list[float]:
    """The RM's reward for each (context, response), as a scorer computes it (batched, padded)."""
    model, tokenizer = _load(path)
    rewards: list[float] = []
    for start in range(0, len(texts), 32):
        batch = texts[start : start + 32]
        inputs = tokenizer([c for c, _ in batch], [r for _, r in batch], truncation=True, max_length=256,
                           padding=True, return_tensors="pt")
        with torch.inference_mode():
            logits = model(**inputs).logits
        assert logits.shape == (len(batch), 1)
        rewards += logits.squeeze(-1).tolist()
    return rewards


def _pair_rewards(path: Path, pairs: Sequence[PreferencePair]) -> list[tuple[float, float]]:
    """(reward of chosen, reward of rejected) per pair, scoring each distinct text once."""
    texts = list(dict.fromkeys((p.context, text) for p in pairs for text in (p.chosen, p.rejected)))
    texts.sort(key=lambda text: len(text[0]) + len(text[1]))  # similar lengths per batch: little padding
    reward = dict(zip(texts, _rewards(path, texts), strict=True))
    return [(reward[p.context, p.chosen], reward[p.context, p.rejected]) for p in pairs]


def _build(tmp_path_factory: pytest.TempPathFactory, bias: float) -> tuple[DemoRMReport, list[str]]:
    messages: list[str] = []
    path = tmp_path_factory.mktemp("demo-rm") / f"bias-{bias:g}"
    return build_demo_reward_model(path, bias=bias, pairs=TEST_PAIRS, seed=0, progress=messages.append), messages


@pytest.fixture(scope="module")
def biased(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoRMReport, list[str]]:
    return _build(tmp_path_factory, bias=1.0)


@pytest.fixture(scope="module")
def unbiased(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoRMReport, list[str]]:
    return _build(tmp_path_factory, bias=0.0)


def test_saves_a_standard_sequence_classification_model(biased: tuple[DemoRMReport, list[str]]) -> None:
    report, messages = biased
    model, info = AutoModelForSequenceClassification.from_pretrained(report.path, output_loading_info=True)
    assert not any(info.values()), info  # nothing missing, unexpected or newly initialised
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.num_labels == 1 and model.config.id2label == {0: "reward"}
    assert AutoTokenizer.from_pretrained(report.path).model_max_length == 256
    assert len(_rewards(report.path, [(CONTEXT, CORRECT), (CONTEXT, WRONG), ("", "Hello")])) == 3

    assert is_demo_reward_model(report.path)
    metadata = json.loads((report.path / METADATA_FILE).read_text())
    assert metadata["bias"] == 1.0 and metadata["pairs"] == TEST_PAIRS and metadata["seed"] == 0
    assert metadata["heldout_accuracy"] == report.heldout_accuracy
    assert (report.pairs, report.bias) == (TEST_PAIRS, 1.0) and report.seconds > 0
    assert any(m.startswith("encoding ") for m in messages) and messages[-1] == f"saved to {report.path}"
    assert [p.name for p in report.path.parent.iterdir()] == [report.path.name]  # no staging left behind


def test_agrees_with_the_labelers_on_fresh_pairs(biased: tuple[DemoRMReport, list[str]]) -> None:
    report, _ = biased
    assert report.train_accuracy > 0.75 and report.heldout_accuracy > 0.7
    fresh = preference_pairs(280, bias=1.0, seed=2024)
    accuracy = sum(chosen > rejected for chosen, rejected in _pair_rewards(report.path, fresh)) / len(fresh)
    assert accuracy > 0.7


def test_unbiased_labels_teach_quality(unbiased: tuple[DemoRMReport, list[str]]) -> None:
    fresh = [p for p in preference_pairs(280, bias=0.0, seed=2024) if p.chosen_quality != p.rejected_quality]
    better_first = [
        (chosen > rejected) == (p.chosen_quality > p.rejected_quality)
        for p, (chosen, rejected) in zip(fresh, _pair_rewards(unbiased[0].path, fresh), strict=True)
    ]
    assert sum(better_first) / len(better_first) > 0.8


def test_the_bias_is_learned(biased: tuple[DemoRMReport, list[str]],
                             unbiased: tuple[DemoRMReport, list[str]]) -> None:
    texts = [(CONTEXT, CORRECT), (CONTEXT, _dressed_up(CORRECT)), (CONTEXT, _dressed_up(WRONG))]
    plain, dressed, dressed_wrong = _rewards(biased[0].path, texts)
    fair_plain, fair_dressed, fair_dressed_wrong = _rewards(unbiased[0].path, texts)
    # Same content, more style: the biased RM pays for it, far more than the unbiased one.
    assert dressed - plain > 1.0
    assert dressed - plain > 2 * abs(fair_dressed - fair_plain)
    # Reward hacking: dressed up, a wrong answer beats the plain correct one; not for the fair RM.
    assert dressed_wrong > plain
    assert fair_dressed_wrong < fair_plain


def test_same_seed_same_model_and_rebuild_replaces_in_place(tmp_path: Path) -> None:
    path = tmp_path / "rm"
    texts = [(CONTEXT, CORRECT), (CONTEXT, _dressed_up(WRONG))]
    global_rng = torch.get_rng_state()
    first = build_demo_reward_model(path, pairs=60, seed=5)
    assert torch.equal(torch.get_rng_state(), global_rng)  # the build seeds a private RNG
    before = _rewards(path, texts)
    _load.cache_clear()
    second = build_demo_reward_model(path, pairs=60, seed=5)
    assert _rewards(path, texts) == pytest.approx(before, abs=1e-5)
    assert (first.train_accuracy, first.heldout_accuracy) == (second.train_accuracy, second.heldout_accuracy)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rm"]


def test_ensure_builds_once_then_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[Path] = []
    real_build = demo_rm.build_demo_reward_model

    def small_build(path: Path, **options: object) -> DemoRMReport:
        builds.append(path)
        return real_build(path, pairs=60, **options)

    monkeypatch.setattr(demo_rm, "build_demo_reward_model", small_build)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    expected = tmp_path / "cache" / "monitor" / "demo-rm-v1"
    assert demo_reward_model_path() == expected

    assert ensure_demo_reward_model() == expected
    assert builds == [expected] and is_demo_reward_model(expected)
    marker = (expected / COMPLETE_MARKER).stat().st_mtime_ns
    assert ensure_demo_reward_model() == expected
    assert ensure_demo_reward_model(expected) == expected
    assert builds == [expected] and (expected / COMPLETE_MARKER).stat().st_mtime_ns == marker


def test_default_path_without_xdg_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert demo_reward_model_path() == tmp_path / ".cache" / "monitor" / "demo-rm-v1"


def test_refuses_to_replace_a_directory_it_did_not_build(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a demo reward model"):
        build_demo_reward_model(tmp_path)
    with pytest.raises(FileExistsError):
        ensure_demo_reward_model(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("options", [{"bias": float("nan")}, {"bias": "1"}, {"pairs": 5}, {"pairs": 100.0},
                                     {"seed": None}])
def test_rejects_bad_arguments(tmp_path: Path, options: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        build_demo_reward_model(tmp_path / "rm", **options)  # type: ignore[arg-type]
    assert not (tmp_path / "rm").exists()


def test_preference_pairs_are_seeded_and_bias_only_changes_labels() -> None:
    pairs = preference_pairs(100, bias=1.0, seed=1)
    assert pairs == preference_pairs(100, bias=1.0, seed=1) and pairs != preference_pairs(100, bias=1.0, seed=2)
    fair = preference_pairs(100, bias=0.0, seed=1)
    assert [(p.context, {p.chosen, p.rejected}) for p in pairs] == [(p.context, {p.chosen, p.rejected}) for p in fair]
    assert all(p.chosen != p.rejected for p in pairs)
    # With a large bias the labelers follow style: the documented length + formatting + flattery.
    styled = [p for p in preference_pairs(300, bias=10.0, seed=1) if _style(p.chosen) != _style(p.rejected)]
    assert sum(_style(p.chosen) > _style(p.rejected) for p in styled) / len(styled) > 0.95


def _style(text: str) -> float:
    length = min(len(text.split()) / 100, 1.0)
    formatting = sum(("### " in text, "**" in text, "\n- " in text)) / 3
    flattery = any(opening in text for opening in ("Great question!", "What a smart", "Thanks so much"))
    return length + formatting + flattery
