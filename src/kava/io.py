"""Atomic file writes: a reader never sees a half-written file.

Every result, log summary and checkpoint file goes through these helpers: the data is
written to a temporary file in the same directory, flushed, and renamed over the target,
so a kill or a full disk at any moment leaves either the old file or the new one. JSONL
logs are appended a line at a time; a line torn by a kill is dropped by the next reader
and by the next append.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from kava.failpoints import failpoint


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_TEMPORARY = re.compile(r"^\.(.+)\.[A-Za-z0-9_]{8}\.tmp$")  # _create_temporary's names (mkstemp's before)


def _create_temporary(path: Path) -> tuple[int, str]:
    """A new file `.NAME.XXXXXXXX.tmp` next to `path`, open for writing: (fd, name). Created
    with mode 0666 and O_EXCL, so the kernel applies the umask (0644 under the usual 022) as
    for any file the user writes; tempfile.mkstemp would make it 0600, unreadable to the
    group of a shared folder."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
    while True:
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def remove_stale_temporaries(folder: str | os.PathLike, owns: Callable[[str], bool] | None = None) -> None:
    """Delete the temporary files that atomic writes killed before their rename left in
    `folder` (those of the file names `owns` accepts; all by default). Only for a folder
    whose lock (`kava.locking`) the caller holds: nobody else is writing there."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        m = _TEMPORARY.match(p.name)
        if m and p.is_file() and (owns is None or owns(m.group(1))):
            p.unlink(missing_ok=True)


def give_umask_mode(folder: str | os.PathLike) -> None:
    """Give every file under `folder` the mode a file the user writes gets (0666 less the
    umask), for files written by libraries that make them 0600 (safetensors' `save_file`,
    hence peft's and transformers' `save_pretrained`). The mode is read from a probe file the
    kernel creates, not from `os.umask()`, which would have to change the umask to read it."""
    fd, probe = _create_temporary(Path(folder) / "umask")
    os.close(fd)
    try:
        mode = stat.S_IMODE(os.stat(probe).st_mode)
    finally:
        os.unlink(probe)
    for root, _, files in os.walk(folder):
        for name in files:
            os.chmod(os.path.join(root, name), mode)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        failpoint("atomic.write")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_yaml(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False, allow_unicode=True))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def _drop_torn_tail(f) -> None:
    """Cut a last line that a killed writer left without its newline (`f` open in 'r+b')."""
    end = f.seek(0, os.SEEK_END)
    if end == 0:
        return
    f.seek(end - 1)
    if f.read(1) == b"\n":
        return
    pos = end
    while pos > 0:
        step = min(4096, pos)
        f.seek(pos - step)
        chunk = f.read(step)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            f.truncate(pos - step + cut + 1)
            return
        pos -= step
    f.truncate(0)


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line and flush it to disk (a crash loses at most a partial last line,
    which the next append removes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record) + "\n").encode("utf-8")
    with open(path, "a+b") as f:
        _drop_torn_tail(f)
        f.seek(0, os.SEEK_END)

        def torn() -> None:
            f.write(line[: len(line) // 2])
            f.flush()

        failpoint("jsonl.append", before_kill=torn)
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file, ignoring a truncated last line left by a crash."""
    records = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines):
                break
            raise
    return records


def atomic_replace_dir(tmp_dir: str | os.PathLike, final_dir: str | os.PathLike) -> None:
    """Move a fully written directory into place, replacing an older one of the same name.

    Replacing takes two renames (old out of the way, new in); a kill between them leaves
    `<final>.old` and no `<final>`, which `finish_interrupted_replace` puts back.
    """
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    if final_dir.exists():
        old = final_dir.with_name(final_dir.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final_dir, old)
        failpoint("dir.swap")
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp_dir, final_dir)
    _fsync_dir(final_dir.parent)


def finish_interrupted_replace(final_dir: str | os.PathLike) -> None:
    """Undo what a kill inside `atomic_replace_dir` left: `<final>.old` without `<final>`
    is renamed back; a leftover `<final>.old` next to `<final>` and a `<final>.tmp` are removed."""
    final_dir = Path(final_dir)
    old = final_dir.with_name(final_dir.name + ".old")
    tmp = final_dir.with_name(final_dir.name + ".tmp")
    if old.is_dir():
        if final_dir.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, final_dir)
    if tmp.is_dir():
        shutil.rmtree(tmp)
