"""The one exception family users see: each message says what is wrong and how to fix it."""

import signal


class LMForgeError(Exception):
    """A user mistake or an unusable input; the CLI prints it as `error: ...` and exits 2."""


class ConfigError(LMForgeError):
    """An invalid configuration: unknown key, wrong type, or values that do not fit together."""


class DataError(LMForgeError):
    """An input corpus, data directory or tokenizer that cannot be used."""


class CheckpointError(LMForgeError):
    """A run directory or checkpoint that is missing, truncated, corrupt or mismatched."""


class TrainingDiverged(LMForgeError):
    """Training produced non-finite losses or gradients too many times in a row."""


class RunInUse(LMForgeError):
    """Another live process holds the lock of the run directory a command would write."""


class Interrupted(LMForgeError):
    """Training stopped by SIGTERM or SIGINT (Ctrl-C) at a step boundary after saving a
    checkpoint there. The CLI adds how to continue and exits 128 + the signal's number: 143 for
    SIGTERM, 130 for SIGINT."""

    def __init__(self, signum: int, step: int) -> None:
        self.signal_name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        self.step = step
        super().__init__(f"interrupted by {self.signal_name} at step {step}: checkpoint saved")
