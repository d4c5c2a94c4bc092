"""`kava bench faults`: SIGKILL `kava train`, `kava evaluate` and `kava sweep` at seeded
moments, resume them, and check that nothing was lost, doubled or left half-written.

    kava bench faults --kills 100 --seed 0            (every command, 100 kills each)
    kava bench faults --commands train --kills 20 --spawn

For each command the harness first runs it once, uninterrupted (the reference). Then,
episode after episode, it runs the same command in a fresh folder and kills it at a
seeded moment, runs it again (`--resume-if-exists` for train), maybe kills that run too, and so on
until a run finishes; then it compares with the reference:

- train: every `train_log.jsonl` record (all but `seconds`) equal, each step once; the
  final adapter and projection tensors bit-identical; every checkpoint folder loadable;
- evaluate: the predictions file equal record for record (all but `seconds`), each id
  once; the results file equal (all but the timings and `resumed`);
- sweep: `summary.yaml` and `summary.csv` equal, and every seed checked as above;
- everywhere: no `*.tmp` / `*.old` left behind.

A moment is either a failpoint (`kava.failpoints`: inside a checkpoint write, half-way
through a JSONL append, between a file's write and its rename, after a step's backward
pass) reached for the N-th time, with N seeded, or a seeded delay after the start (then
the whole process group is killed, as a scheduler kills a job). A moment the run
finishes before is counted as missed, not as a kill.

The processes are real processes killed by real signals. By default they are forked
from a server process that has imported kava once (`multiprocessing`'s forkserver;
under `kava sweep` its training and evaluation children are forked the same way), so a
start costs ~0.1 s instead of the ~5 s of importing torch and transformers; `--spawn`
starts every process as a fresh `python -m kava` instead. `tests/test_faults.py` runs a
few kills of each command with the same code.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

KILLED = -signal.SIGKILL
_SWEEP_CHILD_KILLED = re.compile(r"seed (\d+)(?: \[device [^\]]*\])?: FAILED: (\w+) failed \(killed by signal 9\)")
TRAIN_STEPS = 8
EVAL_QUESTIONS = 8
MOMENTS = {  # failpoint -> how many times one full run passes it (an upper bound for N)
    "train": {"train.step": TRAIN_STEPS, "jsonl.append": TRAIN_STEPS, "checkpoint.weights": 4,
              "checkpoint.tokenizer": 4, "checkpoint.state": 4, "atomic.write": 6},
    "evaluate": {"jsonl.append": EVAL_QUESTIONS, "atomic.write": 2},
    "sweep": {"train.step": 4, "jsonl.append": 8, "checkpoint.state": 2, "atomic.write": 8},
}


# ----- the workload ------------------------------------------------------------------------


def write_workload(root: Path) -> dict[str, Path]:
    """A tiny config (random 2-layer Llama, 32 rows, 8 steps, a checkpoint every 2) and
    an evaluation file with questions of different lengths (so batches are padded)."""
    root.mkdir(parents=True, exist_ok=True)
    rows, questions = [], []
    for i in range(32):
        a, b = 3 + i % 7, 2 + i % 5
        rows.append({"question": f"Sam has {a} pens and buys {b} boxes of {a} pens. How many?",
                     "steps": [f"<<{b}*{a}={a * b}>>", f"<<{a}+{a * b}={a + a * b}>>"], "answer": str(a + a * b)})
    for i in range(EVAL_QUESTIONS):
        questions.append({"id": f"q{i}", "question": "Sam has 3 pens" + " and 2 more" * (i % 4) + "?",
                          "answer": str(3 + 2 * (i % 4))})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "eval.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    config = {
        "run_name": "faults", "seed": 7,
        "model": {"name": "tiny-llama", "dtype": "float32", "tiny": {"hidden_size": 32, "num_layers": 2}},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
        "latent": {"num_latents": 3, "num_iterations": 1},
        "data": {"dataset": str(root / "train.jsonl"), "source": "local", "val_size": 0},
        "train": {"lr": 3e-3, "max_steps": TRAIN_STEPS, "global_batch_size": 4, "micro_batch_size": 2,
                  "warmup_ratio": 0.0, "save_every": 2, "keep_last": 2},
    }
    (root / "tiny.yaml").write_text(yaml.safe_dump(config))
    return {"config": root / "tiny.yaml", "eval": root / "eval.jsonl"}


def command(kind: str, work: dict[str, Path], out: Path, checkpoint: Path | None, resume: bool) -> list[str]:
    if kind == "train":
        return ["train", "--config", str(work["config"]), "--output-dir", str(out), "--no-progress",
                *(["--resume-if-exists"] if resume else [])]  # a kill may come before the first checkpoint
    if kind == "evaluate":
        return ["evaluate", "--checkpoint", str(checkpoint), "--datasets", str(work["eval"]), "--output-dir", str(out),
                "--batch-size", "3", "--max-new-tokens", "6", "--no-progress"]
    return ["sweep", "--config", str(work["config"]), "--seeds", "1", "2", "--output-dir", str(out),
            "--run-name", "faults",
            "--datasets", str(work["eval"]), "--eval-batch-size", "3", "train.max_steps=4"]


# ----- starting and killing processes ------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent ends (a harness interrupted mid-run leaves no orphans)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _run_cli(argv: list[str], env: dict, log_path: str) -> int:
    """In a fresh process: kava's CLI with `argv`, output to `log_path`; returns its exit code."""
    import traceback

    from kava import failpoints

    _die_with_parent()
    failpoints._hits.clear()
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import threading

    import torch
    from tqdm import tqdm

    torch.set_num_threads(1)
    tqdm.set_lock(threading.RLock())  # not tqdm's default multiprocessing lock, which os._exit would leak
    try:
        from kava.cli import main

        rc = main(argv)
    except SystemExit as err:
        rc = err.code if isinstance(err.code, int) else 1
    except BaseException:  # noqa: BLE001 - a bug: keep its traceback in the log
        traceback.print_exc()
        rc = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return rc


