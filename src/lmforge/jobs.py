"""The jobs behind each CLI verb: wire components together, nothing else."""

import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lmforge import checkpoint as ckpt
from lmforge.config import RunConfig, SamplingConfig, apply_overrides, from_dict, to_dict
from lmforge.data.corpus import stream_corpus
from lmforge.data.shards import TokenShards, replace_directory, write_shards
from lmforge.errors import CheckpointError, ConfigError, DataError, LMForgeError
from lmforge.evaluate import Perplexity, split_perplexity
from lmforge.files import check_output_dir, read_utf8
from lmforge.finetune import classify_config, finetune_classify
from lmforge.generate import generate as generate_completions
from lmforge.generate import generate_text
from lmforge.predict import PredictOptions
from lmforge.predict import predict as predict_file
from lmforge.tokenizer import Tokenizer
from lmforge.training import open_data, train

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- prepare


@dataclass(frozen=True, kw_only=True, slots=True)
class PrepareOptions:
    inputs: list[str]
    out: Path
    tokenizer: str = "bpe"
    vocab_size: int = 8192
    val_fraction: float = 0.1
    min_chars: int = 16
    encoding_errors: str = "strict"
    tokenizer_file: Path | None = None
    overwrite: bool = False
    lowercase: bool = True  # wordpiece only: lowercase and strip accents, as uncased BERT


def prepare(opts: PrepareOptions) -> dict[str, Any]:
    """Corpus -> cleaned documents -> tokenizer -> train/val token shards in opts.out."""
    if not 0 <= opts.val_fraction < 1:
        raise DataError("--val-fraction must be in [0, 1)")
    check_output_dir(opts.out, opts.overwrite)
    corpus = lambda: stream_corpus(opts.inputs, opts.min_chars, opts.encoding_errors)  # noqa: E731
    documents, report = corpus()
    texts = (d.text for d in documents)
    if opts.tokenizer_file:
        tokenizer = Tokenizer.load(opts.tokenizer_file)
        sum(1 for _ in texts)  # one pass for the report
    elif opts.tokenizer == "char":
        tokenizer = Tokenizer.train_char(texts)
    elif opts.tokenizer == "bpe":
        tokenizer = Tokenizer.train_bpe(texts, opts.vocab_size)
    elif opts.tokenizer == "wordpiece":
        tokenizer = Tokenizer.train_wordpiece(texts, opts.vocab_size, lowercase=opts.lowercase)
    else:
        raise DataError(f"unknown --tokenizer {opts.tokenizer!r}; use bpe, wordpiece or char")
    if report.documents_out == 0:
        raise DataError(
            f"empty corpus after cleaning: {report.documents_in} documents read, "
            f"{report.too_short} shorter than --min-chars {opts.min_chars}, "
            f"{report.duplicates} duplicates; give more text or lower --min-chars"
        )
    log.info("corpus: %s", report.summary())
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=opts.out.parent, prefix=f".{opts.out.name}."))
    try:
        tokenizer.save(tmp / ckpt.TOKENIZER_FILE)
        documents, _ = corpus()
        meta = write_shards(documents, tokenizer, tmp, opts.val_fraction)
        replace_directory(tmp, opts.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"report": report.to_dict(), **meta}


# ---------------------------------------------------------------- pretrain


def pretrain(cfg: RunConfig, out: Path, overwrite: bool = False) -> dict[str, Any]:
    """Train a new model from cfg into run directory `out`."""
    check_output_dir(out, overwrite)
    shards, _ = open_data(cfg)
    if cfg.model.vocab_size == 0:
        cfg = replace(cfg, model=replace(cfg.model, vocab_size=shards.vocab_size))
    elif cfg.model.vocab_size != shards.vocab_size:
        raise ConfigError(
            f"model.vocab_size={cfg.model.vocab_size} but the data's tokenizer has "
            f"{shards.vocab_size} tokens; drop model.vocab_size (0 takes it from the data)"
        )
    if out.exists() and overwrite:
        shutil.rmtree(out)
    return train(cfg, out, resume_from=None)


