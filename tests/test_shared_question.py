"""The question computed once (`kava.shared_question`, kava.model.question) equals today's step,
where the teacher reads a right-padded Q + C + P + A and the student runs its own Q + <bot>.

Same loss terms and gradients of every trainable weight to fp32 tolerance (LoRA dropout off:
with dropout on, the shared question's masks are drawn once instead of twice), through the
two-phase step and through one forward + one backward, for every teacher/loss switch whose
numbers do not depend on the batch layout (`compression: random` draws over the sequence's
width, so its draws differ by construction)."""

from __future__ import annotations

import pytest
import torch

from conftest import EXAMPLES, perturb
from kava.config import config_from_dict
from kava.data.batches import make_batch
from kava.model.capture import enable_capture
from kava.model.kava_model import build_kava_model
from kava.training.objective import KavaObjective
from kava.training.trainer import forward_backward

ATOL, RTOL = 1e-6, 1e-5


def _cfg(name="tiny-llama", dropout=0.0, **extra):
    raw = {
        "model": {"name": name, "dtype": "float32"},
        "lora": {"r": 8, "alpha": 16, "dropout": dropout},
        "latent": {"num_latents": 6, "num_iterations": 3},
        "data": {"dataset": "x.jsonl", "source": "local"},
    }
    return config_from_dict(raw, [f"{k}={v}" for k, v in extra.items()])


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    model, _tok, builder = build_kava_model(cfg)
    perturb(model, seed)
    enable_capture(model.backbone)
    model.train()
    return model, builder


def _step(model, builder, cfg, shared: bool, two_phase: bool):
    cfg = cfg.model_copy(deep=True)
    cfg.kava.shared_question = shared
    batch = make_batch(builder, [builder.encode(e) for e in EXAMPLES], "kava", "cpu", shared)
    objective = KavaObjective(model, cfg)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    if two_phase:
        losses = forward_backward(objective, batch, lambda loss: loss.backward())
    else:
        losses = objective(batch)
        losses["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


SWITCHES = [
    {},
    {"kava.teacher_targets": "separate_pass"},
    {"kava.teacher_ce": "false"},
    {"kava.alpha_kv": 0},
    {"kava.compression": "crop", "kava.kv_loss": "mse"},
    {"kava.compression": "attention"},
    {"kava.kv_keys": "pre_rope", "kava.kv_loss_layer_std": "true"},
    {"kava.codi_position": "answer_start"},
    {"model.gradient_checkpointing": "true"},
    {"prompt.teacher_delimiters": "true"},
    {"kava.student_latents": "teacher", "kava.kv_keys": "pre_rope"},
    {"kava.student_latents": "teacher"},
    {"latent.first_input": "latent_embedding", "latent.projection_scale": "embedding_rms"},
]


@pytest.mark.parametrize("two_phase", [True, False], ids=["two_phase", "one_backward"])
@pytest.mark.parametrize("extra", SWITCHES, ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items()) or "default")
def test_shared_question_equals_two_question_passes(extra, two_phase):
    cfg = _cfg(**extra)
    model, builder = _model(cfg)
    (l1, g1), (l2, g2) = (_step(model, builder, cfg, shared, two_phase) for shared in (True, False))
    assert l1.keys() == l2.keys() and {"loss", "ce_student"} <= set(l1)
    for k in l1:
        torch.testing.assert_close(l1[k], l2[k], atol=ATOL, rtol=RTOL, msg=k)
    assert g1.keys() == g2.keys()
    assert len(g1) == sum(p.requires_grad for p in model.parameters())  # every trainable weight is reached
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], atol=ATOL, rtol=RTOL, msg=n)


@pytest.mark.parametrize("name", ["tiny-qwen2"])
def test_shared_question_equals_two_question_passes_qwen2(name):
    cfg = _cfg(name)
    model, builder = _model(cfg)
    (l1, g1), (l2, g2) = (_step(model, builder, cfg, shared, True) for shared in (True, False))
    for k in l1:
        torch.testing.assert_close(l1[k], l2[k], atol=ATOL, rtol=RTOL, msg=k)
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], atol=ATOL, rtol=RTOL, msg=n)


