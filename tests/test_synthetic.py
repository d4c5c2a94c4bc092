"""Tests for kava.data.synthetic: the seeded arithmetic word-problem generator."""

import operator
import re
import time
from pathlib import Path

import pytest

from kava.data.synthetic import (
    NAMES,
    OPERATIONS,
    SyntheticTaskConfig,
    generate_problems,
    generate_splits,
    parse_step,
    synthetic_vocabulary,
    verify_problem,
    write_jsonl,
    write_splits,
)
from kava.errors import KavaError

REPO = Path(__file__).resolve().parents[1]
from kava.io import read_jsonl

CONFIGS = [
    SyntheticTaskConfig(),
    SyntheticTaskConfig(num_steps=1, seed=1),
    SyntheticTaskConfig(num_steps=2, operations=("add", "sub"), seed=2),
    SyntheticTaskConfig(num_steps=3, operations=("mul", "div", "add"), seed=3),
    SyntheticTaskConfig(num_steps=6, max_value=1000, seed=4),
    SyntheticTaskConfig(num_steps=4, operations=("bags", "sub"), seed=5),
    SyntheticTaskConfig(num_steps=4, operations=("div", "add"), max_value=50, seed=6),
]

# The reference check, independent of the module: parse `<<a op b=c>>` and compute with `operator`.
STEP = re.compile(r"<<(\d+)([-+*/])(\d+)=(\d+)>>")
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
ALL_NAMES = {n for group in NAMES.values() for n in group}


def reference_check(problem, cfg):
    assert set(problem) == {"question", "steps", "answer"}
    assert len(problem["steps"]) == cfg.num_steps
    previous = None
    numbers = []
    for i, step in enumerate(problem["steps"]):
        match = STEP.fullmatch(step)
        assert match, step
        a, op, b, c = int(match[1]), match[2], int(match[3]), int(match[4])
        result = OPS[op](a, b)
        assert result == c, step  # also exact: 96/4 == 24.0, but 7/2 == 3.5 != 3
        if previous is not None:
            assert a == previous, f"step {step} does not chain from {previous}"
        for v in (a, b, c):
            assert 1 <= v < cfg.max_value, step
        previous = c
        numbers += [a, b] if i == 0 else [b]
    assert problem["answer"] == str(previous)
    # The question states exactly the first left operand and every right operand, in order.
    assert [int(x) for x in re.findall(r"\d+", problem["question"])] == numbers


def sentence_op(sentence):
    """Which operation a sentence describes, judged from its wording alone."""
    if "bags with" in sentence and "as many" not in sentence or "boxes of" in sentence:
        return "intro*"
    if re.search(r"\b(has|starts with|collects) \d+ \w+$", sentence):
        return "intro"
    if "times as many" in sentence or "as many" in sentence:
        return "*"
    if "equally" in sentence or "equal groups" in sentence:
        return "/"
    if "more" in sentence:
        return "+"
    if re.search(r"\b(fewer|gives away|loses|sells|gives \d+ \w+ to)\b", sentence):
        return "-"
    raise AssertionError(f"no operation recognised in {sentence!r}")


def wording_check(problem):
    """Each sentence's wording matches its step's operator; the question asks about the holder."""
    *sentences, question = re.split(r"(?<=[.?]) ", problem["question"])
    kinds = [sentence_op(s.rstrip(".")) for s in sentences]
    ops = [parse_step(s)[1] for s in problem["steps"]]
    if kinds[0] == "intro*":
        assert ops[0] == "*"
        kinds, ops = kinds[1:], ops[1:]
    else:
        assert kinds[0] == "intro"
        kinds = kinds[1:]
    assert kinds == ops, (problem, kinds, ops)
    holder = sentences[0].split()[0]
    for s in sentences[1:]:
        first = re.sub(r"^(Then|Next,|After that,|Later,) ", "", s).split()[0]
        if first in ALL_NAMES:
            holder = first  # a sentence about a new person moves the story to them
    assert question.startswith("How many") and question.endswith("?")
    assert re.search(rf"does {holder} have", question), (problem, holder)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.num_steps}-{'+'.join(c.operations)}-{c.max_value}")
def test_problems_are_correct_chained_and_in_range(cfg):
    problems = generate_problems(500, cfg)
    assert len(problems) == 500
    assert len({p["question"] for p in problems}) == 500
    for p in problems:
        reference_check(p, cfg)
        wording_check(p)
        verify_problem(p, cfg)


