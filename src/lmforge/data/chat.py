"""Chat templates: conversations rendered to text by a model's Jinja template, as transformers
renders them, and split into what the model reads and what it learns to write.

A template sees `messages` (each {"role", "content"}), `add_generation_prompt`, and the special
tokens (`bos_token`, `eos_token`); it runs in jinja2's immutable sandbox with transformers'
settings: trim_blocks, lstrip_blocks, the loopcontrols extension, and the globals
`raise_exception` and `strftime_now` and the filter `tojson` (ensure_ascii off).

Runs trained by lmforge before templates were Jinja hold `chat_template.json`, a Python format
string per turn; `legacy_template` turns that record into the Jinja template that renders the
same text.
"""

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lmforge.errors import DataError

ROLES = ("system", "user", "assistant")
# lmforge's own template: `<|role|>` headers; an assistant turn ends with the end-of-text token,
# which is what teaches a model to stop after answering.
DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
_MARK = "\u2063LMFORGE-ANSWER\u2063"  # an answer no real conversation contains


def _raise(message: str) -> None:
    raise DataError(f"the chat template refused the conversation: {message}")


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


@functools.lru_cache(maxsize=16)
def _compiled(source: str) -> jinja2.Template:
    """The template compiled once per source text (compiling costs far more than rendering)."""
    return _environment().from_string(source)


@dataclass(frozen=True, slots=True)
class ChatTemplate:
    """A Jinja chat template with the special tokens it may name."""

    source: str
    bos_token: str = ""
    eos_token: str = ""

    def render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool) -> str:
        """The conversation as the model reads it."""
        try:
            template = _compiled(self.source)
            return template.render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except jinja2.TemplateError as exc:
            raise DataError(f"the chat template does not render: {exc}") from None
        except DataError:  # the template's raise_exception(...)
            raise
        except Exception as exc:  # a template is a program: 1 / 0, a bad call, ...
            raise DataError(
                f"the chat template fails on this conversation ({type(exc).__name__}: {exc}); "
                "fix the template"
            ) from None

    def end_of_turn(self) -> str:
        """What the template writes right after an assistant's answer, up to its first line
        break (`<|im_end|>`, `<|eot_id|>`, the end-of-text token, ...): where answers stop."""
        chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _MARK}]
        after = self.render(chat, add_generation_prompt=False).split(_MARK, 1)[-1]
        return after.strip().split("\n", 1)[0].strip() or self.eos_token

    def segments(self, messages: Sequence[dict[str, Any]]) -> list[tuple[str, bool]]:
        """The rendered conversation cut into (text, learn) pieces: every assistant answer
        with the end-of-turn text after it is learned; everything else is context.

        Each answer is found as what rendering the conversation up to it adds after the
        generation prompt of the turns before it; the end of turn is kept up to its first line
        break, the whitespace after it is context.
        """
        check_messages(messages)
        pieces: list[tuple[str, bool]] = []
        done = ""
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self.render(messages[:i], add_generation_prompt=True)
            full = self.render(messages[: i + 1], add_generation_prompt=False)
            if not prompt.startswith(done) or not full.startswith(prompt):
                raise DataError(
                    "the chat template does not render a conversation as the prefix of its "
                    "continuation, so the answers cannot be found in it"
                )
            answer = full[len(prompt) :]
            kept = len(answer.rstrip())
            end = self.end_of_turn()
            if end and end in answer[:kept]:
                kept = answer.rindex(end, 0, kept) + len(end)
            pieces += [(prompt[len(done) :], False), (answer[:kept], True)]
            done = prompt + answer[:kept]
        rest = self.render(messages, add_generation_prompt=False)[len(done) :]
        pieces.append((rest, False))
        return [(text, learn) for text, learn in pieces if text]


def check_messages(messages: Any, where: str = "messages") -> None:
    """A non-empty list of {role, content} turns with an assistant answer among them."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: messages must be a non-empty list of {{role, content}}")
    for turn in messages:
        if not isinstance(turn, dict) or turn.get("role") not in ROLES:
            raise DataError(f"{where}: every message needs a role among {ROLES} and a content")
        if not isinstance(turn.get("content"), str):
            raise DataError(f"{where}: message content must be a string")
    if not any(turn["role"] == "assistant" for turn in messages):
        raise DataError(f"{where}: no assistant message: nothing to learn")


def legacy_template(record: dict[str, Any]) -> str:
    """The Jinja template of a run's old chat_template.json ({"turn": "<|{role}|>\\n{content}\\n",
    "prompt_ends_with": "<|assistant|>\\n"}): the same text, turn by turn."""
    turn = record.get("turn")
    if not isinstance(turn, str) or "{content}" not in turn:
        raise DataError("chat_template.json has no turn format with {content}")
    before, after = turn.split("{content}", 1)
    jinja_turn = _jinja_text(before) + "{{ message['content'] }}" + _jinja_text(after)
    prompt_end = _jinja_text(str(record.get("prompt_ends_with", "")))
    return (
        "{% for message in messages %}" + jinja_turn + "{% endfor %}"
        "{% if add_generation_prompt %}" + prompt_end + "{% endif %}"
    )


def _jinja_text(fragment: str) -> str:
    """A format-string fragment as Jinja: `{role}` a variable, the rest literal text."""
    literal = fragment.replace("{role}", "\0")
    parts = [f"{{{{ {json.dumps(p)} }}}}" if p else "" for p in literal.split("\0")]
    return "{{ message['role'] }}".join(parts)
