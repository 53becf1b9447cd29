"""Input-drift reports: has what users send (and what we log about it) moved since the reference window?

:func:`drift_report` compares a reference window with a current one and returns a
:class:`DriftReport`: a JSON-serialisable ``summary`` and a self-contained evidently 0.7 HTML page.

* **Numeric columns** go through evidently's ``DataDriftPreset``, one test per column, the one
  evidently picks for the data: K-S p-value up to 1,000 reference rows, normed Wasserstein distance
  above; for columns with at most 5 distinct values a z-test (two values) or Jensen-Shannon distance
  (above 1,000 rows), and K-S where evidently would use its chi-square. p-value thresholds are
  Bonferroni-corrected over the columns (:data:`FAMILY_ALPHA`).
* **Prompt embeddings** (optional, e.g. from :class:`monitor.analyze.embeddings.PromptEmbedder`) get
  one verdict from evidently's classifier method (``ModelDriftMethod``: ROC AUC of a classifier that
  tells current rows from reference rows on held-out data), called directly rather than through the
  ``EmbeddingsDrift`` metric, whose unseeded t-SNE picture costs ~25 s per 2 x 2,000 rows. For the
  HTML, the embeddings are also projected on their first :data:`EMBEDDING_COMPONENTS` principal
  components (fitted on the reference) and shown as columns ``emb_pc1..emb_pcK``; those explain the
  drift, the classifier decides it.

``summary["drifted"]`` is true when any column or the embeddings drifted. docs/drift.md has the
reasoning and the measured cost.

>>> import numpy as np, pandas as pd
>>> rng = np.random.default_rng(0)
>>> reference = pd.DataFrame({"latency_s": rng.gamma(2.0, 1.0, 500), "turns": rng.integers(1, 8, 500)})
>>> current = reference.assign(latency_s=reference["latency_s"] * 1.5)
>>> report = drift_report(reference, current, columns=["latency_s", "turns"])
>>> report.summary["drifted_columns"], report.summary["columns"][0]["method"]
(['latency_s'], 'ks')
>>> drift_report(reference, current, columns=["latency"])
Traceback (most recent call last):
...
ValueError: columns missing from reference: ['latency'] (available: ['latency_s', 'turns'])
"""

from __future__ import annotations

import html
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from monitor.analyze.embeddings import principal_components

#: Fewer rows than this in either window and no test says anything useful.
MIN_ROWS = 30
#: The chance, over all columns together, of calling drift on two windows from one distribution:
#: each p-value test runs at ``FAMILY_ALPHA / len(columns)`` (Bonferroni). Uncorrected, 12 columns at
#: 0.05 would raise a false alarm on every other pair of identical windows.
FAMILY_ALPHA = 0.05
#: How many principal components of the embeddings the HTML shows as columns.
EMBEDDING_COMPONENTS = 5
#: evidently's own rule for its classifier method: below this many reference rows the AUC is
#: compared with a bootstrap of random guesses (a 5% test), above it with a fixed 0.55.
BOOTSTRAP_BELOW_ROWS = 1000
EMBEDDING_AUC_THRESHOLD = 0.55
#: The classifier sees at most this many rows of each window (a seeded sample): enough to resolve an
#: AUC to about +-0.01, and it bounds the time on long windows.
EMBEDDING_MAX_ROWS = 10_000
#: The tests numeric columns get, by what their score is, and those evidently accepts by name for one.
P_VALUE_METHODS = frozenset({"ks", "z"})
DISTANCE_METHODS = frozenset({"wasserstein", "jensenshannon"})
NAMEABLE_METHODS = frozenset({"ks", "wasserstein", "jensenshannon"})
#: The smallest p-value the ranking distinguishes (K-S returns exactly 0 for disjoint windows).
_SMALLEST_P = 1e-300


@dataclass(frozen=True)
class DriftReport:
    summary: dict  # JSON-serialisable
    html: str  # a self-contained evidently HTML report


def drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    columns: Sequence[str],
    reference_embeddings: np.ndarray | None = None,
    current_embeddings: np.ndarray | None = None,
    title: str = "Input drift",
) -> DriftReport:
    """Compare ``columns`` (numeric) and, when given, the prompt embeddings of two windows.

    Embedding rows align with the frames' rows. Raises ``ValueError`` for missing or non-numeric
    columns, a window with fewer than :data:`MIN_ROWS` usable values, or embeddings that do not match.
    """
    names = _check_columns(reference, current, columns)
    ref = _numeric(reference, names, "reference")
    cur = _numeric(current, names, "current")
    embeddings = _check_embeddings(reference_embeddings, current_embeddings, len(ref), len(cur))
    evidently = _import_evidently()

    plans = {"columns": _plan_tests(ref, cur, names, evidently)}
    if embeddings is not None:
        components = [f"emb_pc{k + 1}" for k in range(min(EMBEDDING_COMPONENTS, embeddings[0].shape[1]))]
        clash = sorted(set(components) & set(names))
        if clash:
            raise ValueError(f"columns {clash} clash with the embedding components the report adds")
        ref_pcs, cur_pcs = principal_components(*embeddings, len(components))
        ref = ref.assign(**dict(zip(components, ref_pcs.T, strict=True)))
        cur = cur.assign(**dict(zip(components, cur_pcs.T, strict=True)))
        plans["components"] = _plan_tests(ref, cur, components, evidently)

    snapshot = _run_evidently(ref, cur, plans, evidently)
    verdicts = _verdicts(snapshot, plans)
    column_rows = [verdicts[name] for name in names]
    drifted_columns = [row["name"] for row in sorted(column_rows, key=_severity, reverse=True) if row["drifted"]]
    embedding_summary = None
    if embeddings is not None:
        embedding_summary = _embedding_drift(*embeddings, evidently)
        embedding_summary["components"] = [verdicts[name] for name in plans["components"]]
    summary: dict[str, Any] = {
        "drifted": bool(drifted_columns) or bool(embedding_summary and embedding_summary["drifted"]),
        "drifted_columns": drifted_columns,
        "share_drifted": len(drifted_columns) / len(names),
        "columns": column_rows,
        "embeddings": embedding_summary,
        "reference_rows": len(ref),
        "current_rows": len(cur),
        "evidently_version": evidently.version,
    }
    page = _with_header(snapshot.get_html_str(as_iframe=False), title, summary)
    return DriftReport(summary=summary, html=page)


# -- input checks ---------------------------------------------------------------------------------
def _check_columns(reference: pd.DataFrame, current: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    if isinstance(columns, str):
        raise ValueError(f"columns must be a list of names, not one string: use [{columns!r}]")
    names = list(columns)
    if not names or not all(isinstance(name, str) for name in names):
        raise ValueError(f"columns must name at least one numeric column, as strings; got {names}")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"columns are named more than once: {duplicates}")
    for label, frame in (("reference", reference), ("current", current)):
        if not isinstance(frame, pd.DataFrame):
            raise ValueError(f"{label} must be a pandas DataFrame, got {type(frame).__name__}")
        missing = [name for name in names if name not in frame.columns]
        if missing:
            raise ValueError(f"columns missing from {label}: {missing} (available: {list(frame.columns)})")
    return names


def _numeric(frame: pd.DataFrame, names: list[str], label: str) -> pd.DataFrame:
    wrong = {name: str(frame[name].dtype) for name in names
             if not pd.api.types.is_numeric_dtype(frame[name]) or pd.api.types.is_complex_dtype(frame[name])}
    if wrong:
        raise ValueError(f"columns must be numeric (int, float or bool); in {label}: {wrong}")
    if len(frame) < MIN_ROWS:
        raise ValueError(f"{label} has {len(frame)} rows; drift needs at least {MIN_ROWS} in each window")
    # evidently drops NaN and +-inf itself; what is left must still be enough to test.
    values = frame[names].astype("float64").reset_index(drop=True)
    usable = np.isfinite(values.to_numpy()).sum(axis=0)
    short = {name: int(count) for name, count in zip(names, usable, strict=True) if count < MIN_ROWS}
    if short:
        raise ValueError(f"columns with fewer than {MIN_ROWS} finite values in {label}: {short}")
    return values


