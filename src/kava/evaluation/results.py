"""Where `kava evaluate --output-dir DIR` puts each dataset's files, for its writer and its readers.

    DIR/results_<key>.yaml       the result (`kava.evaluation.evaluate.summarize`'s fields and the run's)
    DIR/predictions_<key>.jsonl  one record per example

`<key>` is the dataset's name (`gsm8k`, `synthetic-test`) or a local file's stem, with any
character outside `A-Z a-z 0-9 _ . -` replaced by `_`. `kava sweep` looks for the files of
the datasets it evaluates, and `kava aggregate` and `kava push` read every results file of a folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_RESULTS = re.compile(r"^results_(.+)\.ya?ml$")


def dataset_key(name: str) -> str:
    """The file-name-safe key of a dataset: its name, or a `.jsonl` file's stem."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(name)).stem) or "dataset"


def results_file(folder: str | os.PathLike, dataset: str) -> Path:
    return Path(folder) / f"results_{dataset_key(dataset)}.yaml"


def predictions_file(folder: str | os.PathLike, dataset: str) -> Path:
    return Path(folder) / f"predictions_{dataset_key(dataset)}.jsonl"


def results_files(folder: str | os.PathLike) -> list[tuple[str, Path]]:
    """(dataset key, path) of every results file in `folder`, by file name (OSError if unreadable)."""
    found = ((_RESULTS.match(p.name), p) for p in Path(folder).iterdir())
    return sorted(((m.group(1), p) for m, p in found if m and p.is_file()), key=lambda kp: kp[1].name)
