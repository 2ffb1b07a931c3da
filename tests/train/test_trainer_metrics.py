"""The generalised trainer: objectives in the config, eval metric records, the linear schedule,
early stopping with keep-best, and the fine-tuning config and class weights."""

import dataclasses
import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight

from lmforge.config import (
    ModelConfig,
    RunConfig,
    TrainConfig,
    higher_is_better,
    load_config,
)
from lmforge.config.load import finetune_config
from lmforge.data.batches import Batch, clm_batch, step_generator
from lmforge.data.classify import balanced_class_weights
from lmforge.data.mlm import BertVocab, mlm_batch
from lmforge.data.sentences import SentenceCorpus
from lmforge.errors import ConfigError
from lmforge.model import BERT, GPT
from lmforge.rundir import checkpoint as ckpt
from lmforge.rundir import layout
from lmforge.tokenizer import Tokenizer
from lmforge.train.evaluators import encoder_metrics
from lmforge.train.objectives import clm_loss, mlm_nsp_loss
from lmforge.train.optim import build_optimizer, lr_at
from lmforge.train.tracker import Tracker
from lmforge.train.trainer import Trainer

# ---------------------------------------------------------------- config


def test_objective_schedule_and_best_metric_are_validated() -> None:
    with pytest.raises(ConfigError, match="unknown objective 'mlm-nsp'"):
        TrainConfig(objective="mlm-nsp")
    with pytest.raises(ConfigError, match="cosine, linear or wsd"):
        TrainConfig(schedule="step")
    with pytest.raises(ConfigError, match="val_mlm_accuracy"):
        TrainConfig(objective="mlm", best_metric="val_ppl")
    with pytest.raises(ConfigError, match="patience"):
        TrainConfig(patience=-1)
    assert TrainConfig(objective="mlm+nsp", best_metric="val_nsp_accuracy").patience == 0


def test_mlm_objectives_need_a_bert() -> None:
    with pytest.raises(ConfigError, match=r"set model\.arch=bert"):
        load_config(None, ["train.objective=mlm+nsp"])
    cfg = load_config(Path("configs/bert-mini.yaml"))
    assert (cfg.model.arch, cfg.train.objective) == ("bert", "mlm+nsp")
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head) == (4, 256, 4)
    assert cfg.model.block_size == 128
    # an imported BERT keeps the default train section and stays readable
    assert RunConfig(model=ModelConfig(arch="bert")).train.objective == "clm"


def test_higher_is_better_for_scores_only() -> None:
    assert all(map(higher_is_better, ("val_accuracy", "val_macro_f1", "val_mlm_accuracy")))
    assert not any(map(higher_is_better, ("val_loss", "val_ppl", "val_nsp_loss")))


def test_finetune_config_takes_bert_paper_defaults_and_the_base_model() -> None:
    base = ModelConfig(arch="bert", n_layer=2, n_head=2, n_embd=32, vocab_size=50)
    base_run = RunConfig(model=base)
    cfg = finetune_config(
        base_run, "b", "classify", None, ["model.dropout=0.2"], {"text_column": "review"}
    )
    assert cfg.model == dataclasses.replace(base, dropout=0.2)
    train = cfg.train
    assert (train.objective, train.schedule, train.lr, train.min_lr) == (
        "classify",
        "linear",
        5e-5,
        0.0,
    )
    assert (train.weight_decay, train.beta2, train.best_metric) == (0.01, 0.999, "val_accuracy")
    assert (cfg.finetune.epochs, cfg.finetune.warmup_fraction) == (3.0, 0.1)
    assert cfg.finetune.text_column == "review"
    with pytest.raises(ConfigError, match=r"model\.n_embd comes from the base run"):
        finetune_config(base_run, "b", "classify", None, ["model.n_embd=64"], {})
    with pytest.raises(ConfigError, match=r"train\.warmup_steps is set by the fine-tune"):
        finetune_config(base_run, "b", "classify", None, ["train.warmup_steps=3"], {})
    with pytest.raises(ConfigError, match="none or balanced"):
        finetune_config(base_run, "b", "classify", None, [], {"class_weights": "inverse"})


def test_balanced_class_weights_equal_scikit_learn() -> None:
    labels = [0] * 7 + [1] * 2 + [2] * 11
    expected = compute_class_weight("balanced", classes=np.arange(3), y=np.array(labels))
    assert balanced_class_weights(labels, 3) == pytest.approx(expected.tolist())


# ---------------------------------------------------------------- linear schedule


