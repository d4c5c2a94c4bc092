"""Summary statistics over seeds: mean ± sample standard deviation.

Conventions (used by every table kava writes):

* ``std`` is the *sample* standard deviation (``ddof=1``), the usual choice when a
  handful of seeds estimate the spread of a training recipe.
* With a single value, ``std`` is ``0.0`` (there is no spread to estimate; tables then
  show ``± 0.0`` and the seed count says why).
* With no values at all, :func:`summarize` raises :class:`~kava.errors.KavaError`:
  an empty summary is always a mistake upstream (no results were found).
* Forward passes: each ``results_<dataset>.yaml`` holds ``forward_passes_mean``, the
  mean number of model forward passes per question for that seed. Over seeds we report
  the mean of those per-seed means and their sample std, exactly as for accuracy.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

from kava.errors import KavaError

#: Datasets of the paper, in the order its tables use; others follow alphabetically.
DATASET_ORDER = ("gsm8k", "gsm8k-hard", "svamp", "multiarith")


def dataset_sort_key(name: str) -> tuple[int, str]:
    """Sort key putting the paper's datasets first (in paper order), then the rest by name."""
    try:
        return (DATASET_ORDER.index(name), "")
    except ValueError:
        return (len(DATASET_ORDER), name)


def sort_datasets(names: Iterable[str]) -> list[str]:
    return sorted(set(names), key=dataset_sort_key)


def is_number(x: Any) -> bool:
    """A real, finite number (``bool`` is not a number here)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def summarize(values: Iterable[float]) -> dict:
    """Mean, sample std (ddof=1) and count of ``values``.

    ``summarize([50, 52, 54]) == {"mean": 52.0, "std": 2.0, "n": 3}``. One value gives
    ``std == 0.0``. No values, or a value that is not a finite number, raise KavaError.
    """
    vals = list(values)
    if not vals:
        raise KavaError("cannot summarize an empty list of values (no seed has results)")
    for v in vals:
        if not is_number(v):
            raise KavaError(f"cannot summarize {v!r}: every value must be a finite number")
    floats = [float(v) for v in vals]
    mean = statistics.fmean(floats)
    std = statistics.stdev(floats) if len(floats) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(floats)}


def _seed_key(seed: Any) -> tuple[int, Any]:
    try:
        return (0, int(seed))
    except (TypeError, ValueError):
        return (1, str(seed))


def summarize_seeds(per_seed: Mapping[Any, Mapping[str, Mapping[str, Any]]]) -> dict[str, dict]:
    """Summarize per-seed results into one entry per dataset.

    ``per_seed`` maps seed -> dataset -> the content of ``results_<dataset>.yaml``
    (at least ``accuracy``; ``forward_passes_mean`` is used when present).

    Returns, per dataset (in paper order)::

        {"accuracy_mean", "accuracy_std", "forward_passes_mean", "forward_passes_std",
         "n_seeds", "seeds"}

    ``n_seeds``/``seeds`` count the seeds with an accuracy for that dataset. The forward
    pass fields are ``None`` when no seed recorded ``forward_passes_mean``; seeds lacking
    it are left out of that average only. A seed whose accuracy is missing or not a
    number is ignored for that dataset (the loaders already warned about it).
    """
    by_dataset: dict[str, list[tuple[Any, Mapping[str, Any]]]] = {}
    for seed in sorted(per_seed, key=_seed_key):
        for dataset, res in per_seed[seed].items():
            if isinstance(res, Mapping) and is_number(res.get("accuracy")):
                by_dataset.setdefault(dataset, []).append((seed, res))

    out: dict[str, dict] = {}
    for dataset in sort_datasets(by_dataset):
        entries = by_dataset[dataset]
        acc = summarize(r["accuracy"] for _, r in entries)
        fwd_vals = [r["forward_passes_mean"] for _, r in entries if is_number(r.get("forward_passes_mean"))]
        fwd = summarize(fwd_vals) if fwd_vals else {"mean": None, "std": None}
        out[dataset] = {
            "accuracy_mean": acc["mean"],
            "accuracy_std": acc["std"],
            "forward_passes_mean": fwd["mean"],
            "forward_passes_std": fwd["std"],
            "n_seeds": acc["n"],
            "seeds": [s for s, _ in entries],
        }
    return out


def format_mean_std(mean: float | None, std: float | None, digits: int = 1) -> str:
    """``format_mean_std(56.512, 0.31) == "56.5 ± 0.3"``; ``None`` mean gives ``"-"``.

    A ``None`` std (no spread known) prints the mean alone.
    """
    if mean is None:
        return "-"
    text = f"{_round(mean, digits):.{digits}f}"
    if std is None:
        return text
    return f"{text} ± {_round(std, digits):.{digits}f}"


def format_number(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{_round(x, digits):.{digits}f}"


def _round(x: float, digits: int) -> float:
    r = round(float(x), digits)
    return 0.0 if r == 0 else r  # never print "-0.0"
