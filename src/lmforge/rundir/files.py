"""Atomic file writes: readers see the old file or the new one, never half of one.

Three rules hold for every file lmforge writes:

- Atomic: a file is written under a temporary name beside its target and renamed into place,
  so a crash or a full disk leaves the previous file whole and no temporary behind.
- Permissions follow the umask: `mkstemp`/`mkdtemp` create 0600/0700, so before the rename a
  file gets 0o666 & ~umask and a directory 0o777 & ~umask, as `open()`/`mkdir` would give.
- Links are replaced, never followed: the rename replaces a symbolic link planted at a name
  lmforge writes, appends refuse a link (O_NOFOLLOW), and a link where lmforge expects one of
  its own directories is refused (`real_directory`).

A full disk (ENOSPC, EDQUOT), a file-size limit (EFBIG) or an I/O error (EIO) while writing
becomes `DiskError`, which names the path: the CLI prints it as one `error:` line, exit 2.
"""

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lmforge.errors import DataError, LMForgeError

_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO}


class DiskError(LMForgeError):
    """The disk refused a write: full, over quota, over the file-size limit, or an I/O error."""


def disk_error(exc: OSError, path: Path) -> DiskError | None:
    """The DiskError an OSError raised while writing path stands for, or None for another
    kind of OSError (a permission error, a missing directory, ...)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskError(f"no space left on {path}; free some space or write elsewhere")
    if exc.errno == errno.EFBIG:
        return DiskError(
            f"file too large: {path} exceeds the file-size limit (ulimit -f) or what the file "
            "system allows; raise the limit or write elsewhere"
        )
    if exc.errno == errno.EIO:
        return DiskError(f"I/O error writing {path}; check the disk and try again")
    return None


def os_errno(exc: BaseException) -> int | None:
    """The errno behind an exception: an OSError's own, or one a library wrapped: Rust's
    "(os error 28)" in a SafetensorError's text, an OSError among the causes, or in a
    torch.distributed.checkpoint CheckpointException's per-rank failures."""
    seen: set[int] = set()
    pending: list[object] = [exc]
    while pending:
        item = pending.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, OSError) and item.errno is not None:
            return item.errno
        if found := re.search(r"os error (\d+)", str(item)):
            return int(found.group(1))
        failures = getattr(item, "failures", None)
        wrapped = list(failures.values()) if isinstance(failures, dict) else []
        pending += [item.__cause__, item.__context__]
        pending += [w[0] if isinstance(w, tuple) and w else w for w in wrapped]  # (exc, trace)
    return None


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a disk failure inside the block (an OSError, or one a library wrapped: see
    os_errno) into a DiskError naming path; anything else passes through unchanged."""
    try:
        yield
    except DiskError:
        raise
    except BaseException as exc:  # DCP's CheckpointException is a BaseException
        code = os_errno(exc)
        error = disk_error(OSError(code, ""), path) if code in _DISK_ERRNOS else None
        if error is None:
            raise
        raise error from None


def current_umask() -> int:
    """The process umask, read from /proc/self/status on Linux; elsewhere os.umask is set and
    restored at once (os.umask is the only portable way to read it)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish_mode(path: Path) -> None:
    """Give a temporary file or directory the mode open()/mkdir would have given it:
    0o666 & ~umask for a file, 0o777 & ~umask for a directory."""
    full = 0o777 if path.is_dir() else 0o666
    os.chmod(path, full & ~current_umask())


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside path to write; on success it gets the umask's mode and is
    renamed over path (replacing a symbolic link there, never following it). On any failure
    the temporary is removed and path is untouched; a full disk or I/O error is a DiskError."""
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        try:
            yield tmp
            publish_mode(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file via a temporary file and rename, so readers never see half of it."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def append_text(path: Path, text: str) -> None:
    """Append to a log file (metrics.jsonl), creating it with the umask's mode; a symbolic
    link at path is refused rather than followed."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    with writing(path):
        try:
            fd = os.open(path, flags, 0o666)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise LMForgeError(
                    f"{path} is a symbolic link; lmforge does not write through links: "
                    "remove it and run again"
                ) from None
            raise
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(text)


def real_directory(path: Path) -> Path:
    """Create path (a directory lmforge owns inside a run) unless it exists; a symbolic link
    there is refused, so nothing planted can redirect writes outside the run directory."""
    if path.is_symlink():
        raise LMForgeError(
            f"{path} is a symbolic link; lmforge writes only inside the run directory: "
            "remove the link and run again"
        )
    with writing(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


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


def replace_directory(tmp: Path, out: Path) -> None:
    """Move a finished directory tmp (beside out) into place at out with the umask's mode,
    replacing whatever was there; a symbolic link at out is replaced, not followed."""
    publish_mode(tmp)
    with writing(out):
        if out.exists() or out.is_symlink():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            _remove(old)
        else:
            tmp.rename(out)


def _remove(path: Path) -> None:
    """Delete a file, a link or a directory tree, whichever path is."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def staged_directory(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a fresh directory beside out that replaces out only if the block succeeds.

    A failure part-way (a full disk included) leaves whatever was at out untouched.
    """
    check_output_dir(out, overwrite)
    with writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        yield tmp
        replace_directory(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_text(path: Path) -> str:
    """A UTF-8 text file to score, with the usual clear errors."""
    text = read_utf8(path, "text file")
    if not text.strip():
        raise DataError(f"{path} is empty; give a held-out text to score")
    return text
