"""Run one config over several seeds, resiliently (what that costs: `kava.experiments.plan`).

:func:`run_sweep` lays out ``<output_dir>/<run-name>/seed_<s>/`` and, per seed, runs

* training:   ``python -m kava train --config CONFIG --output-dir SEEDDIR --seed S --no-progress [overrides]``
  (expected to produce ``SEEDDIR/checkpoint-final/`` and ``SEEDDIR/train_log.jsonl``), output
  appended to ``SEEDDIR/train.out``;
* evaluation: ``python -m kava evaluate --checkpoint SEEDDIR/checkpoint-final --datasets D1 D2
  --output-dir SEEDDIR --no-progress [eval_args]`` (expected to produce ``SEEDDIR/results_<D>.yaml``),
  output appended to ``SEEDDIR/eval.out``.

Each is a separate process, so a crash in one seed never takes the others down.

Resuming: the results files are the source of truth. A seed with a readable results file
for every requested dataset is skipped (its ``status.yaml`` is set to done); otherwise
training runs only if ``checkpoint-final/`` is missing (with ``--resume`` when an
interrupted training left ``checkpoint-<step>/`` folders, so it continues from the last
one) and evaluation runs only for the datasets whose results are missing or unreadable. So
re-running the same command retries exactly what is missing or failed.

``SEEDDIR/status.yaml``::

    seed: 42
    train: done | failed | pending
    eval: done | failed | pending
    error: null | "evaluation failed (exit code 1); log: .../eval.out\\n<last lines of the log>"
    device: "0" | null            # CUDA_VISIBLE_DEVICES it last ran with
    updated: 2026-01-01T12:00:00  # local time

``<run>/run.yaml``::

    run_name, config (path as given), config_sha256, model, train_data,
    seeds: [...], datasets: [...]   # union over every sweep of this run
    overrides: [...], eval_args: [...], created, updated

The run's ``config_sha256`` and ``overrides`` guard it: a sweep that would train more
seeds of the same run from a different config file content or different overrides is
refused (KavaError), so one run never mixes two recipes. Use another ``run_name``.

After every seed the run's summary files are rewritten (see
:func:`kava.experiments.aggregate.write_run_summary`).
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import os
import re
import shlex
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from kava.config import KavaConfig, LauncherConfig, load_config
from kava.data.eval_sets import SYNTHETIC_TEST, check_eval_dataset, default_source
from kava.data.train_sets import load_training_examples
from kava.errors import KavaError
from kava.evaluation.results import dataset_key, results_file
from kava.experiments import launch
from kava.experiments.aggregate import (
    read_results_file,
    read_yaml_mapping,
    write_run_summary,
    write_yaml_readable,
)
from kava.experiments.launch import LAUNCHERS, run_local, submit, subprocess_runner
from kava.experiments.progress import SweepDisplay
from kava.io import atomic_write_yaml, remove_stale_temporaries
from kava.locking import FolderLock

CHECKPOINT_DIR = "checkpoint-final"
TRAIN_LOG = "train.out"
EVAL_LOG = "eval.out"
STATUS_FILE = "status.yaml"
RUN_FILE = "run.yaml"
#: Lines of a failed process's log kept in ``status.yaml``'s ``error``.
ERROR_TAIL_LINES = 20

Runner = Callable[[list[str], dict[str, str], Path], int]


def train_command(config: str | os.PathLike, seed_dir: Path, seed: int, overrides: Sequence[str] = (),
                  resume: bool = False, progress: bool = False) -> list[str]:
    """(`progress`: the child draws its progress bar, which `kava.experiments.progress` shows.)"""
    return [sys.executable, "-m", "kava", "train", "--config", str(config), "--output-dir", str(seed_dir),
            "--seed", str(seed), *([] if progress else ["--no-progress"]), *(["--resume"] if resume else []),
            *overrides]


_STEP_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def last_step_checkpoint(seed_dir: Path) -> str | None:
    """Name of the latest ``checkpoint-<step>/`` an interrupted training left, if any."""
    try:
        found = [(int(m.group(1)), e.name) for e in os.scandir(seed_dir)
                 if (m := _STEP_CHECKPOINT_RE.match(e.name)) and e.is_dir()]
    except OSError:
        return None
    return max(found)[1] if found else None


def eval_command(seed_dir: Path, datasets: Sequence[str], eval_args: Sequence[str] = (),
                 progress: bool = False) -> list[str]:
    return [sys.executable, "-m", "kava", "evaluate", "--checkpoint", str(seed_dir / CHECKPOINT_DIR),
            "--datasets", *datasets, "--output-dir", str(seed_dir), *([] if progress else ["--no-progress"]),
            *eval_args]


# ------------------------------------------------------------------------ validation


def _now() -> str:
    return _dt.datetime.now().replace(microsecond=0).isoformat()


def validate_seeds(seeds: Iterable[Any]) -> list[int]:
    """Seeds as ints, in the order given; KavaError if empty, negative, not ints, or repeated."""
    if isinstance(seeds, (str, bytes)) or isinstance(seeds, int):
        seeds = [seeds]
    out: list[int] = []
    for s in seeds:
        if isinstance(s, bool):
            raise KavaError(f"seed {s!r} is not an integer")
        try:
            v = int(str(s).strip()) if not isinstance(s, int) else s
        except ValueError:
            raise KavaError(f"seed {s!r} is not an integer") from None
        if v < 0:
            raise KavaError(f"seed {v} is negative; use seeds >= 0")
        if v in out:
            raise KavaError(f"seed {v} is given twice; give each seed once")
        out.append(v)
    if not out:
        raise KavaError("no seeds given; pass at least one, e.g. --seeds 42 43 44")
    return out


def _validate_devices(devices: Any) -> list[str | None]:
    if devices is None:
        return [None]
    if isinstance(devices, str):
        devices = devices.split(",")
    elif isinstance(devices, int):
        devices = [devices]
    out: list[str] = []
    for d in devices:
        d = str(d).strip()
        if not d:
            continue
        if d in out:
            raise KavaError(f"device {d} is given twice; give each device once")
        out.append(d)
    return out or [None]


def _is_dataset_file(name: str) -> bool:
    return name.lower().endswith(".jsonl")



def _validate_datasets(datasets: Any, required: bool) -> list[str]:
    """Dataset names (``gsm8k``) or ``.jsonl`` files (made absolute: the sweep may be
    resumed from another folder)."""
    if datasets is None:
        datasets = []
    if isinstance(datasets, str):
        datasets = [datasets]
    out: list[str] = []
    keys: dict[str, str] = {}
    for d in datasets:
        d = str(d).strip()
        if d and _is_dataset_file(d):
            if not Path(d).is_file():
                raise KavaError(f"dataset file not found: {d}")
            d = str(Path(d).resolve())
        elif not d or "/" in d or "\\" in d or any(c.isspace() for c in d):
            raise KavaError(f"invalid dataset name {d!r} (give a dataset name such as gsm8k, or a .jsonl file)")
        key = dataset_key(d)
        if key in keys and keys[key] != d:
            raise KavaError(f"datasets {keys[key]} and {d} would share results_{key}.yaml; rename one")
        keys[key] = d
        if d not in out:
            out.append(d)
    if required and not out:
        raise KavaError("no datasets given; pass e.g. --datasets gsm8k gsm8k-hard svamp")
    return out


def _validate_run_name(name: str) -> str:
    name = str(name).strip()
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise KavaError(f"invalid run name {name!r}: use a plain folder name")
    return name


def read_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> tuple[KavaConfig, str]:
    """The config with the overrides, as `kava train` reads it (`kava.config.load_config`: an
    unknown key or a bad value is a KavaError here, before any seed runs), and the sha256 of
    the file's bytes."""
    cfg = load_config(path, overrides)
    return cfg, hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _eval_source(eval_args: Sequence[str]) -> str:
    """The evaluation sets' source `kava evaluate` will use with these arguments (its default:
    hub, or offline under HF_HUB_OFFLINE=1: kava.data.eval_sets.default_source)."""
    args = list(eval_args)
    if "--source" in args[:-1]:
        return args[args.index("--source") + 1]
    return default_source(None)


