"""Bradley-Terry strengths (choix) with ties, sparse graphs and intervals, and the style-controlled
variant, on comparisons drawn from known strengths."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.relabel.bradley_terry import Comparison, fit_strengths, spearman, style_effect


def draw(theta: np.ndarray, per_item: int, rng: np.random.Generator, *, tie_band: float = 0.0,
         style: np.ndarray | None = None, beta: np.ndarray | None = None) -> list[Comparison]:
    """Random pairs (each item in about ``per_item``), outcomes from the Bradley-Terry model (plus
    style); a close pair (|margin| < tie_band) is a tie half the time."""
    n = len(theta)
    out = []
    for _ in range(n * per_item // 2):
        a, b = rng.choice(n, 2, replace=False)
        margin = theta[a] - theta[b] + (0.0 if style is None else float((style[a] - style[b]) @ beta))
        if abs(margin) < tie_band and rng.random() < 0.5:
            out.append(Comparison(int(a), int(b), "tie"))
        else:
            out.append(Comparison(int(a), int(b), "a" if rng.random() < 1 / (1 + np.exp(-margin)) else "b"))
    return out


def test_strengths_recover_the_true_order_from_a_sparse_graph_with_ties() -> None:
    rng = np.random.default_rng(3)
    theta = rng.normal(0, 1.5, 80)
    comparisons = draw(theta, 12, rng, tie_band=0.3)
    fit = fit_strengths(80, comparisons)
    assert fit.ties > 0 and fit.components == 1 and fit.comparisons == len(comparisons)
    assert spearman(fit.values, theta) >= 0.9
    assert abs(float(fit.values.mean())) < 1e-9


def test_intervals_cover_the_true_strengths() -> None:
    rng = np.random.default_rng(4)
    covered = total = 0
    for _ in range(40):
        theta = rng.normal(0, 1.0, 30)
        fit = fit_strengths(30, draw(theta, 10, rng))
        truth = theta - theta.mean()
        for item in range(30):
            low, high = fit.interval(item)
            covered += low <= truth[item] <= high
            total += 1
    assert covered / total >= 0.92  # the prior shrinks a little towards 0


def test_all_ties_give_equal_strengths_and_disconnected_groups_are_counted() -> None:
    ties = [Comparison(i, (i + 1) % 6, "tie") for i in range(6)] * 3
    fit = fit_strengths(6, ties)
    assert np.allclose(fit.values, 0.0, atol=1e-4)
    apart = fit_strengths(4, [Comparison(0, 1, "a"), Comparison(2, 3, "b")])
    assert apart.components == 2 and apart.values[0] > apart.values[1] and apart.values[3] > apart.values[2]


def test_style_effect_recovers_the_weight_of_length_and_finds_none_where_there_is_none() -> None:
    rng = np.random.default_rng(5)
    n = 120
    theta = rng.normal(0, 0.7, n)
    style = np.column_stack([rng.normal(5, 0.8, n), rng.uniform(0, 0.3, n)])  # log length, markdown
    biased = style_effect(n, draw(theta, 16, rng, style=style, beta=np.array([0.9, 0.0])), style,
                          ("log_length", "markdown"))
    assert abs(biased.beta[0] - 0.9) < 2.5 * biased.se[0] and biased.beta[0] > 0.5
    assert abs(biased.beta[1]) < 2.5 * biased.se[1] + 0.5
    assert biased.explained > 0.05 and biased.explained_with_strengths >= biased.explained
    fair = style_effect(n, draw(theta, 16, rng), style, ("log_length", "markdown"))
    assert abs(fair.beta[0]) < 2.5 * fair.se[0] and fair.explained < biased.explained
    assert set(fair.as_dict()["features"]) == {"log_length", "markdown"}


@pytest.mark.parametrize(("n", "comparisons", "match"), [
    (1, [], "at least two items"),
    (3, [], "at least one comparison"),
    (3, [Comparison(0, 5, "a")], "outside"),
])
def test_bad_input(n: int, comparisons: list[Comparison], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fit_strengths(n, comparisons)


def test_bad_comparisons() -> None:
    with pytest.raises(ValueError, match="outcome"):
        Comparison(0, 1, "draw")
    with pytest.raises(ValueError, match="itself"):
        Comparison(2, 2, "a")
