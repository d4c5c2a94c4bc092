"""Every ablation switch of the config changes what it claims to (issue 7, docs/algorithm.md §8).

Each test builds a tiny model from a config (as the trainer does), flips one switch and
checks the one thing the switch is about: the loss terms the objective computes, the
teacher's CoT, the positions the compression keeps, the latent inputs, the number of
latent slots and of forward passes, the cross-entropy a baseline trains.
"""

from __future__ import annotations

import pytest
import torch

import kava.model.teacher as teacher_module
import kava.training.objective as objective_module
from kava.config import config_from_dict
from kava.data.batches import make_batch
from kava.data.sequences import IGNORE
from kava.data.train_sets import ReasoningExample
from kava.inference import generate
from kava.model.capture import enable_capture
from kava.model.kava_model import build_kava_model
from kava.model.lm import causal_ce
from kava.model.student import run_latents, student_forward
from kava.model.teacher import TargetSpec, teacher_forward
from kava.training.objective import KavaObjective

EXAMPLES = [
    ReasoningExample("Tom has 3 apples and buys 4 more. He doubles them.",
                     ("<<3+4=7>>", "<<7*2=14>>", "<<14-1=13>>"), "13"),
    ReasoningExample("Ann has 12 pens and gives 5 away.", ("<<12-5=7>>", "<<7+20=27>>", "<<27*2=54>>"), "54"),
]
LAST_STEP = EXAMPLES[0].steps[-1]


def _setup(**overrides):
    """(cfg, model, builder) from a tiny config with dotted `overrides` (dots written as __)."""
    raw = {
        "model": {"name": "tiny-llama", "dtype": "float32",
                  "tiny": {"hidden_size": 32, "num_layers": 2, "intermediate_size": 64}},
        "lora": {"enabled": False},
        "latent": {"num_latents": 4, "num_iterations": 2},
        "data": {"dataset": "x.jsonl", "source": "local"},
        "train": {"global_batch_size": 2, "micro_batch_size": 2},
    }
    cfg = config_from_dict(raw, [f"{k.replace('__', '.')}={v}" for k, v in overrides.items()])
    torch.manual_seed(0)
    model, _tok, builder = build_kava_model(cfg)
    with torch.no_grad():  # the special-token rows start equal; make every position distinct
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    enable_capture(model.backbone)
    return cfg, model, builder


def _batch(cfg, builder, method=None):
    return make_batch(builder, [builder.encode(e) for e in EXAMPLES], method or cfg.train.method, "cpu",
                      cfg.kava.shared_question)


