"""`kava bench gpu`: is this GPU ready for a config's training run — one command, minutes.

It reads a config (default `configs/llama1b_aug.yaml`), builds the config's real architecture
from its hub id with random weights (`kava.model.shapes`: nothing is downloaded) in the
config's dtype, mixed precision and attention, and draws examples whose question and CoT
lengths are distributed as GSM8k's (`kava.bench.common.gsm8k_like_items`). Each part writes
`gpu.json` and `gpu.md` to `--output-dir` as soon as it finishes; a part that fails records
one line (`out of memory at micro-batch 64`, ...) and the next part runs (the traceback goes
to `gpu_errors.log`); the command exits 1 when a part failed.

1. `training`: seconds per optimizer step at the config's micro-batch, KaVa and CoT
   fine-tuning side by side (the trainer's step: forward, backward, clip, AdamW, under the
   config's autocast); tokens/s; the step's FLOPs as counted by `torch.utils.flop_counter`
   (what runs: a frozen base costs ≈ 4N per token, not 6N; LoRA, attention, the LM head)
   and the MFU against the GPU's dense bf16 peak.
2. `memory`: peak memory of one KaVa step at each `--micro-batch-sizes` size, with and
   without gradient checkpointing (`torch.cuda.max_memory_allocated`; on a CPU the peak RSS
   of a fresh process); a size that runs out of memory ends the list for that setting.
3. `gemm_dtypes`: the share of the step's device time in fp32 and in bf16 matrix products
   (`torch.profiler`, by the dtype of the first input).
4. `inference`: latent vs CoT (vs direct) generation at batch 1 and 16, fixed lengths (CoT
   decodes a GSM8k-length chain), and the latent/CoT speed-up.
5. `padding`: whether left-padding rows stay finite: the kernel under transformers' own
   mask (non-finite values in rows that attend to nothing), and under kava's (every value).
6. `losses`: for each Table 6 config's shape, `kava bench losses`' table of the loss terms at
   step 0, and `--steps` optimizer steps: finite losses, and whether every weighted term
   carries between 1% and 90% of the whole loss's gradient norm — the balance the paper's
   weights assume [decision: the thresholds].

`--device cpu` runs every part at a tiny shape (`tiny-llama`, float32): a dry run in under a
minute, what the tests run; with `--layers N` it runs the real width and vocabulary with the
first N layers instead (in float32: how the memory estimates of docs/performance.md were
made). Without a GPU and without `--device cpu` it stops with one line.

    kava bench gpu --output-dir runs/bench_gpu
    kava bench gpu --config configs/llama3b_aug.yaml --micro-batch-sizes 8 16 32 --output-dir runs/bench_gpu_3b
    kava bench gpu --device cpu --output-dir /tmp/bench_gpu_dry
"""

from __future__ import annotations

import math
import sys
import time
import traceback
from pathlib import Path

from kava.bench.common import (
    TrainRun,
    autocast,
    build_model,
    device_name,
    gsm8k_like_items,
    is_nl_dataset,
    load_average,
    setup_runs,
    train_step,
    write_json,
)
from kava.errors import KavaError

PARTS = ("training", "memory", "gemm_dtypes", "inference", "padding", "losses")
# per device: micro-batch sizes, inference batch sizes, inference questions, timed steps
DEFAULTS = {"cuda": ((16, 32, 64), (1, 16), 16, 3), "cpu": ((2,), (1, 2), 2, 1)}
# the dry run's tiny shape (kava's built-in random Llama, float32) and micro-batch
DRY_RUN = ("model.name=tiny-llama", "model.dtype=float32", "train.mixed_precision='no'", "model.tiny.num_layers=2",
           "lora.r=8", "latent.num_latents=6", "train.global_batch_size=4", "train.micro_batch_size=2")
DTYPES = {"float": "fp32", "c10::BFloat16": "bf16", "c10::Half": "fp16"}
SHARE_RANGE = (0.01, 0.9)


