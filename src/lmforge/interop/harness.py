"""lmforge runs as an EleutherAI lm-evaluation-harness model (the `[eval]` extra).

    import lmforge.interop.harness as harness
    harness.register()                      # lm-eval 0.4 has no plugin discovery
    lm_eval.simple_evaluate(model="lmforge", model_args="run=runs/smol", tasks=[...])

or `lmforge harness RUN --tasks ...`. The three request kinds:

- loglikelihood(context, continuation): Σ log P(continuation tokens | what precedes them), and
  whether greedy decoding would have produced them (an empty context is <|endoftext|>).
  Trailing spaces of the context move to the continuation, and the continuation's tokens are
  those the joined text has after the context's, as lm-eval's own models do.
- loglikelihood_rolling(text): the text's whole log-likelihood after <|endoftext|>, in windows
  of the context — the same computation as `lmforge evaluate --text` (its summed token loss).
- generate_until(context, {until, max_gen_toks, temperature, ...}): greedy unless sampling is
  asked for, cut at the first stop string.
"""

from typing import Any

import torch
import torch.nn.functional as F

from lmforge.config import SamplingConfig
from lmforge.errors import LMForgeError
from lmforge.evaluate import score_text
from lmforge.generation.loop import generate_text
from lmforge.generation.sampling import require_causal_lm
from lmforge.rundir.load import load_run


def _lm_base() -> type:
    try:
        import lm_eval  # noqa: F401  (the package itself: its submodules may be cached)
        from lm_eval.api.model import LM
    except ImportError:
        raise LMForgeError(
            "lm-evaluation-harness is not installed: pip install 'lmforge[eval]'"
        ) from None
    return LM


def register() -> None:
    """Register the model under the name `lmforge`, after lm-eval's own models (so `hf` and
    the others still resolve in this process)."""
    _lm_base()  # lm-eval installed, or the error that says how to install it
    import lm_eval.models  # noqa: F401  (registers lm-eval's models first)
    from lm_eval.api.registry import model_registry, register_model

    if "lmforge" not in model_registry:
        register_model("lmforge")(harness_model_class())


def harness_model_class() -> type:
    """The lm-eval model class over lmforge runs (built on first use: lm-eval is optional)."""
    base = _lm_base()

    class LMForgeLM(base):  # type: ignore[misc, valid-type]
        """An lmforge run answering lm-eval's requests (model_args: run=DIR)."""

        def __init__(self, run: str, **unused: Any) -> None:
            super().__init__()
            _, self.model, self.tokenizer = load_run(run)
            require_causal_lm(self.model)
            self.context = self.model.cfg.block_size

        def loglikelihood(self, requests: list) -> list[tuple[float, bool]]:
            return [self._loglikelihood(*request.args) for request in requests]

        def loglikelihood_rolling(self, requests: list) -> list[float]:
            return [self._rolling(request.args[0]) for request in requests]

        def generate_until(self, requests: list) -> list[str]:
            return [self._generate(*request.args) for request in requests]

        def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
            spaces = len(context) - len(context.rstrip())
            if spaces:
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            whole = self.tokenizer.encode(context + continuation)
            context_ids = self.tokenizer.encode(context) if context else []
            if whole[: len(context_ids)] != context_ids:  # a merge across the boundary
                return context_ids, self.tokenizer.encode(continuation)
            return context_ids, whole[len(context_ids) :]

        @torch.inference_mode()
        def _loglikelihood(self, context: str, continuation: str) -> tuple[float, bool]:
            context_ids, target = self._pair(context, continuation)
            context_ids = context_ids or [self.tokenizer.eot_id]  # an empty context: the start
            ids = [*context_ids, *target][-(self.context + 1) :]
            logits = self.model(torch.tensor([ids[:-1]]))[0, -len(target) :].float()
            logp = F.log_softmax(logits, dim=-1)
            wanted = torch.tensor(target)
            total = logp.gather(1, wanted[:, None]).sum().item()
            return total, bool((logp.argmax(-1) == wanted).all())

        def _rolling(self, text: str) -> float:
            ids = [self.tokenizer.eot_id, *self.tokenizer.encode(text)]
            score = score_text(self.model, ids, len(text.encode("utf-8")), self.context, None)
            return -score.loss * score.tokens

        def _generate(self, context: str, settings: dict[str, Any]) -> str:
            until = settings.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            sample = bool(settings.get("do_sample", False))
            temperature = float(settings.get("temperature", 1.0 if sample else 0.0))
            sampling = SamplingConfig(
                max_new_tokens=int(settings.get("max_gen_toks", 256)),
                temperature=temperature if sample or temperature > 0 else 0.0,
            )
            pieces = generate_text(self.model, self.tokenizer, context, sampling, until)
            return "".join(pieces)

    return LMForgeLM
