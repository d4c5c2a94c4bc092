"""One kava process per output folder: an OS-level lock on `<folder>/.kava.lock`.

`kava train`, `kava evaluate --output-dir` and `kava sweep` take the lock of the folder they
write into and hold it until they exit. A second process that wants the same folder is
refused at once with a message naming the holder (its pid, command and start time, which
the holder writes into the lock file). The lock is `flock(2)` on POSIX (`msvcrt.locking`
on Windows): the kernel releases it when the holder's process ends, however it ends, so a
crash or a SIGKILL never leaves a folder locked and there is no stale lock to delete.
Two opens of the lock file conflict even inside one process.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from kava.errors import KavaError
from kava.io import remove_stale_temporaries

LOCK_NAME = ".kava.lock"


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class FolderLock:
    """`with FolderLock(folder, "kava train"):` holds `folder`'s lock (creating the folder).

    Once it holds the lock it deletes the temporary files that a killed predecessor's
    atomic writes left there (`kava.io.remove_stale_temporaries`). `name` picks another
    lock file, for a process that owns only some files of a shared folder (`kava evaluate
    --output FILE` locks `.FILE.lock`); `owns` then says which file names are its own."""

    def __init__(self, folder: str | os.PathLike, what: str, name: str = LOCK_NAME,
                 owns: Callable[[str], bool] | None = None):
        self.folder = Path(folder)
        self.what = what
        self.path = self.folder / name
        self.owns = owns
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise KavaError(f"cannot use output folder {self.folder}: {err.strerror}") from None
        if not _try_lock(fd):
            holder = _read_holder(fd)
            os.close(fd)
            what = self.folder if self.path.name == LOCK_NAME else self.folder / self.path.name[1:-5]
            raise KavaError(
                f"{what} is in use by another kava process ({holder}); wait for it to finish, "
                "stop it, or write somewhere else"
            )
        info = {"pid": os.getpid(), "command": self.what,
                "since": _dt.datetime.now().replace(microsecond=0).isoformat()}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(info) + "\n").encode())
        self._fd = fd
        remove_stale_temporaries(self.folder, self.owns)
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
        return f"pid {info['pid']}, {info['command']}, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its lock is held"
