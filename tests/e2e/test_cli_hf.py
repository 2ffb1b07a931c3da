"""The command line for batched generation, beam search flags and Hugging Face import/export."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from lmforge.cli.generate import unescape
from lmforge.cli.main import main
from lmforge.config import SamplingConfig
from lmforge.jobs import generate as generate_job
from lmforge.rundir.load import load_run

from .conftest import assert_user_error, run_cli

PROMPTS = ["Paragraph 3: the", "the cat sat", "Paragraph", "on the mat number 4."]


def _greedy_alone(run: Path, prompt: str, capsys: pytest.CaptureFixture) -> str:
    args = ["generate", str(run), "--prompt", prompt, "--temperature", "0"]
    assert main([*args, "--max-new-tokens", "12"]) == 0
    return capsys.readouterr().out.removesuffix("\n")


def test_prompts_file_in_batches_equals_each_prompt_alone(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join([PROMPTS[0], "", *PROMPTS[1:], "   "]) + "\n", encoding="utf-8")
    args = ["generate", str(trained_run), "--prompts-file", str(prompts), "--temperature", "0"]
    assert main([*args, "--max-new-tokens", "12", "--batch-size", "3", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["prompt"] for r in records] == PROMPTS  # blank lines skipped, order kept
    alone = [_greedy_alone(trained_run, prompt, capsys) for prompt in PROMPTS]
    assert [r["completion"] for r in records] == alone
    assert main([*args, "--max-new-tokens", "12"]) == 0  # the plain-text layout
    out = capsys.readouterr().out
    assert out.startswith(f"==> 1: {PROMPTS[0]} <==\n{alone[0]}\n\n==> 2: ")


def test_sampling_flags_reach_the_sampling_config(
    trained_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    seen: list[tuple[SamplingConfig, list[str]]] = []

    def fake_generate(run, prompt, sampling, stop, which, chat, dtype):
        seen.append((sampling, stop))
        return iter(["ok"])

    monkeypatch.setattr(generate_job, "generate", fake_generate)
    flags = ["--beams", "4", "--length-penalty", "0.6", "--repetition-penalty", "1.2"]
    flags += ["--no-repeat-ngram-size", "3", "--min-new-tokens", "5", "--max-new-tokens", "9"]
    assert main(["generate", str(trained_run), *flags, "--stop", "\\n\\n", "--stop", "a\\tb"]) == 0
    assert capsys.readouterr().out == "ok\n"
    sampling, stop = seen[0]
    assert (sampling.beams, sampling.length_penalty, sampling.repetition_penalty) == (4, 0.6, 1.2)
    assert (sampling.no_repeat_ngram_size, sampling.min_new_tokens) == (3, 5)
    assert sampling.max_new_tokens == 9
    assert sampling.temperature == 0.0  # beam search does not sample: its default is greedy
    assert stop == ["\n\n", "a\tb"]


def test_typed_escapes_become_characters() -> None:
    assert unescape("\\n\\n") == "\n\n"
    assert unescape("a\\tb") == "a\tb"
    assert unescape("C:\\\\new") == "C:\\new"
    assert unescape("\\x41 stays") == "\\x41 stays"


def test_beam_search_with_processors_runs_and_is_deterministic(
    trained_run: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["generate", str(trained_run), "--prompt", "Paragraph", "--beams", "3"]
    args += ["--repetition-penalty", "1.3", "--no-repeat-ngram-size", "2", "--max-new-tokens", "16"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.strip()
    assert main(args) == 0
    assert capsys.readouterr().out == first


def test_stop_string_typed_as_escape_ends_the_text(
    trained_run: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["generate", str(trained_run), "--prompt", "Paragraph", "--temperature", "0"]
    assert main([*args, "--max-new-tokens", "60"]) == 0
    free = capsys.readouterr().out.removesuffix("\n")
    assert main([*args, "--max-new-tokens", "60", "--stop", "\\n"]) == 0
    stopped = capsys.readouterr().out.removesuffix("\n")
    assert "\n" not in stopped
    assert free.startswith(stopped)
    if "\n" in free:
        assert stopped == free.split("\n")[0]


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--batch-size", "0"], ["--batch-size must be >= 1"]),
        (["--beams", "3", "--temperature", "0.7"], ["beam"]),
        (["--num-samples", "2"], ["--num-samples"]),
    ],
)
def test_bad_batch_generation_values(
    trained_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    extra: list[str],
    needles: list[str],
) -> None:
    (tmp_path / "p.txt").write_text("hello\n", encoding="utf-8")
    args = ["generate", str(trained_run), "--prompts-file", str(tmp_path / "p.txt"), *extra]
    assert_user_error(main(args), capsys, *needles)


def test_bad_prompts_files(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    base = ["generate", str(trained_run), "--prompts-file"]
    code = main([*base, str(tmp_path / "absent.txt")])
    assert_user_error(code, capsys, "prompts file not found", "absent.txt")
    (tmp_path / "blank.txt").write_text("\n  \n", encoding="utf-8")
    assert_user_error(main([*base, str(tmp_path / "blank.txt")]), capsys, "no prompts")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    assert_user_error(main([*base, str(tmp_path / "latin1.txt")]), capsys, "not UTF-8")


# ---------------------------------------------------------------- import / export hf


@pytest.fixture(scope="module")
def hf_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-initialised GPT-2 saved by transformers, with a tokenizer from a trained run."""
    from transformers import GPT2TokenizerFast

    from lmforge.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("hf")
    text = [f"Line {i}: naïve café, 東京 and numbers {i * 37}." for i in range(200)]
    tokenizer = Tokenizer.train_bpe(text, vocab_size=320)
    tokenizer.save(root / "tok.json")
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=tokenizer.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2
    )
    GPT2LMHeadModel(config).save_pretrained(root / "gpt2")
    GPT2TokenizerFast(tokenizer_file=str(root / "tok.json")).save_pretrained(root / "gpt2")
    return root / "gpt2"


