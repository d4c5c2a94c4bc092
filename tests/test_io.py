"""kava.io: atomic writes, JSONL appends that survive a torn line, interrupted folder swaps."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest

from kava import failpoints
from kava.io import (
    append_jsonl,
    atomic_replace_dir,
    atomic_write_text,
    finish_interrupted_replace,
    read_jsonl,
    remove_stale_temporaries,
)


@pytest.fixture
def failpoint(monkeypatch):
    def arm(spec: str) -> None:
        monkeypatch.setenv(failpoints.ENV, spec)
        monkeypatch.setattr(failpoints, "_hits", {})

    return arm


def test_a_torn_last_line_is_ignored_on_read_and_cut_on_the_next_append(tmp_path):
    path = tmp_path / "log.jsonl"
    append_jsonl(path, {"step": 1})
    with open(path, "a") as f:
        f.write('{"step": 2, "lo')  # what a kill half-way through an append leaves
    assert read_jsonl(path) == [{"step": 1}]
    append_jsonl(path, {"step": 2})
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'


def test_a_torn_only_line_is_cut_too(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": ' + "x" * 10000)  # longer than one read-back chunk, no newline at all
    append_jsonl(path, {"a": 1})
    assert read_jsonl(path) == [{"a": 1}]


def test_a_corrupt_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n{"a": \n{"a": 2}\n')
    with pytest.raises(json.JSONDecodeError):
        read_jsonl(path)


def test_a_full_disk_leaves_the_old_file(tmp_path, failpoint):
    path = tmp_path / "results.yaml"
    atomic_write_text(path, "old\n")
    failpoint("atomic.write:1:enospc")
    with pytest.raises(OSError) as err:
        atomic_write_text(path, "new\n")
    assert err.value.errno == errno.ENOSPC
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["results.yaml"]


def test_stale_temporaries_are_removed_for_the_names_owned(tmp_path):
    for name in (".a.yaml.abcd1234.tmp", ".b.jsonl.zz_z9876.tmp", "keep.tmp", ".c.yaml.short.tmp"):
        (tmp_path / name).write_text("x")
    remove_stale_temporaries(tmp_path, owns=lambda n: n == "a.yaml")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.jsonl.zz_z9876.tmp", ".c.yaml.short.tmp", "keep.tmp"]
    remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".c.yaml.short.tmp", "keep.tmp"]


def test_a_swap_interrupted_between_its_renames_is_undone(tmp_path, failpoint):
    final, tmp = tmp_path / "checkpoint-final", tmp_path / "checkpoint-final.tmp"
    final.mkdir()
    (final / "w").write_text("old")
    tmp.mkdir()
    (tmp / "w").write_text("new")
    failpoint("dir.swap:1:enospc")
    with pytest.raises(OSError):
        atomic_replace_dir(tmp, final)
    assert not final.exists() and (tmp_path / "checkpoint-final.old").is_dir()
    finish_interrupted_replace(final)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-final"] and (final / "w").read_text() == "old"


@pytest.mark.skipif(os.name != "posix", reason="file modes and the umask are POSIX")
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mode):
    """A file written atomically gets the mode a plain open() would give it (0644 under the
    usual umask 022), not tempfile.mkstemp's 0600: a group-shared folder stays readable."""
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "new.yaml", "a: 1\n")
        (tmp_path / "old.yaml").write_text("a: 0\n")
        os.chmod(tmp_path / "old.yaml", 0o600)  # replacing a file gives the new one the umask's mode too
        atomic_write_text(tmp_path / "old.yaml", "a: 1\n")
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    for name in ("new.yaml", "old.yaml", "plain.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.skipif(os.name != "posix", reason="file modes and the umask are POSIX")
def test_files_a_library_wrote_0600_get_the_umask_mode(tmp_path):
    import torch
    from safetensors.torch import save_file

    from kava.io import give_umask_mode

    old = os.umask(0o027)
    try:
        (tmp_path / "sub").mkdir()
        save_file({"a": torch.zeros(2)}, str(tmp_path / "sub" / "w.safetensors"))
        (tmp_path / "x.json").write_text("{}")
        os.chmod(tmp_path / "x.json", 0o600)
        give_umask_mode(tmp_path)
    finally:
        os.umask(old)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*") if p.is_file()} == {
        "w.safetensors": 0o640, "x.json": 0o640}
