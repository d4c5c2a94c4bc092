"""Where a sweep's seeds run: on this machine, or as submitit jobs on SLURM.

* ``local`` (default): :func:`run_local`, each seed's training and evaluation as
  subprocesses of this process, one seed at a time per device (``--devices``).
* ``slurm``: :func:`submit`, one submitit job per seed, all in one job array, with the
  options of :class:`kava.config.LauncherConfig` (the config's ``launcher:`` section, or
  the command line). ``submitit-local`` is the same jobs through submitit's local executor
  (real processes on this machine: a cluster run's path without a cluster).

A job runs the same per-seed steps as a local sweep (``kava train``, then ``kava evaluate``,
each a subprocess, written to the seed's ``status.yaml``). Pre-emption and time limits follow
submitit's checkpointing protocol: SLURM sends ``SIGUSR2`` ``signal_delay_s`` before the kill
(``--signal=USR2@<s>``), submitit calls :meth:`SeedJob.checkpoint`, which asks the training
process to stop with ``SIGUSR1`` (the trainer checkpoints at the next step boundary and exits;
a trainer that does not handle it is ended, and the last ``train.save_every`` checkpoint
stands), and the job is requeued; the requeued job finds ``checkpoint-<step>/`` and runs
``kava train --resume``. The training process ignores ``SIGUSR2`` itself, so only the job
decides. A job that fails is recorded in ``status.yaml`` like a failed local seed; the next
``kava sweep`` submits every seed that is neither done nor queued or running again.

``SEEDDIR/job.yaml`` (written at submission): ``launcher``, ``id``, ``folder`` (submitit's
pickles and logs, ``<run>/submitit``), ``submitted``. The job adds ``job_state`` (``queued``,
``running``, ``requeued``, ``finished``), ``host`` and ``requeues`` to ``status.yaml``.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import submitit
from submitit.helpers import Checkpointable

from kava.config import LauncherConfig
from kava.errors import KavaError
from kava.experiments.aggregate import read_yaml_mapping, write_yaml_readable
from kava.io import atomic_write_yaml

LAUNCHERS = ("local", "slurm", "submitit-local")
JOBS_DIR = "submitit"
JOB_FILE = "job.yaml"
STATUS_FILE = "status.yaml"
#: The signal that asks `kava train` to checkpoint at the next step boundary and stop.
TRAIN_STOP_SIGNAL = signal.SIGUSR1
#: Seconds a job keeps after handing the stop on, for requeueing itself.
REQUEUE_MARGIN_S = 20
_POLL_S = 0.1


def subprocess_runner(argv: list[str], env: dict[str, str], log_path: Path) -> int:
    """Run ``argv`` with ``env``, stdout and stderr appended to ``log_path``; the exit code."""
    with open(log_path, "ab") as log:
        proc = subprocess.run(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return proc.returncode


def run_local(sweep, seeds: Sequence[int], devices: Sequence[str | None]) -> dict[int, dict]:
    """Every seed on this machine: one after another, or in parallel one per device."""
    results: dict[int, dict] = {}
    if len(devices) <= 1:
        for s in seeds:
            results[s] = sweep.run_seed_and_summarize(s, devices[0])
        return results
    todo: queue.Queue[int] = queue.Queue()
    for s in seeds:
        todo.put(s)
    errors: list[BaseException] = []

    def worker(device: str) -> None:
        while True:
            try:
                s = todo.get_nowait()
            except queue.Empty:
                return
            try:
                results[s] = sweep.run_seed_and_summarize(s, device)
            except BaseException as e:  # a bug, not a failed seed: stop this worker, re-raise below
                errors.append(e)
                return

    threads = [threading.Thread(target=worker, args=(d,), name=f"kava-sweep-device-{d}", daemon=True)
               for d in devices[: len(seeds)]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


# --------------------------------------------------------------------- inside a job


def _preempt_signal() -> signal.Signals:
    """submitit's pre-emption/time-limit signal (``SIGUSR2`` unless ``SUBMITIT_PREEMPT_SIGNAL`` says)."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)


