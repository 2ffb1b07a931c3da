"""The command line end to end: prepare -> pretrain -> generate -> evaluate, and bad input."""

import json
import subprocess
from pathlib import Path

import pytest

from lmforge.cli.main import main

from .conftest import assert_user_error, run_cli


def test_run_directory_has_every_artifact(trained_run: Path) -> None:
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "metrics.jsonl",
        "loss.png",
        "trainer_state/state.safetensors",
        "trainer_state/state.json",
        "best/model.safetensors",
    ):
        assert (trained_run / name).is_file(), name
    assert sorted(p.name for p in (trained_run / "checkpoints").iterdir()) == [
        "step_0000010",
        "step_0000020",
    ]
    config = json.loads((trained_run / "config.json").read_text())
    assert config["model"]["vocab_size"] == 300
    records = [
        json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()
    ]
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(val) == 3
    assert val[-1] < val[0]


def test_generate_writes_only_text_to_stdout(trained_run: Path) -> None:
    args = ("generate", str(trained_run), "--prompt", "Paragraph", "--max-new-tokens", "30")
    done, again = (run_cli(*args, "--temperature", "0") for _ in range(2))
    assert done.returncode == 0, done.stderr
    assert done.stdout == again.stdout
    assert done.stdout.strip()
    assert "step" not in done.stdout
    assert "INFO" not in done.stdout


def test_seeded_sampling_is_reproducible(trained_run: Path, capsys: pytest.CaptureFixture) -> None:
    args = [
        "generate",
        str(trained_run),
        "--max-new-tokens",
        "25",
        "--top-k",
        "20",
        "--top-p",
        "0.9",
        "--seed",
        "7",
    ]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first


def test_evaluate_reports_perplexity(trained_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["evaluate", str(trained_run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["tokens"] > 0
    assert result["perplexity"] == pytest.approx(2.718281828 ** result["loss"], rel=1e-6)


def test_resume_extends_and_refuses_when_done(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code = main(["pretrain", "--resume", str(trained_run)])
    assert_user_error(code, capsys, "already reached train.max_steps=20")
    copy = tmp_path / "run"
    subprocess.run(["cp", "-r", str(trained_run), str(copy)], check=True)
    assert main(["pretrain", "--resume", str(copy), "--set", "train.max_steps=25"]) == 0
    state = json.loads((copy / "trainer_state/state.json").read_text())
    assert state["step"] == 25


def test_quiet_pretrain_prints_no_step_lines(trained_run: Path, tmp_path: Path) -> None:
    for flags, expect_lines in (([], True), (["-q"], False)):
        copy = tmp_path / f"run{len(flags)}"
        subprocess.run(["cp", "-r", str(trained_run), str(copy)], check=True)
        done = run_cli(*flags, "pretrain", "--resume", str(copy), "--set", "train.max_steps=22")
        assert done.returncode == 0, done.stderr
        assert ("step 22: val loss" in done.stderr) is expect_lines, done.stderr
        assert "trained 22 steps" in done.stdout  # the result is still reported


def test_process_exit_code_and_no_traceback(tmp_path: Path) -> None:
    done = run_cli("prepare", "--input", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "d"))
    assert done.returncode == 2
    assert done.stderr.startswith("error: input not found")
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------- bad input, each exit 2


def test_empty_corpus_after_cleaning(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "tiny.txt").write_text("hi\n\n\n  \n", encoding="utf-8")
    code = main(["prepare", "--input", str(tmp_path / "tiny.txt"), "--out", str(tmp_path / "d")])
    assert_user_error(code, capsys, "empty corpus after cleaning", "--min-chars")
    assert not (tmp_path / "d").exists()


def test_binary_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "blob.txt").write_bytes(b"abc\x00\x01\x02" * 10)
    code = main(["prepare", "--input", str(tmp_path / "blob.txt"), "--out", str(tmp_path / "d")])
    assert_user_error(code, capsys, "binary", "blob.txt")


def test_invalid_utf8_names_file_and_offset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(("x" * 40 + "\n").encode() * 3 + b"caf\xe9 au lait and more text\n")
    code = main(["prepare", "--input", str(bad), "--out", str(tmp_path / "d")])
    assert_user_error(code, capsys, "latin1.txt", "byte offset 126", "--encoding-errors replace")
    code = main(
        [
            "prepare",
            "--input",
            str(bad),
            "--out",
            str(tmp_path / "d"),
            "--tokenizer",
            "char",
            "--encoding-errors",
            "replace",
        ]
    )
    assert code == 0


def test_output_dir_not_empty_is_kept(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "c.txt").write_text("some words that are long enough to keep\n" * 20)
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    code = main(["prepare", "--input", str(tmp_path / "c.txt"), "--out", str(out)])
    assert_user_error(code, capsys, "not empty", "--overwrite")
    assert (out / "precious.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("sets", "needles"),
    [
        (["model.n_emb=64"], ["unknown config key model.n_emb", "did you mean model.n_embd"]),
        (["train.lr=fast"], ["train.lr: expected float"]),
        (["train.max_steps=1.5"], ["train.max_steps: expected int"]),
        (["model.n_embd=30", "model.n_head=4"], ["divisible by model.n_head"]),
        (["model.vocab_size=50"], ["vocab_size=50", "tokenizer has"]),
    ],
)
def test_bad_config(
    prepared_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, sets: list, needles: list
) -> None:
    args = ["pretrain", "--data", str(prepared_dir), "--out", str(tmp_path / "run")]
    for item in sets:
        args += ["--set", item]
    assert_user_error(main(args), capsys, *needles)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("flag", "needle"),
    [
        (["--temperature", "-0.5"], "--temperature"),
        (["--top-p", "0"], "--top-p"),
        (["--top-p", "1.5"], "--top-p"),
        (["--top-k", "-1"], "--top-k"),
        (["--max-new-tokens", "-3"], "--max-new-tokens"),
    ],
)
def test_bad_sampling_values(
    trained_run: Path, capsys: pytest.CaptureFixture, flag: list, needle: str
) -> None:
    assert_user_error(main(["generate", str(trained_run), *flag]), capsys, needle)


def test_missing_and_corrupt_checkpoints(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert_user_error(main(["generate", str(tmp_path / "absent")]), capsys, "not found")
    copy = tmp_path / "run"
    subprocess.run(["cp", "-r", str(trained_run), str(copy)], check=True)
    weights = copy / "model.safetensors"
    data = weights.read_bytes()
    weights.unlink()  # a hard link: never truncate the shared file in place
    weights.write_bytes(data[: len(data) // 2])
    assert_user_error(main(["generate", str(copy)]), capsys, "truncated or corrupt")
    (copy / "model.safetensors").unlink()
    assert_user_error(main(["generate", str(copy)]), capsys, "missing weights")


def test_tokenizer_vocab_mismatch(
    trained_run: Path, prepared_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    copy = tmp_path / "run"
    subprocess.run(["cp", "-r", str(trained_run), str(copy)], check=True)
    (copy / "tokenizer.json").unlink()
    (copy / "tokenizer.json").write_bytes((prepared_dir / "tokenizer.json").read_bytes())
    assert_user_error(main(["generate", str(copy)]), capsys, "tokenizer has", "model expects")


def test_resume_on_data_with_another_tokenizer(
    trained_run: Path, prepared_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    copy = tmp_path / "run"
    subprocess.run(["cp", "-r", str(trained_run), str(copy)], check=True)
    args = ["pretrain", "--resume", str(copy), "--set", f"data.dir={prepared_dir}"]
    assert_user_error(main([*args, "--set", "train.max_steps=30"]), capsys, "another tokenizer")
