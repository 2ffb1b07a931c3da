"""What `lmforge evaluate --text` and `--classify` do: score a run on a file the user gives."""

import logging
import re
from pathlib import Path
from typing import Any

import sacrebleu

from lmforge.config import (
    SamplingConfig,
)
from lmforge.data.chat import DEFAULT_TEMPLATE, ChatTemplate
from lmforge.data.classify import (
    classification_batches,
    encode_examples,
    read_examples,
)
from lmforge.data.sentence_split import HAN, HANGUL, KANA
from lmforge.data.sft import (
    Pair,
    read_pairs,
)
from lmforge.data.shards import TokenShards
from lmforge.errors import ConfigError, DataError, LMForgeError
from lmforge.evaluate import (
    Perplexity,
    TextScore,
    classification_metrics,
    format_classification_report,
    format_confusion_matrix,
    predict_logits,
    score_text,
    split_perplexity,
)
from lmforge.generation.loop import generate, require_causal_lm
from lmforge.plots import plot_confusion_matrix, plot_position_loss
from lmforge.rundir import layout
from lmforge.rundir.files import read_text
from lmforge.rundir.load import load_classifier, load_run, read_chat_template
from lmforge.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# sacrebleu's tokenizers that `evaluate --sft --bleu-tokenize` offers, "auto" choosing among them
BLEU_TOKENIZERS = ("auto", "13a", "zh", "char", "intl", "none")
_CJK_LETTER = re.compile(f"[{HAN}{KANA}{HANGUL}]")
_KANA_OR_HANGUL = re.compile(f"[{KANA}{HANGUL}]")


def evaluate_text(
    run_dir: Path, text_file: Path, stride: int | None = None, plot: Path | None = None
) -> tuple[TextScore, Path | None]:
    """Loss, perplexity and bits per byte of a causal LM on a UTF-8 text (sliding windows).

    The text is scored as one document after <|endoftext|>, so every one of its tokens counts;
    the loss-by-position curve goes to `plot` when given.
    """
    cfg, model, tokenizer = load_run(run_dir)
    require_causal_lm(model)
    text = read_text(text_file)
    window = cfg.model.block_size
    if stride is not None and not 1 <= stride <= window:
        raise ConfigError(f"--stride must be between 1 and the context ({window}); got {stride}")
    ids = [tokenizer.eot_id, *tokenizer.encode(text)]
    score = score_text(model, ids, len(text.encode("utf-8")), window, stride)
    if plot is not None:
        plot.parent.mkdir(parents=True, exist_ok=True)
        plot_position_loss(score.position_loss, plot)
    return score, plot


def evaluate_classifier(
    run_dir: Path,
    data_file: Path,
    batch_size: int = 32,
    plot: Path | None = None,
    task: str | None = None,
) -> dict[str, Any]:
    """Accuracy, macro P/R/F1 and the confusion matrix of a fine-tuned classifier (or of the
    head `task` of a multitask run) on a labelled file with the columns it was tuned on."""
    if batch_size < 1:
        raise LMForgeError("--batch-size must be >= 1")
    cfg, model, tokenizer, labels = load_classifier(run_dir, task)
    ft = cfg.finetune
    examples = read_examples(
        data_file, ft.text_column, ft.label_column, ft.text_pair_column or None, "test"
    )
    enc = encode_examples(examples, tokenizer, cfg.model.arch, cfg.model.block_size, labels, "test")
    if note := enc.truncation_note():
        log.warning("warning: %s (model.block_size)", note)
    logits, targets = predict_logits(model, classification_batches(enc, batch_size))
    metrics = classification_metrics(logits.argmax(1), targets, len(labels))
    if plot is not None:
        plot.parent.mkdir(parents=True, exist_ok=True)
        plot_confusion_matrix(metrics["confusion_matrix"], labels, plot)
    return {
        "metrics": metrics,
        "labels": labels,
        "truncated": enc.truncated,
        "confusion_table": format_confusion_matrix(metrics["confusion_matrix"], labels),
        "report": format_classification_report(metrics, labels),
    }


def evaluate(run_dir: Path, data_dir: Path | None, split: str = "val") -> Perplexity:
    """Perplexity of a run's model over a whole split of a prepared data directory."""
    cfg, model, tokenizer = load_run(run_dir)
    if cfg.model.arch != "gpt":
        raise LMForgeError(
            f"{run_dir} holds a {cfg.model.arch}: perplexity needs a causal GPT; its masked-LM "
            "and NSP accuracy are in metrics.jsonl"
        )
    shards = TokenShards(data_dir or cfg.data.dir)
    if shards.meta["tokenizer_sha256"] != tokenizer.sha256():
        raise DataError(f"{shards.directory} was tokenized with another tokenizer than {run_dir}")
    if split not in shards.arrays:
        raise DataError(f"unknown split {split!r}; use train or val")
    shards.check_fits(split, cfg.model.block_size + 1)
    return split_perplexity(model, shards, split, cfg.model.block_size)


