"""The deterministic batch sources of every training run.

Each source maps (step, micro-step) to a batch drawn from a generator seeded by them, so a
resumed run, or the processes of a distributed run taking their rows of the global batch, draw
exactly the batches an uninterrupted single process would. Validation batches are fixed lists.
"""

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from lmforge.config import RunConfig, scheduled
from lmforge.data.batches import Batch, clm_batch, step_generator
from lmforge.data.classify import (
    ClassificationData,
    EpochBatches,
    Task,
    classification_batches,
    pad_batch,
    task_probabilities,
)
from lmforge.data.mlm import BertVocab, mlm_batch
from lmforge.data.sft import Encoded, pack, packed_batch, padded_batch
from lmforge.data.shards import TokenShards
from lmforge.errors import ConfigError, DataError
from lmforge.rundir import layout
from lmforge.tokenizer import Tokenizer

log = logging.getLogger(__name__)
VAL_SEED_KEY = 1  # val batches draw from (seed, 1, i); train batches from (seed, 0, step, micro)
TASK_SEED_KEY = 11  # multitask: the task of a step and its rows draw from (seed, 11, step, micro)
TrainSource = Callable[[int, int], Batch]  # (step, micro-step) -> Batch, deterministic
ValSource = Callable[[], list[Batch]]  # the same validation batches every time
Sources = tuple[TrainSource, ValSource]


def open_data(cfg: RunConfig) -> tuple[TokenShards, Tokenizer]:
    """The token shards of data.dir and the tokenizer that made them (checked to match)."""
    if not cfg.data.dir:
        raise ConfigError("no data directory: pass --data DIR (made by `lmforge prepare`)")
    shards = TokenShards(cfg.data.dir)
    tokenizer = Tokenizer.load(Path(cfg.data.dir) / layout.TOKENIZER_FILE)
    if tokenizer.sha256() != shards.meta["tokenizer_sha256"]:
        raise DataError(f"{cfg.data.dir}: tokenizer.json does not match the one the shards used")
    return shards, tokenizer


def batch_sources(cfg: RunConfig, shards: TokenShards, tokenizer: Tokenizer) -> Sources:
    """Step-indexed train batches and a fixed list of validation batches."""
    if cfg.train.objective.startswith("mlm"):
        return _mlm_sources(cfg, shards, tokenizer)
    window, batch_size, seed = cfg.model.block_size + 1, cfg.train.batch_size, cfg.train.seed
    shards.check_fits("train", window)
    shards.check_fits("val", window)
    size_at, length_at = step_shapes(cfg)

    def train_batch(step: int, micro: int) -> Batch:
        generator = step_generator(seed, 0, step, micro)
        return clm_batch(
            shards.sample_windows("train", size_at(step), length_at(step) + 1, generator)
        )

    val = [
        clm_batch(
            shards.sample_windows("val", batch_size, window, step_generator(seed, VAL_SEED_KEY, i))
        )
        for i in range(cfg.train.eval_batches)
    ]
    return train_batch, lambda: val


def step_shapes(cfg: RunConfig) -> tuple[Callable[[int], int], Callable[[int], int]]:
    """step -> sequences per micro-batch, and step -> tokens per sequence: train.batch_size and
    model.block_size, or what train.batch_size_schedule and train.seq_len_schedule say."""
    train, block = cfg.train, cfg.model.block_size
    return (
        lambda step: scheduled(train.batch_size_schedule, step, train.batch_size),
        lambda step: scheduled(train.seq_len_schedule, step, block),
    )


def _mlm_sources(cfg: RunConfig, shards: TokenShards, tokenizer: Tokenizer) -> Sources:
    """BERT batches: NSP pairs (mlm+nsp) or runs of sentences (mlm), freshly masked each step."""
    whole_word = cfg.data.whole_word_masking
    segmented = whole_word and shards.segmenter != "none"  # the segmenter's words, not "##"
    vocab = BertVocab.from_tokenizer(tokenizer, whole_word=whole_word and not segmented)
    vocab = replace(vocab, segmented=segmented)
    nsp, batch_size, seed = cfg.train.objective == "mlm+nsp", cfg.train.batch_size, cfg.train.seed
    corpora = {split: shards.sentences(split, segmented) for split in ("train", "val")}

    size_at, length_at = step_shapes(cfg)

    def batch(split: str, generator: torch.Generator, size: int, length: int) -> Batch:
        return mlm_batch(corpora[split], size, length, generator, vocab, nsp)

    def train_batch(step: int, micro: int) -> Batch:
        generator = step_generator(seed, 0, step, micro)
        return batch("train", generator, size_at(step), length_at(step))

    block = cfg.model.block_size
    val = [
        batch("val", step_generator(seed, VAL_SEED_KEY, i), batch_size, block)
        for i in range(cfg.train.eval_batches)
    ]
    return train_batch, lambda: val


