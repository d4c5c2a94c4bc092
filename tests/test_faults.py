"""Kill `kava train`, `kava evaluate` and `kava sweep` anywhere; the resumed run ends where an
uninterrupted one does (kava.bench.faults; `kava bench faults --kills 100` runs longer).

Every process here is a real process running kava's CLI, killed by a real SIGKILL (forked
from a preloaded server, so a start costs a fraction of a second). The moments are failpoints
inside checkpoint writes, JSONL appends and atomic renames, mid-step, and seeded delays.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from types import SimpleNamespace

import pytest

from kava.bench.faults import (
    Launcher,
    Moment,
    Tally,
    check_train,
    episode,
    leftovers,
    reference,
    write_workload,
)
from kava.training.signals import EXIT_PREEMPTED


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    launcher = Launcher()
    work = write_workload(root / "workload")
    ref_train, seconds = reference("train", launcher, work, root, None)
    return SimpleNamespace(root=root, launcher=launcher, work=work, ref_train=ref_train, seconds=seconds,
                           checkpoint=ref_train / "checkpoint-final")


def _run_episodes(bench, kind: str, episodes: list[list[str]], seed: int) -> Tally:
    """Each episode a list of failpoints ("name:N") and "timed" (a seeded delay of up to a
    quarter of the uninterrupted run's time: a resumed run has less left to do)."""
    ref, seconds = bench.ref_train, bench.seconds
    if kind != "train":
        ref, seconds = reference(kind, bench.launcher, bench.work, bench.root, bench.checkpoint)
    rng = random.Random(seed)
    tally = Tally(kind)
    for i, specs in enumerate(episodes):
        moments = [Moment(delay=round(rng.uniform(0.05, seconds / 4), 3)) if s == "timed" else Moment(failpoint=s)
                   for s in specs]
        episode(kind, bench.launcher, bench.work, bench.root / f"{kind}-{i}", ref, bench.checkpoint, moments, tally)
    return tally


def test_train_killed_anywhere_resumes_bit_identically(bench):
    tally = _run_episodes(bench, "train", [
        # kill while checkpoint-4 is half written, then while checkpoint-6 is complete but not yet renamed
        ["checkpoint.weights:2", "checkpoint.state:2"],
        # a torn train_log.jsonl line, mid-step (after backward, before the update), between write and rename
        ["jsonl.append:3", "train.step:4", "atomic.write:3"],
        # inside the final checkpoint's write, then at seeded moments
        ["checkpoint.tokenizer:4", "timed"],
        ["timed", "timed", "checkpoint.state:1"],
    ], seed=1)
    assert tally.problems == []
    assert tally.kills >= 10 and len(tally.moments) >= 10, "; ".join(tally.outcomes)
    assert {"checkpoint.weights", "checkpoint.state", "checkpoint.tokenizer", "jsonl.append"} <= set(tally.by_moment)


def test_evaluate_killed_anywhere_resumes_to_the_same_predictions(bench):
    tally = _run_episodes(bench, "evaluate", [
        ["jsonl.append:2", "jsonl.append:4"],  # torn prediction lines, the second in a resumed run
        ["jsonl.append:5", "atomic.write:1"],  # ... then before the in-order rewrite is renamed into place
        ["jsonl.append:7", "atomic.write:2", "timed"],  # ... and before results_eval.yaml is
        ["timed", "timed", "timed", "jsonl.append:1"],
    ], seed=2)
    assert tally.problems == []
    # every failpoint before a timed kill killed a run (a timed kill may come after the end: the list
    # ends there); the timed kills are counted, not told apart: an evaluation of a few questions takes
    # a fraction of a second, so its seeded delays (up to a quarter of that) can round to one value
    failpoints = {"jsonl.append:2", "jsonl.append:4", "jsonl.append:5", "jsonl.append:7",
                  "atomic.write:1", "atomic.write:2"}
    assert tally.kills >= 10 and failpoints <= tally.moments, "; ".join(tally.outcomes)
    assert tally.by_moment.get("jsonl.append", 0) >= 4


def test_sweep_killed_anywhere_resumes_to_the_same_summary(bench):
    tally = _run_episodes(bench, "sweep", [
        # each seed's training child mid-step, then each resumed one while it writes its log; then the
        # sweep itself (run.yaml); then each final checkpoint half written
        ["train.step:3", "jsonl.append:2", "atomic.write:1", "checkpoint.state:1"],
        # each evaluation child half-way through a prediction line, the whole process group, the sweep's status
        ["jsonl.append:5", "timed", "atomic.write:4"],
    ], seed=3)
    assert tally.problems == []
    assert tally.kills >= 10 and len(tally.moments) >= 10, "; ".join(tally.outcomes)


def _preempted_line(log_text: str) -> str:
    lines = [ln for ln in log_text.splitlines() if "resume with:" in ln]
    assert len(lines) == 1, log_text[-2000:]
    return lines[0]


@pytest.mark.parametrize("signame", ["SIGINT", "SIGUSR1"])
def test_stop_signal_mid_step_checkpoints_and_resumes(bench, signame):
    from kava.bench.faults import command, run

    folder = bench.root / f"preempt-{signame}"
    out, log = folder / "out", folder / "log.txt"
    folder.mkdir()
    rc = run(bench.launcher, command("train", bench.work, out, None, False), log, failpoint=f"train.step:3:{signame}")
    assert rc == EXIT_PREEMPTED
    line = _preempted_line(log.read_text())
    assert re.search(rf"kava: stopped by {signame} at step 3/8; checkpoint written to \S+checkpoint-3; "
                     r"resume with: kava train --config \S+ --output-dir \S+ --no-progress --resume$", line), line
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert run(bench.launcher, command("train", bench.work, out, None, True), log) == 0
    assert check_train(out, bench.ref_train) == [] and leftovers(out) == []


def test_sigterm_from_outside_stops_at_the_next_step(bench):
    from kava.bench.faults import command, run

    folder = bench.root / "preempt-SIGTERM"
    out, log = folder / "out", folder / "log.txt"
    folder.mkdir()
    proc = bench.launcher.start(command("train", bench.work, out, None, False), dict(os.environ), log)
    deadline = time.monotonic() + 120
    while not ((out / "train_log.jsonl").is_file() and len((out / "train_log.jsonl").read_text().splitlines()) >= 2):
        assert time.monotonic() < deadline and proc.is_alive(), log.read_text()[-2000:]
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGTERM)
    assert bench.launcher.wait(proc, 120) == EXIT_PREEMPTED
    step = int(re.search(r"stopped by SIGTERM at step (\d+)/8", _preempted_line(log.read_text())).group(1))
    assert 2 <= step < 8 and (out / f"checkpoint-{step}").is_dir()
    assert run(bench.launcher, command("train", bench.work, out, None, True), log) == 0
    assert check_train(out, bench.ref_train) == []
