"""KaVa's losses (docs/algorithm.md §5) against loop references, and where gradients do and do not flow."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from kava.compression import RKVSelection
from kava.losses import KV_LOSSES, codi_loss, kv_loss
from kava.model.cache import kv_of
from kava.model.student import run_latents, student_forward
from kava.model.teacher import TargetSpec, teacher_forward

L, B, H, M, D = 3, 2, 2, 5, 4


def _rho_scalar(x: float, kind: str) -> float:
    if kind == "smooth_l1":
        return 0.5 * x * x if abs(x) < 1.0 else abs(x) - 0.5
    if kind == "l1":
        return abs(x)
    if kind == "mse":
        return x * x
    raise AssertionError(kind)


def _random_case(seed: int):
    g = torch.Generator().manual_seed(seed)
    student = [
        (torch.randn(B, H, M, D, generator=g) * 1.5, torch.randn(B, H, M, D, generator=g) * 1.5) for _ in range(L)
    ]
    teacher = []
    for layer in range(L):
        mask = torch.rand(B, H, M, generator=g) > 0.35
        mask[0, 0, 0] = True
        if layer == 1:
            mask[1] = False  # a whole example with no valid slot in this layer
            mask[0, 1, :] = True
        # huge garbage in the unused slots: any leak into the loss shows at once
        keys = torch.where(mask[..., None], torch.randn(B, H, M, D, generator=g), torch.full((), 1e4))
        values = torch.where(mask[..., None], torch.randn(B, H, M, D, generator=g) * 2, torch.full((), -1e4))
        teacher.append(RKVSelection(keys, values, mask, torch.zeros(B, H, M, dtype=torch.long)))
    return student, teacher


def _kv_loss_reference(student, teacher, kind, layer_std, reduction="mean"):
    """Python loops. mean: per layer the mean over its valid (slot, head, dim) elements, then the mean over
    layers. paper: 1/(2M)·Σ over layers, heads, dims and valid slots, M = valid (layer, head, slot) / (L·H)."""
    per_layer, total_sum, valid_triples = [], 0.0, 0
    for (ks, vs), sel in zip(student, teacher):
        parts, sums = [], []
        for s_t, t_t in ((ks, sel.keys), (vs, sel.values)):
            total, count, elems = 0.0, 0, []
            for b in range(B):
                for h in range(H):
                    for m in range(M):
                        if not sel.slot_mask[b, h, m]:
                            continue
                        for d in range(D):
                            total += _rho_scalar(float(s_t[b, h, m, d]) - float(t_t[b, h, m, d]), kind)
                            count += 1
                            elems.append(float(t_t[b, h, m, d]))
            std = statistics.stdev(elems) if layer_std else 1.0
            parts.append((total / count if count else 0.0) / std)
            sums.append(total / std)
        per_layer.append(0.5 * (parts[0] + parts[1]))
        total_sum += 0.5 * (sums[0] + sums[1])
        valid_triples += int(sel.slot_mask.sum())
    if reduction == "paper":
        return total_sum / (valid_triples / (L * H))
    return sum(per_layer) / len(per_layer)


@pytest.mark.parametrize("reduction", ["mean", "paper"])
@pytest.mark.parametrize("layer_std", [False, True])
@pytest.mark.parametrize("kind", KV_LOSSES)
def test_kv_loss_matches_loop_reference(kind, layer_std, reduction):
    assert set(KV_LOSSES) == {"smooth_l1", "l1", "mse"}
    student, teacher = _random_case(0)
    got = kv_loss(student, teacher, kind=kind, layer_std=layer_std, reduction=reduction)
    ref = _kv_loss_reference(student, teacher, kind, layer_std, reduction)
    assert got.dim() == 0
    assert math.isclose(got.item(), ref, rel_tol=1e-5, abs_tol=1e-6), (got.item(), ref)


def test_kv_loss_paper_reduction_is_layers_heads_dims_times_the_mean_on_full_slots():
    """Every slot valid: the paper's sum over L·H·d per slot is exactly L·H·d times the mean."""
    g = torch.Generator().manual_seed(3)
    student = [(torch.randn(B, H, M, D, generator=g), torch.randn(B, H, M, D, generator=g)) for _ in range(L)]
    full = torch.ones(B, H, M, dtype=torch.bool)
    teacher = [RKVSelection(torch.randn(B, H, M, D, generator=g), torch.randn(B, H, M, D, generator=g), full,
                            torch.zeros(B, H, M, dtype=torch.long)) for _ in range(L)]
    mean = kv_loss(student, teacher, reduction="mean")
    paper = kv_loss(student, teacher, reduction="paper")
    assert math.isclose(paper.item(), mean.item() * L * H * D, rel_tol=1e-5)


