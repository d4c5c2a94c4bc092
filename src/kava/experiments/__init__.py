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

import importlib

# The names are imported on first use (PEP 562), so that `kava --help`, which imports
# kava.experiments.cli, does not import submitit and the config schema.
_EXPORTS = {
    "aggregate": "aggregate", "load_run": "aggregate", "read_results_file": "aggregate",
    "write_run_summary": "aggregate",
    "compare_runs": "compare", "format_comparison": "compare",
    "format_mean_std": "stats", "summarize": "stats", "summarize_seeds": "stats",
    "format_status": "launch", "run_status": "launch", "subprocess_runner": "launch",
    "format_plan": "plan", "plan_reproduction": "plan", "run_sweep": "sweep",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kava.experiments' has no attribute {name!r}")
    return getattr(importlib.import_module(f"kava.experiments.{_EXPORTS[name]}"), name)
