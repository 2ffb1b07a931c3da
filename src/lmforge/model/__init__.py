"""Transformer models: they know nothing of training, data or tokenizers."""

from lmforge.model.attention import KVCache
from lmforge.model.bert import BERT
from lmforge.model.gpt import GPT

__all__ = ["BERT", "GPT", "KVCache"]