def register(sub) -> None:
    p = sub.add_parser(
        "gpu",
        help="the GPU check of a config: step speed and MFU, memory per micro-batch, fp32 GEMMs, inference "
             "speed-up, padding, loss sizes",
        description="Reads a config, builds its real architecture with random weights and checks this GPU part "
                    "by part, writing gpu.json and gpu.md as each part finishes. --device cpu: a tiny dry run.",
        epilog="example: kava bench gpu --output-dir runs/bench_gpu",
    )
    p.add_argument("--config", default=None,
                   help="the config to check: a file or a shipped config's name (default: llama1b_aug)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (a tiny dry run)")
    p.add_argument("--micro-batch-sizes", nargs="+", type=int,
                   help="memory at these sizes (default: 16 32 64 on a GPU)")
    p.add_argument("--steps", type=int, help="timed optimizer steps per run, and steps of each config in `losses` "
                                             "(default: 3 on a GPU)")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="the parts to run (default: all)")
    p.add_argument("--layers", type=int, help="the real shape's first N layers (on a CPU: the real width instead of "
                                              "the tiny dry run; memory estimates per layer)")
    p.add_argument("--output-dir", required=True, help="folder for gpu.json and gpu.md")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")
    p.set_defaults(func=_cmd_gpu)


def _check_device(name: str):
    import torch

    if name.startswith("cuda") and not torch.cuda.is_available():
        raise KavaError("no CUDA GPU is visible here (torch.cuda.is_available() is False); "
                        "`kava bench gpu` measures a GPU — run it on one, or `--device cpu` for a dry run")
    if not (name.startswith("cuda") or name == "cpu"):
        raise KavaError(f"--device must be cuda or cpu, got {name!r}")
    return torch.device(name)


def _config(path, device, overrides=(), layers: int | None = None):
    """The checked config on `device`: its model's real shape with random weights (a GPU, or any
    device with `layers`: the first N layers), or the dry run's tiny model (a CPU)."""
    from kava.bench.loss_terms import bench_loss_config
    from kava.config import load_config

    if device.type == "cpu" and layers is None:
        return load_config(path, [*overrides, *DRY_RUN])
    return bench_loss_config(path, device, layers, tuple(overrides))


def _items(cfg, builder, n: int, seed: int = 0):
    return gsm8k_like_items(builder, n, is_nl_dataset(cfg.data.dataset), seed, cfg.data.max_length)


# ----- the parts ------------------------------------------------------------------------------


def part_training(cfg, device, steps: int) -> dict:
    from kava.bench.common import Timer
    from kava.bench.profile import count_step_flops
    from kava.bench.speed import gpu_peak_flops, measure_training, token_counts

    _m, _tok, builder = build_model(cfg, device)
    del _m
    micro = cfg.train.micro_batch_size
    items = _items(cfg, builder, micro)
    out = measure_training(cfg, device, items, [TrainRun("kava", "kava"), TrainRun("cot", "cot")], reps=steps,
                           warmup=1, memory=False)
    counts = token_counts(items, cfg.latent.num_latents, cfg.latent.num_iterations)
    objective, optimizer, params, batch = setup_runs(cfg, device, items, [TrainRun("kava", "kava")])["kava"]
    flops = count_step_flops(lambda timer: train_step(objective, optimizer, params, batch, cfg.train.grad_clip,
                                                      timer or Timer(device)))["total"]
    import torch

    weights = list(objective.model.backbone.parameters())
    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.mixed_precision)
    peak = gpu_peak_flops(device, compute or next((p for p in weights if not p.requires_grad), weights[0]).dtype)
    sec = out["seconds_per_step"]
    return {"micro_batch_size": micro, "seconds_per_step": sec, "tokens": counts["real"]["kava"],
            "tokens_per_second": counts["real"]["kava"] / sec["kava"], "kava_over_cot": sec["kava"] / sec["cot"],
            "flops_per_step": flops, "peak_flops": peak, "mfu": flops / sec["kava"] / peak if peak else None,
            "breakdown_share": out["breakdown_share"].get("kava")}


