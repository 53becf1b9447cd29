"""Input-drift reports (monitor/analyze/drift.py) and prompt embeddings (monitor/analyze/embeddings.py).

Numeric cases are seeded synthetic windows; the embedding cases embed real prompts with the bundled
all-MiniLM-L6-v2 (offline), once per module.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest

from monitor.analyze.drift import FAMILY_ALPHA, MIN_ROWS, DriftReport, drift_report
from monitor.analyze.embeddings import EMBEDDING_DIM, PromptEmbedder, principal_components
from monitor.errors import ConfigError

CARD_TEMPLATES = [
    "How do I {verb} my {card}?",
    "I need to {verb} my {card} because {reason}.",
    "Can you help me {verb} the {card} I got last {time}?",
    "Why was my {card} {problem} {where}?",
    "My {card} was {problem} {where}, what should I do?",
    "Is there a fee to {verb} a {card}?",
    "What happens if I {verb} my {card} while abroad?",
    "{greeting} my {card} keeps getting {problem}.",
]
CARD_SLOTS = {
    "verb": ["freeze", "unfreeze", "replace", "activate", "cancel", "block", "unblock", "renew"],
    "card": ["debit card", "credit card", "virtual card", "contactless card", "business card", "prepaid card"],
    "reason": ["I lost it", "it was stolen", "the chip stopped working", "I saw a charge I don't recognise"],
    "time": ["week", "month", "year", "Tuesday"],
    "problem": ["declined", "blocked", "charged twice", "rejected at the ATM", "flagged for fraud"],
    "where": ["today", "at the supermarket", "online", "this morning", "at a petrol station", "in a shop abroad"],
    "greeting": ["Hi,", "Hello,", "Help!", "Urgent:", "Hey there,"],
}
MORTGAGE_TEMPLATES = [
    "What is the interest rate on a {term} {kind} mortgage?",
    "Can I {action} my mortgage {when}?",
    "How much deposit do I need for a {kind} mortgage on a {home}?",
    "Will it affect my {thing} if I {action} my mortgage?",
    "I want to {action} the mortgage on my {home}, how long does it take?",
    "Do you offer {kind} mortgages for {buyer}?",
    "{greeting} what documents do I need to {action} my home loan?",
    "How is the monthly repayment on a {term} mortgage calculated?",
]
MORTGAGE_SLOTS = {
    "term": ["two-year", "five-year", "ten-year", "25-year", "30-year"],
    "kind": ["fixed-rate", "tracker", "variable-rate", "interest-only", "buy-to-let", "offset"],
    "action": ["remortgage", "overpay", "port", "extend", "switch", "pay off early"],
    "when": ["before the fixed term ends", "next year", "after my divorce", "if I move house", "when rates drop"],
    "home": ["flat", "house", "new-build home", "leasehold apartment", "first home"],
    "thing": ["credit score", "early repayment charge", "monthly payments", "loan-to-value"],
    "buyer": ["first-time buyers", "self-employed people", "landlords", "joint applicants"],
    "greeting": ["Hi,", "Hello,", "Quick question:", "Good morning,"],
}


def prompts(templates: list[str], slots: dict[str, list[str]], n: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    return [rnd.choice(templates).format(**{k: rnd.choice(v) for k, v in slots.items()}) for _ in range(n)]


def numeric_window(n: int, seed: int, shifts: dict[str, float] | None = None) -> pd.DataFrame:
    """Ten standard normal columns, one constant, one small integer count; ``shifts`` moves means."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({f"x{i}": rng.normal(0.0, 1.0, n) for i in range(10)})
    frame["always_one"] = 1.0
    frame["turns"] = rng.integers(1, 4, n)
    for name, shift in (shifts or {}).items():
        frame[name] += shift
    return frame


COLUMNS = [f"x{i}" for i in range(10)] + ["always_one", "turns"]


