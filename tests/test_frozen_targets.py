"""kava.teacher_targets: frozen — the distillation targets come from the weights training
started from, through the same no-grad pass as `separate_pass`, while the live weights train."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import EXAMPLES, perturb
from kava.config import config_from_dict, shares_question
from kava.data.batches import make_batch
from kava.model.capture import enable_capture
from kava.model.kava_model import build_kava_model
from kava.training.objective import KavaObjective
from kava.training.trainer import forward_backward


def _cfg(lora: bool, **extra):
    raw = {"model": {"name": "tiny-llama", "dtype": "float32"},
           "lora": {"enabled": lora, "r": 8, "alpha": 16, "dropout": 0.0},
           "latent": {"num_latents": 6, "num_iterations": 2}, "data": {"dataset": "x.jsonl", "source": "local"}}
    return config_from_dict(raw, [f"{k}={v}" for k, v in extra.items()])


def _model(cfg):
    torch.manual_seed(0)
    model, _tok, builder = build_kava_model(cfg)
    perturb(model, 0)
    enable_capture(model.backbone)
    model.train()
    return model, builder


def _targets(objective, batch):
    out = objective(batch, phase="teacher")["teacher"]
    return out.codi_hidden, [(s.keys, s.values) for s in out.selections]


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_frozen_targets_are_the_starting_weights_targets(lora):
    cfg = _cfg(lora, **{"kava.teacher_targets": "frozen"})
    model, builder = _model(cfg)
    batch = make_batch(builder, [builder.encode(e) for e in EXAMPLES], "kava", "cpu", shares_question(cfg))
    frozen = KavaObjective(model, cfg)
    start = copy.deepcopy(model)  # a model that keeps the starting weights
    sep_cfg = cfg.model_copy(deep=True)
    sep_cfg.kava.teacher_targets = "separate_pass"
    reference = _targets(KavaObjective(start, sep_cfg), batch)
    # the weights move (a training step would): the frozen targets stay the starting ones ...
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    live = {n: p.detach().clone() for n, p in model.named_parameters()}
    got = _targets(frozen, batch)
    torch.testing.assert_close(got, reference, atol=1e-5, rtol=1e-5)
    # ... while the separate pass over the live weights gives other targets
    moved = _targets(KavaObjective(model, sep_cfg), batch)
    assert not torch.allclose(moved[0][-1], reference[0][-1], atol=1e-3)
    for n, p in model.named_parameters():  # the live weights are back in place, untouched
        assert p is dict(model.named_parameters())[n] and torch.equal(p, live[n]), n


@pytest.mark.parametrize("two_phase", [True, False])
def test_frozen_targets_train_the_live_weights(two_phase):
    """The step's gradients equal separate_pass's on a model whose live weights equal the start
    (the targets are then the same), and every trainable weight gets one."""
    grads = {}
    for targets in ("frozen", "separate_pass"):
        cfg = _cfg(True, **{"kava.teacher_targets": targets})
        model, builder = _model(cfg)
        batch = make_batch(builder, [builder.encode(e) for e in EXAMPLES], "kava", "cpu", shares_question(cfg))
        objective = KavaObjective(model, cfg)
        model.zero_grad(set_to_none=True)
        if two_phase:
            forward_backward(objective, batch, lambda loss: loss.backward())
        else:
            objective(batch)["loss"].backward()
        grads[targets] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads["frozen"].keys() == grads["separate_pass"].keys()
    assert len(grads["frozen"]) == sum(p.requires_grad for p in model.parameters())
    for n in grads["frozen"]:
        torch.testing.assert_close(grads["frozen"][n], grads["separate_pass"][n], atol=1e-6, rtol=1e-5, msg=n)
