"""`kava bench quality`: does the method work? No-CoT, CoT, PCCoT, CODI, Coconut and KaVa on one budget.

As in the paper, every method starts from the same pretrained model: a shared base model
(`configs/synthetic_tiny.yaml`: a ~0.6M-parameter Llama with a word-and-digit tokenizer)
is first trained from scratch with CoT fine-tuning on the generated 4-step arithmetic word
problems for `--base-steps` steps (0: no base model, every method starts from random
weights). Then every method is fine-tuned from it with the same code, data, optimizer steps,
batch and learning-rate schedule, and answers the same held-out problems (the generator's
test split) in its own mode:

    no_cot   train.method=direct                    evaluated with mode=direct
    cot      train.method=cot, all CoT steps        evaluated with mode=cot
    icot     train.method=icot: CoT tokens removed a token at a time over the
             first half of the steps (only with --only icot)  evaluated with mode=direct
    pccot    kava with kava.alpha_kv=0              evaluated with mode=latent
    codi     pccot with sequential latents (CODI's M = 6)
             and the CODI loss at the answer's first digit  evaluated with mode=latent
    coconut  sequential latents, no projection, CE only, the curriculum
             (2 latents per step, M = 6; stages 1..3 then the final stage, each
             stage 1/6 of the steps, the optimizer reset at each switch)  evaluated with mode=latent
    kava     the config as it is                    evaluated with mode=latent
    pause    kava with latent.num_iterations=0: the latent inputs are fixed
             <latent> embeddings, never fed back (the pause-token control)   evaluated with mode=latent

`--ablations` adds KaVa with each other compression method, without the CODI loss,
without the projection and with the last CoT step kept, and PCCoT and KaVa under the
curriculum (M latents at every stage; the written CoT shrinks stage by stage). The table reports accuracy,
mean forward passes per question and, for the latent methods, the share of the
No-CoT → CoT gap they close; `--seeds N` repeats every run with seeds 0..N-1 (training
order and the initialisation of the new weights) and reports mean ± sample std. The budget
is fixed in optimizer steps, not in wall time, so a result does not depend on the machine.
`--jobs N` trains N runs at a time, each in its own process (default: cores // threads).

Layout of `--output-dir` (default `runs/bench_quality`)::

    base/                 the base model's run; base/backbone/ its weights and tokenizer
    runs/<run>-seed<s>/   the training run (checkpoints, train_log.jsonl, config.yaml)
                          predictions.jsonl, result.json (written last: the run is done)
    results.json          every run's result and the summary per method
    results.md            the markdown table that is printed

Resumable: a run whose result.json exists is not repeated; an interrupted training
continues from its last checkpoint and an interrupted evaluation from its predictions.
`docs/quality.md` has the measured table and what it shows.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kava.config import CONFIGS_DIR
from kava.errors import KavaError
from kava.methods import METHODS

DEFAULT_CONFIG = CONFIGS_DIR / "synthetic_tiny.yaml"
DEFAULT_BASE_STEPS = 1500
COT_MAX_NEW_TOKENS = 160  # a test problem's CoT: ~45 tokens (equations), ~110 (nl); a model that rambles is cut off
# every latent run is also evaluated with other latents (kava.inference.latent_control)
LATENT_CONTROLS = ("shuffled", "pass0", "teacher")


@dataclass(frozen=True)
class Run:
    name: str
    label: str
    mode: str  # evaluation mode of kava.inference.generate
    overrides: tuple[str, ...] = ()
    stage_fraction: float | None = None  # a curriculum: each stage takes this share of train.max_steps
    split_latents: bool = False  # and its M latents are shared out over its stages (thoughts_per_step = M / stages)
    removal_fraction: float | None = None  # iCoT: its whole CoT is removed over this share of train.max_steps


# Each method's own settings are kava.methods.METHODS (also checked against the shipped configs);
# a run adds only the benchmark's: a curriculum starts at stage 1 (the base model is CoT-pretrained).
_CURRICULUM = ("curriculum.enabled=true", "curriculum.stages=3", "curriculum.start_stage=1")
# CODI and Coconut compute their latents one a pass, with their own papers' 6 latents (CODI: 6;
# Coconut: 2 per stage over 3 stages), not KaVa's 24: 24 sequential passes a step made them the
# benchmark's slowest runs by far, in a setting neither method uses.
BASELINES = (
    Run("no_cot", "No-CoT", "direct", METHODS["no_cot"]),
    Run("cot", "CoT", "cot", METHODS["cot"]),
    Run("pccot", "PCCoT", "latent", METHODS["pccot"]),
    Run("codi", "CODI", "latent", METHODS["codi"]),
    Run("coconut", "Coconut", "latent", (*METHODS["coconut"], "curriculum.start_stage=1"), stage_fraction=1 / 6,
        split_latents=True),
    Run("kava", "KaVa", "latent", METHODS["kava"]),
    # The pause control: the same student and losses, but the latent inputs are never fed back — every
    # slot reads the fixed <latent> embedding and pass 0 is the only latent pass (T = 0), so the M
    # positions add computation but no refinement. KaVa above it shows the fed-back latents compute;
    # KaVa equal to it, that extra positions are all it gains (Coconut's pause-token control).
    Run("pause", "Pause tokens (latents not fed back)", "latent", METHODS["pause"]),
)
# The base model learns the teacher's format (drop-last: the CoT without its last step, the last
# operation done at the answer), so the teacher knows the answer from the first fine-tuning step;
# pretrained on the full CoT instead, the jointly trained teacher had not learned the implicit
# last step after 400 steps and answered a constant, so its CODI target carried nothing.
# It trains every weight even where the fine-tuning config uses LoRA (a base model is pretrained, not adapted).
BASE = Run("base", "Base model (CoT pretraining in the teacher's format, shared)", "cot",
           ("train.method=cot", "lora.enabled=false"))
ABLATIONS = (
    Run("kava_crop", "KaVa, crop", "latent", ("kava.compression=crop",)),
    Run("kava_attention", "KaVa, attention only (λ=1)", "latent", ("kava.compression=attention",)),
    Run("kava_redundancy", "KaVa, redundancy only (λ=0)", "latent", ("kava.compression=redundancy",)),
    Run("kava_random", "KaVa, random", "latent", ("kava.compression=random",)),
    Run("kava_no_codi", "KaVa, no CODI loss", "latent", ("kava.alpha_codi=0",)),
    Run("kava_no_projection", "KaVa, no projection", "latent", ("latent.projection=false",)),
    Run("kava_keep_last", "KaVa, last CoT step kept", "latent", ("data.drop_last_step=false",)),
    # M against the CoT's length (24 tokens in configs/synthetic_tiny.yaml after drop-last):
    # R-KV must then choose which CoT entries the latents imitate
    Run("kava_m_half", "KaVa, M = 12 (½ of the CoT's tokens)", "latent", ("latent.num_latents=12",)),
    Run("kava_m_quarter", "KaVa, M = 6 (¼ of the CoT's tokens)", "latent", ("latent.num_latents=6",)),
    Run("pccot_curriculum", "PCCoT, curriculum", "latent", (*METHODS["pccot"], *_CURRICULUM), stage_fraction=1 / 6),
    Run("kava_curriculum", "KaVa, curriculum", "latent", _CURRICULUM, stage_fraction=1 / 6),
)
# iCoT removes the CoT a token at a time over the first half of the steps (as Coconut's curriculum
# takes the first half), then trains on No-CoT's sequence: icot.steps_per_token = round(steps / 2 / 32).
# 32 = the task's CoT with every step kept (4 steps of 8 tokens; tests/test_icot.py checks it). It
# needs at least 64 steps, so it runs by name only (--only icot), not in the default set.
ICOT_COT_TOKENS = 32
ICOT = Run("icot", "iCoT", "direct", (*METHODS["icot"], f"icot.remove_all_when_remove_beyond={ICOT_COT_TOKENS}"),
           removal_fraction=1 / 2)
# The benchmark config's departures from the paper's recipe, each undone alone (`--departures`):
# the evidence that each is needed at this scale.
DEPARTURES = (
    Run("kava_same_pass", "KaVa, targets from the same pass (the paper)", "latent",
        ("kava.teacher_targets=same_pass",)),
    Run("kava_lora", "KaVa, LoRA r = 8 (the paper trains LoRA)", "latent",
        ("lora.enabled=true", "lora.r=8", "lora.alpha=16")),
)
ALL_RUNS = {r.name: r for r in BASELINES + (ICOT,) + ABLATIONS + DEPARTURES}
TABLE_ORDER = ("base", *ALL_RUNS)


def register(sub) -> None:
    p = sub.add_parser(
        "quality",
        help="CPU-scale quality: No-CoT, CoT, PCCoT and KaVa trained on one budget",
        description=(
            "Pretrain a small base model on the generated arithmetic task (CoT), fine-tune No-CoT, CoT, "
            "PCCoT and KaVa from it with the same budget, and compare accuracy and forward passes on the "
            "task's held-out test split. The default (six methods, one seed) takes about 34 min on 2 CPU cores "
            "(measured: docs/quality.md); --seeds, --ablations and --only change that."
        ),
        epilog="example: kava bench quality --output-dir runs/bench_quality --seeds 3",
    )
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="base config (default: configs/synthetic_tiny.yaml)")
    p.add_argument("--output-dir", default="runs/bench_quality", help="where runs and tables go (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per method (default: 1)")
    p.add_argument("--ablations", action="store_true",
                   help="also the compression, CODI, projection and last-step ablations")
    p.add_argument("--departures", action="store_true",
                   help="also KaVa with each of the config's departures from the paper undone (targets from the same "
                        "pass; LoRA)")
    p.add_argument("--only", metavar="RUN[,RUN...]", help=f"only these runs, comma-separated: {', '.join(ALL_RUNS)}")
    p.add_argument("--steps", type=int, help="optimizer steps per run (default: the config's train.max_steps)")
    p.add_argument("--base-steps", type=int, default=DEFAULT_BASE_STEPS,
                   help="steps of the shared base model's CoT pretraining; 0 trains every method from scratch "
                        "(default: %(default)s)")
    p.add_argument("--test-size", type=int,
                   help="held-out test problems (default: the config's data.synthetic.num_test)")
    p.add_argument("--split", choices=("test", "validation"), default="test",
                   help="evaluate on the held-out test split (report) or the validation split (choose settings on it); "
                        "each split's results are kept apart (result.json, result-validation.json; default: test)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads per run (default: 1, fastest for this model size)")
    p.add_argument("--jobs", type=int, default=0,
                   help="runs trained at the same time, each in its own process with --threads threads "
                        "(default: 0 = as many as the CPU cores allow: cores // threads)")
    p.add_argument("--eval-batch-size", type=int, default=64, help="questions per generation batch (default: 64)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides applied to every run")
    p.set_defaults(func=_cmd_quality)


def _cmd_quality(args) -> int:
    if args.seeds < 1:
        raise KavaError(f"--seeds must be at least 1, got {args.seeds}")
    if args.jobs < 0 or args.threads < 1:
        raise KavaError(f"--jobs must be 0 (automatic) or more and --threads at least 1, got {args.jobs} and "
                        f"{args.threads}")
    if args.base_steps < 0:
        raise KavaError(f"--base-steps must be 0 (no base model) or more, got {args.base_steps}")
    runs = list(BASELINES + (ABLATIONS if args.ablations else ()) + (DEPARTURES if args.departures else ()))
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in ALL_RUNS]
        if unknown or not names:
            raise KavaError(f"--only: unknown run {', '.join(unknown) or '(none)'}; choose from {', '.join(ALL_RUNS)}")
        runs = [ALL_RUNS[n] for n in names]
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.max_steps={args.steps}")
    if args.test_size is not None:
        overrides.append(f"data.synthetic.num_test={args.test_size}")
    summary = run_quality(
        args.config, runs, seeds=args.seeds, output_dir=args.output_dir, overrides=overrides,
        threads=args.threads, eval_batch_size=args.eval_batch_size, progress=not args.no_progress,
        base_steps=args.base_steps, jobs=args.jobs, split=args.split,
    )
    print(summary["table"])
    return 0


def run_config(config: str | Path, run: Run, seed: int, run_dir: Path, overrides: list[str]):
    """The KavaConfig of one run: the base config, the run's switches, the seed, the folder."""
    from kava.config import load_config

    every = [*overrides, *run.overrides, f"seed={seed}", f"model.tiny.seed={seed}", f"output_dir={run_dir}",
             f"run_name=quality-{run.name}-seed{seed}"]
    if run.removal_fraction is not None:
        plain = load_config(config, every)
        if plain.train.max_steps is None:
            raise KavaError(f"run {run.name} sizes its removal schedule from train.max_steps; set it (or --steps)")
        tokens = plain.icot.remove_all_when_remove_beyond
        every.append(f"icot.steps_per_token={max(1, round(run.removal_fraction * plain.train.max_steps / tokens))}")
    if run.stage_fraction is None:
        return load_config(config, every)
    plain = load_config(config, [*every, "curriculum.enabled=false"])
    steps, M, stages = plain.train.max_steps, plain.latent.num_latents, plain.curriculum.stages
    if steps is None:
        raise KavaError(f"run {run.name} sizes its curriculum stages from train.max_steps; set it (or --steps)")
    every.append(f"curriculum.steps_per_stage={max(1, round(run.stage_fraction * steps))}")
    if run.split_latents:
        if M % stages:
            raise KavaError(f"run {run.name} shares latent.num_latents ({M}) out over {stages} stages; use a multiple "
                            f"of {stages}")
        every.append(f"curriculum.thoughts_per_step={M // stages}")
    return load_config(config, every)


