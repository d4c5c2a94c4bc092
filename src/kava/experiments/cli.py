"""`kava sweep`, `kava aggregate`, `kava compare` and `kava reproduce` (registered by `kava.cli`).

    kava sweep --config configs/tiny.yaml --seeds 42 43 44 --output-dir experiments \\
        --datasets gsm8k svamp --source offline --limit 100
    kava aggregate --experiments-dir experiments --output experiments/table.csv
    kava compare experiments/run_a experiments/run_b
    kava reproduce --dry-run

Exit codes: 0 success; 1 when some seed of a sweep (or reproduction) failed: the other
seeds still ran, every failure is recorded in its seed's ``status.yaml`` and re-running the
same command retries only what is missing or failed; 2 a user error (``error: ...``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from kava.errors import KavaError

#: The six configs of the paper's Table 1 / Table 6 (docs/reproducing.md), in table order.
PAPER_CONFIGS = (
    "llama1b_aug",
    "llama1b_aug_nl",
    "qwen05b_aug",
    "qwen05b_aug_nl",
    "llama3b_aug",
    "llama3b_aug_nl",
)
DEFAULT_SEEDS = (42, 43, 44)
DEFAULT_DATASETS = ("gsm8k", "gsm8k-hard", "svamp")

SWEEP_EXAMPLE = """examples:
  kava sweep --config llama1b_aug --seeds 42 43 44 --output-dir experiments
  kava sweep --config configs/tiny.yaml --seeds 1 2 --output-dir /tmp/exp \\
      --datasets gsm8k svamp --source offline --limit 8
  kava sweep --config configs/llama1b_aug.yaml --seeds 42 43 44 --devices 0,1,2     (3 seeds in parallel)
  kava sweep --config configs/llama1b_aug.yaml --seeds 42 --run-name lr4e-4 train.lr=4e-4

Layout: OUTPUT_DIR/RUN_NAME/seed_<s>/{checkpoint-final, train_log.jsonl, results_<dataset>.yaml,
status.yaml, train.out, eval.out} and OUTPUT_DIR/RUN_NAME/{run.yaml, all_seeds_results.yaml,
summary.yaml, summary.csv}. Re-running the same command skips finished seeds and retries only
what is missing or failed. std is the sample standard deviation (ddof=1) over seeds."""

AGGREGATE_EXAMPLE = """examples:
  kava aggregate --experiments-dir experiments --output experiments/table.csv
  kava aggregate --experiments-dir experiments/llama1b_aug          (one run)

Writes table.csv, table.tex (booktabs), table.md and table.png (accuracy vs forward passes)
next to --output, refreshes every run's summary.yaml/summary.csv/all_seeds_results.yaml, and
prints the Markdown table. Cells are mean ± sample std (ddof=1) over seeds; "(n=K)" marks a
dataset with fewer seeds than the run. Unreadable results files are reported and skipped."""

COMPARE_EXAMPLE = """examples:
  kava compare experiments/llama1b_aug experiments/llama1b_aug_nl
  kava compare experiments/kava experiments/pccot --alpha 0.01

Per dataset both runs have: mean ± std accuracy of each, the difference A - B, the 2-std rule
(A is better if mean_A - 2 std_A > mean_B + 2 std_B) and Welch's two-sided t-test."""

REPRODUCE_EXAMPLE = """examples:
  kava reproduce --dry-run                                    (the plan and its GPU hours)
  kava reproduce --output-dir experiments --devices 0,1,2,3
  kava reproduce --configs configs/llama1b_aug.yaml configs/qwen05b_aug.yaml --seeds 42 43 44

Runs `kava sweep` for every config (run name = the config's file name), then `kava aggregate`
into OUTPUT_DIR/table.{csv,tex,md,png}. Resumable like sweep: re-run the same command after an
interruption or a failure. Needs the hub datasets and models (Llama is gated: hf auth login)."""


class _RawEpilog(argparse.HelpFormatter):
    """argparse's default formatter, keeping the epilog's line breaks."""

    def _fill_text(self, text, width, indent):
        if "\n" not in text:
            return super()._fill_text(text, width, indent)
        return "".join(indent + line for line in text.splitlines(keepends=True))


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _positive_int(text: str) -> int:
    value = _nonneg_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _add_eval_options(p) -> None:
    p.add_argument(
        "--datasets", nargs="+", default=list(DEFAULT_DATASETS), metavar="NAME",
        help="evaluation sets: names (default: gsm8k gsm8k-hard svamp; see `kava evaluate --help`) "
        "or .jsonl files with question and answer",
    )
    p.add_argument("--source", choices=("hub", "offline"),
                   help="where evaluation sets come from (passed to kava evaluate; its default is hub)")
    p.add_argument("--limit", type=_positive_int, metavar="N",
                   help="evaluate on the first N examples of each dataset only (smoke runs)")
    p.add_argument("--eval-batch-size", type=_positive_int, metavar="N",
                   help="questions per batch in kava evaluate (its default: 16)")
    p.add_argument("--devices", metavar="0,1,2",
                   help="GPUs to use: seeds run in parallel, one process per device (CUDA_VISIBLE_DEVICES). "
                   "Default: one after another with the environment as it is")


