"""The training loop: loss goes down, checkpoints reload exactly, resume reproduces the run."""

import json
import shutil

import pytest
import torch

from kava.cli import main
from kava.config import config_from_dict
from kava.errors import KavaError
from kava.io import read_jsonl
from kava.training.checkpoint import load_checkpoint
from kava.training.trainer import train


def _rows(n=48):
    rows = []
    for i in range(n):
        a, b = 3 + i % 7, 2 + i % 5
        rows.append({"question": f"Sam has {a} pens and buys {b} boxes of {a} pens. How many pens?",
                     "steps": [f"<<{b}*{a}={a*b}>>", f"<<{a}+{a*b}={a + a*b}>>"], "answer": str(a + a * b)})
    return rows


@pytest.fixture()
def data_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    return path


def _cfg(tmp_path, data_file, **extra):
    overrides = [f"output_dir={tmp_path / 'run'}"] + [f"{k}={v}" for k, v in extra.items()]
    raw = {
        "model": {"name": "tiny-llama", "dtype": "float32", "tiny": {"hidden_size": 32, "num_layers": 2}},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
        "latent": {"num_latents": 4, "num_iterations": 2},
        "data": {"dataset": str(data_file), "source": "local", "val_size": 0},
        "train": {"lr": 3e-3, "max_steps": 4, "global_batch_size": 8, "micro_batch_size": 4, "warmup_ratio": 0.0},
    }
    return config_from_dict(raw, overrides)


@pytest.mark.parametrize("lora, factor", [(False, 0.8), (True, 0.99)])
def test_loss_goes_down_on_a_repeated_batch(tmp_path, data_file, lora, factor):
    from kava.data.batches import encode_dataset, make_batch
    from kava.data.train_sets import load_training_examples
    from kava.model.capture import enable_capture
    from kava.model.kava_model import build_kava_model, trainable_parameters
    from kava.training.objective import KavaObjective

    cfg = _cfg(tmp_path, data_file, **{"lora.dropout": 0.0, "lora.enabled": lora})
    torch.manual_seed(0)
    model, tok, builder = build_kava_model(cfg)
    enable_capture(model.backbone)
    data, _ = encode_dataset(load_training_examples(cfg.data)[0], builder, cfg)
    batch = make_batch(builder, data[:4], "kava", "cpu")
    obj = KavaObjective(model, cfg)
    opt = torch.optim.AdamW(trainable_parameters(model), lr=3e-3)
    losses = []
    for _ in range(12):
        out = obj(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < factor * losses[0]
    assert set(out) == {"loss", "ce_student", "ce_teacher", "codi", "kv"}


@pytest.mark.parametrize("method", ["cot", "direct"])
def test_baseline_methods_train(tmp_path, data_file, method):
    final = train(_cfg(tmp_path, data_file, **{"train.method": method, "train.max_steps": 2}), show_progress=False)
    log = read_jsonl(final.parent / "train_log.jsonl")
    assert len(log) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)


def test_save_then_load_gives_identical_outputs(tmp_path, data_file):
    from kava.inference import generate

    cfg = _cfg(tmp_path, data_file, **{"train.max_steps": 3})
    final = train(cfg, show_progress=False)
    model, tok, builder, cfg2 = load_checkpoint(final)
    again, _, builder2, _ = load_checkpoint(final)
    assert cfg2 == cfg
    qs = ["Sam has 3 pens and buys 2 boxes of 3 pens. How many pens?", "What is 7?"]
    a = generate(model, builder, qs, mode="latent", max_new_tokens=6, return_latents=True)
    b = generate(again, builder2, qs, mode="latent", max_new_tokens=6, return_latents=True)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert torch.equal(a[0].latent_hidden, b[0].latent_hidden)
    # The loaded weights are the trained ones, not the initial ones: LoRA B moved away from zero.
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)


def test_interrupted_and_resumed_run_reproduces_the_losses(tmp_path, data_file):
    cfg = _cfg(tmp_path, data_file, **{"train.max_steps": 6, "train.save_every": 2, "train.keep_last": 5})
    train(cfg, show_progress=False)
    run = tmp_path / "run"
    full = read_jsonl(run / "train_log.jsonl")
    # Simulate a crash after step 4: the final checkpoint and the step-6 state never got written.
    shutil.rmtree(run / "checkpoint-final")
    with pytest.raises(KavaError, match="--resume"):
        train(cfg, show_progress=False)
    train(cfg, resume=True, show_progress=False)
    resumed = read_jsonl(run / "train_log.jsonl")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(full, resumed):
        for key in ("loss", "ce_student", "ce_teacher", "codi", "kv"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)