def split_suffix(split: str) -> str:
    """File-name suffix of a split's results: none for test (result.json), "-validation" else."""
    return "" if split == "test" else f"-{split}"


def train_and_evaluate(cfg, run: Run, eval_batch_size: int = 64, progress: bool = True, split: str = "test") -> dict:
    """Train (or resume) one run, evaluate it on `split`, write result.json (result-validation.json); returns it."""
    from kava.data.eval_sets import held_out_examples
    from kava.evaluation.evaluate import evaluate_dataset, evaluate_latent_controls
    from kava.evaluation.latent_decoding import latent_decoding
    from kava.io import atomic_write_json, read_jsonl
    from kava.training.checkpoint import load_checkpoint
    from kava.training.trainer import train

    run_dir = Path(cfg.output_dir)
    if cfg.data.source != "synthetic":
        raise KavaError("kava bench quality needs a config with data.source: synthetic (its test split is generated)")
    t0 = time.perf_counter()
    final = train(cfg, resume="auto", show_progress=progress)
    train_wall = time.perf_counter() - t0
    log = read_jsonl(run_dir / "train_log.jsonl") if (run_dir / "train_log.jsonl").is_file() else []
    model, _tok, builder, _ = load_checkpoint(final)
    t0 = time.perf_counter()
    test = held_out_examples(cfg, split)
    suffix = split_suffix(split)
    common = dict(batch_size=eval_batch_size, predictions_path=run_dir / f"predictions{suffix}.jsonl",
                  progress=progress, dataset=f"synthetic-{split}")
    controls = {}
    if run.mode == "latent":
        k = cfg.kava
        both = evaluate_latent_controls(model, builder, test, list(LATENT_CONTROLS), **common, teacher_settings={
            "compression": k.compression, "lam": k.rkv_lambda, "move": k.kv_keys == "pre_rope"})
        res, controls = both["own"], both["controls"]
        controls["decoded"] = latent_decoding(model, builder, test, batch_size=eval_batch_size)
    else:
        res = evaluate_dataset(model, builder, test, mode=run.mode,
                               max_new_tokens=COT_MAX_NEW_TOKENS if run.mode == "cot" else None, **common)
    last = log[-1] if log else {}
    result = {
        "run": run.name, "label": run.label, "mode": run.mode, "seed": cfg.seed, "split": split,
        "accuracy": res["accuracy"], "n": res["n"], "correct": res["correct"],
        "forward_passes_mean": res["forward_passes_mean"], "generated_tokens_mean": res["generated_tokens_mean"],
        "steps": int(last.get("step", 0)),
        "train_seconds": round(sum(float(r.get("seconds", 0.0)) for r in log), 1),
        "train_wall_seconds": round(train_wall, 1),
        "eval_seconds": round(time.perf_counter() - t0, 1),
        "final_losses": {k: v for k, v in last.items() if k in ("loss", "ce_student", "ce_teacher", "codi", "kv")},
        "overrides": list(run.overrides),
        "model": cfg.model.name,
        "controls": controls,
    }
    atomic_write_json(run_dir / f"result{suffix}.json", result)
    return result