def _fork_runner(argv: list[str], env: dict, log_path: Path) -> int:
    """`kava sweep`'s runner in fork mode: `python -m kava CMD ...` as a forked process."""
    pid = os.fork()
    if pid == 0:
        os._exit(_run_cli(argv[3:], env, str(log_path)))
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _forked_main(argv: list[str], env: dict, log_path: str) -> None:
    os.setpgrp()  # its own process group: a timed kill takes the sweep's children with it
    if argv[0] == "sweep":
        import kava.experiments.sweep

        kava.experiments.sweep.subprocess_runner = _fork_runner
    os._exit(_run_cli(argv, env, log_path))


class Launcher:
    """Starts kava processes: forked from a preloaded server, or spawned (`spawn=True`)."""

    def __init__(self, spawn: bool = False):
        self.spawn = spawn
        if not spawn:
            self.ctx = multiprocessing.get_context("forkserver")
            self.ctx.set_forkserver_preload(["kava.bench.faults", "kava.cli", "kava.training.trainer",
                                             "kava.evaluation.cli", "kava.experiments.sweep", "kava.api"])
            warm = self.ctx.Process(target=os.getpid)  # start the server now, not inside a timed run
            warm.start()
            warm.join()

    def start(self, argv: list[str], env: dict, log_path: Path):
        env = {**env, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
        if self.spawn:
            with open(log_path, "ab") as log:
                return subprocess.Popen([sys.executable, "-m", "kava", *argv], env=env, stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        proc = self.ctx.Process(target=_forked_main, args=(argv, env, str(log_path)))
        proc.start()
        return proc

    def wait(self, proc, timeout: float | None = None) -> int | None:
        if self.spawn:
            try:
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        proc.join(timeout)
        return proc.exitcode

    def kill_group(self, proc) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run(launcher: Launcher, argv: list[str], log_path: Path, failpoint: str | None = None,
        delay: float | None = None, timeout: float = 600.0) -> int:
    """Run one kava command to its end; `failpoint` ("name:N") or `delay` (seconds) kills it."""
    env = dict(os.environ)
    env.pop("KAVA_FAILPOINT", None)
    if failpoint:
        env["KAVA_FAILPOINT"] = failpoint
    proc = launcher.start(argv, env, log_path)
    rc = launcher.wait(proc, delay if delay is not None else timeout)
    if rc is None and delay is not None:
        launcher.kill_group(proc)
        rc = launcher.wait(proc, timeout)
    if rc is None:
        launcher.kill_group(proc)
        raise RuntimeError(f"{' '.join(argv[:1])} did not finish within {timeout:.0f} s; log: {log_path}")
    return rc


# ----- checking the result -----------------------------------------------------------------


def leftovers(folder: Path) -> list[str]:
    """Half-written things: `*.tmp` / `*.old` folders and files anywhere under `folder`."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.endswith((".tmp", ".old")))


def _records(path: Path, drop: tuple[str, ...]) -> list[dict]:
    from kava.io import read_jsonl

    return [{k: v for k, v in r.items() if k not in drop} for r in read_jsonl(path)]


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def check_train(run_dir: Path, ref_dir: Path) -> list[str]:
    from kava.training.checkpoint import read_checkpoint_config

    problems = []
    log = _records(run_dir / "train_log.jsonl", ("seconds",))
    steps = [r["step"] for r in log]
    if len(set(steps)) != len(steps):
        problems.append(f"train_log.jsonl holds steps twice: {sorted(s for s in set(steps) if steps.count(s) > 1)}")
    if log != _records(ref_dir / "train_log.jsonl", ("seconds",)):
        problems.append("train_log.jsonl differs from the uninterrupted run's")
    for name in ("adapter/adapter_model.safetensors", "projection.safetensors"):
        a, b = _tensors(run_dir / "checkpoint-final" / name), _tensors(ref_dir / "checkpoint-final" / name)
        if a.keys() != b.keys() or any(not a[k].equal(b[k]) for k in a):
            problems.append(f"checkpoint-final/{name} differs from the uninterrupted run's")
    for ckpt in sorted(run_dir.glob("checkpoint-*")):
        try:
            read_checkpoint_config(ckpt)
            for f in ckpt.rglob("*.safetensors"):
                _tensors(f)
        except Exception as err:  # noqa: BLE001 - any failure to load is the finding
            problems.append(f"{ckpt.name} cannot be loaded: {err}")
    return problems


def check_evaluate(out_dir: Path, ref_dir: Path) -> list[str]:
    from kava.evaluation.results import predictions_file, results_file

    problems = []
    preds = _records(predictions_file(out_dir, "eval.jsonl"), ("seconds",))
    ids = [r["id"] for r in preds]
    if len(set(ids)) != len(ids):
        problems.append("predictions_eval.jsonl holds an example twice")
    if preds != _records(predictions_file(ref_dir, "eval.jsonl"), ("seconds",)):
        problems.append("predictions_eval.jsonl differs from the uninterrupted run's")
    timing = ("seconds", "seconds_per_question", "resumed", "checkpoint", "predictions")

    def results(d: Path) -> dict:
        return {k: v for k, v in yaml.safe_load(results_file(d, "eval.jsonl").read_text()).items() if k not in timing}

    if results(out_dir) != results(ref_dir):
        problems.append("results_eval.yaml differs from the uninterrupted run's")
    return problems


def check_sweep(out_dir: Path, ref_dir: Path) -> list[str]:
    run, ref = out_dir / "faults", ref_dir / "faults"
    problems = []
    for name in ("summary.yaml", "summary.csv"):
        if (run / name).read_text() != (ref / name).read_text():
            problems.append(f"{name} differs from the uninterrupted sweep's")
    for seed in ("seed_1", "seed_2"):
        problems += [f"{seed}: {p}"
                     for p in check_train(run / seed, ref / seed) + check_evaluate(run / seed, ref / seed)]
    return problems


CHECKS = {"train": check_train, "evaluate": check_evaluate, "sweep": check_sweep}


# ----- episodes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Moment:
    """When to kill: at a failpoint ("name:N", see kava.failpoints) or `delay` s after the start."""

    failpoint: str | None = None
    delay: float | None = None

    @property
    def label(self) -> str:
        return self.failpoint.split(":")[0] if self.failpoint else "timed"

    def __str__(self) -> str:
        return self.failpoint or f"timed:{self.delay}s"


@dataclass
class Tally:
    kind: str
    episodes: int = 0
    kills: int = 0
    missed: int = 0
    by_moment: dict[str, int] = field(default_factory=dict)
    moments: set = field(default_factory=set)
    outcomes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def seeded_moments(kind: str, rng: random.Random, n: int, ref_seconds: float) -> list[Moment]:
    """`n` kill moments: a quarter timed (a delay up to the reference run's duration), the
    rest a failpoint of `MOMENTS[kind]` reached for the N-th time, N seeded."""
    points = MOMENTS[kind]
    out = []
    for _ in range(n):
        if rng.random() < 0.25:
            out.append(Moment(delay=round(rng.uniform(0.05, ref_seconds), 2)))
        else:
            name = rng.choice(sorted(points))
            out.append(Moment(failpoint=f"{name}:{rng.randint(1, points[name])}"))
    return out


def episode(kind: str, launcher: Launcher, work: dict[str, Path], folder: Path, ref: Path, checkpoint: Path | None,
            moments: list[Moment], tally: Tally) -> None:
    """One fresh folder: a run killed at each of `moments` in turn (a run that finishes
    first ends the list), then a run to the end; then the checks against `ref`."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "out"
    log = folder / "log.txt"
    tally.episodes += 1
    resume = finished = False
    for m in moments:
        start = log.stat().st_size if log.exists() else 0
        rc = run(launcher, command(kind, work, out, checkpoint, resume), log, failpoint=m.failpoint, delay=m.delay)
        killed = [str(m)] if rc == KILLED else []
        if kind == "sweep" and rc == 1:  # children of the sweep were killed: it recorded them and went on
            killed = [f"{m} (seed {seed}, {what})" for seed, what in _SWEEP_CHILD_KILLED.findall(
                log.read_bytes()[start:].decode(errors="replace"))]
        tally.outcomes.append(f"{folder.name} {m}: " + (f"{len(killed)} killed" if killed else f"exit {rc}"))
        if killed:
            tally.kills += len(killed)
            tally.by_moment[m.label] = tally.by_moment.get(m.label, 0) + len(killed)
            tally.moments.update(killed)
            resume = kind == "train"
        elif rc == 0:
            tally.missed += 1
            finished = True
            break
        else:
            tally.problems.append(f"{folder.name}: exit code {rc} at {m}; log: {log}")
            return
    if not finished:
        rc = run(launcher, command(kind, work, out, checkpoint, resume), log)
        if rc != 0:
            tally.problems.append(f"{folder.name}: the resumed run exited {rc}; log: {log}")
            return
    found = leftovers(out) + CHECKS[kind](out, ref)
    tally.problems += [f"{folder.name}: {p}" for p in found]
    if not found:
        shutil.rmtree(folder)


def reference(kind: str, launcher: Launcher, work: dict[str, Path], root: Path,
              checkpoint: Path | None) -> tuple[Path, float]:
    out = root / f"reference-{kind}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    rc = run(launcher, command(kind, work, out, checkpoint, False), root / f"reference-{kind}.log")
    if rc != 0:
        raise RuntimeError(f"the uninterrupted {kind} run failed (exit code {rc}); log: "
                           f"{root / f'reference-{kind}.log'}")
    return out, time.perf_counter() - t0


def run_faults(root: Path, kinds=("train", "evaluate", "sweep"), kills: int = 10, seed: int = 0,
               spawn: bool = False, progress=print) -> dict[str, Tally]:
    """`kills` seeded kills per command (episodes of 1-3 kills each); returns a Tally per command."""
    launcher = Launcher(spawn)
    work = write_workload(root / "workload")
    ref_train, train_seconds = reference("train", launcher, work, root, None)
    checkpoint = ref_train / "checkpoint-final"
    tallies = {}
    for kind in kinds:
        ref, seconds = ((ref_train, train_seconds) if kind == "train"
                        else reference(kind, launcher, work, root, checkpoint))
        rng = random.Random(f"{seed}-{kind}")
        tally = Tally(kind)
        n = 0
        while tally.kills + tally.missed < kills and not tally.problems:
            n += 1
            k = min(rng.randint(1, 3), kills - tally.kills - tally.missed)
            episode(kind, launcher, work, root / f"{kind}-{n:03d}", ref, checkpoint,
                    seeded_moments(kind, rng, k, seconds), tally)
            progress(f"{kind}: episode {n}, {tally.kills} kills, {tally.missed} missed, {len(tally.problems)} problems")
        tallies[kind] = tally
    return tallies


def format_tallies(tallies: dict[str, Tally]) -> str:
    lines = ["command   episodes  kills  distinct moments  missed  problems  kills by moment",
             "--------  --------  -----  ----------------  ------  --------  ---------------"]
    for t in tallies.values():
        moments = ", ".join(f"{k} {v}" for k, v in sorted(t.by_moment.items()))
        lines.append(f"{t.kind:<8}  {t.episodes:>8}  {t.kills:>5}  {len(t.moments):>16}  {t.missed:>6}  "
                     f"{len(t.problems):>8}  {moments}")
    for t in tallies.values():
        lines += [f"problem ({t.kind}): {p}" for p in t.problems]
    return "\n".join(lines)


def _cmd(args) -> int:
    import tempfile

    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="kava-faults-"))
    t0 = time.perf_counter()
    tallies = run_faults(root, tuple(args.commands), args.kills, args.seed, args.spawn,
                         progress=lambda m: print(m, file=sys.stderr))
    print(format_tallies(tallies))
    print(f"{time.perf_counter() - t0:.0f} s; {'spawned' if args.spawn else 'forked'} processes; work folder {root}")
    return 1 if any(t.problems for t in tallies.values()) else 0


def register(sub) -> None:
    p = sub.add_parser(
        "faults",
        help="kill kava train/evaluate/sweep at seeded moments, resume, compare with an uninterrupted run",
        description="SIGKILL each command at seeded moments (failpoints inside checkpoint writes and JSONL "
        "appends, or timed), resume it, and check the result equals an uninterrupted run's.",
        epilog="example: kava bench faults --kills 100 --seed 0",
    )
    p.add_argument("--commands", nargs="+", choices=("train", "evaluate", "sweep"),
                   default=["train", "evaluate", "sweep"],
                   help="the commands to kill and resume (default: train evaluate sweep)")
    p.add_argument("--kills", type=int, default=30, help="kills per command (default 30)")
    p.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    p.add_argument("--spawn", action="store_true", help="start every process as a fresh `python -m kava` (slower)")
    p.add_argument("--workdir", help="where the runs go (default: a new temporary folder)")
    p.set_defaults(func=_cmd)
