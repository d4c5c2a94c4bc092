"""The student's Jacobi latent reasoning (docs/algorithm.md §2) against slow, obviously-correct references.

References used here:
- *alone*: each example run by the library with batch size 1 and no padding;
- *recompute*: a Python loop that, at every iteration, runs the whole sequence
  `Q + <bot> + latent inputs` from scratch (no cache, default positions, no mask), with the
  latent inputs built one by one: input_0 = proj(h⁰ at <bot>) from pass 0 (or e(<latent>)
  with `first_input="latent_embedding"`), input_i = proj(h_{i-1});
- *full sequence*: the student's training sequence `Q + <bot> + latents + <eot> + P + A`
  run as one plain forward pass, CE computed by hand on P and A.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from kava.model.cache import LMOutput, kv_of
from kava.model.student import run_latents, student_forward
from kava.model.teacher import TargetSpec, teacher_forward

ATOL = 1e-5


def close(a, b, atol=ATOL):
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-5)


def _batch(builder, examples):
    enc = [builder.encode(e) for e in examples]
    return enc, builder.student_batch(enc)


def reference_latents(model, q_ids: list[int], T: int, detach_between: bool = False):
    """Recompute-everything Jacobi for one unpadded example (detach_between: a deliberately wrong
    variant that cuts the gradient between iterations, used as a control).

    Returns (h^T [M, d], KV^T per layer ([H, M, D], [H, M, D]), the latent inputs of the last pass [M, d]).
    """
    M = model.num_latents
    Lq = len(q_ids)
    q = torch.tensor([q_ids])
    latent_id = model.special.latent
    e_q = model.backbone.get_input_embeddings()(q)
    e_lat = model.backbone.get_input_embeddings()(torch.tensor([[latent_id]]))[0, 0]
    proj = model.projection if model.projection is not None else (lambda x: x)
    inputs = first = None
    for k in range(T + 1):
        if k == 0:  # pass 0 straight from token ids: Q + <bot> + <latent> x M
            out = model.backbone(input_ids=torch.tensor([q_ids + [latent_id] * M]), use_cache=True,
                                 output_hidden_states=True)
            bot_hidden = out.hidden_states[-1][0, Lq - 1]  # q_ids ends with <bot>
            first = proj(bot_hidden) if model.first_input == "bot_hidden" else e_lat
        else:
            out = model.backbone(inputs_embeds=torch.cat([e_q, inputs[None]], 1), use_cache=True,
                                 output_hidden_states=True)
        h = out.hidden_states[-1][0, Lq:]
        kv = [(kk[0, :, Lq:], vv[0, :, Lq:]) for kk, vv in kv_of(LMOutput.of(out).past_key_values)]
        last_inputs = inputs
        if detach_between:
            h = h.detach()
        rows = [first]
        for i in range(1, M):
            rows.append(proj(h[i - 1]))
        inputs = torch.stack(rows)
    return h, kv, last_inputs


def reference_student(model, tok, enc, T: int):
    """Full training sequence from scratch; returns (per-example CE on P+A, logits over the suffix,
    codi hidden per layer)."""
    q_ids = enc.q + [model.special.bot]
    Lq, M = len(q_ids), model.num_latents
    suffix = [model.special.eot] + enc.p + enc.a
    emb = model.backbone.get_input_embeddings()
    if T == 0:
        lat = emb(torch.tensor([[model.special.latent] * M]))[0]
    else:
        _, _, lat = reference_latents(model, q_ids, T)
    x = torch.cat([emb(torch.tensor([q_ids]))[0], lat, emb(torch.tensor([suffix]))[0]])[None]
    out = model.backbone(inputs_embeds=x, output_hidden_states=True)
    start = Lq + M
    logits = out.logits[0, start : start + len(suffix)]
    nll = F.cross_entropy(logits[:-1], torch.tensor(suffix[1:]), reduction="none")
    # CODI position: the token whose next token is the answer's first digit or sign
    first = next(i for i, t in enumerate(suffix)
                 if i > len(enc.p) and any(c.isdigit() or c == "-" for c in tok.decode([t])))
    codi = [h[0, start + first - 1] for h in out.hidden_states[1:]]
    return nll, logits, codi



# ----- fixtures are meaningful ----------------------------------------------------------


def test_fixture_model_is_perturbed(build_model, examples):
    plain, _, builder = build_model("tiny-llama", noise=False)
    noisy, _, _ = build_model("tiny-llama")
    _, batch = _batch(builder, examples)
    with torch.no_grad():
        a = run_latents(plain, batch.q_ids, batch.q_mask).hidden
        b = run_latents(noisy, batch.q_ids, batch.q_mask).hidden
    assert (a - b).abs().max() > 1e-2
    lora_b = [p for n, p in noisy.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)


# ----- 1. Jacobi with left padding equals each example alone ---------------------------


@pytest.mark.parametrize("T", [0, 1, 3])
def test_run_latents_padded_batch_equals_alone(any_model, examples, T):
    model, _, builder = any_model
    enc, batch = _batch(builder, examples)
    pads = (batch.q_mask == 0).sum(1)
    assert (pads > 0).sum() == 2, "two of the three questions must be left padded"
    with torch.no_grad():
        state = run_latents(model, batch.q_ids, batch.q_mask, num_iterations=T)
        assert state.passes == 1 + T
        M = model.num_latents
        for b, e in enumerate(enc):
            alone_batch = builder.student_batch([e])
            assert alone_batch.q_mask.all()
            alone = run_latents(model, alone_batch.q_ids, alone_batch.q_mask, num_iterations=T)
            close(state.hidden[b], alone.hidden[0])
            assert len(state.latent_kv) == model.num_layers
            for (k, v), (ka, va) in zip(state.latent_kv, alone.latent_kv):
                assert k.shape[2] == M
                close(k[b], ka[0])
                close(v[b], va[0])


def test_student_forward_ce_per_example_equals_alone(any_model, examples):
    model, _, builder = any_model
    enc, batch = _batch(builder, examples)
    with torch.no_grad():
        out = student_forward(model, batch)
        total_nll, total_n = 0.0, 0
        for b, e in enumerate(enc):
            alone = student_forward(model, builder.student_batch([e]))
            n = int(batch.suffix_mask[b].sum())
            labels = batch.suffix_labels[b, :n]
            ce_b = F.cross_entropy(out.logits[b, : n - 1], labels[1:], reduction="sum")
            n_lab = int((labels[1:] != -100).sum())
            close(ce_b / n_lab, alone.ce)
            close(out.logits[b, :n], alone.logits[0, :n], atol=1e-4)
            for hb, ha in zip(out.codi_hidden, alone.codi_hidden):
                close(hb[b], ha[0])
            total_nll += ce_b
            total_n += n_lab
        # the batch CE is the mean over all labelled tokens of the batch
        close(out.ce, total_nll / total_n)


# ----- 2. reusing the question cache equals recomputing it -----------------------------


@pytest.mark.parametrize("T", [0, 1, 2, 3])
def test_run_latents_equals_recompute_reference(any_model, examples, T):
    model, _, builder = any_model
    enc, batch = _batch(builder, examples)
    with torch.no_grad():
        state = run_latents(model, batch.q_ids, batch.q_mask, num_iterations=T)
        for b, e in enumerate(enc):
            h_ref, kv_ref, _ = reference_latents(model, e.q + [model.special.bot], T)
            close(state.hidden[b], h_ref)
            for (k, v), (kr, vr) in zip(state.latent_kv, kv_ref):
                close(k[b], kr)
                close(v[b], vr)


def test_reference_iterations_differ(llama, examples):
    """Control: the Jacobi iterations change the latents (so comparing at a fixed T has power)."""
    model, _, builder = llama
    e = builder.encode(examples[0])
    with torch.no_grad():
        h1, _, _ = reference_latents(model, e.q + [model.special.bot], 1)
        h2, _, _ = reference_latents(model, e.q + [model.special.bot], 2)
        h0, _, _ = reference_latents(model, e.q + [model.special.bot], 0)
    assert (h1 - h2).abs().max() > 1e-3 and (h0 - h1).abs().max() > 1e-3
    # the first latent's input is proj(h⁰ at <bot>) in every iteration from the first on, so its
    # state is the same after 1 and 2 iterations (and differs from pass 0's, whose input is e(<latent>))
    close(h1[0], h2[0])
    assert (h0[0] - h1[0]).abs().max() > 1e-3


@pytest.mark.parametrize("T", [0, 2])
def test_run_latents_latent_embedding_first_input_equals_reference(build_model, examples, T):
    """`latent.first_input: latent_embedding`: the first slot's input is e(<latent>) in every iteration."""
    model, _, builder = build_model("tiny-llama")
    model.first_input = "latent_embedding"
    enc, batch = _batch(builder, examples)
    with torch.no_grad():
        state = run_latents(model, batch.q_ids, batch.q_mask, num_iterations=T)
        for b, e in enumerate(enc):
            h_ref, kv_ref, _ = reference_latents(model, e.q + [model.special.bot], T)
            close(state.hidden[b], h_ref)
            close(state.latent_kv[0][1][b], kv_ref[0][1])
        h0, _, _ = reference_latents(model, enc[0].q + [model.special.bot], 0)
        h1, _, _ = reference_latents(model, enc[0].q + [model.special.bot], 1)
    close(h0[0], h1[0])  # the first slot never changes: its input is the same constant


