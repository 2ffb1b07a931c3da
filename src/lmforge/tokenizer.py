"""Tokenizers over Hugging Face `tokenizers`: byte-level BPE (GPT-2 style) and char-level.

Both save a `tokenizer.json` that transformers' `PreTrainedTokenizerFast(tokenizer_file=...)`
loads.
"""

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from lmforge.errors import DataError
from lmforge.files import write_text_atomic

EOT = "<|endoftext|>"
UNK = "<|unk|>"


class Tokenizer:
    """Text <-> token ids, with `<|endoftext|>` as the document separator."""

    def __init__(self, backend: HFTokenizer) -> None:
        if backend.token_to_id(EOT) is None:
            raise DataError(f"tokenizer has no {EOT} token; train one with `lmforge prepare`")
        self.backend = backend

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int = 8192) -> "Tokenizer":
        """Byte-level BPE: every Unicode string round-trips exactly through its 256 byte symbols."""
        if vocab_size < 257:
            raise DataError(f"--vocab-size {vocab_size} is too small for byte-level BPE (>= 257)")
        backend = HFTokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        backend.train_from_iterator(texts, trainer=trainer)
        return cls(backend)

    @classmethod
    def train_char(cls, texts: Iterable[str]) -> "Tokenizer":
        """One token per Unicode character seen in training; unseen characters map to <|unk|>."""
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        vocab = {ch: i for i, ch in enumerate(sorted(chars))}
        vocab[EOT], vocab[UNK] = len(vocab), len(vocab) + 1
        backend = HFTokenizer(models.WordLevel(vocab, unk_token=UNK))
        backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        backend.decoder = decoders.Fuse()
        backend.add_special_tokens([EOT, UNK])
        return cls(backend)

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        """Read a tokenizer.json."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"tokenizer file not found: {path}")
        try:
            backend = HFTokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises plain Exception on bad JSON
            raise DataError(f"cannot read tokenizer {path}: {exc}") from None
        return cls(backend)

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json atomically."""
        write_text_atomic(Path(path), self.backend.to_str(pretty=True))

    @property
    def kind(self) -> str:
        model = json.loads(self.backend.to_str())["model"]["type"]
        return {"BPE": "bpe", "WordLevel": "char"}.get(model, model.lower())

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def eot_id(self) -> int:
        return self.backend.token_to_id(EOT)

    def sha256(self) -> str:
        """A fingerprint of the vocabulary and rules, to match data, checkpoints and tokenizers."""
        return hashlib.sha256(self.backend.to_str().encode("utf-8")).hexdigest()

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts in parallel (the Rust backend uses every core)."""
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
