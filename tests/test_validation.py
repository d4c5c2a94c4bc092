"""Validation accuracy during training and checkpoint-best (kava.training.validation)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import kava.evaluation.evaluate as evaluate_module
import kava.training.trainer as trainer_module
from kava.config import config_from_dict
from kava.data.train_sets import ReasoningExample, load_training_examples
from kava.errors import KavaError
from kava.evaluation.answer import is_correct
from kava.evaluation.evaluate import extract_prediction
from kava.inference.generate import Generation, generate
from kava.io import read_jsonl
from kava.training.trainer import train
from kava.training.validation import validation_accuracy, validation_examples

ADAPTER = "adapter/adapter_model.safetensors"


def _rows(n=48):
    rows = []
    for i in range(n):
        a, b = 3 + i % 7, 2 + i % 5
        rows.append({"question": f"Ann has {a} cups and gets {b} more. How many cups now? ({i})",
                     "steps": [f"<<{a}+{b}={a + b}>>", f"<<{a + b}*1={a + b}>>"], "answer": str(a + b)})
    return rows


@pytest.fixture()
def data_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    return path


def _cfg(tmp_path, data_file, **extra):
    raw = {
        "model": {"name": "tiny-llama", "dtype": "float32", "tiny": {"hidden_size": 32, "num_layers": 2}},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "latent": {"num_latents": 3, "num_iterations": 1},
        "data": {"dataset": str(data_file), "source": "local", "val_size": 6},
        "train": {"lr": 3e-3, "max_steps": 2, "global_batch_size": 8, "micro_batch_size": 8, "warmup_ratio": 0.0,
                  "eval_every": 2, "eval_max_examples": 4, "eval_batch_size": 3},
    }
    return config_from_dict(raw, [f"output_dir={tmp_path / 'run'}"] + [f"{k}={v}" for k, v in extra.items()])


class _OneProcess:
    process_index, num_processes, device = 0, 1, torch.device("cpu")


QUESTIONS = [f"Ann has {a} cups and gets {b} more. How many cups now?" for a, b in
             [(3, 4), (12, 5), (7, 7), (20, 1), (1, 1), (9, 30), (4, 8)]]


def _method_cfg(method):
    return config_from_dict({"model": {"name": "tiny-llama"}, "data": {"dataset": "x.jsonl", "source": "local"},
                             "train": {"method": method, "eval_batch_size": 3}})  # batches of 3, left-padded


@pytest.mark.parametrize("method, mode", [("kava", "latent"), ("cot", "cot"), ("direct", "direct")])
def test_validation_accuracy_generates_in_the_method_mode(build_model, method, mode):
    """Against a slow reference: each question answered alone by the real model and scored here
    (the random model answers no number: the accuracy is 0, the forward passes differ by mode)."""
    model, _, builder = build_model("tiny-llama")
    passes, correct = [], 0
    for q in QUESTIONS:
        (gen,) = generate(model, builder, [q], mode=mode)
        correct += bool(is_correct(extract_prediction(gen.text, mode, builder.prompt.answer_prefix), 7.0))
        passes.append(gen.forward_passes)
    rows = [ReasoningExample(q, ("<<3+4=7>>",), "7") for q in QUESTIONS]
    model.train()
    res = validation_accuracy(model, builder, validation_examples(rows, 100), _method_cfg(method), _OneProcess())
    assert res == {"accuracy": round(100.0 * correct / len(QUESTIONS), 4), "mode": mode, "n": len(QUESTIONS),
                   "forward_passes_mean": round(sum(passes) / len(passes), 4)}
    assert model.training  # put back in training mode


def test_validation_accuracy_scores_each_answer(build_model, monkeypatch):
    """The scoring, with answers known in advance: a generation that echoes each question's first
    number, right for the questions whose gold answer is that number."""
    model, _, builder = build_model("tiny-llama")
    modes = []

    def echo(model, builder, questions, mode="latent", **kw):
        modes.append(mode)
        return [Generation(q, f" {q.split()[2]}", [1, 2], forward_passes=5 + i,
                           mode=mode) for i, q in enumerate(questions)]

    monkeypatch.setattr(evaluate_module, "generate", echo)
    gold = [int(q.split()[2]) + (i % 3 == 0) for i, q in enumerate(QUESTIONS)]  # wrong for questions 0, 3, 6
    rows = [ReasoningExample(q, ("<<1+1=2>>",), str(g)) for q, g in zip(QUESTIONS, gold)]
    res = validation_accuracy(model, builder, validation_examples(rows, 100), _method_cfg("direct"), _OneProcess())
    assert res["accuracy"] == round(100.0 * 4 / 7, 4) and modes == ["direct"] * 3
    assert res["forward_passes_mean"] == round((5 + 6 + 7 + 5 + 6 + 7 + 5) / 7, 4)  # batches of 3


@pytest.mark.parametrize("method, mode", [("kava", "latent"), ("cot", "cot"), ("direct", "direct")])
def test_training_logs_the_validation_accuracy_of_the_held_out_rows(tmp_path, data_file, monkeypatch, method, mode):
    asked = []
    real = trainer_module.validation_accuracy

    def spy(model, builder, examples, cfg, accelerator):
        asked.append(([e.question for e in examples], model.training))
        return real(model, builder, examples, cfg, accelerator)

    monkeypatch.setattr(trainer_module, "validation_accuracy", spy)
    final = train(_cfg(tmp_path, data_file, **{"train.method": method}), show_progress=False)
    (val,) = [r for r in read_jsonl(final.parent / "train_log.jsonl") if r.get("split") == "validation"]
    assert val["step"] == 2 and val["mode"] == mode and val["n"] == 4 and val["best"] is True
    assert {"accuracy", "forward_passes_mean", "best_accuracy", "best_step"} <= set(val)
    assert "loss" in val  # the validation loss terms are still there
    # The validation split: the rows held out at the end of the file (data.val_size, at most a tenth), never trained on.
    held_out = [r["question"] for r in _rows()[-4:]]
    assert asked == [(held_out, True)]
    train_rows, _ = load_training_examples(_cfg(tmp_path, data_file).data)
    assert not set(held_out) & {r.question for r in train_rows}


def _scripted_accuracy(monkeypatch, by_step, seen):
    """validation_accuracy replaced by set accuracies per step (the tiny model scores 0)."""
    def fake(model, builder, examples, cfg, accelerator):
        seen.append(fake.step)
        return {"accuracy": by_step[fake.step], "forward_passes_mean": 5.0, "mode": "latent", "n": len(examples)}

    real_losses = trainer_module.validation_losses

    def losses(objective, builder, data, cfg, accelerator, curriculum=None, step=0):
        fake.step = step + 1
        return real_losses(objective, builder, data, cfg, accelerator, curriculum, step)

    monkeypatch.setattr(trainer_module, "validation_accuracy", fake)
    monkeypatch.setattr(trainer_module, "validation_losses", losses)


def test_checkpoint_best_keeps_the_best_step_and_survives_a_kill(tmp_path, data_file, monkeypatch):
    seen = []
    _scripted_accuracy(monkeypatch, {2: 10.0, 4: 30.0, 6: 20.0, 8: 30.0}, seen)
    cfg = _cfg(tmp_path, data_file, **{"train.max_steps": 8, "train.save_every": 2, "train.keep_last": 10})
    train(cfg, show_progress=False)
    run = tmp_path / "run"
    best = run / "checkpoint-best"
    state = json.loads((best / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["validation"]["accuracy"] == 30.0  # the first of the equal bests
    weights = load_file(str(best / ADAPTER))
    at_4 = load_file(str(run / "checkpoint-4" / ADAPTER))
    assert all(torch.equal(weights[k], at_4[k]) for k in at_4)
    assert not (best / "training_state.json").exists()  # weights for evaluation, no optimizer state
    log = [r for r in read_jsonl(run / "train_log.jsonl") if r.get("split") == "validation"]
    assert [(r["step"], r["best"], r["best_step"]) for r in log] == [(2, True, 2), (4, True, 4), (6, False, 4),
                                                                     (8, False, 4)]
    # Killed after step 6's validation, before anything later: resumed from checkpoint-2.
    for name in ("checkpoint-final", "checkpoint-4", "checkpoint-6"):
        shutil.rmtree(run / name)
    before = (best / "trainer_state.json").stat().st_mtime_ns
    seen.clear()
    train(cfg, resume=True, show_progress=False)
    assert seen == [4, 6, 8]
    assert (best / "trainer_state.json").stat().st_mtime_ns == before  # step 4's 30% replayed: not better
    again = [r for r in read_jsonl(run / "train_log.jsonl") if r.get("split") == "validation"]
    assert again == log
    # A new run in the folder (no step checkpoint left) drops the earlier attempt's best.
    shutil.rmtree(run / "checkpoint-final")
    for p in run.glob("checkpoint-[0-9]*"):
        shutil.rmtree(p)
    _scripted_accuracy(monkeypatch, {2: 1.0, 4: 0.5, 6: 0.5, 8: 0.5}, seen)
    train(cfg, resume="auto", show_progress=False)
    assert json.loads((best / "trainer_state.json").read_text())["validation"]["accuracy"] == 1.0


def test_eval_every_without_a_validation_split_is_an_error(tmp_path, data_file):
    """Before: train.eval_every with no validation rows validated nothing, silently."""
    with pytest.raises(KavaError, match="train.eval_every needs a validation split, and .* has none"):
        train(_cfg(tmp_path, data_file, **{"data.val_size": 0}), show_progress=False)