def _at_least(minimum: int):
    def parse(text: str) -> int:
        value = _nonneg_int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}")
        return value

    return parse


def launcher_flags() -> list[tuple[str, str, dict]]:
    """(field, flag, add_argument keywords) for every field of `kava.config.LauncherConfig`: the
    flag is the field's name with dashes; a list field's flag is repeatable and in the singular;
    the type, the lowest value, the help and the default come from the schema."""
    from typing import get_args, get_origin

    from kava.config import LauncherConfig

    out = []
    for name, field in LauncherConfig.model_fields.items():
        kinds = [t for t in get_args(field.annotation) or (field.annotation,) if t is not type(None)]
        extra = field.json_schema_extra or {}
        repeated = get_origin(field.annotation) is list
        kwargs: dict = {"dest": name, "help": field.description}
        if field.default not in (None, []):
            kwargs["help"] += f" (default {field.default})"
        if repeated:
            kwargs.update(action="append", help=kwargs["help"] + "; repeatable")
        elif kinds == [int]:
            low = next((m.ge for m in field.metadata if getattr(m, "ge", None) is not None), None)
            kwargs["type"] = _at_least(low) if low is not None else int
        elif kinds == [float]:
            kwargs["type"] = float
        flag = "--" + (name[:-1] if repeated and name.endswith("s") else name).replace("_", "-")
        kwargs["metavar"] = extra.get("metavar") or ("N" if "type" in kwargs else flag[2:].upper())
        out.append((name, flag, kwargs))
    return out


def _add_launcher_options(p) -> None:
    from kava.experiments.launch import LAUNCHERS

    g = p.add_argument_group(
        "cluster jobs (--launcher slurm; defaults from the config's launcher: section, see docs/cluster.md)")
    g.add_argument("--launcher", choices=LAUNCHERS, default="local",
                   help="local: run the seeds here (default); slurm: one submitit job per seed, in one job array; "
                   "submitit-local: the same jobs through submitit's local executor, on this machine")
    for _, flag, kwargs in launcher_flags():
        g.add_argument(flag, **kwargs)
    g.add_argument("--wait", action="store_true",
                   help="wait for the jobs and print the summary (default: submit, print the job ids, return)")


def _launcher_args(args) -> list[str]:
    """The launcher flags given, as command-line tokens (for --dry-run's commands)."""
    if args.launcher == "local":
        return []
    out = ["--launcher", args.launcher]
    for name, flag, _ in launcher_flags():
        value = getattr(args, name, None)
        for v in (value if isinstance(value, list) else [value] if value is not None else []):
            out.append(f"{flag}={shlex.quote(str(v))}")
    if args.wait:
        out.append("--wait")
    return out


def launcher_config(config_path, args):
    """The config's ``launcher:`` section with the command line's flags on top, validated."""
    from pydantic import ValidationError

    from kava.config import LauncherConfig, load_config

    # (--eval-only without the config file: the flags alone)
    section = load_config(config_path).launcher.model_dump() if Path(config_path).is_file() else {}
    flags = {name: getattr(args, name) for name, _, _ in launcher_flags() if getattr(args, name, None) is not None}
    try:
        return LauncherConfig.model_validate({**section, **flags})
    except ValidationError as err:
        e = err.errors()[0]
        where = ".".join(str(x) for x in e["loc"]) or "launcher"
        raise KavaError(f"invalid launcher setting {where}: {e['msg']} (see docs/cluster.md)") from None


def _split_overrides(args) -> None:
    """Move ``key=value`` tokens that argparse gave to --seeds/--datasets (``--seeds 1 2
    train.lr=1e-4``: a list option swallows the positionals after it) to the overrides, and
    check the seeds."""
    from kava.experiments.sweep import validate_seeds

    moved: list[str] = []
    for name in ("seeds", "datasets"):
        values = getattr(args, name, None)
        if values is None:
            continue
        keep = []
        for v in values:
            (moved if isinstance(v, str) and "=" in v else keep).append(v)
        setattr(args, name, keep)
    if hasattr(args, "overrides"):
        args.overrides = moved + list(args.overrides or [])
    elif moved:
        raise KavaError(f"unexpected argument(s) {' '.join(moved)} (this command takes no config overrides)")
    if not args.datasets and not getattr(args, "train_only", False):
        raise KavaError("no datasets given; pass e.g. --datasets gsm8k gsm8k-hard svamp")
    args.seeds = validate_seeds(args.seeds)