class ChildRunner:
    """A sweep runner for a job: like :func:`subprocess_runner`, but it keeps the running
    child so :meth:`stop` can hand it a stop signal, and the child ignores submitit's signal
    (SLURM signals every process of the job; the job itself decides what happens)."""

    def __init__(self):
        self.child: subprocess.Popen | None = None

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.child = None

    def __call__(self, argv: list[str], env: dict[str, str], log_path: Path) -> int:
        sig = _preempt_signal()
        with open(log_path, "ab") as log:
            child = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     preexec_fn=lambda: signal.signal(sig, signal.SIG_IGN))
        self.child = child
        try:
            # poll, not wait(): submitit's handler runs in this thread and must be able to wait
            # for the child itself (Popen.wait holds a lock the handler would need)
            while child.poll() is None:
                time.sleep(_POLL_S)
            return child.returncode
        finally:
            self.child = None

    def stop(self, grace_s: float) -> int | None:
        """Ask the running child to stop (``SIGUSR1``: training checkpoints, then exits) and
        wait up to ``grace_s`` before killing it; its exit code, or None when none ran."""
        child = self.child
        if child is None or child.poll() is not None:
            return None
        child.send_signal(TRAIN_STOP_SIGNAL)
        child.send_signal(signal.SIGCONT)  # a suspended step (scontrol suspend: SIGSTOP) must run to act on it
        try:
            return child.wait(grace_s)
        except subprocess.TimeoutExpired:
            child.kill()
            return child.wait()


def _update_status(seed_dir: Path, **fields) -> None:
    status = read_yaml_mapping(seed_dir / STATUS_FILE)
    status.update(fields)
    write_yaml_readable(seed_dir / STATUS_FILE, status)


class SeedJob(Checkpointable):
    """One seed of a sweep as a submitit job (train, then evaluate); requeued on pre-emption."""

    def __init__(self, sweep, seed: int, signal_delay_s: int):
        self.sweep = sweep
        self.seed = seed
        self.signal_delay_s = signal_delay_s

    @property
    def seed_dir(self) -> Path:
        return self.sweep.run_dir / f"seed_{self.seed}"

    def __call__(self) -> dict:
        old = read_yaml_mapping(self.seed_dir / STATUS_FILE)
        _update_status(self.seed_dir, job_state="running", host=socket.gethostname(),
                       requeues=int(old.get("requeues") or 0))
        result = self.sweep.run_seed_and_summarize(self.seed, None)
        _update_status(self.seed_dir, job_state="finished")
        return result

    def checkpoint(self, *args, **kwargs):
        """submitit's pre-emption/time-limit hook: stop the running step (training
        checkpoints), mark the seed requeued, and resubmit this same job."""
        rc = self.sweep.runner.stop(max(1.0, self.signal_delay_s - REQUEUE_MARGIN_S))
        old = read_yaml_mapping(self.seed_dir / STATUS_FILE)
        _update_status(self.seed_dir, job_state="requeued", requeues=int(old.get("requeues") or 0) + 1)
        print(f"kava: seed {self.seed}: stopped the running step (exit code {rc}); requeueing", flush=True)
        return super().checkpoint(*args, **kwargs)


# --------------------------------------------------------------------- submitting


def _mem(mem_gb: float) -> str:
    return f"{int(mem_gb)}G" if float(mem_gb).is_integer() else f"{int(mem_gb * 1024)}M"


def executor_parameters(launcher: str, cfg: LauncherConfig, job_name: str) -> dict:
    """``update_parameters`` keywords of submitit's SLURM (or local) executor for ``cfg``."""
    if launcher == "submitit-local":
        return {"name": job_name, "timeout_min": cfg.time_minutes(), "gpus_per_node": cfg.gpus_per_job,
                "signal_delay_s": cfg.signal_delay_s, "setup": list(cfg.setup)}
    params: dict = {"job_name": job_name, "time": cfg.time_minutes(), "nodes": 1, "ntasks_per_node": 1,
                    "cpus_per_task": cfg.cpus_per_job, "signal_delay_s": cfg.signal_delay_s,
                    "array_parallelism": cfg.array_parallelism}
    if cfg.gpus_per_job:
        params["gpus_per_node"] = cfg.gpus_per_job
    if cfg.mem_gb is not None:
        params["mem"] = _mem(cfg.mem_gb)
    for key in ("partition", "account", "constraint", "qos"):
        if getattr(cfg, key) is not None:
            params[key] = getattr(cfg, key)
    if cfg.setup:
        params["setup"] = list(cfg.setup)
    extra = {}
    for arg in cfg.sbatch_args:
        key, sep, value = arg[2:].partition("=")
        extra[key] = value if sep else True
    if extra:
        params["additional_parameters"] = extra
    return params


