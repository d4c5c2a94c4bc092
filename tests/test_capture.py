"""The captured R-KV importance equals the one read from full eager attention maps (docs/algorithm.md §4)."""

from __future__ import annotations

import pytest
import torch

from kava.compression import importance_from_attn, rkv_select
from kava.model.cache import kv_of
from kava.model.capture import capture_importance, enable_capture
from kava.model.positions import position_ids_from_mask
from kava.model.teacher import TargetSpec, teacher_forward

ARCHS = ["tiny-llama", "tiny-qwen2"]


def _teacher_inputs(tb):
    mask = tb.attention_mask
    return dict(input_ids=tb.input_ids, attention_mask=mask, position_ids=position_ids_from_mask(mask))


def _loop_importance(attn: torch.Tensor, query_mask: torch.Tensor, h_kv: int) -> torch.Tensor:
    """Slow reference: for each example and kv head, max over the group's query heads, mean over P+A rows."""
    B, H_q, S, _ = attn.shape
    G = H_q // h_kv
    out = torch.zeros(B, h_kv, S)
    for b in range(B):
        rows = [i for i in range(S) if query_mask[b, i]]
        for h in range(h_kv):
            acc = torch.zeros(S)
            for i in rows:
                acc += torch.stack([attn[b, h * G + g, i] for g in range(G)]).amax(0)
            out[b, h] = acc / len(rows)
    return out


def _eager_reference(build_model, name, tb):
    model, _, _ = build_model(name, attn="eager", capture=False)
    assert model.config._attn_implementation.endswith("eager")
    with torch.no_grad():
        out = model.lm(**_teacher_inputs(tb), output_attentions=True, use_cache=True)
    h_kv = model.config.num_key_value_heads
    return out, [importance_from_attn(a, tb.query_mask, h_kv) for a in out.attentions]


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("base", ["sdpa", "eager"])
def test_capture_equals_eager_attention(build_model, examples, name, base):
    model, _, builder = build_model(name, attn=base, capture=True)
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (4, 2)  # GQA, groups of 2
    assert cfg._attn_implementation.endswith(base)
    tb = builder.teacher_batch([builder.encode(e) for e in examples])
    mask = tb.attention_mask
    assert (mask[:, -1] == 0).any() and mask[:, 0].all(), "teacher batch must be right padded"

    ref_out, ref = _eager_reference(build_model, name, tb)
    with torch.no_grad(), capture_importance(tb.query_mask, mask.bool()) as imp:
        out = model.lm(**_teacher_inputs(tb))
    assert sorted(imp) == list(range(model.num_layers))
    for layer in range(model.num_layers):
        assert imp[layer].shape == (3, 2, mask.shape[1])
        torch.testing.assert_close(imp[layer], ref[layer], atol=1e-6, rtol=1e-5)
        # padding keys get nothing; every real P+A row distributes mass 1 over the keys it sees
        assert (imp[layer][~mask.bool()[:, None, :].expand_as(imp[layer])] == 0).all()
    # the layers differ (the comparison is not between trivially equal tensors)
    assert not torch.allclose(ref[0], ref[-1], atol=1e-4)
    # and the model computed the same thing as the eager reference model
    torch.testing.assert_close(out.logits[mask.bool()], ref_out.logits[mask.bool()], atol=1e-5, rtol=1e-5)