# -- numeric columns ------------------------------------------------------------------------------
@pytest.mark.parametrize(("rows", "method"), [(200, "ks"), (2000, "wasserstein")])
def test_names_exactly_the_shifted_columns_most_drifted_first(rows: int, method: str) -> None:
    reference = numeric_window(rows, seed=1)
    current = numeric_window(rows, seed=2, shifts={"x3": 1.0, "x7": 0.6})

    summary = drift_report(reference, current, columns=COLUMNS).summary

    assert summary["drifted_columns"] == ["x3", "x7"]
    assert summary["drifted"] is True
    assert summary["share_drifted"] == pytest.approx(2 / 12)
    by_name = {row["name"]: row for row in summary["columns"]}
    assert [row["name"] for row in summary["columns"]] == COLUMNS
    assert by_name["x3"]["method"] == method and by_name["x3"]["drifted"] is True
    assert by_name["x5"]["drifted"] is False
    assert by_name["always_one"]["drifted"] is False
    assert summary["embeddings"] is None
    assert (summary["reference_rows"], summary["current_rows"]) == (rows, rows)


@pytest.mark.parametrize("rows", [100, 2000])
def test_same_distribution_in_both_windows_is_not_drift(rows: int) -> None:
    summary = drift_report(numeric_window(rows, seed=3), numeric_window(rows, seed=4), columns=COLUMNS).summary

    assert summary["drifted"] is False
    assert summary["drifted_columns"] == []
    assert summary["share_drifted"] == 0.0


def test_p_value_thresholds_are_corrected_for_the_number_of_columns() -> None:
    summary = drift_report(numeric_window(200, seed=5), numeric_window(200, seed=6), columns=COLUMNS).summary

    methods = {row["name"]: row["method"] for row in summary["columns"]}
    # K-S for the three-valued count too: evidently's own choice there, its chi-square, treats the
    # reference counts as exact and cries drift on windows like these (seed 3 vs 4 above: p = 0.0001).
    assert methods == {**{f"x{i}": "ks" for i in range(10)}, "always_one": "z", "turns": "ks"}
    assert all(row["threshold"] == pytest.approx(FAMILY_ALPHA / len(COLUMNS)) for row in summary["columns"])


@pytest.mark.parametrize("rows", [100, 2000])
def test_constant_columns_do_not_crash_and_a_changed_constant_is_drift(rows: int) -> None:
    reference = pd.DataFrame({"flag": np.zeros(rows), "stuck": np.full(rows, 7.0)})
    current = pd.DataFrame({"flag": np.zeros(rows), "stuck": np.full(rows, 9.0)})

    summary = drift_report(reference, current, columns=["flag", "stuck"]).summary

    assert summary["drifted_columns"] == ["stuck"]


def test_nan_values_are_left_out_not_fatal() -> None:
    reference = numeric_window(300, seed=7)
    current = numeric_window(300, seed=8, shifts={"x0": 2.0})
    current.loc[::3, "x0"] = np.nan

    summary = drift_report(reference, current, columns=["x0", "x1"]).summary

    assert summary["drifted_columns"] == ["x0"]


def test_summary_is_json_with_the_documented_keys() -> None:
    report = drift_report(numeric_window(100, seed=9), numeric_window(100, seed=10), columns=COLUMNS)

    assert isinstance(report, DriftReport)
    decoded = json.loads(json.dumps(report.summary))
    assert set(decoded) == {"drifted", "drifted_columns", "share_drifted", "columns", "embeddings",
                            "reference_rows", "current_rows", "evidently_version"}
    assert set(decoded["columns"][0]) == {"name", "drifted", "score", "method", "threshold"}
    assert decoded["evidently_version"].startswith("0.7.")


