"""Every speed/memory optimisation gives the numbers of the straightforward version.

- the fast trainable-token layers (no merged [V, d] weight per call) vs peft's own code;
- the CE over labelled positions only vs the CE over the full logits;
- the two-phase step (teacher forward + backward, then student forward + backward) vs one
  forward of the whole objective and one backward, with dropout on (same seeds);
- gradient checkpointing vs none.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from conftest import EXAMPLES, perturb
from kava.config import config_from_dict
from kava.data.batches import make_batch
from kava.model.cache import replays_layers
from kava.model.kava_model import build_kava_model
from kava.training.objective import KavaObjective
from kava.training.trainer import forward_backward

ATOL, RTOL = 1e-6, 1e-5


def _close(a, b, atol=ATOL, rtol=RTOL):
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


@contextlib.contextmanager
def peft_trainable_tokens(model):
    """Run peft's own TrainableTokensLayer code inside the block."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    swapped = []
    for m in model.modules():
        if isinstance(m, TrainableTokensLayer) and type(m) is not TrainableTokensLayer:
            swapped.append((m, type(m)))
            m.__class__ = TrainableTokensLayer
    assert swapped, "the model has no fast trainable-token layers"
    try:
        yield
    finally:
        for m, cls in swapped:
            m.__class__ = cls


def _cfg(name="tiny-llama", dropout=0.0, **extra):
    raw = {
        "model": {"name": name, "dtype": "float32"},
        "lora": {"r": 8, "alpha": 16, "dropout": dropout},
        "latent": {"num_latents": 6, "num_iterations": 3},
        "data": {"dataset": "x.jsonl", "source": "local"},
    }
    return config_from_dict(raw, [f"{k}={v}" for k, v in extra.items()])


def _model(cfg, seed=0):
    from kava.model.capture import enable_capture

    torch.manual_seed(seed)
    model, tok, builder = build_kava_model(cfg)
    perturb(model, seed)
    enable_capture(model.backbone)
    return model, builder


def _grads(model):
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters() if p.requires_grad}


def _same_grads(a, b, atol=ATOL, rtol=RTOL):
    assert a.keys() == b.keys()
    for n in a:
        assert (a[n] is None) == (b[n] is None), n
        if a[n] is not None:
            _close(a[n], b[n], atol, rtol)


# ----- fast trainable tokens ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_fast_trainable_tokens_equal_peft(name):
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    model, builder = _model(_cfg(name))
    fast = [m for m in model.modules() if isinstance(m, TrainableTokensLayer)]
    assert fast and all(type(m) is not TrainableTokensLayer for m in fast)
    s = builder.special
    ids = torch.tensor([[5, s.bot, 7, s.latent, s.latent, s.eot, 9], [s.eot, 3, 3, 4, s.bot, 2, 1]])
    emb = model.backbone.get_input_embeddings()
    head = model.backbone.get_output_embeddings()
    results = []
    for ctx in (contextlib.nullcontext(), peft_trainable_tokens(model)):
        model.zero_grad(set_to_none=True)
        with ctx:
            e = emb(ids)
            logits = head(torch.tanh(e))
            (logits.square().mean() + e.sum()).backward()
        results.append((e.detach(), logits.detach(), _grads(model)))
    (e1, l1, g1), (e2, l2, g2) = results
    torch.testing.assert_close(e1, e2, atol=0, rtol=0)  # a lookup is a copy: exact
    _close(l1, l2)
    _same_grads(g1, g2)
    assert any(g is not None and g.abs().sum() > 0 for n, g in g1.items() if "trainable_tokens" in n)


def test_fast_trainable_tokens_objective_equal_peft():
    cfg = _cfg()
    model, builder = _model(cfg)
    batch = make_batch(builder, [builder.encode(e) for e in EXAMPLES], "kava", "cpu")
    outs = []
    for ctx in (contextlib.nullcontext(), peft_trainable_tokens(model)):
        model.zero_grad(set_to_none=True)
        with ctx:
            losses = KavaObjective(model, cfg)(batch)
            losses["loss"].backward()
        outs.append(({k: v.detach() for k, v in losses.items()}, _grads(model)))
    for k in outs[0][0]:
        _close(outs[0][0][k], outs[1][0][k])
    _same_grads(outs[0][1], outs[1][1])


# ----- CE on the labelled positions only ------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
@pytest.mark.parametrize("with_cot", [True, False])
def test_labelled_ce_equals_full_logits_ce(name, with_cot):
    from kava.model.lm import causal_ce, lm_with_ce
    from kava.model.positions import position_ids_from_mask

    model, builder = _model(_cfg(name))
    model.eval()
    tb = builder.teacher_batch([builder.encode(e) for e in EXAMPLES], with_cot=with_cot)
    mask = tb.attention_mask
    args = dict(input_ids=tb.input_ids, attention_mask=mask, position_ids=position_ids_from_mask(mask))
    assert (tb.labels == -100).any() and (mask == 0).any()  # question and padding are unlabelled
    model.zero_grad(set_to_none=True)
    out, fast = lm_with_ce(model, tb.labels, **args)
    fast.backward()
    g_fast = _grads(model)
    assert out.logits.dim() == 2 and out.logits.shape[0] == int((tb.labels[:, 1:] != -100).sum())  # packed rows only
    model.zero_grad(set_to_none=True)
    ref = causal_ce(model.lm(**args).logits, tb.labels)
    ref.backward()
    _close(fast, ref)
    _same_grads(g_fast, _grads(model))


