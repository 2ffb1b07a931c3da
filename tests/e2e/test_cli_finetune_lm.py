"""finetune sft / lm with and without LoRA, lora merge, evaluate --sft, and their bad input."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from lmforge.cli.main import main
from lmforge.rundir.load import load_run, read_run_config

from .conftest import assert_user_error

STEPS = ["train.max_steps=30", "train.eval_interval=15", "train.checkpoint_interval=15"]
STEPS += ["train.batch_size=8", "train.progress=false", "train.warmup_steps=2", "train.lr=3e-3"]


def _sets(*extra: str) -> list[str]:
    return [x for s in (*STEPS, *extra) for x in ("--set", s)]


def _pairs(path: Path, numbers: range) -> Path:
    lines = [
        json.dumps({"prompt": f"Paragraph {i}:", "completion": f" the cat sat on the mat {i % 7}."})
        for i in numbers
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def sft_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sft")
    return _pairs(root / "train.jsonl", range(0, 200)), _pairs(
        root / "valid.jsonl", range(200, 216)
    )


@pytest.fixture(scope="module")
def lora_run(trained_run: Path, sft_files: tuple[Path, Path], tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "sft"
    train, valid = sft_files
    args = ["finetune", "sft", "--base", str(trained_run), "--train", str(train)]
    args += ["--valid", str(valid), "--out", str(out), "--lora-r", "4", "--lora-alpha", "8"]
    # the 20-step base knows little: at lr 3e-3 for 30 steps the adapters barely move its
    # generations, at 1e-2 for 60 (about a second more) they clearly do (see the BLEU test)
    assert main([*args, *_sets("train.lr=1e-2", "train.max_steps=60")]) == 0
    return out


def test_lora_sft_writes_a_small_adapter_run_that_generates(
    lora_run: Path, trained_run: Path, capsys: pytest.CaptureFixture
) -> None:
    assert (lora_run / "adapter.safetensors").is_file()
    assert not (lora_run / "model.safetensors").exists()
    record = json.loads((lora_run / "adapter_config.json").read_text())
    assert record["r"] == 4
    assert len(record["layers"]) == 4  # qkv and proj of two blocks
    small, full = (
        (lora_run / "adapter.safetensors").stat().st_size,
        (trained_run / "model.safetensors").stat().st_size,
    )
    assert small < full / 3
    records = [json.loads(x) for x in (lora_run / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert val[-1] < val[0]
    args = ["generate", str(lora_run), "--prompt", "Paragraph 3:", "--temperature", "0"]
    assert main([*args, "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.strip()


def test_merged_adapters_give_the_adapter_runs_logits(
    lora_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    merged = tmp_path / "merged"
    assert main(["lora", "merge", str(lora_run), "--out", str(merged)]) == 0
    assert (merged / "model.safetensors").is_file()
    _, adapted, tokenizer = load_run(lora_run)
    _, plain, _ = load_run(merged)
    ids = torch.tensor([tokenizer.encode("Paragraph 12: the cat sat")])
    with torch.no_grad():
        assert float((adapted(ids) - plain(ids)).abs().max()) <= 1e-5


def _sft_scores(run: Path, valid: Path, capsys: pytest.CaptureFixture) -> dict:
    """`lmforge evaluate RUN --sft VALID --json`: greedy generation scores."""
    assert main(["evaluate", str(run), "--sft", str(valid), "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_evaluate_sft_scores_generation(
    lora_run: Path, trained_run: Path, sft_files: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    """The adapters must have learned the completions: on the same validation pairs the
    fine-tuned run scores clearly above its base. Measured: base BLEU 0.7, chrF 10; tuned
    BLEU 17, chrF 51, and over train.seed 1-4 at least BLEU 5.7, chrF 34, so the margins
    (+2 BLEU, +12 chrF) have 2x headroom. Exact match stays 0 after 60 steps."""
    _, valid = sft_files
    tuned, base = _sft_scores(lora_run, valid, capsys), _sft_scores(trained_run, valid, capsys)
    assert tuned["examples"] == base["examples"] == 16
    assert tuned["bleu_tokenize"] == base["bleu_tokenize"] == "13a"  # English references
    assert 0 <= tuned["exact_match"] <= 1
    assert 0 <= tuned["bleu"] <= 100
    assert tuned["bleu"] >= base["bleu"] + 2.0
    assert tuned["chrf"] >= base["chrf"] + 12.0


def test_full_continued_pretraining_keeps_frozen_blocks_and_embeddings(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = read_run_config(trained_run).data.dir
    out = tmp_path / "lm"
    args = ["finetune", "lm", "--base", str(trained_run), "--data", data, "--out", str(out)]
    frozen = ["--freeze-layers", "1", "--freeze-embeddings"]
    assert main([*args, *frozen, *_sets("train.max_steps=6")]) == 0
    _, base, _ = load_run(trained_run)
    _, tuned, _ = load_run(out)
    kept = dict(base.blocks[0].named_parameters())
    for name, p in tuned.blocks[0].named_parameters():
        torch.testing.assert_close(p, kept[name], atol=0, rtol=0)
    for name in ("tok_emb", "pos_emb"):  # the head is tied to tok_emb: frozen with it
        assert torch.equal(getattr(tuned, name).weight, getattr(base, name).weight), name
    assert not torch.equal(tuned.blocks[1].mlp.fc.weight, base.blocks[1].mlp.fc.weight)


def test_sft_bad_lines_and_lora_targets(
    trained_run: Path, sft_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    train, valid = sft_files
    bad = tmp_path / "bad.jsonl"
    bad.write_text(train.read_text() + "not json\n", encoding="utf-8")
    args = ["finetune", "sft", "--base", str(trained_run), "--valid", str(valid)]
    code = main([*args, "--train", str(bad), "--out", str(tmp_path / "x"), *_sets()])
    assert_user_error(code, capsys, "bad.jsonl:201", "--skip-bad-lines")
    lora = ["--lora-r", "4", "--lora-targets", "attention"]
    code = main([*args, "--train", str(train), "--out", str(tmp_path / "x"), *lora, *_sets()])
    assert_user_error(code, capsys, "matches no linear layer", "attn.qkv")
    assert not (tmp_path / "x").exists()


def test_an_adapter_whose_base_changed_is_refused(
    lora_run: Path, trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    base_copy = tmp_path / "base"
    shutil.copytree(trained_run, base_copy)
    adapter = tmp_path / "adapter"
    shutil.copytree(lora_run, adapter)
    record = json.loads((adapter / "adapter_config.json").read_text())
    record["base_run"] = str(base_copy)
    (adapter / "adapter_config.json").write_text(json.dumps(record))
    assert main(["generate", str(adapter), "--max-new-tokens", "2"]) == 0  # same weights: fine
    capsys.readouterr()
    weights = base_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.unlink()
    weights.write_bytes(bytes(data))
    assert_user_error(main(["generate", str(adapter)]), capsys, "SHA-256 differs")


def test_an_adapter_run_is_a_base_for_full_fine_tuning_but_not_for_new_adapters(
    lora_run: Path, sft_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    train, valid = sft_files
    args = ["finetune", "sft", "--base", str(lora_run), "--train", str(train)]
    args += ["--valid", str(valid), *_sets("train.max_steps=2")]
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    assert (tmp_path / "full" / "model.safetensors").is_file()
    template = (tmp_path / "full" / "chat_template.jinja").read_text()  # the one it trained with
    assert "message['content']" in template
    assert json.loads((tmp_path / "full" / "special_tokens.json").read_text())["eos_token"]
    capsys.readouterr()
    code = main([*args, "--out", str(tmp_path / "again"), "--lora-r", "2"])
    assert_user_error(code, capsys, "itself a LoRA adapter run", "lora merge")


def test_export_hf_of_an_adapter_run_writes_base_and_peft_adapter(
    lora_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "hf"
    assert main(["export", "hf", str(lora_run), "--out", str(out)]) == 0
    assert (out / "config.json").is_file()
    assert (out / "model.safetensors").is_file()
    record = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert record["peft_type"] == "LORA"
    assert record["r"] == 4
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
