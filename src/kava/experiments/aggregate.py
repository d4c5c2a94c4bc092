"""Collect per-seed results into per-run summaries and cross-run, paper-ready tables.

An experiments tree looks like::

    experiments/<run>/run.yaml              (written by `kava sweep`; optional here)
    experiments/<run>/seed_<s>/results_<dataset>.yaml   (written by `kava evaluate`)
    experiments/<run>/seed_<s>/status.yaml              (written by `kava sweep`)

Per run, :func:`write_run_summary` writes

* ``all_seeds_results.yaml``: every seed's numbers, per dataset::

      run_name: kava-llama1b
      seeds: [42, 43, 44]          # seeds with at least one readable results file
      datasets:
        gsm8k:
          - {seed: 42, accuracy: 56.1, n: 1319, correct: 740, forward_passes_mean: 48.0, ...}
      seed_status: {42: {train: done, eval: done, error: null}, ...}   # from status.yaml
      skipped_files: [{path: ..., reason: ...}]                        # unreadable results

* ``summary.yaml``::

      run_name, model, train_data        # model/train_data from run.yaml, else "?"
      n_seeds: 3                         # seeds with at least one result
      seeds: [42, 43, 44]
      seeds_requested: [...]             # run.yaml's seeds (when there is a run.yaml)
      seeds_failed: [...]                # status.yaml says train or eval failed
      datasets:
        gsm8k: {accuracy_mean, accuracy_std, forward_passes_mean, forward_passes_std,
                n_seeds, seeds, protocol}    # "greedy", or the sampling parameters in words

* ``summary.csv``: one row per dataset with columns :data:`RUN_SUMMARY_COLUMNS`.

:func:`aggregate` does that for every run under a directory and writes the cross-run
table at ``output`` (``table.csv``) and its siblings ``table.tex`` (booktabs),
``table.md`` and ``table.png`` (accuracy vs forward passes). One row per run: run name,
model, training data, then per dataset ``mean ± std`` accuracy and mean forward passes,
then the number of seeds. A cell whose dataset has fewer seeds than the run shows
``(n=K)``; a dataset the run lacks shows ``-``.

Greedy and sampled results (``protocol`` in the results file, kava.evaluation.protocol) never
share a column: a run whose seeds mix them, or a dataset column that would, is a one-line
error; a sampled column names its protocol in the header.

A results file that cannot be read (bad YAML, not a mapping, no numeric ``accuracy``
between 0 and 100) is reported on stderr by path and skipped; it never stops the
aggregation.
"""

from __future__ import annotations

import csv
import io
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from kava.errors import KavaError
from kava.evaluation.protocol import one_protocol, protocol_name
from kava.evaluation.results import results_files
from kava.experiments.stats import format_mean_std, format_number, is_number, sort_datasets, summarize_seeds
from kava.io import atomic_write_bytes, atomic_write_text, atomic_write_yaml
from kava.plots import Point, accuracy_figure, figure_png

SEED_DIR_RE = re.compile(r"^seed_(\d+)$")

RUN_SUMMARY_COLUMNS = (
    "dataset",
    "accuracy_mean",
    "accuracy_std",
    "accuracy",  # "56.5 ± 0.3"
    "forward_passes_mean",
    "forward_passes_std",
    "n_seeds",
    "seeds",  # space separated
)

#: Suffixes recognised on ``output``; the four tables share its stem.
TABLE_SUFFIXES = (".csv", ".tex", ".md", ".png")


class _ReadableDumper(yaml.SafeDumper):
    """SafeDumper writing multi-line strings (error logs) as ``|`` blocks."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    if "\n" in value:
        value = "\n".join(line.rstrip() for line in value.splitlines())  # block style needs no trailing spaces
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_ReadableDumper.add_representer(str, _str_representer)


def write_yaml_readable(path: str | os.PathLike, obj: Any) -> None:
    """Like :func:`kava.io.atomic_write_yaml` (atomic), with multi-line strings as blocks."""
    atomic_write_text(path, yaml.dump(obj, Dumper=_ReadableDumper, sort_keys=False, allow_unicode=True))


def warn(message: str, sink: list[str] | None = None) -> None:
    """Print a warning on stderr (and keep it in ``sink`` when given)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
    if sink is not None:
        sink.append(message)


# --------------------------------------------------------------------------- reading


