"""The `kava` command line: one entry point, one subcommand per task.

    kava train --config configs/tiny.yaml [--output-dir DIR] [--seed N] [--resume | --resume-if-exists] [key.path=value ...]

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
    "train": "example: kava train --config configs/tiny.yaml --output-dir outputs/tiny train.max_steps=20",
}


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a KaVa student (or a CoT / No-CoT baseline) from a config",
        description="Train a KaVa student as SPEC.md describes. Overrides use dotted keys: train.lr=1e-4.",
        epilog=EXAMPLES["train"],
    )
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
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
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    from kava.config import load_config
    from kava.training.trainer import train

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    cfg = load_config(args.config, overrides)
    train(cfg, resume="auto" if args.resume_if_exists else args.resume, show_progress=not args.no_progress)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (subcommand parsers inherit the class)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _resume_command(argv: list[str]) -> str:
    resumes = "--resume" in argv or "--resume-if-exists" in argv
    return shlex.join(["kava", *argv, *([] if resumes else ["--resume"])])


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kava",
        description="KaVa: latent reasoning via compressed KV-cache distillation (arXiv 2510.02312).",
        epilog="example: kava train --config configs/tiny.yaml --output-dir outputs/tiny",
    )
    from kava import __version__

    parser.add_argument("--version", action="version", version=f"kava {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(sub)
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
        print(f"kava: {stop}; resume with: {_resume_command(argv)}", file=sys.stderr)
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
