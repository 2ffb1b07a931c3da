"""One writer per run directory: an advisory lock (flock) held while a command writes it.

The lock is a file beside the directory, `PARENT/.NAME.lock` (--overwrite and staged writes
replace the directory itself, so a lock inside it would vanish with it), holding the holder's
pid, host and command as JSON for the error a second writer gets. The kernel drops a flock when
its holder dies, however it dies, so a lock file whose flock is free is stale by definition:
the next writer takes it over, with a notice. A holder that ends normally removes the file.

POSIX only (fcntl). On NFS, flock works between machines only where the server supports it.
"""

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmforge.errors import RunInUse
from lmforge.rundir.layout import lock_name

log = logging.getLogger(__name__)


def lock_path(run_dir: Path) -> Path:
    """Where the lock of run_dir lives: `.NAME.lock` in its (absolute) parent directory."""
    run_dir = Path(os.path.abspath(run_dir))
    return run_dir.parent / lock_name(run_dir.name)


@contextlib.contextmanager
def run_lock(run_dir: Path, command: str) -> Iterator[Path]:
    """Hold run_dir's lock for the block; RunInUse at once (nothing read or removed) when a
    live process holds it. command names the writer in that error, e.g. "lmforge pretrain"."""
    path = lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _locked_fd(path, run_dir)
    try:
        _take_over(fd, path, run_dir, command)
        yield path
    finally:
        path.unlink(missing_ok=True)  # before the release: no one locks a file on its way out
        os.close(fd)


def _locked_fd(path: Path, run_dir: Path) -> int:
    """An open descriptor holding the flock of the file now at path (retried if the file was
    replaced between open and lock, e.g. removed by a holder that just finished)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunInUse(_in_use_message(run_dir, holder)) from None
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            return fd
        os.close(fd)  # locked a file already unlinked by its last holder: lock the new one


def _same_file(fd: int, path: Path) -> bool:
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)


def _read_holder(fd: int) -> dict[str, Any]:
    """The record a holder wrote ({} if unreadable: written a moment ago, or not ours)."""
    try:
        raw = os.pread(fd, 4096, 0).decode("utf-8", errors="replace")
        record = json.loads(raw) if raw.strip() else {}
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _in_use_message(run_dir: Path, holder: dict[str, Any]) -> str:
    pid = holder.get("pid", "?")
    where = (
        f" on {holder['host']}" if holder.get("host") not in (None, socket.gethostname()) else ""
    )
    command = f" ({holder['command']})" if holder.get("command") else ""
    return (
        f"{run_dir} is in use by pid {pid}{where}{command}; wait for it to finish or stop it "
        f"(kill {pid}), then run this again"
    )


def _take_over(fd: int, path: Path, run_dir: Path, command: str) -> None:
    """Write this process's record into the lock, noting a stale one left by a dead holder."""
    stale = _read_holder(fd)
    if stale:
        log.warning(
            "notice: %s was locked by pid %s (%s), which is no longer running; taking its "
            "lock over (%s)",
            run_dir,
            stale.get("pid", "?"),
            stale.get("command", "?"),
            path,
        )
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
    os.fsync(fd)