def read_results_file(path: str | os.PathLike) -> dict:
    """Read one ``results_<dataset>.yaml``; raise ValueError (with the reason) if unusable."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot read it ({type(e).__name__}: {reason})") from e
    if not isinstance(data, Mapping):
        raise ValueError(f"expected a mapping, found {type(data).__name__}")
    acc = data.get("accuracy")
    if not is_number(acc):
        raise ValueError(f"no numeric 'accuracy' (found {acc!r})")
    if not 0 <= acc <= 100:
        raise ValueError(f"'accuracy' must be a percentage in [0, 100], found {acc!r}")
    return dict(data)



def find_seed_dirs(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(seed, path)`` of every ``seed_<int>/`` folder in ``run_dir``, by seed."""
    run_dir = Path(run_dir)
    found = []
    try:
        entries = list(os.scandir(run_dir))
    except OSError:
        return []
    for entry in entries:
        m = SEED_DIR_RE.match(entry.name)
        if m and entry.is_dir():
            found.append((int(m.group(1)), Path(entry.path)))
    return sorted(found)


def read_yaml_mapping(path: Path, sink: list[str] | None = None) -> dict:
    """A small YAML mapping (run.yaml, status.yaml); {} with a warning if unreadable."""
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        warn(f"skipping unreadable {path}: {type(e).__name__}", sink)
        return {}
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        warn(f"skipping {path}: expected a mapping, found {type(data).__name__}", sink)
        return {}
    return dict(data)


def load_run(run_dir: str | os.PathLike, name: str | None = None, warnings: list[str] | None = None) -> dict:
    """Read everything in one run folder (nothing is written).

    Returns ``{name, run_dir, meta (run.yaml), seed_dirs, per_seed, status, skipped}``
    where ``per_seed`` maps seed -> dataset -> results (only readable files) and
    ``skipped`` lists ``{path, reason}`` of results files that were skipped (each also
    reported on stderr).
    """
    run_dir = Path(run_dir)
    meta = read_yaml_mapping(run_dir / "run.yaml", warnings)
    if name is None:
        name = str(meta.get("run_name") or run_dir.resolve().name)
    per_seed: dict[int, dict[str, dict]] = {}
    status: dict[int, dict] = {}
    skipped: list[dict] = []
    seed_dirs = find_seed_dirs(run_dir)
    for seed, seed_dir in seed_dirs:
        st = read_yaml_mapping(seed_dir / "status.yaml", warnings)
        if st:
            status[seed] = {k: st.get(k) for k in ("train", "eval", "error")}
        try:
            files = results_files(seed_dir)
        except OSError as e:
            warn(f"skipping unreadable {seed_dir}: {e}", warnings)
            continue
        for dataset, path in files:
            try:
                res = read_results_file(path)
            except ValueError as e:
                warn(f"skipping results file {path}: {e}", warnings)
                skipped.append({"path": str(path), "reason": str(e)})
                continue
            per_seed.setdefault(seed, {})[dataset] = res
    return {
        "name": name,
        "run_dir": run_dir,
        "meta": meta,
        "seed_dirs": [s for s, _ in seed_dirs],
        "per_seed": per_seed,
        "status": status,
        "skipped": skipped,
    }


def find_runs(experiments_dir: str | os.PathLike) -> list[tuple[str, Path]]:
    """``(name, path)`` of every run folder (one holding ``seed_*`` folders) under a dir.

    The search goes down nested folders (``experiments/ablations/<run>/`` works; the
    run's name is then ``ablations/<run>``) but not into runs, seeds, checkpoints or
    hidden folders. If ``experiments_dir`` is itself a run, it is the only one.
    """
    root = Path(experiments_dir)
    if not root.exists():
        raise KavaError(f"experiments directory not found: {root}")
    if not root.is_dir():
        raise KavaError(f"not a directory: {root}")
    if find_seed_dirs(root):
        return [(root.resolve().name, root)]
    runs = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        if here != root and find_seed_dirs(here):
            runs.append((here.relative_to(root).as_posix(), here))
            dirnames[:] = []
            continue
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and not d.startswith("checkpoint") and not SEED_DIR_RE.match(d)
        )
    return sorted(runs)


# --------------------------------------------------------------------- per-run summary


def _scalars(d: Mapping[str, Any]) -> dict:
    """The scalar fields of a results file (per-example lists are left out)."""
    return {k: v for k, v in d.items() if v is None or isinstance(v, (str, int, float, bool))}