def resume(run_dir: Path, sets: list[str]) -> dict[str, Any]:
    """Continue a run from its newest checkpoint, exactly; `sets` may change train.* and data.*."""
    cfg = ckpt.read_run_config(run_dir)
    if any(s.strip().startswith("model.") for s in sets):
        raise ConfigError("model.* cannot change when resuming; start a new run instead")
    cfg = from_dict(RunConfig, apply_overrides(to_dict(cfg), sets))
    run_tokenizer = Tokenizer.load(run_dir / ckpt.TOKENIZER_FILE)
    _, data_tokenizer = open_data(cfg)
    if run_tokenizer.sha256() != data_tokenizer.sha256():
        raise DataError(
            f"{cfg.data.dir} was tokenized with another tokenizer than {run_dir} was trained "
            "with; resume on data prepared with the run's tokenizer.json (--tokenizer-file)"
        )
    checkpoints = ckpt.list_checkpoints(run_dir)
    if not checkpoints:
        raise CheckpointError(f"{run_dir} has no complete checkpoint to resume from")
    return train(cfg, run_dir, resume_from=checkpoints[-1])


# ---------------------------------------------------------------- fine-tune and predict


def finetune(
    base: Path,
    config: Path | None,
    sets: list[str],
    inputs: dict[str, Any],
    out: Path,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fine-tune run `base` as a sequence classifier into `out`; inputs are finetune.* values."""
    return finetune_classify(classify_config(base, config, sets, inputs), out, overwrite)


def predict(opts: PredictOptions) -> dict[str, Any]:
    """Classify every row of a file with a fine-tuned run; JSONL out."""
    return predict_file(opts)


# ---------------------------------------------------------------- generate and evaluate


def generate(
    run_dir: Path, prompt: str, sampling: SamplingConfig, stop: list[str], which: str = "latest"
) -> Iterator[str]:
    """Stream text continuing `prompt` from a run's model."""
    _, model, tokenizer = ckpt.load_run(run_dir, which)
    return generate_text(model, tokenizer, prompt, sampling, stop)


def read_prompts(path: Path) -> list[str]:
    """The prompts of a UTF-8 text file, one per line; blank lines are skipped."""
    text = read_utf8(path, "prompts file")
    prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise DataError(f"{path} holds no prompts; write one prompt per line")
    return prompts


def generate_batch(
    run_dir: Path,
    prompts_file: Path,
    sampling: SamplingConfig,
    stop: list[str],
    which: str = "latest",
    batch_size: int = 8,
) -> Iterator[tuple[str, str]]:
    """(prompt, completion) for every prompt of a file, in order, decoded batch_size at a time."""
    if batch_size < 1:
        raise LMForgeError("--batch-size must be >= 1")
    prompts = read_prompts(prompts_file)
    _, model, tokenizer = ckpt.load_run(run_dir, which)
    completions = generate_completions(model, tokenizer, prompts, sampling, stop, batch_size)
    return zip(prompts, completions, strict=True)


def evaluate(run_dir: Path, data_dir: Path | None, split: str = "val") -> Perplexity:
    """Perplexity of a run's model over a whole split of a prepared data directory."""
    cfg, model, tokenizer = ckpt.load_run(run_dir)
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


# ---------------------------------------------------------------- Hugging Face interop


def import_hf(source: str, out: Path, overwrite: bool = False) -> dict[str, Any]:
    """A Hugging Face GPT-2 / GPT-NeoX / BERT (directory or Hub id) -> a run directory."""
    from lmforge.interop import hf  # imported here: only these two verbs need it

    return hf.import_hf(source, out, overwrite)


def export_hf(run_dir: Path, out: Path, overwrite: bool = False) -> dict[str, Any]:
    """A run directory -> a directory that transformers' from_pretrained loads; an adapter run
    -> its base there and its LoRA as a PEFT adapter in out/adapter/."""
    from lmforge.adapters import is_adapter_run
    from lmforge.interop import hf, peft

    if is_adapter_run(Path(run_dir)):
        return peft.export_peft_adapter(run_dir, out, overwrite)
    return hf.export_hf(run_dir, out, overwrite)