def test_importance_reference_matches_loop(build_model, examples):
    """importance_from_attn on real eager maps agrees with a per-row loop (max over group, mean over rows)."""
    _, _, builder = build_model("tiny-llama")
    tb = builder.teacher_batch([builder.encode(e) for e in examples])
    out, ref = _eager_reference(build_model, "tiny-llama", tb)
    for layer in (0, len(ref) - 1):
        loop = _loop_importance(out.attentions[layer], tb.query_mask, 2)
        torch.testing.assert_close(ref[layer], loop, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("base", ["sdpa", "eager"])
def test_enable_capture_does_not_change_logits(build_model, examples, base):
    model, _, builder = build_model("tiny-llama", attn=base, capture=False)
    model.backbone.set_attn_implementation(base)  # (load_backbone installs the wrappers: undo it)
    assert model.config._attn_implementation == base
    tb = builder.teacher_batch([builder.encode(e) for e in examples])
    mask = tb.attention_mask.bool()
    with torch.no_grad():
        before = model.lm(**_teacher_inputs(tb), use_cache=True)
        enable_capture(model.backbone)
        enable_capture(model.backbone)  # idempotent
        assert model.config._attn_implementation == "kava_capture_" + base
        after = model.lm(**_teacher_inputs(tb), use_cache=True)
        with capture_importance(tb.query_mask, mask) as imp:
            during = model.lm(**_teacher_inputs(tb), use_cache=True)
    assert len(imp) == model.num_layers
    torch.testing.assert_close(after.logits, before.logits, atol=0, rtol=0)
    torch.testing.assert_close(during.logits, before.logits, atol=0, rtol=0)
    for (k0, v0), (k1, v1) in zip(kv_of(before.past_key_values), kv_of(during.past_key_values)):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)


def test_capture_inactive_outside_block(build_model, examples):
    model, _, builder = build_model("tiny-llama", capture=True)
    tb = builder.teacher_batch([builder.encode(e) for e in examples])
    with capture_importance(tb.query_mask, tb.attention_mask.bool()) as imp:
        pass
    with torch.no_grad():
        model.lm(**_teacher_inputs(tb))
    assert imp == {}


@pytest.mark.parametrize("name", ARCHS)
def test_teacher_forward_selection_matches_eager_reference(build_model, examples, name):
    """End to end: teacher_forward's R-KV selections equal rkv_select fed the full eager attention."""
    model, _, builder = build_model(name, capture=True)
    tb = builder.teacher_batch([builder.encode(e) for e in examples])
    M = model.num_latents
    with torch.no_grad():
        to = teacher_forward(model, tb, TargetSpec(budget=M, lam=0.5))
    ref_out, _ = _eager_reference(build_model, name, tb)
    for layer, (k, v) in enumerate(kv_of(ref_out.past_key_values)):
        ref = rkv_select(k, v, ref_out.attentions[layer], tb.cot_mask, tb.query_mask, M, lam=0.5)
        sel = to.selections[layer]
        assert torch.equal(sel.positions, ref.positions)
        assert torch.equal(sel.slot_mask, ref.slot_mask)
        torch.testing.assert_close(sel.keys, ref.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sel.values, ref.values, atol=1e-5, rtol=1e-5)
        # every selected slot is a CoT position
        for b in range(3):
            assert tb.cot_mask[b, sel.positions[b][sel.slot_mask[b]]].all()


def test_teacher_forward_without_enable_capture_is_clear(build_model, examples):
    """teacher_forward(method='rkv') on a model whose attention was never wrapped by enable_capture
    gets an empty importance dict; it must not die with a bare `KeyError: 0` deep inside _targets
    (it should enable the capture itself, or raise an error that says to call enable_capture)."""
    model, _, builder = build_model("tiny-llama", capture=False)
    tb = builder.teacher_batch([builder.encode(e) for e in examples])
    with torch.no_grad():
        try:
            to = teacher_forward(model, tb, TargetSpec(budget=model.num_latents))
        except KeyError as err:
            pytest.fail(f"teacher_forward without enable_capture raised a bare KeyError({err})")
        except (RuntimeError, ValueError) as err:
            assert "capture" in str(err).lower()
        else:
            assert len(to.selections) == model.num_layers


def test_enable_capture_rejects_unknown_implementation(build_model):
    model, _, _ = build_model("tiny-llama", capture=False)
    model.backbone.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="not supported"):
        enable_capture(model.backbone)


def _flash_stand_in(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """A CPU stand-in for flash attention 2 with its calling convention: the 2D padding mask
    (or None), causal attention aligned bottom-right, padding query rows returned as zeros."""
    b, h_q, s_q, _ = query.shape
    s_k = key.shape[2]
    groups = h_q // key.shape[1]
    allowed = torch.ones(s_q, s_k, dtype=torch.bool).tril(s_k - s_q)[None, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, :].bool()
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1), attn_mask=allowed, scale=scaling)
    out = out.masked_fill(~allowed.any(-1, keepdim=True), 0.0)
    return out.transpose(1, 2).contiguous(), None


