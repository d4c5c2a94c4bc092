"""Latent controls (kava.inference.latent_control) against slow references.

References:
- *shifted recompute*: one unpadded example run from scratch (no cache), its Jacobi latent
  inputs built one by one, then its final pass run with every position id shifted by a
  constant. Rotary attention depends only on position differences, so this gives the same
  latent hidden states and values with the keys rotated for the shifted positions: exactly
  "the donor's latents at the recipient's latent positions".
- *teacher from scratch*: the teacher's `Q + C + P` run alone, with position ids shifted so
  that CoT token j sits where latent slot j sits in the student.
"""

from __future__ import annotations

import pytest
import torch

from kava.data.eval_sets import EvalExample
from kava.data.train_sets import ReasoningExample
from kava.evaluation.evaluate import evaluate_dataset, evaluate_latent_controls, latent_reliance
from kava.inference.generate import generate
from kava.inference.latent_control import controlled_latents
from kava.model.cache import kv_of
from kava.model.rope import move_keys, rotate_keys, unrotate_keys
from kava.model.student import run_latents

ATOL = 2e-5


def close(a, b, atol=ATOL):
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-5)


def shifted_latent_kv(model, q_ids: list[int], T: int, shift: int):
    """Per layer (keys [H, M, D], values [H, M, D]) of the final latent pass, positions + shift."""
    M, Lq = model.num_latents, len(q_ids)
    emb = model.backbone.get_input_embeddings()
    proj = model.projection if model.projection is not None else (lambda x: x)
    e_q = emb(torch.tensor([q_ids]))
    e_lat = emb(torch.tensor([[model.special.latent]]))[0, 0]
    inputs = e_lat.expand(M, -1)
    first = None
    for k in range(T + 1):
        out = model.backbone(inputs_embeds=torch.cat([e_q, inputs[None]], 1), output_hidden_states=True,
                             use_cache=True, position_ids=torch.arange(Lq + M)[None] + shift)
        h = out.hidden_states[-1][0]
        if k == 0:
            first = proj(h[Lq - 1])
        if k < T:
            inputs = torch.stack([first] + [proj(h[Lq + i - 1]) for i in range(1, M)])
    return [(kk[0, :, Lq:], vv[0, :, Lq:]) for kk, vv in kv_of(out.past_key_values)]


def _questions(builder, examples):
    q = [builder.encode(e).q for e in examples]
    qb = builder.question_batch(q, add_bot=True)
    return q, qb["input_ids"], qb["attention_mask"]


# ----- rotary helpers ------------------------------------------------------------------------


def test_rotate_and_unrotate_are_inverse_and_move_equals_the_model_at_the_new_position(llama):
    model, _, builder = llama
    ids = torch.tensor([builder.encode(ReasoningExample("Tom has 3 apples.", ("<<3+4=7>>",), "7")).q])
    with torch.no_grad():
        a = model.backbone(input_ids=ids, use_cache=True)
        b = model.backbone(input_ids=ids, use_cache=True, position_ids=torch.arange(ids.shape[1])[None] + 7)
    k_a, k_b = kv_of(a.past_key_values)[0][0], kv_of(b.past_key_values)[0][0]  # layer 0: token + position only
    pos = torch.arange(ids.shape[1])[None]
    assert (k_a - k_b).abs().max() > 1e-3  # the positions matter
    close(move_keys(model.backbone, k_a, pos, pos + 7), k_b)
    close(rotate_keys(model.backbone, unrotate_keys(model.backbone, k_a, pos), pos), k_a)
    close(move_keys(model.backbone, k_a, pos, pos), k_a)


# ----- shuffled ---------------------------------------------------------------------------------