def test_overlong_examples_are_dropped_and_counted(tmp_path, data_file, capsys):
    cfg = _cfg(tmp_path, data_file, **{"data.max_length": 75, "train.max_steps": 1})
    from kava.data.batches import encode_dataset
    from kava.data.train_sets import load_training_examples
    from kava.model.kava_model import build_kava_model

    _, _, builder = build_kava_model(cfg)
    rows = load_training_examples(cfg.data)[0]
    kept, dropped = encode_dataset(rows, builder, cfg)
    assert dropped > 0 and len(kept) + dropped == len(rows)
    assert all(builder.teacher_length(e) <= 75 for e in kept)


def test_cli_errors_are_one_line(tmp_path, capsys, data_file):
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: config file not found") and "\n" not in err
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{name: tiny-llama}}\ndata: {{dataset: {tmp_path / 'none.jsonl'}, source: local}}\n")
    assert main(["train", "--config", str(cfg), "--output-dir", str(tmp_path / "o")]) == 2
    assert "training data file not found" in capsys.readouterr().err
    assert main(["train", "--config", str(cfg), "train.bogus=1"]) == 2
    assert "unknown key 'train.bogus'" in capsys.readouterr().err


def test_validation_loss_is_logged(tmp_path, data_file):
    cfg = _cfg(tmp_path, data_file, **{"train.max_steps": 2, "train.eval_every": 1, "data.val_size": 8,
                                       "train.eval_max_examples": 4})
    final = train(cfg, show_progress=False)
    log = read_jsonl(final.parent / "train_log.jsonl")
    val = [r for r in log if r.get("split") == "validation"]
    assert [r["step"] for r in val] == [1, 2]
    assert {"loss", "ce_student", "ce_teacher", "codi", "kv"} <= set(val[0])
    assert all(r["loss"] > 0 for r in val)


@pytest.mark.parametrize("lora", [True, False])
def test_latent_warmup_trains_only_the_latent_parameters(tmp_path, data_file, lora):
    """train.latent_warmup_steps: in the first N steps only the projection and the rows of <bot>,
    <eot>, <latent> change. Two runs on different data from the same initial weights then end with
    bit-identical backbones (both still the initial one) and different latent parameters; without
    the warm-up the backbones differ."""

    def run(name, data_seed, warmup):
        extra = {"train.latent_warmup_steps": warmup, "train.max_steps": 2, "output_dir": tmp_path / name,
                 "model.tiny.seed": 0, "seed": data_seed}
        if not lora:
            extra["lora.enabled"] = "false"
        cfg = _cfg(tmp_path, data_file, **extra)
        model, *_ = load_checkpoint(train(cfg, show_progress=False))
        return model

    a, b, c = run("a", 1, 2), run("b", 2, 2), run("c", 2, 0)
    special = [a.special.bot, a.special.eot, a.special.latent]
    pb, pc = dict(b.named_parameters()), dict(c.named_parameters())
    n_backbone = 0
    for name, p in a.named_parameters():
        x, y = p.detach(), pb[name].detach()
        if name.startswith("projection.") or "trainable_tokens_delta" in name:
            assert not torch.equal(x, y), name
        elif x.dim() == 2 and x.shape[0] > max(special) and ("embed_tokens" in name or "lm_head" in name):
            differ = {i for i in range(x.shape[0]) if not torch.equal(x[i], y[i])}
            # full fine-tuning: the special rows train inside the matrix; LoRA: the matrix is frozen
            assert (differ <= set(special) and differ) if p.requires_grad else not differ, name
        elif "lora_A" in name:  # drawn from the global RNG, which `seed` moves: not comparable across runs
            continue
        else:
            assert torch.equal(x, y), name
            n_backbone += 1
            if not torch.equal(y, pc[name].detach()):
                n_backbone += 1000  # control: without the warm-up this weight trained
    assert n_backbone > 1000
