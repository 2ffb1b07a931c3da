"""The jobs behind each CLI verb: wire components together, nothing else."""

import logging
import math
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from lmforge import checkpoint as ckpt
from lmforge.config import RunConfig, SamplingConfig, apply_overrides, from_dict, to_dict
from lmforge.data.batches import Batch, clm_batch, step_generator
from lmforge.data.corpus import stream_corpus
from lmforge.data.mlm import BertVocab, mlm_batch
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
from lmforge.train.objectives import clm_loss, mlm_nsp_loss, mlm_nsp_metrics
from lmforge.train.optim import build_optimizer
from lmforge.train.runtime import choose_device, keep_freed_memory, seed_everything
from lmforge.train.tracker import LOSS_PLOT, Tracker
from lmforge.train.trainer import Evaluator, Objective, Trainer

log = logging.getLogger(__name__)
VAL_SEED_KEY = 1  # val batches draw from (seed, 1, i); train batches from (seed, 0, step, micro)


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


def _open_data(cfg: RunConfig) -> tuple[TokenShards, Tokenizer]:
    if not cfg.data.dir:
        raise ConfigError("no data directory: pass --data DIR (made by `lmforge prepare`)")
    shards = TokenShards(cfg.data.dir)
    tokenizer = Tokenizer.load(Path(cfg.data.dir) / ckpt.TOKENIZER_FILE)
    if tokenizer.sha256() != shards.meta["tokenizer_sha256"]:
        raise DataError(f"{cfg.data.dir}: tokenizer.json does not match the one the shards used")
    return shards, tokenizer


def _batch_sources(
    cfg: RunConfig, shards: TokenShards, tokenizer: Tokenizer
) -> tuple[Callable[[int, int], Batch], Callable[[], list[Batch]]]:
    """Step-indexed train batches and a fixed list of validation batches."""
    if cfg.train.objective.startswith("mlm"):
        return _mlm_sources(cfg, shards, tokenizer)
    window, batch_size, seed = cfg.model.block_size + 1, cfg.train.batch_size, cfg.train.seed
    shards.check_fits("train", window)
    shards.check_fits("val", window)

    def train_batch(step: int, micro: int) -> Batch:
        return clm_batch(
            shards.sample_windows("train", batch_size, window, step_generator(seed, 0, step, micro))
        )

    val = [
        clm_batch(
            shards.sample_windows("val", batch_size, window, step_generator(seed, VAL_SEED_KEY, i))
        )
        for i in range(cfg.train.eval_batches)
    ]
    return train_batch, lambda: val


def _mlm_sources(
    cfg: RunConfig, shards: TokenShards, tokenizer: Tokenizer
) -> tuple[Callable[[int, int], Batch], Callable[[], list[Batch]]]:
    """BERT batches: NSP pairs (mlm+nsp) or runs of sentences (mlm), freshly masked each step."""
    vocab = BertVocab.from_tokenizer(tokenizer)
    nsp, batch_size, seed = cfg.train.objective == "mlm+nsp", cfg.train.batch_size, cfg.train.seed
    corpora = {split: shards.sentences(split) for split in ("train", "val")}

    def batch(split: str, generator: torch.Generator) -> Batch:
        return mlm_batch(corpora[split], batch_size, cfg.model.block_size, generator, vocab, nsp)

    val = [
        batch("val", step_generator(seed, VAL_SEED_KEY, i)) for i in range(cfg.train.eval_batches)
    ]
    return lambda step, micro: batch("train", step_generator(seed, 0, step, micro)), lambda: val


def _objective(cfg: RunConfig) -> tuple[Objective, Evaluator | None]:
    """The loss of train.objective and its eval record (None: the trainer's mean loss)."""
    if cfg.train.objective == "clm":
        if cfg.model.arch != "gpt":
            raise ConfigError(
                "train.objective=clm trains a causal GPT; for model.arch=bert set "
                "train.objective=mlm+nsp or mlm"
            )
        return clm_loss, None
    if cfg.train.objective.startswith("mlm"):
        return mlm_nsp_loss, encoder_metrics
    raise ConfigError(
        f"train.objective={cfg.train.objective} is for `lmforge finetune classify`; pretrain "
        "with clm, mlm or mlm+nsp"
    )


def encoder_metrics(model: torch.nn.Module, batches: Iterable[Batch]) -> dict[str, float]:
    """BERT's eval record: val_loss (MLM + NSP loss) and each task's loss and accuracy."""
    metrics = {f"val_{k}": v for k, v in mlm_nsp_metrics(model, batches).items()}
    return {"val_loss": metrics["val_mlm_loss"] + metrics.get("val_nsp_loss", 0.0), **metrics}


@dataclass(frozen=True, slots=True)
class TrainingPlan:
    """What a fine-tune changes in _train: its loss and eval, its batches, its starting model."""

    objective: tuple[Objective, Evaluator | None] | None = None
    sources: tuple[Callable[[int, int], Batch], Callable[[], list[Batch]]] | None = None
    tokenizer: Tokenizer | None = None
    init: Callable[[torch.nn.Module], None] | None = None  # e.g. base weights, freezing, LoRA


