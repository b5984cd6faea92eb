"""One lock per output directory, so two processes never write the same run or build.

    hold_lock(run_dir.parent / f".{run_dir.name}.lock", run_dir, "`llmtrain pretrain`")

An exclusive `flock` on a small file beside (or in) the directory, taken without waiting: a
second writer gets a `RunDirError` naming the directory and the process that holds it. The
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


def hold_lock(lock_file: Path, target: Path, writer: str) -> None:
    """Take the lock on `target` (through `lock_file`) or raise RunDirError."""
    lock_file = Path(lock_file).resolve()
    if lock_file in _HELD:
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_file, "a+", encoding="utf-8")  # noqa: SIM115 - held past this function
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
    _HELD[lock_file] = handle


def release_lock(lock_file: Path) -> None:
    handle = _HELD.pop(Path(lock_file).resolve(), None)
    if handle is not None:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


@contextlib.contextmanager
def locked(lock_file: Path, target: Path, writer: str) -> Iterator[None]:
    """`hold_lock` for the duration of a block."""
    held_before = Path(lock_file).resolve() in _HELD
    hold_lock(lock_file, target, writer)
    try:
        yield
    finally:
        if not held_before:
            release_lock(lock_file)
