"""Is run A better than run B? Two rules over the per-seed accuracies of each dataset.

* **2-std rule**: A is significantly better if ``mean_A - 2·std_A > mean_B + 2·std_B``
  (the ``mean ± 2 std`` intervals do not overlap), and symmetrically for B. It needs at
  least 2 seeds per run: with one seed the std is 0 by convention, which says nothing
  about the spread, so the rule reports ``"n/a"`` instead of a false "significant".
* **Welch's t-test** (``scipy.stats.ttest_ind(a, b, equal_var=False)``, two-sided). With
  fewer than 2 seeds on either side, or zero variance on both sides, ``t`` and ``p`` are
  ``None`` and ``welch_note`` says why.

Each row also carries a one-line ``verdict`` combining both. Two runs (or two seeds) evaluated
under different protocols — greedy and sampled, or two sampling settings — are not compared: a
one-line error (kava.evaluation.protocol).
"""

from __future__ import annotations

import math
import os
import warnings as _warnings
from pathlib import Path

from kava.errors import KavaError
from kava.evaluation.protocol import one_protocol, protocol_name
from kava.experiments.aggregate import find_seed_dirs, load_run
from kava.experiments.stats import format_mean_std, sort_datasets, summarize

#: Significance level for Welch's test.
DEFAULT_ALPHA = 0.05


def _load(run_dir: str | os.PathLike) -> dict:
    p = Path(run_dir)
    if not p.exists():
        raise KavaError(f"run directory not found: {p}")
    if not p.is_dir():
        raise KavaError(f"not a directory: {p}")
    if not find_seed_dirs(p):
        raise KavaError(f"{p} is not a run directory (it has no seed_* folders); pass experiments/<run-name>")
    run = load_run(p)
    if not run["per_seed"]:
        raise KavaError(f"no results found under {p}; run `kava sweep` first")
    return run


def _accuracies(run: dict) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for seed in sorted(run["per_seed"]):
        for ds, res in run["per_seed"][seed].items():
            out.setdefault(ds, []).append((seed, float(res["accuracy"])))
    return out


def _welch(a: list[float], b: list[float]) -> tuple[float | None, float | None, float | None, str | None]:
    """(t, p, df, note): note says why t/p are None."""
    short = [name for name, xs in (("A", a), ("B", b)) if len(xs) < 2]
    if short:
        who = " and ".join(f"run {n} has {len(a if n == 'A' else b)} seed" for n in short)
        return None, None, None, f"{who}; Welch's t-test needs at least 2 seeds per run"
    va, vb = summarize(a)["std"] ** 2, summarize(b)["std"] ** 2
    if va == 0 and vb == 0:
        return None, None, None, "both runs have zero variance across seeds; the t-test is undefined"
    from scipy import stats

    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(a, b, equal_var=False)
    t, p = float(res.statistic), float(res.pvalue)
    sa, sb = va / len(a), vb / len(b)
    df = (sa + sb) ** 2 / (sa**2 / (len(a) - 1) + sb**2 / (len(b) - 1))
    if not (math.isfinite(t) and math.isfinite(p)):
        return None, None, None, "the t-test is undefined for these values"
    return t, p, df, None


def _two_std(ma: float, sa: float, na: int, mb: float, sb: float, nb: int) -> tuple[str, bool]:
    if na < 2 or nb < 2:
        return "n/a", False
    if ma - 2 * sa > mb + 2 * sb:
        return "A better", True
    if mb - 2 * sb > ma + 2 * sa:
        return "B better", True
    return "overlap", False


def _verdict(row: dict, alpha: float) -> str:
    two, p, diff = row["two_std_rule"], row["p"], row["diff"]
    if two == "n/a":
        short = ", ".join(f"run {k} has {row[k.lower() + '_n']} seed" for k in ("A", "B") if row[k.lower() + "_n"] < 2)
        return f"inconclusive: {short} (need at least 2 seeds per run); difference {diff:+.2f} points"
    welch_dir = None
    if p is not None and p < alpha:
        welch_dir = "A better" if row["t"] > 0 else "B better"
    ptxt = f"p={p:.3g}" if p is not None else "t-test undefined"
    if two != "overlap" and welch_dir == two:
        return f"{two}: significant by the 2-std rule and Welch's t-test ({ptxt} < {alpha})"
    if two != "overlap" and welch_dir is None:
        return f"{two} by the 2-std rule; Welch's t-test is not significant ({ptxt})"
    if two == "overlap" and welch_dir is not None:
        return f"{welch_dir} by Welch's t-test ({ptxt} < {alpha}); the mean ± 2 std intervals overlap"
    if two == "overlap":
        return f"no significant difference ({ptxt}; the mean ± 2 std intervals overlap)"
    return f"contradictory: 2-std rule says {two}, Welch's t-test says {welch_dir} ({ptxt})"


