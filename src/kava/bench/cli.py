"""`kava bench ...`: each benchmark registers its own sub-subcommand from its module."""

from __future__ import annotations

import importlib

BENCHMARKS = ("kava.bench.speed", "kava.bench.infer", "kava.bench.quality", "kava.bench.gpu", "kava.bench.loss_terms",
              "kava.bench.faults")


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks: training/inference speed and memory, CPU-scale quality, fault injection",
        description="Benchmarks that print ratios measured side by side in one run.",
        epilog="example: kava bench speed --model tiny-llama --batch-size 8",
    )
    bench_sub = p.add_subparsers(dest="bench", metavar="BENCHMARK")
    for name in BENCHMARKS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:
                continue
            raise
        module.register(bench_sub)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