def sft_sources(cfg: RunConfig, train: list[Encoded], valid: list[Encoded], pad_id: int) -> Sources:
    """Step-seeded training batches (packed rows, or padded examples) and fixed val batches."""
    size, seed, block = cfg.train.batch_size, cfg.train.seed, cfg.model.block_size
    if cfg.finetune.pack:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
        rows = pack([train[i] for i in order], block)
        log.info("packed %d examples into %d rows of %d tokens", len(train), len(rows), block)
    units = rows if cfg.finetune.pack else train

    def train_batch(step: int, micro: int) -> Batch:
        pick = torch.randint(0, len(units), (size,), generator=step_generator(seed, 0, step, micro))
        chosen = [units[i] for i in pick.tolist()]
        if cfg.finetune.pack:
            return packed_batch(chosen, block, pad_id)
        return padded_batch(chosen, pad_id)

    val = [padded_batch(valid[i : i + size], pad_id) for i in range(0, len(valid), size)]
    return train_batch, lambda: val[: cfg.train.eval_batches] or val


TaskPicker = Callable[[int, int], tuple[int, torch.Generator]]


def task_picker(tasks: list[Task], seed: int, temperature: float) -> TaskPicker:
    """(step, micro) -> (index of the task that micro-batch trains, its generator, which then
    draws the rows): task i with probability p_i ∝ n_i^(1/T)."""
    probs = task_probabilities([len(t.train) for t in tasks], temperature)

    def pick(step: int, micro: int) -> tuple[int, torch.Generator]:
        generator = step_generator(seed, TASK_SEED_KEY, step, micro)
        return int(torch.multinomial(probs, 1, generator=generator)), generator

    return pick


def task_sampler(
    tasks: list[Task], batch_size: int, seed: int, temperature: float
) -> Callable[[int, int], Batch]:
    """(step, micro) -> a batch of one task, both drawn from a generator seeded by the step."""
    return _sampler(tasks, batch_size, task_picker(tasks, seed, temperature))


def _sampler(tasks: list[Task], batch_size: int, pick: TaskPicker) -> Callable[[int, int], Batch]:
    def batch(step: int, micro: int) -> Batch:
        index, generator = pick(step, micro)
        task = tasks[index]
        size = min(batch_size, len(task.train))
        rows = torch.randperm(len(task.train), generator=generator)[:size].tolist()
        return replace(pad_batch(task.train, rows), task=task.name)

    return batch


def _run_picker(cfg: RunConfig, tasks: list[Task]) -> TaskPicker:
    """The task draws of a multitask run: what it trains and what it reports come from here."""
    return task_picker(tasks, cfg.train.seed, cfg.finetune.task_temperature)


def multitask_sources(cfg: RunConfig, tasks: list[Task]) -> Sources:
    """One task per step (p_i ∝ n_i^(1/T)) and every task's validation batches, each tagged
    with its task."""
    size = cfg.train.batch_size
    train = _sampler(tasks, size, _run_picker(cfg, tasks))
    valid = [replace(b, task=t.name) for t in tasks for b in classification_batches(t.valid, size)]
    return train, lambda: valid


def batches_per_task(cfg: RunConfig, tasks: list[Task], steps: int) -> dict[str, int]:
    """How many training batches each task got in `steps` optimizer steps, replayed from the
    seeded draws (so a resumed run reports its whole history)."""
    pick = _run_picker(cfg, tasks)
    drawn = dict.fromkeys((t.name for t in tasks), 0)
    for step in range(steps):
        for micro in range(cfg.train.grad_accum):
            drawn[tasks[pick(step, micro)[0]].name] += 1
    return drawn


def classification_sources(cfg: RunConfig, data: ClassificationData) -> Sources:
    """Shuffled epochs of the training examples and every validation example, in order."""
    size = cfg.train.batch_size
    grouping = cfg.finetune.length_grouping
    train = EpochBatches(data.train, size, cfg.train.seed, cfg.train.grad_accum, grouping)
    valid = list(classification_batches(data.valid, size))
    return train, lambda: valid
