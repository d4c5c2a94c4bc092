"""`kava bench speed --profile`: where one KaVa training step's time goes, and how far it is
from the arithmetic it must do.

Three measurements of the same step (the trainer's: forward, backward, clipping, AdamW):

- FLOPs by part: `torch.utils.flop_counter` counts the matrix products of the step, each
  part's own (the parts of `kava bench speed`'s breakdown: question, teacher, latent passes,
  suffix, R-KV, losses; `backward` is the whole backward pass);
- time by kind of operator: `torch.profiler`'s self time of every operator, grouped into
  matrix products, attention kernels, and everything else (element-wise ops, copies,
  concatenations, reductions, the autograd engine's bookkeeping), with the top operators;
- the matrix-product rate this device reaches on the step's own shapes (a [tokens, d] ×
  [d, intermediate] product in the model's dtype), so the step's counted FLOPs give a
  floor: the time the step's matrix products alone would take at that rate.

When matrix products take most of the step at close to the reference rate, the step is
compute-bound: it gets faster only with less arithmetic, not with less Python or fewer
kernel launches (docs/performance.md has the measurement on the tiny benchmark model).
"""

from __future__ import annotations

import time

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def count_step_flops(step) -> dict:
    """{"total": FLOPs, "parts": {part: FLOPs}} of one call of `step(sections)`."""
    from torch.utils.flop_counter import FlopCounterMode

    from kava.bench.common import Timer, breakdown_patches

    with FlopCounterMode(display=False) as counter:
        sections = Timer(None, clock=counter.get_total_flops)  # nested sections counting FLOPs
        with breakdown_patches(sections):
            step(sections)
        total = counter.get_total_flops()
    parts = {k: v for k, v in sections.exclusive.items() if k != "forward_backward"}
    parts["other"] = total - sum(parts.values())
    return {"total": float(total), "parts": {k: float(v) for k, v in parts.items()}}


def matmul_rate(rows: int, inner: int, outer: int, device, dtype, reps: int = 10) -> float:
    """FLOP/s of a [rows, inner] × [inner, outer] matrix product on `device` (median of `reps`)."""
    import statistics

    import torch

    from kava.bench.common import sync

    a = torch.randn(rows, inner, device=device, dtype=dtype)
    b = torch.randn(inner, outer, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t)
    return 2.0 * rows * inner * outer / statistics.median(times)


def operator_times(step, steps: int, device, top: int = 12) -> dict:
    """Self time by kind of operator over `steps` calls of `step()` (torch.profiler), and the
    matrix products' time by the dtype of their first input (`matmul_by_dtype`: fp32 GEMMs
    next to bf16 ones)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(steps):
            step()
    by_dtype: dict[str, float] = {}
    for e in prof.events():
        if e.name in MATMUL_OPS:
            dtype = e.input_dtypes[0] if e.input_dtypes else "unknown"
            t = (e.self_device_time_total if cuda else e.self_cpu_time_total) / 1e6 / steps
            by_dtype[dtype] = by_dtype.get(dtype, 0.0) + t
    rows = []
    for e in prof.key_averages():
        t = (e.self_device_time_total if cuda else e.self_cpu_time_total) / 1e6 / steps
        if t > 0:
            rows.append((e.key, t, e.count // steps))
    total = sum(t for _, t, _ in rows)
    kinds = {"matrix products": 0.0, "attention": 0.0, "other operators": 0.0}
    for name, t, _ in rows:
        kind = ("matrix products" if name in MATMUL_OPS else
                "attention" if "scaled_dot_product" in name or "flash_attention" in name else "other operators")
        kinds[kind] += t
    rows.sort(key=lambda r: -r[1])
    return {"seconds_per_step": total, "by_kind": kinds, "matmul_by_dtype": by_dtype,
            "calls_per_step": sum(c for _, _, c in rows),
            "top": [{"op": n, "seconds": t, "calls": c} for n, t, c in rows[:top]],
            "timer": "device self time" if cuda else "CPU self time"}


def profile_step(cfg, device, items, steps: int = 2, warmup: int = 2) -> dict:
    """FLOPs by part, operator time by kind and the matrix-product floor of one KaVa step."""
    from kava.bench.common import Timer, TrainRun, setup_runs, train_step

    objective, optimizer, params, batch = setup_runs(cfg, device, items, [TrainRun("kava", "kava")])["kava"]
    grad_clip = objective.cfg.train.grad_clip

    def step(timer=None):
        train_step(objective, optimizer, params, batch, grad_clip, timer or Timer(device))

    for _ in range(warmup):
        step()
    flops = count_step_flops(step)
    ops = operator_times(step, steps, device)
    text = objective.model.backbone.config.get_text_config()
    dtype = next(objective.model.parameters()).dtype
    rows = int(batch["student"].q_ids.numel())  # the question pass's tokens
    rate = matmul_rate(rows, text.hidden_size, text.intermediate_size, device, dtype)
    mm = ops["by_kind"]["matrix products"]
    return {
        "flops": flops,
        "operators": ops,
        "reference_matmul": {"shape": [rows, text.hidden_size, text.intermediate_size], "flops_per_second": rate},
        "matmul_flops_per_second": flops["total"] / mm if mm > 0 else None,
        "matmul_floor_seconds": flops["total"] / rate,
    }


def format_profile(p: dict) -> str:
    f, ops = p["flops"], p["operators"]
    total = f["total"]
    lines = ["", f"profile of one KaVa step: {total / 1e9:.2f} GFLOP in matrix products "
                 f"(flop_counter); {ops['seconds_per_step']:.3f} s of operator {ops['timer']}, "
                 f"{ops['calls_per_step']} operator calls",
             "", "| part | GFLOP | share |", "|---|---|---|"]
    for part, v in sorted(f["parts"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {part} | {v / 1e9:.2f} | {100 * v / max(total, 1):.1f}% |")
    lines += ["", "| operator kind | s / step | share |", "|---|---|---|"]
    for kind, t in ops["by_kind"].items():
        lines.append(f"| {kind} | {t:.3f} | {100 * t / max(ops['seconds_per_step'], 1e-12):.1f}% |")
    ref = p["reference_matmul"]
    got = p["matmul_flops_per_second"]
    achieved = f"matrix products run at {got / 1e9:.1f} GFLOP/s" if got else "no matrix product was timed"
    lines += ["",
              f"{achieved}; a {'x'.join(map(str, ref['shape']))} product reaches {ref['flops_per_second'] / 1e9:.1f} "
                  f"GFLOP/s here: the step's matrix products alone need {p['matmul_floor_seconds']:.3f} s at that rate"]
    lines += ["", "| top operator | s / step | calls / step |", "|---|---|---|"]
    for r in ops["top"]:
        lines.append(f"| {r['op'][:60]} | {r['seconds']:.4f} | {r['calls']} |")
    return "\n".join(lines)
