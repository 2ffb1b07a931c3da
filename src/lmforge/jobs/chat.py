"""`lmforge chat`: a multi-turn conversation with a run, in its chat template.

A ChatSession keeps the turns (and an optional system message), renders them with the run's
template for every answer, and streams the answer. When the rendered history and the answer's
token budget outgrow the context, the oldest turns are dropped (the system message stays) and
the caller is told how many.
"""

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmforge.config import SamplingConfig
from lmforge.data.chat import DEFAULT_TEMPLATE, ChatTemplate
from lmforge.errors import LMForgeError
from lmforge.generation.loop import generate_text
from lmforge.jobs.generate import load_for_generation
from lmforge.rundir.load import read_chat_template
from lmforge.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass
class ChatSession:
    """The state of one conversation: model, template, turns so far."""

    model: torch.nn.Module
    tokenizer: Tokenizer
    template: ChatTemplate
    sampling: SamplingConfig
    stop: list[str] = field(default_factory=list)
    system: str | None = None
    turns: list[dict[str, str]] = field(default_factory=list)

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.turns.clear()

    def set_system(self, text: str) -> None:
        """Set (or, with empty text, remove) the system message; the turns are kept."""
        self.system = text or None

    def messages(self, user: str | None = None) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        tail = [{"role": "user", "content": user}] if user is not None else []
        return [*head, *self.turns, *tail]

    def fit(self, user: str) -> int:
        """Drop the oldest turns until the prompt plus the answer's budget fits the context;
        how many messages were dropped."""
        context = self.model.cfg.block_size
        budget = min(self.sampling.max_new_tokens, context // 2)
        dropped = 0
        while True:
            prompt = self.template.render(self.messages(user), add_generation_prompt=True)
            if len(self.tokenizer.encode(prompt)) + budget <= context or not self.turns:
                return dropped
            self.turns.pop(0)
            dropped += 1

    def reply(self, user: str) -> Iterator[str]:
        """Stream the answer to a user's message; it joins the history as it is produced, so
        an answer stopped early (Ctrl-C) stays as far as it came."""
        prompt = self.template.render(self.messages(user), add_generation_prompt=True)
        self.turns.append({"role": "user", "content": user})
        answer = {"role": "assistant", "content": ""}
        self.turns.append(answer)
        stops = [*self.stop, self.template.end_of_turn()]
        for piece in generate_text(self.model, self.tokenizer, prompt, self.sampling, stops):
            answer["content"] += piece
            yield piece


def start_chat(
    run_dir: Path,
    sampling: SamplingConfig,
    stop: list[str],
    which: str = "latest",
    dtype: str = "float32",
) -> tuple[ChatSession, bool]:
    """A session over a run, and whether the run has a chat template of its own (a base model
    gets lmforge's plain one)."""
    if sampling.beams > 1:
        raise LMForgeError("chat streams its answers: use sampling or --temperature 0, not --beams")
    model, tokenizer = load_for_generation(run_dir, which, dtype)
    template = read_chat_template(run_dir, tokenizer)
    own = template is not None
    if template is None:
        template = ChatTemplate(DEFAULT_TEMPLATE, eos_token=tokenizer.end_token or "")
    return ChatSession(model, tokenizer, template, sampling, stop), own
