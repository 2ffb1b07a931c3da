"""docs/tutorial.md cannot rot: its ```bash commands run, in order, with tiny step counts.

Every command whose program is `lmforge` or `python` (also at the end of a pipe) runs in a
shell in a fresh directory that sees the repository's configs/, examples/ and README.md, with
the running interpreter's `lmforge` and `python` first on PATH. Training lengths are rewritten
to a few steps and the pretrained model to a tiny shape (which every fine-tune inherits); a
misspelled verb, a removed flag or a file that stops being written fails the test.
"""

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TUTORIAL = ROOT / "docs" / "tutorial.md"
SHARED = ("configs", "examples", "README.md")  # what the commands read from the repository
RUNNABLE = ("lmforge", "python")
SHRINK = (
    (re.compile(r"train\.max_steps=\d+"), "train.max_steps=4"),
    (re.compile(r"finetune\.epochs=[0-9.]+"), "finetune.epochs=1"),
    (re.compile(r"--max-new-tokens \d+"), "--max-new-tokens 8"),
)
TINY_MODEL = " ".join(
    f"--set {item}"
    for item in (
        "model.n_layer=2",
        "model.n_head=2",
        "model.n_embd=32",
        "model.block_size=32",
        "train.batch_size=4",
        "train.eval_interval=2",
        "train.eval_batches=2",
        "train.checkpoint_interval=4",
        "train.warmup_steps=1",
        "train.dtype=float32",  # no start-up timing of bf16
    )
)
SMALL_DATA = (  # the example scripts' output, cut down
    ("examples/python_docs_text.py", " --max-chars 150000"),
    ("examples/docstring_topics.py", " --per-family 40"),
    ("examples/chat_pairs.py", " --max-pairs 80"),
)
QUIET = " --set train.progress=false"
VERBS = ("prepare", "pretrain", "generate", "evaluate", "finetune classify", "predict")
VERBS += ("finetune sft", "chat")
SPLITS = ("train", "valid", "test")
# what the tutorial says each step leaves behind (it names every one of these paths)
PRODUCED = (
    "data/python-docs.txt",
    "data/docs/meta.json",
    "runs/nano/model.safetensors",
    "runs/nano/loss.png",
    "runs/nano/context.png",
    "data/topics/train.tsv",
    "data/topics/valid.tsv",
    "data/topics/test.tsv",
    "runs/topics/labels.json",
    "runs/topics/confusion_matrix.png",
    "runs/topics/test-predictions.jsonl",
    "runs/topics/test-confusion.png",
    "data/chat/train.jsonl",
    "data/chat/valid.jsonl",
    "runs/chat/chat_template.jinja",
    "runs/chat/loss.png",
)


def bash_commands(markdown: str) -> list[str]:
    """The commands of every ```bash block, in order: backslash-continued lines joined,
    comments and blank lines dropped."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", markdown, flags=re.M | re.S):
        joined = re.sub(r"\s*\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = without_comment(line.strip())
            if line:
                commands.append(line)
    return commands


def without_comment(line: str) -> str:
    """The line up to a `#` comment outside quotes (flags appended later must not land in it)."""
    for match in re.finditer(r"(^|\s)#", line):
        head = line[: match.start()]
        try:
            shlex.split(head)
        except ValueError:  # the # is inside a quoted string
            continue
        return head.rstrip()
    return line


def programs(command: str) -> list[str]:
    """The program of each stage of a pipeline."""
    stages = re.split(r"\s\|\s", command)
    return [shlex.split(stage)[0] for stage in stages if stage.strip()]


def piped_lines(command: str) -> list[str]:
    """The messages `printf '%s\\n' A B ... | lmforge chat` sends, without /commands."""
    words = shlex.split(command.split(" | ")[0])
    return [w for w in words[2:] if not w.startswith("/")] if words[0] == "printf" else []


def runnable(commands: list[str]) -> list[str]:
    """The commands the test runs: those that call lmforge or python."""
    return [c for c in commands if set(programs(c)) & set(RUNNABLE)]


def verb_of(command: str) -> str:
    """`lmforge VERB` (or `lmforge finetune KIND`) of a command, '' for a python script."""
    words = shlex.split(command.split(" | ")[-1])
    if words[0] != "lmforge":
        return ""
    words = [w for w in words[1:] if w not in ("-q", "--quiet")]
    return " ".join(words[:2]) if words[0] == "finetune" else words[0]


def shrink(command: str) -> str:
    """The command with tiny training lengths, a tiny pretrained model and a small corpus."""
    for pattern, tiny in SHRINK:
        command = pattern.sub(tiny, command)
    verb = verb_of(command)
    if verb == "pretrain":
        command += " " + TINY_MODEL
    if verb in ("pretrain", "finetune classify", "finetune sft"):
        command += QUIET
    if verb == "finetune sft":  # its defaults evaluate 10 batches
        command += " --set train.eval_batches=2"
    for script, flags in SMALL_DATA:
        if script in command:
            command += flags
    return command


def test_commands_are_parsed_joined_and_shrunk() -> None:
    markdown = (
        "text\n```bash\nsource .venv/bin/activate\n# a comment\n"
        "lmforge pretrain --config c.yaml \\\n    --out runs/x --set train.max_steps=400  # 2 min\n"
        "printf '%s\\n' 'Hi there.' /reset Bye \\\n"
        "    | lmforge chat runs/x --max-new-tokens 60\n```\n"
        "```text\nlmforge not a command\n```\n"
    )
    commands = runnable(bash_commands(markdown))
    assert commands == [
        "lmforge pretrain --config c.yaml --out runs/x --set train.max_steps=400",
        "printf '%s\\n' 'Hi there.' /reset Bye | lmforge chat runs/x --max-new-tokens 60",
    ]
    assert piped_lines(commands[1]) == ["Hi there.", "Bye"]
    assert [verb_of(c) for c in commands] == ["pretrain", "chat"]
    pretrain = shrink(commands[0])
    assert "train.max_steps=4 " in pretrain
    assert "model.n_layer=2" in pretrain
    assert "--max-new-tokens 8" in shrink(commands[1])
    assert without_comment("""printf '# not a comment' | lmforge chat r # one""") == (
        "printf '# not a comment' | lmforge chat r"
    )


