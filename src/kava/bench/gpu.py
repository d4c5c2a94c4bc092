"""`kava bench gpu`: the GPU check in one command, within minutes on one GPU.

On a CUDA device, for a random model of Llama-3.2-1B's shape in bf16 (`kava.model.shapes`:
speed does not depend on the weights, and nothing is downloaded), on the same random
examples (teacher length `--seq-len`):

- the training step (`kava.bench.speed`'s measurement) with SDPA, and with flash
  attention 2 when the `flash_attn` package is installed: seconds per step, tokens/s, MFU,
  peak memory and the KaVa/CoT ratio, KaVa with the question run twice, and both methods
  with gradient checkpointing;
- latent vs CoT (vs direct) inference at batch 1 and 16 (`kava.bench.infer`, fixed
  lengths: CoT decodes `--cot-tokens`, the paper's ≈ 65 passes), with the lower bounds;

and writes `gpu.json` and `gpu.md` (the tables) to `--output-dir`. Without a GPU it stops
with one line; `--device cpu` runs the same steps at a tiny shape (a dry run, and what the
tests run).

    kava bench gpu --output-dir runs/bench_gpu
    kava bench gpu --device cpu --output-dir /tmp/bench_gpu_dry
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

from kava.bench.common import TrainRun, bench_config, build_model, device_name, load_average, write_json
from kava.errors import KavaError

# per device: model, dtype, batch, teacher length, reps, questions, CoT tokens
DEFAULTS = {"cuda": ("llama-3.2-1b", "bf16", 16, 160, 5, 16, 65),
            "cpu": ("tiny-llama", "float32", 2, 32, 1, 2, 6)}


def register(sub) -> None:
    p = sub.add_parser(
        "gpu",
        help="the GPU check: training step (SDPA, flash attention, checkpointing) and latent vs CoT inference",
        description="Training and inference speed of a Llama-3.2-1B-shaped model in bf16 on one GPU; "
                    "writes gpu.json and gpu.md. --device cpu: a dry run at a tiny shape.",
        epilog="example: kava bench gpu --output-dir runs/bench_gpu",
    )
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (a tiny dry run)")
    p.add_argument("--model", help="model or shape (default: llama-3.2-1b on a GPU, tiny-llama on a CPU)")
    p.add_argument("--batch-size", type=int, help="training examples per step (default: 16 on a GPU)")
    p.add_argument("--seq-len", type=int, help="teacher length of the random examples (default: 160 on a GPU)")
    p.add_argument("--reps", type=int, help="timed steps per run (default: 5 on a GPU)")
    p.add_argument("--cot-tokens", type=int, help="CoT tokens decoded in inference (default: 65 on a GPU)")
    p.add_argument("--output-dir", required=True, help="folder for gpu.json and gpu.md")
    p.set_defaults(func=_cmd_gpu)


def _check_device(name: str):
    import torch

    if name.startswith("cuda") and not torch.cuda.is_available():
        raise KavaError("no CUDA GPU is visible here (torch.cuda.is_available() is False); "
                        "`kava bench gpu` measures a GPU — run it on one, or `--device cpu` for a dry run")
    if not (name.startswith("cuda") or name == "cpu"):
        raise KavaError(f"--device must be cuda or cpu, got {name!r}")
    return torch.device(name)


def run_gpu(args) -> dict:
    from kava.bench.infer import measure_inference
    from kava.bench.speed import VARIANTS, measure_training, token_counts, training_items

    device = _check_device(args.device)
    model, dtype, batch, seq_len, reps, questions, cot_tokens = DEFAULTS[device.type]
    model = args.model or model
    batch, seq_len = args.batch_size or batch, args.seq_len or seq_len
    reps, cot_tokens = args.reps or reps, args.cot_tokens or cot_tokens
    attns = ["sdpa"] + (["flash_attention_2"] if device.type == "cuda" and importlib.util.find_spec("flash_attn") else [])
    out = {"device": str(device), "device_name": device_name(device), "model": model, "dtype": dtype,
           "batch_size": batch, "seq_len": seq_len, "reps": reps, "load_average_before": load_average(),
           "attention": attns, "training": {}}
    t0 = time.perf_counter()
    for attn in attns:
        cfg = bench_config(model, dtype=dtype, attn=attn, batch_size=batch)
        _m, _tok, builder = build_model(cfg, device)
        del _m
        items = training_items(cfg, builder, batch, seq_len)
        runs = [TrainRun("kava", "kava"), TrainRun("cot", "cot"), *VARIANTS["question-twice"]]
        if attn == "sdpa":
            runs += VARIANTS["checkpointing"]
        train = measure_training(cfg, device, items, runs, reps=reps, warmup=1, memory=False)
        counts = token_counts(items, cfg.latent.num_latents, cfg.latent.num_iterations)
        twice = token_counts(items, cfg.latent.num_latents, cfg.latent.num_iterations, shared_question=False)
        train["tokens"] = {"kava": counts["real"]["kava"], "kava_question_twice": twice["real"]["kava"],
                           "cot": counts["real"]["cot"]}
        train["ideal_ratio"] = counts["padded"]["ideal_ratio"]
        train["mfu"] = _mfu(cfg, device, counts, train["seconds_per_step"])
        out["training"][attn] = train
    cfg = bench_config(model, dtype=dtype, attn="sdpa")
    m, _tok, builder = build_model(cfg, device)
    m.eval()
    examples = _questions(questions)
    out["inference"] = measure_inference(m, builder, examples, batch_sizes=(1, min(16, len(examples))), reps=max(1, reps // 2),
                                         warmup=1, lengths="fixed", cot_tokens=cot_tokens, answer_tokens=3)
    out["seconds"] = time.perf_counter() - t0
    out["load_average_after"] = load_average()
    return out


def _mfu(cfg, device, counts, seconds) -> dict:
    """Model FLOPs utilisation of each run (only on a GPU in bf16/fp16 whose peak is known)."""
    from kava.bench.speed import gpu_peak_flops, model_flops

    model, _tok, _b = build_model(cfg, device)
    peak = gpu_peak_flops(device, next(model.parameters()).dtype)
    if not peak:
        return {}
    flops = {m: model_flops(model, counts, m) for m in ("kava", "cot")}
    return {n: flops["cot" if n.startswith("cot") else "kava"] / s / peak for n, s in seconds.items()}


def _questions(n: int):
    """GSM8k test questions when the offline copy is installed, else generated ones."""
    from kava.data.eval_sets import EvalExample, load_eval_dataset

    try:
        return load_eval_dataset("gsm8k", "offline", n)
    except KavaError:
        from kava.data.synthetic import SyntheticTaskConfig, generate_splits

        rows = generate_splits(SyntheticTaskConfig(), 0, 0, n)["test"]
        return [EvalExample(f"synthetic-{i}", r["question"], float(r["answer"]), r["answer"]) for i, r in enumerate(rows)]


def format_gpu(r: dict) -> str:
    lines = [f"# kava bench gpu: {r['model']} ({r['dtype']}) on {r['device_name']}", "",
             f"Training: batch {r['batch_size']}, random examples of teacher length {r['seq_len']}, "
             f"median of {r['reps']} steps; {r['seconds']:.0f} s in all.", "",
             "| attention | run | s / step | tokens / s | MFU | peak memory MB |", "|---|---|---|---|---|---|"]
    for attn, t in r["training"].items():
        for n, s in t["seconds_per_step"].items():
            tokens = t["tokens"]["cot" if n.startswith("cot") else ("kava_question_twice" if "twice" in n else "kava")]
            mfu = f"{100 * t['mfu'][n]:.1f}%" if n in t["mfu"] else "-"
            mem = t.get("peak_memory_mb", {}).get(n)
            lines.append(f"| {attn} | {n} | {s:.4f} | {tokens / s:.0f} | {mfu} | {'-' if mem is None else f'{mem:.0f}'} |")
    lines += ["", "| attention | ratio | median | pair by pair |", "|---|---|---|---|"]
    for attn, t in r["training"].items():
        for c in t["comparisons"].values():
            lines.append(f"| {attn} | {c['label']} | {c['ratio']:.3f} | {c['ratio_per_pair_median']:.3f} |")
        lines.append(f"| {attn} | KaVa / CoT ideal (padded tokens) | {t['ideal_ratio']:.3f} | |")
    from kava.bench.infer import format_inference

    lines += ["", format_inference(r["inference"])]
    return "\n".join(lines) + "\n"


def _cmd_gpu(args) -> int:
    result = run_gpu(args)
    text = format_gpu(result)
    folder = Path(args.output_dir)
    write_json(folder / "gpu.json", result)
    from kava.io import atomic_write_text

    atomic_write_text(folder / "gpu.md", text)
    print(text)
    print(f"wrote {folder / 'gpu.json'} and {folder / 'gpu.md'}", file=sys.stderr)
    return 0