def bleu_tokenizer(references: list[str]) -> str:
    """The sacrebleu tokenizer "auto" picks for BLEU against these references.

    `13a` (sacrebleu's default, for text with spaces between words) unless more than half of
    the references' letters (str.isalpha: digits, punctuation and spaces do not count) are
    Chinese, Japanese or Korean. Then `zh` (each Han character a token, 13a for the rest) when
    at most a tenth of the CJK letters are Kana or Hangul (Chinese text); else `char`
    (every character a token): `zh` would keep a run of Kana or a Hangul word as one token, and
    sacrebleu's Japanese and Korean tokenizers need MeCab, which lmforge does not install.
    """
    letters = [c for reference in references for c in reference if c.isalpha()]
    cjk = [c for c in letters if _CJK_LETTER.match(c)]
    if 2 * len(cjk) <= len(letters):
        return "13a"
    kana_or_hangul = sum(1 for c in cjk if _KANA_OR_HANGUL.match(c))
    return "zh" if 10 * kana_or_hangul <= len(cjk) else "char"


def _check_bleu_tokenize(tokenize: str) -> None:
    if tokenize not in BLEU_TOKENIZERS:
        raise ConfigError(f"unknown BLEU tokenizer {tokenize!r}; use one of {BLEU_TOKENIZERS}")


def bleu(hypotheses: list[str], references: list[str], tokenize: str = "auto") -> tuple[float, str]:
    """sacrebleu's corpus BLEU of the hypotheses against one reference each, and the tokenizer
    it used: `tokenize`, or for "auto" the one `bleu_tokenizer` picks from the references."""
    _check_bleu_tokenize(tokenize)
    if tokenize == "auto":
        tokenize = bleu_tokenizer(references)
    return sacrebleu.corpus_bleu(hypotheses, [references], tokenize=tokenize).score, tokenize


def score_generation(
    run_dir: Path,
    pairs: list[Pair],
    max_new_tokens: int | None = None,
    batch_size: int = 8,
    bleu_tokenize: str = "auto",
) -> dict[str, Any]:
    """Greedy completions of every prompt against the references: exact match, BLEU (with the
    sacrebleu tokenizer `bleu` chose, recorded as bleu_tokenize) and chrF (on characters)."""
    _check_bleu_tokenize(bleu_tokenize)  # before the generation, not after it
    _, model, tokenizer = load_run(run_dir)
    longest = max(len(tokenizer.encode(p.completion)) for p in pairs)
    limit = max_new_tokens or min(2 * longest + 8, model.cfg.block_size - 1)
    sampling = SamplingConfig(max_new_tokens=limit, temperature=0)
    prompts = [p.prompt for p in pairs]
    template = read_chat_template(run_dir, tokenizer)
    stop = [template.end_of_turn()] if template is not None else []  # e.g. <|im_end|>
    outputs = list(generate(model, tokenizer, prompts, sampling, stop, batch_size=batch_size))
    references = [p.completion.strip() for p in pairs]
    hypotheses = [o.strip() for o in outputs]
    exact = sum(h == r for h, r in zip(hypotheses, references, strict=True)) / len(pairs)
    bleu_score, bleu_tokenize = bleu(hypotheses, references, bleu_tokenize)
    return {
        "examples": len(pairs),
        "exact_match": exact,
        "bleu": bleu_score,
        "bleu_tokenize": bleu_tokenize,
        "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
        "samples": [
            {"prompt": p, "output": o} for p, o in zip(prompts[:3], hypotheses[:3], strict=True)
        ],
    }


def evaluate_sft(
    run_dir: Path, file: Path, skip_bad_lines: bool = False, bleu_tokenize: str = "auto"
) -> dict[str, Any]:
    """`lmforge evaluate RUN --sft FILE`: generation scores on a JSONL of pairs."""
    tokenizer = Tokenizer.load(Path(run_dir) / layout.TOKENIZER_FILE)
    template = read_chat_template(run_dir, tokenizer) or ChatTemplate(
        DEFAULT_TEMPLATE, eos_token=tokenizer.end_token or ""
    )
    pairs = read_pairs(file, skip_bad_lines, template)
    return score_generation(run_dir, pairs, bleu_tokenize=bleu_tokenize)
