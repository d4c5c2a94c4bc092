"""Sequential latents (kava.model.sequential: CODI, Coconut) against slow references.

References:
- *recompute*: one unpadded example; for each latent, the whole sequence `Q + <bot> +
  the latent inputs so far` is run from scratch (no cache, default positions, no mask) and
  the last position's last-layer hidden state, projected, is the next input;
- *alone*: the library on one example, batch size 1, no padding;
- *full sequence*: `Q + <bot> + latents + <eot> + kept CoT + P + A` as one plain forward
  pass, CE by hand.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import EXAMPLES, build, perturb
from kava.config import config_from_dict, shares_question
from kava.data.batches import make_batch
from kava.inference.generate import generate
from kava.model.cache import kv_of
from kava.model.kava_model import build_kava_model
from kava.model.student import run_latents, student_forward
from kava.training.objective import KavaObjective
from kava.training.trainer import forward_backward

ATOL = 1e-5


def close(a, b, atol=ATOL):
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-5)


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-qwen2"])
def seq_model(request):
    return build(request.param, capture=True, mode="sequential")


def reference_sequential(model, q_ids: list[int], M: int):
    """Recompute-everything sequential latents for one example: (h [M, d], KV per layer
    ([H, M, D], [H, M, D]) of the latents, the latent inputs [M, d])."""
    emb = model.backbone.get_input_embeddings()
    x = emb(torch.tensor([q_ids]))[0]
    Lq = len(q_ids)
    inputs, hs = [], []
    h = model.backbone(inputs_embeds=x[None], output_hidden_states=True).hidden_states[-1][0, -1]
    for _ in range(M):
        inputs.append(model.project(h[None])[0])
        out = model.backbone(inputs_embeds=torch.cat([x, torch.stack(inputs)])[None], use_cache=True,
                             output_hidden_states=True)
        h = out.hidden_states[-1][0, -1]
        hs.append(h)
    kv = [(k[0, :, Lq:], v[0, :, Lq:]) for k, v in kv_of(out.past_key_values)] if M else []
    return torch.stack(hs), kv, torch.stack(inputs)


def reference_student(model, enc, cot: list[int], n: int):
    """The student's training sequence with n sequential latents and the kept CoT, from scratch:
    (per-token CE on cot + P + A, logits over the suffix, CODI hidden states per layer)."""
    q_ids = enc.q + [model.special.bot]
    suffix = [model.special.eot] + cot + enc.p + enc.a
    emb = model.backbone.get_input_embeddings()
    parts = [emb(torch.tensor([q_ids]))[0]]
    if n:
        parts.append(reference_sequential(model, q_ids, n)[2])
    parts.append(emb(torch.tensor([suffix]))[0])
    out = model.backbone(inputs_embeds=torch.cat(parts)[None], output_hidden_states=True)
    start = len(q_ids) + n
    logits = out.logits[0, start : start + len(suffix)]
    nll = F.cross_entropy(logits[:-1], torch.tensor(suffix[1:]), reduction="none")
    codi = [h[0, start + len(cot) + len(enc.p) + enc.codi_shift] for h in out.hidden_states[1:]]
    return nll, logits, codi


def _batch(builder, **kw):
    enc = [builder.encode(e) for e in EXAMPLES]
    return enc, builder.student_batch(enc, **kw)


# ----- the latents ---------------------------------------------------------------------------


def test_cache_equals_recompute_reference_under_left_padding(seq_model):
    model, _, builder = seq_model
    enc, batch = _batch(builder)
    assert (batch.q_mask == 0).any(1).sum() == 2, "two of the three questions are left padded"
    M = model.num_latents
    with torch.no_grad():
        state = run_latents(model, batch.q_ids, batch.q_mask)
        assert state.passes == 1 + M and state.hidden.shape[1] == M
        for b, e in enumerate(enc):
            h_ref, kv_ref, _ = reference_sequential(model, e.q + [model.special.bot], M)
            close(state.hidden[b], h_ref)
            assert len(state.latent_kv) == model.num_layers
            for (k, v), (kr, vr) in zip(state.latent_kv, kv_ref):
                close(k[b], kr)
                close(v[b], vr)
            # the cache handed on holds Q + <bot> + the latents, the latents' entries last
            ck, _ = kv_of(state.cache)[-1]
            assert ck.shape[2] == batch.q_ids.shape[1] + M
            close(ck[b, :, -M:], kv_ref[-1][0])
    # control: the latents differ from one another and from the first (the feedback has power)
    assert (h_ref[1:] - h_ref[:1]).abs().max() > 1e-3


def test_batch_equals_each_example_alone(seq_model):
    model, _, builder = seq_model
    enc, batch = _batch(builder)
    with torch.no_grad():
        state = run_latents(model, batch.q_ids, batch.q_mask)
        out = student_forward(model, batch)
        for b, e in enumerate(enc):
            one = builder.student_batch([e])
            assert one.q_mask.all()
            alone = run_latents(model, one.q_ids, one.q_mask)
            close(state.hidden[b], alone.hidden[0])
            solo = student_forward(model, one)
            n = int(batch.suffix_mask[b].sum())
            close(out.logits[b, :n], solo.logits[0, :n], atol=1e-4)
            for hb, ha in zip(out.codi_hidden, solo.codi_hidden):
                close(hb[b], ha[0])


def test_student_forward_equals_full_sequence_reference(seq_model):
    model, _, builder = seq_model
    enc, batch = _batch(builder)
    with torch.no_grad():
        out = student_forward(model, batch)
        all_nll = []
        for b, e in enumerate(enc):
            nll, logits, codi = reference_student(model, e, [], model.num_latents)
            close(out.logits[b, : logits.shape[0]], logits, atol=1e-4)
            for layer, h in enumerate(codi):
                close(out.codi_hidden[layer][b], h)
            all_nll.append(nll)
        close(out.ce, torch.cat(all_nll).mean())


def test_projection_off_feeds_raw_hidden_states(build_model):
    """Coconut: no projection, the continuous thought is the hidden state itself."""
    model, _, builder = build_model("tiny-llama", mode="sequential", projection=False)
    assert model.projection is None
    enc, batch = _batch(builder)
    with torch.no_grad():
        state = run_latents(model, batch.q_ids, batch.q_mask)
        h_ref, _, inputs = reference_sequential(model, enc[0].q + [model.special.bot], model.num_latents)
    close(state.hidden[0], h_ref)
    close(inputs[1:], h_ref[:-1])


def test_gradients_flow_through_every_latent_pass(build_model):
    """Same gradients as autograd through the recompute reference: nothing is detached."""
    model, _, builder = build_model("tiny-llama", mode="sequential")
    e = builder.encode(EXAMPLES[0])
    one = builder.student_batch([e])
    weight = torch.randn(model.num_latents, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    params = list(model.projection.parameters())
    state = run_latents(model, one.q_ids, one.q_mask)
    got = torch.autograd.grad((state.hidden[0] * weight).sum(), params)
    h_ref, _, _ = reference_sequential(model, e.q + [model.special.bot], model.num_latents)
    want = torch.autograd.grad((h_ref * weight).sum(), params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
    assert all(g.abs().sum() > 0 for g in got)


def test_padding_is_never_attended(seq_model):
    model, _, builder = seq_model
    _, batch = _batch(builder)
    g = torch.Generator().manual_seed(1)
    noise = torch.randint(5, 100, batch.q_ids.shape, generator=g)
    scrambled = torch.where(batch.q_mask.bool(), batch.q_ids, noise)
    assert not torch.equal(scrambled, batch.q_ids)
    with torch.no_grad():
        a = run_latents(model, batch.q_ids, batch.q_mask)
        b = run_latents(model, scrambled, batch.q_mask)
        c = run_latents(model, scrambled, torch.ones_like(batch.q_mask))  # control: padding attended
    close(a.hidden, b.hidden)
    padded = (batch.q_mask == 0).any(1)
    assert (a.hidden[padded] - c.hidden[padded]).abs().max() > 1e-3


def test_each_latent_pass_feeds_one_input_over_the_growing_cache(build_model, monkeypatch):
    model, _, builder = build_model("tiny-llama", mode="sequential")
    _, batch = _batch(builder)
    B, Lq = batch.q_ids.shape
    M = model.num_latents
    seen = []
    orig = model.lm

    def lm(**kw):
        x = kw["inputs_embeds"] if kw.get("inputs_embeds") is not None else kw["input_ids"]
        pkv = kw.get("past_key_values")
        seen.append((x.shape[1], None if pkv is None else pkv.get_seq_length()))
        return orig(**kw)

    monkeypatch.setattr(model, "lm", lm)
    with torch.no_grad():
        state = run_latents(model, batch.q_ids, batch.q_mask)
        assert seen == [(Lq, None)] + [(1, Lq + i) for i in range(M)] and state.passes == len(seen)
        seen.clear()
        student_forward(model, batch)
    assert len(seen) == 1 + M + 1  # Q + <bot>, M latents, <eot> + P + A


def test_gradient_checkpointing_equals_plain_step():
    """Each latent pass gets a replay-safe cache: same losses and gradients (dropout on)."""
    runs = []
    for gc in (False, True):
        cfg = config_from_dict({
            "model": {"name": "tiny-llama", "dtype": "float32", "gradient_checkpointing": gc},
            "lora": {"r": 8, "dropout": 0.1}, "latent": {"num_latents": 4, "mode": "sequential"},
            "data": {"dataset": "x.jsonl", "source": "local"}, "kava": {"alpha_kv": 1.0},
        })
        torch.manual_seed(0)
        model, _, builder = build_kava_model(cfg)
        perturb(model)
        from kava.model.capture import enable_capture

        enable_capture(model.backbone)
        model.train()
        batch = make_batch(builder, [builder.encode(e) for e in EXAMPLES], "kava", "cpu", shares_question(cfg))
        torch.manual_seed(7)
        losses = forward_backward(KavaObjective(model, cfg), batch, lambda loss: loss.backward())
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        runs.append(({k: v.detach() for k, v in losses.items()}, grads))
    (l1, g1), (l2, g2) = runs
    assert set(l1) == {"loss", "ce_student", "ce_teacher", "codi", "kv"}
    for k in l1:
        close(l1[k], l2[k])
    assert g1.keys() == g2.keys() and any("projection" in n for n in g1)
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], atol=1e-5, rtol=1e-4)


# ----- per-example latent counts (a curriculum) -------------------------------------------


@pytest.mark.parametrize("mode", ["sequential", "jacobi"])
def test_latent_mask_batch_equals_each_example_alone(build_model, mode):
    """Examples with 0, 2 and 5 latents and kept CoT in one batch give what each gives alone."""
    model, _, builder = build_model("tiny-qwen2", mode=mode)
    enc = [builder.encode(e) for e in EXAMPLES]
    counts = [2, 0, 5]
    cot = [builder.cot_ids(e.steps[1:]) for e in enc]
    batch = builder.student_batch(enc, num_latents=counts, cot=cot)
    assert batch.latent_mask.tolist() == [[1, 1, 0, 0, 0], [0] * 5, [1] * 5]
    with torch.no_grad():
        out = student_forward(model, batch)
        for b, e in enumerate(enc):
            solo = student_forward(model, builder.student_batch([e], num_latents=[counts[b]], cot=[cot[b]]))
            n = int(batch.suffix_mask[b].sum())
            close(out.logits[b, :n], solo.logits[0, :n], atol=1e-4)
            for hb, ha in zip(out.codi_hidden, solo.codi_hidden):
                close(hb[b], ha[0])
            if mode == "sequential":
                nll, logits, codi = reference_student(model, e, cot[b], counts[b])
                close(solo.logits[0, :n], logits, atol=1e-4)
                close(solo.ce, nll.mean())
                for layer, h in enumerate(codi):
                    close(solo.codi_hidden[layer][0], h)


def test_latent_mask_all_zero_runs_no_latent_pass(build_model, monkeypatch):
    for mode in ("sequential", "jacobi"):
        model, _, builder = build_model("tiny-llama", mode=mode)
        enc = [builder.encode(e) for e in EXAMPLES]
        batch = builder.student_batch(enc, num_latents=[0, 0, 0], cot=[e.c for e in enc])
        calls = []
        orig = model.lm
        monkeypatch.setattr(model, "lm", lambda **kw: calls.append(1) or orig(**kw))
        with torch.no_grad():
            state = run_latents(model, batch.q_ids, batch.q_mask, latent_mask=batch.latent_mask)
        assert state.passes == 1 == len(calls) and state.hidden.shape[1] == 0
        monkeypatch.undo()


# ----- generation ------------------------------------------------------------------------------


def test_generate_counts_one_pass_per_latent_and_batch_equals_alone(seq_model, monkeypatch):
    model, _, builder = seq_model
    questions = [e.question for e in EXAMPLES] + ["2+2?"]
    batched = generate(model, builder, questions, mode="latent", max_new_tokens=6, return_latents=True)
    singles = [generate(model, builder, [q], mode="latent", max_new_tokens=6, return_latents=True)[0]
               for q in questions]
    for b, s in zip(batched, singles):
        assert b.token_ids == s.token_ids and b.forward_passes == s.forward_passes
        close(b.latent_hidden, s.latent_hidden)
    calls = []
    orig = model.lm
    monkeypatch.setattr(model, "lm", lambda **kw: calls.append(1) or orig(**kw))
    M = model.num_latents
    for q in questions:
        calls.clear()
        (g,) = generate(model, builder, [q], mode="latent", max_new_tokens=6)
        assert g.forward_passes == len(calls) == 1 + M + 1 + (g.generated_tokens - 1)


# ----- the latent controls (kava.inference.latent_control) on a sequential student ---------


def test_latent_controls_apply_to_sequential_latents(seq_model):
    from kava.inference.latent_control import controlled_latents

    model, _, builder = seq_model
    enc, batch = _batch(builder)
    q_ids, q_mask = batch.q_ids, batch.q_mask
    M = model.num_latents
    with torch.no_grad():
        own = controlled_latents(model, builder, q_ids, q_mask, None)
        assert own.passes == 1 + M and own.inputs.shape == own.hidden.shape
        # pass0: no hidden state fed back, every latent input e(<latent>): the Jacobi pass 0, one call
        p0 = controlled_latents(model, builder, q_ids, q_mask, "pass0")
        jac = run_latents(model, q_ids, q_mask, num_iterations=0)
        assert p0.passes == 1
        close(p0.hidden, jac.hidden)
        assert (p0.hidden - own.hidden).abs().max() > 1e-3
        # shuffled: row b answers with row b+1's latent values (keys moved to row b's positions)
        questions = [e.question for e in EXAMPLES]
        donors = questions[1:] + questions[:1]
        sh = controlled_latents(model, builder, q_ids, q_mask, "shuffled", donors=donors)
        for b in range(len(EXAMPLES)):
            d = builder.student_batch([builder.encode(EXAMPLES[(b + 1) % 3])])
            alone = run_latents(model, d.q_ids, d.q_mask)
            close(sh.latent_kv[-1][1][b], alone.latent_kv[-1][1][0])
        # teacher: the compressed CoT entries in the M latent slots
        te = controlled_latents(model, builder, q_ids, q_mask, "teacher", questions=questions,
                                steps=[list(e.steps) for e in EXAMPLES])
        assert te.latent_kv[0][0].shape == own.latent_kv[0][0].shape
        assert (te.latent_kv[-1][1] - own.latent_kv[-1][1]).abs().max() > 1e-3
