"""The one exception family users see: each message says what is wrong and how to fix it."""


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