def make_executor(launcher: str, folder: Path, cfg: LauncherConfig, job_name: str):
    """submitit's SlurmExecutor (or LocalExecutor for ``submitit-local``), set up from ``cfg``."""
    cls = submitit.LocalExecutor if launcher == "submitit-local" else submitit.SlurmExecutor
    try:
        executor = cls(folder=folder, max_num_timeout=cfg.max_requeues)
        executor.update_parameters(**executor_parameters(launcher, cfg, job_name))
    except (ValueError, RuntimeError, NameError) as e:
        raise KavaError(f"cannot set up the {launcher} launcher: {e}") from None
    return executor


def job_alive(seed_dir: Path) -> bool | None:
    """Whether the seed's last submitted job is still queued or running (None: unknown)."""
    job = read_yaml_mapping(seed_dir / JOB_FILE)
    if not job.get("id"):
        return False
    state = read_yaml_mapping(seed_dir / STATUS_FILE).get("job_state")
    if state == "finished":
        return False
    if job.get("launcher") == "submitit-local":
        try:
            os.kill(int(job["id"]), 0)  # the id of a local job is its controller's pid
        except (ProcessLookupError, ValueError):
            return False
        except PermissionError:
            return True
        return True
    sched = scheduler_state(job)
    if sched is None:
        return None
    return sched in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING",
                     "REQUEUE_HOLD", "REQUEUE_FED")


def scheduler_state(job: dict) -> str | None:
    """SLURM's state of a recorded job (``sacct`` through submitit), or None if it cannot say."""
    try:
        info = submitit.SlurmJob(folder=job.get("folder", "."), job_id=str(job["id"])).get_info(mode="force")
    except Exception:  # an unreadable id, ...: the caller reports "unknown"
        return None
    state = str(info.get("State") or "").split()  # ("CANCELLED by 123"); {} when sacct failed or knows no such job
    return state[0] if state else None


def submit(sweep, seeds: Sequence[int], launcher: str, cfg: LauncherConfig, wait: bool) -> dict[int, dict]:
    """Submit one job per seed that is not done and not already queued or running (one
    job array); with ``wait``, wait for them and return their results like :func:`run_local`."""
    folder = sweep.run_dir / JOBS_DIR
    results: dict[int, dict] = {}
    todo: list[int] = []
    for s in seeds:
        seed_dir = sweep.run_dir / f"seed_{s}"
        seed_dir.mkdir(parents=True, exist_ok=True)
        if sweep.seed_complete(seed_dir):
            results[s] = sweep.run_seed(s, None)  # marks it done, says "skipped"
        elif (alive := job_alive(seed_dir)) is not False:
            job = read_yaml_mapping(seed_dir / JOB_FILE)
            why = "already queued or running" if alive else "the scheduler cannot say whether it still runs"
            sweep.progress(f"[{sweep.run_name}] seed {s}: {why} as job {job['id']}; not resubmitted"
                           + ("" if alive else f" (scancel it, or delete {seed_dir / JOB_FILE}, to resubmit)"))
            results[s] = {**read_yaml_mapping(seed_dir / STATUS_FILE), "seed": s, "action": "queued",
                          "job_id": str(job["id"]), "ran": []}
        else:
            _update_status(seed_dir, seed=s, job_state="queued")
            todo.append(s)
    if not todo:
        return results
    executor = make_executor(launcher, folder, cfg, f"kava-{sweep.run_name}")
    jobs_sweep = sweep.with_runner(ChildRunner())
    try:
        with executor.batch():
            jobs = [executor.submit(SeedJob(jobs_sweep, s, cfg.signal_delay_s)) for s in todo]
    except Exception as e:  # sbatch refused the array (bad partition, account, ...)
        for s in todo:
            _update_status(sweep.run_dir / f"seed_{s}", job_state=None)
        first = str(e).strip().splitlines()
        raise KavaError(f"submitting the jobs failed: {type(e).__name__}: {first[-1] if first else ''}") from None
    for s, job in zip(todo, jobs):
        atomic_write_yaml(sweep.run_dir / f"seed_{s}" / JOB_FILE, {
            "launcher": launcher, "id": str(job.job_id), "folder": str(folder),
            "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")})
        sweep.progress(f"[{sweep.run_name}] seed {s}: submitted as job {job.job_id} (log: {job.paths.stdout})")
        results[s] = {"seed": s, "action": "submitted", "job_id": str(job.job_id), "ran": [],
                      "train": "pending", "eval": "pending", "error": None}
    if wait:
        for s, job in zip(todo, jobs):
            try:
                results[s] = {**job.result(), "job_id": str(job.job_id)}
            except Exception as e:  # the job died outside kava's own error handling
                status = read_yaml_mapping(sweep.run_dir / f"seed_{s}" / STATUS_FILE)
                err = status.get("error") or f"job {job.job_id} failed: {type(e).__name__}: {e}"
                _update_status(sweep.run_dir / f"seed_{s}", job_state="finished", error=err)
                results[s] = {**status, "seed": s, "action": "failed", "error": err, "job_id": str(job.job_id),
                              "ran": []}
    return results



