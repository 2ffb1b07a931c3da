"""evaluate --text and the compress verbs, end to end through the command line."""

import json
import math
from pathlib import Path

import pytest

from lmforge.cli.main import main
from lmforge.rundir.load import read_run_config

from .conftest import assert_user_error

HELD_OUT = "\n\n".join(f"Paragraph {i}: the cat sat on the mat number {i % 5}." for i in range(60))


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("held") / "held.txt"
    path.write_text(HELD_OUT, encoding="utf-8")
    return path


def _json_line(capsys: pytest.CaptureFixture) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_evaluate_text_reports_bits_per_byte_and_draws_positions(
    trained_run: Path, held_out: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    plot = tmp_path / "positions.png"
    args = ["evaluate", str(trained_run), "--text", str(held_out), "--json"]
    assert main([*args, "--plot", str(plot)]) == 0
    record = _json_line(capsys)
    assert record["bytes"] == len(HELD_OUT.encode("utf-8"))
    expected = record["loss"] * record["tokens"] / (record["bytes"] * math.log(2))
    assert record["bits_per_byte"] == pytest.approx(expected, rel=1e-9)
    assert record["perplexity"] == pytest.approx(math.exp(record["loss"]), rel=1e-9)
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert main([*args, "--stride", "8"]) == 0
    overlapping = _json_line(capsys)
    assert overlapping["tokens"] == record["tokens"]  # every token still scored once
    assert main(["evaluate", str(trained_run), "--text", str(held_out)]) == 0
    assert "bits/byte" in capsys.readouterr().out


def test_evaluate_text_bad_input(
    trained_run: Path, held_out: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    base = ["evaluate", str(trained_run), "--text"]
    assert_user_error(main([*base, str(held_out), "--stride", "33"]), capsys, "--stride")
    assert_user_error(main([*base, str(tmp_path / "nope.txt")]), capsys, "not found")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9 au lait\n")
    assert_user_error(main([*base, str(tmp_path / "latin1.txt")]), capsys, "not UTF-8")


def test_quantize_prune_and_report(
    trained_run: Path, held_out: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    q8, p50, h50 = tmp_path / "q8", tmp_path / "p50", tmp_path / "h50"
    assert main(["compress", "quantize", str(trained_run), "--int8", "--out", str(q8)]) == 0
    assert "smaller" in capsys.readouterr().out
    args = ["compress", "prune", str(trained_run), "--sparsity", "0.5", "--out", str(p50)]
    assert main([*args, "--finetune-steps", "3"]) == 0  # recovers on the run's own data
    assert "50.0% of block weights zero" in capsys.readouterr().out
    args = ["compress", "prune", str(trained_run), "--sparsity", "0.5", "--structured", "heads"]
    assert main([*args, "--out", str(h50)]) == 0
    assert read_run_config(h50).model.n_head == 1
    assert main(["generate", str(q8), "--prompt", "Paragraph", "--max-new-tokens", "5"]) == 0
    capsys.readouterr()
    plot = tmp_path / "report.png"
    runs = [str(trained_run), str(q8), str(p50), str(h50)]
    assert main(["compress", "report", *runs, "--text", str(held_out), "--plot", str(plot)]) == 0
    table = capsys.readouterr().out
    assert "bits/byte" in table
    assert str(h50) in table
    assert plot.is_file()
    assert (
        main(
            [
                "compress",
                "report",
                str(trained_run),
                str(q8),
                "--text",
                str(held_out),
                "--json",
                "--plot",
                str(plot),
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert rows[1]["size_mb"] < rows[0]["size_mb"]


def test_distill_a_student_from_the_teacher(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    student = tmp_path / "student.yaml"
    student.write_text("model:\n  n_layer: 1\n  n_head: 2\n  n_embd: 16\n  block_size: 32\n")
    data = read_run_config(trained_run).data.dir
    args = ["compress", "distill", "--teacher", str(trained_run), "--student-config", str(student)]
    args += ["--data", data, "--out", str(tmp_path / "small"), "--temperature", "2"]
    sets = ["train.max_steps=6", "train.eval_interval=3", "train.eval_batches=1"]
    sets += ["train.batch_size=4", "train.progress=false", "train.warmup_steps=1"]
    assert main([*args, *[x for s in sets for x in ("--set", s)]]) == 0
    assert "val loss" in capsys.readouterr().out
    cfg = read_run_config(tmp_path / "small")
    assert (cfg.model.n_layer, cfg.model.n_embd) == (1, 16)


def test_distill_needs_the_teachers_tokenizer(
    trained_run: Path, prepared_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    student = tmp_path / "student.yaml"
    student.write_text("model:\n  n_layer: 1\n")
    args = ["compress", "distill", "--teacher", str(trained_run), "--student-config", str(student)]
    code = main([*args, "--data", str(prepared_dir), "--out", str(tmp_path / "s")])
    assert_user_error(code, capsys, "share the tokenizer", "--tokenizer-file")
    args = ["compress", "distill", "--teacher", str(trained_run), "--student-config", str(student)]
    code = main([*args, "--data", str(prepared_dir), "--out", str(tmp_path / "s"), "--alpha", "2"])
    assert_user_error(code, capsys, "--alpha")
    assert not (tmp_path / "s").exists()