def test_every_training_length_is_spelled_out_so_it_can_shrink() -> None:
    commands = runnable(bash_commands(TUTORIAL.read_text(encoding="utf-8")))
    verbs = [verb_of(c) for c in commands]
    assert set(VERBS) <= set(verbs), f"a step is missing: {set(VERBS) - set(verbs)}"
    for command, verb in zip(commands, verbs, strict=True):
        if verb in ("pretrain", "finetune sft"):
            assert "train.max_steps=" in command, command
        if verb == "finetune classify":
            assert "finetune.epochs=" in command, command


def test_the_figures_are_committed_and_small() -> None:
    markdown = TUTORIAL.read_text(encoding="utf-8")
    pictures = re.findall(r"!\[[^\]]*\]\((img/tutorial/[^)]+\.png)\)", markdown)
    assert len(pictures) >= 3
    sizes = [(TUTORIAL.parent / picture).stat().st_size for picture in pictures]
    assert sum(sizes) < 300_000
    for picture in pictures:
        assert (TUTORIAL.parent / picture).read_bytes()[:4] == b"\x89PNG", picture


def _run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env["MPLBACKEND"] = "Agg"
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.slow
def test_the_tutorial_runs_end_to_end_with_tiny_step_counts(tmp_path: Path) -> None:
    markdown = TUTORIAL.read_text(encoding="utf-8")
    for name in SHARED:
        (tmp_path / name).symlink_to(ROOT / name)
    outputs: dict[str, list[tuple[str, subprocess.CompletedProcess]]] = {}
    for command in runnable(bash_commands(markdown)):
        done = _run(shrink(command), tmp_path)
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
        outputs.setdefault(verb_of(command), []).append((command, done))
    for path in PRODUCED:
        assert path in markdown, f"the tutorial no longer mentions {path}"
        assert (tmp_path / path).is_file(), f"{path} was not written"
    assert "perplexity" in outputs["pretrain"][0][1].stdout
    assert "accuracy" in outputs["predict"][0][1].stdout
    assert "macro-F1" in outputs["predict"][0][1].stdout
    command, chat = outputs["chat"][0]
    questions = piped_lines(command)
    assert questions, "the chat step pipes no question in"
    assert chat.stdout.count("\n") >= len(questions)  # each answer ends with a line break
    assert chat.stderr.count("conversation reset") == command.count("/reset")
    test_rows = (tmp_path / "data/topics/test.tsv").read_text(encoding="utf-8").splitlines()
    predictions = (tmp_path / "runs/topics/test-predictions.jsonl").read_text(encoding="utf-8")
    assert len(predictions.splitlines()) == len(test_rows) - 1  # one per row, not the header
    assert_held_out(tmp_path / "data")


def _column(path: Path, read: Callable[[str], str], header: bool) -> set[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return {read(line) for line in lines[header:]}


def assert_held_out(data: Path) -> None:
    """No classification text is in two splits, and no validation question is trained on."""
    topics = [_column(data / f"topics/{s}.tsv", lambda r: r.split("\t")[0], True) for s in SPLITS]
    for i, split in enumerate(topics):
        for other in topics[i + 1 :]:
            assert not split & other
    train, valid = (
        _column(data / f"chat/{s}.jsonl", lambda r: json.loads(r)["messages"][0]["content"], False)
        for s in ("train", "valid")
    )
    assert valid
    assert not train & valid
