"""Bridges to other ecosystems: Hugging Face `transformers` checkpoints and tokenizers."""
