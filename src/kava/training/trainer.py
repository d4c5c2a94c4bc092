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
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kava.config import KavaConfig, config_to_dict, shares_question
from kava.data.sequences import Encoded, SequenceBuilder
from kava.data.train_sets import load_training_examples
from kava.errors import KavaError
from kava.failpoints import failpoint
from kava.io import append_jsonl, atomic_write_text, atomic_write_yaml, read_jsonl
from kava.locking import FolderLock
from kava.training.latent_warmup import keep_latent_gradients
from kava.training.checkpoint import (
    load_resume_state,
    load_trainable_state,
    prune_checkpoints,
    recover_output_dir,
    save_checkpoint,
    step_checkpoints,
)
from kava.training.guard import StepGuard
from kava.training.signals import PREEMPTION_SIGNALS, Preempted, graceful_stop


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def word_vocabulary_for(cfg: KavaConfig) -> list[str] | None:
    """Words of the synthetic task, for the tiny word-level tokenizer."""
    if cfg.model.tiny.tokenizer != "word":
        return None
    from kava.data.synthetic import SyntheticTaskConfig, synthetic_vocabulary

    s = cfg.data.synthetic
    return synthetic_vocabulary(
        SyntheticTaskConfig(num_steps=s.num_steps, max_value=s.max_value, operations=tuple(s.operations), seed=s.seed),
        s.cot_format,
    )


def encode_dataset(examples, builder: SequenceBuilder, cfg: KavaConfig) -> tuple[list[Encoded], int]:
    """Tokenise; drop (and count) examples longer than data.max_length — never truncate them."""
    kept, dropped = [], 0
    M = cfg.latent.num_latents
    for ex in examples:
        e = builder.encode(ex)
        if builder.teacher_length(e) > cfg.data.max_length or builder.student_length(e, M) > cfg.data.max_length + M + 2:
            dropped += 1
            continue
        kept.append(e)
    return kept, dropped


def make_batch(builder: SequenceBuilder, items: list[Encoded], method: str, device, shared_question: bool = True,
               student: dict | None = None) -> dict:
    """The tensors of `method`'s objective; shared_question (`shares_question(cfg)`): the
    teacher's part is its C + P + A, to continue the student's question. student: keyword
    arguments of `builder.student_batch` (a curriculum's latents and kept CoT)."""
    if method == "direct":
        parts = {"direct": builder.teacher_batch(items, with_cot=False)}
    elif method == "cot":
        parts = {"teacher": builder.teacher_batch(items)}
    else:
        teacher = builder.continuation_batch(items) if shared_question else builder.teacher_batch(items)
        parts = {"teacher": teacher, "student": builder.student_batch(items, **(student or {}))}
    return {k: {n: t.to(device) for n, t in v.items()} for k, v in parts.items()}


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


def step_indices(step: int, n: int, cfg: KavaConfig, spe: int) -> list[int]:
    """The dataset indices consumed by optimizer step `step` (all processes together)."""
    epoch, offset = divmod(step, spe)
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    G = cfg.train.global_batch_size
    return perm[offset * G : (offset + 1) * G].tolist()


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
    from transformers import get_scheduler

    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.train.lr_scheduler]
    return get_scheduler(name, optimizer, num_warmup_steps=int(cfg.train.warmup_ratio * total), num_training_steps=total)


def _trackers(cfg: KavaConfig):
    names = [x for x in cfg.train.loggers if x != "jsonl"]
    for name, module in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
        if name in names:
            import importlib.util

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
    try:
        kept = [r for r in read_jsonl(log_path) if r.get("step", 0) <= step]
    except (ValueError, UnicodeDecodeError) as err:
        raise KavaError(f"{log_path} is corrupt ({type(err).__name__}); move it away and resume again") from None
    atomic_write_text(log_path, "".join(json.dumps(r) + "\n" for r in kept))


def train(cfg: KavaConfig, resume: bool = False, show_progress: bool = True,
          stop_signals: Sequence[str | int] = PREEMPTION_SIGNALS) -> Path:
    """Train; returns the path of checkpoint-final.

    The run holds its output folder's lock (`kava.locking`) until it returns. A signal in
    `stop_signals` ends it at the next step boundary: it writes `checkpoint-<step>` and
    raises `Preempted` (`kava.training.signals`); `resume=True` continues from there.
    """
    from accelerate import Accelerator

    trackers = _trackers(cfg)
    seed_everything(cfg.seed)
    train_rows, val_rows = load_training_examples(cfg.data)
    accelerator = Accelerator(
        mixed_precision=cfg.train.mixed_precision,
        log_with=trackers or None,
        project_dir=str(cfg.output_dir),
    )
    lock = FolderLock(cfg.output_dir, "kava train") if accelerator.is_main_process else contextlib.nullcontext()
    with lock, graceful_stop(stop_signals) as stop:
        return _train(cfg, accelerator, trackers, train_rows, val_rows, resume, show_progress, stop)


