"""Tokenizers over Hugging Face `tokenizers`: byte-level BPE (GPT-2 style), WordPiece (BERT) and
char-level.

Each saves a `tokenizer.json` that transformers loads: `PreTrainedTokenizerFast(tokenizer_file=...)`
for BPE and char, `BertTokenizerFast(tokenizer_file=...)` for WordPiece.
"""

import hashlib
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer

from lmforge.errors import DataError
from lmforge.rundir.files import write_text_atomic

EOT = "<|endoftext|>"
# End-of-text tokens of the tokenizers lmforge imports, in the order one is looked for:
# GPT-2, Qwen and SmolLM's <|endoftext|>, Llama 3's <|end_of_text|>, SentencePiece's </s>.
END_TOKENS = (EOT, "<|end_of_text|>", "</s>", "<eos>")
UNK = "<|unk|>"
PAD, BERT_UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
BERT_SPECIALS = (PAD, BERT_UNK, CLS, SEP, MASK)  # ids 0..4 of a trained WordPiece vocabulary
_KINDS = {"BPE": "bpe", "WordLevel": "char", "WordPiece": "wordpiece"}


NORMALIZATIONS = ("none", "nfc", "nfkc")


def unicode_normalizer(form: str) -> normalizers.Normalizer:
    """The tokenizer-side Unicode normalisation: NFC composes (é as one code point), NFKC also
    folds compatibility forms (full-width ＡＢＣ１２３ -> ABC123, ligatures, circled digits). Stored
    in tokenizer.json, so every later encode (generation, evaluation, serving) applies it."""
    if form == "nfc":
        return normalizers.NFC()
    if form == "nfkc":
        return normalizers.NFKC()
    raise DataError(f"--normalize must be one of {', '.join(NORMALIZATIONS)}; got {form!r}")


