"""A full disk or an I/O error at each place lmforge writes: `error: ... no space left on <path>`,
exit 2, the previous checkpoint whole and loadable, no temporary file left behind.

Faults are injected by patching the call that writes each file; one test fills a real tmpfs (as
root only) and one sets RLIMIT_FSIZE in a subprocess (EFBIG)."""

import errno
import os
import pathlib
import resource
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure
from safetensors.torch import load_file
from torch.distributed.checkpoint import HuggingFaceStorageWriter

from lmforge.cli.main import main
from lmforge.rundir import checkpoint as ckpt
from lmforge.rundir import layout
from lmforge.rundir.load import load_run

MODEL = [
    *("--set", "model.n_layer=2", "--set", "model.n_head=2", "--set", "model.n_embd=32"),
    *("--set", "model.block_size=32"),
]
TINY = [
    *("--set", "train.batch_size=2", "--set", "train.dtype=float32"),
    *("--set", "train.eval_interval=2", "--set", "train.eval_batches=1"),
    *("--set", "train.checkpoint_interval=2", "--set", "train.warmup_steps=1"),
    *("--set", "train.progress=false", "--set", "train.log_interval=1"),
]
MESSAGES = {errno.ENOSPC: "no space left on", errno.EIO: "I/O error writing"}