def _peak_memory(cfg, device, items) -> tuple[float, float | None]:
    """(peak, above the model) in GiB of one KaVa step: CUDA's allocator (peak only), or a fresh
    process's RSS on a CPU."""
    import torch

    if device.type == "cpu":
        from kava.bench.memory import cpu_peak_memory

        mem = cpu_peak_memory(cfg, items, TrainRun("kava", "kava"), steps=1)
        return mem["peak_mb"] / 1024, mem["step_mb"] / 1024
    objective, optimizer, params, batch = setup_runs(cfg, device, items, [TrainRun("kava", "kava")])["kava"]
    from kava.bench.common import Timer

    torch.cuda.reset_peak_memory_stats(device)
    try:
        train_step(objective, optimizer, params, batch, cfg.train.grad_clip, Timer(device))
        return torch.cuda.max_memory_allocated(device) / 2**30, None
    finally:
        del objective, optimizer, params, batch
        torch.cuda.empty_cache()


def part_memory(cfg, device, sizes) -> dict:
    import torch

    from kava.config import config_from_dict, config_to_dict

    _m, _tok, builder = build_model(cfg, device)
    del _m
    out, above = {}, {}
    for checkpointing in (False, True):
        c = config_from_dict(config_to_dict(cfg), [f"model.gradient_checkpointing={str(checkpointing).lower()}"])
        key = "checkpointing" if checkpointing else "no_checkpointing"
        out[key], above[key] = {}, {}
        for size in sizes:
            try:
                peak, step = _peak_memory(c, device, _items(c, builder, size))
            except torch.OutOfMemoryError:
                out[key][str(size)] = "out of memory"
                torch.cuda.empty_cache()
                break
            out[key][str(size)] = round(peak, 2)
            if step is not None:
                above[key][str(size)] = round(step, 2)
    result = {"peak_gib": out, "kind": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS"}
    if device.type == "cpu":
        result["above_model_gib"] = above  # (the step's own memory: RSS above the built model)
    return result


def part_gemm_dtypes(cfg, device, steps: int) -> dict:
    from kava.bench.common import Timer
    from kava.bench.profile import operator_times

    _m, _tok, builder = build_model(cfg, device)
    del _m
    items = _items(cfg, builder, cfg.train.micro_batch_size)
    objective, optimizer, params, batch = setup_runs(cfg, device, items, [TrainRun("kava", "kava")])["kava"]

    def step():
        train_step(objective, optimizer, params, batch, cfg.train.grad_clip, Timer(device))

    step()
    ops = operator_times(step, steps, device)
    total = ops["seconds_per_step"]
    by_dtype = {DTYPES.get(k, k): v for k, v in ops["matmul_by_dtype"].items()}
    return {"seconds_per_step": total, "matmul_seconds_by_dtype": by_dtype,
            "share_by_dtype": {k: v / total for k, v in by_dtype.items()},
            "fp32_gemm_share": by_dtype.get("fp32", 0.0) / total if total else None}


def part_inference(cfg, device, batch_sizes, questions: int) -> dict:
    from kava.bench.infer import measure_inference, typical_cot_tokens
    from kava.data.eval_sets import EvalExample

    model, _tok, builder = build_model(cfg, device)
    model.eval()
    items = _items(cfg, builder, questions)
    examples = [EvalExample(f"q{i}", builder.tok.decode(e.q, skip_special_tokens=True), 0.0, "0")
                for i, e in enumerate(items)]
    with autocast(cfg, device):
        result = measure_inference(model, builder, examples, batch_sizes=batch_sizes, reps=1, warmup=1,
                                   lengths="fixed", cot_tokens=typical_cot_tokens(builder), answer_tokens=3)
    result.pop("rows")
    return result


def part_padding(cfg, device) -> dict:
    """Non-finite values in left-padding rows under transformers' mask, and anywhere under kava's."""
    import torch

    from kava.model.capture import enable_capture
    from kava.model.positions import position_ids_from_mask

    model, _tok, builder = build_model(cfg, device)
    items = _items(cfg, builder, 4)
    batch = builder.student_batch(items)
    ids, mask = batch.q_ids.to(device), batch.q_mask.to(device)
    backbone = model.backbone
    kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                  output_hidden_states=True)
    base = cfg.model.attn_implementation
    out = {"padding_rows": int((mask == 0).sum())}
    with torch.no_grad(), autocast(cfg, device):
        if base != "flash_attention_2":
            backbone.set_attn_implementation(base)
            pad = (mask == 0)
            hidden = backbone(**kwargs).hidden_states
            non_finite = sum((~torch.isfinite(h[pad])).sum() for h in hidden)
            out["non_finite_in_padding_rows_transformers_mask"] = int(non_finite)
        enable_capture(backbone)
        hidden = backbone(**kwargs).hidden_states
        out["non_finite_kava_mask"] = int(sum((~torch.isfinite(h)).sum() for h in hidden))
    out["finite"] = out["non_finite_kava_mask"] == 0
    return out


