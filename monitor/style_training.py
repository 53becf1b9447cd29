"""Training and evaluating the style heads of :mod:`monitor.style_model` on the labelled sentences.

``monitor/data/style_sentences.jsonl`` holds one JSON object per line::

    {"text": "...", "label": "sycophancy" | "hedging" | "overpromise" | "refusal" | "none",
     "group": "<label>/<idea>", "split": "train" | "holdout"}

A group is one idea written a few ways; the holdout's groups are ideas (and mostly words) that
training never sees, so holdout figures measure wordings the heads were not fitted to. The set was
written independently of the simulator's phrase banks (:mod:`monitor.sim.banks`).

:func:`train_style_model` fits one scikit-learn logistic regression per label on the train split
(the label against everything else, classes weighted to balance); ``c`` and ``lexical_scale`` were
chosen by :func:`cross_validate` (grouped 5-fold on train), never on the holdout.
:func:`evaluate_style_model` scores a split per signal three ways: the head alone, the phrase list
alone, and the production rule (either one).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monitor.style_model import (
    DEFAULT_LAYERS,
    LEXICAL_FEATURES,
    STYLE_LABELS,
    THRESHOLD,
    SentenceEncoder,
    StyleHeads,
    lexical_features,
    shared_encoder,
)

DEFAULT_SET = Path(__file__).resolve().parent / "data" / "style_sentences.jsonl"
LABELS: tuple[str, ...] = (*STYLE_LABELS, "none")
SPLITS = ("train", "holdout")
#: Chosen by grouped cross-validation on the train split (docs/signals.md).
DEFAULT_C = 4.0
DEFAULT_LEXICAL_SCALE = 1.0
# Tight enough that a retrain reproduces the shipped coefficients to ~1e-6, not just the predictions.
_TOLERANCE = 1e-8


@dataclass(frozen=True)
class LabelledSentence:
    text: str
    label: str
    group: str
    split: str


def load_labelled(path: str | Path = DEFAULT_SET) -> list[LabelledSentence]:
    """The labelled sentences of ``path``; a malformed line raises ``ValueError`` naming it."""
    sentences = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                sentence = LabelledSentence(record["text"], record["label"], record["group"], record["split"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: not a labelled sentence ({exc})") from exc
            if sentence.label not in LABELS or sentence.split not in SPLITS or not sentence.text.strip():
                raise ValueError(f"{path}:{number}: label must be one of {', '.join(LABELS)} and split one of "
                                 f"{', '.join(SPLITS)}, with a non-empty text; got {record!r}")
            sentences.append(sentence)
    shared = {s.group for s in sentences if s.split == "train"} & {s.group for s in sentences if s.split == "holdout"}
    if shared:
        raise ValueError(f"{path}: groups in both splits: {', '.join(sorted(shared))}")
    return sentences


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# Each labelled sentence is encoded once per process and encoder: training, cross-validation and
# evaluation (and the tests that run all three) read the same few thousand sentences.
_encoded: dict[tuple[str, str], np.ndarray] = {}
_encoded_lock = threading.Lock()


def encode_labelled(encoder: SentenceEncoder, texts: Sequence[str]) -> np.ndarray:
    """``encoder.encode(texts)``, remembered per text for the labelled sets' sizes."""
    key = f"{encoder.identity}/{encoder.layers}"
    with _encoded_lock:
        missing = [t for t in dict.fromkeys(texts) if (key, t) not in _encoded]
    if missing:
        rows = encoder.encode(missing)
        with _encoded_lock:
            if len(_encoded) > 50_000:
                _encoded.clear()
            _encoded.update({(key, t): row for t, row in zip(missing, rows, strict=True)})
    with _encoded_lock:
        return np.stack([_encoded[(key, t)] for t in texts]) if texts else np.zeros((0, encoder.width), np.float32)


def _features(encoder: SentenceEncoder, texts: Sequence[str], lexical_scale: float) -> np.ndarray:
    return np.hstack([encode_labelled(encoder, texts), lexical_scale * lexical_features(texts)])


