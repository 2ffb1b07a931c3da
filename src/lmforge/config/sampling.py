"""Generation settings: how each new token is picked (a command's flags, not part of a run's
config.json)."""

from dataclasses import dataclass

from lmforge.config.fields import param, require


@dataclass(frozen=True, kw_only=True, slots=True)
class SamplingConfig:
    """How to pick each generated token: sampling or greedy (beams=1), or beam search.

    Beam search is deterministic, so beams > 1 refuses the sampling settings (temperature > 0,
    top_k, top_p) instead of silently ignoring them: use temperature=0 with beams.
    """

    max_new_tokens: int = param(200, "tokens to generate at most")
    min_new_tokens: int = param(0, "<|endoftext|> cannot end a text before this many new tokens")
    temperature: float = param(0.8, "softmax temperature; 0 is greedy (argmax)")
    top_k: int = param(0, "sample among the k most likely tokens; 0 disables")
    top_p: float = param(1.0, "sample from the smallest set with this much probability; 1 disables")
    repetition_penalty: float = param(
        1.0,
        "> 1 discourages tokens already in the text, prompt included (CTRL: positive logits "
        "divided by it, negative ones multiplied); 1 disables, 1.2 is typical",
    )
    no_repeat_ngram_size: int = param(
        0, "never produce a run of this many tokens already in the text; 0 disables"
    )
    beams: int = param(
        1,
        "beam search with this many beams; deterministic, so temperature must be 0 and top_k, "
        "top_p off; the best beam comes whole at the end. 1 samples",
    )
    length_penalty: float = param(
        1.0, "beam score = sum of log-probs / length ** this; > 0 favours longer texts, < 0 shorter"
    )
    early_stopping: bool = param(
        False, "end beam search once `beams` texts are finished, not once none can improve"
    )
    seed: int | None = param(None, "seed for reproducible sampling")

    def __post_init__(self) -> None:
        require(self.max_new_tokens >= 0, "--max-new-tokens must be >= 0")
        require(
            0 <= self.min_new_tokens <= self.max_new_tokens,
            f"--min-new-tokens must be in [0, --max-new-tokens={self.max_new_tokens}]",
        )
        require(
            0 <= self.temperature < float("inf"),
            "--temperature must be a finite number >= 0 (0 is greedy)",
        )
        require(
            self.seed is None or 0 <= self.seed < 2**63,
            f"--seed must be in [0, 2**63), got {self.seed}",
        )
        require(self.top_k >= 0, "--top-k must be >= 0 (0 disables top-k)")
        require(0 < self.top_p <= 1, "--top-p must be in (0, 1]")
        require(
            0 < self.repetition_penalty < float("inf"),
            "--repetition-penalty must be a finite number > 0 (1 disables it)",
        )
        require(self.no_repeat_ngram_size >= 0, "--no-repeat-ngram-size must be >= 0 (0 disables)")
        require(self.beams >= 1, "--beams must be >= 1 (1 disables beam search)")
        require(
            self.beams == 1 or (self.temperature == 0 and self.top_k == 0 and self.top_p == 1),
            f"--beams {self.beams} searches deterministically and does not sample: drop "
            "--temperature/--top-k/--top-p (or set --temperature 0), or use --beams 1 to sample",
        )
        require(abs(self.length_penalty) < float("inf"), "--length-penalty must be finite")