def _check_embeddings(reference: np.ndarray | None, current: np.ndarray | None,
                      reference_rows: int, current_rows: int) -> tuple[np.ndarray, np.ndarray] | None:
    if reference is None and current is None:
        return None
    if reference is None or current is None:
        raise ValueError("pass both reference_embeddings and current_embeddings, or neither")
    pair = []
    for label, array, rows in (("reference", reference, reference_rows), ("current", current, current_rows)):
        matrix = np.asarray(array, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[1] == 0:
            raise ValueError(f"{label}_embeddings must be a 2-D array (rows, dims), got shape {matrix.shape}")
        if matrix.shape[0] != rows:
            raise ValueError(f"{label}_embeddings has {matrix.shape[0]} rows but the {label} frame has {rows}")
        if not np.isfinite(matrix).all():
            raise ValueError(f"{label}_embeddings contains NaN or infinite values")
        pair.append(matrix)
    if pair[0].shape[1] != pair[1].shape[1]:
        raise ValueError(f"embedding widths differ: reference {pair[0].shape[1]}, current {pair[1].shape[1]}")
    return pair[0], pair[1]


# -- evidently ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Evidently:
    """The few evidently names we use, imported once and late (the import takes seconds)."""

    version: str
    Report: Any
    Dataset: Any
    DataDefinition: Any
    DataDriftPreset: Any
    ModelDriftMethod: Any
    get_stattest: Any
    Numerical: Any
    ConvergenceWarning: type[Warning]


def _import_evidently() -> _Evidently:
    # evidently 0.7 touches numpy.core and litestar's deprecated helpers while importing; those
    # DeprecationWarnings are its to fix and would otherwise fail a warnings-as-errors run.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import evidently
        from evidently import DataDefinition, Dataset, Report
        from evidently.legacy.calculations.stattests.registry import get_stattest
        from evidently.legacy.core import ColumnType
        from evidently.metrics.embeddings import ModelDriftMethod
        from evidently.presets import DataDriftPreset
        from sklearn.exceptions import ConvergenceWarning  # evidently's classifier is scikit-learn's
    return _Evidently(evidently.__version__, Report, Dataset, DataDefinition, DataDriftPreset, ModelDriftMethod,
                      get_stattest, ColumnType.Numerical, ConvergenceWarning)


@dataclass(frozen=True)
class _Planned:
    method: str  # evidently's short name ("ks"), what the summary reports
    display_name: str  # how evidently names it in its results ("K-S p_value")
    threshold: float


def _plan_tests(ref: pd.DataFrame, cur: pd.DataFrame, names: list[str], ev: _Evidently) -> dict[str, _Planned]:
    """The test evidently will pick for each column and our threshold for it (p-values corrected)."""
    plan = {}
    for name in names:
        # The values evidently will test: it drops NaN and +-inf before choosing.
        ref_values, cur_values = ref[name], cur[name]
        test = ev.get_stattest(ref_values[np.isfinite(ref_values)], cur_values[np.isfinite(cur_values)],
                               ev.Numerical, None)
        if test.name == "chisquare":
            # evidently's chi-square is a goodness-of-fit test that takes the reference counts as
            # exact, not a two-sample test: on two draws of one 3-valued column it gave p = 0.0001
            # where a contingency test gives 0.009. K-S is a true two-sample test (conservative on
            # ties), and evidently accepts it by name for a numeric column.
            test = ev.get_stattest(ref_values, cur_values, ev.Numerical, "ks")
        if test.name not in P_VALUE_METHODS | DISTANCE_METHODS:
            raise RuntimeError(f"evidently picked {test.name!r} for {name!r}; this module knows only "
                               f"{sorted(P_VALUE_METHODS | DISTANCE_METHODS)}")
        threshold = test.default_threshold / len(names) if test.name in P_VALUE_METHODS else test.default_threshold
        plan[name] = _Planned(test.name, test.display_name, threshold)
    return plan


def _run_evidently(ref: pd.DataFrame, cur: pd.DataFrame, plans: dict[str, dict[str, _Planned]],
                   ev: _Evidently) -> Any:
    presets = [
        # evidently rejects by name the z-test it picks itself for a numeric column with two values,
        # so there it picks again (the same way; _verdicts checks); every other method is named.
        # drift_share = 1/n: evidently's own "dataset drift" verdict then agrees with ours (any column).
        ev.DataDriftPreset(columns=list(plan), drift_share=1 / len(plan),
                           per_column_method={name: planned.method for name, planned in plan.items()
                                              if planned.method in NAMEABLE_METHODS},
                           per_column_threshold={name: planned.threshold for name, planned in plan.items()})
        for plan in plans.values()
    ]
    definition = ev.DataDefinition(numerical_columns=list(ref.columns))
    # A column that is constant in a window has zero variance, and evidently's correlation table
    # divides by it: NaN correlations in a table we do not read, and a RuntimeWarning we silence.
    # SciPy's K-S test falls back from its exact to its asymptotic p-value on large tied samples
    # and says so with a RuntimeWarning; the asymptotic p-value is the right one there.
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="ks_2samp: Exact calculation unsuccessful",
                                category=RuntimeWarning)
        return ev.Report(presets, include_tests=True).run(
            ev.Dataset.from_pandas(cur, data_definition=definition),
            ev.Dataset.from_pandas(ref, data_definition=definition),
        )