def test_the_question_runs_once_per_step():
    """Every question token goes through the model once; today's step ran it twice."""
    cfg = _cfg()
    model, builder = _model(cfg)
    encoded = [builder.encode(e) for e in EXAMPLES]
    q_tokens = sum(len(e.q) for e in encoded)
    real = model.lm
    tokens = {}
    for shared in (True, False):
        seen = []

        def lm(**kwargs):
            ids = kwargs.get("input_ids", kwargs.get("inputs_embeds"))
            new = kwargs["attention_mask"][:, -ids.shape[1]:]
            seen.append(int(new.sum()))
            return real(**kwargs)

        model.lm = lm
        try:
            _step(model, builder, cfg, shared, two_phase=True)
        finally:
            del model.lm
        tokens[shared] = sum(seen)
    assert tokens[False] - tokens[True] == q_tokens


def test_dropout_on_shares_the_question_masks():
    """With LoRA dropout the shared step is a different (seeded, reproducible) draw: documented."""
    cfg = _cfg(dropout=0.1)
    model, builder = _model(cfg)
    a, _ = _step(model, builder, cfg, True, True)
    b, _ = _step(model, builder, cfg, True, True)
    c, _ = _step(model, builder, cfg, False, True)
    torch.testing.assert_close(a["loss"], b["loss"], atol=0, rtol=0)
    assert not torch.isclose(a["loss"], c["loss"], atol=1e-7, rtol=0)


def test_batch_layout_must_match_the_switch():
    cfg = _cfg()
    model, builder = _model(cfg)
    batch = make_batch(builder, [builder.encode(e) for e in EXAMPLES], "kava", "cpu", shared_question=False)
    with pytest.raises(ValueError, match="shared_question"):
        KavaObjective(model, cfg)(batch)


@pytest.mark.parametrize("stages", [[1, 2, 1, 3], [0, 0, 0, 0]], ids=["mixed", "stage0"])
def test_shared_question_under_a_curriculum(stages):
    """A curriculum's per-example latents and kept CoT continue over the shared question too."""
    from kava.training.curriculum import Curriculum

    cfg = _cfg(**{"curriculum.enabled": "true", "curriculum.stages": 3, "curriculum.thoughts_per_step": 2,
                  "kava.alpha_kv": 0,
                  "curriculum.steps_per_stage": 1})
    model, builder = _model(cfg)
    items = [builder.encode(e) for e in EXAMPLES]
    cur = Curriculum(cfg, steps_per_epoch=1, total_steps=8)
    student = cur.student_inputs(builder, items, (stages * len(items))[: len(items)])
    runs = []
    for shared in (True, False):
        c = cfg.model_copy(deep=True)
        c.kava.shared_question = shared
        batch = make_batch(builder, items, "kava", "cpu", shared, student)
        model.zero_grad(set_to_none=True)
        losses = forward_backward(KavaObjective(model, c), batch, lambda loss: loss.backward())
        runs.append(({k: v.detach() for k, v in losses.items()},
                     {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (l1, g1), (l2, g2) = runs
    for k in l1:
        torch.testing.assert_close(l1[k], l2[k], atol=ATOL, rtol=RTOL, msg=k)
    assert g1.keys() == g2.keys()
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], atol=ATOL, rtol=RTOL, msg=n)


def test_sequential_latents_run_their_own_question():
    from kava.config import shares_question

    assert shares_question(_cfg()) and not shares_question(_cfg(**{"latent.mode": "sequential"}))


def test_teacher_forward_returns_the_question_it_continued():
    """teacher_forward hands the question's pass that served its training pass on to the student
    (TeacherOutput.question); a continuation without its question, or a question with a full
    sequence, is refused."""
    from kava.model.question import Question
    from kava.model.teacher import TargetSpec, teacher_forward

    cfg = _cfg()
    model, builder = _model(cfg)
    items = [builder.encode(e) for e in EXAMPLES]
    cont, full, student = builder.continuation_batch(items), builder.teacher_batch(items), builder.student_batch(items)
    question = Question(student.q_ids[:, :-1], student.q_mask[:, :-1])
    spec = TargetSpec(budget=cfg.latent.num_latents)
    with torch.no_grad():
        out = teacher_forward(model, cont, spec, question=question)
        assert out.question is not None and out.question.kv is not None  # its pass, made here
        assert torch.equal(out.question.mask, question.mask)
        assert teacher_forward(model, cont, spec, with_ce=False, question=question).question is None
        assert teacher_forward(model, full, spec).question is None
        with pytest.raises(ValueError, match="needs its question"):
            teacher_forward(model, cont, spec)
        with pytest.raises(ValueError, match="needs its question"):
            teacher_forward(model, full, spec, question=question)
