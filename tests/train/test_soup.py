"""finetune.soup: members fine-tuned from one base with one head, averaged into the run's
model; finished members are kept across --resume; refusals where a soup means nothing."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lmforge.config import FinetuneConfig, LoRAConfig, RunConfig
from lmforge.errors import CheckpointError, ConfigError
from lmforge.jobs import finetune, soup
from lmforge.rundir import layout
from lmforge.rundir.load import read_run_config

from .test_from_scratch import _flags, task  # noqa: F401  (the fixture)


def _whole(task: dict[str, Path], out: Path) -> dict:  # noqa: F811
    sets = ["finetune.soup=2", "train.seed=5"]
    return finetune.finetune_classify_from_scratch(task["recipe"], _flags(task), sets, out)


def test_the_run_model_is_the_mean_of_two_different_members(task, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "run"
    summary = _whole(task, out)
    first = load_file(str(soup.member_dir(out, 0) / layout.MODEL_FILE))
    second = load_file(str(soup.member_dir(out, 1) / layout.MODEL_FILE))
    run = load_file(str(out / layout.MODEL_FILE))
    head = "classifier.weight"
    assert not first[head].equal(second[head])  # the second member trained on its own
    for name, tensor in run.items():
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, (first[name] + second[name]) / 2)
        else:
            assert tensor.equal(first[name])  # the n-gram codes, as the base has them
    assert read_run_config(soup.member_dir(out, 1)).train.seed == 6
    assert sorted(p.name for p in soup.member_dir(out, 1).iterdir()) == sorted(
        [
            layout.MODEL_FILE,
            soup.DONE_FILE,
            layout.CONFIG_FILE,
            layout.TOKENIZER_FILE,
            layout.LABELS_FILE,
            layout.METRICS_FILE,
            layout.LOSS_PLOT,
        ]
    )
    assert summary["soup"]["members"] == 2
    members = summary["soup"]["member_valid_accuracy"]
    assert (
        members[0]
        == json.loads((soup.member_dir(out, 0) / soup.DONE_FILE).read_text())["val_accuracy"]
    )
    assert 0 <= summary["metrics"]["accuracy"] <= 1


def test_members_share_the_head_the_run_draws(task, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "run"
    _whole(task, out)
    cfg = read_run_config(out)
    from lmforge.data.classify import load_data
    from lmforge.jobs.classify import seeded_classifier
    from lmforge.jobs.finetune_start import base_tokenizer

    data = load_data(cfg, base_tokenizer(cfg))
    torch.manual_seed(5)
    drawn = seeded_classifier(cfg, data, None).classifier.weight
    state = torch.get_rng_state()
    seeded = seeded_classifier(cfg, data, 5).classifier.weight
    assert seeded.equal(drawn)  # the head member 0 drew from train.seed
    assert torch.get_rng_state().equal(state)  # and the member's dropout stream untouched
    assert not seeded_classifier(cfg, data, 6).classifier.weight.equal(drawn)


def test_resume_keeps_finished_members_and_redoes_the_rest(task, tmp_path: Path) -> None:  # noqa: F811
    whole = tmp_path / "whole"
    _whole(task, whole)
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    shutil.rmtree(soup.member_dir(cut, 1))  # killed before the second member saved anything
    (cut / layout.MODEL_FILE).unlink()
    metrics = (cut / layout.METRICS_FILE).read_text()
    summary = finetune.resume_finetune(cut, [], "classify")
    assert (cut / layout.METRICS_FILE).read_text() == metrics  # member 0 did not train again
    expected = load_file(str(whole / layout.MODEL_FILE))
    got = load_file(str(cut / layout.MODEL_FILE))
    for name, tensor in expected.items():
        assert got[name].equal(tensor), name
    assert summary["soup"]["members"] == 2


def test_resume_after_member_zero_trained_but_was_not_kept(task, tmp_path: Path) -> None:  # noqa: F811
    """Killed after member 0's last checkpoint, before its done.json: --resume finds the
    training over (no step is trained again), keeps member 0's best and trains the rest."""
    whole = tmp_path / "whole"
    _whole(task, whole)
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    shutil.rmtree(cut / soup.SOUP_DIR)
    (cut / layout.MODEL_FILE).unlink()
    metrics = (cut / layout.METRICS_FILE).read_text()
    finetune.resume_finetune(cut, [], "classify")
    assert (cut / layout.METRICS_FILE).read_text() == metrics
    expected = load_file(str(whole / layout.MODEL_FILE))
    got = load_file(str(cut / layout.MODEL_FILE))
    for name, tensor in expected.items():
        assert got[name].equal(tensor), name


def test_average_weights_means_floats_and_refuses_differing_buffers(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.st", tmp_path / "b.st", tmp_path / "c.st"
    codes = torch.tensor([3, 1, 2])
    save_file({"w": torch.tensor([1.0, 2.0]), "codes": codes}, str(a))
    save_file({"w": torch.tensor([3.0, 6.0]), "codes": codes}, str(b))
    save_file({"w": torch.tensor([0.0, 0.0]), "codes": codes + 1}, str(c))
    mean = soup.average_weights([a, b])
    assert mean["w"].tolist() == [2.0, 4.0]
    assert mean["codes"].equal(codes)
    with pytest.raises(CheckpointError, match="codes"):
        soup.average_weights([a, c])


def test_soup_is_refused_with_lora_several_processes_or_below_one() -> None:
    lora = RunConfig(finetune=FinetuneConfig(soup=2), lora=LoRAConfig(r=4))
    with pytest.raises(ConfigError, match="LoRA"):
        soup.check_soup(lora, 1)
    with pytest.raises(ConfigError, match="--nproc"):
        soup.check_soup(RunConfig(finetune=FinetuneConfig(soup=3)), 2)
    soup.check_soup(RunConfig(finetune=FinetuneConfig(soup=1)), 2)  # no soup, nothing refused
    with pytest.raises(ConfigError, match=r"finetune\.soup"):
        FinetuneConfig(soup=0)