def test_capture_under_the_flash_attention_2_name(build_model, examples, monkeypatch):
    """Issue 20: with flash attention 2, the capture registered a wrapper under a new name, which
    transformers 5 then looked up as a hub kernel (ValueError before step 1). Here a stand-in
    kernel is the registered `flash_attention_2`; the captured importance and the logits equal
    eager attention's."""
    from transformers import AttentionInterface

    monkeypatch.setitem(AttentionInterface._global_mapping, "flash_attention_2", _flash_stand_in)
    model, _, builder = build_model("tiny-llama", capture=False)
    model.backbone.config._attn_implementation = "flash_attention_2"  # (the check needs the flash_attn package)
    enable_capture(model.backbone)
    enable_capture(model.backbone)  # idempotent: wrapped once
    assert model.config._attn_implementation == "flash_attention_2"
    assert AttentionInterface._global_mapping["flash_attention_2"]._kava_capture
    tb = builder.teacher_batch([builder.encode(e) for e in examples])
    mask = tb.attention_mask
    ref_out, ref = _eager_reference(build_model, "tiny-llama", tb)
    with torch.no_grad(), capture_importance(tb.query_mask, mask.bool()) as imp:
        out = model.lm(**_teacher_inputs(tb))
    assert sorted(imp) == list(range(model.num_layers))
    for layer in range(model.num_layers):
        torch.testing.assert_close(imp[layer], ref[layer], atol=1e-5, rtol=1e-5)
    real = mask.bool()
    torch.testing.assert_close(out.logits[real], ref_out.logits[real], atol=1e-4, rtol=1e-4)


def _nan_for_rows_attending_nothing(real_sdpa):
    """A stand-in SDPA kernel that returns NaN for the query rows whose mask allows no key, as
    reported for torch 2.13 on recent NVIDIA GPUs (CPU kernels return 0 there)."""

    def attention(module, query, key, value, attention_mask, **kwargs):
        out, weights = real_sdpa(module, query, key, value, attention_mask, **kwargs)
        if attention_mask is not None:
            dead = ~attention_mask.any(-1)  # [B, 1, S_q]
            out = out.masked_fill(dead[:, 0, :, None, None], float("nan"))  # out: [B, S_q, H, D]
        return out, weights

    return attention


def test_left_padding_rows_stay_finite_with_a_nan_kernel(build_model, examples, monkeypatch):
    """Issue 20: left-padding query rows attend to nothing; through `0 · NaN` a kernel's NaN there
    reached every token of the example. kava's mask unmasks those rows: the training losses,
    their gradients and the latent answers stay finite and equal the CPU kernel's."""
    from transformers import AttentionInterface

    from conftest import make_config
    from kava.data.batches import make_batch
    from kava.inference.generate import generate
    from kava.training.objective import KavaObjective

    model, _, builder = build_model("tiny-llama", capture=True)
    cfg = make_config("tiny-llama")
    items = [builder.encode(e) for e in examples]
    batch = make_batch(builder, items, "kava", "cpu")
    assert (batch["student"].q_mask[:, 0] == 0).any(), "the batch must be left padded"
    objective = KavaObjective(model, cfg)
    questions = [e.question for e in examples]

    def run():
        model.zero_grad()
        losses = objective(batch)
        losses["loss"].backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        answers = generate(model, builder, questions, max_new_tokens=3)
        return losses, grads, answers

    clean_losses, clean_grads, clean_answers = run()
    real = AttentionInterface._global_mapping["sdpa"]
    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", _nan_for_rows_attending_nothing(real))
    losses, grads, answers = run()
    for k, v in clean_losses.items():
        assert torch.isfinite(losses[k]), k
        torch.testing.assert_close(losses[k], v, atol=1e-5, rtol=1e-5)
    assert grads and all(torch.isfinite(g).all() for g in grads)
    for g, ref in zip(grads, clean_grads, strict=True):
        torch.testing.assert_close(g, ref, atol=1e-5, rtol=1e-4)
    assert [a.text for a in answers] == [a.text for a in clean_answers]
