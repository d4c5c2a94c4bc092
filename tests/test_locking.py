"""kava.locking: one kava process per output folder, and no lock outlives its process."""

from __future__ import annotations

import multiprocessing
import os
import signal

import pytest

pytest_plugins = ["fixtures_eval"]

from kava.cli import main  # noqa: E402
from kava.errors import KavaError  # noqa: E402
from kava.locking import FolderLock  # noqa: E402


def _hold(folder: str, ready) -> None:
    FolderLock(folder, "kava train").acquire()
    ready.send("locked")
    signal.pause()


@pytest.fixture
def holder(tmp_path):
    """A separate process holding tmp_path/out's lock until the test kills it with SIGKILL."""
    ctx = multiprocessing.get_context("fork")
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(target=_hold, args=(str(tmp_path / "out"), theirs), daemon=True)
    proc.start()
    assert mine.recv() == "locked"
    yield proc
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    with FolderLock(tmp_path, "kava train"):
        with pytest.raises(KavaError, match=rf"{tmp_path} is in use by another kava process \(pid {os.getpid()}, "
                                            r"kava train, since \S+\)"):
            FolderLock(tmp_path, "kava evaluate").acquire()
    with FolderLock(tmp_path, "kava evaluate"):  # released on exit
        pass


def test_the_lock_dies_with_its_process(tmp_path, holder):
    with pytest.raises(KavaError, match=f"pid {holder.pid}"):
        FolderLock(tmp_path / "out", "kava sweep").acquire()
    os.kill(holder.pid, signal.SIGKILL)  # no clean-up code runs
    holder.join()
    with FolderLock(tmp_path / "out", "kava sweep"):
        pass


def test_train_evaluate_and_sweep_refuse_a_folder_in_use(tmp_path, holder, tiny_checkpoint, capsys):
    out = tmp_path / "out"
    cfg = tmp_path / "c.yaml"
    (tmp_path / "t.jsonl").write_text('{"question": "q", "steps": ["<<1+1=2>>"], "answer": "2"}\n' * 8)
    cfg.write_text(f"model: {{name: tiny-llama}}\ndata: {{dataset: {tmp_path / 't.jsonl'}, source: local}}\n")
    (tmp_path / "e.jsonl").write_text('{"question": "q", "answer": "2"}\n')
    for argv in (["train", "--config", str(cfg), "--output-dir", str(out)],
                 ["evaluate", "--checkpoint", str(tiny_checkpoint), "--datasets", str(tmp_path / "e.jsonl"),
                  "--output-dir", str(out), "--no-progress"],
                 ["sweep", "--config", str(cfg), "--seeds", "1", "--output-dir", str(tmp_path), "--run-name", "out",
                  "--datasets", str(tmp_path / "e.jsonl")]):
        assert main(argv) == 2, argv[0]
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"error: {out} is in use by another kava process (pid {holder.pid}, kava train, since ")
    assert sorted(p.name for p in out.iterdir()) == [".kava.lock"]  # nothing was written
