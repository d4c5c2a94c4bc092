"""What a reproduction costs: estimated training GPU hours per config (`kava reproduce --dry-run`).

A rough estimate, documented as such (docs/reproducing.md): the point is the order of
magnitude (hours vs days), not a schedule.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from kava.config import KavaConfig, load_config
from kava.errors import KavaError
from kava.experiments.sweep import validate_seeds

# Rough estimates, documented as such: the point is the order of magnitude (hours vs
# days), not a schedule. Every token a training step processes is priced as one
# forward+backward token (the teacher's pass runs with gradient, docs/algorithm.md §3; so do
# the student's passes, §2). Per training example (method kava):
#
#   teacher tokens  = avg_tokens                       (Q + CoT + P + A)
#   student tokens  = question_tokens + (T + 1) * M + ANSWER_PASS_TOKENS
#                     (pass 0 over Q + <bot> + M latents, T Jacobi passes over the M
#                      latents, then <eot> + P + A; latent.mode sequential: M, one a pass)
#   tokens/example  = teacher + student   (method cot: teacher only; direct: Q + P + A)
#   train_tokens    = epochs * rows * tokens/example
#                     (with train.max_steps set: max_steps * global_batch_size replaces epochs * rows)
#   gpu_hours       = train_tokens / (TOKENS_PER_SECOND_1B / params_in_billions) / 3600
#
# with T = latent.num_iterations and M = latent.num_latents. Evaluation is not included
# (minutes per dataset). Short latent passes run below peak throughput, which the
# throughput constant is meant to absorb.

#: Training throughput (tokens/s, forward+backward, bf16 weights, LoRA) of a 1B-parameter
#: model on one A100-80GB / H100; assumed to scale as 1 / parameter count.
TOKENS_PER_SECOND_1B = 20_000.0
#: Tokens of the student's last pass: ``<eot>`` + ``The answer is:`` + the answer + EOS.
ANSWER_PASS_TOKENS = 12
#: Training rows of known datasets, keyed by the last part of ``data.dataset`` lowercased
#: (GSM8k-Aug and GSM8k-Aug-NL: 385,620; the offline GSM8k train sets: 7,473).
#: ``synthetic`` reads ``data.synthetic.num_train`` instead.
DATASET_ROWS = {
    "gsm8k-aug": 385_620,
    "gsm8k-aug-nl": 385_620,
    "gsm8k-train-equations": 7_473,
    "gsm8k-train-nl": 7_473,
    "gsm8k": 7_473,
}
#: Average tokens per training example (question + chain of thought + answer).
DATASET_AVG_TOKENS = {
    "gsm8k-aug": 120,
    "gsm8k-aug-nl": 200,
    "gsm8k-train-equations": 150,
    "gsm8k-train-nl": 200,
    "gsm8k": 200,
    "synthetic": 60,
}
#: Average question tokens (GSM8k-style questions: about 60 tokens).
DATASET_QUESTION_TOKENS = {"synthetic": 20}
DEFAULT_QUESTION_TOKENS = 60
DEFAULT_ROWS = 385_620
DEFAULT_AVG_TOKENS = 150
#: Model size assumed when none can be read from the config or the model name.
DEFAULT_PARAMS_B = 1.0

_SIZE_RE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*([bBmM])(?![a-zA-Z])")


def model_params_b(name: str | None) -> float | None:
    """Parameters in billions read from a model name: ``"Llama-3.2-1B-Instruct"`` -> 1.0."""
    if not name:
        return None
    found = _SIZE_RE.findall(str(name).split("/")[-1])
    if not found:
        return None
    num, unit = found[-1]
    value = float(num) / (1000.0 if unit.lower() == "m" else 1.0)
    return value if value > 0 else None


def _table_key(name: str | None) -> str:
    """The key of `data.dataset` in the tables above: its last path part, lowercased, `-` for `_`."""
    return str(name or "").split("/")[-1].strip().lower().replace("_", "-")


def plan_reproduction(configs: Iterable[KavaConfig | str | os.PathLike], seeds: Iterable[int] | int) -> list[dict]:
    """Estimated training GPU hours per config (for ``kava reproduce --dry-run``).

    ``configs``: config files (read as ``kava train`` reads them; labelled by their path) or
    KavaConfig objects (labelled by their ``run_name``). ``seeds``: the seeds
    (or how many). See the formula and constants above; all numbers are rough estimates on one
    A100/H100.
    """
    seed_list = validate_seeds(range(seeds)) if isinstance(seeds, int) and not isinstance(seeds, bool) \
        else validate_seeds(seeds)
    plan = []
    for c in configs:
        cfg, label = (load_config(c), str(c)) if isinstance(c, (str, os.PathLike)) else (c, c.run_name)
        notes = []
        params = model_params_b(cfg.model.name)
        if params is None:
            params = DEFAULT_PARAMS_B
            notes.append(f"model size unknown, assumed {DEFAULT_PARAMS_B:g}B")
        key = _table_key(cfg.data.dataset)
        rows = cfg.data.synthetic.num_train if cfg.data.source == "synthetic" else DATASET_ROWS.get(key)
        if rows is None:
            rows = DEFAULT_ROWS
            notes.append(f"dataset size unknown, assumed {DEFAULT_ROWS:,} rows")
        if cfg.data.max_train_examples is not None:
            rows = min(rows, cfg.data.max_train_examples)
        avg = DATASET_AVG_TOKENS.get(key, DEFAULT_AVG_TOKENS)
        t, latent = cfg.train, cfg.latent
        # optimizer steps override epochs, as in training
        examples_seen = t.max_steps * t.global_batch_size if t.max_steps is not None else t.epochs * rows
        question = float(DATASET_QUESTION_TOKENS.get(key, DEFAULT_QUESTION_TOKENS))
        if t.method in ("cot", "icot"):  # iCoT: at most the CoT's tokens (its CoT shrinks)
            per_example = avg
        elif t.method == "direct":
            per_example = question + ANSWER_PASS_TOKENS
        else:  # the latent block is run T + 1 times in parallel (jacobi), or once, a latent a pass (sequential)
            blocks = 1 if latent.mode == "sequential" else latent.num_iterations + 1
            per_example = avg + question + blocks * latent.num_latents + ANSWER_PASS_TOKENS
        train_tokens = examples_seen * per_example
        tokens_per_s = TOKENS_PER_SECOND_1B / params
        per_seed = train_tokens / tokens_per_s / 3600.0
        plan.append({
            "config": label,
            "model": cfg.model.name,
            "params_b": params,
            "dataset": cfg.data.dataset,
            "rows": int(rows),
            "avg_tokens": float(avg),
            "epochs": t.epochs,
            "examples_seen": examples_seen,
            "num_latents": latent.num_latents,
            "num_iterations": latent.num_iterations,
            "method": t.method,
            "tokens_per_example": per_example,
            "train_tokens": train_tokens,
            "tokens_per_second": tokens_per_s,
            "gpu_hours_per_seed": per_seed,
            "seeds": seed_list,
            "n_seeds": len(seed_list),
            "gpu_hours": per_seed * len(seed_list),
            "notes": notes,
        })
    if not plan:
        raise KavaError("no configs given")
    return plan


def format_plan(plan: list[dict]) -> str:
    """A readable table of :func:`plan_reproduction`'s output, with the total."""
    header = ["config", "model", "dataset", "epochs", "T", "GPU h/seed", "seeds", "GPU h"]
    rows = [header]
    for p in plan:
        rows.append([p["config"], p["model"], p["dataset"], f"{p['epochs']:g}", str(p["num_iterations"]),
                     f"{p['gpu_hours_per_seed']:.1f}", str(p["n_seeds"]), f"{p['gpu_hours']:.1f}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j < 3 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    total = sum(p["gpu_hours"] for p in plan)
    lines.append(f"total: about {total:.0f} GPU hours on one A100/H100 (rough estimate; training only)")
    for p in plan:
        for n in p["notes"]:
            lines.append(f"note ({p['config']}): {n}")
    return "\n".join(lines) + "\n"
