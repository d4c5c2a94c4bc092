"""What `kava train` prints before its first step and after its last (stderr).

Header: the model and its trainable and total parameters, the steps, the effective batch and
how it is made (micro-batch × accumulation × processes), the tokens of one step, the device
and the dtype. Summary: the steps and the time this run took, the last step's losses, the
validation accuracy and the best checkpoint, and where the checkpoint and the loss plot are.
"""

from __future__ import annotations

from pathlib import Path

from kava.config import KavaConfig


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:g}"


def run_header(model, cfg: KavaConfig, total_steps: int, start: int, accumulation: int, processes: int,
               tokens_per_step: int, device) -> list[str]:
    """The lines printed before the first step."""
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    how = f"LoRA r={cfg.lora.r}" if cfg.lora.enabled else "full fine-tuning"
    dtype = str(next(p.dtype for p in params)).removeprefix("torch.")
    mixed = f", mixed precision {cfg.train.mixed_precision}" if cfg.train.mixed_precision != "no" else ""
    t = cfg.train
    steps = f"steps {start + 1}-{total_steps} of {total_steps}" if start else f"{total_steps} steps"
    params_line = (f"kava: {cfg.model.name}, method {t.method}: {trainable:,} of {total:,} parameters trainable "
                   f"({100 * trainable / total:.2f}%, {how})")
    batch_line = (f"kava: {steps}, {t.global_batch_size} examples a step ({t.micro_batch_size} a micro-batch × "
                  f"{accumulation} accumulation × {processes} process{'es' if processes > 1 else ''}), "
                  f"{_count(tokens_per_step)} tokens a step; {device}, {dtype}{mixed}")
    return [params_line, batch_line]


def run_summary(records: list[dict], start: int, seconds: float, final: Path, plot: Path | None,
                best=None) -> list[str]:
    """The lines printed after the last step. records: the run's train_log.jsonl."""
    steps = [r for r in records if "loss" in r and "split" not in r]
    done = max(len([r for r in steps if r["step"] > start]), 1)
    lines = [f"kava: trained steps {start + 1}-{steps[-1]['step']} in {seconds:.0f} s ({seconds / done:.2f} s a step)"
             if steps else f"kava: trained in {seconds:.0f} s"]
    if steps:
        last = steps[-1]
        terms = ", ".join(f"{k} {last[k]:.4g}" for k in ("ce_student", "ce_teacher", "codi", "kv") if k in last)
        lines.append(f"kava: step {last['step']} losses: loss {last['loss']:.4g}" + (f" ({terms})" if terms else ""))
    val = [r for r in records if r.get("split") == "validation" and "accuracy" in r]
    if val and best is not None and best.accuracy is not None:
        lines.append(f"kava: validation accuracy {val[-1]['accuracy']:.1f}% at step {val[-1]['step']} "
                     f"({val[-1]['mode']} mode, {val[-1]['n']} questions); best {best.accuracy:.1f}% at step "
                     f"{best.step}: {best.path}")
    lines.append(f"kava: wrote {final}" + (f"; loss plot: {plot}" if plot is not None else ""))
    return lines