def _clean(x: Any) -> Any:
    """Round floats to 6 decimals so YAML/CSV do not show 52.00000000000001."""
    if isinstance(x, float):
        return round(x, 6)
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def _summarize_loaded(run: dict) -> dict:
    meta = run["meta"]
    per_seed = run["per_seed"]
    datasets = summarize_seeds(per_seed)
    seeds = sorted(per_seed)
    summary: dict[str, Any] = {
        "run_name": run["name"],
        "model": str(meta.get("model") or "?"),
        "train_data": str(meta.get("train_data") or "?"),
        "n_seeds": len(seeds),
        "seeds": seeds,
    }
    if isinstance(meta.get("seeds"), list):
        summary["seeds_requested"] = list(meta["seeds"])
    summary["seeds_failed"] = sorted(
        s for s, st in run["status"].items() if "failed" in (st.get("train"), st.get("eval"))
    )
    for ds, entry in datasets.items():  # one protocol per dataset in a run (kava.evaluation.protocol)
        entry["protocol"] = one_protocol(((f"seed_{s}", protocol_name(per_seed[s][ds].get("protocol")))
                                          for s in seeds if ds in per_seed[s]), f"run {run['name']}, dataset {ds},")
    summary["datasets"] = _clean(datasets)
    return summary


def write_run_summary(run_dir: str | os.PathLike, warnings: list[str] | None = None, *,
                      _run: dict | None = None) -> dict:
    """(Re)write ``all_seeds_results.yaml``, ``summary.yaml`` and ``summary.csv`` of a run.

    Safe to call at any time (``kava sweep`` calls it after every seed): it reads what is
    on disk now, skips unreadable results files with a warning, and always records how
    many seeds the summary holds (``n_seeds``, possibly 0). Returns the summary dict.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise KavaError(f"run directory not found: {run_dir}")
    run = _run if _run is not None else load_run(run_dir, warnings=warnings)
    summary = _summarize_loaded(run)
    per_seed = run["per_seed"]

    all_results = {
        "run_name": run["name"],
        "seeds": sorted(per_seed),
        "datasets": {
            ds: [{"seed": s, **_scalars(per_seed[s][ds])} for s in sorted(per_seed) if ds in per_seed[s]]
            for ds in sort_datasets(d for res in per_seed.values() for d in res)
        },
        "seed_status": {s: run["status"][s] for s in sorted(run["status"])},
        "skipped_files": run["skipped"],
    }
    write_yaml_readable(run_dir / "all_seeds_results.yaml", _clean(all_results))
    atomic_write_yaml(run_dir / "summary.yaml", summary)

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(RUN_SUMMARY_COLUMNS)
    for ds, s in summary["datasets"].items():
        w.writerow(
            [
                ds,
                _csv_num(s["accuracy_mean"]),
                _csv_num(s["accuracy_std"]),
                format_mean_std(s["accuracy_mean"], s["accuracy_std"]),
                _csv_num(s["forward_passes_mean"]),
                _csv_num(s["forward_passes_std"]),
                s["n_seeds"],
                " ".join(str(x) for x in s["seeds"]),
            ]
        )
    atomic_write_text(run_dir / "summary.csv", buf.getvalue())
    return summary


def _csv_num(x: float | None) -> str:
    return "" if x is None else repr(round(float(x), 6))


# ------------------------------------------------------------------ cross-run tables


def _table_paths(output: str | os.PathLike) -> dict[str, Path]:
    out = Path(output)
    stem = out.with_suffix("") if out.suffix.lower() in TABLE_SUFFIXES else out
    return {ext.lstrip("."): stem.with_name(stem.name + ext) for ext in TABLE_SUFFIXES}


def _acc_cell(entry: dict | None, run_n: int, digits: int = 1) -> str:
    if entry is None:
        return "-"
    cell = format_mean_std(entry["accuracy_mean"], entry["accuracy_std"], digits)
    if entry["n_seeds"] != run_n:
        cell += f" (n={entry['n_seeds']})"
    return cell


def table_rows(summaries: list[dict], datasets: list[str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (all strings) of the cross-run table, as in ``table.csv``."""
    header = ["run", "model", "train_data"]
    for ds in datasets:  # a sampled column says so (aggregate() has checked that it holds one protocol)
        protocol = next((s["datasets"][ds].get("protocol") for s in summaries if ds in s["datasets"]), None)
        label = ds if protocol in (None, "greedy") else f"{ds} [{protocol}]"
        header += [f"{label} accuracy (%)", f"{label} forward passes"]
    header.append("n_seeds")
    rows = []
    for s in summaries:
        row = [s["run_name"], s["model"], s["train_data"]]
        for ds in datasets:
            e = s["datasets"].get(ds)
            row += [_acc_cell(e, s["n_seeds"]), format_number(e["forward_passes_mean"]) if e else "-"]
        row.append(str(s["n_seeds"]))
        rows.append(row)
    return header, rows