# ----- the two-phase step -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"kava.teacher_targets": "separate_pass"},
        {"kava.teacher_ce": "false"},
        {"kava.alpha_kv": 0},
        {"kava.compression": "crop", "kava.kv_loss": "mse"},
        {"train.method": "cot"},
    ],
    ids=["default", "separate_pass", "no_teacher_ce", "pccot", "crop_mse", "cot"],
)
def test_two_phase_step_equals_one_backward(extra):
    """Dropout on: the same seed draws the same masks in both (the teacher runs first in both)."""
    cfg = _cfg(dropout=0.1, **extra)
    model, builder = _model(cfg)
    model.train()
    method = cfg.train.method
    batch = make_batch(builder, [builder.encode(e) for e in EXAMPLES], method, "cpu")
    objective = KavaObjective(model, cfg)
    assert objective.two_phase() == (method == "kava")
    runs = []
    for two_phase in (False, True):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(123)
        if two_phase:
            calls = []
            losses = forward_backward(objective, batch, lambda loss: (calls.append(loss), loss.backward()))
            assert len(calls) == (2 if method == "kava" and cfg.kava.teacher_ce else 1)
        else:
            losses = objective(batch)
            losses["loss"].backward()
        runs.append(({k: v.detach() for k, v in losses.items()}, _grads(model)))
    (l1, g1), (l2, g2) = runs
    assert l1.keys() == l2.keys()
    for k in l1:
        _close(l1[k], l2[k])
    _same_grads(g1, g2)
    if method == "kava":  # every trainable parameter (LoRA, token rows, projection) is trained
        assert all(g is not None for g in g1.values())


# ----- gradient checkpointing -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
@pytest.mark.parametrize("separate_pass", [False, True])
def test_gradient_checkpointing_equals_plain_step(name, separate_pass):
    """The student's caches survive checkpointing: same losses and gradients (dropout on, same seed)."""
    runs = []
    for gc in (False, True):
        cfg = _cfg(name, dropout=0.1, **{"model.gradient_checkpointing": str(gc).lower(),
                                        "kava.teacher_targets": "separate_pass" if separate_pass else "same_pass"})
        model, builder = _model(cfg)
        model.train()
        assert replays_layers(model) == gc  # (transformers < 5.23 has no is_activation_checkpointing)
        batch = make_batch(builder, [builder.encode(e) for e in EXAMPLES], "kava", "cpu")
        torch.manual_seed(7)
        losses = forward_backward(KavaObjective(model, cfg), batch, lambda loss: loss.backward())
        runs.append(({k: v.detach() for k, v in losses.items()}, _grads(model)))
    (l1, g1), (l2, g2) = runs
    assert set(l1) == {"loss", "ce_student", "ce_teacher", "codi", "kv"} == set(l2)
    for k in l1:
        _close(l1[k], l2[k], atol=1e-5, rtol=1e-5)
    _same_grads(g1, g2, atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_model_still_generates():
    """Inference (eval mode) on a model built with checkpointing uses ordinary caches."""
    from kava.inference.generate import generate

    cfg = _cfg(**{"model.gradient_checkpointing": "true"})
    model, builder = _model(cfg)
    model.eval()
    ref_cfg = _cfg()
    ref, _ = _model(ref_cfg)
    ref.eval()
    qs = [e.question for e in EXAMPLES]
    for mode in ("latent", "cot"):
        a = generate(model, builder, qs, mode=mode, max_new_tokens=5)
        b = generate(ref, builder, qs, mode=mode, max_new_tokens=5)
        assert [g.token_ids for g in a] == [g.token_ids for g in b]
        assert [g.forward_passes for g in a] == [g.forward_passes for g in b]


def test_gradient_checkpointing_recomputes_each_layer_once(monkeypatch):
    """Every pass's layers (question, teacher, pass 0, each Jacobi iteration, suffix) are replayed
    exactly once in the backward: the Jacobi chain and the pass caches add no recomputation."""
    from transformers.models.llama import modeling_llama

    calls = {"n": 0}
    real = modeling_llama.LlamaMLP.forward

    def counted(self, x):
        calls["n"] += 1
        return real(self, x)

    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", counted)
    for gc in (False, True):
        cfg = _cfg(dropout=0.1, **{"model.gradient_checkpointing": str(gc).lower()})
        model, builder = _model(cfg)
        model.train()
        batch = make_batch(builder, [builder.encode(e) for e in EXAMPLES], "kava", "cpu")
        in_backward = []

        def backward(loss):
            before = calls["n"]
            loss.backward()
            in_backward.append(calls["n"] - before)

        calls["n"] = 0
        forward_backward(KavaObjective(model, cfg), batch, backward)
        layers, T = model.num_layers, cfg.latent.num_iterations
        passes = 1 + 1 + 1 + T + 1  # question, teacher C + P + A, pass 0, T iterations, suffix
        assert calls["n"] - sum(in_backward) == layers * passes
        assert sum(in_backward) == (layers * passes if gc else 0)


def test_model_device_does_not_build_the_merged_embedding(monkeypatch):
    """Issue 20: `KavaModel.device` read the input embedding's `.weight`, which under peft's
    trainable tokens builds the merged [vocabulary, d] matrix (525 MB for Llama-3.2-1B) each call."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    model, _tok, _builder = build_kava_model(_cfg())

    def merged(*args, **kwargs):
        raise AssertionError("the merged embedding was built")

    monkeypatch.setattr(TrainableTokensLayer, "get_merged_weights", merged)
    assert model.device == torch.device("cpu")
