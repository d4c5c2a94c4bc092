"""What `kava train --resume` continues from, and what a resume may change.

A resume continues from the checkpoint of the highest step in the output folder: a
`checkpoint-<step>/` of an interrupted run, or `checkpoint-final/` of a finished one (which
holds the optimizer state too, so a finished run can be extended). The config given to the
resumed run is compared key by key with the checkpoint's `kava_config.yaml`:

- the schedule length (`train.max_steps`, `train.epochs`) may change: the learning-rate
  schedule is recomputed for the new length, as the HF Trainer and litgpt do when a run is
  resumed with more steps (the rate at step s is what a run planned with the new length
  would have at s); a finished run resumed with more steps is extended;
- the learning rate (`train.lr`, `train.lr_scheduler`, `train.warmup_ratio`) may change:
  a new schedule starts at the checkpoint's step, warm-up and decay over the steps left,
  peaking at the new `train.lr` (the optimizer's moments are kept);
- settings that change neither the model, the data nor the arithmetic of a step may change
  (`BOOKKEEPING`: where and how often to log, save and validate, the guard's thresholds,
  the micro-batch that splits the same global batch, the cluster options);
- anything else (the model, LoRA, latents, prompt, data, losses, curriculum, seed, batch,
  optimizer) is refused in one line naming the keys: the run would mix two recipes.

Every change is recorded: a `{"event": "resume", ...}` record in `train_log.jsonl`, the
`resumes` list in every later checkpoint's `trainer_state.json`, and a line on stderr.
docs/reliability.md describes it for users.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kava.config import KavaConfig, config_to_dict
from kava.errors import KavaError
from kava.training.checkpoint import (
    read_checkpoint_config,
    read_trainer_state,
    step_checkpoints,
)
from kava.training.state import STATE_JSON

FINAL = "checkpoint-final"
#: Keys (or sections, ending in ".") a resume may change freely.
BOOKKEEPING = (
    "output_dir", "run_name", "launcher.", "model.cache_dir", "model.gradient_checkpointing",
    "train.log_every", "train.save_every", "train.keep_last", "train.loggers", "train.eval_every",
    "train.eval_batch_size", "train.micro_batch_size", "train.grad_clip", "train.max_skipped_in_a_row",
    "train.loss_spike_factor", "train.loss_spike_window",
)
LENGTH = ("train.max_steps", "train.epochs")
SCHEDULE = ("train.lr", "train.lr_scheduler", "train.warmup_ratio")
Resume = bool | Literal["auto"]


@dataclass
class ResumePoint:
    path: Path
    step: int
    state: dict  # the checkpoint's trainer_state.json
    changed: dict[str, list] = field(default_factory=dict)  # key -> [old, new]
    complete: bool = False  # a finished run that this config does not extend

    @property
    def new_length(self) -> bool:
        return any(k in self.changed for k in LENGTH)

    @property
    def new_schedule(self) -> bool:
        return any(k in self.changed for k in SCHEDULE)

    @property
    def schedule_start(self) -> int:
        """The step at which the schedule the run continues with began."""
        return self.step if self.new_schedule else int(self.state.get("schedule_start", 0))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(old: KavaConfig, new: KavaConfig) -> dict[str, list]:
    """Every key whose value differs: {key: [old, new]}."""
    a, b = _flat(config_to_dict(old)), _flat(config_to_dict(new))
    return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _allowed(key: str) -> bool:
    return key in LENGTH or key in SCHEDULE or any(key == p or (p.endswith(".") and key.startswith(p))
                                                   for p in BOOKKEEPING)


def check_changes(changed: dict[str, list], checkpoint: Path) -> None:
    """KavaError naming every key a resume may not change."""
    refused = [k for k in changed if not _allowed(k)]
    if refused:
        what = ", ".join(f"{k} ({changed[k][0]!r} -> {changed[k][1]!r})" for k in refused)
        raise KavaError(
            f"--resume cannot change {what}: {checkpoint} was trained with the old value(s), and one run would mix two "
            "recipes. A resume may change only the schedule length (train.max_steps, train.epochs), the learning "
            "rate (train.lr, train.lr_scheduler, train.warmup_ratio) and bookkeeping (logging, saving, validation "
            "frequency); put the old value(s) back, or start a new run in another --output-dir")


def no_checkpoint(out_dir: Path) -> KavaError | None:
    """The error of `--resume` in a folder without a checkpoint to continue (None if it has one)."""
    if step_checkpoints(out_dir) or (out_dir / FINAL).is_dir():
        return None
    what = "does not exist" if not out_dir.exists() else "holds no checkpoint-<step>/ or checkpoint-final/"
    return KavaError(f"--resume: no valid checkpoint found in {out_dir} (the folder {what}); check --output-dir, "
                     "or use --resume-if-exists to start a new run there when it has none")


def find_resume_point(out_dir: Path, cfg: KavaConfig, resume: Resume) -> ResumePoint | None:
    """The checkpoint this run continues from (None: start from step 0); KavaError for a folder
    this run may not start or continue in, and for a change a resume may not make."""
    final = out_dir / FINAL
    steps = step_checkpoints(out_dir)
    if not resume:
        if final.is_dir():
            raise KavaError(f"{out_dir} already holds a finished run; choose another --output-dir, or pass --resume "
                            "with a larger train.max_steps to train it longer")
        if steps:
            raise KavaError(f"{out_dir} holds checkpoints of an earlier run; pass --resume to continue it or choose "
                            "another --output-dir")
        return None
    points = list(steps)
    final_step = None
    if final.is_dir():
        final_step = int(read_trainer_state(final).get("step", 0))
        if (final / STATE_JSON).is_file() or not points:
            points.append((final_step, final))
    if not points:
        if resume == "auto":
            return None
        raise no_checkpoint(out_dir)
    step, path = max(points, key=lambda p: (p[0], p[1] == final))
    changed = config_changes(read_checkpoint_config(path), cfg)
    check_changes(changed, path)
    point = ResumePoint(path, step, read_trainer_state(path), changed)
    if final_step is not None and final_step >= step and not point.new_length:
        if point.new_schedule:
            keys = ", ".join(k for k in SCHEDULE if k in changed)
            raise KavaError(f"{final} is a finished run ({final_step} steps): a new {keys} needs more steps to "
                            "take effect; raise train.max_steps (or train.epochs) to extend it")
        point.complete = True
    return point


def check_length(point: ResumePoint, total: int) -> None:
    """The run's new length must leave steps to train after the checkpoint."""
    if total < point.step or (point.path.name == FINAL and total == point.step):
        keys = ", ".join(f"{k}={point.changed[k][1]}" for k in LENGTH if k in point.changed) or "this config"
        raise KavaError(f"{keys} gives {total} steps, but {point.path} is at step {point.step}: a resume continues "
                        "a run and cannot end it before its checkpoint; ask for more steps")