def _verdicts(snapshot: Any, plans: dict[str, dict[str, _Planned]]) -> dict[str, dict[str, Any]]:
    """One row per tested column, read back from evidently's ValueDrift metrics and their tests."""
    planned = {name: entry for plan in plans.values() for name, entry in plan.items()}
    content = snapshot.dict()
    failed = {test["metric_config"]["metric_id"]: test["status"] == "FAIL" for test in content["tests"]}
    rows = {}
    for metric in content["metrics"]:
        config = metric["config"]
        if config["type"] != "evidently:metric_v2:ValueDrift":
            continue
        name, plan = config["column"], planned[config["column"]]
        # A method we named comes back by name; one evidently picked, by its display name.
        threshold_kept = math.isclose(config["threshold"], plan.threshold)
        if config["method"] not in (plan.method, plan.display_name) or not threshold_kept:
            raise RuntimeError(f"evidently tested {name!r} with {config['method']} at {config['threshold']}, "
                               f"not {plan.display_name} at {plan.threshold} as planned")
        rows[name] = {"name": name, "drifted": failed[metric["id"]], "score": float(metric["value"]),
                      "method": plan.method, "threshold": plan.threshold}
    return rows


def _severity(row: dict[str, Any]) -> float:
    """How far past its threshold a column's score is (> 1 when drifted), comparable across tests."""
    if row["method"] in P_VALUE_METHODS:
        return math.log(max(row["score"], _SMALLEST_P)) / math.log(row["threshold"])
    return row["score"] / row["threshold"]


# -- embeddings -----------------------------------------------------------------------------------
def _embedding_drift(reference: np.ndarray, current: np.ndarray, ev: _Evidently) -> dict[str, Any]:
    sampler = np.random.default_rng(0)
    ref = reference[np.sort(sampler.permutation(len(reference))[:EMBEDDING_MAX_ROWS])]
    cur = current[np.sort(sampler.permutation(len(current))[:EMBEDDING_MAX_ROWS])]
    bootstrap = len(ref) < BOOTSTRAP_BELOW_ROWS
    method = ev.ModelDriftMethod(threshold=EMBEDDING_AUC_THRESHOLD, bootstrap=bootstrap)
    # The bootstrap reseeds numpy's global generator (np.random.seed(i)); put it back as it was, so
    # that a report leaves no trace in anyone else's random numbers.
    state = np.random.get_state()
    try:
        with warnings.catch_warnings():
            # A classifier stopped short of convergence still gives an honest held-out AUC.
            warnings.simplefilter("ignore", ev.ConvergenceWarning)
            score, drifted, name = method(pd.DataFrame(cur), pd.DataFrame(ref))
    finally:
        np.random.set_state(state)
    return {"drifted": bool(drifted), "score": float(score), "method": str(name),
            "threshold": None if bootstrap else EMBEDDING_AUC_THRESHOLD, "bootstrap": bootstrap}


# -- HTML -----------------------------------------------------------------------------------------
def _with_header(page: str, title: str, summary: dict[str, Any]) -> str:
    """evidently's page with our title and verdict on top (its own page has neither)."""
    verdict = (f"Drift in {', '.join(summary['drifted_columns'])}" if summary["drifted_columns"]
               else "No column drifted")
    lines = [verdict, f"reference {summary['reference_rows']} rows, current {summary['current_rows']} rows; "
             f"evidently {summary['evidently_version']}"]
    emb = summary["embeddings"]
    if emb is not None:
        rule = "bootstrap of random guesses, 5%" if emb["bootstrap"] else f"threshold {emb['threshold']}"
        lines.insert(1, f"Prompt embeddings: {'drift' if emb['drifted'] else 'no drift'} (classifier ROC AUC "
                        f"{emb['score']:.3f}, {rule}); the emb_pc columns below are their principal components")
    body = "".join(f"<p>{html.escape(line)}</p>" for line in lines)
    header = (f'<header style="font-family: sans-serif; margin: 16px 24px">'
              f"<h1>{html.escape(title)}</h1>{body}</header>")
    page = page.replace("<head>", f"<head>\n<title>{html.escape(title)}</title>", 1)
    return page.replace("<body>", f"<body>\n{header}", 1)