def compare_runs(
    run_a_dir: str | os.PathLike,
    run_b_dir: str | os.PathLike,
    alpha: float = DEFAULT_ALPHA,
) -> list[dict]:
    """Compare the per-seed accuracy of two runs on every dataset both have results for.

    Returns one dict per common dataset (paper order) with keys ``dataset, run_a, run_b,
    a_mean, a_std, a_n, a_seeds, b_mean, b_std, b_n, b_seeds, diff`` (A − B, points),
    ``two_std_rule`` (``"A better"``, ``"B better"``, ``"overlap"`` or ``"n/a"``),
    ``two_std_significant``, ``t``, ``p``, ``df``, ``welch_note``, ``welch_significant``
    (``None`` when the test is undefined), ``alpha`` and ``verdict``.

    Raises KavaError for a missing or non-run directory, a run without results, or two
    runs that share no dataset.
    """
    run_a, run_b = _load(run_a_dir), _load(run_b_dir)
    for ds in set(_accuracies(run_a)) & set(_accuracies(run_b)):  # one protocol in a comparison
        one_protocol(((f"run {run['name']} seed {seed}", protocol_name(per[ds].get("protocol")))
                      for run in (run_a, run_b) for seed, per in sorted(run["per_seed"].items()) if ds in per),
                     f"comparing {ds}")
    acc_a, acc_b = _accuracies(run_a), _accuracies(run_b)
    common = sort_datasets(set(acc_a) & set(acc_b))
    if not common:
        raise KavaError(
            f"runs {run_a_dir} ({', '.join(sort_datasets(acc_a))}) and {run_b_dir} "
            f"({', '.join(sort_datasets(acc_b))}) have no dataset in common"
        )
    rows = []
    for ds in common:
        a = [v for _, v in acc_a[ds]]
        b = [v for _, v in acc_b[ds]]
        sa, sb = summarize(a), summarize(b)
        t, p, df, note = _welch(a, b)
        two, two_sig = _two_std(sa["mean"], sa["std"], sa["n"], sb["mean"], sb["std"], sb["n"])
        row = {
            "dataset": ds,
            "run_a": run_a["name"],
            "run_b": run_b["name"],
            "a_mean": sa["mean"],
            "a_std": sa["std"],
            "a_n": sa["n"],
            "a_seeds": [s for s, _ in acc_a[ds]],
            "b_mean": sb["mean"],
            "b_std": sb["std"],
            "b_n": sb["n"],
            "b_seeds": [s for s, _ in acc_b[ds]],
            "diff": sa["mean"] - sb["mean"],
            "two_std_rule": two,
            "two_std_significant": two_sig,
            "t": t,
            "p": p,
            "df": df,
            "welch_note": note,
            "welch_significant": None if p is None else p < alpha,
            "alpha": alpha,
        }
        row["verdict"] = _verdict(row, alpha)
        rows.append(row)
    return rows


def format_comparison(rows: list[dict]) -> str:
    """A plain-text table of :func:`compare_runs` rows, then one verdict line per dataset."""
    if not rows:
        return "(no datasets in common)\n"
    header = ["dataset", "A acc (n)", "B acc (n)", "A-B", "2-std rule", "Welch t", "p"]
    table = [header]
    for r in rows:
        table.append(
            [
                r["dataset"],
                f"{format_mean_std(r['a_mean'], r['a_std'], 2)} ({r['a_n']})",
                f"{format_mean_std(r['b_mean'], r['b_std'], 2)} ({r['b_n']})",
                f"{r['diff']:+.2f}",
                r["two_std_rule"],
                "-" if r["t"] is None else f"{r['t']:.3f}",
                "-" if r["p"] is None else f"{r['p']:.3g}",
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [f"A = {rows[0]['run_a']}", f"B = {rows[0]['run_b']}", ""]
    for i, row in enumerate(table):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    for r in rows:
        lines.append(f"{r['dataset']}: {r['verdict']}")
        if r["welch_note"] and not r["verdict"].startswith("inconclusive"):
            lines.append(f"  ({r['welch_note']})")
    return "\n".join(lines) + "\n"
