"""Chat templates across the border: imported templates render exactly what transformers'
apply_chat_template renders, exports carry them, and older runs keep chatting."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from lmforge.cli.main import main
from lmforge.data.chat import ChatTemplate
from lmforge.interop.hf import export_hf, import_hf
from lmforge.jobs.generate import chat_prompt
from lmforge.rundir import layout
from lmforge.rundir.load import read_chat_template
from lmforge.tokenizer import Tokenizer

from .twins import CORPUS, tiny_run

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Llama 3 style: bos_token, a default system turn, loop controls, raise_exception, tojson
LLAMA3_STYLE = (
    "{{ bos_token }}{% if messages[0]['role'] != 'system' %}"
    "{{ '<|start_header_id|>system<|end_header_id|>\\n\\nYou help.<|eot_id|>' }}{% endif %}"
    "{% for message in messages %}\n"  # newlines after block tags: trim_blocks drops them
    "    {% if message['role'] not in ['system', 'user', 'assistant'] %}\n"
    "{{ raise_exception('unknown role') }}{% endif %}\n"
    "    {% if loop.index > 20 %}{% break %}{% endif %}\n"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{ message['content'] | trim }}{{ '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    "{# {{ messages | tojson }} #}"
)
CONVERSATION = [
    {"role": "system", "content": "Answer in one line. 回答要简短 🤖"},
    {"role": "user", "content": "What is attention?  "},
    {"role": "assistant", "content": "A weighted average of values."},
    {"role": "user", "content": "And self-attention?"},
]
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>"]
SPECIALS += ["<|end_header_id|>", "<|eot_id|>"]


@pytest.fixture(scope="module")
def chat_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer.train_bpe(CORPUS, vocab_size=400)
    tokenizer.backend.add_special_tokens(SPECIALS)
    return Tokenizer(tokenizer.backend)


def _save_chat_twin(out: Path, tokenizer: Tokenizer, template: str, jinja_file: bool) -> object:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    Qwen2ForCausalLM(config).save_pretrained(out)
    tokenizer.save(out.parent / "tok.json")
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_file=str(out.parent / "tok.json"),
        bos_token="<|begin_of_text|>",
        eos_token="<|im_end|>",
    )
    hf_tok.chat_template = template
    hf_tok.save_pretrained(out)
    if not jinja_file:  # an older checkpoint: the template inside tokenizer_config.json
        (out / "chat_template.jinja").unlink(missing_ok=True)
        config_path = out / "tokenizer_config.json"
        settings = json.loads(config_path.read_text())
        config_path.write_text(json.dumps({**settings, "chat_template": template}))
    return AutoTokenizer.from_pretrained(out)


@pytest.mark.parametrize("template", [CHATML, LLAMA3_STYLE], ids=["chatml", "llama3-style"])
@pytest.mark.parametrize("jinja_file", [True, False], ids=["jinja-file", "tokenizer-config"])
def test_imported_template_renders_what_transformers_renders(
    tmp_path: Path, chat_tokenizer: Tokenizer, template: str, jinja_file: bool
) -> None:
    reference = _save_chat_twin(tmp_path / "hf", chat_tokenizer, template, jinja_file)
    summary = import_hf(str(tmp_path / "hf"), tmp_path / "run")
    assert summary["chat_template"]
    ours = read_chat_template(tmp_path / "run", chat_tokenizer)
    assert ours is not None
    for prompt in (True, False):
        expected = reference.apply_chat_template(
            CONVERSATION, tokenize=False, add_generation_prompt=prompt
        )
        assert ours.render(CONVERSATION, add_generation_prompt=prompt) == expected
    # and exported again, transformers finds the template where it looks for it
    export_hf(tmp_path / "run", tmp_path / "back")
    again = AutoTokenizer.from_pretrained(tmp_path / "back")
    assert (tmp_path / "back" / "chat_template.jinja").read_text() == template
    settings = json.loads((tmp_path / "back" / "tokenizer_config.json").read_text())
    assert settings["chat_template"] == template
    assert again.apply_chat_template(CONVERSATION, tokenize=False) == reference.apply_chat_template(
        CONVERSATION, tokenize=False
    )


def test_end_of_turn_is_found_in_the_template() -> None:
    assert ChatTemplate(CHATML).end_of_turn() == "<|im_end|>"
    assert ChatTemplate(LLAMA3_STYLE, bos_token="<s>").end_of_turn() == "<|eot_id|>"


def test_a_run_without_a_template_is_not_given_one(
    tmp_path: Path, chat_tokenizer: Tokenizer
) -> None:
    run = tiny_run(tmp_path / "run", chat_tokenizer)
    assert read_chat_template(run, chat_tokenizer) is None
    export_hf(run, tmp_path / "hf")
    assert not (tmp_path / "hf" / "chat_template.jinja").exists()


def test_an_older_run_with_chat_template_json_still_chats(
    tmp_path: Path, chat_tokenizer: Tokenizer, capsys: pytest.CaptureFixture
) -> None:
    """Runs of `finetune sft` made before templates were Jinja hold a format string."""
    run = tiny_run(tmp_path / "run", chat_tokenizer)
    old = {"turn": "<|{role}|>\n{content}\n", "prompt_ends_with": "<|assistant|>\n"}
    (run / layout.CHAT_TEMPLATE_FILE).write_text(json.dumps({**old, "roles": ["user"]}))
    prompt, end = chat_prompt(run, chat_tokenizer, "hi")
    assert prompt == "<|user|>\nhi\n<|assistant|>\n"
    assert end == "<|endoftext|>"
    code = main(["-q", "generate", str(run), "--chat", "hi", "--max-new-tokens", "5"])
    assert code == 0
    assert capsys.readouterr().err == ""


def test_generate_in_bfloat16(tmp_path: Path, chat_tokenizer: Tokenizer) -> None:
    """--dtype bfloat16 computes in bf16: the text may differ, the run is unchanged."""
    run = tiny_run(tmp_path / "run", chat_tokenizer, norm="rmsnorm", activation="swiglu")
    before = (run / layout.MODEL_FILE).read_bytes()
    args = ["-q", "generate", str(run), "--prompt", "The", "--max-new-tokens", "4"]
    assert main([*args, "--dtype", "bfloat16", "--temperature", "0"]) == 0
    assert (run / layout.MODEL_FILE).read_bytes() == before