def test_first_latent_input_depends_on_the_question(llama, examples):
    """With the default rule the first slot's input carries the question (it differs between questions)."""
    model, _, builder = llama
    _, batch = _batch(builder, examples)
    with torch.no_grad():
        state = run_latents(model, batch.q_ids, batch.q_mask, num_iterations=1)
    first = state.inputs[:, 0]
    assert (first[0] - first[1]).abs().max() > 1e-3


def test_run_latents_without_projection_equals_reference(build_model, examples):
    model, _, builder = build_model("tiny-llama", projection=False)
    assert model.projection is None
    enc, batch = _batch(builder, examples)
    with torch.no_grad():
        state = run_latents(model, batch.q_ids, batch.q_mask, num_iterations=2)
        for b, e in enumerate(enc):
            h_ref, kv_ref, _ = reference_latents(model, e.q + [model.special.bot], 2)
            close(state.hidden[b], h_ref)
            close(state.latent_kv[-1][0][b], kv_ref[-1][0])


@pytest.mark.parametrize("T", [0, 3])
def test_student_forward_equals_full_sequence_reference(any_model, examples, T, monkeypatch):
    model, tok, builder = any_model
    monkeypatch.setattr(model, "num_iterations", T)
    enc, batch = _batch(builder, examples)
    with torch.no_grad():
        out = student_forward(model, batch)
        all_nll = []
        for b, e in enumerate(enc):
            nll, logits, codi = reference_student(model, tok, e, T)
            n = logits.shape[0]
            close(out.logits[b, :n], logits, atol=1e-4)
            close(F.cross_entropy(out.logits[b, : n - 1], batch.suffix_labels[b, 1:n]), nll.mean())
            for layer, h in enumerate(codi):
                close(out.codi_hidden[layer][b], h)
            all_nll.append(nll)
        close(out.ce, torch.cat(all_nll).mean())