def part_losses(device, steps: int, overrides=(), layers: int | None = None) -> dict:
    from kava.bench.common import Timer
    from kava.bench.loss_terms import loss_terms
    from kava.experiments.cli import default_paper_configs

    results = {}
    for path in default_paper_configs():
        try:
            cfg = _config(path, device, overrides, layers)
            model, _tok, builder = build_model(cfg, device)
            items = _items(cfg, builder, cfg.train.micro_batch_size if device.type == "cuda" else 2)
            with autocast(cfg, device):
                terms = loss_terms(cfg, model, builder, items[:8], device)
            del model
            objective, optimizer, params, batch = setup_runs(cfg, device, items, [TrainRun("kava", "kava")])["kava"]
            losses = [float(train_step(objective, optimizer, params, batch, cfg.train.grad_clip, Timer(device))["loss"])
                      for _ in range(steps)]
            del objective, optimizer, params, batch
            reduction = cfg.kava.kv_loss_reduction  # the shares of the loss this config trains
            share = {n: t["grad_share"][reduction] for n, t in terms["terms"].items() if reduction in t["grad_share"]}
            results[path.stem] = {"terms": terms, "losses": losses, "finite": all(map(math.isfinite, losses)),
                                  "balanced": all(SHARE_RANGE[0] <= v <= SHARE_RANGE[1] for v in share.values()),
                                  "shares": share}
        except Exception as err:  # noqa: BLE001 - one config's failure is one line; the others still run
            results[path.stem] = {"error": _one_line(err)}
    return results


# ----- the command ----------------------------------------------------------------------------


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300]}" if text else type(err).__name__


def run_gpu(args, on_part=None) -> dict:
    import torch

    from kava.config import resolve_config_path
    from kava.training.hardware import set_tf32

    device = _check_device(args.device)
    sizes, infer_batches, questions, steps = DEFAULTS[device.type]
    sizes = args.micro_batch_sizes or sizes
    steps = args.steps or steps
    path = resolve_config_path(args.config or "llama1b_aug")
    cfg = _config(path, device, args.overrides, args.layers)
    set_tf32(cfg.train.tf32, device)
    r = {"config": str(path), "model": cfg.model.name, "device": str(device), "device_name": device_name(device),
         "dtype": cfg.model.dtype, "mixed_precision": cfg.train.mixed_precision, "tf32": cfg.train.tf32,
         "attention": cfg.model.attn_implementation, "torch": torch.__version__,
         "load_average_before": load_average(), "parts": {}, "errors": {}, "part_seconds": {}}
    t0 = time.perf_counter()
    runs = {"training": lambda: part_training(cfg, device, steps),
            "memory": lambda: part_memory(cfg, device, sizes),
            "gemm_dtypes": lambda: part_gemm_dtypes(cfg, device, steps),
            "inference": lambda: part_inference(cfg, device, infer_batches, questions),
            "padding": lambda: part_padding(cfg, device),
            "losses": lambda: part_losses(device, steps, args.overrides, args.layers)}
    for name in [p for p in PARTS if p in args.parts]:
        start = time.perf_counter()
        trace = None
        try:
            r["parts"][name] = runs[name]()
        except Exception as err:  # noqa: BLE001 - a part that fails is one line; the next part runs
            r["errors"][name] = _one_line(err)
            trace = traceback.format_exc()
        r["part_seconds"][name] = round(time.perf_counter() - start, 2)
        if on_part is not None:
            on_part(r, name, trace)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    r["seconds"] = time.perf_counter() - t0
    r["load_average_after"] = load_average()
    return r


def _cell(v, fmt="{:.2f}") -> str:
    return "-" if v is None else (fmt.format(v) if isinstance(v, (int, float)) else str(v))


