"""`lmforge chat` driven through stdin: turns, /reset, /system, /exit, and a history that
outgrows the context."""

import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.config import SamplingConfig
from lmforge.jobs.chat import start_chat


def _chat(run: Path, lines: list[str], *flags: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lmforge", "chat", str(run), "--temperature", "0"]
    command += ["--max-new-tokens", "8", *flags]
    return subprocess.run(
        command, input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=120
    )


def test_two_turns_reset_and_exit(trained_run: Path) -> None:
    done = _chat(trained_run, ["The list", "and a dict", "/reset", "/exit", "/reset"])
    assert done.returncode == 0, done.stderr
    assert len(done.stdout) > 2  # the answers' tokens, streamed, then a newline after each
    assert done.stderr.count("no chat template") == 1  # a base model: said once
    assert done.stderr.count("conversation reset") == 1  # nothing runs after /exit
    one = _chat(trained_run, ["The list"])  # greedy: the first answer again, then EOF leaves
    assert one.returncode == 0, one.stderr
    assert done.stdout.startswith(one.stdout.rstrip("\n"))


def test_the_session_keeps_turns_resets_and_drops_the_oldest(trained_run: Path) -> None:
    sampling = SamplingConfig(max_new_tokens=6, temperature=0)
    session, own = start_chat(trained_run, sampling, [])
    assert not own
    session.set_system("Be brief.")
    first = "".join(session.reply("The list type"))
    assert session.turns == [
        {"role": "user", "content": "The list type"},
        {"role": "assistant", "content": first},
    ]
    assert session.messages()[0] == {"role": "system", "content": "Be brief."}
    long = "word " * 8  # the demo context is 32 tokens: a few such turns outgrow it
    dropped = 0
    for _ in range(4):
        dropped += session.fit(long)
        "".join(session.reply(long))
    assert dropped > 0
    assert session.messages()[0]["role"] == "system"  # the system message is never dropped
    session.reset()
    assert session.turns == []
    assert session.system == "Be brief."


def test_beam_search_is_refused(trained_run: Path) -> None:
    from lmforge.errors import LMForgeError

    with pytest.raises(LMForgeError, match="--beams"):
        start_chat(trained_run, SamplingConfig(beams=2, temperature=0), [])