def test_kv_loss_unknown_reduction():
    student, teacher = _random_case(0)
    with pytest.raises(ValueError, match="reduction"):
        kv_loss(student, teacher, reduction="sum")


def test_kv_loss_kinds_differ_and_zero_at_target():
    student, teacher = _random_case(1)
    values = {k: kv_loss(student, teacher, kind=k).item() for k in KV_LOSSES}
    assert len({round(v, 6) for v in values.values()}) == 3
    # the student equal to the teacher on the used slots (garbage elsewhere) has zero loss
    same = [(torch.where(s.slot_mask[..., None], s.keys, torch.randn(B, H, M, D)),
             torch.where(s.slot_mask[..., None], s.values, torch.randn(B, H, M, D))) for s in teacher]
    for k in KV_LOSSES:
        assert kv_loss(same, teacher, kind=k).item() == 0.0


def test_kv_loss_unknown_kind():
    student, teacher = _random_case(2)
    with pytest.raises(ValueError, match="unknown KV loss"):
        kv_loss(student, teacher, kind="huber")


def test_kv_loss_all_slots_masked_is_zero_not_nan():
    student, teacher = _random_case(3)
    teacher = [s._replace(slot_mask=torch.zeros_like(s.slot_mask)) for s in teacher]
    out = kv_loss(student, teacher)
    assert torch.isfinite(out) and out.item() == 0.0


def _codi_reference(student, teacher):
    out = []
    for hs, ht in zip(student, teacher):
        vals = [_rho_scalar(float(a) - float(b), "smooth_l1") for a, b in zip(hs.flatten(), ht.flatten())]
        out.append(sum(vals) / len(vals) / statistics.stdev([float(x) for x in ht.flatten()]))
    return sum(out) / len(out)


def test_codi_loss_matches_loop_reference():
    g = torch.Generator().manual_seed(5)
    student = [torch.randn(3, 16, generator=g) * 2 for _ in range(4)]
    teacher = [torch.randn(3, 16, generator=g) * (layer + 1) for layer in range(4)]
    got = codi_loss(student, teacher)
    assert math.isclose(got.item(), _codi_reference(student, teacher), rel_tol=1e-5)
    # the per-layer std matters: scaling one layer's teacher changes the loss
    teacher2 = [t.clone() for t in teacher]
    teacher2[0] = teacher2[0] * 3
    assert not math.isclose(codi_loss(student, teacher2).item(), got.item(), rel_tol=1e-3)


def _codi_global_reference(student, teacher):
    """PCCoT with use_layerwise_std false: the mean smooth-L1 over every layer's entries, divided
    by one std of all the teacher's entries."""
    pairs = [(float(a), float(b)) for hs, ht in zip(student, teacher) for a, b in zip(hs.flatten(), ht.flatten())]
    mean = sum(_rho_scalar(a - b, "smooth_l1") for a, b in pairs) / len(pairs)
    return mean / statistics.stdev([b for _, b in pairs])


def test_codi_loss_with_one_std_over_all_layers_matches_loop_reference():
    g = torch.Generator().manual_seed(6)
    student = [torch.randn(3, 16, generator=g) * 2 for _ in range(4)]
    teacher = [torch.randn(3, 16, generator=g) * (layer + 1) for layer in range(4)]
    got = codi_loss(student, teacher, layer_std=False)
    assert math.isclose(got.item(), _codi_global_reference(student, teacher), rel_tol=1e-5)
    assert not math.isclose(got.item(), codi_loss(student, teacher).item(), rel_tol=1e-2)


