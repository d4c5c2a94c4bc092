"""The training loop (accelerate): AdamW, warm-up + cosine schedule, gradient accumulation
to the config's global batch, clipping, seeding, JSONL logging, atomic checkpoints, resume.

Data order is a seeded permutation per epoch; optimizer step `s` always consumes the same
`global_batch_size` examples, split evenly across processes and then into micro-batches,
so a run on N processes sees the same batches as a run on one, and a resumed run
continues exactly where the interrupted one stopped (optimizer, scheduler, RNG restored;
on a CPU the losses and weights are bit-identical to an uninterrupted run's, and the log
holds each step once). A stop signal ends the run at a step boundary with a checkpoint
(`kava.training.signals`); a step with a non-finite loss or gradient is skipped
(`kava.training.guard`). docs/reliability.md lists what is promised and how it is tested.

`train` reads like a torchtune recipe: `_setup` (model, data, optimizer, resume, trackers),
`_fit` (one `_train_step` per optimizer step, then `_log_step`, `_validate` and
`_checkpoint_if_due`) and `_save_final`; the run's pieces travel in one `_Run`. The data's
side (encoding, order, micro-batches, token counts) is `kava.data.batches`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import random
import signal
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_scheduler

from kava.config import KavaConfig, check_distillation_start, config_to_dict, shares_question
from kava.data.batches import batch_token_count, encode_dataset, make_batch, micro_batches, step_indices, step_tokens
from kava.data.sequences import Encoded, SequenceBuilder
from kava.data.synthetic import synthetic_vocabulary, task_config
from kava.data.train_sets import load_training_examples
from kava.errors import KavaError
from kava.failpoints import failpoint
from kava.io import append_jsonl, atomic_write_text, atomic_write_yaml, read_jsonl
from kava.locking import FolderLock
from kava.model.capture import enable_capture
from kava.model.kava_model import build_kava_model, trainable_parameters
from kava.training.checkpoint import (
    load_resume_state,
    load_trainable_state,
    prune_checkpoints,
    recover_output_dir,
    save_checkpoint,
)
from kava.training.curriculum import reset_optimizer_state, training_schedule
from kava.training.guard import StepGuard, release_skipped_step
from kava.training.hardware import check_trainable_precision, make_accelerator
from kava.training.latent_warmup import keep_latent_gradients
from kava.training.objective import KavaObjective
from kava.training.plots import plot_training_losses
from kava.training.report import run_header, run_summary
from kava.training.resume import (
    Resume,
    check_length,
    describe,
    find_resume_point,
    no_checkpoint,
    restore_schedule,
    resume_record,
)
from kava.training.signals import PREEMPTION_SIGNALS, Preempted, graceful_stop
from kava.training.validation import (
    BestCheckpoint,
    check_validation_split,
    remove_stale_best,
    validation_accuracy,
    validation_examples,
)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def word_vocabulary_for(cfg: KavaConfig) -> list[str] | None:
    """Words of the synthetic task, for the tiny word-level tokenizer."""
    if cfg.model.tiny.tokenizer != "word":
        return None
    return synthetic_vocabulary(task_config(cfg.data.synthetic), cfg.data.synthetic.cot_format)


@dataclass
class Schedule:
    steps_per_epoch: int
    total_steps: int
    accumulation: int


def plan_schedule(cfg: KavaConfig, num_examples: int, world_size: int) -> Schedule:
    t = cfg.train
    per_step = t.micro_batch_size * world_size
    if t.global_batch_size % per_step:
        raise KavaError(
            f"train.global_batch_size ({t.global_batch_size}) must be a multiple of micro_batch_size × processes "
            f"({t.micro_batch_size} × {world_size})"
        )
    spe = num_examples // t.global_batch_size
    if spe == 0:
        raise KavaError(
            f"the training set has {num_examples} usable examples, fewer than train.global_batch_size "
            f"({t.global_batch_size}); lower the batch size or add data"
        )
    total = t.max_steps if t.max_steps is not None else max(1, math.ceil(t.epochs * spe))
    return Schedule(spe, total, t.global_batch_size // per_step)


def forward_backward(objective, batch: dict, backward, no_sync=None) -> dict:
    """One micro-batch: the objective's losses, and `backward(loss)` on their sum.

    KaVa runs in two phases (`KavaObjective.two_phase`): the teacher's forward and the
    backward of its CE, then the student's forward and the backward of the rest. The
    gradients are those of one backward of the sum (the student only sees the teacher's
    detached targets), but the teacher's activations are freed before the student's are
    made, so the peak memory is that of the larger pass, not of both. `no_sync()` (DDP:
    `accelerator.no_sync(objective)`) wraps the first phase, so gradients are reduced once.
    """
    inner = getattr(objective, "module", objective)
    if not getattr(inner, "two_phase", lambda: False)():
        losses = objective(batch)
        backward(losses["loss"])
        return losses
    with no_sync() if no_sync is not None else contextlib.nullcontext():
        first = objective(batch, phase="teacher")
        if "loss" in first:
            backward(first["loss"])
    teacher = first.pop("teacher")
    losses = objective(batch, phase="student", teacher=teacher)
    backward(losses["loss"])
    losses = {**first, **losses}
    losses["loss"] = losses["loss"].detach() + (first["loss"].detach() if "loss" in first else 0)
    return losses


def _make_scheduler(optimizer, cfg: KavaConfig, total: int):
    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.train.lr_scheduler]
    return get_scheduler(name, optimizer, num_warmup_steps=int(cfg.train.warmup_ratio * total),
                         num_training_steps=total)


def _trackers(cfg: KavaConfig):
    names = [x for x in cfg.train.loggers if x != "jsonl"]
    for name, module in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
        if name in names:
            if importlib.util.find_spec(module) is None:
                raise KavaError(f"train.loggers asks for {name} but it is not installed: pip install {module}")
    return names


def tracker_init_kwargs(trackers: list[str], start: int, wandb_id: str) -> dict:
    """A resumed run continues its tracker runs from the checkpoint's step, with no step twice:
    TensorBoard hides the interrupted run's events from step `start + 1` on (`purge_step`);
    W&B reopens the same run (`id`, `resume="allow"`) and ignores steps it already holds."""
    kwargs = {}
    if "tensorboard" in trackers and start:
        kwargs["tensorboard"] = {"purge_step": start + 1}
    if "wandb" in trackers:
        kwargs["wandb"] = {"id": wandb_id, "resume": "allow"}
    return kwargs


def tracker_config(cfg: KavaConfig) -> dict:
    """The config as flat `section.key: value` pairs of plain types (TensorBoard's hparams
    refuse lists, None and nested sections)."""
    out = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = value if isinstance(value, (bool, int, float, str)) else str(value)

    walk("", config_to_dict(cfg))
    return out


def _truncate_log(log_path: Path, step: int) -> None:
    """Keep the records of steps up to `step`: the resumed run writes the later ones again."""
    try:  # (a resume event at `step` is this resume's to write again)
        kept = [r for r in read_jsonl(log_path) if r.get("step", 0) < step
                or (r.get("step", 0) == step and r.get("event") != "resume")]
    except (ValueError, UnicodeDecodeError) as err:
        raise KavaError(f"{log_path} is corrupt ({type(err).__name__}); move it away and resume again") from None
    atomic_write_text(log_path, "".join(json.dumps(r) + "\n" for r in kept))


def train(cfg: KavaConfig, resume: Resume = False, show_progress: bool = True,
          stop_signals: Sequence[str | int] = PREEMPTION_SIGNALS) -> Path:
    """Train; returns the path of checkpoint-final.

    The run holds its output folder's lock (`kava.locking`) until it returns. A signal in
    `stop_signals` ends it at the next step boundary: it writes `checkpoint-<step>` and
    raises `Preempted` (`kava.training.signals`); `resume=True` continues from there.
    resume: True continues the run in cfg.output_dir from its latest checkpoint (an error if it
    has none), "auto" does so when there is one and starts a new run otherwise
    (`kava.training.resume` says what a resume may change).
    """
    if resume not in (False, True, "auto"):
        raise ValueError(f"resume must be False, True or 'auto', not {resume!r}")
    check_distillation_start(cfg)
    if resume is True and (err := no_checkpoint(Path(cfg.output_dir))):
        raise err  # before the data loads and the lock creates the folder
    trackers = _trackers(cfg)
    seed_everything(cfg.seed)
    train_rows, val_rows = load_training_examples(cfg.data)
    accelerator = make_accelerator(cfg, log_with=trackers or None, project_dir=str(cfg.output_dir))
    lock = FolderLock(cfg.output_dir, "kava train") if accelerator.is_main_process else contextlib.nullcontext()
    with lock, graceful_stop(stop_signals) as stop:
        return _train(cfg, accelerator, trackers, train_rows, val_rows, resume, show_progress, stop)


@dataclass
class _Run:
    """What a training run holds from its setup to its final checkpoint (the attributes of a
    torchtune recipe): `_setup` makes it, `_fit` runs the steps, `_save_final` ends it."""

    cfg: KavaConfig
    accelerator: Any
    trackers: list[str]
    log: Callable[..., None]
    model: Any
    tok: Any
    builder: SequenceBuilder
    data: list[Encoded]
    val_data: list[Encoded]
    val_examples: list
    sched: Schedule
    curriculum: Any  # a curriculum or iCoT's schedule (kava.training.curriculum), or None
    objective: Any = None
    params: list = field(default_factory=list)
    optimizer: Any = None
    scheduler: Any = None
    start: int = 0  # the first step this process runs (the checkpoint's step when resumed)
    state: dict = field(default_factory=dict)  # trainer_state.json of the next checkpoint
    guard: StepGuard | None = None
    last_good: Path | None = None  # the latest checkpoint written by a periodic save (or resumed from)
    best: BestCheckpoint | None = None

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.output_dir)

    @property
    def log_path(self) -> Path:
        return self.out_dir / "train_log.jsonl"


def _train(cfg: KavaConfig, accelerator, trackers, train_rows, val_rows, resume: Resume, show_progress: bool,
           stop) -> Path:
    check_validation_split(cfg, val_rows)
    log = (lambda *a: print(*a, file=sys.stderr)) if accelerator.is_main_process else (lambda *a: None)
    out_dir = Path(cfg.output_dir)
    final = out_dir / "checkpoint-final"
    if accelerator.is_main_process:
        recover_output_dir(out_dir)
    accelerator.wait_for_everyone()
    point = find_resume_point(out_dir, cfg, resume)
    if point is not None and point.complete:
        log(f"kava: {final} exists; the run is complete, nothing to resume")
        return final
    run = _setup(cfg, accelerator, trackers, log, train_rows, val_rows, point)
    began = time.perf_counter()
    try:
        _fit(run, show_progress, stop)
    finally:
        if trackers:
            accelerator.end_training()
    accelerator.wait_for_everyone()
    if run.is_main:
        _save_final(run, final, time.perf_counter() - began)
    return final


# ----- setup ------------------------------------------------------------------------------------


def _setup(cfg: KavaConfig, accelerator, trackers: list[str], log, train_rows, val_rows, point) -> _Run:
    """The model, the encoded data, the schedule, the optimizer; resumed from `point` when given;
    the output folder, the trackers and the run header."""
    model, tok, builder = build_kava_model(cfg, accelerator.device, word_vocabulary=word_vocabulary_for(cfg))
    data, dropped = encode_dataset(train_rows, builder, cfg)
    log(f"kava: {len(data)} training examples ({dropped} dropped as longer than data.max_length={cfg.data.max_length})")
    val_data = encode_dataset(val_rows, builder, cfg)[0][: cfg.train.eval_max_examples] if cfg.train.eval_every else []
    val_examples = validation_examples(val_rows, cfg.train.eval_max_examples) if cfg.train.eval_every else []
    if not data:
        raise KavaError(f"every training example is longer than data.max_length={cfg.data.max_length}; raise it")
    if cfg.train.method == "kava" and cfg.kava.compression in ("rkv", "attention"):
        enable_capture(model.backbone)
    sched = plan_schedule(cfg, len(data), accelerator.num_processes)
    if point is not None:
        check_length(point, sched.total_steps)
    curriculum = training_schedule(cfg, sched.steps_per_epoch, sched.total_steps, data,  # a curriculum or iCoT
                                   lambda s: step_indices(s, len(data), cfg, sched.steps_per_epoch))
    run = _Run(cfg, accelerator, trackers, log, model, tok, builder, data, val_data, val_examples, sched, curriculum)
    _make_optimizer(run, point)
    saved = _resume(run, point) if point is not None else _start_fresh(run)
    _start_tracking(run, point, saved)
    return run


def _make_optimizer(run: _Run, point) -> None:
    """The objective, AdamW over the trainable weights and the LR schedule (the part of it left
    after `point`'s schedule start), prepared by accelerate."""
    cfg = run.cfg
    objective = KavaObjective(run.model, cfg)
    run.params = trainable_parameters(run.model)
    check_trainable_precision(run.params, cfg)
    optimizer = torch.optim.AdamW(run.params, lr=cfg.train.lr, betas=cfg.train.adam_betas,
                                  weight_decay=cfg.train.weight_decay)
    run.scheduler = _make_scheduler(optimizer, cfg,
                                    run.sched.total_steps - int(point.state.get("schedule_start", 0) if point else 0))
    run.objective, run.optimizer = run.accelerator.prepare(objective, optimizer)


def _resume(run: _Run, point) -> dict:
    """The weights, optimizer, scheduler and RNG of checkpoint `point`; the log cut back to its
    step and the resume's changes recorded. Returns its saved trainer state."""
    cfg, total = run.cfg, run.sched.total_steps
    load_trainable_state(run.model, point.path)
    saved = load_resume_state(point.path, run.optimizer, run.scheduler)
    if run.curriculum is not None:
        run.curriculum.check_resume(saved)
    run.start = saved["step"]
    run.scheduler = restore_schedule(run.optimizer, run.scheduler, cfg, point, total, _make_scheduler)
    if run.is_main and run.log_path.is_file():
        _truncate_log(run.log_path, run.start)
    changed = f"; changed: {describe(point, cfg, total)}" if point.changed else ""
    run.log(f"kava: resuming from {point.path} (step {run.start}/{total}){changed}")
    if point.changed:
        saved["resumes"] = [*saved.get("resumes", []), resume_record(point, cfg, total)]
        if run.is_main:
            append_jsonl(run.log_path, {"step": run.start, "event": "resume", **saved["resumes"][-1]})
    run.last_good = point.path
    return saved


def _start_fresh(run: _Run) -> dict:
    """A new run's folder: no log, no checkpoint-best from an earlier attempt."""
    if run.is_main:
        run.out_dir.mkdir(parents=True, exist_ok=True)
        if run.log_path.exists():
            run.log_path.unlink()
        remove_stale_best(run.out_dir, run.log)
    return {}


def _start_tracking(run: _Run, point, saved: dict) -> None:
    """config.yaml, the trackers, the step guard, the trainer state and the run header."""
    cfg, accelerator, sched = run.cfg, run.accelerator, run.sched
    if run.is_main:
        atomic_write_yaml(run.out_dir / "config.yaml", config_to_dict(cfg))
    wandb_id = saved.get("wandb_run_id") or uuid.uuid4().hex[:12]
    if run.trackers:
        accelerator.init_trackers(cfg.run_name, config=tracker_config(cfg),
                                  init_kwargs=tracker_init_kwargs(run.trackers, run.start, wandb_id))
    t = cfg.train
    run.guard = StepGuard(t.max_skipped_in_a_row, t.loss_spike_factor, t.loss_spike_window, saved)
    run.state = {"step": run.start, "total_steps": sched.total_steps, "steps_per_epoch": sched.steps_per_epoch,
                 "wandb_run_id": wandb_id, "schedule_start": point.schedule_start if point else 0,
                 "resumes": saved.get("resumes", []), **run.guard.state_dict()}
    if run.is_main:
        tokens = (step_tokens(run.builder, run.data, cfg, sched.steps_per_epoch, run.start, run.curriculum)
                  if run.start < sched.total_steps else 0)
        for line in run_header(run.model, cfg, sched.total_steps, run.start, sched.accumulation,
                               accelerator.num_processes, tokens, accelerator.device):
            run.log(line)


# ----- the loop ---------------------------------------------------------------------------------


def _fit(run: _Run, show_progress: bool, stop) -> None:
    """The optimizer steps from `run.start`: each logged, validated and checkpointed when due."""
    total = run.sched.total_steps
    bar = tqdm(total=total, initial=run.start, desc="train", disable=not (run.is_main and show_progress),
               dynamic_ncols=True)
    postfix: dict[str, str] = {}
    run.best = BestCheckpoint(run.out_dir)
    run.objective.train()
    try:
        for step in range(run.start, total):
            record, loss, skip, must_stop = _train_step(run, step)
            if run.is_main:
                _log_step(run, step, record, skip)
                postfix["loss"] = f"{loss:.4f}"
                bar.set_postfix(postfix)
                bar.update(1)
            if must_stop:
                raise _skipped_in_a_row(run, step, skip)
            every = run.cfg.train.eval_every
            if every and ((step + 1) % every == 0 or step + 1 == total):
                val = _validate(run, step)
                if run.is_main:
                    postfix["val_acc"] = f"{val['accuracy']:.1f}%"
                    bar.set_postfix(postfix)
            _checkpoint_if_due(run, step, stop)
    finally:
        bar.close()


def _train_step(run: _Run, step: int) -> tuple[dict, float, str | None, bool]:
    """Optimizer step `step`: its log record, its mean loss, why it was skipped (None: it was
    applied; kava.training.guard) and whether the run must stop (too many skipped in a row)."""
    t0 = time.perf_counter()
    cfg, guard, optimizer = run.cfg, run.guard, run.optimizer
    if run.curriculum is not None and run.curriculum.resets_optimizer(step):
        reset_optimizer_state(optimizer)
    sums, tokens = _accumulate_gradients(run, step)
    failpoint("train.step")
    if step < cfg.train.latent_warmup_steps and cfg.train.method == "kava":
        keep_latent_gradients(run.model, run.params)  # kava.training.latent_warmup: backbone frozen
    grad_norm = float(run.accelerator.clip_grad_norm_(run.params, cfg.train.grad_clip))
    sums, tokens = step_totals(sums, tokens, run.accelerator)
    skip = guard.reason_to_skip(sums["loss"], grad_norm)
    if skip is None:
        optimizer.step()
        guard.applied(sums["loss"])
    else:
        release_skipped_step(optimizer)
    run.scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    must_stop = skip is not None and guard.skipped_step(step + 1)
    state = run.state
    state.update(guard.state_dict())
    state["step"] = step + 1
    state["epoch"] = (step + 1) / run.sched.steps_per_epoch
    stage = run.curriculum.record(step) if run.curriculum is not None else {}
    state.update(stage)
    record = {"step": step + 1, "epoch": round(state["epoch"], 4), **stage,
              **{k: round(v, 6) for k, v in sums.items()}, "lr": run.scheduler.get_last_lr()[0],
              "grad_norm": grad_norm, "seconds": round(time.perf_counter() - t0, 4), "tokens": tokens}
    if skip is not None:
        record["skipped"] = skip
    if guard.skipped:
        record["skipped_steps"] = guard.skipped
    return record, sums["loss"], skip, must_stop


def _accumulate_gradients(run: _Run, step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """This process's micro-batches of step `step`, forward and backward (gradients reduced
    across processes on the last one only); their mean loss terms and tokens, on the device."""
    accelerator, objective, accumulation = run.accelerator, run.objective, run.sched.accumulation
    per_rank = run.cfg.train.micro_batch_size * accumulation
    rank = accelerator.process_index
    idx = step_indices(step, len(run.data), run.cfg, run.sched.steps_per_epoch)[rank * per_rank : (rank + 1) * per_rank]
    sums: dict[str, torch.Tensor] = {}
    tokens = 0
    batches = micro_batches(run.builder, run.data, idx, step, run.cfg, accelerator.device, run.curriculum)
    for a, batch in enumerate(batches):
        tokens += batch_token_count(batch)
        last = a == accumulation - 1
        with accelerator.no_sync(objective) if not last else contextlib.nullcontext():
            losses = forward_backward(objective, batch, lambda loss: accelerator.backward(loss / accumulation),
                                      no_sync=lambda: accelerator.no_sync(objective))
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float() / accumulation
    return sums, tokens


def _log_step(run: _Run, step: int, record: dict, skip: str | None) -> None:
    """train_log.jsonl and the trackers get every `train.log_every`-th step, the last and every skipped one."""
    if skip is not None or (step + 1) % run.cfg.train.log_every == 0 or step + 1 == run.sched.total_steps:
        append_jsonl(run.log_path, record)
        if run.trackers:
            run.accelerator.log({k: v for k, v in record.items() if k not in ("step", "skipped")}, step=step + 1)
    if skip is not None:
        run.log(f"kava: step {step + 1} skipped ({skip}); {run.guard.in_a_row} in a row, {run.guard.skipped} in all")


def _skipped_in_a_row(run: _Run, step: int, skip: str) -> KavaError:
    guard, last_good = run.guard, run.last_good
    kept = (f"the last good checkpoint, {last_good}, is untouched. Resume it with --resume and a lower "
            "train.lr (a new schedule starts at the checkpoint) or train.grad_clip" if last_good else
            "no checkpoint was written. Start again with a lower train.lr or train.grad_clip")
    return KavaError(
        f"{guard.in_a_row} steps in a row were skipped (steps {guard.first_of_streak}-{step + 1}, the last "
        f"because the {skip}); the run stopped and {kept}, or raise train.max_skipped_in_a_row"
    )


def _validate(run: _Run, step: int) -> dict:
    """Validation losses and accuracy after step `step`; checkpoint-best when the accuracy is the best so far."""
    cfg, accelerator = run.cfg, run.accelerator
    val = (validation_losses(run.objective, run.builder, run.val_data, cfg, accelerator, run.curriculum, step)
           if run.val_data else {})
    val.update(validation_accuracy(run.model, run.builder, run.val_examples, cfg, accelerator))
    if run.is_main:
        val["best"] = run.best.offer(val, run.model, run.tok, cfg, run.state)
        append_jsonl(run.log_path, {"step": step + 1, "split": "validation", **val, **run.best.fields()})
        if run.trackers:
            accelerator.log({f"val_{k}": v for k, v in val.items() if type(v) in (int, float)}, step=step + 1)
    return val


# ----- checkpointing ----------------------------------------------------------------------------


def _checkpoint_if_due(run: _Run, step: int, stop) -> None:
    """checkpoint-<step> every `train.save_every` steps (not in a streak of skipped steps), and
    before stopping on a signal, which then raises `Preempted`."""
    cfg, accelerator = run.cfg, run.accelerator
    last = step + 1 == run.sched.total_steps
    due = cfg.train.save_every and (step + 1) % cfg.train.save_every == 0 and not last and not run.guard.in_streak
    stopping = _stop_requested(stop, accelerator) and not last
    if not (due or stopping):
        return
    accelerator.wait_for_everyone()
    path = run.out_dir / f"checkpoint-{step + 1}"
    if run.is_main:
        save_checkpoint(path, run.model, run.tok, cfg, run.state, run.optimizer, run.scheduler)
        if due:
            prune_checkpoints(run.out_dir, cfg.train.keep_last)
    if due:
        run.last_good = path
    if stopping:
        accelerator.wait_for_everyone()
        raise Preempted(stop.signum or signal.SIGTERM, step + 1, run.sched.total_steps, path)


def _save_final(run: _Run, final: Path, seconds: float) -> None:
    """checkpoint-final (with its optimizer: it can be extended), the loss plot and the run summary."""
    cfg = run.cfg
    save_checkpoint(final, run.model, run.tok, cfg, run.state, run.optimizer, run.scheduler)
    records = read_jsonl(run.log_path) if run.log_path.is_file() else []
    plot = plot_training_losses(records, run.out_dir / "training_losses.png",
                                title=f"{cfg.run_name}: {cfg.model.name}, method {cfg.train.method}")
    for line in run_summary(records, run.start, seconds, final, plot, run.best if cfg.train.eval_every else None):
        run.log(line)


def _stop_requested(stop, accelerator) -> bool:
    """A stop signal reached this process (or, under DDP, any process: all stop together)."""
    flag = stop.signum is not None
    if accelerator.num_processes > 1:
        t = torch.tensor([float(flag)], device=accelerator.device)
        flag = bool(accelerator.reduce(t, reduction="max").item())
    return flag


@torch.no_grad()
def validation_losses(objective, builder: SequenceBuilder, data: list[Encoded], cfg: KavaConfig, accelerator,
                      curriculum=None, step: int = 0) -> dict:
    """Mean of each loss term over the validation examples (eval mode, sharded over processes);
    under a curriculum (or iCoT), at step `step`'s stage for every example (no mixing, no offsets)."""
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = data[rank::world]
    micro = cfg.train.micro_batch_size
    was_training = objective.training
    objective.eval()
    sums: dict[str, float] = {}
    try:
        for start in range(0, len(mine), micro):
            items = mine[start : start + micro]
            items, student = (curriculum.validation_batch(builder, items, step) if curriculum is not None
                              else (items, None))
            losses = objective(make_batch(builder, items, cfg.train.method, accelerator.device, shares_question(cfg),
                                          student))
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(items)
    finally:
        objective.train(was_training)
    keys = sorted(sums) or ["loss"]
    t = torch.tensor([sums.get(k, 0.0) for k in keys] + [float(len(mine))], device=accelerator.device)
    if world > 1:
        t = accelerator.reduce(t, reduction="sum")
    count = max(float(t[-1]), 1.0)
    return {k: round(float(v) / count, 6) for k, v in zip(keys, t[:-1].tolist())}


def step_totals(sums: dict[str, torch.Tensor], tokens: torch.Tensor, accelerator) -> tuple[dict[str, float], int]:
    """A step's mean loss terms (averaged over processes) and its tokens (summed), read from the
    device in one transfer: the micro-batches accumulate them as tensors, so the GPU does not
    wait for the host after each one."""
    keys = sorted(sums)
    values = torch.stack([sums[k] for k in keys])
    if accelerator.num_processes > 1:
        values = accelerator.reduce(values, reduction="mean")
        tokens = accelerator.reduce(tokens.reshape(1), reduction="sum")
    *means, total = torch.cat([values, tokens.reshape(1).to(values)]).tolist()
    return dict(zip(keys, means)), int(total)