def check_before_training(cfg: KavaConfig | None, config: Path, datasets: Sequence[str],
                          eval_args: Sequence[str]) -> None:
    """Everything a seed's `kava train` and `kava evaluate` would refuse that can be checked
    before the first step (KavaError), beyond the config itself (`read_config`): training data
    read from disk (offline, local, synthetic; a hub set is checked when it loads), and each
    evaluation set's name (and an offline set's or a .jsonl file's content). cfg None: no training."""
    if cfg is not None and cfg.data.source != "hub":
        load_training_examples(cfg.data)
    source = _eval_source(eval_args)
    for name in datasets:
        if name != SYNTHETIC_TEST:
            check_eval_dataset(name, source)
        elif cfg is not None and cfg.data.source != "synthetic":
            raise KavaError(f"--datasets {SYNTHETIC_TEST} is the test split of the synthetic task, and {config} "
                            f"trains on {cfg.data.dataset}")


# ------------------------------------------------------------------------ the sweep


class _Sweep:
    def __init__(self, *, config: Path, run_dir: Path, run_name: str, datasets: list[str], train_only: bool,
                 eval_only: bool, overrides: list[str], eval_args: list[str], runner: Runner,
                 progress: Callable[[str], None]):
        self.config = config
        self.run_dir = run_dir
        self.run_name = run_name
        self.datasets = datasets
        self.train_only = train_only
        self.eval_only = eval_only
        self.overrides = overrides
        self.eval_args = eval_args
        self.runner = runner
        self.progress = progress
        self.display = None  # a SweepDisplay (kava.experiments.progress) when a local sweep shows progress bars
        self.summary_lock = threading.Lock()

    def __getstate__(self) -> dict:  # a submitit job carries the sweep to its node
        return {k: v for k, v in self.__dict__.items() if k != "summary_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.summary_lock = threading.Lock()

    def with_runner(self, runner: Runner) -> "_Sweep":
        other = copy.copy(self)
        other.runner = runner
        return other

    def seed_complete(self, seed_dir: Path) -> bool:
        """Whether the seed has nothing left to do (its checkpoint with --train-only, else
        a readable results file for every dataset)."""
        if self.train_only:
            return (seed_dir / CHECKPOINT_DIR).is_dir()
        return all(self._results_ok(seed_dir, d) for d in self.datasets)

    # -- helpers
    @property
    def stages_per_seed(self) -> int:
        return 1 if self.train_only or self.eval_only else 2

    def _say(self, seed: int, device: str | None, msg: str, stages: int = 0) -> None:
        """A progress line; `stages`: how many of the seed's stages this event ends (the display's bar)."""
        dev = f" [device {device}]" if device is not None else ""
        self.progress(f"[{self.run_name}] seed {seed}{dev}: {msg}")
        self._advance(stages)

    def _advance(self, stages: int) -> None:
        if self.display is not None:
            self.display.advance(stages)

    def _write_status(self, seed_dir: Path, status: dict) -> None:
        status["updated"] = _now()
        write_yaml_readable(seed_dir / STATUS_FILE, status)

    def _results_ok(self, seed_dir: Path, dataset: str) -> bool:
        path = results_file(seed_dir, dataset)
        if not path.is_file():
            return False
        try:
            read_results_file(path)
        except ValueError:
            return False
        return True

    def _run(self, what: str, argv: list[str], seed_dir: Path, log_name: str, device: str | None) -> str | None:
        """Run one step; None on success (exit code 0), else the error text for status.yaml."""
        log_path = seed_dir / log_name
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        with open(log_path, "a", encoding="utf-8") as log:
            dev = f" CUDA_VISIBLE_DEVICES={device}" if device is not None else ""
            log.write(f"\n===== {_now()} {what}:{dev} {shlex.join(argv)}\n")
        start = log_path.stat().st_size
        try:
            rc = self.runner(list(argv), env, log_path)
        except Exception as e:  # a runner that cannot start the process: record it, go on
            return f"{what} could not be run: {type(e).__name__}: {e}"
        if rc == 0:
            return None
        how = f"killed by signal {-rc}" if isinstance(rc, int) and rc < 0 else f"exit code {rc}"
        return f"{what} failed ({how}); log: {log_path}{_log_tail(log_path, start)}"

    # -- one seed
    def run_seed(self, seed: int, device: str | None) -> dict:
        seed_dir = self.run_dir / f"seed_{seed}"
        seed_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(seed_dir, owns=lambda name: name == STATUS_FILE)  # left by a killed sweep
        old = read_yaml_mapping(seed_dir / STATUS_FILE)
        status = {
            "seed": seed,
            "train": old.get("train", "pending"),
            "eval": old.get("eval", "pending"),
            "error": old.get("error"),
            "device": device,
        }
        status.update({k: v for k, v in old.items() if k not in status and k != "updated"})  # a job's job_state, ...
        ckpt = seed_dir / CHECKPOINT_DIR
        ran: list[str] = []

        def finish(action: str) -> dict:
            self._write_status(seed_dir, status)
            return {**status, "action": action, "ran": ran}

        # Already complete?
        if self.train_only:
            if ckpt.is_dir():
                status.update(train="done", error=None)
                self._say(seed, device, f"skipped: {CHECKPOINT_DIR} exists", stages=1)
                return finish("skipped")
            missing: list[str] = []
        else:
            missing = [d for d in self.datasets if not self._results_ok(seed_dir, d)]
            if not missing:
                status.update(train="done", eval="done", error=None)
                self._say(seed, device, "skipped: results exist for every dataset", stages=self.stages_per_seed)
                return finish("skipped")

        # Training (only when there is no checkpoint yet).
        if ckpt.is_dir():
            status["train"] = "done"
            self._advance(self.stages_per_seed - 1)  # (training is no stage of an --eval-only sweep)
        elif self.eval_only:
            status.update(eval="failed", error=(
                f"no checkpoint at {ckpt}; train this seed first (run the sweep without --eval-only)"))
            self._say(seed, device, f"FAILED: no {CHECKPOINT_DIR} to evaluate", stages=1)
            return finish("failed")
        else:
            status.update(train="pending", error=None)
            if not self.train_only:
                status["eval"] = "pending"
            self._write_status(seed_dir, status)
            step_ckpt = last_step_checkpoint(seed_dir)  # an interrupted training: continue it
            what = f"resuming training from {step_ckpt}" if step_ckpt else "training"
            self._say(seed, device, f"{what} (log: {seed_dir / TRAIN_LOG})")
            ran.append("train")
            err = self._run("training", train_command(self.config, seed_dir, seed, self.overrides,
                                                      resume=step_ckpt is not None, progress=self.display is not None),
                            seed_dir, TRAIN_LOG, device)
            if err is None and not ckpt.is_dir():
                err = f"training exited 0 but wrote no {ckpt}; see {seed_dir / TRAIN_LOG}"
            if err is not None:
                status.update(train="failed", error=err)
                self._say(seed, device, f"FAILED: {err.splitlines()[0]}", stages=self.stages_per_seed)
                return finish("failed")
            status["train"] = "done"
            self._advance(1)

        if self.train_only:
            status["error"] = None
            self._say(seed, device, "trained")  # (its stage was counted above)
            return finish("ran")

        # Evaluation of the datasets still missing.
        status.update(eval="pending", error=None)
        self._write_status(seed_dir, status)
        self._say(seed, device, f"evaluating {' '.join(missing)} (log: {seed_dir / EVAL_LOG})")
        ran.append("eval")
        err = self._run("evaluation",
                        eval_command(seed_dir, missing, self.eval_args, progress=self.display is not None),
                        seed_dir, EVAL_LOG, device)
        still = [d for d in missing if not self._results_ok(seed_dir, d)]
        if err is None and still:
            err = (f"evaluation exited 0 but wrote no readable results for {', '.join(still)}; "
                   f"see {seed_dir / EVAL_LOG}")
        elif err is not None and still != missing:
            written = ", ".join(d for d in missing if d not in still)
            err += f"\n(results written for {written}; missing: {', '.join(still)})"
        if err is not None:
            status.update(eval="failed", error=err)
            self._say(seed, device, f"FAILED: {err.splitlines()[0]}", stages=1)
            return finish("failed")
        status.update(eval="done", error=None)
        self._say(seed, device, "done", stages=1)
        return finish("ran")

    def run_seed_and_summarize(self, seed: int, device: str | None) -> dict:
        result = self.run_seed(seed, device)
        with self.summary_lock:
            write_run_summary(self.run_dir)
        return result


def _log_tail(log_path: Path, start: int, n: int = ERROR_TAIL_LINES, max_chars: int = 4000) -> str:
    """The last ``n`` non-empty lines written to ``log_path`` after byte ``start``."""
    try:
        with open(log_path, "rb") as f:
            f.seek(start)
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()][-n:]
    tail = "\n".join(lines)[-max_chars:]
    return f"\nlast lines of the log:\n{tail}" if tail else "\n(the log is empty)"


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _update_run_yaml(run_dir: Path, *, run_name: str, config: Path, sha: str | None, cfg: KavaConfig | None,
                     seeds: list[int],
                     datasets: list[str], overrides: list[str], eval_args: list[str], check: bool) -> dict:
    path = run_dir / RUN_FILE
    old = read_yaml_mapping(path)
    if check and old:
        if old.get("config_sha256") and sha and old["config_sha256"] != sha:
            raise KavaError(
                f"{run_dir} was started from a different config (its run.yaml records {old.get('config')} with "
                f"other content than {config}); mixing them would mix two recipes in one table. "
                f"Pass another run name, or delete {path} if the change does not matter")
        if "overrides" in old and list(old.get("overrides") or []) != list(overrides):
            raise KavaError(
                f"{run_dir} was started with overrides {list(old.get('overrides') or [])}, not {list(overrides)}; "
                f"pass the same overrides, another run name, or delete {path}")
    model = cfg.model.name if cfg is not None else None
    data = cfg.data.dataset if cfg is not None else None
    all_seeds = list(old.get("seeds") or []) if isinstance(old.get("seeds"), list) else []
    all_seeds += [s for s in seeds if s not in all_seeds]
    all_ds = list(old.get("datasets") or []) if isinstance(old.get("datasets"), list) else []
    all_ds += [d for d in datasets if d not in all_ds]
    meta = {
        "run_name": run_name,
        "config": str(config) if check or not old.get("config") else old["config"],
        "config_sha256": sha or old.get("config_sha256"),
        "model": str(model) if model else old.get("model", "?"),
        "train_data": str(data) if data else old.get("train_data", "?"),
        "seeds": all_seeds,
        "datasets": all_ds,
        "overrides": list(overrides) if check or "overrides" not in old else old["overrides"],
        "eval_args": list(eval_args),
        "created": old.get("created", _now()),
        "updated": _now(),
    }
    atomic_write_yaml(path, meta)
    return meta


