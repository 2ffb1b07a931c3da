"""The training loop shared by pretraining and every fine-tune."""

import logging
import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from lmforge.config import TrainConfig, higher_is_better
from lmforge.data.batches import IGNORE_INDEX, Batch
from lmforge.errors import TrainingDiverged
from lmforge.evaluate import perplexity_from_nll
from lmforge.train.distributed import mean_across_ranks, world_size
from lmforge.train.optim import lr_at
from lmforge.train.runtime import autocast, choose_precision, grad_scaler
from lmforge.train.tracker import Tracker

Objective = Callable[[nn.Module, Batch], torch.Tensor]
BatchSource = Callable[[int, int], Batch]  # (step, micro-step) -> Batch, deterministic
Saver = Callable[[dict[str, Any], bool], None]  # (trainer state, is_best) -> None
# (model, validation batches) -> eval record such as {"val_loss": ..., "val_mlm_accuracy": ...}
Evaluator = Callable[[nn.Module, Iterable[Batch]], dict[str, Any]]


@dataclass
class TrainerState:
    """Progress that a checkpoint must carry for an exact resume."""

    step: int = 0
    best_val_loss: float = math.inf
    skipped_steps: int = 0
    tokens_seen: int = 0
    last_val_loss: float = math.nan
    best_score: float | None = None  # best value of cfg.best_metric so far
    best_step: int = 0
    evals_since_best: int = 0
    stopped_early: bool = False
    recent_losses: list[float] = field(default_factory=list)  # the spike guard's window


def _width(model: nn.Module) -> int:
    """The residual width the precision calibration times (its config's n_embd)."""
    inner = getattr(model, "module", model)  # DDP
    cfg = getattr(inner, "cfg", None) or getattr(getattr(inner, "body", None), "cfg", None)
    return getattr(cfg, "n_embd", 256)


def clip_gradients(params: list[torch.Tensor], max_norm: float, norm: torch.Tensor) -> None:
    """g ← g · min(1, c / ‖g‖₂) over all gradients together (c = max_norm, ‖g‖₂ = norm, the
    global norm of every gradient as one vector); c = 0 turns clipping off. Below the threshold
    the factor would be exactly 1, so nothing is touched."""
    if 0 < max_norm < float(norm):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=True)


def is_loss_spike(loss: float, recent: list[float], factor: float, window: int) -> bool:
    """The spike guard's test: loss > k · mean(last `window` accepted losses), k = factor.
    Off when k = 0, and until `window` losses are known (early losses fall fast: no baseline)."""
    if factor <= 0 or len(recent) < window:
        return False
    return loss > factor * sum(recent[-window:]) / window


def scored_items(batch: Batch) -> int:
    """What a batch's mean loss averages over: its tokens with a target (not IGNORE_INDEX), or
    its sequences when only sequence labels are scored (classification)."""
    tokens = int((batch.targets != IGNORE_INDEX).sum())
    if tokens == 0 and batch.labels is not None:
        return len(batch.labels)
    return tokens