# ----- no gradient reaches the teacher targets -------------------------------------------


def test_no_gradient_to_teacher_targets():
    student, teacher = _random_case(6)
    student = [(k.requires_grad_(), v.requires_grad_()) for k, v in student]
    t_keys = [s.keys.clone().requires_grad_() for s in teacher]
    t_vals = [s.values.clone().requires_grad_() for s in teacher]
    teacher = [s._replace(keys=k, values=v) for s, k, v in zip(teacher, t_keys, t_vals)]
    hs = [torch.randn(2, 8, requires_grad=True) for _ in range(L)]
    ht = [torch.randn(2, 8, requires_grad=True) for _ in range(L)]
    total = kv_loss(student, teacher, layer_std=True) + kv_loss(student, teacher, kind="mse") + codi_loss(hs, ht)
    grads = torch.autograd.grad(total, t_keys + t_vals + ht, allow_unused=True, retain_graph=True)
    assert all(g is None for g in grads)
    total.backward()
    assert all(t.grad is None for t in t_keys + t_vals + ht)
    # ...while the student does get gradients
    assert all(k.grad is not None and k.grad.abs().sum() > 0 for k, _ in student)
    assert all(h.grad is not None and h.grad.abs().sum() > 0 for h in hs)


def test_teacher_forward_targets_are_detached(build_model, examples):
    model, _, builder = build_model("tiny-llama", capture=True)
    model.train()
    tb = builder.teacher_batch([builder.encode(e) for e in examples])
    to = teacher_forward(model, tb, TargetSpec(budget=model.num_latents))
    assert to.ce is not None and to.ce.requires_grad and to.ce.grad_fn is not None
    assert len(to.selections) == model.num_layers
    for sel in to.selections:
        assert not sel.keys.requires_grad and not sel.values.requires_grad
        assert sel.keys.grad_fn is None
    for h in to.codi_hidden:
        assert not h.requires_grad and h.grad_fn is None
    # the separate-pass option too
    to2 = teacher_forward(model, tb, TargetSpec(budget=model.num_latents, separate_pass=True))
    assert to2.ce.grad_fn is not None and model.training
    assert not any(s.keys.requires_grad or s.values.requires_grad for s in to2.selections)
    assert not any(h.requires_grad for h in to2.codi_hidden)


def test_total_loss_gradient_wrt_teacher_keys_is_none(build_model, examples):
    """End to end: the cached teacher keys the targets come from get no gradient from the distillation losses."""
    model, _, builder = build_model("tiny-llama", capture=True)
    enc = [builder.encode(e) for e in examples]
    tb, sb = builder.teacher_batch(enc), builder.student_batch(enc)
    captured = {}
    orig = model.lm

    def lm(**kw):
        out = orig(**kw)
        if "input_ids" in kw and kw["input_ids"].shape == tb.input_ids.shape:
            captured["kv"] = kv_of(out.past_key_values)
            captured["hidden"] = out.hidden_states
        return out

    model.lm = lm
    try:
        to = teacher_forward(model, tb, TargetSpec(budget=model.num_latents))
    finally:
        del model.lm
    so = student_forward(model, sb)
    keys = [k for k, _ in captured["kv"]]
    assert all(k.requires_grad for k in keys)
    distill = kv_loss(so.latent_kv, to.selections) + codi_loss(so.codi_hidden, to.codi_hidden)
    grads = torch.autograd.grad(distill, keys + list(captured["hidden"]), allow_unused=True)
    assert all(g is None for g in grads)


# ----- gradients flow through all T Jacobi iterations ------------------------------------


def _targets(model, builder, examples):
    enc = [builder.encode(e) for e in examples]
    with torch.no_grad():
        to = teacher_forward(model, builder.teacher_batch(enc), TargetSpec(budget=model.num_latents))
    return builder.student_batch(enc), to


