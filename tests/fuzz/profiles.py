"""The fuzz tests' two hypothesis profiles and the settings each target runs under.

"ci" (the default) is derandomized (a fixed seed, so every run generates the same cases) and
sized so the whole folder runs in well under a minute on two slow cores; "long"
(LMFORGE_FUZZ=long) draws random cases, ten times as many, for a search before a release.
Neither writes a .hypothesis database. The profiles are passed to each test as a parent of its
settings, never loaded globally, so the other hypothesis tests of the suite keep theirs.
"""

import os
from collections.abc import Callable
from typing import TypeVar

from hypothesis import HealthCheck, settings

from lmforge.errors import LMForgeError

T = TypeVar("T")

CI, LONG = "lmforge-fuzz-ci", "lmforge-fuzz-long"
LONG_FACTOR = 10  # the long profile runs this many times each target's CI examples
_SHARED = {
    "database": None,
    "deadline": 10_000,  # ms: an example this slow is a hang in the making
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    "print_blob": True,
}
settings.register_profile(CI, derandomize=True, max_examples=50, **_SHARED)
settings.register_profile(LONG, derandomize=False, max_examples=500, **_SHARED)


def active_profile() -> str:
    """The profile LMFORGE_FUZZ selects: `long`, or the CI profile by default."""
    return LONG if os.environ.get("LMFORGE_FUZZ", "").strip().lower() == "long" else CI


def fuzz_settings(ci_examples: int) -> settings:
    """Settings of one target: ci_examples cases at the CI profile, LONG_FACTOR times more
    at the long one."""
    name = active_profile()
    examples = ci_examples * (LONG_FACTOR if name == LONG else 1)
    return settings(settings.get_profile(name), max_examples=examples)


def timeout_s() -> int:
    """pytest-timeout of one fuzz test: a hang fails it instead of stalling the suite."""
    return 1200 if active_profile() == LONG else 120


def user_error_or_result(call: Callable[[], T]) -> T | LMForgeError:
    """call's result, or the LMForgeError it raised (which must carry a message); any other
    exception propagates: that is a crash the fuzzer found."""
    try:
        return call()
    except LMForgeError as exc:
        error = exc
    assert str(error).strip(), "an LMForgeError without a message"
    return error