# --------------------------------------------------------------------- kava sweep --status


def _last_line(seed_dir: Path, width: int = 100) -> str:
    logs = [p for p in (seed_dir / "train.out", seed_dir / "eval.out") if p.is_file()]
    if not logs:
        return ""
    newest = max(logs, key=lambda p: p.stat().st_mtime)
    with open(newest, "rb") as f:
        f.seek(max(0, newest.stat().st_size - 8192))
        lines = [ln.strip() for ln in f.read().decode("utf-8", errors="replace").splitlines() if ln.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= width else line[: width - 3] + "..."


def seed_status(seed_dir: Path) -> dict:
    """``{seed, state, job_id, host, train, eval, requeues, error, last_line}``; state is one of
    done, failed, queued, running, requeued, pending (nothing running: the next sweep runs it)."""
    status = read_yaml_mapping(seed_dir / STATUS_FILE)
    job = read_yaml_mapping(seed_dir / JOB_FILE)
    train, evaluation = status.get("train", "pending"), status.get("eval", "pending")
    job_state = status.get("job_state")
    note = ""
    if evaluation == "done":
        state = "done"
    elif job.get("id") and job_state in ("queued", "running", "requeued"):
        alive = job_alive(seed_dir)
        state = job_state if alive is not False else "failed"
        if alive is None:
            note = "scheduler state unknown"
        elif alive is False:
            sched = scheduler_state(job) if job.get("launcher") == "slurm" else None
            note = f"the job ended without finishing{f' (SLURM: {sched})' if sched else ''}"
    elif "failed" in (train, evaluation):
        state = "failed"
    else:
        state = "pending"
    error = status.get("error")
    return {
        "seed": status.get("seed", seed_dir.name.removeprefix("seed_")),
        "state": state,
        "job_id": job.get("id"),
        "host": status.get("host"),
        "train": train,
        "eval": evaluation,
        "requeues": int(status.get("requeues") or 0),
        "error": str(error).splitlines()[0] if error else note or None,
        "last_line": _last_line(seed_dir),
    }


def run_status(run_dir: str | os.PathLike) -> list[dict]:
    """:func:`seed_status` of every ``seed_*`` folder of a run, in seed order."""
    run = Path(run_dir)
    if not run.is_dir():
        raise KavaError(f"run folder not found: {run}")
    dirs = [d for d in run.iterdir() if d.is_dir() and d.name.startswith("seed_")]
    if not dirs:
        raise KavaError(f"{run} has no seed_* folders; pass a run folder (OUTPUT_DIR/RUN_NAME) of kava sweep")

    def key(d: Path):
        tail = d.name.removeprefix("seed_")
        return (0, int(tail), "") if tail.isdigit() else (1, 0, tail)

    return [seed_status(d) for d in sorted(dirs, key=key)]


def format_status(rows: list[dict]) -> str:
    """A table of :func:`run_status` and a count per state."""
    head = ("seed", "state", "job", "host", "train", "eval", "last log line")
    table = [head] + [(str(r["seed"]), r["state"] + (f" ({r['requeues']}x requeued)" if r["requeues"] else ""),
                       r["job_id"] or "-", r["host"] or "-", r["train"], r["eval"], r["last_line"]) for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(len(head) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(t[:-1], widths)) + "  " + t[-1] for t in table]
    for r in rows:
        if r["state"] == "failed" and r["error"]:
            lines.append(f"seed {r['seed']}: {r['error']}")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines) + "\n"