def test_shuffled_latents_equal_the_donor_recomputed_at_the_recipient_positions(any_model, examples):
    model, _, builder = any_model
    q, q_ids, q_mask = _questions(builder, examples)
    n = len(examples)
    donors = [examples[(i + 1) % n].question for i in range(n)]
    T = model.num_iterations
    with torch.no_grad():
        own = run_latents(model, q_ids, q_mask)
        state = controlled_latents(model, builder, q_ids, q_mask, "shuffled", donors=donors)
        assert state.passes == own.passes == 1 + T
        for b in range(n):
            d = (b + 1) % n
            shift = len(q[b]) - len(q[d])  # the donor's latents move to the recipient's latent positions
            ref = shifted_latent_kv(model, q[d] + [model.special.bot], T, shift)
            for (k, v), (kr, vr) in zip(state.latent_kv, ref):
                close(k[b], kr)
                close(v[b], vr)
            assert (state.latent_kv[-1][1][b] - own.latent_kv[-1][1][b]).abs().max() > 1e-3
        # the question's own part of the cache is untouched
        Lq = q_ids.shape[1]
        for (k, v), (ko, vo) in zip(kv_of(state.cache), kv_of(own.cache)):
            close(k[:, :, :Lq], ko[:, :, :Lq])


def test_shuffled_with_itself_as_donor_is_the_normal_answer(llama, examples):
    model, _, builder = llama
    questions = [e.question for e in examples]
    normal = generate(model, builder, questions, mode="latent", max_new_tokens=6)
    same = generate(model, builder, questions, mode="latent", max_new_tokens=6, latent_control="shuffled",
                    donors=questions)
    assert [g.token_ids for g in same] == [g.token_ids for g in normal]
    assert [g.forward_passes for g in same] == [g.forward_passes for g in normal]


# ----- pass0 ------------------------------------------------------------------------------------


def test_pass0_is_zero_iterations(llama, examples, monkeypatch):
    model, _, builder = llama
    questions = [e.question for e in examples]
    ctrl = generate(model, builder, questions, mode="latent", max_new_tokens=6, latent_control="pass0")
    monkeypatch.setattr(model, "num_iterations", 0)
    zero = generate(model, builder, questions, mode="latent", max_new_tokens=6)
    assert [g.token_ids for g in ctrl] == [g.token_ids for g in zero]
    assert [g.forward_passes for g in ctrl] == [g.forward_passes for g in zero]


# ----- teacher ----------------------------------------------------------------------------------


@pytest.mark.parametrize("move", [False, True])
def test_teacher_latents_are_the_teachers_cot_entries(build_model, move):
    """M covers the whole CoT: slot j holds CoT token j (as cached, or moved to slot j's position);
    slots past the CoT keep the student's own latents."""
    model, _, builder = build_model("tiny-llama", capture=True, num_latents=16)
    examples = [ReasoningExample("Tom has 3 apples. He buys 4.", ("<<3+4=7>>", "<<7*2=14>>"), "14"),
                ReasoningExample("Ann has 12 pens and 5 more.", ("<<12+5=17>>", "<<17*1=17>>"), "17")]
    q, q_ids, q_mask = _questions(builder, examples)
    steps = [list(e.steps) for e in examples]
    with torch.no_grad():
        own = run_latents(model, q_ids, q_mask)
        state = controlled_latents(model, builder, q_ids, q_mask, "teacher", questions=[e.question for e in examples],
                                   steps=steps, teacher_settings={"move": move})
        for b, e in enumerate(examples):
            enc = builder.encode(e)
            assert 0 < len(enc.c) < model.num_latents
            ids = enc.q + enc.c + enc.p  # Q + C + P alone, from scratch
            shift = 1 if move else 0  # CoT token j at |Q| + j; latent slot j at |Q| + 1 + j (after <bot>)
            out = model.backbone(input_ids=torch.tensor([ids]), use_cache=True,
                                 position_ids=torch.arange(len(ids))[None] + shift)
            nq, nc = len(enc.q), len(enc.c)
            for (k, v), (kt, vt), (ko, vo) in zip(state.latent_kv, kv_of(out.past_key_values), own.latent_kv):
                close(k[b, :, :nc], kt[0, :, nq : nq + nc])
                close(v[b, :, :nc], vt[0, :, nq : nq + nc])
                close(k[b, :, nc:], ko[b, :, nc:])
                close(v[b, :, nc:], vo[b, :, nc:])