def test_default_config_uses_every_operation():
    cfg = SyntheticTaskConfig()
    assert cfg.num_steps == 4 and cfg.max_value == 100 and cfg.operations == OPERATIONS
    problems = generate_problems(1000, cfg)
    ops = {parse_step(s)[1] for p in problems for s in p["steps"]}
    assert ops == {"+", "-", "*", "/"}
    assert any("bags" in p["question"] for p in problems)
    assert any(" she " in p["question"] or "She " in p["question"] for p in problems)


def test_only_requested_operations():
    cfg = SyntheticTaskConfig(operations=("add", "sub"))
    ops = {parse_step(s)[1] for p in generate_problems(300, cfg) for s in p["steps"]}
    assert ops == {"+", "-"}


def test_deterministic_and_prefix_stable():
    cfg = SyntheticTaskConfig(seed=7)
    a = generate_problems(400, cfg)
    assert a == generate_problems(400, SyntheticTaskConfig(seed=7))
    assert generate_problems(100, cfg) == a[:100]
    assert generate_problems(400, SyntheticTaskConfig(seed=8)) != a


def test_example_shape():
    p = generate_problems(1, SyntheticTaskConfig(seed=0))[0]
    assert isinstance(p["question"], str) and isinstance(p["answer"], str)
    assert all(isinstance(s, str) and s.startswith("<<") and s.endswith(">>") for s in p["steps"])


def test_verify_problem_rejects_broken_problems():
    cfg = SyntheticTaskConfig(num_steps=2)
    good = {"question": "Tom has 16 apples. He gives away 3 apples. Mia has 2 times as many apples as Tom. "
            "How many apples does Mia have now?", "steps": ["<<16-3=13>>", "<<13*2=26>>"], "answer": "26"}
    verify_problem(good, cfg)
    bad = [
        {**good, "answer": "27"},
        {**good, "steps": ["<<16-3=13>>", "<<12*2=24>>"], "answer": "24"},  # not chained
        {**good, "steps": ["<<16-3=13>>", "<<13*2=27>>"], "answer": "27"},  # wrong result
        {**good, "steps": ["<<16-3=13>>", "<<13/2=6>>"], "answer": "6"},  # inexact division
        {**good, "steps": ["<<16+90=106>>", "<<106-6=100>>"], "answer": "100"},  # out of range
        {**good, "steps": ["<<16-3=13>>"], "answer": "13"},  # too few steps
        {**good, "steps": ["<<16-3=13>>", "13*2=26"]},  # not the format
    ]
    for problem in bad:
        with pytest.raises(ValueError):
            verify_problem(problem, cfg)


def test_splits_disjoint_and_reproducible():
    cfg = SyntheticTaskConfig(seed=3)
    splits = generate_splits(cfg, n_train=2000, n_val=200, n_test=300)
    assert list(splits) == ["train", "validation", "test"]
    assert [len(splits[s]) for s in splits] == [2000, 200, 300]
    questions = {s: {p["question"] for p in splits[s]} for s in splits}
    assert all(len(questions[s]) == len(splits[s]) for s in splits)
    assert not questions["train"] & questions["validation"]
    assert not questions["train"] & questions["test"]
    assert not questions["validation"] & questions["test"]
    assert generate_splits(cfg, 2000, 200, 300) == splits
    # The test split depends only on the config and its own size.
    assert generate_splits(cfg, 50, 10, 300)["test"] == splits["test"]
    assert generate_splits(SyntheticTaskConfig(seed=4), 50, 10, 300)["test"] != splits["test"]


def test_fast_enough():
    start = time.perf_counter()
    problems = generate_problems(5000, SyntheticTaskConfig(seed=11))
    assert time.perf_counter() - start < 2.0
    assert len({p["question"] for p in problems}) == 5000


def test_infeasible_config_fails_loudly():
    with pytest.raises(KavaError, match="distinct problems"):
        generate_problems(10, SyntheticTaskConfig(num_steps=8, operations=("div",)))


@pytest.mark.parametrize(
    "kwargs",
    [dict(operations=("pow",)), dict(operations=()), dict(operations=("add", "add")), dict(num_steps=0),
     dict(max_value=5)],
)
def test_config_validation(kwargs):
    with pytest.raises(KavaError):
        SyntheticTaskConfig(**kwargs)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.num_steps}-{'+'.join(c.operations)}-{c.max_value}")
def test_vocabulary_covers_every_question_word(cfg):
    vocab = synthetic_vocabulary(cfg)
    assert vocab == sorted(set(vocab))
    assert all(w.isalpha() for w in vocab)
    used = {w for p in generate_problems(2000, cfg) for w in re.findall(r"[A-Za-z]+", p["question"])}
    assert used <= set(vocab), used - set(vocab)