def test_linear_schedule_warms_up_then_decays_in_a_straight_line() -> None:
    cfg = TrainConfig(max_steps=110, warmup_steps=10, lr=1e-3, min_lr=0.0, schedule="linear")
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(5e-4)
    assert lr_at(110, cfg) == 0.0
    decay = [lr_at(s, cfg) for s in range(10, 111)]
    steps = torch.tensor([a - b for a, b in itertools.pairwise(decay)])
    torch.testing.assert_close(steps, torch.full_like(steps, 1e-5), rtol=1e-6, atol=1e-12)
    cosine = dataclasses.replace(cfg, schedule="cosine")
    assert lr_at(35, cosine) > lr_at(35, cfg)  # cosine stays high longer


# ---------------------------------------------------------------- eval records, early stop


class ScriptedMetrics:
    """An evaluator that reports a fixed sequence of accuracies, one per evaluation."""

    def __init__(self, scores: list[float]) -> None:
        self.scores = iter(scores)

    def __call__(self, model: torch.nn.Module, batches: Iterable[Batch]) -> dict[str, Any]:
        list(batches)
        return {"val_loss": 1.0, "val_accuracy": next(self.scores), "val_extra": [1, 2]}


def _random_clm(cfg: ModelConfig) -> Any:
    def batches(step: int, micro: int) -> Batch:
        g = step_generator(0, 0, step, micro)
        return clm_batch(torch.randint(0, cfg.vocab_size, (2, cfg.block_size + 1), generator=g))

    return batches


def test_early_stopping_keeps_the_best_and_saves_where_it_stops(
    tiny_model_cfg: ModelConfig, tiny_train_cfg: TrainConfig
) -> None:
    cfg = dataclasses.replace(
        tiny_train_cfg,
        objective="classify",
        best_metric="val_accuracy",
        patience=2,
        max_steps=40,
        eval_interval=2,
        checkpoint_interval=0,
    )
    torch.manual_seed(0)
    model = GPT(tiny_model_cfg)
    saves: list[tuple[int, bool]] = []
    tracker = Tracker(None, cfg.max_steps, 0, progress=False)
    trainer = Trainer(
        model,
        build_optimizer(model, cfg),
        _random_clm(tiny_model_cfg),
        cfg,
        clm_loss,
        val_batches=list,
        save=lambda state, best: saves.append((state["state"]["step"], best)),
        tracker=tracker,
        metrics=ScriptedMetrics([0.5, 0.6, 0.8, 0.8, 0.7, 0.9]),
    )
    state = trainer.fit()
    # evals at steps 0, 2, 4, 6, 8: best 0.8 at step 4, then two without improvement
    assert state.stopped_early
    assert (state.step, state.best_step, state.best_score) == (8, 4, 0.8)
    assert saves == [(8, False)]  # checkpoints off: only the stop itself is saved
    assert tracker.last_eval == {
        "step": 8,
        "val_loss": 1.0,
        "val_accuracy": 0.7,
        "val_extra": [1, 2],
    }
    assert trainer.fit().step == 8  # a stopped trainer does not continue


def test_best_flags_follow_the_metric_direction(
    tiny_model_cfg: ModelConfig, tiny_train_cfg: TrainConfig
) -> None:
    cfg = dataclasses.replace(tiny_train_cfg, max_steps=8, eval_interval=2, checkpoint_interval=2)
    flags: list[bool] = []
    losses = iter([3.0, 2.0, 2.5, 1.0, 1.0])
    torch.manual_seed(0)
    model = GPT(tiny_model_cfg)
    Trainer(
        model,
        build_optimizer(model, cfg),
        _random_clm(tiny_model_cfg),
        cfg,
        clm_loss,
        val_batches=list,
        save=lambda state, best: flags.append(best),
        metrics=lambda m, b: {"val_loss": next(losses), "val_ppl": 1.0},
    ).fit()
    assert flags == [True, False, True, False]  # steps 2, 4, 6, 8; a tie is not better


def _bert_setup(dropout: float = 0.0) -> tuple[BERT, SentenceCorpus, BertVocab]:
    words = [f"w{i}" for i in range(30)]
    tokenizer = Tokenizer.train_wordpiece([" ".join(words)] * 3, vocab_size=60)
    vocab = BertVocab.from_tokenizer(tokenizer)
    g = torch.Generator().manual_seed(0)
    low = max(vocab.special.nonzero().max().item() + 1, 5)
    # sentences over four of the ids: learning their unigram distribution lowers the loss
    ids = torch.randint(low, low + 4, (8, 5, 6), generator=g)
    docs = ids.tolist()
    corpus = SentenceCorpus.from_documents(docs, separator=vocab.sep_id)
    cfg = ModelConfig(
        arch="bert",
        n_layer=1,
        n_head=2,
        n_embd=16,
        block_size=24,
        vocab_size=tokenizer.vocab_size,
        dropout=dropout,
    )
    torch.manual_seed(0)
    return BERT(cfg), corpus, vocab


