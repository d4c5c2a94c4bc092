"""The `kava` command line: one entry point, one subcommand per task.

    kava train --config tiny [--output-dir DIR] [--seed N] [--resume | --resume-if-exists] [--print-config]
               [key.path=value ...]
    kava configs

Building the parser imports neither torch nor transformers (each command imports what it
needs when it runs), so `kava --help` and an argument error answer at once.

A user mistake (`KavaError`, or arguments argparse rejects) prints one line, `error: ...`,
and exits with code 2. Training stopped by SIGTERM, SIGINT or SIGUSR1 writes a checkpoint,
prints one line with the command that resumes it and exits with code 75
(`kava.training.signals.EXIT_PREEMPTED`).
"""

from __future__ import annotations

import argparse
import errno
import os
import shlex
import sys

from kava.errors import KavaError

EXAMPLES = {
    "train": "example: kava train --config tiny --output-dir outputs/tiny train.max_steps=20",
    "export": "example: kava export outputs/tiny/checkpoint-final outputs/tiny/exported --dtype bf16",
    "configs": "example: kava configs    (then: kava train --config llama1b_aug --print-config)",
}
CONFIG_HELP = "a YAML config file, or the name of a shipped config (kava configs lists them)"


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a KaVa student (or a CoT / No-CoT baseline) from a config",
        description="Train a KaVa student (docs/algorithm.md), or a baseline of docs/methods.md, from a config. "
        "Overrides use dotted keys: train.lr=1e-4 (docs/configuration.md lists every key).",
        epilog=EXAMPLES["train"],
    )
    p.add_argument("--config", required=True, help=CONFIG_HELP)
    p.add_argument("--output-dir", help="where checkpoints and logs go (default: the config's output_dir)")
    p.add_argument("--seed", type=int, help="random seed (default: the config's seed)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true",
                     help="continue the run in the output folder from its latest checkpoint (an error if it has none); "
                     "with a larger train.max_steps a finished run trains longer, with a new train.lr a new schedule "
                     "starts at the checkpoint (docs/reliability.md)")
    how.add_argument("--resume-if-exists", action="store_true",
                     help="resume when the output folder holds a checkpoint, else start a new run (for job scripts "
                     "that may be requeued)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (after the overrides) as YAML and exit without training")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")
    p.set_defaults(func=_cmd_train)


def _add_configs(sub) -> None:
    p = sub.add_parser(
        "configs",
        help="list the shipped configs, each with what it trains and where its numbers come from",
        description="The configs shipped with kava. Any command's --config takes a name from this list "
        "(or a path to a YAML file). Shown: the first sentence of each file's header comment, and the source "
        "its Provenance: line names.",
        epilog=EXAMPLES["configs"],
    )
    p.set_defaults(func=_cmd_configs)


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a checkpoint as a plain transformers folder (LoRA merged, new tokens, projection beside it)",
        description="Merge a checkpoint's LoRA adapter into the weights (peft's merge_and_unload) and write a "
        "folder that AutoModelForCausalLM.from_pretrained reads, with the tokenizer (<bot>, <eot>, <latent> "
        "included), the latent projection (projection.safetensors; kava.export.load_projection) and the config. "
        "kava evaluate / kava infer --checkpoint and kava.api.load read it back (docs/inference.md).",
        epilog=EXAMPLES["export"],
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint folder from kava train, or a hub repo id")
    p.add_argument("output_dir", metavar="DIR", help="the folder to write (new, or empty)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="weights dtype of the export (default: fp32; the LoRA is merged in fp32 first)")
    p.add_argument("--revision", help="with a hub repo id: a branch, tag or commit (default: main)")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    from kava.export import export_checkpoint
    from kava.hub import resolve_checkpoint

    out = export_checkpoint(resolve_checkpoint(args.checkpoint, args.revision), args.output_dir, args.dtype)
    print(f"kava: exported {args.checkpoint} to {out} ({args.dtype}, LoRA merged); read it with "
          f"AutoModelForCausalLM.from_pretrained({str(out)!r}) or kava evaluate --checkpoint {out}")
    return 0


def _cmd_configs(args) -> int:
    from kava.config import CONFIGS_DIR, config_summary, shipped_configs

    shipped = shipped_configs()
    width = max(map(len, shipped))
    print(f"shipped configs (kava train --config NAME; the files are in {CONFIGS_DIR}):")
    for name, path in shipped.items():
        what, source = config_summary(path)
        print(f"  {name:<{width}}  {what}")
        print(f"  {'':<{width}}  from: {source or 'kava (its own settings; no published recipe)'}")
    return 0


def _cmd_train(args) -> int:
    import yaml

    from kava.config import config_to_dict, load_config

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    cfg = load_config(args.config, overrides)
    if args.print_config:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True), end="")
        return 0
    from kava.training.trainer import train

    train(cfg, resume="auto" if args.resume_if_exists else args.resume, show_progress=not args.no_progress)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (subcommand parsers inherit the class)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _resume_hint(argv: list[str], args) -> str:
    """How to continue a pre-empted command: with --resume where it takes one (kava train), else
    by running it again (kava bench quality and kava demo resume their finished parts by themselves)."""
    if not hasattr(args, "resume"):
        return f"run the same command again to continue: {shlex.join(['kava', *argv])}"
    resumes = "--resume" in argv or "--resume-if-exists" in argv
    return f"resume with: {shlex.join(['kava', *argv, *([] if resumes else ['--resume'])])}"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kava",
        description="KaVa: latent reasoning via compressed KV-cache distillation (arXiv 2510.02312).",
        epilog="example: kava train --config tiny --output-dir outputs/tiny",
    )
    from kava import __version__

    parser.add_argument("--version", action="version", version=f"kava {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(sub)
    _add_configs(sub)
    _add_export(sub)
    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands():
    """Subcommands defined next to their implementation (evaluation, experiments, benchmarks)."""
    import importlib

    found = []
    for module in ("kava.evaluation.cli", "kava.experiments.cli", "kava.bench.cli", "kava.demo", "kava.hub"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name == module:
                continue
            raise
        found.append(mod.register)
    return found


def main(argv: list[str] | None = None) -> int:
    from kava.training.signals import EXIT_PREEMPTED, Preempted

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KavaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Preempted as stop:
        print(f"kava: {stop}; {_resume_hint(argv, args)}", file=sys.stderr)
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        print("interrupted; run the same command again to continue where it stopped", file=sys.stderr)
        return 130
    except OSError as err:
        if err.errno == errno.ENOSPC:
            print(f"error: no space left on the device while writing {err.filename or 'a file'}; "
                  "free some space (or point --output-dir / KAVA_CACHE_DIR elsewhere) and run the command again",
                  file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    raise SystemExit(main())
