"""Fuzzing the command line in-process: random argv lists for every verb through
lmforge.cli.main.main, run in an empty directory. Property: exit status 0 or 2, a failure ends
with one `error:` line and no traceback, nothing takes over 30 s, and nothing is written
outside that directory (HOME and the cache point into it too).

Out of reach by design: serve (starts a server), chat (reads stdin) and harness (lm-eval);
inputs are paths that do not exist and never builtin:, so no argv can start a long training.
"""

import contextlib
import io
import os
import signal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmforge.cli.main import build_parser, main

from .profiles import fuzz_settings, timeout_s

pytestmark = pytest.mark.timeout(timeout_s())

SKIPPED = {"serve", "chat", "harness"}
SECONDS_PER_ARGV = 30


def _verb_flags() -> dict[str, list[str]]:
    """Every verb (and `verb subverb`) with the option strings its parser knows."""
    verbs = next(a for a in build_parser()._actions if a.dest == "verb")
    table = {}
    for name, parser in verbs.choices.items():
        subs = [a for a in parser._actions if a.choices and isinstance(a.choices, dict)]
        children = subs[0].choices.items() if subs else [("", parser)]
        for child, sub in children:
            flags = [o for a in sub._actions for o in a.option_strings if o not in ("-h",)]
            table[f"{name} {child}".strip()] = flags
    return {verb: flags for verb, flags in table.items() if verb.split()[0] not in SKIPPED}


VERBS = _verb_flags()
values = st.sampled_from(
    ["", "x", "0", "-1", "1", "3.5", "nan", "inf", "1e999", "missing_run", "missing.txt",
     "a=b", "model.n_layer=2", "model.nope=1", "train.lr=abc", "--", "-", "hf:", "é\u0000",
     "99999999999999999999"]
) | st.text(max_size=6)  # fmt: skip


@st.composite
def argvs(draw: st.DrawFn) -> list[str]:
    verb = draw(st.sampled_from(sorted(VERBS)))
    argv = verb.split()
    for _ in range(draw(st.integers(0, 5))):
        flags = VERBS[verb]
        if flags and draw(st.booleans()):
            argv.append(draw(st.sampled_from(flags)))
        argv.append(draw(values))
    return argv


class _Hang(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise _Hang(f"an argv ran for over {SECONDS_PER_ARGV} s")


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(SECONDS_PER_ARGV)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return code, err.getvalue()


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("HOME", "XDG_CACHE_HOME", "HF_HOME", "TMPDIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path


@fuzz_settings(ci_examples=100)
@given(argv=argvs())
def test_any_argv_exits_0_or_2_with_one_error_line(sandbox: Path, argv: list[str]) -> None:
    repo = Path(__file__).resolve().parents[2]
    before = {p.name for p in repo.iterdir()}
    code, err = _run(argv)
    assert code in (0, 2), (argv, code, err[-2000:])
    assert "Traceback" not in err, (argv, err[-2000:])
    if code == 2:
        last = err.strip().splitlines()[-1]
        assert "error:" in last, (argv, err[-2000:])
    assert {p.name for p in repo.iterdir()} <= before | {".hypothesis"}, argv
    assert os.getcwd() == str(sandbox / "work")