def render_csv(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def render_markdown(header: list[str], rows: list[list[str]]) -> str:
    def cell(x: str) -> str:
        return x.replace("|", "\\|")

    align = ["---"] * 3 + ["--:"] * (len(header) - 3)
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _latex_cell(text: str) -> str:
    if text == "-":
        return "--"
    return latex_escape(text).replace(" ± ", r" $\pm$ ")


def render_latex(header: list[str], rows: list[list[str]], datasets: list[str]) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``), dataset names as group headers."""
    ncols = 3 + 2 * len(datasets) + 1
    spec = "lll" + "rr" * len(datasets) + "r"
    lines = [
        "% Generated by `kava aggregate`: accuracy is mean $\\pm$ sample std over seeds;",
        "% FP = mean forward passes per question. Requires \\usepackage{booktabs}.",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
    ]
    top = ["Run", "Model", "Train data"]
    top += [f"\\multicolumn{{2}}{{c}}{{{latex_escape(ds)}}}" for ds in datasets]
    top.append("Seeds")
    lines.append(" & ".join(top) + " \\\\")
    if datasets:
        lines.append(" ".join(f"\\cmidrule(lr){{{4 + 2 * i}-{5 + 2 * i}}}" for i in range(len(datasets))))
        sub = ["", "", ""] + ["Acc. (\\%)", "FP"] * len(datasets) + [""]
        lines.append(" & ".join(sub) + " \\\\")
    lines.append("\\midrule")
    for r in rows:
        assert len(r) == ncols
        lines.append(" & ".join(_latex_cell(c) for c in r) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def render_plot(summaries: list[dict], datasets: list[str]) -> bytes:
    """PNG: accuracy against mean forward passes, a panel per dataset, a point per run, the std
    over seeds as error bars (kava.plots)."""
    points = [Point(s["run_name"], ds, e["forward_passes_mean"], e["accuracy_mean"], e["forward_passes_std"] or 0.0,
                    e["accuracy_std"] or 0.0)
              for ds in datasets for s in summaries
              if (e := s["datasets"].get(ds)) and e["forward_passes_mean"] is not None]
    title = "Accuracy against forward passes (mean ± std over seeds)"
    return figure_png(accuracy_figure(points, title, series=[s["run_name"] for s in summaries], datasets=datasets))


def aggregate(experiments_dir: str | os.PathLike, output: str | os.PathLike | None = None) -> dict:
    """Summarize every run under ``experiments_dir`` and write the cross-run tables.

    ``output`` is the CSV table path (default ``<experiments_dir>/table.csv``); the
    LaTeX, Markdown and PNG versions are written next to it with the same stem. Runs
    with no readable results yet still get their (empty) per-run summary but no row.

    Returns ``{"runs": [summary, ...], "datasets": [...], "outputs": {"csv", "tex",
    "md", "png"}, "markdown": str, "warnings": [...], "runs_without_results": [...]}``.
    Raises KavaError if the directory does not exist or holds no results at all.
    """
    experiments_dir = Path(experiments_dir)
    runs = find_runs(experiments_dir)
    warnings: list[str] = []
    summaries, empty = [], []
    for name, run_dir in runs:
        run = load_run(run_dir, name=name, warnings=warnings)
        summary = write_run_summary(run_dir, warnings, _run=run)
        if summary["n_seeds"]:
            summaries.append(summary)
        else:
            empty.append(name)
    if not summaries:
        raise KavaError(f"no results found under {experiments_dir}; run `kava sweep` first")
    for name in empty:
        print(f"note: run {name} has no results yet; left out of the table", file=sys.stderr)

    datasets = sort_datasets(ds for s in summaries for ds in s["datasets"])
    for ds in datasets:
        one_protocol(((f"run {s['run_name']}",
                       s["datasets"][ds]["protocol"]) for s in summaries if ds in s["datasets"]),
                     f"the {ds} column")
    header, rows = table_rows(summaries, datasets)
    paths = _table_paths(output if output is not None else experiments_dir / "table.csv")
    markdown = render_markdown(header, rows)
    atomic_write_text(paths["csv"], render_csv(header, rows))
    atomic_write_text(paths["tex"], render_latex(header, rows, datasets))
    atomic_write_text(paths["md"], markdown)
    atomic_write_bytes(paths["png"], render_plot(summaries, datasets))
    return {
        "runs": summaries,
        "datasets": datasets,
        "outputs": {k: str(v) for k, v in paths.items()},
        "markdown": markdown,
        "warnings": warnings,
        "runs_without_results": empty,
    }