# ----- evaluation ------------------------------------------------------------------------------


def _eval_examples(examples):
    return [EvalExample(f"ex-{i}", e.question, float(e.answer), e.answer,
                        steps=e.steps) for i, e in enumerate(examples)]


def test_evaluate_shuffled_gives_each_example_the_next_examples_latents(llama, examples, monkeypatch):
    import kava.evaluation.evaluate as ev

    model, _, builder = llama
    data = _eval_examples(examples)
    seen = {}
    real = ev.generate

    def spy(model, builder, questions, **kwargs):
        for q, d in zip(questions, kwargs["donors"]):
            seen[q] = d
        return real(model, builder, questions, **kwargs)

    monkeypatch.setattr(ev, "generate", spy)
    evaluate_dataset(model, builder, data, mode="latent", batch_size=2, latent_control="shuffled", progress=False)
    assert seen == {data[i].question: data[(i + 1) % len(data)].question for i in range(len(data))}


def test_evaluate_latent_controls_reports_reliance(llama, examples, tmp_path):
    model, _, builder = llama
    data = _eval_examples(examples)
    res = evaluate_latent_controls(model, builder, data, ["shuffled", "pass0", "teacher"],
                                   predictions_path=tmp_path / "predictions.jsonl", batch_size=2, progress=False)
    assert {"shuffled", "pass0", "teacher"} == set(res["controls"])
    for name, r in res["controls"].items():
        assert r["latent_control"] == name and r["n"] == len(data)
        assert r["reliance"] == pytest.approx(res["own"]["accuracy"] - r["accuracy"])
        assert (tmp_path / f"predictions.{name}.jsonl").is_file()
    # resumed from the files: the same numbers
    again = evaluate_latent_controls(model, builder, data, ["shuffled"],
                                     predictions_path=tmp_path / "predictions.jsonl",
                                     batch_size=2, progress=False)
    assert again["controls"]["shuffled"]["reliance"] == res["controls"]["shuffled"]["reliance"]
    assert again["controls"]["shuffled"]["resumed"] == len(data)


def test_latent_reliance_by_hand():
    own = [{"id": "a", "correct": True, "answer": 1.0}, {"id": "b", "correct": True, "answer": 2.0},
           {"id": "c", "correct": False, "answer": None}, {"id": "d", "correct": False, "answer": 5.0}]
    ctrl = [{"id": "b", "correct": False, "answer": 3.0}, {"id": "a", "correct": True, "answer": 1.0},
            {"id": "d", "correct": False, "answer": 5.0}, {"id": "c", "correct": False, "answer": 4.0}]
    r = latent_reliance(own, ctrl)
    assert r == {"own_accuracy": 50.0, "control_accuracy": 25.0, "reliance": 25.0, "changed": 50.0}


def test_bad_controls_are_refused(llama, examples):
    from kava.errors import KavaError

    model, _, builder = llama
    data = _eval_examples(examples)
    with pytest.raises(KavaError, match="unknown latent control"):
        evaluate_dataset(model, builder, data, latent_control="swap", progress=False)
    with pytest.raises(KavaError, match="needs --mode latent"):
        evaluate_dataset(model, builder, data, mode="direct", latent_control="pass0", progress=False)
    no_steps = [EvalExample("x", "What is 2 + 3?", 5.0, "5"), EvalExample("y", "What is 1 + 1?", 2.0, "2")]
    with pytest.raises(KavaError, match="CoT steps"):
        evaluate_dataset(model, builder, no_steps, latent_control="teacher", progress=False)
    with pytest.raises(KavaError, match="at least 2"):
        evaluate_dataset(model, builder, data[:1], latent_control="shuffled", progress=False)
