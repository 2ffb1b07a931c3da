"""Atomic file writes: readers see the old file or the new one, never half of one."""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lmforge.errors import DataError, LMForgeError


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file via a temporary file and rename, so readers never see half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_utf8(path: Path, what: str) -> str:
    """A user's UTF-8 text file; a missing, unreadable or non-UTF-8 file is a DataError that
    says which (`what` names the file's role, e.g. "prompts file")."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte offset {exc.start})") from None
    except OSError as exc:
        raise DataError(f"cannot read {what} {path}: {exc.strerror}") from None


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse to write into a non-empty directory unless the user said --overwrite."""
    if out.exists() and not out.is_dir():
        raise LMForgeError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise LMForgeError(
            f"output directory {out} exists and is not empty; choose another --out or pass "
            "--overwrite to replace it"
        )


@contextlib.contextmanager
def staged_directory(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a fresh directory beside out that replaces out only if the block succeeds.

    A failure part-way leaves whatever was at out untouched.
    """
    check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_text(path: Path) -> str:
    """A UTF-8 text file to score, with the usual clear errors."""
    text = read_utf8(path, "text file")
    if not text.strip():
        raise DataError(f"{path} is empty; give a held-out text to score")
    return text