def _check_modes(train_only: bool, eval_only: bool, launcher: str, devices) -> None:
    if train_only and eval_only:
        raise KavaError("--train-only and --eval-only exclude each other")
    if launcher not in LAUNCHERS:
        raise KavaError(f"unknown launcher {launcher!r}; choose one of {', '.join(LAUNCHERS)}")
    if launcher != "local" and devices is not None:
        raise KavaError("--devices is for --launcher local; a cluster job gets its GPUs from --gpus-per-job")


def run_sweep(
    config: str | os.PathLike,
    seeds: Iterable[int],
    output_dir: str | os.PathLike,
    datasets: Iterable[str] | None,
    devices: Iterable[str] | str | None = None,
    train_only: bool = False,
    eval_only: bool = False,
    run_name: str | None = None,
    overrides: Sequence[str] = (),
    eval_args: Sequence[str] = (),
    runner: Runner | None = None,
    progress: Callable[[str], None] | None = None,
    launcher: str = "local",
    launcher_config: LauncherConfig | None = None,
    wait: bool = False,
    show_progress: bool = False,
) -> dict:
    """Train and evaluate ``config`` once per seed under ``output_dir/<run_name>/seed_<s>/``.

    ``devices``: e.g. ``["0", "1"]`` (or ``"0,1"``) runs seeds in parallel, one process
    per device at a time, each with ``CUDA_VISIBLE_DEVICES`` set to its device; with one
    device seeds run one after another on it; with none, one after another with the
    environment untouched. ``runner(argv, env, log_path) -> exit code`` replaces the
    subprocess call (tests). ``progress`` receives one-line progress messages (default:
    stderr). ``show_progress`` (local launcher, default runner and messages): progress bars
    on stderr, the sweep's over its stages and the running child's own under it
    (:class:`kava.experiments.progress.SweepDisplay`).

    ``launcher``: ``local`` (this process runs the seeds), ``slurm`` or ``submitit-local``
    (one submitit job per seed, set up from ``launcher_config``; see
    :mod:`kava.experiments.launch`). Submitted seeds have action ``submitted`` (or
    ``queued``: a job from an earlier sweep is still queued or running); with ``wait`` the
    jobs are waited for and their seeds end as ``ran`` or ``failed`` as in a local sweep.

    Returns ``{"run_name", "run_dir", "seeds": {seed: {seed, train, eval, error, device,
    action ("skipped" | "ran" | "failed" | "submitted" | "queued"), ran ([] / ["train"] /
    ["train", "eval"]), job_id (jobs only)}}, "done", "skipped", "failed", "submitted"
    (lists of seeds), "n_failed", "summary"}``; the CLI
    should exit non-zero when ``n_failed`` > 0. Raises KavaError for user mistakes
    (seed given twice, missing config, both --train-only and --eval-only, ...).
    """
    _check_modes(train_only, eval_only, launcher, devices)
    seed_list = validate_seeds(seeds)
    ds_list = _validate_datasets(datasets, required=not train_only)
    device_list = _validate_devices(devices)
    overrides = [str(o) for o in (overrides or ())]
    eval_args = [str(a) for a in (eval_args or ())]
    config = Path(config)
    name = _validate_run_name(run_name if run_name is not None else config.stem)

    if eval_only:
        try:
            cfg, sha = read_config(config, overrides)
        except KavaError:
            cfg, sha = None, None  # the config is not needed to evaluate existing checkpoints
    else:
        cfg, sha = read_config(config, overrides)
        config = config.resolve()
    check_before_training(None if eval_only else cfg, config, ds_list, eval_args)

    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise KavaError(f"output directory {out} is a file")
    run_dir = (out / name).resolve()
    if eval_only and not run_dir.is_dir():
        raise KavaError(f"--eval-only: there is no run {run_dir} to evaluate; train it first (without --eval-only)")
    run_dir.mkdir(parents=True, exist_ok=True)
    # One sweep per run folder at a time (kava.locking); released however this process ends.
    with FolderLock(run_dir, "kava sweep"):
        _update_run_yaml(run_dir, run_name=name, config=config, sha=sha, cfg=cfg, seeds=seed_list,
                         datasets=ds_list, overrides=overrides, eval_args=eval_args, check=not eval_only)

        sweep = _Sweep(config=config, run_dir=run_dir, run_name=name, datasets=ds_list, train_only=train_only,
                       eval_only=eval_only, overrides=overrides, eval_args=eval_args,
                       runner=runner or subprocess_runner, progress=progress or _stderr)

        # Progress bars replace the default runner and messages (a given runner or progress is kept).
        if launcher == "local" and show_progress and progress is None and sweep.runner is launch.subprocess_runner:
            sweep.display = SweepDisplay(name, len(seed_list) * sweep.stages_per_seed)
            sweep.progress, sweep.runner = sweep.display.message, sweep.display.runner
            try:
                results = run_local(sweep, seed_list, device_list)
            finally:
                sweep.display.close()
        elif launcher == "local":
            results = run_local(sweep, seed_list, device_list)
        else:
            results = submit(sweep, seed_list, launcher, launcher_config or LauncherConfig(), wait)

        with sweep.summary_lock:
            summary = write_run_summary(run_dir)
        return _sweep_result(name, run_dir, {s: results[s] for s in seed_list}, summary)


def _sweep_result(name: str, run_dir: Path, seeds: dict[int, dict], summary) -> dict:
    """`run_sweep`'s answer: every seed's result (in the order given) and the seeds by action."""
    failed = [s for s, r in seeds.items() if r["action"] == "failed"]
    return {
        "run_name": name,
        "run_dir": str(run_dir),
        "seeds": seeds,
        "done": [s for s, r in seeds.items() if r["action"] == "ran"],
        "skipped": [s for s, r in seeds.items() if r["action"] == "skipped"],
        "failed": failed,
        "submitted": [s for s, r in seeds.items() if r["action"] in ("submitted", "queued")],
        "n_failed": len(failed),
        "summary": summary,
    }