def describe(point: ResumePoint, cfg: KavaConfig, total: int) -> str:
    """One line: what changed at the resume, and what the learning rate does."""
    changes = "; ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in point.changed.items())
    if point.new_schedule:
        warmup = int(cfg.train.warmup_ratio * (total - point.step))
        changes += (f" (a new {cfg.train.lr_scheduler} schedule from step {point.step} to {total}, peak "
                    f"{cfg.train.lr:g}, {warmup} warm-up steps)")
    elif point.new_length:
        changes += f" (the learning-rate schedule recomputed for {total} steps)"
    return changes


def resume_record(point: ResumePoint, cfg: KavaConfig, total: int) -> dict:
    """The `resumes` entry of trainer_state.json and the train_log.jsonl event for this resume."""
    return {"step": point.step, "checkpoint": point.path.name, "changed": point.changed,
            "note": describe(point, cfg, total)}


def restore_schedule(optimizer, scheduler, cfg: KavaConfig, point: ResumePoint, total: int, make_scheduler):
    """The scheduler the resumed run goes on with (after the checkpoint's states are loaded).

    No change: the loaded one. A new length: the loaded one, whose lambda already has the new
    length; the rate of the next step is recomputed from it. A new learning rate: a new
    scheduler over the steps left, from the new `train.lr`."""
    inner = getattr(optimizer, "optimizer", optimizer)
    if point.new_schedule:
        for group in inner.param_groups:
            group["lr"] = group["initial_lr"] = cfg.train.lr
        return make_scheduler(inner, cfg, total - point.step)
    if point.new_length:
        lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
        for group, lr in zip(inner.param_groups, lrs):
            group["lr"] = lr
        scheduler._last_lr = lrs
    return scheduler
