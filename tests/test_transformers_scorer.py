"""The transformers scorer on tiny random-init RMs: batching, caching and truncation never change
what a response scores, and truncation always keeps the response."""

from __future__ import annotations

import pytest

from monitor.scoring.transformers_scorer import TransformersScorer
from tests.rm_fixtures import build_tiny_bert_rm, build_tiny_chat_rm


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return build_tiny_bert_rm(tmp_path_factory.mktemp("bert-rm"))


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    return build_tiny_chat_rm(tmp_path_factory.mktemp("chat-rm"))


def conv(prompt: str, response: str, history: int = 0) -> list[dict[str, str]]:
    messages = []
    for i in range(history):
        messages += [{"role": "user", "content": f"earlier question {i} about fees"},
                     {"role": "assistant", "content": f"earlier answer {i}"}]
    return messages + [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


CONVERSATIONS = [
    conv("How do I freeze my card?", "Open the app and tap Freeze."),
    conv("What is APR?", "APR is the annual percentage rate. " * 12, history=2),
    conv("Can I get a refund?", "**Great question!**\n\n- Yes\n- Maybe\n- It depends " * 3),
    conv("hi", "Hello!"),
    conv("Explain ETFs", "An ETF is a fund traded on an exchange. " * 6, history=1),
]


@pytest.mark.parametrize("model", ["bert_dir", "chat_dir"])
def test_bucketing_and_caching_give_the_same_scores_as_one_at_a_time(model: str, request) -> None:
    path = request.getfixturevalue(model)
    one_at_a_time = TransformersScorer(str(path), strategy="single", cache_size=0)
    reference = [one_at_a_time.score_conversations([c])[0].score for c in CONVERSATIONS]
    bucketed = TransformersScorer(str(path), strategy="bucketed", max_batch_tokens=512)
    batched = [o.score for o in bucketed.score_conversations(CONVERSATIONS)]
    assert bucketed.stats.forwards < len(CONVERSATIONS)
    assert batched == pytest.approx(reference, abs=1e-4)
    again = bucketed.score_conversations(CONVERSATIONS[::-1])  # now all from the cache
    assert bucketed.stats.cache_hits == len(CONVERSATIONS) and bucketed.stats.forwards == 0
    assert [o.score for o in again] == pytest.approx(reference[::-1], abs=1e-4)


def test_duplicates_in_one_call_are_scored_once(bert_dir) -> None:
    scorer = TransformersScorer(str(bert_dir))
    outcomes = scorer.score_conversations([CONVERSATIONS[0], CONVERSATIONS[1], CONVERSATIONS[0]])
    assert scorer.stats.sequences == 2
    assert outcomes[0] == outcomes[2]


def test_bucketing_cuts_padding(bert_dir) -> None:
    scorer = TransformersScorer(str(bert_dir), strategy="bucketed", max_batch_tokens=100_000, cache_size=0)
    scorer.score_conversations(CONVERSATIONS)
    assert scorer.stats.forwards == 1  # everything fits one batch: padding is what's left to cut
    one_batch_padding = scorer.stats.padding_ratio
    small = TransformersScorer(str(bert_dir), strategy="bucketed", max_batch_tokens=120, cache_size=0)
    small.score_conversations(CONVERSATIONS)
    assert small.stats.padding_ratio < one_batch_padding
    single = TransformersScorer(str(bert_dir), strategy="single", cache_size=0)
    single.score_conversations(CONVERSATIONS)
    assert single.stats.padding_ratio == 0.0


@pytest.mark.parametrize("model", ["bert_dir", "chat_dir"])
def test_truncation_cuts_old_context_and_keeps_the_response(model: str, request) -> None:
    path = request.getfixturevalue(model)
    scorer = TransformersScorer(str(path), cache_size=0)
    response = "Your transfer arrives tomorrow."
    long = conv("And the transfer?", response, history=30)
    [outcome] = scorer.score_conversations([long])
    assert outcome.truncated and outcome.score is not None
    encoded = scorer._encode("k", long)
    assert len(encoded.input_ids) <= scorer.max_length
    response_ids = scorer.tokenizer(response, add_special_tokens=False)["input_ids"]
    text = scorer.tokenizer.decode(encoded.input_ids)
    assert scorer.tokenizer.decode(response_ids) in text
    assert "earlier question 0 " not in text  # the oldest context went first
    [short] = scorer.score_conversations([conv("hi", response)])
    assert not short.truncated


def test_a_response_longer_than_the_model_is_cut_but_still_scored(bert_dir) -> None:
    scorer = TransformersScorer(str(bert_dir))
    [outcome] = scorer.score_conversations([conv("Tell me everything", "word " * 1000)])
    assert outcome.truncated and outcome.score is not None and outcome.error is None


def test_unscorable_responses_get_an_error_not_a_crash(bert_dir) -> None:
    scorer = TransformersScorer(str(bert_dir))
    outcomes = scorer.score_conversations([conv("hi", "   "), CONVERSATIONS[0], [{"role": "user", "content": "x"}]])
    assert outcomes[0].score is None and outcomes[0].error == "empty response"
    assert outcomes[1].score is not None
    assert outcomes[2].error and "assistant" in outcomes[2].error
    assert scorer.stats.errors == 2


def test_identity_names_the_model_and_its_weights(bert_dir, tmp_path) -> None:
    scorer = TransformersScorer(str(bert_dir))
    assert scorer.identity.startswith(f"transformers:{bert_dir.name}@")
    assert TransformersScorer(str(bert_dir)).identity == scorer.identity
    other = build_tiny_bert_rm(tmp_path / bert_dir.name, max_length=64)  # same name, other weights
    assert TransformersScorer(str(other)).identity != scorer.identity
    assert TransformersScorer(str(bert_dir), revision="v7").identity == f"transformers:{bert_dir.name}@v7"


def test_bad_arguments_fail_at_construction(bert_dir) -> None:
    with pytest.raises(ValueError, match="label_index 3 out of range"):
        TransformersScorer(str(bert_dir), label_index=3)
    with pytest.raises(ValueError, match="strategy must be one of auto, single, bucketed"):
        TransformersScorer(str(bert_dir), strategy="fast")
    with pytest.raises(ValueError, match="device must be one of"):
        TransformersScorer(str(bert_dir), device="tpu")


def test_a_missing_model_is_a_scoring_error(tmp_path) -> None:
    from monitor.errors import ScoringError

    with pytest.raises(ScoringError, match="cannot load reward model"):
        TransformersScorer(str(tmp_path / "nope"))


def test_the_label_index_picks_the_logit(chat_dir) -> None:
    first = TransformersScorer(str(chat_dir), label_index=0).score_conversations(CONVERSATIONS[:2])
    second = TransformersScorer(str(chat_dir), label_index=1).score_conversations(CONVERSATIONS[:2])
    assert [o.score for o in first] != [o.score for o in second]