def _train(cfg: KavaConfig, accelerator, trackers, train_rows, val_rows, resume: bool, show_progress: bool,
           stop) -> Path:
    from tqdm.auto import tqdm

    from kava.model.capture import enable_capture
    from kava.model.kava_model import build_kava_model, trainable_parameters
    from kava.training.curriculum import Curriculum, reset_optimizer_state
    from kava.training.objective import KavaObjective

    is_main = accelerator.is_main_process
    log = (lambda *a: print(*a, file=sys.stderr)) if is_main else (lambda *a: None)
    out_dir = Path(cfg.output_dir)
    final = out_dir / "checkpoint-final"
    if is_main:
        recover_output_dir(out_dir)
    accelerator.wait_for_everyone()
    existing = step_checkpoints(out_dir)
    if final.is_dir():
        if resume:
            print(f"kava: {final} exists; the run is complete, nothing to resume", file=sys.stderr)
            return final
        raise KavaError(f"{out_dir} already holds a finished run; choose another --output-dir")
    if existing and not resume:
        raise KavaError(f"{out_dir} holds checkpoints of an earlier run; pass --resume to continue it or choose another --output-dir")

    model, tok, builder = build_kava_model(cfg, accelerator.device, word_vocabulary=word_vocabulary_for(cfg))
    data, dropped = encode_dataset(train_rows, builder, cfg)
    log(f"kava: {len(data)} training examples ({dropped} dropped as longer than data.max_length={cfg.data.max_length})")
    val_data = encode_dataset(val_rows, builder, cfg)[0][: cfg.train.eval_max_examples] if cfg.train.eval_every else []
    if not data:
        raise KavaError(f"every training example is longer than data.max_length={cfg.data.max_length}; raise it")
    if cfg.train.method == "kava" and cfg.kava.compression in ("rkv", "attention"):
        enable_capture(model.backbone)
    sched = plan_schedule(cfg, len(data), accelerator.num_processes)
    curriculum = Curriculum(cfg, sched.steps_per_epoch, sched.total_steps) if cfg.curriculum.enabled else None

    objective = KavaObjective(model, cfg)
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, betas=cfg.train.adam_betas, weight_decay=cfg.train.weight_decay)
    scheduler = _make_scheduler(optimizer, cfg, sched.total_steps)
    objective, optimizer = accelerator.prepare(objective, optimizer)

    start = 0
    saved: dict = {}
    log_path = out_dir / "train_log.jsonl"
    if resume and existing:
        step, ckpt = existing[-1]
        load_trainable_state(model, ckpt)
        saved = load_resume_state(ckpt, optimizer, scheduler)
        if curriculum is not None:
            curriculum.check_resume(saved)
        start = saved["step"]
        if is_main and log_path.is_file():
            _truncate_log(log_path, start)
        log(f"kava: resuming from {ckpt} (step {start}/{sched.total_steps})")
    elif is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if log_path.exists():
            log_path.unlink()
    if is_main:
        atomic_write_yaml(out_dir / "config.yaml", config_to_dict(cfg))
    wandb_id = saved.get("wandb_run_id") or uuid.uuid4().hex[:12]
    if trackers:
        accelerator.init_trackers(cfg.run_name, config=tracker_config(cfg),
                                  init_kwargs=tracker_init_kwargs(trackers, start, wandb_id))

    rank, world = accelerator.process_index, accelerator.num_processes
    micro = cfg.train.micro_batch_size
    per_rank = micro * sched.accumulation
    t = cfg.train
    guard = StepGuard(t.max_skipped_in_a_row, t.loss_spike_factor, t.loss_spike_window, saved)
    state = {"step": start, "total_steps": sched.total_steps, "steps_per_epoch": sched.steps_per_epoch,
             "wandb_run_id": wandb_id, **guard.state_dict()}
    last_good = existing[-1][1] if resume and existing else None
    bar = tqdm(total=sched.total_steps, initial=start, desc="train", disable=not (is_main and show_progress), dynamic_ncols=True)
    objective.train()
    try:
        for step in range(start, sched.total_steps):
            t0 = time.perf_counter()
            if curriculum is not None and curriculum.resets_optimizer(step):
                reset_optimizer_state(optimizer)
            idx = step_indices(step, len(data), cfg, sched.steps_per_epoch)[rank * per_rank : (rank + 1) * per_rank]
            sums: dict[str, float] = {}
            tokens = 0
            for a in range(sched.accumulation):
                chunk = idx[a * micro : (a + 1) * micro]
                items = [data[i] for i in chunk]
                student = curriculum.batch_inputs(builder, items, step, chunk) if curriculum is not None else None
                batch = make_batch(builder, items, cfg.train.method, accelerator.device, shares_question(cfg), student)
                tokens += sum(int(p["attention_mask"].sum()) if "attention_mask" in p else int(p["q_mask"].sum() + p["suffix_mask"].sum()) for p in batch.values())
                sync = a == sched.accumulation - 1
                ctx = accelerator.no_sync(objective) if not sync else _null()
                with ctx:
                    losses = forward_backward(objective, batch, lambda loss: accelerator.backward(loss / sched.accumulation),
                                              no_sync=lambda: accelerator.no_sync(objective))
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) / sched.accumulation
            failpoint("train.step")
            if step < cfg.train.latent_warmup_steps and cfg.train.method == "kava":
                keep_latent_gradients(model, params)  # kava.training.latent_warmup: backbone frozen
            grad_norm = float(accelerator.clip_grad_norm_(params, cfg.train.grad_clip))
            if world > 1:
                r = torch.tensor([sums[k] for k in sorted(sums)], device=accelerator.device)
                r = accelerator.reduce(r, reduction="mean")
                sums = dict(zip(sorted(sums), r.tolist()))
                tokens = int(accelerator.reduce(torch.tensor([tokens], device=accelerator.device), reduction="sum").item())
            skip = guard.reason_to_skip(sums["loss"], grad_norm)
            if skip is None:
                optimizer.step()
                guard.applied(sums["loss"])
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            must_stop = skip is not None and guard.skipped_step(step + 1)
            state.update(guard.state_dict())
            state["step"] = step + 1
            state["epoch"] = (step + 1) / sched.steps_per_epoch
            stage = {"curriculum_stage": curriculum.stage(step)} if curriculum is not None else {}
            state.update(stage)
            record = {"step": step + 1, "epoch": round(state["epoch"], 4), **stage, **{k: round(v, 6) for k, v in sums.items()},
                      "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm, "seconds": round(time.perf_counter() - t0, 4),
                      "tokens": tokens}
            if skip is not None:
                record["skipped"] = skip
            if guard.skipped:
                record["skipped_steps"] = guard.skipped
            if is_main:
                if skip is not None or (step + 1) % cfg.train.log_every == 0 or step + 1 == sched.total_steps:
                    append_jsonl(log_path, record)
                    if trackers:
                        accelerator.log({k: v for k, v in record.items() if k not in ("step", "skipped")}, step=step + 1)
                if skip is not None:
                    log(f"kava: step {step + 1} skipped ({skip}); {guard.in_a_row} in a row, {guard.skipped} in all")
                bar.set_postfix(loss=f"{sums['loss']:.4f}")
                bar.update(1)
            if must_stop:
                kept = f"the last good checkpoint, {last_good}, is untouched" if last_good else "no checkpoint was written"
                raise KavaError(
                    f"{guard.in_a_row} steps in a row were skipped (steps {guard.first_of_streak}-{step + 1}, the last "
                    f"because the {skip}); the run stopped and {kept}. Lower train.lr or train.grad_clip and resume, "
                    "or raise train.max_skipped_in_a_row"
                )
            if val_data and ((step + 1) % cfg.train.eval_every == 0 or step + 1 == sched.total_steps):
                val = validation_losses(objective, builder, val_data, cfg, accelerator, curriculum, step)
                if is_main:
                    append_jsonl(log_path, {"step": step + 1, "split": "validation", **val})
                    if trackers:
                        accelerator.log({f"val_{k}": v for k, v in val.items()}, step=step + 1)
            last = step + 1 == sched.total_steps
            due = cfg.train.save_every and (step + 1) % cfg.train.save_every == 0 and not last and not guard.in_streak
            stopping = _stop_requested(stop, accelerator) and not last
            if due or stopping:
                accelerator.wait_for_everyone()
                path = out_dir / f"checkpoint-{step + 1}"
                if is_main:
                    save_checkpoint(path, model, tok, cfg, state, optimizer, scheduler)
                    if due:
                        prune_checkpoints(out_dir, cfg.train.keep_last)
                if due:
                    last_good = path
                if stopping:
                    accelerator.wait_for_everyone()
                    raise Preempted(stop.signum or signal.SIGTERM, step + 1, sched.total_steps, path)
    finally:
        bar.close()
        if trackers:
            accelerator.end_training()
    accelerator.wait_for_everyone()
    if is_main:
        save_checkpoint(final, model, tok, cfg, state)
        log(f"kava: wrote {final}")
    return final


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
    under a curriculum, at step `step`'s stage for every example (no mixing)."""
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = data[rank::world]
    micro = cfg.train.micro_batch_size
    was_training = objective.training
    objective.eval()
    sums: dict[str, float] = {}
    try:
        for start in range(0, len(mine), micro):
            items = mine[start : start + micro]
            student = (curriculum.student_inputs(builder, items, [curriculum.stage(step)] * len(items))
                       if curriculum is not None else None)
            losses = objective(make_batch(builder, items, cfg.train.method, accelerator.device, shares_question(cfg), student))
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


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