def _spy(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


def _count_lm_calls(monkeypatch, model):
    calls = []
    real = model.lm

    def lm(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(model, "lm", lm)
    return calls


# -- the loss weights ----------------------------------------------------------------------


def test_default_objective_has_every_term(monkeypatch):
    cfg, model, builder = _setup()
    selects = _spy(monkeypatch, teacher_module, "rkv_select")
    out = KavaObjective(model, cfg)(_batch(cfg, builder))
    assert set(out) == {"loss", "ce_student", "ce_teacher", "codi", "kv"}
    assert len(selects) == model.num_layers
    terms = out["ce_student"] + out["ce_teacher"] + cfg.kava.alpha_codi * out["codi"] + cfg.kava.alpha_kv * out["kv"]
    torch.testing.assert_close(out["loss"].detach(), terms)


def test_alpha_kv_zero_is_pccot_without_kv_targets(monkeypatch):
    """α₂ = 0: no KV term, and the R-KV selection (and its attention capture) is never computed."""
    cfg, model, builder = _setup(kava__alpha_kv=0)
    selects = _spy(monkeypatch, teacher_module, "rkv_select")
    captures = _spy(monkeypatch, teacher_module, "capture_importance")
    kv_losses = _spy(monkeypatch, objective_module, "kv_loss")
    out = KavaObjective(model, cfg)(_batch(cfg, builder))
    assert "kv" not in out and "codi" in out
    assert selects == [] and captures == [] and kv_losses == []
    torch.testing.assert_close(out["loss"].detach(),
                               out["ce_student"] + out["ce_teacher"] + cfg.kava.alpha_codi * out["codi"])


def test_alpha_codi_zero_has_no_codi_term(monkeypatch):
    cfg, model, builder = _setup(kava__alpha_codi=0)
    codi_losses = _spy(monkeypatch, objective_module, "codi_loss")
    out = KavaObjective(model, cfg)(_batch(cfg, builder))
    assert "codi" not in out and "kv" in out and codi_losses == []
    torch.testing.assert_close(out["loss"].detach(), out["ce_student"] + out["ce_teacher"] + out["kv"])


def test_both_alphas_zero_take_no_targets(monkeypatch):
    cfg, model, builder = _setup(kava__alpha_codi=0, kava__alpha_kv=0)
    teachers = _spy(monkeypatch, objective_module, "teacher_forward")
    out = KavaObjective(model, cfg)(_batch(cfg, builder))
    assert set(out) == {"loss", "ce_student", "ce_teacher"}
    assert teachers[0][0][2] is None  # no TargetSpec: the teacher gives its CE only


def test_alpha_kv_scales_the_kv_term():
    outs = {}
    for a in (1.0, 3.0):
        cfg, model, builder = _setup(kava__alpha_kv=a)
        outs[a] = KavaObjective(model, cfg)(_batch(cfg, builder))
    torch.testing.assert_close(outs[3.0]["loss"] - outs[1.0]["loss"], 2 * outs[1.0]["kv"])


@pytest.mark.parametrize("kind", ["l1", "mse"])
def test_kv_loss_kind_changes_the_kv_term(kind):
    cfg, model, builder = _setup()
    base = KavaObjective(model, cfg)(_batch(cfg, builder))["kv"]
    cfg.kava.kv_loss = kind
    other = KavaObjective(model, cfg)(_batch(cfg, builder))["kv"]
    assert not torch.isclose(base, other)


def test_kv_loss_layer_std_changes_the_kv_term():
    cfg, model, builder = _setup()
    base = KavaObjective(model, cfg)(_batch(cfg, builder))["kv"]
    cfg.kava.kv_loss_layer_std = True
    assert not torch.isclose(base, KavaObjective(model, cfg)(_batch(cfg, builder))["kv"])


def test_codi_layer_std_switch_reaches_the_codi_term(monkeypatch):
    """kava.codi_layer_std (KaVa Table 6's "layer-wise std", PCCoT's use_layerwise_std)."""
    cfg, model, builder = _setup()
    calls = _spy(monkeypatch, objective_module, "codi_loss")
    base = KavaObjective(model, cfg)(_batch(cfg, builder))["codi"]
    cfg.kava.codi_layer_std = False
    other = KavaObjective(model, cfg)(_batch(cfg, builder))["codi"]
    assert [c[0][2] for c in calls] == [True, False] and not torch.isclose(base, other)


@pytest.mark.parametrize("shared", [True, False])
def test_teacher_targets_separate_pass_runs_the_teacher_twice(monkeypatch, shared):
    for mode, teacher_calls in (("same_pass", 1), ("separate_pass", 2)):
        cfg, model, builder = _setup(kava__teacher_targets=mode, kava__shared_question=shared)
        calls = _count_lm_calls(monkeypatch, model)
        batch = _batch(cfg, builder)
        KavaObjective(model, cfg)(batch)
        assert sum(1 for c in calls if c.get("input_ids") is batch["teacher"].input_ids) == teacher_calls


# -- the baselines -------------------------------------------------------------------------


def test_method_cot_trains_the_teacher_ce_alone(monkeypatch):
    cfg, model, builder = _setup(train__method="cot")
    students = _spy(monkeypatch, objective_module, "student_forward")
    batch = _batch(cfg, builder)
    assert set(batch) == {"teacher"}
    out = KavaObjective(model, cfg)(batch)
    assert set(out) == {"loss", "ce_teacher"} and students == []
    t = batch["teacher"]
    labelled = t.labels != IGNORE
    assert (labelled & t.cot_mask).any()  # the CoT tokens are trained
    with torch.no_grad():
        ref = teacher_forward(model, t, None).ce
    torch.testing.assert_close(out["loss"].detach(), ref)


def test_method_direct_trains_question_to_answer(monkeypatch):
    cfg, model, builder = _setup(train__method="direct")
    students = _spy(monkeypatch, objective_module, "student_forward")
    teachers = _spy(monkeypatch, objective_module, "teacher_forward")
    batch = _batch(cfg, builder)
    assert set(batch) == {"direct"}
    d = batch["direct"]
    assert not d.cot_mask.any()  # no CoT token in the sequence
    encoded = [builder.encode(e) for e in EXAMPLES]
    for row, e in zip(range(len(EXAMPLES)), encoded):
        ids = d.input_ids[row][d.attention_mask[row].bool()].tolist()
        assert ids == e.q + e.p + e.a
        assert d.labels[row][d.labels[row] != IGNORE].tolist() == e.p + e.a
    out = KavaObjective(model, cfg)(batch)
    assert set(out) == {"loss", "ce_student"} and students == [] and teachers == []


def test_method_kava_trains_student_and_teacher():
    cfg, model, builder = _setup()
    assert set(_batch(cfg, builder)) == {"teacher", "student"}


# -- data ----------------------------------------------------------------------------------


@pytest.mark.parametrize("drop", [True, False])
def test_drop_last_step_switch(drop):
    cfg, model, builder = _setup(data__drop_last_step=drop)
    tok = builder.tok
    e = builder.encode(EXAMPLES[0])
    cot = tok.decode(e.c)
    assert EXAMPLES[0].steps[0] in cot
    assert (LAST_STEP in cot) is (not drop)
    t = _batch(cfg, builder)["teacher"]
    kept = len(EXAMPLES[0].steps) - (1 if drop else 0)
    assert int(t.cot_mask[0].sum()) == len(builder._enc(" " + " ".join(EXAMPLES[0].steps[:kept])))


# -- compression ---------------------------------------------------------------------------


def _selections(method, lam=0.1, num_latents=4):
    cfg, model, builder = _setup(kava__compression=method, kava__rkv_lambda=lam, latent__num_latents=num_latents,
                                 kava__shared_question=False)  # the full teacher sequence
    batch = _batch(cfg, builder)["teacher"]
    with torch.no_grad():
        out = teacher_forward(model, batch, TargetSpec(budget=num_latents, compression=method, lam=lam), with_ce=False,
                              generator=torch.Generator().manual_seed(0))
    return batch, [s.positions for s in out.selections]


def test_compression_crop_keeps_the_last_m_cot_tokens():
    batch, positions = _selections("crop")
    for b in range(len(EXAMPLES)):
        last = batch.cot_mask[b].nonzero().flatten()[-4:]
        for layer in positions:
            assert (layer[b] == last).all()


def test_compression_methods_select_different_positions():
    # λ = 0.5: at the paper's 0.1 the redundancy term can decide every pick on its own
    picks = {m: _selections(m, lam=0.5)[1] for m in ("rkv", "attention", "redundancy", "crop", "random")}
    flat = {m: torch.stack(p).flatten().tolist() for m, p in picks.items()}
    assert len({tuple(v) for v in flat.values()}) == len(flat), flat


def test_objective_passes_compression_and_lambda(monkeypatch):
    cfg, model, builder = _setup(kava__compression="redundancy", kava__rkv_lambda=0.7)
    selects = _spy(monkeypatch, teacher_module, "rkv_select")
    KavaObjective(model, cfg)(_batch(cfg, builder))
    assert {(c[1]["method"], c[1]["lam"]) for c in selects} == {("redundancy", 0.7)}


def test_rkv_lambda_changes_the_selection():
    picks = {lam: torch.stack(_selections("rkv", lam)[1]) for lam in (0.0, 1.0)}
    assert not torch.equal(picks[0.0], picks[1.0])
    torch.testing.assert_close(picks[0.0], torch.stack(_selections("redundancy")[1]))
    torch.testing.assert_close(picks[1.0], torch.stack(_selections("attention")[1]))


# -- the student ---------------------------------------------------------------------------


@pytest.mark.parametrize("projection", [True, False])
def test_projection_switch(monkeypatch, projection):
    """Without projection the Jacobi inputs are the raw hidden states (shifted by one)."""
    cfg, model, builder = _setup(latent__projection=projection)
    assert (model.projection is None) is (not projection)
    calls = _count_lm_calls(monkeypatch, model)
    q = builder.question_batch([builder.encode(e).q for e in EXAMPLES], add_bot=True)
    with torch.no_grad():
        run_latents(model, q["input_ids"], q["attention_mask"], num_iterations=1)
        ref = model.lm(**calls[0])  # pass 0 again: its hidden states h⁰
    Lq = q["input_ids"].shape[1]
    h0 = ref.hidden_states[-1][:, Lq - 1 :]  # <bot> and the M latents
    inputs = calls[1]["inputs_embeds"]
    if projection:
        torch.testing.assert_close(inputs, model.projection(h0[:, :-1]))
        assert not torch.allclose(inputs, h0[:, :-1])
    else:
        torch.testing.assert_close(inputs, h0[:, :-1])


@pytest.mark.parametrize("first_input", ["bot_hidden", "latent_embedding"])
def test_first_input_switch(monkeypatch, first_input):
    """latent.first_input: the first slot's input is proj(h⁰ at <bot>) or e(<latent>)."""
    cfg, model, builder = _setup(latent__first_input=first_input)
    assert model.first_input == first_input
    calls = _count_lm_calls(monkeypatch, model)
    q = builder.question_batch([builder.encode(e).q for e in EXAMPLES], add_bot=True)
    with torch.no_grad():
        run_latents(model, q["input_ids"], q["attention_mask"], num_iterations=2)
        calls = list(calls)
        ref = model.lm(**calls[0])  # pass 0 again (recorded too, after the copy)
    Lq = q["input_ids"].shape[1]
    expected = (model.projection(ref.hidden_states[-1][:, Lq - 1 : Lq]) if first_input == "bot_hidden"
                else model.latent_embeddings(len(EXAMPLES)))
    for call in calls[1:]:
        torch.testing.assert_close(call["inputs_embeds"][:, :1], expected)


@pytest.mark.parametrize("scale", ["unit", "embedding_rms"])
def test_projection_scale_switch(scale):
    """latent.projection_scale: the projection's LayerNorm gain starts at 1 or at the embeddings' RMS."""
    from kava.model.kava_model import embedding_rms

    raw = {"model": {"name": "tiny-llama", "dtype": "float32"}, "lora": {"enabled": False},
           "data": {"dataset": "x.jsonl", "source": "local"}, "latent": {"projection_scale": scale}}
    model, _tok, _builder = build_kava_model(config_from_dict(raw))
    rms = embedding_rms(model.backbone)
    assert 0 < rms < 0.5  # the tiny model's embeddings are small (std 0.02 at init)
    gain = model.projection.net[-1].weight
    expected = 1.0 if scale == "unit" else rms
    torch.testing.assert_close(gain, torch.full_like(gain, expected))
    out = model.projection(torch.randn(3, 5, gain.shape[0]))
    torch.testing.assert_close(out.pow(2).mean().sqrt(), torch.tensor(expected), rtol=0.05, atol=0)


@pytest.mark.parametrize("M", [2, 5])
def test_num_latents_sets_the_latent_slots(M):
    cfg, model, builder = _setup(latent__num_latents=M, kava__shared_question=False)  # the full teacher sequence
    batch = _batch(cfg, builder)
    out = student_forward(model, batch["student"])
    assert all(k.shape[2] == M and v.shape[2] == M for k, v in out.latent_kv)
    sel = teacher_forward(model, batch["teacher"], TargetSpec(budget=cfg.latent.num_latents), with_ce=False).selections
    assert all(s.keys.shape[2] == M for s in sel)
    gens = generate(model, builder, [EXAMPLES[0].question], mode="latent", max_new_tokens=3, return_latents=True)
    assert gens[0].latent_hidden.shape[0] == M


@pytest.mark.parametrize("T", [0, 1, 3])
def test_num_iterations_sets_the_forward_passes(monkeypatch, T):
    cfg, model, builder = _setup(latent__num_iterations=T)
    calls = _count_lm_calls(monkeypatch, model)
    q = builder.question_batch([builder.encode(e).q for e in EXAMPLES], add_bot=True)
    with torch.no_grad():
        state = run_latents(model, q["input_ids"], q["attention_mask"])
    assert state.passes == 1 + T and len(calls) == 1 + T
    gen = generate(model, builder, [EXAMPLES[0].question], mode="latent", max_new_tokens=3)[0]
    assert gen.forward_passes == 1 + T + 1 + gen.generated_tokens - 1


def test_causal_ce_is_the_mean_over_labelled_tokens():
    """The reference used above: CE of the labelled tokens only."""
    logits = torch.randn(1, 4, 7)
    labels = torch.tensor([[IGNORE, 3, IGNORE, 5]])
    ref = torch.nn.functional.cross_entropy(logits[0, [0, 2]], torch.tensor([3, 5]))
    torch.testing.assert_close(causal_ce(logits, labels), ref)


# -- keys before or after RoPE -------------------------------------------------------------


def test_unrotate_keys_gives_the_keys_before_rope():
    """unrotate_keys(cached keys, their positions) equals k_proj's output, captured in the model."""
    from kava.model.rope import unrotate_keys

    cfg, model, builder = _setup()
    t = _batch(cfg, builder)["teacher"]
    raw = {}
    attn = model.backbone.model.layers[0].self_attn
    hook = attn.k_proj.register_forward_hook(lambda m, i, o: raw.setdefault("k", o))
    with torch.no_grad():
        out = model.lm(input_ids=t.input_ids, attention_mask=t.attention_mask, use_cache=True,
                       position_ids=torch.arange(t.input_ids.shape[1]).expand_as(t.input_ids))
    hook.remove()
    B, S = t.input_ids.shape
    expected = raw["k"].view(B, S, -1, attn.head_dim).transpose(1, 2)
    cached = out.past_key_values.layers[0].keys
    assert not torch.allclose(cached, expected, atol=1e-4)
    pos = torch.arange(S).expand(B, S)
    torch.testing.assert_close(unrotate_keys(model.backbone, cached, pos), expected, atol=1e-5, rtol=1e-5)


def test_kv_keys_pre_rope_changes_the_kv_term_not_the_values(monkeypatch):
    cfg, model, builder = _setup()
    seen = []
    real = objective_module.kv_loss
    monkeypatch.setattr(objective_module, "kv_loss", lambda s, t, *a: seen.append((s, t)) or real(s, t, *a))
    post = KavaObjective(model, cfg)(_batch(cfg, builder))["kv"]
    cfg.kava.kv_keys = "pre_rope"
    pre = KavaObjective(model, cfg)(_batch(cfg, builder))["kv"]
    assert not torch.isclose(pre, post)
    (s_post, t_post), (s_pre, t_pre) = seen
    torch.testing.assert_close(s_pre[0][1], s_post[0][1])  # values carry no RoPE
    torch.testing.assert_close(t_pre[0].values, t_post[0].values)
    assert not torch.allclose(t_pre[0].keys, t_post[0].keys)
    # a key unrotated at its own position keeps its norm (RoPE is a rotation)
    torch.testing.assert_close(t_pre[0].keys.norm(dim=-1), t_post[0].keys.norm(dim=-1))


def test_pre_rope_student_keys_are_the_latent_k_proj_outputs():
    """The latent slots' positions used to undo RoPE are the ones the student ran at (left padding too)."""
    cfg, model, builder = _setup(kava__shared_question=False)  # the full teacher sequence
    batch = _batch(cfg, builder)
    M = cfg.latent.num_latents
    raw = []
    attn = model.backbone.model.layers[0].self_attn
    hook = attn.k_proj.register_forward_hook(lambda m, i, o: raw.append(o))
    with torch.no_grad():
        student = student_forward(model, batch["student"])
        teacher = teacher_forward(model, batch["teacher"], TargetSpec(budget=M), with_ce=False)
    hook.remove()
    last_latent_pass = [o for o in raw if o.shape[1] == M][-1]
    B = last_latent_pass.shape[0]
    expected = last_latent_pass.view(B, M, -1, attn.head_dim).transpose(1, 2)
    s_kv, _ = objective_module._unrotated(model, batch, student.latent_kv, teacher.selections)
    torch.testing.assert_close(s_kv[0][0], expected, atol=1e-5, rtol=1e-5)


# -- where the CODI loss reads the hidden states --------------------------------------------


@pytest.mark.parametrize("position, next_text", [("prefix_end", " "), ("answer_start", "1")])
def test_codi_position_switch(monkeypatch, position, next_text):
    """prefix_end: the last token of P, whose next token is the space before the answer (this
    tokenizer writes ' 13' as ' ' + '1' + '3'); answer_start: the token before the answer's first digit."""
    cfg, model, builder = _setup(kava__codi_position=position)
    batch = _batch(cfg, builder)
    t, s = batch["teacher"], batch["student"]
    tok = builder.tok
    row = 0  # EXAMPLES[0], answer "13"
    assert tok.decode([int(t.input_ids[row, t.codi_index[row] + 1])]) == next_text
    assert tok.decode([int(s.suffix_ids[row, s.suffix_codi_index[row] + 1])]) == next_text
    assert int(t.labels[row, t.codi_index[row] + 1]) == int(t.input_ids[row, t.codi_index[row] + 1])
    seen = _spy(monkeypatch, objective_module, "codi_loss")
    KavaObjective(model, cfg)(batch)
    assert len(seen) == 1


def test_student_latents_teacher_reads_the_teachers_kv(monkeypatch):
    """kava.student_latents=teacher: the answer pass attends to the teacher's kept CoT keys/values."""
    cfg, model, builder = _setup(kava__student_latents="teacher", kava__alpha_kv=0)
    batch = _batch(cfg, builder)
    seen = _spy(monkeypatch, objective_module, "selections_state")
    out = KavaObjective(model, cfg)(batch)
    assert len(seen) == 1 and torch.isfinite(out["loss"])
    # the answer pass's CE differs from the student's own-latent CE (the latents it reads changed)
    cfg_own, model_own, _ = _setup(kava__alpha_kv=0)
    own = KavaObjective(model_own, cfg_own)(batch)
    assert abs(float(out["ce_student"]) - float(own["ce_student"])) > 1e-4