def test_encoder_metrics_report_mlm_and_nsp_and_their_sum() -> None:
    model, corpus, vocab = _bert_setup()
    batches = [mlm_batch(corpus, 4, 24, step_generator(0, 1, i), vocab) for i in range(3)]
    metrics = encoder_metrics(model, batches)
    assert set(metrics) == {
        "val_loss",
        "val_mlm_loss",
        "val_mlm_accuracy",
        "val_mlm_hidden_accuracy",
        "val_nsp_loss",
        "val_nsp_accuracy",
    }
    assert metrics["val_loss"] == pytest.approx(metrics["val_mlm_loss"] + metrics["val_nsp_loss"])
    mlm_only = [
        mlm_batch(corpus, 4, 24, step_generator(0, 1, i), vocab, nsp=False) for i in range(2)
    ]
    only = encoder_metrics(model, mlm_only)
    assert "val_nsp_accuracy" not in only
    assert only["val_loss"] == only["val_mlm_loss"]


def test_the_trainer_pretrains_a_bert_with_mlm_nsp(tiny_train_cfg: TrainConfig) -> None:
    model, corpus, vocab = _bert_setup()
    cfg = dataclasses.replace(
        tiny_train_cfg,
        objective="mlm+nsp",
        best_metric="val_mlm_accuracy",
        max_steps=30,
        eval_interval=15,
        lr=1e-2,
        min_lr=1e-3,
    )
    val = [mlm_batch(corpus, 8, 24, step_generator(0, 1, i), vocab) for i in range(2)]
    tracker = Tracker(None, cfg.max_steps, 0, progress=False)
    state = Trainer(
        model,
        build_optimizer(model, cfg),
        lambda step, micro: mlm_batch(corpus, 8, 24, step_generator(0, 0, step, micro), vocab),
        cfg,
        mlm_nsp_loss,
        val_batches=lambda: val,
        tracker=tracker,
        metrics=encoder_metrics,
    ).fit()
    first, last = tracker.val_points[0][1], tracker.val_points[-1][1]
    assert last < first - 0.5
    assert state.best_score is not None
    assert state.best_score >= tracker.last_eval["val_mlm_accuracy"] > 0


def _bert_trainer(tmp: Path | None, seed: int, cfg: TrainConfig) -> tuple[BERT, Trainer]:
    model, corpus, vocab = _bert_setup(dropout=0.1)  # dropout: the RNG state matters
    torch.manual_seed(seed)
    val = [mlm_batch(corpus, 4, 24, step_generator(0, 1, i), vocab) for i in range(2)]
    save = None
    if tmp is not None:
        save = lambda state, best: ckpt.save_checkpoint(tmp, model, state, best, 2)  # noqa: E731
    trainer = Trainer(
        model,
        build_optimizer(model, cfg),
        lambda step, micro: mlm_batch(corpus, 4, 24, step_generator(0, 0, step, micro), vocab),
        cfg,
        mlm_nsp_loss,
        val_batches=lambda: val,
        save=save,
        metrics=encoder_metrics,
    )
    return model, trainer


def test_bert_pretraining_resumes_bit_identically(
    tmp_path: Path, tiny_train_cfg: TrainConfig
) -> None:
    cfg = dataclasses.replace(
        tiny_train_cfg, objective="mlm+nsp", best_metric="val_mlm_accuracy", patience=5
    )
    straight, trainer = _bert_trainer(None, 0, cfg)
    expected_state = trainer.fit()
    _, trainer = _bert_trainer(tmp_path, 0, cfg)
    trainer.fit(stop_at=8)
    latest = ckpt.list_checkpoints(tmp_path)[-1]
    resumed, trainer = _bert_trainer(None, 99, cfg)
    ckpt.load_weights(resumed, latest / layout.MODEL_FILE)
    trainer.load_state_dict(ckpt.load_trainer_state(latest))
    state = trainer.fit()
    assert (state.step, state.best_step, state.best_score) == (
        expected_state.step,
        expected_state.best_step,
        expected_state.best_score,
    )
    for name, tensor in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name