def _eval_args(args) -> list[str]:
    out: list[str] = []
    if args.source is not None:
        out += ["--source", args.source]
    if args.limit is not None:
        out += ["--limit", str(args.limit)]
    if args.eval_batch_size is not None:
        out += ["--batch-size", str(args.eval_batch_size)]
    return out


# ----- kava sweep ----------------------------------------------------------------------------


def _add_sweep(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="train and evaluate one config over several seeds (resumable), then summarize",
        description=(
            "Train and evaluate CONFIG once per seed, each seed in its own processes, and write the "
            "run's per-dataset mean ± std (sample std, ddof=1) over seeds. A finished seed is skipped, "
            "a failing seed is recorded with its error while the others go on, and re-running the same "
            "command retries only what is missing or failed. Exits 1 if some seed failed."
        ),
        epilog=SWEEP_EXAMPLE,
        formatter_class=_RawEpilog,
    )
    p.add_argument("--config", help="a YAML config file, or the name of a shipped config (kava configs lists them)")
    p.add_argument("--status", metavar="RUN_DIR",
                   help="show which seeds of a run (OUTPUT_DIR/RUN_NAME) are queued, running, done or failed; run "
                        "nothing")
    p.add_argument("--seeds", nargs="+", default=list(DEFAULT_SEEDS), metavar="SEED",
                   help="seeds to run (default: 42 43 44)")
    p.add_argument("--output-dir", default="experiments", help="experiments folder (default: experiments)")
    p.add_argument("--run-name", help="the run's folder name (default: the config file's name without .yaml)")
    _add_eval_options(p)
    _add_launcher_options(p)
    only = p.add_mutually_exclusive_group()
    only.add_argument("--train-only", action="store_true", help="train the seeds, do not evaluate")
    only.add_argument("--eval-only", action="store_true",
                      help="evaluate the checkpoints already there; never train")
    p.add_argument("--no-progress", action="store_true",
                   help="one line per stage instead of progress bars (the sweep's and the running training's)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value",
                   help="config overrides passed to kava train (recorded in run.yaml)")
    p.set_defaults(func=_cmd_sweep)


def _print_sweep_result(res: dict, out=None) -> None:
    out = out or sys.stdout
    summary = res["summary"]
    print(f"run {res['run_name']}: {res['run_dir']}", file=out)
    for seed, r in res["seeds"].items():
        if r["action"] in ("submitted", "queued"):
            what = "submitted" if r["action"] == "submitted" else "already queued or running"
            print(f"  seed {seed}: {what} as job {r['job_id']}", file=out)
            continue
        state = {"ran": "done", "skipped": "already done (skipped)", "failed": "FAILED"}[r["action"]]
        print(f"  seed {seed}: {state} (train: {r['train']}, eval: {r['eval']})", file=out)
    print(_run_summary_table(summary), file=out)
    if res.get("submitted"):
        print(f"follow the jobs with: kava sweep --status {res['run_dir']}  (then re-run this command, "
              "or kava aggregate, once they are done)", file=out)