def _pretrain(data: Path, run: Path, steps: int, resume: bool = False) -> int:
    where = ["--resume", str(run)] if resume else ["--data", str(data), "--out", str(run), *MODEL]
    return main(["pretrain", *where, *TINY, "--set", f"train.max_steps={steps}"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Prepared data and a 4-step run with checkpoints at steps 2 and 4 (copied per test)."""
    from lmforge.jobs.prepare import PrepareOptions, prepare

    root = tmp_path_factory.mktemp("faults")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(f"Line {i}: the cat sat on mat {i % 7}." for i in range(200)))
    data = root / "data"
    prepare(PrepareOptions(inputs=[str(corpus)], out=data, tokenizer="char"))
    assert _pretrain(data, root / "run", 4) == 0
    return data, root / "run"


@pytest.fixture
def run(trained: tuple[Path, Path], tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(trained[1], copy)
    return copy


def _fail(code: int, path: object) -> OSError:
    return OSError(code, os.strerror(code), str(path))


def _leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".tmp" in p.name)


def _assert_previous_checkpoint_intact(run: Path, step: int = 4) -> None:
    latest = ckpt.list_checkpoints(run)[-1]
    assert latest.name == layout.checkpoint_name(step)
    assert ckpt.load_trainer_state(latest)["state"]["step"] == step
    saved = load_file(str(latest / layout.MODEL_FILE))
    top = load_file(str(run / layout.MODEL_FILE))  # the mirror still shows that step
    assert saved.keys() == top.keys()
    assert all(torch.equal(saved[k], top[k]) for k in saved)
    _, model, _ = load_run(run)
    assert all(torch.equal(model.state_dict()[k], saved[k]) for k in saved)
    assert _leftovers(run) == []


def _save_file_failing(name: str, code: int) -> Callable[..., None]:
    real = ckpt.save_file

    def save_file(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        if name in Path(filename).name:  # safetensors wraps the OSError in its own error
            raise ckpt.SafetensorError(f"Error while serializing: I/O error: (os error {code})")
        real(tensors, filename, metadata=metadata)

    return save_file


def _path_method_failing(method: str, name: str, code: int) -> Callable[..., object]:
    real = getattr(pathlib.Path, method)

    def patched(self: Path, *args: object, **kwargs: object) -> object:
        if name in self.name:
            raise _fail(code, self)
        return real(self, *args, **kwargs)

    return patched


def _inject(monkeypatch: pytest.MonkeyPatch, site: str, code: int) -> None:
    """Make the write of one file fail with errno code."""
    if site in ("weights", "state"):
        target = layout.MODEL_FILE if site == "weights" else layout.STATE_FILE
        monkeypatch.setattr(ckpt, "save_file", _save_file_failing(target, code))
    elif site == "optimizer":

        def write_data(*args: object, **kwargs: object) -> None:
            raise _fail(code, "shard-00001.safetensors")

        monkeypatch.setattr(HuggingFaceStorageWriter, "write_data", write_data)
    elif site in ("state.json", "config.json", "tokenizer.json", "metrics-rewrite"):
        name = {"metrics-rewrite": layout.METRICS_FILE}.get(site, site)
        monkeypatch.setattr(
            pathlib.Path, "write_text", _path_method_failing("write_text", name, code)
        )
    elif site == "mirror":  # a file system without hard links: the copy fills the disk
        monkeypatch.setattr(
            os, "link", lambda *a, **k: (_ for _ in ()).throw(_fail(errno.EPERM, a[0]))
        )
        real_copy = ckpt.shutil.copy2
        monkeypatch.setattr(
            ckpt.shutil,
            "copy2",
            lambda src, dst, **k: (
                (_ for _ in ()).throw(_fail(code, dst))
                if "state.json" in Path(dst).name
                else real_copy(src, dst, **k)
            ),
        )
    elif site == "metrics.jsonl":
        real_open = os.open
        monkeypatch.setattr(
            os,
            "open",
            lambda path, *a, **k: (
                (_ for _ in ()).throw(_fail(code, path))
                if str(path).endswith(layout.METRICS_FILE)
                else real_open(path, *a, **k)
            ),
        )
    elif site == "loss.png":
        monkeypatch.setattr(
            Figure, "savefig", lambda self, *a, **k: (_ for _ in ()).throw(_fail(code, a[0]))
        )
    else:
        raise AssertionError(site)


SITES = [
    "weights",
    "state",
    "optimizer",
    "state.json",
    "mirror",
    "config.json",
    "tokenizer.json",
    "metrics-rewrite",
    "metrics.jsonl",
    "loss.png",
]


@pytest.mark.parametrize("site", SITES)
def test_a_full_disk_at_any_write_keeps_the_previous_checkpoint(
    run: Path, trained: tuple[Path, Path], site: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    _inject(monkeypatch, site, errno.ENOSPC)
    code = _pretrain(trained[0], run, 6, resume=True)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "error:" in err
    assert "no space left on" in err
    assert "Traceback" not in err
    monkeypatch.undo()
    _assert_previous_checkpoint_intact(run)


@pytest.mark.parametrize("site", ["optimizer"])
def test_an_io_error_is_reported_and_the_run_resumes_afterwards(
    run: Path, trained: tuple[Path, Path], site: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    _inject(monkeypatch, site, errno.EIO)
    assert _pretrain(trained[0], run, 6, resume=True) == 2
    assert "I/O error writing" in capsys.readouterr().err
    monkeypatch.undo()
    _assert_previous_checkpoint_intact(run)
    assert _pretrain(trained[0], run, 6, resume=True) == 0  # the disk is fine again
    assert ckpt.list_checkpoints(run)[-1].name == layout.checkpoint_name(6)
    assert _leftovers(run) == []


def test_a_full_disk_while_preparing_keeps_the_previous_data(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(trained[0], data)
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Some other text to prepare.\n\n" * 50)
    monkeypatch.setattr(pathlib.Path, "open", _path_method_failing("open", ".bin", errno.ENOSPC))
    args = ["prepare", "--input", str(corpus), "--out", str(data), "--tokenizer", "char"]
    assert main([*args, "--overwrite"]) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "no space left on" in err
    assert "train_000.bin" in err
    assert "Traceback" not in err
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "data"]


def _fill(directory: Path, headroom: int) -> None:
    """Write zeros into directory until the file system is full, then free headroom bytes
    (room for the lock, config.json and tokenizer.json, not for a checkpoint)."""
    with (directory / "filler").open("wb", buffering=0) as handle:
        written = 1
        while written:
            try:
                written = handle.write(b"\0" * 4096)
            except OSError as exc:
                written = 0 if exc.errno == errno.ENOSPC else handle.write(b"")
    size = (directory / "filler").stat().st_size
    os.truncate(directory / "filler", size - headroom)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_real_full_tmpfs(trained: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    import shutil

    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)])
    if done.returncode != 0:
        pytest.skip("this container may not mount a tmpfs")
    try:
        shutil.copytree(trained[1], mount / "run")
        _fill(mount, headroom=48 * 1024)
        assert _pretrain(trained[0], mount / "run", 6, resume=True) == 2
        assert "no space left on" in capsys.readouterr().err
        (mount / "filler").unlink()
        _assert_previous_checkpoint_intact(mount / "run")
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="no RLIMIT_FSIZE signal here")
def test_a_file_size_limit_is_efbig_not_a_crash(
    run: Path, trained: tuple[Path, Path], capsys
) -> None:
    """Python ignores SIGXFSZ, so a write past RLIMIT_FSIZE fails with EFBIG instead of killing
    the process; the soft limit is set here and restored (raising it back is always allowed)."""
    assert signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, hard))  # below one model.safetensors
    try:
        code = _pretrain(trained[0], run, 6, resume=True)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "file too large" in err
    assert "Traceback" not in err
    _assert_previous_checkpoint_intact(run)
