"""Prompt -> completion data: labels only on the completion, chat rendering, bad lines, packing."""

import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import ModelConfig
from lmforge.data.chat import DEFAULT_TEMPLATE, ChatTemplate
from lmforge.data.sft import (
    IGNORE_INDEX,
    Pair,
    chat_pair,
    encode_pair,
    encode_pairs,
    pack,
    packed_batch,
    padded_batch,
    read_pairs,
)
from lmforge.errors import DataError
from lmforge.model import GPT
from lmforge.tokenizer import Tokenizer

TEXT = [f"translate {i}: the cat {i} -> le chat {i}" for i in range(200)]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train_bpe(TEXT, vocab_size=300)


def test_prompt_tokens_carry_minus_100_and_the_completion_ends_with_eot(
    tokenizer: Tokenizer,
) -> None:
    pair = Pair("translate: the cat ->", " le chat")
    encoded, truncated = encode_pair(pair, tokenizer, 64)
    prompt, completion = tokenizer.encode(pair.prompt), tokenizer.encode(pair.completion)
    ids = prompt + completion + [tokenizer.eot_id]
    assert not truncated
    assert encoded.inputs == ids[:-1]
    assert encoded.targets == [IGNORE_INDEX] * (len(prompt) - 1) + completion + [tokenizer.eot_id]


def test_long_pairs_lose_the_start_of_the_prompt(tokenizer: Tokenizer) -> None:
    pair = Pair(" ".join(TEXT[:20]), " le chat 7")
    encoded, truncated = encode_pair(pair, tokenizer, 16)
    assert truncated
    assert len(encoded.inputs) == 16
    completion = [*tokenizer.encode(pair.completion), tokenizer.eot_id]
    assert encoded.targets[-len(completion) :] == completion


MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Name?"},
    {"role": "assistant", "content": "lmforge."},
]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _learned_text(pair: Pair, tokenizer: Tokenizer) -> list[str]:
    """The runs of learned tokens of an encoded example, decoded."""
    encoded, _ = encode_pair(pair, tokenizer, 512)
    runs, current = [], []
    for target in [*encoded.targets, IGNORE_INDEX]:
        if target == IGNORE_INDEX:
            if current:
                runs.append(tokenizer.decode(current))
            current = []
        else:
            current.append(target)
    return runs


def test_every_assistant_turn_is_learned_with_its_end_of_turn_and_nothing_else(
    tokenizer: Tokenizer,
) -> None:
    template = ChatTemplate(DEFAULT_TEMPLATE, eos_token="<|endoftext|>")
    pair = chat_pair(MESSAGES, template, "x")
    assert _learned_text(pair, tokenizer) == ["Hello.<|endoftext|>", "lmforge.<|endoftext|>"]
    expected = "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello.<|endoftext|>\n"
    assert pair.prompt == expected + "<|user|>\nName?\n<|assistant|>\n"  # scored: last answer
    assert pair.completion == "lmforge."


def test_a_chatml_template_learns_each_answer_up_to_im_end() -> None:
    texts = [*TEXT, "<|im_start|>user <|im_end|> assistant system Hello. Name? lmforge."]
    tokenizer = Tokenizer.train_bpe(texts, vocab_size=320)
    tokenizer.backend.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tokenizer = Tokenizer(tokenizer.backend)
    template = ChatTemplate(CHATML, eos_token="<|im_end|>")
    assert template.end_of_turn() == "<|im_end|>"
    pair = chat_pair(MESSAGES, template, "x")
    assert _learned_text(pair, tokenizer) == ["Hello.<|im_end|>", "lmforge.<|im_end|>"]
    rendered = template.render(MESSAGES, add_generation_prompt=False)
    assert "".join(text for text, _ in pair.segments) == rendered


def test_bad_lines_name_their_number_or_are_skipped(tmp_path: Path, caplog) -> None:
    path = tmp_path / "pairs.jsonl"
    lines = [
        json.dumps({"prompt": "a", "completion": "b"}),
        "not json",
        json.dumps(["a", "b"]),
        json.dumps({"prompt": "a"}),
        json.dumps({"messages": [{"role": "user", "content": "q"}]}),
        json.dumps({"prompt": "c", "completion": "d"}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"pairs.jsonl:2: not valid JSON.*--skip-bad-lines"):
        read_pairs(path)
    with caplog.at_level(logging.WARNING):
        pairs = read_pairs(path, skip_bad_lines=True)
    assert pairs == [Pair("a", "b"), Pair("c", "d")]
    assert "skipped 4 bad lines" in caplog.text
    assert "2, 3, 4, 5" in caplog.text


def test_packing_keeps_every_example_once_and_the_loss_of_each(tokenizer: Tokenizer) -> None:
    pairs = [Pair(f"translate {i}: the cat {i} ->", f" le chat {i}") for i in range(9)]
    examples = encode_pairs(pairs, tokenizer, 32)
    rows = pack(examples, 32)
    assert sorted(i for row in rows for i, _ in row) == list(range(9))
    assert all(sum(len(e.inputs) for _, e in row) <= 32 for row in rows)
    assert len(rows) < len(examples)
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=300)).eval()
    packed, padded = packed_batch(rows, 32, pad_id=0), padded_batch(examples, pad_id=0)
    with torch.no_grad():
        logits_p = model(packed.inputs, segments=packed.segments)
        logits_u = model(padded.inputs, attention_mask=padded.attention_mask)
    loss_p = F.cross_entropy(logits_p.flatten(0, 1), packed.targets.flatten(), reduction="sum")
    loss_u = F.cross_entropy(logits_u.flatten(0, 1), padded.targets.flatten(), reduction="sum")
    torch.testing.assert_close(loss_p, loss_u, atol=1e-4, rtol=1e-5)
    assert packed.num_tokens == sum(len(e.inputs) for e in examples)
