"""`lmforge inspect attention` and `lmforge inspect tokens` through main(): PNGs, JSON shapes,
rows that sum to 1, causality, per-token losses against the model's own logits, and every
user error as one `error:` line."""

import contextlib
import io
import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from lmforge.cli.main import main
from lmforge.rundir.load import load_run

from .conftest import assert_user_error

PROMPT = "Paragraph 12: the cat sat on the mat"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WORDS = ["the", "cat", "sat", "on", "a", "mat", "while", "dogs", "ran", "across", "fields"]
BERT_SETS = [
    f"--set={item}"
    for item in (
        "model.arch=bert",
        "train.objective=mlm+nsp",
        "model.n_layer=2",
        "model.n_head=2",
        "model.n_embd=32",
        "model.block_size=32",
        "train.batch_size=8",
        "train.max_steps=4",
        "train.warmup_steps=1",
        "train.eval_interval=4",
        "train.eval_batches=1",
        "train.checkpoint_interval=4",
        "train.progress=false",
    )
]


def _json(capsys: pytest.CaptureFixture, *args: str) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["inspect", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-step mlm+nsp BERT on wordpiece data: enough for shapes and losses."""
    root = tmp_path_factory.mktemp("inspect-bert")
    rng = random.Random(0)
    docs = [
        " ".join(" ".join(rng.choices(WORDS, k=6)).capitalize() + "." for _ in range(6))
        for _ in range(40)
    ]
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    data, run = root / "data", root / "run"
    args = ["prepare", "--input", str(corpus), "--out", str(data), "--tokenizer", "wordpiece"]
    assert main(["-q", *args, "--vocab-size", "120"]) == 0
    assert main(["-q", "pretrain", "--data", str(data), "--out", str(run), *BERT_SETS]) == 0
    return run


@pytest.fixture(scope="module")
def gpt_attention(trained_run: Path) -> dict[str, Any]:
    """Every map of the GPT run for PROMPT, as `--json` prints them."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["inspect", "attention", str(trained_run), "--prompt", PROMPT, "--json"]) == 0
    return json.loads(out.getvalue())


def test_gpt_attention_json_has_every_layer_and_head_and_is_causal(
    gpt_attention: dict[str, Any],
) -> None:
    maps = torch.tensor(gpt_attention["attention"])
    T = len(gpt_attention["ids"])
    assert maps.shape == (2, 2, T, T)
    assert gpt_attention["layers"] == [0, 1]
    assert gpt_attention["heads"] == [0, 1]
    assert len(gpt_attention["tokens"]) == T
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, T))
    future = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)
    assert (maps[..., future] == 0).all()
    assert (maps[..., ~future] > 0).all()


def test_layer_and_head_select_one_slice_of_the_maps(
    trained_run: Path, gpt_attention: dict[str, Any], capsys: pytest.CaptureFixture
) -> None:
    args = ("attention", str(trained_run), "--prompt", PROMPT)
    one = _json(capsys, *args, "--layer", "1", "--head", "0")
    assert (one["layers"], one["heads"]) == ([1], [0])
    full = torch.tensor(gpt_attention["attention"])
    torch.testing.assert_close(torch.tensor(one["attention"])[0, 0], full[1, 0])
    head_everywhere = _json(capsys, *args, "--head", "1")
    assert torch.tensor(head_everywhere["attention"]).shape[:2] == (2, 1)
    torch.testing.assert_close(torch.tensor(head_everywhere["attention"])[:, 0], full[:, 1])


def test_gpt_token_losses_are_the_cross_entropy_of_its_own_logits(
    trained_run: Path, capsys: pytest.CaptureFixture
) -> None:
    result = _json(capsys, "tokens", str(trained_run), "--prompt", PROMPT)
    _, model, tokenizer = load_run(trained_run)
    ids = tokenizer.encode(PROMPT)
    assert result["ids"] == ids
    assert result["tokens"] == [tokenizer.decode([i]) for i in ids]
    assert "".join(result["tokens"]) == PROMPT
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0]
    expected = F.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none")
    assert result["loss"][0] is None
    torch.testing.assert_close(torch.tensor(result["loss"][1:]), expected)
    assert result["mean_loss"] == pytest.approx(float(expected.mean()))