def _fit_heads(features: np.ndarray, labels: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    coef, intercept = [], []
    for label in STYLE_LABELS:
        model = LogisticRegression(C=c, class_weight="balanced", solver="newton-cg", max_iter=1000, tol=_TOLERANCE)
        model.fit(features, labels == label)
        coef.append(model.coef_[0])
        intercept.append(model.intercept_[0])
    return np.array(coef), np.array(intercept)


def train_style_model(path: str | Path = DEFAULT_SET, *, encoder: SentenceEncoder | None = None,
                      c: float = DEFAULT_C, lexical_scale: float = DEFAULT_LEXICAL_SCALE) -> StyleHeads:
    """Heads fitted on the train split of ``path`` (deterministic: same set, same heads)."""
    if not c > 0 or not lexical_scale >= 0:
        raise ValueError(f"c must be > 0 and lexical_scale >= 0, got {c!r} and {lexical_scale!r}")
    encoder = encoder or shared_encoder(DEFAULT_LAYERS)
    train = [s for s in load_labelled(path) if s.split == "train"]
    features = _features(encoder, [s.text for s in train], lexical_scale)
    coef, intercept = _fit_heads(features, np.array([s.label for s in train]), c)
    return StyleHeads(coef=coef, intercept=intercept, layers=encoder.layers, lexical_scale=lexical_scale, c=c,
                      encoder=encoder.identity, trained_on=file_digest(path))


@dataclass(frozen=True)
class Score:
    """Sentence-level precision and recall of one way of detecting one signal."""

    true_positives: int
    false_positives: int
    false_negatives: int

    @property
    def precision(self) -> float:
        flagged = self.true_positives + self.false_positives
        return self.true_positives / flagged if flagged else float("nan")

    @property
    def recall(self) -> float:
        positives = self.true_positives + self.false_negatives
        return self.true_positives / positives if positives else float("nan")


METHODS = ("classifier", "regex", "combined")


@dataclass(frozen=True)
class StyleEvaluation:
    split: str
    sentences: int
    positives: dict[str, int]
    scores: dict[str, dict[str, Score]]  # signal -> method -> score
    errors: dict[str, list[str]]  # signal -> "FP [true label] text" / "FN text" of the classifier

    def report(self) -> str:
        lines = [f"{self.split}: {self.sentences} sentences; precision / recall per signal "
                 "(classifier = the head alone, regex = the phrase list alone, combined = either, as in production)",
                 f"{'signal':<12} {'positives':>9}  " + "  ".join(f"{m:>17}" for m in METHODS)]
        for label in STYLE_LABELS:
            cells = "  ".join(f"{_fmt(s.precision):>8} / {_fmt(s.recall):<6}" for s in self.scores[label].values())
            lines.append(f"{label:<12} {self.positives[label]:>9}  {cells}")
        return "\n".join(lines)


def _fmt(value: float) -> str:
    return "-" if value != value else f"{value:.3f}"  # NaN: nothing flagged, or no positives


def _evaluate(sentences: Sequence[LabelledSentence], probabilities: np.ndarray, split: str) -> StyleEvaluation:
    texts = [s.text for s in sentences]
    truth = np.array([s.label for s in sentences])
    lexical = lexical_features(texts)
    regex = {label: lexical[:, LEXICAL_FEATURES.index(f"regex_{label}")] > 0.5 for label in STYLE_LABELS}
    scores: dict[str, dict[str, Score]] = {}
    errors: dict[str, list[str]] = {}
    for index, label in enumerate(STYLE_LABELS):
        positive = truth == label
        head = probabilities[:, index] > THRESHOLD
        scores[label] = {method: Score(int((flagged & positive).sum()), int((flagged & ~positive).sum()),
                                       int((~flagged & positive).sum()))
                         for method, flagged in (("classifier", head), ("regex", regex[label]),
                                                 ("combined", head | regex[label]))}
        errors[label] = ([f"FP [{truth[i]}] {texts[i]}" for i in np.flatnonzero(head & ~positive)]
                         + [f"FN {texts[i]}" for i in np.flatnonzero(~head & positive)])
    return StyleEvaluation(split, len(sentences), {label: int((truth == label).sum()) for label in STYLE_LABELS},
                           scores, errors)


def evaluate_style_model(heads: StyleHeads, path: str | Path = DEFAULT_SET, *, split: str = "holdout",
                         encoder: SentenceEncoder | None = None) -> StyleEvaluation:
    """Sentence-level precision and recall of ``heads`` on ``split`` of ``path``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    encoder = encoder or shared_encoder(heads.layers)
    sentences = [s for s in load_labelled(path) if s.split == split]
    features = _features(encoder, [s.text for s in sentences], heads.lexical_scale)
    return _evaluate(sentences, heads.probabilities(features), split)


def cross_validate(path: str | Path = DEFAULT_SET, *, c: float = DEFAULT_C,
                   lexical_scale: float = DEFAULT_LEXICAL_SCALE, folds: int = 5,
                   encoder: SentenceEncoder | None = None) -> StyleEvaluation:
    """Grouped ``folds``-fold cross-validation on the train split: whole groups are held out
    together, so each fold scores ideas its heads never saw (how ``c`` was chosen)."""
    encoder = encoder or shared_encoder(DEFAULT_LAYERS)
    train = [s for s in load_labelled(path) if s.split == "train"]
    features = _features(encoder, [s.text for s in train], lexical_scale)
    labels = np.array([s.label for s in train])
    groups = sorted({s.group for s in train})
    order = np.random.default_rng(0).permutation(len(groups))
    fold_of = {groups[g]: rank % folds for rank, g in enumerate(order)}
    fold = np.array([fold_of[s.group] for s in train])
    probabilities = np.zeros((len(train), len(STYLE_LABELS)))
    for k in range(folds):
        coef, intercept = _fit_heads(features[fold != k], labels[fold != k], c)
        logits = features[fold == k] @ coef.T + intercept
        probabilities[fold == k] = 1.0 / (1.0 + np.exp(-logits))
    return _evaluate(train, probabilities, f"train, grouped {folds}-fold cross-validation")