def test_html_is_a_self_contained_page_naming_the_columns() -> None:
    report = drift_report(numeric_window(100, seed=11), numeric_window(100, seed=12, shifts={"x2": 1.5}),
                          columns=["x2", "turns"], title="Card <desk> drift")

    page = report.html
    assert page.lstrip().lower().startswith("<!doctype html>")
    assert page.rstrip().endswith("</html>")
    assert "<title>Card &lt;desk&gt; drift</title>" in page
    assert "Drift in x2" in page
    assert '"x2"' in page and '"turns"' in page  # evidently's embedded widget data
    assert "drawDashboard" in page and len(page) > 100_000  # evidently's renderer is inlined
    assert "<script src=" not in page  # nothing to fetch


@pytest.mark.parametrize("shape", [(300, 24), (40, 96)])  # more rows than dims, and fewer
def test_embedding_components_match_numpy_svd(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(17)
    reference = rng.normal(size=shape) @ rng.normal(size=(shape[1], shape[1]))
    current = rng.normal(size=(50, shape[1]))

    ref_pcs, cur_pcs = principal_components(reference, current, 5)

    centre = reference.mean(axis=0)
    _, _, axes = np.linalg.svd(reference - centre, full_matrices=False)
    signs = np.sign(ref_pcs[0] / ((reference[0] - centre) @ axes[:5].T))
    np.testing.assert_allclose(ref_pcs, (reference - centre) @ axes[:5].T * signs, atol=1e-8)
    np.testing.assert_allclose(cur_pcs, (current - centre) @ axes[:5].T * signs, atol=1e-8)
    again, _ = principal_components(reference * 1.0, current, 5)
    np.testing.assert_array_equal(again, ref_pcs)  # same data, same signs


# -- bad input ------------------------------------------------------------------------------------
def test_bad_input_is_a_value_error_that_says_what_is_wrong() -> None:
    reference, current = numeric_window(60, seed=13), numeric_window(60, seed=14)
    texts = current.assign(x0=["a"] * 60)
    nan_column = current.assign(x1=np.nan)
    embeddings = np.ones((60, 8))

    cases = [
        (dict(columns=["x0", "nope"]), "missing from reference: ['nope']"),
        (dict(columns=[]), "at least one"),
        (dict(columns=[0]), "as strings"),
        (dict(columns="x0"), "not one string"),
        (dict(columns=["x0", "x0"]), "more than once"),
        (dict(columns=["x0"], current=texts), "must be numeric"),
        (dict(columns=["x0"], reference=reference.head(MIN_ROWS - 1)), f"at least {MIN_ROWS}"),
        (dict(columns=["x1"], current=nan_column), "finite values in current"),
        (dict(columns=["x0"], reference_embeddings=embeddings), "both"),
        (dict(columns=["x0"], reference_embeddings=embeddings[:59], current_embeddings=embeddings),
         "59 rows but the reference frame has 60"),
        (dict(columns=["x0"], reference_embeddings=embeddings, current_embeddings=np.ones((60, 9))),
         "widths differ"),
        (dict(columns=["x0"], reference_embeddings=embeddings, current_embeddings=np.ones(60)), "2-D"),
        (dict(columns=["emb_pc1"], reference=reference.assign(emb_pc1=1.0), current=current.assign(emb_pc1=1.0),
              reference_embeddings=embeddings, current_embeddings=embeddings), "clash"),
    ]
    for overrides, message in cases:
        arguments = {"reference": reference, "current": current, **overrides}
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            drift_report(arguments.pop("reference"), arguments.pop("current"), **arguments)


# -- prompt embeddings ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedder() -> PromptEmbedder:
    return PromptEmbedder()


@pytest.fixture(scope="module")
def topic_prompts(embedder: PromptEmbedder) -> dict[str, tuple[list[str], np.ndarray]]:
    cards = prompts(CARD_TEMPLATES, CARD_SLOTS, 150, seed=1)
    mortgages = prompts(MORTGAGE_TEMPLATES, MORTGAGE_SLOTS, 150, seed=2)
    return {"cards": (cards, embedder.embed(cards)), "mortgages": (mortgages, embedder.embed(mortgages))}


def prompt_frame(texts: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"prompt_chars": [len(text) for text in texts]})