def test_import_hf_then_generate_through_the_console(hf_gpt2_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = run_cli("import", "hf", str(hf_gpt2_dir), "--out", str(run))
    assert done.returncode == 0, done.stderr
    assert "gpt2" in done.stdout
    assert "parameters" in done.stdout
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (run / name).is_file(), name
    done = run_cli("generate", str(run), "--prompt", "Line 3:", "--temperature", "0")
    assert done.returncode == 0, done.stderr
    again = run_cli("import", "hf", str(hf_gpt2_dir), "--out", str(run))
    assert again.returncode == 2
    assert again.stderr.startswith("error:")
    assert "--overwrite" in again.stderr
    replaced = run_cli("import", "hf", str(hf_gpt2_dir), "--out", str(run), "--overwrite")
    assert replaced.returncode == 0, replaced.stderr


def test_export_hf_loads_in_transformers_with_equal_logits(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "hf"
    assert main(["export", "hf", str(trained_run), "--out", str(out)]) == 0
    assert f"-> {out}" in capsys.readouterr().out
    theirs = AutoModelForCausalLM.from_pretrained(out).eval()
    _, ours, tokenizer = load_run(trained_run)
    text = "Paragraph 12: the cat sat on the mat"
    ids = tokenizer.encode(text)
    assert AutoTokenizer.from_pretrained(out)(text)["input_ids"] == ids
    batch = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(theirs(batch).logits, ours(batch), atol=1e-4, rtol=0)


def test_import_export_bad_input(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}), encoding="utf-8")
    code = main(["import", "hf", str(llama), "--out", str(tmp_path / "r")])
    assert_user_error(code, capsys, "lacks 'hidden_size'")
    (llama / "config.json").write_text(json.dumps({"model_type": "t5"}), encoding="utf-8")
    code = main(["import", "hf", str(llama), "--out", str(tmp_path / "r")])
    assert_user_error(code, capsys, "unsupported architecture 't5'", "gpt2", "bert", "qwen3")
    code = main(["import", "hf", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert_user_error(code, capsys, "nope")
    assert not (tmp_path / "r").exists()
    code = main(["export", "hf", str(tmp_path / "no-run"), "--out", str(tmp_path / "x")])
    assert_user_error(code, capsys, "not found")
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "mine.txt").write_text("mine", encoding="utf-8")
    code = main(["export", "hf", str(trained_run), "--out", str(kept)])
    assert_user_error(code, capsys, "not empty", "--overwrite")
    assert (kept / "mine.txt").read_text(encoding="utf-8") == "mine"
