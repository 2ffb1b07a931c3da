"""Fuzzing: each target's property is success or an LMForgeError that says what is wrong,
never another exception, never a hang, never a write outside the named output.
profiles.py registers the hypothesis profiles (LMFORGE_FUZZ=long selects the long one)."""

from . import profiles  # noqa: F401  (registers the two profiles on collection)