def _run_summary_table(summary: dict) -> str:
    from kava.experiments.stats import format_mean_std, format_number

    datasets = summary.get("datasets") or {}
    head = f"summary over {summary['n_seeds']} seed(s) {summary['seeds']} (mean ± sample std):"
    if not datasets:
        return head + "\n  (no results yet)"
    rows = [("dataset", "accuracy (%)", "forward passes", "seeds")]
    for ds, s in datasets.items():
        rows.append((ds, format_mean_std(s["accuracy_mean"], s["accuracy_std"], 2),
                     format_mean_std(s["forward_passes_mean"], s["forward_passes_std"], 1)
                     if s["forward_passes_mean"] is not None else format_number(None),
                     str(s["n_seeds"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [head]
    for j, r in enumerate(rows):
        lines.append("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _report_failures(res: dict) -> None:
    for seed in res["failed"]:
        err = res["seeds"][seed].get("error") or "failed"
        lines = [ln for ln in str(err).splitlines() if ln.strip()]
        print(f"error: {res['run_name']} seed {seed}: {lines[0]}", file=sys.stderr)
        if len(lines) > 2 and lines[1].startswith("last lines of the log"):
            print(f"  last line of the log: {lines[-1].strip()}", file=sys.stderr)
    if res["failed"]:
        print(
            f"{len(res['failed'])} of {len(res['seeds'])} seed(s) failed (details in each seed's status.yaml and "
            f"train.out/eval.out); fix the cause and re-run the same command to retry only those",
            file=sys.stderr,
        )


def _sweep(config, args, run_name=None):
    from kava.experiments.sweep import run_sweep

    return run_sweep(
        config,
        args.seeds,
        args.output_dir,
        args.datasets,
        devices=args.devices,
        train_only=getattr(args, "train_only", False),
        eval_only=getattr(args, "eval_only", False),
        run_name=run_name,
        overrides=list(getattr(args, "overrides", []) or []),
        eval_args=_eval_args(args),
        launcher=args.launcher,
        launcher_config=launcher_config(config, args) if args.launcher != "local" else None,
        wait=args.wait,
        show_progress=not args.no_progress,
    )


def _cmd_sweep(args) -> int:
    if args.status is not None:
        from kava.experiments.launch import format_status, run_status

        print(format_status(run_status(args.status)), end="")
        return 0
    if args.config is None:
        raise KavaError("kava sweep needs --config CONFIG (or --status RUN_DIR to look at a run)")
    from kava.config import resolve_config_path

    _split_overrides(args)
    res = _sweep(str(resolve_config_path(args.config)), args, run_name=args.run_name)
    _print_sweep_result(res)
    _report_failures(res)
    return 1 if res["n_failed"] else 0


# ----- kava aggregate ------------------------------------------------------------------------


def _add_aggregate(sub) -> None:
    p = sub.add_parser(
        "aggregate",
        help="paper-ready tables (CSV, LaTeX, Markdown, plot) over every run of an experiments folder",
        description=(
            "Summarize every run (a folder with seed_* folders) under --experiments-dir and write one table "
            "row per run: model, training data, per dataset mean ± sample std (ddof=1) accuracy over seeds "
            "and mean forward passes. Prints the Markdown table."
        ),
        epilog=AGGREGATE_EXAMPLE,
        formatter_class=_RawEpilog,
    )
    p.add_argument("--experiments-dir", default="experiments", help="experiments folder (default: experiments)")
    p.add_argument("--output", metavar="TABLE.csv",
                   help="the CSV table; .tex, .md and .png go next to it (default: EXPERIMENTS_DIR/table.csv)")
    p.set_defaults(func=_cmd_aggregate)


def _aggregate_and_print(experiments_dir, output) -> dict:
    from kava.experiments.aggregate import aggregate

    res = aggregate(experiments_dir, output)
    print(res["markdown"], end="")
    outs = res["outputs"]
    print(f"\nwrote {outs['csv']}, {outs['tex']}, {outs['md']} and {outs['png']}")
    if res["warnings"]:
        print(f"{len(res['warnings'])} warning(s) above: those files were skipped", file=sys.stderr)
    return res


def _cmd_aggregate(args) -> int:
    _aggregate_and_print(args.experiments_dir, args.output)
    return 0


# ----- kava compare --------------------------------------------------------------------------


def _add_compare(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="is run A significantly better than run B? (2-std rule and Welch's t-test, per dataset)",
        description=(
            "Compare the per-seed accuracies of two runs (experiments/<run-name> folders) on every dataset "
            "both have: the 2-std non-overlap rule and Welch's two-sided t-test, with the numbers."
        ),
        epilog=COMPARE_EXAMPLE,
        formatter_class=_RawEpilog,
    )
    p.add_argument("run_a", metavar="RUN_A", help="a run folder, e.g. experiments/llama1b_aug")
    p.add_argument("run_b", metavar="RUN_B", help="another run folder")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the t-test (default 0.05)")
    p.set_defaults(func=_cmd_compare)


def _cmd_compare(args) -> int:
    from kava.experiments.compare import compare_runs, format_comparison

    if not 0 < args.alpha < 1:
        raise KavaError(f"--alpha must be between 0 and 1, got {args.alpha}")
    if Path(args.run_a).resolve() == Path(args.run_b).resolve():
        raise KavaError(f"RUN_A and RUN_B are the same folder ({args.run_a}); compare two different runs")
    print(format_comparison(compare_runs(args.run_a, args.run_b, alpha=args.alpha)), end="")
    return 0


# ----- kava reproduce ------------------------------------------------------------------------


def _add_reproduce(sub) -> None:
    p = sub.add_parser(
        "reproduce",
        help="the paper's Table 1: every Table 6 config x 3 seeds, then aggregate (resumable; --dry-run)",
        description=(
            "Reproduce the paper's main table: `kava sweep` over the six Table 6 configs "
            f"({', '.join(PAPER_CONFIGS)}) and the seeds, then `kava aggregate`. --dry-run prints the plan "
            "with estimated GPU hours and runs nothing. Resumable: re-run the same command."
        ),
        epilog=REPRODUCE_EXAMPLE,
        formatter_class=_RawEpilog,
    )
    p.add_argument("--configs", nargs="+", metavar="CONFIG",
                   help="config files or shipped configs' names (default: the six paper configs)")
    p.add_argument("--seeds", nargs="+", default=list(DEFAULT_SEEDS), metavar="SEED",
                   help="seeds (default: 42 43 44)")
    p.add_argument("--output-dir", default="experiments", help="experiments folder (default: experiments)")
    p.add_argument("--output", metavar="TABLE.csv", help="the table (default: OUTPUT_DIR/table.csv)")
    _add_eval_options(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan and its estimated GPU hours; run nothing")
    p.add_argument("--no-progress", action="store_true",
                   help="one line per stage instead of progress bars (the sweep's and the running training's)")
    _add_launcher_options(p)
    p.set_defaults(func=_cmd_reproduce)


def default_paper_configs() -> list[Path]:
    """The six paper configs: ``configs/`` in the working directory, else the shipped ones."""
    from kava.config import CONFIGS_DIR

    candidates = [Path.cwd() / "configs", CONFIGS_DIR]
    for d in candidates:
        paths = [d / f"{name}.yaml" for name in PAPER_CONFIGS]
        if all(p.is_file() for p in paths):
            try:
                return [p.relative_to(Path.cwd()) for p in paths]
            except ValueError:
                return paths
    raise KavaError(
        "the paper configs (llama1b_aug, ...) were found neither in ./configs nor among the shipped configs; "
        "pass --configs"
    )


def _cmd_reproduce(args) -> int:
    from kava.config import resolve_config_path
    from kava.experiments.plan import format_plan, plan_reproduction

    _split_overrides(args)
    configs = [resolve_config_path(c) for c in args.configs] if args.configs else default_paper_configs()
    names = [c.stem for c in configs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise KavaError(f"two configs share the run name {dup[0]!r} (the file name); rename one")
    seeds = args.seeds
    plan = plan_reproduction(configs, seeds)
    table = Path(args.output) if args.output else Path(args.output_dir) / "table.csv"

    if args.dry_run:
        print(f"kava reproduce: {len(configs)} config(s) x {len(seeds)} seed(s) {seeds} into {args.output_dir}/")
        print(format_plan(plan), end="")
        extra = _eval_args(args) + _launcher_args(args)
        devices = f" --devices {args.devices}" if args.devices else ""
        print("\nwould run, in order (each resumable):")
        for c in configs:
            print(f"  kava sweep --config {c} --seeds {' '.join(map(str, seeds))} --output-dir {args.output_dir} "
                  f"--datasets {' '.join(args.datasets)}{devices}{(' ' + ' '.join(extra)) if extra else ''}")
        print(f"  kava aggregate --experiments-dir {args.output_dir} --output {table}")
        return 0

    total = sum(p["gpu_hours"] for p in plan)
    print(f"kava reproduce: {len(configs)} config(s) x {len(seeds)} seed(s); about {total:.0f} GPU hours "
          "(rough estimate; see --dry-run)", file=sys.stderr, flush=True)
    failed_runs, submitted = [], False
    for i, config in enumerate(configs, 1):
        print(f"\n=== [{i}/{len(configs)}] {config}", flush=True)
        try:
            res = _sweep(config, args)
        except KavaError as err:  # e.g. a run folder started from another config: say so, go on
            print(f"error: {config}: {err}", file=sys.stderr)
            failed_runs.append(config.stem)
            continue
        _print_sweep_result(res)
        _report_failures(res)
        if res["n_failed"]:
            failed_runs.append(res["run_name"])
        submitted = submitted or bool(res["submitted"])
    print()
    if submitted:
        print("jobs are queued or running; when they are done, re-run the same command: it skips the finished "
              "seeds and writes the table")
        return 1 if failed_runs else 0
    try:
        _aggregate_and_print(args.output_dir, table)
    except KavaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if failed_runs:
        print(f"error: some seeds failed in {', '.join(failed_runs)}; re-run the same command to retry them",
              file=sys.stderr)
        return 1
    return 0


def register(sub) -> None:
    _add_sweep(sub)
    _add_aggregate(sub)
    _add_compare(sub)
    _add_reproduce(sub)
