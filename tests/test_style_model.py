"""The style classifiers: the labelled set, the shipped heads (reproducible, above measured floors),
sentence splitting, the classifier's cache, the paraphrase banks' independence, the CLI."""

from __future__ import annotations

import json
import re
import threading
from collections import Counter

import numpy as np
import pytest
from typer.testing import CliRunner

from monitor.cli import app
from monitor.errors import ConfigError
from monitor.sim import banks, paraphrases
from monitor.style_model import (
    DEFAULT_HEADS,
    MAX_SENTENCE_CHARS,
    MAX_SENTENCES,
    STYLE_LABELS,
    SentenceEncoder,
    StyleClassifier,
    StyleHeads,
    shared_classifier,
    split_sentences,
)
from monitor.style_training import (
    DEFAULT_SET,
    LABELS,
    evaluate_style_model,
    file_digest,
    load_labelled,
    train_style_model,
)

# Measured on the holdout when the heads were trained (docs/signals.md), less a margin of about
# 0.07: (precision, recall) of the head alone. The production rule (head or phrase list) must
# meet them too.
HOLDOUT_FLOORS = {
    "sycophancy": (0.80, 0.82),
    "hedging": (0.80, 0.70),
    "overpromise": (0.72, 0.74),
    "refusal": (0.92, 0.87),
}

_WORD = re.compile(r"[a-z0-9']+")


def _grams(text: str, n: int = 4) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower().replace("\u2019", "'"))
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, (tuple, list)):
        return [s for item in value for s in _strings(item)]
    return []


def _bank_style_phrases() -> list[str]:
    phrases = _strings((banks._FLATTERY, banks._HEDGES, banks._REFUSALS, banks._OVER_REFUSALS, banks._CONFIDENT))
    overpromises = [bank.overpromise for bank in banks._BANK.values()]
    return phrases + overpromises + [bank.overpromise for _, bank in banks._SHIFTED_TOPICS]


def _all_bank_text() -> list[str]:
    return [s for name in dir(banks) if not name.startswith("__") for s in _strings(getattr(banks, name))]


@pytest.fixture(scope="module")
def labelled():
    return load_labelled()


@pytest.fixture(scope="module")
def holdout_evaluation():
    return evaluate_style_model(StyleHeads.load())


# -- the labelled set ------------------------------------------------------------------------------
def test_labelled_set_sizes_and_splits(labelled) -> None:
    counts = Counter((s.label, s.split) for s in labelled)
    for label in STYLE_LABELS:
        assert counts[(label, "train")] >= 120, label
        assert counts[(label, "holdout")] >= 50, label
    assert counts[("none", "train")] > max(counts[(label, "train")] for label in STYLE_LABELS)
    assert counts[("none", "holdout")] > max(counts[(label, "holdout")] for label in STYLE_LABELS)
    assert {s.label for s in labelled} == set(LABELS)
    train_groups = {s.group for s in labelled if s.split == "train"}
    holdout_groups = {s.group for s in labelled if s.split == "holdout"}
    assert not train_groups & holdout_groups
    assert all(s.group.startswith(f"{s.label}/") for s in labelled)
    assert len({s.text.lower() for s in labelled}) == len(labelled)  # no duplicates


def test_labelled_set_is_not_the_simulator_banks(labelled) -> None:
    bank_text = {t.lower() for t in _all_bank_text()}
    assert not [s.text for s in labelled if s.text.lower() in bank_text]
    bank_grams = set().union(*(_grams(p) for p in _bank_style_phrases()))
    shared = [s.text for s in labelled if s.label != "none" and _grams(s.text) & bank_grams]
    assert shared == []


def test_bad_labelled_lines_raise(tmp_path) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps({"text": "Hi", "label": "flattery", "group": "g", "split": "train"}) + "\n")
    with pytest.raises(ValueError, match="label must be one of"):
        load_labelled(path)
    path.write_text("".join(json.dumps({"text": "Hi", "label": "none", "group": "g", "split": split}) + "\n"
                            for split in ("train", "holdout")))
    with pytest.raises(ValueError, match="groups in both splits"):
        load_labelled(path)
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match=":1: not a labelled sentence"):
        load_labelled(path)