def run_quality(
    config: str | Path,
    runs: list[Run],
    seeds: int = 1,
    output_dir: str | Path = "runs/bench_quality",
    overrides: list[str] | None = None,
    threads: int | None = 1,
    eval_batch_size: int = 64,
    progress: bool = True,
    base_steps: int = 0,
    jobs: int = 1,
    split: str = "test",
) -> dict:
    """The base model (when base_steps > 0), then every run × seed fine-tuned from it (skipping
    finished ones; `jobs` at a time, 0 = cores // threads), then results.json and results.md."""
    import os

    import torch

    from kava.config import check_distillation_start
    from kava.io import atomic_write_json, atomic_write_text

    if threads:
        torch.set_num_threads(threads)
    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    out = Path(output_dir)
    overrides = list(overrides or [])
    results: list[dict] = []
    t_start = time.perf_counter()
    tasks = [(run, seed) for seed in range(seeds) for run in runs]
    if jobs == 0:
        jobs = max(1, (os.cpu_count() or 1) // max(1, threads or 1))
    jobs = min(jobs, len(tasks))
    if not base_steps:  # every run's config is refused here, before any training, if it cannot start
        for run, seed in tasks:
            check_distillation_start(run_config(config, run, seed, _run_dir(out, run, seed), overrides))
    if base_steps:
        # the base model trains alone, so it gets the threads of every job
        if threads:
            torch.set_num_threads(threads * max(1, jobs))
        base = _run_once(config, BASE, 0, out / "base", [*overrides, f"train.max_steps={base_steps}"],
                         eval_batch_size, progress, split)
        if threads:
            torch.set_num_threads(threads)
        results.append(base)
        overrides.append(f"model.name={_backbone_folder(out / 'base')}")
    if jobs <= 1:
        for run, seed in tasks:
            results.append(_run_once(config, run, seed, _run_dir(out, run, seed), overrides,
                                     eval_batch_size, progress, split))
    else:
        results += _run_parallel(config, tasks, out, overrides, eval_batch_size, jobs, threads, split)
    results += _other_finished_runs(config, out, overrides, results, split)
    order = {name: i for i, name in enumerate(TABLE_ORDER)}
    results.sort(key=lambda r: (order.get(r["run"], len(order)), r["seed"]))
    summary = summarize(results, [r for r in (BASE, *ALL_RUNS.values()) if any(x["run"] == r.name for x in results)])
    summary["wall_seconds_this_invocation"] = round(time.perf_counter() - t_start, 1)
    summary["split"] = split
    summary["table"] = format_table(summary)
    suffix = split_suffix(split)
    atomic_write_json(out / f"results{suffix}.json",
                      {k: v for k, v in summary.items() if k != "table"} | {"runs": results})
    atomic_write_text(out / f"results{suffix}.md", summary["table"] + "\n")
    return summary


def _run_dir(out: Path, run: Run, seed: int) -> Path:
    return out / "runs" / f"{run.name}-seed{seed}"


def _run_once(config, run: Run, seed: int, run_dir: Path, overrides: list[str], eval_batch_size: int,
              progress: bool, split: str = "test") -> dict:
    """One run's result: read from its result.json when finished, else trained (or resumed) and evaluated."""
    import json

    cfg = run_config(config, run, seed, run_dir, overrides)
    if not _same_config(run_dir, cfg):
        raise KavaError(f"{run_dir} holds a run made with another config (steps, task or overrides differ); "
                        "use another --output-dir")
    done = run_dir / f"result{split_suffix(split)}.json"
    if done.is_file():
        result = json.loads(done.read_text())
        print(f"quality: {run.name} seed {seed}: done earlier ({result['accuracy']:.1f}%)", file=sys.stderr)
        return result
    print(f"quality: {run.name} seed {seed}: training", file=sys.stderr)
    result = train_and_evaluate(cfg, run, eval_batch_size, progress, split)
    print(f"quality: {run.name} seed {seed}: {result['accuracy']:.1f}% "
          f"({result['forward_passes_mean']:.1f} forward passes)", file=sys.stderr)
    return result


def _worker_init(threads: int | None) -> None:
    import torch
    from transformers.utils import logging as hf_logging

    if threads:
        torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()


def _run_parallel(config, tasks: list[tuple[Run, int]], out: Path, overrides: list[str], eval_batch_size: int,
                  jobs: int, threads: int | None, split: str = "test") -> list[dict]:
    """The runs in `jobs` worker processes (spawned, so no state is shared), latent runs — the
    slowest — first; without progress bars, which would interleave. A failed run stops the
    benchmark with its error once the runs already started have finished (their results are kept)."""
    import concurrent.futures as cf
    import multiprocessing

    slow_first = sorted(tasks, key=lambda t: (t[0].mode != "latent", t[1]))
    print(f"quality: {len(tasks)} runs, {jobs} at a time (progress bars off; each run prints when it ends)",
          file=sys.stderr)
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                initializer=_worker_init, initargs=(threads,)) as pool:
        futures = [pool.submit(_run_once, config, run, seed, _run_dir(out, run, seed), overrides,
                               eval_batch_size, False, split) for run, seed in slow_first]
        try:
            return [f.result() for f in futures]
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _backbone_folder(base_dir: Path) -> Path:
    """The base run's final weights and tokenizer in one folder, loadable as `model.name` (made once)."""
    import shutil

    folder = (base_dir / "backbone").resolve()
    if not (folder / "config.json").is_file():
        final = base_dir / "checkpoint-final"
        tmp = folder.with_name("backbone.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(final / "model", tmp)
        for f in (final / "tokenizer").iterdir():
            shutil.copy2(f, tmp / f.name)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    return folder


def _same_config(run_dir: Path, cfg) -> bool:
    """True unless run_dir holds a run whose saved config differs from `cfg`."""
    import yaml

    from kava.config import config_to_dict

    saved = run_dir / "config.yaml"
    return not saved.is_file() or yaml.safe_load(saved.read_text()) == config_to_dict(cfg)


def _other_finished_runs(config, out: Path, overrides: list[str], results: list[dict],
                         split: str = "test") -> list[dict]:
    """Finished runs of earlier invocations (say, with --only) made with the same settings, for one table."""
    import json

    have = {(r["run"], r["seed"]) for r in results}
    found = []
    for path in sorted((out / "runs").glob(f"*-seed*/result{split_suffix(split)}.json")):
        r = json.loads(path.read_text())
        if r.get("run") not in ALL_RUNS or (r["run"], r["seed"]) in have:
            continue
        if _same_config(path.parent, run_config(config, ALL_RUNS[r["run"]], r["seed"], path.parent, overrides)):
            found.append(r)
    return found


def summarize(results: list[dict], runs: list[Run]) -> dict:
    """Per method: accuracy and forward passes, mean ± sample std over seeds; gap closed."""
    from kava.experiments.stats import summarize as mean_std

    methods = {}
    for run in runs:
        rs = [r for r in results if r["run"] == run.name]
        if not rs:
            continue
        acc = mean_std(r["accuracy"] for r in rs)
        fwd = mean_std(r["forward_passes_mean"] for r in rs)
        methods[run.name] = {
            "label": run.label, "mode": run.mode, "seeds": [r["seed"] for r in rs],
            "accuracy_mean": acc["mean"], "accuracy_std": acc["std"],
            "forward_passes_mean": fwd["mean"], "forward_passes_std": fwd["std"],
            "train_seconds_mean": sum(r["train_seconds"] for r in rs) / len(rs),
            "eval_seconds_mean": sum(r["eval_seconds"] for r in rs) / len(rs),
            "steps": rs[0]["steps"], "n_test": rs[0]["n"], "model": rs[0].get("model", ""),
            "controls": _summarize_controls(rs),
        }
    lo, hi = methods.get("no_cot"), methods.get("cot")
    for m in methods.values():
        gap = None
        if lo and hi and m["mode"] == "latent" and hi["accuracy_mean"] > lo["accuracy_mean"]:
            gap = (m["accuracy_mean"] - lo["accuracy_mean"]) / (hi["accuracy_mean"] - lo["accuracy_mean"])
        m["gap_closed"] = gap
        m["forward_pass_ratio_to_cot"] = m["forward_passes_mean"] / hi["forward_passes_mean"] if hi else None
    total = sum(r["train_seconds"] + r["eval_seconds"] for r in results)
    return {"methods": methods, "seconds_total": round(total, 1)}


CONTROL_COLUMNS = (  # (label, control, key)
    ("with another question's latents (%)", "shuffled", "accuracy"),
    ("latent reliance (points)", "shuffled", "reliance"),
    ("answers changed (%)", "shuffled", "changed"),
    ("T = 0 (%)", "pass0", "accuracy"),
    ("teacher's CoT KV (%)", "teacher", "accuracy"),
    ("results decoded, top-5 (%)", "decoded", "found"),
    ("… from another question's latents (%)", "decoded", "found_other"),
)


def _summarize_controls(rs: list[dict]) -> dict:
    """Per control column: mean ± sample std over the seeds that have it."""
    from kava.experiments.stats import summarize as mean_std

    out = {}
    for _, control, key in CONTROL_COLUMNS:
        vals = [r["controls"][control][key] for r in rs
                if r.get("controls", {}).get(control, {}).get(key) is not None]
        if vals:
            out[f"{control}.{key}"] = mean_std(vals)
    return out


def format_controls_table(methods: dict, seeds: int) -> list[str]:
    """The latent runs under the causal controls (kava.inference.latent_control)."""
    from kava.experiments.stats import format_mean_std

    latent = [m for m in methods.values() if m["mode"] == "latent" and m.get("controls")]
    if not latent:
        return []
    lines = ["", "Latent controls: the same test problems answered with another question's latents (reliance = "
             "own − shuffled accuracy), with T = 0, and with the teacher's compressed CoT keys/values in place of "
             "the latents; and the share of the CoT's intermediate results that some latent decodes to (top-5).", "",
             "| method | accuracy (%) | " + " | ".join(c[0] for c in CONTROL_COLUMNS) + " |",
             "|---" * (2 + len(CONTROL_COLUMNS)) + "|"]
    for m in latent:
        cells = []
        for _, control, key in CONTROL_COLUMNS:
            v = m["controls"].get(f"{control}.{key}")
            cells.append("-" if v is None else format_mean_std(v["mean"], v["std"] if v["n"] > 1 else None))
        acc = format_mean_std(m["accuracy_mean"], m["accuracy_std"] if len(m["seeds"]) > 1 else None)
        lines.append(f"| {m['label']} | {acc} | " + " | ".join(cells) + " |")
    return lines


def format_table(summary: dict) -> str:
    from kava.experiments.stats import format_mean_std, format_number

    methods = summary["methods"]
    tuned = [m for name, m in methods.items() if name != "base"]
    seeds = max((len(m["seeds"]) for m in tuned), default=1)
    n_test = next(iter(methods.values()))["n_test"] if methods else 0
    steps = tuned[0]["steps"] if tuned else 0
    if "base" in methods:
        start = f"fine-tuned from the base model ({methods['base']['steps']} steps of CoT pretraining)"
    elif tuned and tuned[0].get("model") and not tuned[0]["model"].startswith("tiny-"):
        start = f"fine-tuned from {tuned[0]['model']}"
    else:
        start = "trained from scratch"
    lines = [
        f"Synthetic {summary.get('split', 'test')} split: {n_test} problems; every method {start} for {steps} "
        f"optimizer steps; {seeds} seed{'s' if seeds != 1 else ''}" + (" (mean ± sample std)" if seeds > 1 else ""),
        "",
        "| method | eval mode | accuracy (%) | forward passes | × CoT passes | gap closed | train s | eval s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in methods.values():
        gap = "-" if m["gap_closed"] is None else f"{100 * m['gap_closed']:.0f}%"
        ratio = "-" if m["forward_pass_ratio_to_cot"] is None else f"{m['forward_pass_ratio_to_cot']:.2f}"
        lines.append(
            f"| {m['label']} | {m['mode']} | "
            f"{format_mean_std(m['accuracy_mean'], m['accuracy_std'] if len(m['seeds']) > 1 else None)} | "
            f"{format_mean_std(m['forward_passes_mean'], m['forward_passes_std'] if len(m['seeds']) > 1 else None)} | "
            f"{ratio} | {gap} | {format_number(m['train_seconds_mean'], 0)} | "
            f"{format_number(m['eval_seconds_mean'], 0)} |"
        )
    lines += format_controls_table(methods, seeds)
    lines.append("")
    footer = f"Train + eval time summed over the runs: {summary['seconds_total'] / 60:.1f} min"
    if summary.get("wall_seconds_this_invocation") is not None:
        footer += f"; wall time of this invocation: {summary['wall_seconds_this_invocation'] / 60:.1f} min"
    lines.append(footer)
    return "\n".join(lines)