class Tokenizer:
    """Text <-> token ids. Documents are separated by an end-of-text token (`<|endoftext|>` for
    the tokenizers lmforge trains; END_TOKENS lists the others it recognises) or by `[SEP]`
    (wordpiece, which also has the BERT specials `[PAD] [UNK] [CLS] [SEP] [MASK]`)."""

    def __init__(self, backend: HFTokenizer) -> None:
        self.backend = backend
        self._specials = {
            token.content: i
            for i, token in backend.get_added_tokens_decoder().items()
            if token.special
        }
        eot = backend.token_to_id(EOT)
        if eot is not None:  # the document separator even where a file does not mark it special
            self._specials.setdefault(EOT, eot)
        self.end_token = next((t for t in END_TOKENS if t in self._specials), None)
        if self.end_token is None and self.special_id(SEP) is None:
            raise DataError(
                f"tokenizer has no end-of-text special token ({', '.join(END_TOKENS)}) and no "
                f"{SEP}, so documents cannot be separated; train one with `lmforge prepare`"
            )

    @classmethod
    def train_bpe(
        cls, texts: Iterable[str], vocab_size: int = 8192, normalize: str = "none"
    ) -> "Tokenizer":
        """Byte-level BPE: every Unicode string round-trips exactly through its 256 byte symbols
        (after the Unicode normalisation `normalize`, if any, which encoding applies too)."""
        if vocab_size < 257:
            raise DataError(f"--vocab-size {vocab_size} is too small for byte-level BPE (>= 257)")
        backend = HFTokenizer(models.BPE())
        if normalize != "none":
            backend.normalizer = unicode_normalizer(normalize)
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
    def train_wordpiece(
        cls,
        texts: Iterable[str],
        vocab_size: int = 16000,
        lowercase: bool = True,
        strip_accents: bool | None = None,
        normalize: str = "none",
    ) -> "Tokenizer":
        """BERT WordPiece: BERT normalizer and pre-tokenizer, `##` continuations, specials 0..4.

        Args:
            strip_accents: None follows `lowercase`, as in the original BERT.
            normalize: a Unicode normalisation (nfc, nfkc) applied before BERT's.
        """
        if vocab_size <= len(BERT_SPECIALS):
            raise DataError(f"--vocab-size {vocab_size} is too small for WordPiece (> 5)")
        backend = HFTokenizer(models.WordPiece(unk_token=BERT_UNK, continuing_subword_prefix="##"))
        bert = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=True,
            strip_accents=strip_accents,
            lowercase=lowercase,
        )
        backend.normalizer = (
            bert
            if normalize == "none"
            else normalizers.Sequence([unicode_normalizer(normalize), bert])
        )
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            special_tokens=list(BERT_SPECIALS),
            continuing_subword_prefix="##",
            show_progress=False,
        )
        backend.train_from_iterator(texts, trainer=trainer)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{CLS}:0 $A:0 {SEP}:0",
            pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
            special_tokens=[(t, backend.token_to_id(t)) for t in (CLS, SEP)],
        )
        return cls(backend)

    @classmethod
    def train_char(cls, texts: Iterable[str], normalize: str = "none") -> "Tokenizer":
        """One token per Unicode character seen in training (after the Unicode normalisation
        `normalize`, which encoding applies too); unseen characters map to <|unk|>."""
        chars: set[str] = set()
        for text in texts:
            chars.update(
                text if normalize == "none" else unicodedata.normalize(normalize.upper(), text)
            )
        vocab = {ch: i for i, ch in enumerate(sorted(chars))}
        vocab[EOT], vocab[UNK] = len(vocab), len(vocab) + 1
        backend = HFTokenizer(models.WordLevel(vocab, unk_token=UNK))
        if normalize != "none":
            backend.normalizer = unicode_normalizer(normalize)
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
        """One of bpe, char or wordpiece (another model type: its lowercased name)."""
        model = type(self.backend.model).__name__
        return _KINDS.get(model, model.lower())

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def vocab(self) -> list[str]:
        """Every token, indexed by its id ("" for an id no token has)."""
        tokens = [""] * self.vocab_size
        for token, i in self.backend.get_vocab(with_added_tokens=True).items():
            tokens[i] = token
        return tokens

    def special_id(self, token: str) -> int | None:
        """The id of a special token (e.g. "[MASK]"), or None when this tokenizer lacks it."""
        return self._specials.get(token)

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids of every special token: never masked, never a random MLM replacement."""
        return frozenset(self._specials.values())

    @property
    def eot_id(self) -> int:
        """The end-of-text id (`<|endoftext|>`, `</s>`, ...); a DataError for tokenizers without
        one (wordpiece)."""
        if self.end_token is None:
            raise DataError(
                f"this {self.kind} tokenizer has no {EOT} token, which causal-LM generation needs; "
                "use a model trained on data prepared with --tokenizer bpe or char"
            )
        return self._specials[self.end_token]

    @property
    def separator_id(self) -> int:
        """The token written before each document in the shards: `<|endoftext|>`, else `[SEP]`."""
        if self.end_token is None:
            return self._specials[SEP]
        return self._specials[self.end_token]

    @property
    def pad_id(self) -> int | None:
        return self.special_id(PAD)

    @property
    def cls_id(self) -> int | None:
        return self.special_id(CLS)

    @property
    def sep_id(self) -> int | None:
        return self.special_id(SEP)

    @property
    def mask_id(self) -> int | None:
        return self.special_id(MASK)

    @property
    def unk_id(self) -> int | None:
        """The id unknown text maps to (`[UNK]` or `<|unk|>`); None for byte-level BPE."""
        unk = getattr(self.backend.model, "unk_token", None)
        return None if unk is None else self.backend.token_to_id(unk)

    def sha256(self) -> str:
        """A fingerprint of the vocabulary and rules, to match data, checkpoints and tokenizers."""
        return hashlib.sha256(self.backend.to_str().encode("utf-8")).hexdigest()

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids; with add_special_tokens, a wordpiece tokenizer adds `[CLS] ... [SEP]`."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_pair(self, a: str, b: str) -> tuple[list[int], list[int]]:
        """`[CLS] a [SEP] b [SEP]` as (ids, token_type_ids): type 0 to the first [SEP], then 1."""
        if self.cls_id is None or self.sep_id is None:
            raise DataError(f"a {self.kind} tokenizer has no [CLS] and [SEP]; use wordpiece")
        encoding = self.backend.encode(a, b, add_special_tokens=True)
        return encoding.ids, encoding.type_ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts in parallel (the Rust backend uses every core)."""
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