def test_embeddings_are_unit_rows_and_similar_prompts_are_closer(embedder: PromptEmbedder) -> None:
    rows = embedder.embed(["How do I freeze my debit card?", "Can I block my credit card?",
                           "What is the rate on a five-year fixed mortgage?"])

    assert rows.shape == (3, EMBEDDING_DIM) and rows.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-5)
    assert rows[0] @ rows[1] > rows[0] @ rows[2] + 0.2
    assert embedder.embed([]).shape == (0, EMBEDDING_DIM)
    assert embedder.identity.startswith("all-MiniLM-L6-v2@")


def test_embeddings_match_sentence_transformers(embedder: PromptEmbedder) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    texts = ["Why was my card declined at the supermarket?", "", "Can I overpay my tracker mortgage?" * 20]
    reference = sentence_transformers.SentenceTransformer(str(embedder.model_path), device="cpu")
    reference.max_seq_length = embedder.max_length

    expected = reference.encode(texts, normalize_embeddings=True)

    np.testing.assert_allclose(embedder.embed(texts), expected, atol=1e-5)


def test_embedding_cache_is_bounded_and_keeps_order(embedder: PromptEmbedder) -> None:
    small = PromptEmbedder(embedder.model_path.as_posix(), cache_size=2)
    texts = ["first question", "second question", "third question"]

    first = small.embed(texts)
    again = small.embed(list(reversed(texts)))

    assert len(small._cache) == 2
    np.testing.assert_allclose(again, first[::-1], atol=1e-6)


def test_a_missing_model_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="no sentence-embedding model"):
        PromptEmbedder(str(tmp_path / "absent"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(ConfigError, match="cannot load"):
        PromptEmbedder(str(broken)).embed(["hello"])


def test_a_change_of_topic_is_embedding_drift(topic_prompts) -> None:
    cards, card_rows = topic_prompts["cards"]
    mortgages, mortgage_rows = topic_prompts["mortgages"]

    report = drift_report(prompt_frame(cards), prompt_frame(mortgages), columns=["prompt_chars"],
                          reference_embeddings=card_rows, current_embeddings=mortgage_rows)

    embeddings = report.summary["embeddings"]
    assert embeddings["drifted"] is True and report.summary["drifted"] is True
    assert embeddings["method"] == "model" and embeddings["score"] > 0.9
    assert [row["name"] for row in embeddings["components"]] == [f"emb_pc{k}" for k in range(1, 6)]
    assert "emb_pc1" in report.html


def test_two_halves_of_one_prompt_mix_are_not_drift(topic_prompts) -> None:
    texts = topic_prompts["cards"][0] + topic_prompts["mortgages"][0]
    rows = np.vstack([topic_prompts["cards"][1], topic_prompts["mortgages"][1]])
    order = np.random.default_rng(0).permutation(len(texts))
    first, second = order[:150], order[150:]

    report = drift_report(prompt_frame([texts[i] for i in first]), prompt_frame([texts[i] for i in second]),
                          columns=["prompt_chars"], reference_embeddings=rows[first], current_embeddings=rows[second])

    assert report.summary["embeddings"]["drifted"] is False
    assert report.summary["embeddings"]["score"] < 0.6
    assert report.summary["drifted"] is False


def test_a_report_leaves_numpy_global_random_state_alone(topic_prompts) -> None:
    _, card_rows = topic_prompts["cards"]
    _, mortgage_rows = topic_prompts["mortgages"]
    np.random.seed(1234)
    expected = np.random.random(3)
    np.random.seed(1234)

    drift_report(numeric_window(150, seed=15), numeric_window(150, seed=16), columns=["x0"],
                 reference_embeddings=card_rows, current_embeddings=mortgage_rows)

    np.testing.assert_array_equal(np.random.random(3), expected)