def test_iterations_reuse_question_cache(llama, examples, monkeypatch):
    """Each Jacobi call feeds only the M latent inputs over a cache of exactly Q + <bot>."""
    model, _, builder = llama
    _, batch = _batch(builder, examples)
    B, Lq = batch.q_ids.shape
    seen = []
    orig = model.lm

    def lm(**kwargs):
        pkv = kwargs.get("past_key_values")
        x = kwargs.get("inputs_embeds") if kwargs.get("inputs_embeds") is not None else kwargs["input_ids"]
        seen.append((x.shape[1], None if pkv is None else pkv.get_seq_length()))
        return orig(**kwargs)

    monkeypatch.setattr(model, "lm", lm)
    with torch.no_grad():
        run_latents(model, batch.q_ids, batch.q_mask, num_iterations=3)
    M = model.num_latents
    assert seen == [(Lq + M, None)] + [(M, Lq)] * 3


# ----- 3. padding is never attended -------------------------------------------------------


def _scramble_padding(ids: torch.Tensor, mask: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = torch.randint(5, 100, ids.shape, generator=g)
    out = torch.where(mask.bool(), ids, noise)
    assert not torch.equal(out, ids)
    return out


def test_run_latents_ignores_padding_tokens(any_model, examples):
    model, _, builder = any_model
    _, batch = _batch(builder, examples)
    q_ids, q_mask = batch.q_ids, batch.q_mask
    with torch.no_grad():
        a = run_latents(model, q_ids, q_mask)
        b = run_latents(model, _scramble_padding(q_ids, q_mask, 1), q_mask)
        # control: the same tokens with the padding *attended* give different latents
        c = run_latents(model, _scramble_padding(q_ids, q_mask, 1), torch.ones_like(q_mask))
    close(a.hidden, b.hidden)
    for (k, v), (kb, vb) in zip(a.latent_kv, b.latent_kv):
        close(k, kb)
        close(v, vb)
    padded = (q_mask == 0).any(1)
    assert (a.hidden[padded] - c.hidden[padded]).abs().max() > 1e-3


def test_run_latents_ignores_pad_embedding(build_model, examples):
    model, tok, builder = build_model("tiny-llama")
    _, batch = _batch(builder, examples)
    with torch.no_grad():
        a = run_latents(model, batch.q_ids, batch.q_mask)
        weights = [p for n, p in model.named_parameters() if "embed_tokens" in n and n.endswith("base_layer.weight")]
        assert len(weights) == 1
        weights[0][tok.pad_token_id] = torch.randn(weights[0].shape[1]) * 10
        b = run_latents(model, batch.q_ids, batch.q_mask)
    close(a.hidden, b.hidden)
    for (k, v), (kb, vb) in zip(a.latent_kv, b.latent_kv):
        close(k, kb)
        close(v, vb)


def test_student_forward_ignores_padding_tokens(any_model, examples):
    model, _, builder = any_model
    _, batch = _batch(builder, examples)
    assert (batch.suffix_mask == 0).any()
    scrambled = dataclasses.replace(batch, q_ids=_scramble_padding(batch.q_ids, batch.q_mask, 2),
                                    suffix_ids=_scramble_padding(batch.suffix_ids, batch.suffix_mask, 3))
    with torch.no_grad():
        a = student_forward(model, batch)
        b = student_forward(model, scrambled)
    close(a.ce, b.ce)
    real = batch.suffix_mask.bool()
    close(a.logits[real], b.logits[real], atol=1e-4)
    for ha, hb in zip(a.codi_hidden, b.codi_hidden):
        close(ha, hb)


def test_teacher_ignores_padding_and_equals_alone(any_model, examples):
    model, _, builder = any_model
    enc = [builder.encode(e) for e in examples]
    tb = builder.teacher_batch(enc)
    M = model.num_latents
    scrambled = dataclasses.replace(tb, input_ids=_scramble_padding(tb.input_ids, tb.attention_mask, 4))
    with torch.no_grad():
        a = teacher_forward(model, tb, TargetSpec(budget=M))
        b = teacher_forward(model, scrambled, TargetSpec(budget=M))
        close(a.ce, b.ce)
        for sa, sb in zip(a.selections, b.selections):
            assert torch.equal(sa.positions, sb.positions)
            close(sa.keys, sb.keys)
            close(sa.values, sb.values)
        for ha, hb in zip(a.codi_hidden, b.codi_hidden):
            close(ha, hb)
        # each example alone gives the same targets (padding and batch neighbours are invisible)
        for i, e in enumerate(enc):
            alone = teacher_forward(model, builder.teacher_batch([e]), TargetSpec(budget=M))
            for sa, sl in zip(a.selections, alone.selections):
                assert torch.equal(sa.positions[i], sl.positions[0])
                assert torch.equal(sa.slot_mask[i], sl.slot_mask[0])
                close(sa.keys[i], sl.keys[0])
                close(sa.values[i], sl.values[0])
            for ha, hl in zip(a.codi_hidden, alone.codi_hidden):
                close(ha[i], hl[0])


# ----- model calls ------------------------------------------------------------------------


@pytest.mark.parametrize("T", [0, 1, 3])
def test_run_latents_makes_one_plus_T_calls(llama, examples, monkeypatch, T):
    model, _, builder = llama
    _, batch = _batch(builder, examples)
    calls = []
    orig = model.lm
    monkeypatch.setattr(model, "lm", lambda **kw: calls.append(1) or orig(**kw))
    with torch.no_grad():
        state = run_latents(model, batch.q_ids, batch.q_mask, num_iterations=T)
    assert len(calls) == 1 + T == state.passes
    calls.clear()
    monkeypatch.setattr(model, "num_iterations", T)
    with torch.no_grad():
        student_forward(model, batch)
    assert len(calls) == 1 + T + 1


# ----- edge cases and teacher options -----------------------------------------------------


def test_single_latent_equals_reference(build_model, examples):
    model, _, builder = build_model("tiny-qwen2", num_latents=1)
    enc, batch = _batch(builder, examples)
    with torch.no_grad():
        state = run_latents(model, batch.q_ids, batch.q_mask)
        assert state.hidden.shape[1] == 1
        for b, e in enumerate(enc):
            h_ref, kv_ref, _ = reference_latents(model, e.q + [model.special.bot], model.num_iterations)
            close(state.hidden[b], h_ref)
            close(state.latent_kv[0][1][b], kv_ref[0][1])


def test_teacher_separate_pass_and_targets_only_match_same_pass(llama, examples):
    model, _, builder = llama
    tb = builder.teacher_batch([builder.encode(e) for e in examples])
    M = model.num_latents
    with torch.no_grad():
        same = teacher_forward(model, tb, TargetSpec(budget=M))
        sep = teacher_forward(model, tb, TargetSpec(budget=M, separate_pass=True))
        only = teacher_forward(model, tb, TargetSpec(budget=M), with_ce=False)
        ce_only = teacher_forward(model, tb, None)
    assert only.ce is None and ce_only.selections is None and ce_only.codi_hidden is None
    close(sep.ce, same.ce)
    close(ce_only.ce, same.ce)
    for other in (sep, only):
        for a, b in zip(same.selections, other.selections):
            assert torch.equal(a.positions, b.positions)
            close(a.keys, b.keys)
        for a, b in zip(same.codi_hidden, other.codi_hidden):
            close(a, b)


def test_teacher_crop_needs_no_capture_and_keeps_last_cot_tokens(build_model, examples):
    model, _, builder = build_model("tiny-llama", capture=False)
    tb = builder.teacher_batch([builder.encode(e) for e in examples])
    M = model.num_latents
    with torch.no_grad():
        to = teacher_forward(model, tb, TargetSpec(budget=M, compression="crop"))
        out = model.lm(
            input_ids=tb.input_ids,
            attention_mask=tb.attention_mask,
            position_ids=(tb.attention_mask.cumsum(-1) - 1).clamp(min=0),
            use_cache=True,
        )
    kv = kv_of(out.past_key_values)
    for b in range(3):
        last = tb.cot_mask[b].nonzero().flatten()[-M:]
        for layer, sel in enumerate(to.selections):
            assert sel.positions[b].tolist() == [last.tolist()] * sel.positions.shape[1]
            close(sel.keys[b], kv[layer][0][b][:, last])
            close(sel.values[b], kv[layer][1][b][:, last])