def test_vocabulary_default_is_tight_and_follows_operations():
    cfg = SyntheticTaskConfig()
    vocab = set(synthetic_vocabulary(cfg))
    used = {w for p in generate_problems(5000, cfg) for w in re.findall(r"[A-Za-z]+", p["question"])}
    assert vocab == used  # every listed word does occur
    assert len(vocab) < 120
    small = set(synthetic_vocabulary(SyntheticTaskConfig(operations=("add", "sub"))))
    assert small < vocab and "times" not in small and "bags" not in small


def test_write_jsonl_round_trip(tmp_path):
    problems = generate_problems(20, SyntheticTaskConfig())
    write_jsonl(problems, tmp_path / "out" / "train.jsonl")
    assert read_jsonl(tmp_path / "out" / "train.jsonl") == problems
    splits = generate_splits(SyntheticTaskConfig(), 30, 5, 5)
    paths = write_splits(splits, tmp_path / "splits")
    assert {s: read_jsonl(p) for s, p in paths.items()} == splits


def test_format_steps():
    from kava.data.synthetic import format_steps

    steps = ["<<2*3=6>>", "<<6*2=12>>", "<<12/6=2>>"]
    assert format_steps(steps, "equations") == steps
    assert format_steps(steps, "results") == ["6", "12", "2"]
    with pytest.raises(KavaError, match="CoT format"):
        format_steps(steps, "prose")


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.num_steps}-{'+'.join(c.operations)}-{c.max_value}")
def test_nl_format_is_a_sentence_around_each_equation(cfg):
    """Each nl step is one sentence holding its step's equation `a op b = c` and the question's object."""
    from kava.data.synthetic import OBJECTS, format_steps, parse_step

    for p in generate_problems(200, cfg):
        obj = [o for o in OBJECTS if f" {o}" in p["question"]]
        nl = format_steps(p["steps"], "nl", p["question"])
        assert len(nl) == len(p["steps"])
        for sentence, step in zip(nl, p["steps"]):
            a, op, b, c = parse_step(step)
            assert f"{a}{op}{b} = {c} {obj[0]} in " in sentence
            assert sentence.endswith(".") and sentence.count(".") == 1 and sentence[0].isupper()
    with pytest.raises(ValueError, match="exactly one"):
        format_steps(["<<2*3=6>>"], "nl", "Tom has 2 apples and 3 pencils.")


def test_nl_cot_is_much_longer_than_the_benchmarks_latents():
    """The benchmark's nl CoT after drop-last, as its tokenizer cuts it, is at least 2.5 × M = 60 tokens (every
    problem), every word of it in the vocabulary."""
    from kava.config import load_config
    from kava.data.synthetic import format_steps
    from kava.model.word_tokenizer import build_word_tokenizer
    from kava.training.trainer import word_vocabulary_for

    bench = load_config(REPO / "configs" / "synthetic_tiny.yaml", ["data.synthetic.cot_format=nl",
                                                                   "model.name=runs/some-base-model"])
    t, s = bench.model.tiny, bench.data.synthetic
    tok = build_word_tokenizer(word_vocabulary_for(bench), number_digits=t.number_digits, brackets=t.brackets)
    task = SyntheticTaskConfig(num_steps=s.num_steps, max_value=s.max_value, seed=s.seed)
    lengths = []
    for p in generate_problems(300, task):
        ids = tok(" " + " ".join(format_steps(p["steps"], "nl", p["question"])[:-1]))["input_ids"]
        assert tok.unk_token_id not in ids
        lengths.append(len(ids))
    assert min(lengths) >= 2.5 * bench.latent.num_latents, min(lengths)


def test_results_format_reaches_the_training_rows_and_the_test_split():
    from kava.config import load_config
    from kava.data.eval_sets import held_out_examples
    from kava.data.train_sets import load_training_examples

    cfg = load_config(REPO / "configs" / "synthetic_tiny.yaml",
                      ["data.synthetic.cot_format=results", "data.synthetic.num_train=20",
                       "data.synthetic.num_val=2", "data.synthetic.num_test=3"])
    train, _ = load_training_examples(cfg.data)
    assert all(all(s.isdigit() for s in ex.steps) and ex.steps[-1] == ex.answer for ex in train)
    assert all(ex.steps[-1] == ex.answer_text for ex in held_out_examples(cfg))
