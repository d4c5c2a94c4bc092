"""`kava train --resume`: from nothing, with a changed config, and extending a finished run
(kava.training.resume; docs/reliability.md)."""

import json
import math
import shutil

import pytest
import torch
import yaml

from kava.cli import main
from kava.config import config_from_dict
from kava.errors import KavaError
from kava.io import read_jsonl
from kava.training.trainer import train


@pytest.fixture()
def data_file(tmp_path):
    rows = []
    for i in range(48):
        a, b = 3 + i % 7, 2 + i % 5
        rows.append({"question": f"Sam has {a} pens and buys {b} boxes of {a} pens. How many pens?",
                     "steps": [f"<<{b}*{a}={a*b}>>", f"<<{a}+{a*b}={a + a*b}>>"], "answer": str(a + a * b)})
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


RAW = {
    "model": {"name": "tiny-llama", "dtype": "float32", "tiny": {"hidden_size": 32, "num_layers": 2}},
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
    "latent": {"num_latents": 4, "num_iterations": 1},
    "data": {"source": "local", "val_size": 0},
    "train": {"lr": 3e-3, "max_steps": 4, "global_batch_size": 8, "micro_batch_size": 8, "warmup_ratio": 0.0,
              "save_every": 2, "keep_last": 5},
}


def _cfg(tmp_path, data_file, folder="run", **extra):
    raw = yaml.safe_load(yaml.safe_dump(RAW))
    raw["data"]["dataset"] = str(data_file)
    overrides = [f"output_dir={tmp_path / folder}"] + [f"{k}={v}" for k, v in extra.items()]
    return config_from_dict(raw, overrides)


def _config_file(tmp_path, data_file) -> str:
    raw = yaml.safe_load(yaml.safe_dump(RAW))
    raw["data"]["dataset"] = str(data_file)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _steps(run):
    return [r for r in read_jsonl(run / "train_log.jsonl") if "loss" in r and "split" not in r]


def _state(ckpt):
    return json.loads((ckpt / "trainer_state.json").read_text())


# ----- resuming from nothing -------------------------------------------------------------------