def format_gpu(r: dict) -> str:
    lines = [f"# kava bench gpu: {Path(r['config']).name} ({r['model']}, {r['dtype']}, mixed precision "
             f"{r['mixed_precision']}, TF32 {r['tf32']}, {r['attention']}) on {r['device_name']}", ""]
    for name, err in r["errors"].items():
        lines.append(f"- **{name}** failed: {err}")
    p = r["parts"]
    if "training" in p:
        t = p["training"]
        s = t["seconds_per_step"]
        lines += ["", f"**training** (micro-batch {t['micro_batch_size']}): KaVa {s['kava']:.3f} s/step, CoT "
                      f"{s['cot']:.3f} s/step (KaVa/CoT {t['kava_over_cot']:.2f}); {t['tokens_per_second']:.0f} "
                      f"tokens/s; {t['flops_per_step'] / 1e9:.3g} GFLOP per step (counted); MFU "
                      f"{_cell(t['mfu'] and 100 * t['mfu'], '{:.1f}%')}"]
    if "memory" in p:
        m = p["memory"]["peak_gib"]
        sizes = list(m["no_checkpointing"]) or list(m["checkpointing"])
        lines += ["", f"**memory** (GiB, {p['memory']['kind']})", "", "| gradient checkpointing | "
                  + " | ".join(f"micro-batch {b}" for b in sizes) + " |", "|---|" + "---|" * len(sizes)]
        above = p["memory"].get("above_model_gib", {})
        for k, row in m.items():
            cells = [_cell(row.get(b)) + (f" ({above[k][b]:.2f} above the model)" if b in above.get(k, {}) else "")
                     for b in sizes]
            lines.append(f"| {k == 'checkpointing'} | " + " | ".join(cells) + " |")
    if "gemm_dtypes" in p:
        g = p["gemm_dtypes"]
        shares = ", ".join(f"{k} {100 * v:.1f}%" for k, v in g["share_by_dtype"].items())
        lines += ["",
                  f"**matrix products by dtype**, share of the step's {g['seconds_per_step']:.3f} s: "
                  f"{shares or 'none'}"]
    if "inference" in p:
        lines += [""] + [f"**inference** batch {b}: latent is {s['latent_vs_cot_seconds']:.2f}x faster per question "
                         f"than CoT ({s['latent_vs_cot_forward_passes']:.2f}x fewer forward passes)"
                         for b, s in p["inference"]["speedup"].items()]
    if "padding" in p:
        d = p["padding"]
        raw = d.get("non_finite_in_padding_rows_transformers_mask")
        lines += ["", f"**padding**: {d['padding_rows']} left-padding positions; non-finite values in them under "
                      f"transformers' mask: {_cell(raw, '{}')}; anywhere under kava's: {d['non_finite_kava_mask']}"]
    if "losses" in p:
        lines += ["", "**losses** at step 0 (config's KV reduction) and after the steps", "",
                  "| config | finite | balanced | gradient shares | losses |", "|---|---|---|---|---|"]
        for name, c in p["losses"].items():
            if "error" in c:
                lines.append(f"| {name} | error: {c['error']} | | | |")
            else:
                shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in c["shares"].items())
                lines.append(f"| {name} | {c['finite']} | {c['balanced']} | {shares} | "
                             + ", ".join(f"{x:.4g}" for x in c["losses"]) + " |")
    lines += ["", f"{r['seconds']:.0f} s in all" if "seconds" in r else "(running)"]
    return "\n".join(lines) + "\n"


def _cmd_gpu(args) -> int:
    from kava.io import atomic_write_text

    folder = Path(args.output_dir)

    def write(r, name, trace):
        write_json(folder / "gpu.json", r)
        atomic_write_text(folder / "gpu.md", format_gpu(r))
        if trace is not None:
            with open(folder / "gpu_errors.log", "a", encoding="utf-8") as f:
                f.write(f"--- {name}\n{trace}\n")
            print(f"kava bench gpu: {name} failed: {r['errors'][name]}", file=sys.stderr)

    result = run_gpu(args, on_part=write)
    write(result, None, None)
    print(format_gpu(result))
    print(f"wrote {folder / 'gpu.json'} and {folder / 'gpu.md'}", file=sys.stderr)
    return 1 if result["errors"] else 0
