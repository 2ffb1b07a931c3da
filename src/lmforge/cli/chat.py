"""`lmforge chat`: a conversation in the terminal; /reset, /system TEXT, /exit."""

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.cli.generate import add_sampling_flags, sampling_config, unescape

if TYPE_CHECKING:
    from lmforge.jobs.chat import ChatSession

COMMANDS = "/reset forgets the conversation, /system TEXT sets the system message, /exit leaves"


def add_chat(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "chat",
        help="talk to a run: multi-turn, streamed, in its chat template",
        description="A conversation with a run in its chat template (a plain one for base models). "
        f"Answers stream as they are produced. {COMMANDS}; Ctrl-C stops an answer, Ctrl-D "
        "leaves. When the history outgrows the context, the oldest turns are dropped.",
    )
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--system", default="", help="a system message to start with")
    p.add_argument(
        "--checkpoint", choices=["latest", "best"], default="latest", help="which weights"
    )
    add_sampling_flags(p)
    p.set_defaults(max_new_tokens=256)


def run_chat(args: argparse.Namespace) -> None:
    from lmforge.jobs.chat import start_chat

    stop = [unescape(s) for s in args.stop]
    session, own = start_chat(
        args.run, sampling_config(args, args.seed), stop, args.checkpoint, args.dtype
    )
    if not own:
        _note(f"{args.run} has no chat template (a base model?): using lmforge's plain one")
    session.set_system(args.system)
    _note(COMMANDS)
    try:
        _converse(session)
    except KeyboardInterrupt:  # Ctrl-C at the prompt leaves, quietly
        return


def _converse(session: "ChatSession") -> None:
    for line in sys.stdin:
        text = line.rstrip("\n")
        if not text.strip():
            continue
        if text.strip() == "/exit":
            return
        if text.strip() == "/reset":
            session.reset()
            _note("conversation reset")
            continue
        if text.startswith("/system"):
            session.set_system(text.removeprefix("/system").strip())
            _note("system message set" if session.system else "system message removed")
            continue
        _answer(session, text)


def _answer(session: "ChatSession", text: str) -> None:
    dropped = session.fit(text)
    if dropped:
        _note(f"the history outgrew the context: dropped the {dropped} oldest messages")
    try:
        for piece in session.reply(text):
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stdout.write(" [stopped]")
    sys.stdout.write("\n")
    sys.stdout.flush()


def _note(message: str) -> None:
    """Notices go to stderr, answers to stdout."""
    print(f"[{message}]", file=sys.stderr, flush=True)