# -- the shipped heads -------------------------------------------------------------------------------
def test_shipped_heads_match_the_labelled_set_and_the_encoder() -> None:
    heads = StyleHeads.load()
    assert heads.trained_on == file_digest(DEFAULT_SET), "the labelled set changed: run `monitor signals train`"
    assert heads.encoder == shared_classifier().encoder.identity
    assert heads.coef.shape == (len(STYLE_LABELS), 384 * len(heads.layers) + 9)


def test_cli_train_reproduces_the_shipped_heads(tmp_path, holdout_evaluation) -> None:
    out = tmp_path / "heads.npz"
    result = CliRunner().invoke(app, ["signals", "train", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "holdout" in result.output
    retrained, shipped = StyleHeads.load(out), StyleHeads.load()
    assert retrained.trained_on == shipped.trained_on
    scale = np.abs(shipped.coef).max()
    assert np.abs(retrained.coef - shipped.coef).max() < 1e-3 * scale
    again = evaluate_style_model(retrained)
    for label in STYLE_LABELS:
        for method, score in again.scores[label].items():
            expected = holdout_evaluation.scores[label][method]
            assert abs(score.true_positives - expected.true_positives) <= 1, (label, method)
            assert abs(score.false_positives - expected.false_positives) <= 1, (label, method)


@pytest.mark.parametrize("label", STYLE_LABELS)
def test_holdout_precision_and_recall_floors(holdout_evaluation, label: str) -> None:
    precision_floor, recall_floor = HOLDOUT_FLOORS[label]
    for method in ("classifier", "combined"):
        score = holdout_evaluation.scores[label][method]
        assert score.precision >= precision_floor, (method, score)
        assert score.recall >= recall_floor, (method, score)
    # The phrase lists alone miss nearly all of these wordings: that is why the heads exist.
    assert holdout_evaluation.scores[label]["regex"].recall < 0.2


def test_cli_evaluate_prints_the_table() -> None:
    result = CliRunner().invoke(app, ["signals", "evaluate", "--errors"])
    assert result.exit_code == 0, result.output
    for label in STYLE_LABELS:
        assert re.search(rf"^{label}\s+\d+\s+\d\.\d{{3}} / \d\.\d{{3}}", result.output, re.MULTILINE), result.output
    assert "FN " in result.output or "FP " in result.output


def test_cli_evaluate_rejects_a_bad_split_and_missing_heads(tmp_path) -> None:
    result = CliRunner().invoke(app, ["signals", "evaluate", "--split", "dev"])
    assert result.exit_code == 2 and "split must be one of" in result.output
    result = CliRunner().invoke(app, ["signals", "evaluate", "--heads", str(tmp_path / "none.npz")])
    assert result.exit_code == 2 and "cannot read style heads" in result.output


def test_heads_for_other_labels_are_refused(tmp_path) -> None:
    with np.load(DEFAULT_HEADS) as data:
        arrays = dict(data)
    arrays["labels"] = np.array(["sycophancy", "hedging"])
    np.savez(tmp_path / "old.npz", **arrays)
    with pytest.raises(ConfigError, match="retrain"):
        StyleHeads.load(tmp_path / "old.npz")


def test_training_and_encoder_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="c must be > 0"):
        train_style_model(c=0.0)
    with pytest.raises(ValueError, match="device must be"):
        SentenceEncoder(device="tpu")
    with pytest.raises(ValueError, match="layers must be"):
        SentenceEncoder(layers=(0, 7))
    with pytest.raises(ConfigError, match="no sentence-encoder directory"):
        SentenceEncoder("/nonexistent/minilm")


# -- sentences and the classifier ----------------------------------------------------------------------
def test_split_sentences_removes_markdown_and_caps_the_work() -> None:
    assert split_sentences("") == []
    assert split_sentences("   \n\n---\n```\n") == []
    assert split_sentences("## Fees\n1. **First** step.\n2) Second step!\n* third? yes") == [
        "Fees", "First step.", "Second step!", "third?", "yes"]
    assert split_sentences("It\u2019s fine.") == ["It's fine."]
    many = split_sentences("Check the payee. " * 10_000)
    assert len(many) == MAX_SENTENCES
    assert [len(s) for s in split_sentences("a" * 50_000)] == [MAX_SENTENCE_CHARS]


def test_classifier_scores_each_distinct_sentence_once_and_bounds_its_cache() -> None:
    shared = shared_classifier()
    calls: list[int] = []

    class CountingEncoder:  # the real encoder, counting what reaches it
        layers, identity, width = shared.encoder.layers, shared.encoder.identity, shared.encoder.width

        def encode(self, texts):
            calls.append(len(texts))
            return shared.encoder.encode(texts)

    classifier = StyleClassifier(shared.heads, CountingEncoder(), cache_size=3)
    sentences = ["You've nailed it!", "Go to Payments.", "You've nailed it!", "I'd rather not say."]
    first = classifier.score(sentences)
    assert calls == [3]
    again = classifier.score(sentences[:3])
    assert calls == [3]  # all cached
    np.testing.assert_allclose(again.probabilities, first.probabilities[:3])
    classifier.score(["A fourth sentence.", "You've nailed it!"])
    assert calls == [3, 1]
    classifier.score(["Go to Payments."])  # used recently: still cached
    assert calls == [3, 1]
    classifier.score(["I'd rather not say."])  # the least recently used: evicted by the fourth
    assert calls == [3, 1, 1]
    assert classifier.score([]).probabilities.shape == (0, len(STYLE_LABELS))
    with pytest.raises(ValueError, match="cache_size"):
        StyleClassifier(shared.heads, cache_size=-1)


def test_classifier_is_thread_safe() -> None:
    classifier = StyleClassifier(shared_classifier().heads, shared_classifier().encoder, cache_size=50)
    sentences = [f"Your transfer number {i} is on its way, you clever thing!" for i in range(40)]
    expected = StyleClassifier(classifier.heads, classifier.encoder, cache_size=0).score(sentences).probabilities
    results: list[np.ndarray] = []

    def work(offset: int) -> None:
        rotated = sentences[offset:] + sentences[:offset]
        results.append(np.roll(classifier.score(rotated).probabilities, offset, axis=0))

    threads = [threading.Thread(target=work, args=(k * 7,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4
    for result in results:
        np.testing.assert_allclose(result, expected, atol=1e-5)


# -- paraphrase banks ------------------------------------------------------------------------------------
def _paraphrases() -> list[str]:
    return _strings((paraphrases._FLATTERY, paraphrases._HEDGES, paraphrases._REFUSALS, paraphrases._OVER_REFUSALS,
                     paraphrases._CONFIDENT, paraphrases._OVERPROMISES))


def test_paraphrase_banks_share_nothing_with_the_labelled_set_or_the_banks(labelled) -> None:
    written = [p for p in _paraphrases() if p not in paraphrases._OVERPROMISES]  # keys are bank sentences
    assert len(written) >= 30
    labelled_text = {s.text.lower() for s in labelled}
    bank_text = {t.lower() for t in _all_bank_text()}
    assert not [p for p in written if p.lower() in labelled_text | bank_text]
    labelled_grams = set().union(*(_grams(s.text) for s in labelled))
    bank_grams = set().union(*(_grams(t) for t in _all_bank_text()))
    assert {p: sorted(_grams(p) & (labelled_grams | bank_grams)) for p in written
            if _grams(p) & (labelled_grams | bank_grams)} == {}


def test_cli_bench_signals_reports_cold_and_warm_throughput() -> None:
    result = CliRunner().invoke(app, ["bench", "signals", "--count", "30"])
    assert result.exit_code == 0, result.output
    rows = re.findall(r"^(simulator|holdout-like)\s+(cold|warm|phrase lists only)\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)",
                      result.output, re.MULTILINE)
    assert [(text, cache) for text, cache, *_ in rows] == [
        (text, cache) for text in ("simulator", "holdout-like") for cache in ("cold", "warm", "phrase lists only")]
    assert all(int(responses) > 0 and float(per_second) > 0 for _, _, responses, _, _, per_second in rows)