@pytest.mark.parametrize("T", [1, 2, 3])
def test_kv_loss_gradient_reaches_projection_through_all_iterations(build_model, examples, T):
    model, _, builder = build_model("tiny-llama", capture=True)
    sb, to = _targets(model, builder, examples)
    hidden = []
    orig = model.lm

    def lm(**kw):
        out = orig(**kw)
        hidden.append(out.hidden_states[-1])
        return out

    model.lm = lm
    try:
        state = run_latents(model, sb.q_ids, sb.q_mask, num_iterations=T)
    finally:
        del model.lm
    loss = kv_loss(state.latent_kv, to.selections)
    assert len(hidden) == 1 + T
    # every pass before the last one feeds the final latent KV (pass 0 included): no detach anywhere
    grads = torch.autograd.grad(loss, hidden[:-1], allow_unused=True, retain_graph=True)
    for k, g in enumerate(grads):
        assert g is not None and g.abs().sum() > 0, f"no gradient reaches pass {k}"
    loss.backward()
    for name, p in model.projection.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    latent_rows = [p for n, p in model.named_parameters() if "embed_tokens" in n and "trainable_tokens_delta" in n]
    assert latent_rows and latent_rows[0].grad is not None and latent_rows[0].grad.abs().sum() > 0


@pytest.mark.parametrize("T", [1, 3])
def test_kv_gradient_equals_recompute_reference_gradient(build_model, examples, T):
    """The gradient of a function of KV^T w.r.t. every trainable parameter equals the one obtained by
    differentiating the recompute-everything reference (so nothing is detached between iterations)."""
    from test_student import reference_latents

    model, _, builder = build_model("tiny-llama", num_iterations=T)
    e = builder.encode(examples[1])
    q = e.q + [model.special.bot]
    g = torch.Generator().manual_seed(7)
    weights = [torch.randn(2, M_ := model.num_latents, 16, generator=g) for _ in range(model.num_layers)]
    params = [p for p in model.parameters() if p.requires_grad]

    def objective(kvs):
        return sum(((k + 2 * v) * w).sum() for (k, v), w in zip(kvs, weights))

    state = run_latents(model, torch.tensor([q]), torch.ones(1, len(q), dtype=torch.long))
    got = torch.autograd.grad(objective([(k[0], v[0]) for k, v in state.latent_kv]), params, allow_unused=True)
    _, kv_ref, _ = reference_latents(model, q, T)
    ref = torch.autograd.grad(objective(kv_ref), params, allow_unused=True)
    _, kv_cut, _ = reference_latents(model, q, T, detach_between=True)
    cut = torch.autograd.grad(objective(kv_cut), params, allow_unused=True)
    assert M_ == model.num_latents

    def rel_err(a, r):
        return ((a - r).abs().max() / r.abs().max().clamp(min=1e-12)).item()

    for p, a, r in zip(params, got, ref):
        assert (a is None) == (r is None)
        if a is not None:
            assert rel_err(a, r) < 1e-4
    # control: cutting the graph between iterations gives a clearly different gradient
    assert max(rel_err(c, r) for c, r in zip(cut, ref) if r is not None and c is not None) > 1e-2
    proj = [a for (n, _), a in zip([(n, p) for n, p in model.named_parameters() if p.requires_grad],
                                   got) if "projection" in n]
    assert proj and all(a is not None and a.abs().sum() > 0 for a in proj)


def test_pass0_only_path_gives_projection_gradient(build_model, examples):
    """T = 1: the projection only sees h⁰ from pass 0; its gradient must still be nonzero."""
    model, _, builder = build_model("tiny-llama", capture=True)
    sb, to = _targets(model, builder, examples)
    state = run_latents(model, sb.q_ids, sb.q_mask, num_iterations=1)
    kv_loss(state.latent_kv, to.selections).backward()
    assert model.projection.net[0].weight.grad.abs().sum() > 0
    # and with T = 0 the projection is unused: no gradient at all
    model.zero_grad(set_to_none=True)
    state = run_latents(model, sb.q_ids, sb.q_mask, num_iterations=0)
    kv_loss(state.latent_kv, to.selections).backward()
    assert model.projection.net[0].weight.grad is None