class Trainer:
    """Accumulate -> clip -> step -> schedule, with eval, a non-finite guard and checkpoints."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_batches: BatchSource,
        cfg: TrainConfig,
        objective: Objective,
        val_batches: Callable[[], Iterable[Batch]] | None = None,
        save: Saver | None = None,
        tracker: Tracker | None = None,
        metrics: Evaluator | None = None,
    ) -> None:
        """metrics computes the eval record; by default the mean objective (val_loss, val_ppl)."""
        self.model, self.optimizer, self.cfg, self.objective = model, optimizer, cfg, objective
        self.train_batches, self.val_batches, self.save = train_batches, val_batches, save
        self.metrics = metrics or self._mean_loss
        self.device = next(model.parameters()).device
        if cfg.dtype == "auto":  # the session resolves it first; a Trainer used alone, here
            self.cfg = cfg = replace(cfg, dtype=choose_precision(self.device, _width(model))[0])
        self.state = TrainerState()
        self.tracker = tracker
        self.scaler = grad_scaler(self.device, cfg.dtype)  # fp16 only
        self._bad_in_a_row = 0
        # asked at every step boundary whether to stop there (SIGTERM, Ctrl-C); every rank must
        # answer alike (the session all-reduces the answer)
        self.stop: Callable[[], bool] | None = None
        self.interrupted_at: int | None = None  # the step a stop left the loop at

    def fit(self, stop_at: int | None = None) -> TrainerState:
        """Train until cfg.max_steps (or stop_at, as if interrupted there); returns the state."""
        cfg, state = self.cfg, self.state
        tracker = self.tracker or Tracker(None, cfg.max_steps, state.step, cfg.progress)
        if state.step == 0:
            self._evaluate(tracker)
        self.model.train()
        clock = time.perf_counter()
        while (
            state.step < cfg.max_steps
            and not state.stopped_early
            and (stop_at is None or state.step < stop_at)
        ):
            loss, grad_norm, tokens = self._step(state.step)
            state.step += 1
            state.tokens_seen += tokens
            elapsed, clock = time.perf_counter() - clock, time.perf_counter()
            tracker.advance(
                1,
                loss=f"{loss:.3f}",
                lr=f"{lr_at(state.step - 1, cfg):.2e}",
                tok_s=f"{tokens / max(elapsed, 1e-9):,.0f}",
            )
            if state.step % cfg.log_interval == 0 or state.step == cfg.max_steps:
                tracker.log(
                    {
                        "step": state.step,
                        "loss": loss,
                        "lr": lr_at(state.step - 1, cfg),
                        "grad_norm": grad_norm,
                        "tokens_per_s": tokens / max(elapsed, 1e-9),
                        "tokens_seen": state.tokens_seen,
                    }
                )
            is_best, saved = self._after_step(tracker)
            if self._stop_here(is_best, saved):
                break
            clock = time.perf_counter()  # eval and checkpoint time is not training throughput
        if self.tracker is None:
            tracker.close()
        return state

    def _after_step(self, tracker: Tracker) -> tuple[bool, bool]:
        """Evaluate and checkpoint when due; (this step is the best so far, a checkpoint saved)."""
        step, cfg = self.state.step, self.cfg
        is_best = False
        if step % cfg.eval_interval == 0 or step == cfg.max_steps:
            is_best = self._evaluate(tracker)
        if self.save and (
            step == cfg.max_steps
            or self.state.stopped_early
            or (cfg.checkpoint_interval and step % cfg.checkpoint_interval == 0)
        ):
            self.save(self.state_dict(), is_best)
            return is_best, True
        return is_best, False

    def _stop_here(self, is_best: bool, saved: bool) -> bool:
        """A stop asked from outside (self.stop): checkpoint this step unless it just was, note
        it in interrupted_at, and leave the loop. Not asked once the run is over anyway."""
        state = self.state
        if self.stop is None or state.step >= self.cfg.max_steps or state.stopped_early:
            return False
        if not self.stop():
            return False
        if self.save and not saved:
            self.save(self.state_dict(), is_best)
        self.interrupted_at = state.step
        return True

    def _step(self, step: int) -> tuple[float, float, int]:
        """One optimizer step over grad_accum micro-batches; returns (loss, grad norm, tokens)."""
        cfg = self.cfg
        for group in self.optimizer.param_groups:  # lr_ratio: Muon's groups (muon_lr / lr)
            group["lr"] = lr_at(step, cfg) * group.get("lr_ratio", 1.0)
        total_loss, tokens = 0.0, 0
        for micro in range(cfg.grad_accum):
            batch = self.train_batches(step, micro).to(self.device)
            # DDP all-reduces gradients once, on the last micro-batch of the step
            last = micro == cfg.grad_accum - 1
            sync = (
                self.model.no_sync()
                if hasattr(self.model, "no_sync") and not last
                else nullcontext()
            )
            with sync:
                with autocast(self.device, cfg.dtype):
                    loss = self.objective(self.model, batch) / cfg.grad_accum
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            total_loss += loss.item()
            tokens += batch.num_tokens
        total_loss = mean_across_ranks(total_loss)  # the global batch's loss on every rank
        tokens *= world_size()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # true gradients, for the norm and clipping
        params = [p for p in self.model.parameters() if p.grad is not None]
        # foreach: one fused kernel over all gradients instead of one norm per tensor
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
        if hasattr(norm, "full_tensor"):  # FSDP: the norm of sharded gradients is a DTensor
            norm = norm.full_tensor()
        grad_norm = norm.item()
        if self.scaler is not None and math.isfinite(total_loss) and not math.isfinite(grad_norm):
            self._overflow(step)
            return total_loss, grad_norm, tokens
        if not (math.isfinite(total_loss) and math.isfinite(grad_norm)):
            self._skip_step(step, f"non-finite loss ({total_loss}) or gradient norm ({grad_norm})")
            return total_loss, grad_norm, tokens
        # total_loss is the global batch's on every rank, so every rank decides alike
        recent = self.state.recent_losses
        if is_loss_spike(total_loss, recent, cfg.spike_guard, cfg.spike_window):
            mean = sum(recent) / len(recent)
            self._skip_step(
                step, f"loss spike ({total_loss:.4f} > {cfg.spike_guard:g} x {mean:.4f})"
            )
            return total_loss, grad_norm, tokens
        if cfg.spike_guard > 0:
            recent.append(total_loss)
            del recent[: -cfg.spike_window]
        self._bad_in_a_row = 0
        clip_gradients(params, cfg.grad_clip, norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total_loss, grad_norm, tokens

    def _overflow(self, step: int) -> None:
        """fp16 gradients overflowed at this loss scale: skip the update, lower the scale. Normal
        in the first steps while the scaler finds its level; not a sign of divergence. Decided
        on the global gradient norm, not on the scaler's own check of this rank's gradients:
        under FSDP one rank's shard may overflow while another's does not, and all must skip."""
        self.scaler.update(self.scaler.get_scale() * self.scaler.get_backoff_factor())
        self.optimizer.zero_grad(set_to_none=True)
        self.state.skipped_steps += 1
        if self.tracker:
            self.tracker.write(
                f"step {step + 1}: fp16 gradients overflowed; update skipped, loss scale "
                f"lowered to {self.scaler.get_scale():g}"
            )

    def _skip_step(self, step: int, why: str) -> None:
        """The non-finite and spike guards: drop this update, count it, and stop if it keeps
        happening."""
        self.optimizer.zero_grad(set_to_none=True)
        self.state.skipped_steps += 1
        self._bad_in_a_row += 1
        if self.tracker:
            self.tracker.write(
                f"warning: step {step + 1}: {why}; update skipped "
                f"({self.state.skipped_steps} so far)",
                logging.WARNING,
            )
        if self._bad_in_a_row > self.cfg.max_bad_steps:
            raise TrainingDiverged(
                f"training diverged: {self._bad_in_a_row} skipped steps in a row up to step "
                f"{step + 1} ({why}); lower train.lr, raise train.warmup_steps or set "
                "train.grad_clip. The last good checkpoint is intact: fix the config and resume "
                "with --resume RUN"
            )

    def evaluate(self) -> dict[str, Any]:
        """The eval record over the validation batches (the same batches every time)."""
        return self.metrics(self.model, self.val_batches() if self.val_batches else [])

    @torch.no_grad()
    def _mean_loss(self, model: nn.Module, batches: Iterable[Batch]) -> dict[str, float]:
        """Mean objective over everything the batches score, and its exponential (perplexity).

        val_loss = Σ_b n_b·loss_b / Σ_b n_b with n_b the batch's scored tokens (or its sequences
        for one label each): the per-token mean, also when batches score different numbers of
        tokens (prompt -> completion), not a mean of batch means.
        """
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        for batch in batches:
            batch = batch.to(self.device)
            weight = scored_items(batch)
            if weight == 0:
                continue
            with autocast(self.device, self.cfg.dtype):
                total += self.objective(model, batch).item() * weight
            count += weight
        model.train(was_training)
        val_loss = total / count if count else math.nan
        return {"val_loss": val_loss, "val_ppl": perplexity_from_nll(val_loss)}

    def _evaluate(self, tracker: Tracker) -> bool:
        """Evaluate and log; True when cfg.best_metric is the best so far. Counts patience."""
        if self.val_batches is None:
            return False
        metrics, state = self.evaluate(), self.state
        val_loss = metrics.get("val_loss", math.nan)
        state.last_val_loss = val_loss
        state.best_val_loss = min(state.best_val_loss, val_loss)  # min ignores a nan second
        is_best = self._improves(metrics[self.cfg.best_metric])
        if is_best:
            state.best_score, state.best_step, state.evals_since_best = (
                metrics[self.cfg.best_metric],
                state.step,
                0,
            )
        elif state.step > 0:
            state.evals_since_best += 1
        tracker.log({"step": state.step, **metrics})
        tracker.write(f"step {state.step}: {_describe(metrics)}")
        patience = self.cfg.patience
        if patience and state.evals_since_best >= patience and state.step < self.cfg.max_steps:
            state.stopped_early = True
            tracker.write(
                f"early stop at step {state.step}: {self.cfg.best_metric} has not improved on "
                f"{state.best_score:.4f} (step {state.best_step}) for {patience} evaluations",
                logging.WARNING,
            )
        return is_best

    def _improves(self, score: float) -> bool:
        best = self.state.best_score
        if not math.isfinite(score):
            return False
        if best is None:
            return True
        return score > best if higher_is_better(self.cfg.best_metric) else score < best

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: progress, optimizer, RNG states."""
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        saved = {"state": asdict(self.state), "optimizer": self.optimizer.state_dict(), "rng": rng}
        if self.scaler is not None:
            saved["scaler"] = self.scaler.state_dict()
        return saved

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Progress and RNG; the optimizer too unless it was saved apart (optimizer None)."""
        self.state = TrainerState(**saved["state"])
        if saved.get("optimizer") is not None:
            self.optimizer.load_state_dict(saved["optimizer"])
        if self.scaler is not None and "scaler" in saved:
            self.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng"]["cpu"])
        if "cuda" in saved["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["rng"]["cuda"])


def _describe(metrics: dict[str, Any]) -> str:
    """`val loss 2.1000, perplexity 8.17` for clm; else `name value` for each scalar metric."""
    if set(metrics) == {"val_loss", "val_ppl"}:
        return f"val loss {metrics['val_loss']:.4f}, perplexity {metrics['val_ppl']:.2f}"
    scalars = {k: v for k, v in metrics.items() if isinstance(v, float | int)}
    return ", ".join(f"{k.removeprefix('val_')} {v:.4f}" for k, v in scalars.items())
