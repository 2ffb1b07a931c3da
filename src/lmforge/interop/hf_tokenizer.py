"""Tokenizers to and from Hugging Face directories.

Import takes `tokenizer.json` when the directory has one, else rebuilds the fast tokenizer from
GPT-2's `vocab.json` + `merges.txt` or BERT's `vocab.txt`. Export writes `tokenizer.json` with
the `tokenizer_config.json` and `special_tokens_map.json` that `AutoTokenizer` reads.
"""

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from lmforge.errors import CheckpointError
from lmforge.interop.hf_layout import (
    HF_MERGES,
    HF_SPECIAL_TOKENS,
    HF_TOKENIZER,
    HF_TOKENIZER_CONFIG,
    HF_VOCAB_JSON,
    HF_VOCAB_TXT,
)
from lmforge.tokenizer import EOT, Tokenizer

BERT_SPECIALS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def import_tokenizer(src: Path, model_type: str) -> Tokenizer:
    """The tokenizer of a Hugging Face model directory."""
    settings = (
        _read_json(src / HF_TOKENIZER_CONFIG) if (src / HF_TOKENIZER_CONFIG).is_file() else {}
    )
    if (src / HF_TOKENIZER).is_file():
        try:
            backend = HFTokenizer.from_file(str(src / HF_TOKENIZER))
        except Exception as exc:  # the Rust side raises plain Exception
            raise CheckpointError(f"cannot read {src / HF_TOKENIZER}: {exc}") from None
    elif model_type == "bert" and (src / HF_VOCAB_TXT).is_file():
        backend = _wordpiece_from_vocab(src / HF_VOCAB_TXT, settings)
    elif (src / HF_VOCAB_JSON).is_file() and (src / HF_MERGES).is_file():
        backend = _byte_bpe_from_files(src / HF_VOCAB_JSON, src / HF_MERGES, settings)
    else:
        raise CheckpointError(
            f"{src} has no tokenizer: expected tokenizer.json, vocab.json + merges.txt (GPT-2) "
            "or vocab.txt (BERT)"
        )
    backend.no_padding()
    backend.no_truncation()
    return Tokenizer(backend)


def _byte_bpe_from_files(vocab: Path, merges: Path, settings: dict[str, Any]) -> HFTokenizer:
    """GPT-2's byte-level BPE from its vocab.json and merges.txt."""
    vocab_map = _read_json(vocab)
    lines = merges.read_text(encoding="utf-8").splitlines()
    pairs = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    backend = HFTokenizer(models.BPE(vocab_map, pairs))
    prefix_space = bool(settings.get("add_prefix_space", False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    if EOT in vocab_map:
        backend.add_special_tokens([EOT])
    return backend


def _wordpiece_from_vocab(vocab: Path, settings: dict[str, Any]) -> HFTokenizer:
    """BERT's WordPiece from vocab.txt (one token per line; the line number is the id)."""
    tokens = vocab.read_text(encoding="utf-8").splitlines()
    vocab_map = {token: i for i, token in enumerate(tokens)}
    missing = [t for t in BERT_SPECIALS.values() if t not in vocab_map]
    if missing:
        raise CheckpointError(f"{vocab} lacks the BERT special tokens {missing}")
    backend = HFTokenizer(models.WordPiece(vocab_map, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=bool(settings.get("tokenize_chinese_chars", True)),
        strip_accents=settings.get("strip_accents"),
        lowercase=bool(settings.get("do_lower_case", True)),
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = vocab_map["[CLS]"], vocab_map["[SEP]"]
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    backend.decoder = decoders.WordPiece(prefix="##")
    backend.add_special_tokens(list(BERT_SPECIALS.values()))
    return backend


def special_tokens(tokenizer: Tokenizer) -> dict[str, str]:
    """Hugging Face special-token roles (bos_token, …) filled from the tokens the vocab has."""
    backend = tokenizer.backend
    if backend.token_to_id("[CLS]") is not None:
        roles = {f"{role}_token": tok for role, tok in BERT_SPECIALS.items()}
    else:
        end = tokenizer.end_token or EOT
        roles = {"bos_token": end, "eos_token": end, "unk_token": end}
        if backend.token_to_id("<|unk|>") is not None:
            roles["unk_token"] = "<|unk|>"
    return {role: tok for role, tok in roles.items() if backend.token_to_id(tok) is not None}


def special_token_ids(tokenizer: Tokenizer) -> dict[str, int | None]:
    """bos/eos/pad ids for config.json and generation_config.json."""
    backend, roles = tokenizer.backend, special_tokens(tokenizer)
    if "cls_token" in roles:
        return {"pad": backend.token_to_id("[PAD]")}
    eot = backend.token_to_id(tokenizer.end_token or EOT)
    return {"bos": eot, "eos": eot}


def tokenizer_configs(tokenizer: Tokenizer, max_length: int) -> dict[str, dict[str, Any]]:
    """tokenizer_config.json and special_tokens_map.json for AutoTokenizer."""
    roles = special_tokens(tokenizer)
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": False,
        **roles,
    }
    if "cls_token" in roles:
        config["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
    return {HF_TOKENIZER_CONFIG: config, HF_SPECIAL_TOKENS: roles}
