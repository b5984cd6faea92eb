"""One lock per output directory, so two processes never write the same run or build.

    hold_lock(run_dir, "training run")

An exclusive `flock` on a small file beside the directory (`<parent>/.<name>.lock`: outside
it, so `--overwrite` can delete the directory and a finished build's files stay untouched),
taken without waiting: a second writer gets a `RunDirError` naming the directory and the
process that holds it. The
operating system drops the lock when its process ends, however it ends, so a killed run leaves
nothing stuck. A process may take the same lock again (a test or a script that runs a stage
twice); it is held until `release_lock` or the end of the process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from llmtrain.errors import RunDirError

_HELD: dict[Path, IO[str]] = {}


def lock_file(directory: Path) -> Path:
    directory = Path(directory).resolve()
    return directory.parent / f".{directory.name}.lock"


def hold_lock(target: Path, writer: str) -> None:
    """Take the lock on the directory `target` or raise RunDirError."""
    lock_path = lock_file(target)
    if lock_path in _HELD:
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - held past this function
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunDirError(
            f"another {writer} is writing {target} ({holder}); wait for it to finish, or "
            "write to another output_dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    _HELD[lock_path] = handle


def release_lock(target: Path) -> None:
    handle = _HELD.pop(lock_file(target), None)
    if handle is not None:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


@contextlib.contextmanager
def locked(target: Path, writer: str) -> Iterator[None]:
    """`hold_lock` for the duration of a block."""
    held_before = lock_file(target) in _HELD
    hold_lock(target, writer)
    try:
        yield
    finally:
        if not held_before:
            release_lock(target)
