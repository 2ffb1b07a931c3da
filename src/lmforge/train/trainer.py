"""The training loop shared by pretraining and every fine-tune."""

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from lmforge.config import TrainConfig
from lmforge.data.batches import Batch
from lmforge.errors import TrainingDiverged
from lmforge.train.optim import lr_at
from lmforge.train.runtime import autocast
from lmforge.train.tracker import Tracker

Objective = Callable[[nn.Module, Batch], torch.Tensor]
BatchSource = Callable[[int, int], Batch]  # (step, micro-step) -> Batch, deterministic
Saver = Callable[[dict[str, Any], bool], None]  # (trainer state, is_best) -> None


@dataclass
class TrainerState:
    """Progress that a checkpoint must carry for an exact resume."""

    step: int = 0
    best_val_loss: float = math.inf
    skipped_steps: int = 0
    tokens_seen: int = 0
    last_val_loss: float = math.nan


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
    ) -> None:
        self.model, self.optimizer, self.cfg, self.objective = model, optimizer, cfg, objective
        self.train_batches, self.val_batches, self.save = train_batches, val_batches, save
        self.device = next(model.parameters()).device
        self.state = TrainerState()
        self.tracker = tracker
        self._bad_in_a_row = 0

    def fit(self, stop_at: int | None = None) -> TrainerState:
        """Train until cfg.max_steps (or stop_at, as if interrupted there); returns the state."""
        cfg, state = self.cfg, self.state
        tracker = self.tracker or Tracker(None, cfg.max_steps, state.step, cfg.progress)
        if state.step == 0:
            self._evaluate(tracker)
        self.model.train()
        clock = time.perf_counter()
        while state.step < cfg.max_steps and (stop_at is None or state.step < stop_at):
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
            self._after_step(tracker)
            clock = time.perf_counter()  # eval and checkpoint time is not training throughput
        if self.tracker is None:
            tracker.close()
        return state

    def _after_step(self, tracker: Tracker) -> None:
        step, cfg = self.state.step, self.cfg
        is_best = False
        if step % cfg.eval_interval == 0 or step == cfg.max_steps:
            is_best = self._evaluate(tracker)
        if self.save and (
            step == cfg.max_steps
            or (cfg.checkpoint_interval and step % cfg.checkpoint_interval == 0)
        ):
            self.save(self.state_dict(), is_best)

    def _step(self, step: int) -> tuple[float, float, int]:
        """One optimizer step over grad_accum micro-batches; returns (loss, grad norm, tokens)."""
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        total_loss, tokens = 0.0, 0
        for micro in range(cfg.grad_accum):
            batch = self.train_batches(step, micro).to(self.device)
            with autocast(self.device, cfg.dtype):
                loss = self.objective(self.model, batch) / cfg.grad_accum
            loss.backward()
            total_loss += loss.item()
            tokens += batch.num_tokens
        params = [p for p in self.model.parameters() if p.grad is not None]
        # foreach: one fused kernel over all gradients instead of one norm per tensor
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
        grad_norm = norm.item()
        if not (math.isfinite(total_loss) and math.isfinite(grad_norm)):
            self._skip_step(step, total_loss, grad_norm)
            return total_loss, grad_norm, tokens
        self._bad_in_a_row = 0
        if 0 < cfg.grad_clip < grad_norm:  # below the threshold the scale would be exactly 1
            torch.nn.utils.clip_grads_with_norm_(params, cfg.grad_clip, norm, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total_loss, grad_norm, tokens

    def _skip_step(self, step: int, loss: float, grad_norm: float) -> None:
        """The non-finite guard: drop this update, count it, and stop if it keeps happening."""
        self.optimizer.zero_grad(set_to_none=True)
        self.state.skipped_steps += 1
        self._bad_in_a_row += 1
        if self.tracker:
            self.tracker.write(
                f"warning: step {step + 1}: non-finite loss ({loss}) or gradient norm "
                f"({grad_norm}); update skipped ({self.state.skipped_steps} so far)"
            )
        if self._bad_in_a_row > self.cfg.max_bad_steps:
            raise TrainingDiverged(
                f"training diverged: {self._bad_in_a_row} non-finite steps in a row up to step "
                f"{step + 1}; lower train.lr, raise train.warmup_steps or set train.grad_clip. "
                "The last good checkpoint is intact: fix the config and resume with --resume RUN"
            )

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the validation batches (the same batches every time)."""
        was_training = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        for batch in self.val_batches() if self.val_batches else []:
            batch = batch.to(self.device)
            with autocast(self.device, self.cfg.dtype):
                total += self.objective(self.model, batch).item()
            count += 1
        self.model.train(was_training)
        return total / count if count else math.nan

    def _evaluate(self, tracker: Tracker) -> bool:
        """Evaluate, log val loss and perplexity; True when this is the best so far."""
        if self.val_batches is None:
            return False
        val_loss = self.evaluate()
        state = self.state
        state.last_val_loss = val_loss
        is_best = val_loss < state.best_val_loss
        if is_best:
            state.best_val_loss = val_loss
        ppl = math.exp(min(val_loss, 700))
        tracker.log({"step": state.step, "val_loss": val_loss, "val_ppl": ppl})
        tracker.write(f"step {state.step}: val loss {val_loss:.4f}, perplexity {ppl:.2f}")
        return is_best

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: progress, optimizer, RNG states."""
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"state": asdict(self.state), "optimizer": self.optimizer.state_dict(), "rng": rng}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.state = TrainerState(**saved["state"])
        self.optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"]["cpu"])
        if "cuda" in saved["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
