"""Multi-seed experiments: sweeps, aggregation into paper-ready tables, run comparison.

Public API (every user mistake raises :class:`kava.errors.KavaError`):

* :func:`run_sweep` (``kava sweep``); where the seeds run (here, or SLURM jobs through
  submitit) and :func:`run_status` (``kava sweep --status``) are in :mod:`kava.experiments.launch`
* :func:`plan_reproduction` / :func:`format_plan` (``kava reproduce --dry-run``'s GPU hours,
  :mod:`kava.experiments.plan`)
* :func:`aggregate` / :func:`write_run_summary` (``kava aggregate``)
* :func:`compare_runs` / :func:`format_comparison` (``kava compare``)
* :func:`summarize` / :func:`summarize_seeds` / :func:`format_mean_std` (statistics)

The commands themselves (``kava sweep``, ``aggregate``, ``compare``, ``reproduce``) live in
:mod:`kava.experiments.cli`; docs/experiments.md and docs/reproducing.md are the guides.
"""

from kava.experiments.aggregate import aggregate, load_run, read_results_file, write_run_summary
from kava.experiments.compare import compare_runs, format_comparison
from kava.experiments.launch import format_status, run_status, subprocess_runner
from kava.experiments.plan import format_plan, plan_reproduction
from kava.experiments.stats import format_mean_std, summarize, summarize_seeds
from kava.experiments.sweep import run_sweep

__all__ = [
    "aggregate",
    "compare_runs",
    "format_comparison",
    "format_mean_std",
    "format_plan",
    "format_status",
    "load_run",
    "plan_reproduction",
    "read_results_file",
    "run_status",
    "run_sweep",
    "subprocess_runner",
    "summarize",
    "summarize_seeds",
    "write_run_summary",
]
