"""Checkpoints: nothing unpickled, strict loading, one-line errors for damaged or foreign
checkpoints, and a full disk that leaves the previous checkpoint and results as they were."""

from __future__ import annotations

import ast
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from kava import failpoints
from kava.cli import main
from kava.config import config_from_dict
from kava.errors import KavaError
from kava.training.checkpoint import load_checkpoint
from kava.training.state import STATE_JSON, STATE_TENSORS, load_training_state, save_training_state
from kava.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]


def _write_rows(path: Path, n: int = 24) -> Path:
    rows = []
    for i in range(n):
        a, b = 3 + i % 7, 2 + i % 5
        rows.append({"question": f"Sam has {a} pens and buys {b} more. How many?",
                     "steps": [f"<<{a}+{b}={a + b}>>"], "answer": str(a + b)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(data: Path, out: Path, **extra):
    raw = {
        "model": {"name": "tiny-llama", "dtype": "float32", "tiny": {"hidden_size": 32, "num_layers": 2}},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "latent": {"num_latents": 3, "num_iterations": 1},
        "data": {"dataset": str(data), "source": "local", "val_size": 0},
        "train": {"lr": 3e-3, "max_steps": 4, "global_batch_size": 4, "micro_batch_size": 2, "warmup_ratio": 0.0,
                  "save_every": 2, "keep_last": 5},
    }
    return config_from_dict(raw, [f"output_dir={out}"] + [f"{k}={v}" for k, v in extra.items()])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt-data")
    (root / "eval.jsonl").write_text(json.dumps({"question": "Sam has 3 pens and buys 2 more. How many?",
                                                 "answer": "5"}) + "\n")
    return {"train": _write_rows(root / "train.jsonl"), "eval": root / "eval.jsonl", "root": root}


@pytest.fixture(scope="module")
def lora_run(data):
    out = data["root"] / "lora"
    train(_cfg(data["train"], out), show_progress=False)
    return out


@pytest.fixture(scope="module")
def full_run(data):
    out = data["root"] / "full"
    train(_cfg(data["train"], out, **{"lora.enabled": "false", "train.max_steps": 2}), show_progress=False)
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _one_line_error(capsys, argv: list[str]) -> str:
    """The command exits 2 with exactly one `error:` line (progress lines may precede it), no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


# ----- no pickle ---------------------------------------------------------------------------


def test_training_state_round_trips_exactly(tmp_path):
    from transformers import get_scheduler

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
    opt = torch.optim.AdamW(params, lr=1e-2, betas=(0.8, 0.95))
    sched = get_scheduler("cosine", opt, num_warmup_steps=2, num_training_steps=10)
    for _ in range(3):
        sum((p ** 2).sum() for p in params).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    save_training_state(tmp_path, opt, sched)
    expect = (random.random(), np.random.rand(), torch.rand(3))

    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_JSON, STATE_TENSORS]
    json.loads((tmp_path / STATE_JSON).read_text())  # plain JSON, nothing to unpickle
    opt2 = torch.optim.AdamW(params, lr=1.0)
    sched2 = get_scheduler("cosine", opt2, num_warmup_steps=2, num_training_steps=10)
    load_training_state(tmp_path, opt2, sched2)
    assert (random.random(), np.random.rand()) == expect[:2] and torch.equal(torch.rand(3), expect[2])
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == [{**g, "betas": tuple(g["betas"])} for g in b["param_groups"]]
    for i in a["state"]:
        for k, v in a["state"][i].items():
            assert torch.equal(v, b["state"][i][k]) and v.dtype == b["state"][i][k].dtype
    assert sched.state_dict() == sched2.state_dict()


def _tiny_optimizer():
    params = [torch.nn.Parameter(torch.randn(3))]
    return params, torch.optim.AdamW(params, lr=1e-2)


def test_resume_with_fewer_cuda_devices_than_saved(tmp_path, monkeypatch):
    """Issue 20: a run saved on 2 GPUs, resumed by a requeued job that sees 1, raised a raw
    IndexError from torch.cuda.set_rng_state_all. The visible device gets its saved state."""
    import torch.cuda.random as cuda_random

    saved = [torch.arange(4, dtype=torch.uint8), torch.arange(4, 8).to(torch.uint8)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in saved])
    _params, opt = _tiny_optimizer()
    save_training_state(tmp_path, opt, None)

    restored = {}

    def set_rng_state(state, device=0):  # as torch's: a device that is not there is an IndexError
        if int(device) >= 1:
            raise IndexError("tuple index out of range")
        restored[int(device)] = state.clone()

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(cuda_random, "set_rng_state", set_rng_state)
    load_training_state(tmp_path, _tiny_optimizer()[1], None)
    assert list(restored) == [0] and torch.equal(restored[0], saved[0])


def test_the_fp16_loss_scale_is_resumed(tmp_path):
    """fp16: the GradScaler's scale and growth tracker are part of the training state."""
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer

    Accelerator()  # (AcceleratedOptimizer reads the accelerator's state)
    params, opt = _tiny_optimizer()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    wrapped = AcceleratedOptimizer(opt, device_placement=False, scaler=scaler)
    scaler.scale(params[0].sum() * float("inf")).backward()
    scaler.unscale_(opt)
    scaler.update()  # an overflow: the scale halves
    save_training_state(tmp_path, wrapped, None)
    fresh = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    load_training_state(tmp_path,
                        AcceleratedOptimizer(_tiny_optimizer()[1], device_placement=False, scaler=fresh), None)
    assert fresh.get_scale() == scaler.get_scale() == 2.0 ** 9


class _Payload:
    """Unpickling this runs a shell command that creates a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_crafted_pickle_is_refused_and_never_run(lora_run, data, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    ckpt = _copy(lora_run / "checkpoint-2", run / "checkpoint-2")
    (ckpt / STATE_JSON).unlink()
    (ckpt / STATE_TENSORS).unlink()
    marker = tmp_path / "pwned"
    torch.save({"optimizer": _Payload(marker)}, ckpt / "training_state.pt")
    cfg_file = tmp_path / "c.yaml"
    raw = yaml.safe_load((lora_run / "config.yaml").read_text())
    cfg_file.write_text(yaml.safe_dump(raw | {"output_dir": str(run)}))

    err = _one_line_error(capsys, ["train", "--config", str(cfg_file), "--resume", "--no-progress"])
    assert "training_state.pt, a pickle" in err and "does not unpickle" in err
    assert not marker.exists()
    torch.load(ckpt / "training_state.pt", weights_only=False)  # what kava < this change did on --resume
    assert marker.exists()


@pytest.mark.parametrize("damage, message", [
    (lambda c: (c / STATE_JSON).write_text('{"__dict__": [["optimizer", {"__tensor__": "t999"}]]}'), "is corrupt"),
    (lambda c: (c / STATE_JSON).write_text("[1, 2"), "is corrupt"),
    (lambda c: (c / STATE_TENSORS).write_bytes((c / STATE_TENSORS).read_bytes()[:100]), "corrupt or truncated"),
    (lambda c: (c / STATE_TENSORS).unlink(), "cannot be resumed"),
])
def test_a_damaged_training_state_is_refused(lora_run, data, tmp_path, damage, message):
    run = tmp_path / "run"
    run.mkdir()
    damage(_copy(lora_run / "checkpoint-2", run / "checkpoint-2"))
    with pytest.raises(KavaError, match=message):
        train(_cfg(data["train"], run), resume=True, show_progress=False)


def test_optimizer_state_of_another_shape_is_refused(lora_run, data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    ckpt = _copy(lora_run / "checkpoint-2", run / "checkpoint-2")
    tensors = load_file(str(ckpt / STATE_TENSORS))
    name = next(k for k, v in tensors.items() if v.dim() == 2)
    tensors[name] = torch.zeros(tensors[name].shape[0] + 1, tensors[name].shape[1])
    save_file(tensors, str(ckpt / STATE_TENSORS))
    with pytest.raises(KavaError, match=r"optimizer exp_avg(_sq)? of parameter \d+ has shape"):
        train(_cfg(data["train"], run), resume=True, show_progress=False)


def test_no_from_pretrained_runs_remote_code_unless_asked():
    """Every transformers from_pretrained in kava says trust_remote_code explicitly."""
    calls = []
    for path in (ROOT / "src" / "kava").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "from_pretrained":
                owner = getattr(node.func.value, "id", "")
                if owner.startswith("Auto"):
                    calls.append((path.name, node.lineno, {k.arg for k in node.keywords}))
    assert len(calls) >= 5
    assert [c for c in calls if "trust_remote_code" not in c[2]] == []


# ----- strict loading ----------------------------------------------------------------------


def _edit_tensors(file: Path, edit) -> None:
    tensors = load_file(str(file))
    edit(tensors)
    save_file(tensors, str(file))


def _first_lora(t):
    return next(k for k in sorted(t) if "lora_A" in k)


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _set_config(ckpt: Path, **keys) -> None:
    cfg = yaml.safe_load((ckpt / "kava_config.yaml").read_text())
    for dotted, value in keys.items():
        section, key = dotted.split(".")
        cfg[section][key] = value
    (ckpt / "kava_config.yaml").write_text(yaml.safe_dump(cfg))


def _set_state(ckpt: Path, **keys) -> None:
    state = json.loads((ckpt / "trainer_state.json").read_text())
    (ckpt / "trainer_state.json").write_text(json.dumps({**state, **keys}))


ADAPTER = "adapter/adapter_model.safetensors"
BROKEN_LORA = {
    "adapter key missing": (lambda c: _edit_tensors(c / ADAPTER, lambda t: t.pop(_first_lora(t))),
                            "does not fit the model: 1 missing key(s)"),
    "adapter key unexpected": (lambda c: _edit_tensors(c / ADAPTER, lambda t: t.update(extra=torch.zeros(2))),
                               "1 unexpected key(s) (e.g. extra)"),
    "adapter of another shape": (lambda c: _edit_tensors(c / ADAPTER,
                                                         lambda t: t.update({_first_lora(t): torch.zeros(8, 48)})),
                                 "shape mismatch"),
    "adapter truncated": (lambda c: _truncate(c / ADAPTER), "adapter_model.safetensors is corrupt or truncated"),
    "projection truncated": (lambda c: _truncate(c / "projection.safetensors"),
                             "projection.safetensors is corrupt or truncated"),
    "projection key missing": (lambda c: _edit_tensors(c / "projection.safetensors", lambda t: t.pop(sorted(t)[0])),
                               "projection.safetensors does not fit the model: 1 missing key(s)"),
    "tokenizer missing": (lambda c: shutil.rmtree(c / "tokenizer"),
                          "is incomplete: tokenizer/tokenizer_config.json is missing"),
    "projection missing": (lambda c: (c / "projection.safetensors").unlink(),
                           "is incomplete: projection.safetensors is missing"),
    "trainer state missing": (lambda c: (c / "trainer_state.json").unlink(),
                              "is incomplete: trainer_state.json is missing"),
    "config of a newer kava": (lambda c: (_set_config(c, **{"latent.new_knob": 1}),
                                          _set_state(c, kava_version="9.0.0")),
                               "written by kava 9.0.0, this is kava 0.1.0, and its config does not fit this version: "
                               "unknown key 'latent.new_knob'"),
    "config of an older kava": (lambda c: (_set_config(c, **{"latent.old_knob": 1}), _set_state(c, kava_version=None)),
                                "written by an older kava (no version recorded)"),
    "newer checkpoint format": (lambda c: _set_state(c, format=3), "has format 3"),
    "config asks for remote code": (lambda c: _set_config(c, **{"model.trust_remote_code": True}),
                                    "needs model.trust_remote_code"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_LORA))
def test_a_damaged_or_foreign_lora_checkpoint_is_refused_in_one_line(case, lora_run, data, tmp_path, capsys):
    damage, message = BROKEN_LORA[case]
    ckpt = _copy(lora_run / "checkpoint-final", tmp_path / "ckpt")
    damage(ckpt)
    err = _one_line_error(capsys,
                          ["evaluate", "--checkpoint", str(ckpt), "--datasets", str(data["eval"]), "--no-progress"])
    assert message in err and str(ckpt) in err


BROKEN_FULL = {
    "weight missing": (lambda t: t.pop(sorted(t)[-1]), "model does not fit the model: 1 missing key(s)"),
    "weight of another shape": (lambda t: t.update({sorted(t)[-1]: torch.zeros(3, 3)}), "1 shape mismatch(es)"),
    "weight unexpected": (lambda t: t.update({"model.layers.9.mlp.up_proj.weight": torch.zeros(3)}),
                          "1 unexpected key(s)"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_FULL) + ["truncated"])
def test_a_damaged_full_checkpoint_is_refused_in_one_line(case, full_run, data, tmp_path, capsys):
    ckpt = _copy(full_run / "checkpoint-final", tmp_path / "ckpt")
    weights = next((ckpt / "model").glob("*.safetensors"))
    if case == "truncated":
        _truncate(weights)
        message = "is corrupt or truncated"
    else:
        edit, message = BROKEN_FULL[case]
        _edit_tensors(weights, edit)
    err = _one_line_error(capsys,
                          ["evaluate", "--checkpoint", str(ckpt), "--datasets", str(data["eval"]), "--no-progress"])
    assert message in err


def test_resume_refuses_weights_that_do_not_fit(lora_run, data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    ckpt = _copy(lora_run / "checkpoint-2", run / "checkpoint-2")
    _edit_tensors(ckpt / ADAPTER, lambda t: t.pop(_first_lora(t)))
    with pytest.raises(KavaError, match="does not fit the model: 1 missing key"):
        train(_cfg(data["train"], run), resume=True, show_progress=False)


def test_the_strict_loader_gives_the_model_peft_gives(lora_run):
    """kava builds the LoRA model from adapter_config.json and loads the weights itself;
    the logits are those of peft's own PeftModel.from_pretrained."""
    from peft import PeftModel

    from kava.model.kava_model import add_special_tokens, use_fast_trainable_tokens
    from kava.model.load import load_backbone

    path = lora_run / "checkpoint-final"
    model, tok, builder, cfg = load_checkpoint(path)
    base, _ = load_backbone(cfg.model)
    add_special_tokens(base, tok)
    peft = PeftModel.from_pretrained(base, path / "adapter", is_trainable=False).eval()
    ours, theirs = model.backbone.state_dict(), peft.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    use_fast_trainable_tokens(peft)  # the same embedding code path as KavaModel's
    ids = torch.tensor([tok("Sam has 3 pens <bot><latent>")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model.backbone(input_ids=ids).logits, peft(input_ids=ids).logits)


# ----- a full disk -------------------------------------------------------------------------


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".kava.lock"}


def test_a_full_disk_during_a_checkpoint_leaves_the_previous_one_intact(lora_run, data, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    cfg_file = tmp_path / "c.yaml"
    raw = yaml.safe_load((lora_run / "config.yaml").read_text())
    cfg_file.write_text(yaml.safe_dump(raw | {"output_dir": str(run)}))
    monkeypatch.setenv(failpoints.ENV, "checkpoint.state:2:enospc")  # the final checkpoint, written but for its rename
    monkeypatch.setattr(failpoints, "_hits", {})
    assert main(["train", "--config", str(cfg_file), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: no space left on the device")
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-2"]
    ref, now = _snapshot(lora_run / "checkpoint-2"), _snapshot(run / "checkpoint-2")
    assert ref.keys() == now.keys()
    for name in ref:  # weights and optimizer state byte for byte (the config names the output folder)
        if name.endswith(".safetensors") or name == STATE_JSON:
            assert ref[name] == now[name], name
    monkeypatch.delenv(failpoints.ENV)
    assert main(["train", "--config", str(cfg_file), "--no-progress", "--resume"]) == 0
    final = load_file(str(run / "checkpoint-final" / ADAPTER))
    expect = load_file(str(lora_run / "checkpoint-final" / ADAPTER))
    assert all(torch.equal(final[k], expect[k]) for k in expect)


def test_a_full_disk_during_a_results_write_leaves_the_previous_results_intact(lora_run, data, tmp_path,
                                                                               monkeypatch, capsys):
    out = tmp_path / "eval"
    argv = ["evaluate", "--checkpoint", str(lora_run / "checkpoint-final"), "--datasets", str(data["eval"]),
            "--output-dir", str(out), "--no-progress", "--max-new-tokens", "4"]
    assert main(argv) == 0
    before = _snapshot(out)
    for n in (1, 2):  # the predictions' in-order rewrite, then results_eval.yaml
        monkeypatch.setenv(failpoints.ENV, f"atomic.write:{n}:enospc")
        monkeypatch.setattr(failpoints, "_hits", {})
        assert main(argv) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: no space left on the device")
        assert _snapshot(out) == before