def test_text_output_shows_tokens_and_top_attended_tokens(
    trained_run: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["inspect", "tokens", str(trained_run), "--prompt", "the cat sat"]) == 0
    out = capsys.readouterr().out
    assert '" cat"' in out
    assert "mean next-token loss" in out
    args = ["inspect", "attention", str(trained_run), "--prompt", "the cat", "--layer", "0"]
    assert main([*args, "--head", "1"]) == 0
    out = capsys.readouterr().out
    assert "layer 0, head 1" in out
    assert "query\\key" in out  # one head of a short prompt: its whole matrix
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "layer 0, head 0" in out
    assert "layer 0, head 1" in out


def test_bert_attention_looks_both_ways_and_rows_sum_to_one(
    bert_run: Path, capsys: pytest.CaptureFixture
) -> None:
    result = _json(capsys, "attention", str(bert_run), "--prompt", "the cat sat on a mat")
    maps = torch.tensor(result["attention"])
    T = len(result["ids"])
    assert result["tokens"][0] == "[CLS]"
    assert result["tokens"][-1] == "[SEP]"
    assert maps.shape == (2, 2, T, T)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, T))
    future = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)
    assert (maps[..., future] > 0).all()


def test_bert_token_losses_are_the_pseudo_log_likelihood(
    bert_run: Path, capsys: pytest.CaptureFixture
) -> None:
    result = _json(capsys, "tokens", str(bert_run), "--prompt", "the cat sat on a mat")
    assert result["loss_kind"] == "pseudo-log-likelihood"
    losses, ids = result["loss"], result["ids"]
    assert losses[0] is None  # [CLS]
    assert losses[-1] is None  # [SEP]
    _, model, tokenizer = load_run(bert_run)
    for i in range(1, len(ids) - 1):  # each token masked alone, scored at its position
        masked = torch.tensor([ids])
        masked[0, i] = tokenizer.mask_id
        with torch.no_grad():
            logits = model(masked).mlm[0, i]
        expected = -logits.log_softmax(-1)[ids[i]]
        assert losses[i] == pytest.approx(float(expected), rel=1e-4, abs=1e-4)


@pytest.mark.parametrize(
    ("what", "flags"),
    [("attention", ["--layer", "0", "--head", "1"]), ("attention", []), ("tokens", [])],
)
def test_plots_are_pngs(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, what: str, flags: list[str]
) -> None:
    plot = tmp_path / "sub" / f"{what}.png"
    args = ["inspect", what, str(trained_run), "--prompt", PROMPT, *flags, "--plot", str(plot)]
    assert main(args) == 0
    assert plot.read_bytes().startswith(PNG_MAGIC)
    assert str(plot) in capsys.readouterr().out
    assert [p.name for p in plot.parent.iterdir()] == [plot.name]  # no temporary file left


def test_one_head_and_the_grid_are_different_pictures(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    base = ["inspect", "attention", str(trained_run), "--prompt", PROMPT, "--layer", "1"]
    assert main([*base, "--head", "0", "--plot", str(tmp_path / "one.png")]) == 0
    assert main([*base, "--plot", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "one.png").read_bytes() != (tmp_path / "grid.png").read_bytes()


def test_an_existing_plot_is_kept_without_overwrite(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    plot = tmp_path / "tokens.png"
    plot.write_bytes(b"mine")
    args = ["inspect", "tokens", str(trained_run), "--prompt", PROMPT, "--plot", str(plot)]
    assert_user_error(main(args), capsys, "exists", "--overwrite")
    assert plot.read_bytes() == b"mine"
    assert main([*args, "--overwrite"]) == 0
    assert plot.read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["attention", "--prompt", PROMPT, "--layer", "2"], ["--layer 2", "0 to 1"]),
        (["attention", "--prompt", PROMPT, "--layer", "0", "--head", "5"], ["--head 5", "0 to 1"]),
        (["attention", "--prompt", PROMPT, "--head", "-1"], ["--head -1"]),
        (["attention", "--prompt", ""], ["--prompt is empty"]),
        (["tokens", "--prompt", "   "], ["--prompt is empty"]),
        (["tokens", "--prompt", "the cat sat " * 40], ["model.block_size", "shorten"]),
    ],
)
def test_user_errors_are_one_error_line(
    trained_run: Path, capsys: pytest.CaptureFixture, args: list[str], needles: list[str]
) -> None:
    what, *rest = args
    err = assert_user_error(main(["inspect", what, str(trained_run), *rest]), capsys, *needles)
    assert err.count("error:") == 1


def test_help_shows_examples(capsys: pytest.CaptureFixture) -> None:
    for what in ("attention", "tokens"):
        with pytest.raises(SystemExit) as done:
            main(["inspect", what, "--help"])
        assert done.value.code == 0
        out = capsys.readouterr().out
        assert f"lmforge inspect {what} runs/nano --prompt" in out
