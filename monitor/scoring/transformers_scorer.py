"""`TransformersScorer`: the deployed reward model, loaded with 🤗 transformers, scoring batches.

Any ``AutoModelForSequenceClassification`` reward model works, from a local directory or a hub id
(``MONITOR_RM_MODEL``, ``MONITOR_RM_REVISION``); the score is the logit at ``label_index``.

* **Input format**: the tokenizer's chat template when it has one (the whole conversation, as
  Skywork- / ArmoRM-style RMs expect); otherwise a (context, response) text pair
  (:mod:`monitor.scoring.formatting`).
* **Truncation keeps the response**: the oldest context goes first; only a response that alone
  exceeds the model's limit is cut itself. Every outcome says whether it was truncated.
* **Batching** (:mod:`monitor.scoring.batching`): responses are sorted by token length and grouped
  under a token budget, so padding stays small. On a CPU single-sequence forwards are fastest
  (no padding at all, same arithmetic); on a GPU, few large forwards.
* **Cache**: identical conversations are scored once (bounded LRU on a content hash).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BatchEncoding

from monitor.errors import ScoringError
from monitor.lru import BoundedLru
from monitor.scoring.base import ScoredTurn, ScoreOutcome, ScoringStats, conversations_of
from monitor.scoring.batching import Encoded, plan_batches
from monitor.scoring.formatting import plain_pair

Conversation = Sequence[Mapping[str, str]]

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
STRATEGIES = ("auto", "single", "bucketed")


def resolve_device(device: str) -> torch.device:
    kind = device.split(":")[0]
    if kind not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)} (optionally cuda:N), got {device!r}")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def weights_fingerprint(model_dir: Path) -> str:
    """A short hash of the weight files' sizes and their first and last MiB: cheap even for a
    multi-GB model, and it changes whenever the weights are replaced."""
    digest = hashlib.sha256()
    files = sorted(p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as handle:
            digest.update(handle.read(1 << 20))
            handle.seek(max(size - (1 << 20), 0))
            digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:12]


class TransformersScorer:
    def __init__(
        self,
        model: str,
        *,
        revision: str | None = None,
        label_index: int = 0,
        device: str = "auto",
        dtype: str = "auto",
        max_length: int | None = None,
        max_batch_tokens: int = 16_384,
        strategy: str = "auto",
        cache_size: int = 10_000,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        if max_batch_tokens <= 0 or cache_size < 0 or label_index < 0:
            raise ValueError("max_batch_tokens must be > 0, cache_size >= 0 and label_index >= 0")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, revision=revision)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                model, revision=revision, dtype=self.dtype
            )
        except (OSError, ValueError) as exc:
            raise ScoringError(f"cannot load reward model {model!r}: {exc}") from exc
        self.model.to(self.device).eval()
        n_labels = self.model.config.num_labels
        if label_index >= n_labels:
            raise ValueError(f"label_index {label_index} out of range: the model has {n_labels} label(s)")
        self.label_index = label_index
        limit = max_length or min(self.tokenizer.model_max_length, self.model.config.max_position_embeddings or 10**9)
        self.max_length = int(min(limit, 1 << 20))
        self.max_batch_tokens = max_batch_tokens
        # Measured (`monitor bench scoring`): on a CPU, padded batches only add arithmetic.
        self.strategy = strategy if strategy != "auto" else ("single" if self.device.type == "cpu" else "bucketed")
        self.uses_chat_template = bool(getattr(self.tokenizer, "chat_template", None))
        self._cache: BoundedLru[str, ScoreOutcome] = BoundedLru(cache_size)
        self.stats = ScoringStats()
        local = Path(model)
        version = revision or (weights_fingerprint(local) if local.is_dir() else "main")
        self.model_name = local.name if local.is_dir() else model
        self.revision = version
        self.identity = f"transformers:{self.model_name}@{version}"

    # -- the Scorer seam ------------------------------------------------------------------------
    def score(self, events: Sequence[ScoredTurn]) -> list[ScoreOutcome]:
        return self.score_conversations(conversations_of(events))

    def score_conversations(self, conversations: Sequence[Conversation]) -> list[ScoreOutcome]:
        """One outcome per conversation (last message = the response), in order."""
        started = time.perf_counter()
        stats = ScoringStats()
        outcomes: list[ScoreOutcome | None] = [None] * len(conversations)
        pending: dict[str, list[int]] = {}
        for index, conversation in enumerate(conversations):
            key = _content_key(conversation)
            cached = self._cache.get(key)
            if cached is not None:
                outcomes[index] = cached
                stats.cache_hits += 1
            else:
                pending.setdefault(key, []).append(index)
        encoded: list[Encoded] = []
        for key, indices in pending.items():
            try:
                encoded.append(self._encode(key, conversations[indices[0]]))
            except _Unscorable as exc:
                outcome = ScoreOutcome(None, error=str(exc))
                stats.errors += 1
                for index in indices:
                    outcomes[index] = outcome
        for batch in plan_batches(encoded, max_batch_tokens=self.max_batch_tokens,
                                  single=self.strategy == "single"):
            scores = self._forward(batch, stats)
            for item, value in zip(batch, scores, strict=True):
                outcome = ScoreOutcome(value, truncated=item.truncated)
                self._cache.put(item.key, outcome)
                for index in pending[item.key]:
                    outcomes[index] = outcome
        stats.seconds = time.perf_counter() - started
        self.stats = stats
        return [outcome if outcome is not None else ScoreOutcome(None, error="not scored") for outcome in outcomes]

    # -- internals ------------------------------------------------------------------------------
    def _encode(self, key: str, conversation: Conversation) -> Encoded:
        if not conversation or conversation[-1].get("role") != "assistant":
            raise _Unscorable("the last message must be the assistant response")
        if not conversation[-1].get("content", "").strip():
            raise _Unscorable("empty response")
        try:
            if self.uses_chat_template:
                ids, truncated = self._encode_chat([dict(message) for message in conversation])
            else:
                ids, truncated = self._encode_pair(conversation)
        except Exception as exc:  # noqa: BLE001 - any tokenizer failure is this response's problem
            raise _Unscorable(f"tokenizer failed: {exc.__class__.__name__}: {exc}") from exc
        return Encoded(key=key, input_ids=ids["input_ids"], token_type_ids=ids.get("token_type_ids"),
                       truncated=truncated)

    def _encode_pair(self, conversation: Conversation) -> tuple[dict[str, list[int]], bool]:
        context, response = plain_pair(conversation)
        # verbose=False: measuring an over-long input is the point here, not a mistake to log.
        full = self.tokenizer(context, response, verbose=False) if context else self.tokenizer(response, verbose=False)
        if len(full["input_ids"]) <= self.max_length:
            return dict(full), False
        if not context:
            return dict(self.tokenizer(response, truncation=True, max_length=self.max_length)), True
        # Cut the context (from its start, the oldest part) before touching the response.
        context_ids = self.tokenizer(context, add_special_tokens=False, verbose=False)["input_ids"]
        response_len = len(self.tokenizer(response, add_special_tokens=False, verbose=False)["input_ids"])
        special = len(full["input_ids"]) - len(context_ids) - response_len
        room = self.max_length - special - response_len
        if room > 0:
            kept_context = self.tokenizer.decode(context_ids[len(context_ids) - room:])
            trimmed = self.tokenizer(kept_context, response, truncation="only_first", max_length=self.max_length)
            return dict(trimmed), True
        return dict(self.tokenizer(context, response, truncation="only_second", max_length=self.max_length)), True

    def _encode_chat(self, messages: list[dict[str, str]]) -> tuple[dict[str, list[int]], bool]:
        truncated = False
        while True:
            encoded = self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)
            if not isinstance(encoded, BatchEncoding):  # the declared return type allows text and lists
                raise ScoringError(f"the chat template returned {type(encoded).__name__}, not token ids")
            input_ids = list(encoded["input_ids"])
            if len(input_ids) <= self.max_length:
                return {"input_ids": input_ids}, truncated
            droppable = [i for i, m in enumerate(messages[:-1]) if m["role"] != "system"]
            if len(droppable) <= 1:  # only the prompt is left: keep the end, where the response is
                return {"input_ids": input_ids[-self.max_length:]}, True
            del messages[droppable[0]]
            truncated = True

    def _forward(self, batch: list[Encoded], stats: ScoringStats) -> list[float]:
        width = max(len(item.input_ids) for item in batch)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        types = torch.zeros((len(batch), width), dtype=torch.long) if batch[0].token_type_ids is not None else None
        right = self.tokenizer.padding_side == "right"
        for row, item in enumerate(batch):
            n = len(item.input_ids)
            cols = slice(0, n) if right else slice(width - n, width)
            input_ids[row, cols] = torch.tensor(item.input_ids)
            attention[row, cols] = 1
            if types is not None and item.token_type_ids is not None:
                types[row, cols] = torch.tensor(item.token_type_ids)
            stats.tokens += n
            stats.padded_tokens += width - n
        inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention}
        if types is not None:
            inputs["token_type_ids"] = types
        with torch.inference_mode():
            logits = self.model(**{k: v.to(self.device) for k, v in inputs.items()}).logits
        stats.sequences += len(batch)
        stats.forwards += 1
        return logits[:, self.label_index].float().cpu().tolist()



class _Unscorable(Exception):
    pass


def _content_key(conversation: Conversation) -> str:
    payload = json.dumps([[m.get("role"), m.get("content")] for m in conversation], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