def _train(
    cfg: RunConfig,
    run_dir: Path,
    resume_from: Path | None,
    objective: tuple[Objective, Evaluator | None] | None = None,
    plan: TrainingPlan | None = None,
) -> dict[str, Any]:
    """Train cfg's model into run_dir; `objective` replaces train.objective's loss and eval
    (distillation brings its teacher this way), `plan` whatever else a fine-tune changes."""
    plan = plan or TrainingPlan(objective=objective)
    if plan.sources is None:
        shards, tokenizer = _open_data(cfg)
        train_batch, val_batches = _batch_sources(cfg, shards, tokenizer)
    else:
        (train_batch, val_batches), tokenizer = plan.sources, plan.tokenizer
    device = choose_device(cfg.train.device)
    if device.type == "cpu":
        keep_freed_memory()
    seed_everything(cfg.train.seed)
    model = ckpt.build_model(cfg)
    if plan.init is not None:
        plan.init(model)
    model = model.to(device)
    if resume_from is not None:
        ckpt.load_weights(model, resume_from / ckpt.weights_name(model))
    optimizer = build_optimizer(model, cfg.train)
    train_model = torch.compile(model) if cfg.train.compile else model
    loss, metrics = plan.objective or _objective(cfg)
    trainer = Trainer(
        train_model,
        optimizer,
        train_batch,
        cfg.train,
        loss,
        val_batches,
        save=lambda state, best: ckpt.save_checkpoint(
            run_dir, model, state, best, cfg.train.keep_last
        ),
        metrics=metrics,
    )
    if resume_from is not None:
        trainer.load_state_dict(ckpt.load_trainer_state(resume_from))
    start = trainer.state.step
    if trainer.state.stopped_early:
        raise LMForgeError(
            f"{run_dir} stopped early at step {start} (train.patience={cfg.train.patience}); "
            "start a new run to train further"
        )
    if start >= cfg.train.max_steps:
        raise LMForgeError(
            f"{run_dir} already reached train.max_steps={cfg.train.max_steps}; to train longer "
            f"resume with --set train.max_steps=N (N > {start})"
        )
    ckpt.write_run_files(run_dir, cfg, tokenizer)
    tokens_per_step = cfg.train.batch_size * cfg.train.grad_accum * cfg.model.block_size
    log.info(
        "model: %s parameters, %.3g FLOPs/token; %s tokens/step; device %s",
        f"{model.num_params():,}",
        model.flops_per_token(),
        f"{tokens_per_step:,}",
        device,
    )
    trainer.tracker = Tracker(run_dir, cfg.train.max_steps, start, cfg.train.progress)
    try:
        state = trainer.fit()
    finally:
        trainer.tracker.close()
    vals = trainer.tracker.val_points
    return {
        "run_dir": str(run_dir),
        "objective": cfg.train.objective,
        "steps": state.step,
        "stopped_early": state.stopped_early,
        "best_metric": cfg.train.best_metric,
        "best_score": state.best_score,
        "best_step": state.best_step,
        "last_metrics": trainer.tracker.last_eval,
        "skipped_steps": state.skipped_steps,
        "first_val_loss": vals[0][1] if vals else math.nan,
        "last_val_loss": state.last_val_loss,
        "best_val_loss": state.best_val_loss,
        "loss_plot": str(run_dir / LOSS_PLOT),
    }


def pretrain(cfg: RunConfig, out: Path, overwrite: bool = False) -> dict[str, Any]:
    """Train a new model from cfg into run directory `out`."""
    check_output_dir(out, overwrite)
    shards, _ = _open_data(cfg)
    if cfg.model.vocab_size == 0:
        cfg = replace(cfg, model=replace(cfg.model, vocab_size=shards.vocab_size))
    elif cfg.model.vocab_size != shards.vocab_size:
        raise ConfigError(
            f"model.vocab_size={cfg.model.vocab_size} but the data's tokenizer has "
            f"{shards.vocab_size} tokens; drop model.vocab_size (0 takes it from the data)"
        )
    if out.exists() and overwrite:
        shutil.rmtree(out)
    return _train(cfg, out, resume_from=None)


def resume(run_dir: Path, sets: list[str]) -> dict[str, Any]:
    """Continue a run from its newest checkpoint, exactly; `sets` may change train.* and data.*."""
    cfg = ckpt.read_run_config(run_dir)
    if any(s.strip().startswith("model.") for s in sets):
        raise ConfigError("model.* cannot change when resuming; start a new run instead")
    cfg = from_dict(RunConfig, apply_overrides(to_dict(cfg), sets))
    run_tokenizer = Tokenizer.load(run_dir / ckpt.TOKENIZER_FILE)
    _, data_tokenizer = _open_data(cfg)
    if run_tokenizer.sha256() != data_tokenizer.sha256():
        raise DataError(
            f"{cfg.data.dir} was tokenized with another tokenizer than {run_dir} was trained "
            "with; resume on data prepared with the run's tokenizer.json (--tokenizer-file)"
        )
    checkpoints = ckpt.list_checkpoints(run_dir)
    if not checkpoints:
        raise CheckpointError(f"{run_dir} has no complete checkpoint to resume from")
    return _train(cfg, run_dir, resume_from=checkpoints[-1])


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
    """A run directory -> a directory that transformers' from_pretrained loads."""
    from lmforge.interop import hf

    return hf.export_hf(run_dir, out, overwrite)
