"""kava.training.guard: non-finite and spiking steps are skipped, counted, and stop the run
after N in a row with the last good checkpoint untouched (tested with an injected NaN)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

import kava.training.trainer as trainer
from conftest import pens_run_config
from kava.cli import main
from kava.io import read_jsonl
from kava.training.guard import StepGuard
from kava.training.state import decode


def test_non_finite_values_are_reasons_to_skip():
    g = StepGuard(max_in_a_row=3)
    assert g.reason_to_skip(1.0, 2.0) is None
    assert g.reason_to_skip(math.nan, 2.0) == "loss is nan"
    assert g.reason_to_skip(1.0, math.inf) == "gradient norm is inf"
    assert [g.skipped_step(s) for s in (4, 5, 6)] == [False, False, True]
    assert (g.first_of_streak, g.in_a_row, g.skipped) == (4, 3, 3)
    g.applied(1.0)
    assert (g.in_a_row, g.first_of_streak, g.skipped) == (0, None, 3)


def test_the_spike_guard_compares_with_the_mean_of_its_window():
    g = StepGuard(max_in_a_row=5, spike_factor=2.0, window=3)
    for loss in (1.0, 2.0):
        assert g.reason_to_skip(100.0, 1.0) is None  # not comparing before the window is full
        g.applied(loss)
    g.applied(3.0)
    assert g.reason_to_skip(4.0, 1.0) is None
    assert g.reason_to_skip(4.1, 1.0).startswith("loss spike: 4.1 > 2 × 2")
    g.applied(4.0)  # the window slides: mean of 2, 3, 4
    assert g.reason_to_skip(6.0, 1.0) is None and g.reason_to_skip(6.1, 1.0) is not None
    again = StepGuard(5, 2.0, 3, state=json.loads(json.dumps(g.state_dict())))
    assert again.state_dict() == g.state_dict()


@pytest.fixture
def run(tmp_path):
    config = pens_run_config(tmp_path, 16, lr=3e-3, max_steps=6, global_batch_size=4, micro_batch_size=2,
                             save_every=2, keep_last=5)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def _poison(monkeypatch, factors: dict[int, float], on_first=None):
    """Scale the loss (and so its gradients) of the given optimizer steps (1-based, 2 micro-batches each)."""
    real = trainer.forward_backward
    calls = itertools.count(1)

    def poisoned(objective, batch, backward, no_sync=None):
        step = (next(calls) + 1) // 2
        factor = factors.get(step)
        if factor is None:
            return real(objective, batch, backward, no_sync)
        if on_first is not None:
            on_first()
        losses = real(objective, batch, lambda loss: backward(loss * factor), no_sync)
        return {k: v * factor if k == "loss" else v for k, v in losses.items()}

    monkeypatch.setattr(trainer, "forward_backward", poisoned)


def _adam_steps(ckpt: Path) -> int:
    tensors = load_file(str(ckpt / "training_state.safetensors"))
    state = decode(json.loads((ckpt / "training_state.json").read_text()), tensors)
    return int(state["optimizer"]["state"][0]["step"])


def test_a_nan_step_and_a_spike_are_skipped_and_logged(run, monkeypatch, capsys):
    _poison(monkeypatch, {3: math.nan, 5: 50.0})
    assert main(["train", "--config", str(run / "c.yaml"), "--no-progress", "train.loss_spike_factor=3",
                 "train.loss_spike_window=2"]) == 0
    log = {r["step"]: r for r in read_jsonl(run / "out" / "train_log.jsonl")}
    assert log[3]["skipped"] == "loss is nan" and math.isnan(log[3]["loss"])
    assert log[5]["skipped"].startswith("loss spike: ")
    assert [log[s].get("skipped_steps", 0) for s in range(1, 7)] == [0, 0, 1, 1, 2, 2]
    assert "step 3 skipped (loss is nan); 1 in a row, 1 in all" in capsys.readouterr().err
    assert _adam_steps(run / "out" / "checkpoint-4") == 3  # four steps, one update not applied


def test_n_skipped_steps_in_a_row_stop_the_run_and_keep_the_last_good_checkpoint(run, monkeypatch, capsys):
    ckpt = run / "out" / "checkpoint-2"
    seen: dict[str, bytes] = {}

    def snapshot():
        if not seen:
            seen.update({str(p): p.read_bytes() for p in ckpt.rglob("*") if p.is_file()})

    _poison(monkeypatch, {3: math.nan, 4: math.nan, 5: math.nan, 6: math.nan}, on_first=snapshot)
    assert main(["train", "--config", str(run / "c.yaml"), "--no-progress", "train.max_skipped_in_a_row=3"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert err == [f"error: 3 steps in a row were skipped (steps 3-5, the last because the loss is nan); the run "
                   f"stopped and the last good checkpoint, {ckpt}, is untouched. Resume it with --resume and a lower "
                   "train.lr (a new schedule starts at the checkpoint) or train.grad_clip, or raise "
                   "train.max_skipped_in_a_row"]
    assert sorted(p.name for p in (run / "out").glob("checkpoint-*")) == ["checkpoint-2"]  # none at step 4
    assert seen and {str(p): p.read_bytes() for p in ckpt.rglob("*") if p.is_file()} == seen


def test_fp16_an_overflowing_step_is_skipped_and_the_next_one_trains(run, monkeypatch):
    """Issue 20: under fp16 the guard skipped `optimizer.step()` after an overflow, so the GradScaler
    was never updated and the next step's clip raised "unscale_() has already been called on this
    optimizer since the last update()". A CPU GradScaler stands in for the CUDA one; step 2's
    gradients overflow (its loss stays finite, as in a real overflow)."""
    import accelerate
    import torch

    real_init = accelerate.Accelerator.__init__
    scalers = []

    def with_scaler(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)  # what accelerate builds on a GPU
        self.native_amp = True
        scalers.append(self.scaler)

    monkeypatch.setattr(accelerate.Accelerator, "__init__", with_scaler)
    real = trainer.forward_backward
    calls = itertools.count(1)

    def overflowing(objective, batch, backward, no_sync=None):
        step = (next(calls) + 1) // 2
        grads = (lambda loss: backward(loss * math.inf)) if step == 2 else backward
        return real(objective, batch, grads, no_sync)

    monkeypatch.setattr(trainer, "forward_backward", overflowing)
    assert main(["train", "--config", str(run / "c.yaml"), "--no-progress", "train.mixed_precision=fp16"]) == 0
    log = {r["step"]: r for r in read_jsonl(run / "out" / "train_log.jsonl")}
    assert log[2]["skipped"] in ("gradient norm is inf", "gradient norm is nan") and math.isfinite(log[2]["loss"])
    assert all("skipped" not in log[s] and math.isfinite(log[s]["grad_norm"]) for s in (1, 3, 4, 5, 6))
    assert scalers and scalers[0].get_scale() == 2.0 ** 7  # the overflow halved the scale; no growth since
    assert _adam_steps(run / "out" / "checkpoint-4") == 3  # four steps, the overflow not applied