def test_resume_on_an_empty_or_mistyped_folder_is_an_error(tmp_path, data_file, capsys):
    """Before: --resume on a folder without checkpoints trained from step 0 without a word."""
    with pytest.raises(KavaError, match="no valid checkpoint found in .*missing .*does not exist"):
        train(_cfg(tmp_path, data_file, "missing"), resume=True, show_progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(KavaError, match="no valid checkpoint found in .*empty"):
        train(_cfg(tmp_path, data_file, "empty"), resume=True, show_progress=False)
    assert list((tmp_path / "empty").iterdir()) == [] and not (tmp_path / "missing").exists()
    config = _config_file(tmp_path, data_file)
    assert main(["train", "--config", config, "--output-dir", str(tmp_path / "typo"), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --resume: no valid checkpoint found in") and "\n" not in err
    assert "--resume-if-exists" in err


def test_resume_if_exists_starts_a_new_run_or_continues_one(tmp_path, data_file, capsys):
    config = _config_file(tmp_path, data_file)
    out = tmp_path / "auto"
    argv = ["train", "--config", config, "--output-dir", str(out), "--resume-if-exists", "--no-progress"]
    assert main(argv) == 0  # nothing there: a new run
    assert [r["step"] for r in _steps(out)] == [1, 2, 3, 4]
    shutil.rmtree(out / "checkpoint-final")
    capsys.readouterr()
    assert main(argv) == 0  # checkpoint-2 there: continued
    assert f"resuming from {out / 'checkpoint-2'} (step 2/4)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # one or the other
        main(["train", "--config", config, "--resume", "--resume-if-exists"])
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# ----- a changed config ------------------------------------------------------------------------


def test_a_resume_refuses_to_change_the_model_or_the_data(tmp_path, data_file, capsys):
    """Before: data.max_length and seed changes were taken silently (one run, two recipes)."""
    cfg = _cfg(tmp_path, data_file)
    train(cfg, show_progress=False)
    shutil.rmtree(tmp_path / "run" / "checkpoint-final")
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    with pytest.raises(KavaError) as err:
        train(_cfg(tmp_path, data_file, **{"data.max_length": 300, "seed": 7}), resume=True, show_progress=False)
    msg = str(err.value)
    assert "--resume cannot change data.max_length (512 -> 300), seed (42 -> 7)" in msg and "\n" not in msg
    with pytest.raises(KavaError, match=r"cannot change lora.r \(4 -> 8\)"):
        train(_cfg(tmp_path, data_file, **{"lora.r": 8}), resume=True, show_progress=False)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before


def _lrs_used(monkeypatch):
    """The learning rate of every optimizer step taken (a spy on AdamW.step)."""
    used = []
    real = torch.optim.AdamW.step

    def spy(self, *a, **k):
        used.append(self.param_groups[0]["lr"])
        return real(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    return used


def test_a_new_learning_rate_on_resume_takes_effect_as_a_new_schedule(tmp_path, data_file, monkeypatch):
    """Before: train.lr=... on --resume kept the old rate (and wrote the new one into config.yaml)."""
    cfg = _cfg(tmp_path, data_file, **{"train.max_steps": 6})
    train(cfg, show_progress=False)
    run = tmp_path / "run"
    for name in ("checkpoint-final", "checkpoint-6"):
        shutil.rmtree(run / name, ignore_errors=True)
    shutil.rmtree(run / "checkpoint-4")  # continue from checkpoint-2
    used = _lrs_used(monkeypatch)
    train(_cfg(tmp_path, data_file, **{"train.max_steps": 6, "train.lr": 1e-3}), resume=True, show_progress=False)
    # a new cosine schedule over the 4 steps left, from the new peak (no warm-up)
    expect = [1e-3 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert used == pytest.approx(expect, rel=1e-9)
    log = read_jsonl(run / "train_log.jsonl")
    (event,) = [r for r in log if r.get("event") == "resume"]
    assert event["step"] == 2 and event["changed"] == {"train.lr": [0.003, 0.001]}
    assert [r["lr"] for r in log if r.get("step",
                                          0) > 2 and "loss" in r] == pytest.approx(expect[1:] + [0.0], abs=1e-12)
    final = run / "checkpoint-final"
    assert yaml.safe_load((final / "kava_config.yaml").read_text())["train"]["lr"] == 1e-3
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == 1e-3
    resumes = _state(final)["resumes"]
    assert resumes == _state(run / "checkpoint-4")["resumes"] and resumes[0]["step"] == 2
    assert resumes[0]["changed"] == {"train.lr": [0.003, 0.001]}
    assert "new cosine schedule from step 2 to 6" in resumes[0]["note"]

    # Killed after checkpoint-4 and resumed with the same config: the new schedule goes on, unchanged.
    full = _steps(run)
    shutil.rmtree(final)
    used.clear()
    train(_cfg(tmp_path, data_file, **{"train.max_steps": 6, "train.lr": 1e-3}), resume=True, show_progress=False)
    assert used == pytest.approx(expect[2:], rel=1e-9)
    again = read_jsonl(run / "train_log.jsonl")
    assert [r for r in again if r.get("event") == "resume"] == [event]
    assert [r["loss"] for r in _steps(run)] == pytest.approx([r["loss"] for r in full], rel=1e-5)


def test_the_nan_advice_lower_the_lr_and_resume_works(tmp_path, data_file, capsys):
    """docs/reliability.md: after a streak of skipped steps, "lower train.lr ... and resume"."""
    config = _config_file(tmp_path, data_file)
    out = str(tmp_path / "run")
    assert main(["train", "--config", config, "--output-dir", out, "--no-progress", "train.max_steps=6"]) == 0
    shutil.rmtree(tmp_path / "run" / "checkpoint-final")
    capsys.readouterr()
    assert main(["train", "--config", config, "--output-dir", out, "--no-progress", "--resume",
                 "train.max_steps=6", "train.lr=1e-4", "train.grad_clip=1.0"]) == 0
    err = capsys.readouterr().err
    assert ("resuming from" in err and "step 4/6); changed: train.grad_clip 2.0 -> 1.0; train.lr 0.003 -> 0.0001 "
            "(a new cosine schedule from step 4 to 6, peak 0.0001, 0 warm-up steps)") in err


# ----- a finished run --------------------------------------------------------------------------


def test_resume_with_more_steps_extends_a_finished_run(tmp_path, data_file, capsys):
    """Before: `kava train --resume train.max_steps=6` on a finished 4-step run said "nothing to
    resume" and exited 0. With a constant rate, the extended run equals a 6-step run: it goes on
    from checkpoint-final with its optimizer state."""
    config = _config_file(tmp_path, data_file)
    out = str(tmp_path / "run")
    base = ["train", "--config", config, "--no-progress", "--output-dir"]
    constant = ["train.lr_scheduler=constant", "train.save_every=null"]
    assert main([*base, out, *constant]) == 0
    assert main([*base, out, "--resume", *constant]) == 0
    assert "the run is complete, nothing to resume" in capsys.readouterr().err
    assert main([*base, out, "--resume", *constant, "train.max_steps=6"]) == 0
    assert "resuming from" in capsys.readouterr().err
    assert main([*base, str(tmp_path / "ref"), *constant, "train.max_steps=6"]) == 0
    extended, ref = _steps(tmp_path / "run"), _steps(tmp_path / "ref")
    assert [r["step"] for r in extended] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(extended, ref):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6), a["step"]
    final = tmp_path / "run" / "checkpoint-final"
    assert _state(final)["step"] == 6 and _state(final)["resumes"][0]["changed"] == {"train.max_steps": [4, 6]}
    # A shorter run, or a new rate without more steps, cannot continue a finished one.
    assert main([*base, out, "--resume", *constant, "train.max_steps=5"]) == 2
    assert "gives 5 steps, but" in capsys.readouterr().err
    assert main([*base, out, "--resume", *constant, "train.max_steps=6", "train.lr=1e-4"]) == 2
    assert "needs more steps to take effect" in capsys.readouterr().err


def test_more_steps_on_resume_recompute_the_schedule(tmp_path, data_file, monkeypatch):
    """An interrupted run resumed with a larger train.max_steps: the cosine goes on as if the run
    had been planned with the new length (HF Trainer, litgpt), from the next step on."""
    train(_cfg(tmp_path, data_file, **{"train.max_steps": 4}), show_progress=False)
    run = tmp_path / "run"
    shutil.rmtree(run / "checkpoint-final")
    used = _lrs_used(monkeypatch)
    train(_cfg(tmp_path, data_file, **{"train.max_steps": 8}), resume=True, show_progress=False)
    assert used == pytest.approx([3e-3 * 0.5 * (1 + math.cos(math.pi * s / 8)) for s in (2, 3, 4, 5, 6, 7)], rel=1e-9)
    assert read_jsonl(run / "train_log.jsonl")[2]["changed"] == {"train.max_steps": [4, 8]}
