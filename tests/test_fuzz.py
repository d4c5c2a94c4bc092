"""Bad input, fuzzed (hypothesis): configs, training and evaluation JSONL files, `kava infer
--input` files and command lines. Every case either loads as a valid value or ends in one
`error:` line that names the problem, a non-zero exit code, no traceback, and nothing
written. `pytest tests/test_fuzz.py --hypothesis-show-statistics` prints how many cases
each property ran; `KAVA_FUZZ_SCALE=10` runs ten times as many.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

pytest_plugins = ["fixtures_eval"]

from kava.cli import main  # noqa: E402
from kava.config import KavaConfig, config_to_dict, load_config  # noqa: E402
from kava.data.eval_sets import load_local_jsonl  # noqa: E402
from kava.data.train_sets import load_jsonl_examples  # noqa: E402
from kava.errors import KavaError  # noqa: E402
from kava.evaluation.cli import read_questions  # noqa: E402

SCALE = int(os.environ.get("KAVA_FUZZ_SCALE", "1"))  # KAVA_FUZZ_SCALE=10: ten times the cases of each property


def fuzz(cases: int, *checks: HealthCheck):
    return settings(max_examples=cases * SCALE, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, *checks])

# ----- values ------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**18, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["", "-1", "0", "1e400", "-1e400", "nan", "inf", "1,000", "½", "٣", "72 apples", "\x00", "\u202e"]),
)
values = st.recursive(scalars,
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=3),
                      max_leaves=8)


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exit_:  # argparse
            rc = exit_.code
    return rc, out.getvalue(), err.getvalue()


# ----- configs -----------------------------------------------------------------------------

BASE = config_to_dict(KavaConfig.model_validate({"model": {"name": "tiny-llama"},
                                                 "data": {"dataset": "x.jsonl", "source": "local"}}))
KEYS = sorted(f"{s}.{k}" for s, v in BASE.items() if isinstance(v, dict) for k in v) + sorted(BASE)


@st.composite
def config_texts(draw) -> bytes:
    kind = draw(st.sampled_from(["mutated"] * 6 + ["deep", "bytes", "text"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200)) + b"\xff\xfe"  # never valid UTF-8
    if kind == "text":
        return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    if kind == "deep":
        n = draw(st.integers(1, 700))  # past the recursion limit of the YAML composer (2 frames a level)
        return (f"model: {{name: tiny-llama}}\ndata: {{dataset: x.jsonl, source: local}}\n"
                f"{draw(st.sampled_from(KEYS)).split('.')[0]}: " + "[" * n + "]" * n).encode()
    raw = json.loads(json.dumps(BASE))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(KEYS) | st.text(min_size=1, max_size=10).map(lambda k: f"train.{k}"))
        cur = raw
        *parents, last = path.split(".")
        for p in parents:
            cur = cur.setdefault(p, {}) if isinstance(cur.get(p, {}), dict) else {}
        if draw(st.booleans()):
            cur[last] = draw(values)
        else:
            cur.pop(last, None)
    try:
        return yaml.safe_dump(raw, allow_unicode=True).encode("utf-8", "surrogatepass")
    except yaml.YAMLError:
        return b"model: [unclosed"


@fuzz(200)
@given(text=config_texts())
def test_a_config_loads_or_is_refused_in_one_line(text):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.yaml"
        path.write_bytes(text)
        try:
            cfg = load_config(path)
        except KavaError as err:
            assert "\n" not in str(err) and str(path) in str(err)
            event("refused")
            return
        event("loaded")
        assert isinstance(cfg, KavaConfig)
        assert isinstance(cfg.train.lr, float) and math.isfinite(cfg.train.lr) and cfg.train.lr > 0


@fuzz(100)
@given(text=config_texts())
def test_kava_train_refuses_a_bad_config_in_one_line_and_writes_nothing(text):
    with tempfile.TemporaryDirectory() as d:
        path, out = Path(d) / "c.yaml", Path(d) / "out"
        path.write_bytes(text)
        try:
            load_config(path, [f"output_dir={out}"])  # (as `kava train --output-dir` loads it)
            event("valid (not run)")
            return  # a valid config would start training; the property is about the bad ones
        except KavaError:
            event("refused")
        rc, stdout, err = _run_cli(["train", "--config", str(path), "--output-dir", str(out)])
        assert rc == 2 and stdout == ""
        assert _one_error_line(err).startswith(f"error: config {path}") or "invalid config" in err
        assert not out.exists()


# ----- JSONL files -------------------------------------------------------------------------


def _row(fields: dict):
    return st.fixed_dictionaries({}, optional={k: v for k, v in fields.items()})


good_train = {"question": st.text(min_size=1, max_size=30).filter(str.strip),
              "steps": st.lists(st.text(max_size=10), max_size=3),
              "answer": st.integers(-10**6, 10**6).map(str)}
good_eval = {"question": good_train["question"], "answer": st.integers(-10**6, 10**6) | st.floats(-1e6, 1e6)}


def jsonl_lines(fields: dict):
    mixed = {k: v | values for k, v in fields.items()}
    line = st.one_of(
        st.fixed_dictionaries(fields).map(json.dumps),  # a good row
        _row(mixed).map(json.dumps),  # fields missing or of any type
        values.map(json.dumps),  # any JSON at all (a list, a number, ...)
        st.text(max_size=30).map(lambda t: t.replace("\n", " ")),  # not JSON
        st.just(""), st.just("   "),
    )
    return st.tuples(st.lists(line, max_size=6), st.booleans()).map(
        lambda x: ("\n".join(x[0]) + "\n").encode("utf-8", "surrogatepass") + (b"\xc3\x28\n" if x[1] else b""))


@fuzz(200)
@given(data=jsonl_lines(good_train))
def test_a_training_jsonl_loads_or_is_refused_in_one_line(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "train.jsonl"
        path.write_bytes(data)
        try:
            rows = load_jsonl_examples(path)
        except KavaError as err:
            assert "\n" not in str(err) and str(path) in str(err), str(err)
            event("refused")
            return
        event("loaded")
        for r in rows:
            assert isinstance(r.question, str) and r.question.strip()
            assert all(isinstance(s, str) for s in r.steps)
            assert math.isfinite(float(r.answer))


@fuzz(200)
@given(data=jsonl_lines(good_eval))
def test_an_evaluation_jsonl_loads_or_is_refused_in_one_line(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "eval.jsonl"
        path.write_bytes(data)
        try:
            examples = load_local_jsonl(path)
        except KavaError as err:
            assert "\n" not in str(err) and str(path) in str(err), str(err)
            event("refused")
            return
        event("loaded")
        assert examples and len({e.id for e in examples}) == len(examples)
        for e in examples:
            assert e.question.strip() and math.isfinite(e.answer)


# ----- kava infer --input ------------------------------------------------------------------

question_lines = jsonl_lines({"question": good_train["question"], "id": st.integers() | st.text(max_size=5)})


@fuzz(200)
@given(data=question_lines, suffix=st.sampled_from([".jsonl", ".txt"]))
def test_an_infer_input_file_is_read_line_by_line(data, suffix):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"questions{suffix}"
        path.write_bytes(data)
        try:
            items, bad = read_questions(path)
        except KavaError as err:
            assert "\n" not in str(err) and str(path) in str(err)
            event("refused")
            return
        event("some lines bad" if bad else "all lines good")
        text_lines = data.decode("utf-8").splitlines()
        numbered = [n for n, ln in enumerate(text_lines, 1) if ln.strip()]
        assert sorted([it["line"] for it in items] + [n for n, _ in bad]) == numbered  # each line: answered or reported
        assert all(isinstance(it["question"], str) and it["question"].strip() for it in items)


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


bad_question_line = st.one_of(
    values.filter(lambda v: not isinstance(v, dict)).map(json.dumps),  # JSON, but no object
    st.dictionaries(st.sampled_from(["id", "q", "text"]), values, max_size=2).map(json.dumps),  # no question
    st.fixed_dictionaries({"question": values.filter(lambda v: not (isinstance(v, str) and v.strip()))})
    .map(json.dumps),
    st.text(min_size=1, max_size=20).filter(lambda t: t.strip() and not t.lstrip().startswith(("{", "[", '"')))
    .map(lambda t: t.replace("\n", " ").replace("\r", " ")),  # not JSON
)


@fuzz(40, HealthCheck.function_scoped_fixture)
@given(lines=st.lists(bad_question_line, min_size=1, max_size=5))
def test_kava_infer_reports_every_bad_line_and_writes_nothing(checkpoint, lines):
    with tempfile.TemporaryDirectory() as d:
        path, out = Path(d) / "q.jsonl", Path(d) / "answers.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
        items, bad = read_questions(path)
        assert not items
        rc, stdout, err = _run_cli(["infer", "--checkpoint", str(checkpoint), "--input", str(path),
                                    "--output", str(out)])
        assert rc == 1 and "Traceback" not in err and not out.exists()
        for n, _ in bad:
            assert sum(ln.startswith(f"error: {path}, line {n}: ") for ln in err.splitlines()) == 1
        event(f"{len(bad)} bad line(s)")


# ----- command lines -----------------------------------------------------------------------

junk = st.one_of(st.text(max_size=12), st.sampled_from(["-1", "0", "nan", "1e999", "", "--", "-", "x=1", "=1", "a.b="]))
OPTIONS = {
    "train": ["--output-dir", "--seed", "--resume", "--resume-if-exists", "--no-progress"],
    "evaluate": ["--datasets", "--source", "--limit", "--batch-size", "--mode", "--max-new-tokens", "--output",
                 "--output-dir", "--device", "--dtype", "--sampling", "--temperature", "--top-p",
                 "--top-k", "--samples",
                 "--seed"],
    "infer": ["--question", "--input", "--output", "--mode", "--sampling", "--temperature", "--top-p", "--top-k",
              "--seed", "--max-new-tokens", "--batch-size", "--device", "--show-latents", "--no-latent"],
    "sweep": ["--seeds", "--output-dir", "--run-name", "--datasets", "--limit", "--eval-batch-size", "--devices",
              "--train-only", "--eval-only"],
    "aggregate": ["--output"],
    "compare": ["--alpha"],
}


@st.composite
def command_lines(draw, missing: Path) -> list[str]:
    cmd = draw(st.sampled_from(sorted(OPTIONS)))
    # The one argument that names something to read always names a file that does not exist,
    # so no generated command can start real work.
    head = {"train": ["--config", str(missing / "c.yaml")], "sweep": ["--config", str(missing / "c.yaml")],
            "evaluate": ["--checkpoint", str(missing)], "infer": ["--checkpoint", str(missing)],
            "aggregate": ["--experiments-dir", str(missing)], "compare": [str(missing / "a"), str(missing / "b")]}[cmd]
    args = []
    for _ in range(draw(st.integers(0, 4))):
        args.append(draw(st.sampled_from(OPTIONS[cmd] + ["--bogus"])))
        if draw(st.booleans()):
            args.append(draw(junk))
    if draw(st.booleans()):
        head = head[: draw(st.integers(0, len(head)))]  # a required argument left out
    return [cmd, *draw(st.permutations(head + args))] if draw(st.booleans()) else [cmd, *head, *args]


@fuzz(200)
@given(data=st.data())
def test_a_bad_command_line_is_refused_in_one_line_and_writes_nothing(data):
    with tempfile.TemporaryDirectory() as d:
        here, missing = Path(d) / "cwd", Path(d) / "missing"
        here.mkdir()
        argv = data.draw(command_lines(missing))
        old = os.getcwd()
        os.chdir(here)
        try:
            rc, stdout, err = _run_cli(argv)
        finally:
            os.chdir(old)
        assert rc not in (0, None), (argv, stdout, err)
        assert _one_error_line(err) and list(here.iterdir()) == [] and not missing.exists(), (argv, err)
        event(f"kava {argv[0]}, exit {rc}")
