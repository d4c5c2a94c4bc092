"""The curriculum (kava.training.curriculum): the student's sequences at every stage, the
schedule, the mixing of stages, the optimizer reset and its survival through resume."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from conftest import EXAMPLES, build
from kava.config import PromptConfig, config_from_dict
from kava.data.sequences import IGNORE, SequenceBuilder
from kava.errors import KavaError
from kava.io import read_jsonl
from kava.training.curriculum import Curriculum, reset_optimizer_state
from kava.training.trainer import train

MINIMAL = {"model": {"name": "tiny-llama"}, "data": {"dataset": "x.jsonl", "source": "local"}}


def _curriculum(steps_per_epoch=10, total_steps=100, **c):
    c = {"enabled": True, "steps_per_stage": 3, **c}
    overrides = [f"curriculum.{k}={'null' if v is None else v}" for k, v in c.items()]
    if c.get("thoughts_per_step"):
        overrides += [f"latent.num_latents={c.get('stages', 3) * c['thoughts_per_step']}", "kava.alpha_kv=0"]
    return Curriculum(config_from_dict(MINIMAL, overrides), steps_per_epoch, total_steps)


@pytest.fixture(scope="module")
def builder():
    """A builder that keeps every CoT step (Coconut's data), over the tiny Llama's tokenizer."""
    model, tok, b = build("tiny-llama")
    return SequenceBuilder(tok, PromptConfig(), b.special, drop_last_step=False, codi_position="answer_start")


def expected_student_row(builder, ex, n_latents: int, removed: int):
    """The student's sequence written out from the text: (input ids, labels, CODI index)."""
    tok, sp = builder.tok, builder.special
    enc = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    kept = list(ex.steps[removed:])
    cot = enc(" " + " ".join(kept)) if kept else []
    p, a = enc(" The answer is:"), enc(" " + ex.answer) + [tok.eos_token_id]
    head = builder.question_ids(ex.question) + [sp.bot] + [sp.latent] * n_latents
    suffix = [sp.eot] + cot + p + a
    shift = 1 if tok.decode(a[:1]).strip() == "" else 0
    return head + suffix, [IGNORE] * (len(head) + 1) + suffix[1:], len(cot) + len(p) + shift


def actual_student_row(builder, batch, b: int):
    """Example b of a student batch written out unpadded (latents as <latent> ids)."""
    q = batch.q_ids[b][batch.q_mask[b].bool()].tolist()
    n = int(batch.latent_mask[b].sum())
    keep = batch.suffix_mask[b].bool()
    suffix = batch.suffix_ids[b][keep].tolist()
    labels = batch.suffix_labels[b][keep].tolist()
    head = q + [builder.special.latent] * n
    return head + suffix, [IGNORE] * len(head) + labels, int(batch.suffix_codi_index[b])


# (stage -> (latents, steps removed)) for S = 3 stages, c = 2 thoughts per step [coconut: dataset.py]
FOUR_STEPS = {0: (0, 0), 1: (2, 1), 2: (4, 2), 3: (6, 3), 4: (6, 4)}
TWO_STEPS = {0: (0, 0), 1: (2, 1), 2: (4, 2), 3: (6, 2), 4: (6, 2)}  # more stages than steps: all removed


def test_sequences_at_every_stage(builder):
    cur = _curriculum(stages=3, thoughts_per_step=2)
    four, two = EXAMPLES[2], EXAMPLES[1]
    assert (len(four.steps), len(two.steps)) == (4, 2)
    items = [builder.encode(four), builder.encode(two)]
    for stage in range(5):
        assert cur.view(stage, 4) == FOUR_STEPS[stage] and cur.view(stage, 2) == TWO_STEPS[stage]
        batch = builder.student_batch(items, **cur.student_inputs(builder, items, [stage, stage]))
        for b, (ex, table) in enumerate(((four, FOUR_STEPS), (two, TWO_STEPS))):
            assert actual_student_row(builder, batch, b) == expected_student_row(builder, ex, *table[stage])
    # one batch, two stages: each row is what its own stage gives
    batch = builder.student_batch(items, **cur.student_inputs(builder, items, [1, 4]))
    assert actual_student_row(builder, batch, 0) == expected_student_row(builder, four, *FOUR_STEPS[1])
    assert actual_student_row(builder, batch, 1) == expected_student_row(builder, two, *TWO_STEPS[4])


def _lists(batch) -> dict:
    return {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in vars(batch).items()}


def test_without_thoughts_per_step_every_stage_has_M_latents(builder):
    cur = _curriculum(stages=3)
    M = cur.num_latents
    assert [cur.view(s, 4) for s in range(5)] == [(M, 0), (M, 1), (M, 2), (M, 3), (M, 4)]
    e = builder.encode(EXAMPLES[2])
    final = builder.student_batch([e], **cur.student_inputs(builder, [e], [4]))
    plain = builder.student_batch([e])
    assert final.latent_mask.tolist() == [[1] * M]
    assert _lists(final) == _lists(dataclasses.replace(plain, latent_mask=final.latent_mask))


def test_the_final_stage_is_what_the_model_is_evaluated_with(build_model):
    """With a latent mask of ones and no kept CoT the student equals the plain student."""
    from kava.model.student import student_forward

    for mode in ("sequential", "jacobi"):
        model, _, b = build_model("tiny-llama", mode=mode)
        items = [b.encode(e) for e in EXAMPLES]
        cur = _curriculum(stages=3, thoughts_per_step=2)
        assert model.num_latents == 6 == cur.view(cur.final_stage, 4)[0]
        with torch.no_grad():
            a = student_forward(model, b.student_batch(items, **cur.student_inputs(b, items, [4, 4, 4])))
            c = student_forward(model, b.student_batch(items))
        torch.testing.assert_close(a.logits, c.logits)
        torch.testing.assert_close(a.ce, c.ce)


def test_schedule():
    cur = _curriculum(stages=3, steps_per_stage=3, start_stage=1)
    assert [cur.stage(s) for s in range(12)] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert _curriculum(steps_per_stage=None, epochs_per_stage=0.5, steps_per_epoch=4).steps_per_stage == 2
    assert [_curriculum(stages=1, steps_per_stage=2).stage(s) for s in range(6)] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(KavaError, match="reaches its final stage .* at step 12, but training stops at step 12"):
        _curriculum(stages=3, steps_per_stage=3, total_steps=12)


def test_a_longer_stage_0():
    """curriculum.stage0_epochs: stage 0 lasts its own epochs, the later stages steps_per_stage each
    (CODI's Coconut on Llama-1B: 5 epochs of CoT, then 1 epoch per latent stage)."""
    cur = _curriculum(stages=3, steps_per_stage=None, epochs_per_stage=1, stage0_epochs=5, steps_per_epoch=2,
                      total_steps=20)
    assert [cur.stage(s) for s in range(20)] == [0] * 10 + [1, 1, 2, 2, 3, 3] + [4] * 4
    assert [s for s in range(20) if cur.resets_optimizer(s)] == [10, 12, 14, 16]
    with pytest.raises(KavaError, match="reaches its final stage .* at step 16, but training stops at step 16"):
        _curriculum(stages=3, steps_per_stage=None, epochs_per_stage=1, stage0_epochs=5, steps_per_epoch=2,
                    total_steps=16)
    with pytest.raises(KavaError, match="stage0_epochs needs curriculum.start_stage: 0"):
        _curriculum(stage0_epochs=2, start_stage=1)


def test_optimizer_reset_steps():
    cur = _curriculum(stages=2, steps_per_stage=3, steps_per_epoch=4)
    assert [s for s in range(12) if cur.resets_optimizer(s)] == [3, 6, 9]  # stage 0 -> 1 -> 2 -> final (3)
    epoch = _curriculum(stages=2, steps_per_stage=3, steps_per_epoch=4, reset_optimizer="epoch")
    assert [s for s in range(12) if epoch.resets_optimizer(s)] == [4, 8]
    never = _curriculum(stages=2, steps_per_stage=3, reset_optimizer="never")
    assert not any(never.resets_optimizer(s) for s in range(12))


def test_reset_optimizer_state_is_a_fresh_adamw():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    opt = torch.optim.AdamW([p], lr=0.1, weight_decay=0.01)
    for _ in range(3):
        p.grad = torch.randn(5)
        opt.step()
    q = torch.nn.Parameter(p.detach().clone())
    fresh = torch.optim.AdamW([q], lr=0.1, weight_decay=0.01)
    reset_optimizer_state(opt)
    g = torch.randn(5)
    p.grad, q.grad = g.clone(), g.clone()
    opt.step()
    fresh.step()
    torch.testing.assert_close(p, q)


def test_mixing_draws_stages_uniformly_and_reproducibly():
    none = _curriculum(stages=3, steps_per_stage=3, mix_prob=0.0)
    assert {none.example_stage(4, i, 3) for i in range(200)} == {1}
    always = _curriculum(stages=3, steps_per_stage=3, mix_prob=1.0, steps_per_epoch=10)
    draws = [always.example_stage(4, i, 3) for i in range(800)]
    counts = [draws.count(s) for s in range(4)]
    assert set(draws) == {0, 1, 2, 3} and min(counts) > 150  # uniform over 0..(number of steps)
    assert draws == [always.example_stage(4, i, 3) for i in range(800)]  # a function of (seed, epoch, index)
    assert draws == [always.example_stage(7, i, 3) for i in range(800)]  # same epoch (steps 0..9)
    assert draws != [always.example_stage(14, i, 3) for i in range(800)]  # another epoch draws again
    some = _curriculum(stages=3, steps_per_stage=3, mix_prob=0.3)
    moved = sum(some.example_stage(4, i, 3) != 1 for i in range(2000)) / 2000
    assert 0.3 * 3 / 4 - 0.05 < moved < 0.3 * 3 / 4 + 0.05  # a drawn stage equals the scheduled one 1 time in 4


# ----- through the trainer -------------------------------------------------------------------


def _rows(n=48):
    rows = []
    for i in range(n):
        a, b = 3 + i % 7, 2 + i % 5
        rows.append({"question": f"Sam has {a} pens and buys {b} boxes of {a} pens. How many pens?",
                     "steps": [f"<<{b}*{a}={a*b}>>", f"<<{a}+{a*b}={a + a*b}>>", f"<<{a + a*b}*1={a + a*b}>>"],
                     "answer": str(a + a * b)})
    return rows


def _train_cfg(tmp_path, **extra):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    raw = {
        "output_dir": str(tmp_path / "run"),
        "model": {"name": "tiny-llama", "dtype": "float32", "tiny": {"hidden_size": 32, "num_layers": 2}},
        "lora": {"enabled": False},
        "latent": {"num_latents": 4, "mode": "sequential", "projection": False},
        "data": {"dataset": str(data), "source": "local", "val_size": 0, "drop_last_step": False},
        "kava": {"alpha_codi": 0, "alpha_kv": 0, "teacher_ce": False},
        "curriculum": {"enabled": True, "stages": 2, "thoughts_per_step": 2, "steps_per_stage": 2, "mix_prob": 0.5},
        "train": {"lr": 3e-3, "max_steps": 8, "global_batch_size": 8, "micro_batch_size": 4, "warmup_ratio": 0.0,
                  "save_every": 2, "keep_last": 5},
    }
    return config_from_dict(raw, [f"{k}={v}" for k, v in extra.items()])


def test_coconut_trains_stage_by_stage_resets_and_resumes(tmp_path, monkeypatch):
    import kava.training.trainer as trainer_module

    resets = []
    real_reset = trainer_module.reset_optimizer_state

    def spy(optimizer):
        assert len(optimizer.optimizer.state) > 0  # there is state to clear
        resets.append(len(read_jsonl(tmp_path / "run" / "train_log.jsonl")))
        real_reset(optimizer)
        assert len(optimizer.optimizer.state) == 0

    monkeypatch.setattr(trainer_module, "reset_optimizer_state", spy)  # where the trainer calls it
    cfg = _train_cfg(tmp_path)
    train(cfg, show_progress=False)
    run = tmp_path / "run"
    full = read_jsonl(run / "train_log.jsonl")
    assert [r["curriculum_stage"] for r in full] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert resets == [2, 4, 6]  # before steps 3, 5 and 7: the first of each new stage
    assert set(full[0]) >= {"loss", "ce_student"} and "ce_teacher" not in full[0]  # plain CE, no teacher
    assert json.loads((run / "checkpoint-4" / "trainer_state.json").read_text())["curriculum_stage"] == 1
    # Interrupted after step 4 (a stage boundary): the resumed run resets and draws as the first did.
    shutil.rmtree(run / "checkpoint-final")
    shutil.rmtree(run / "checkpoint-6")
    resets.clear()
    train(cfg, resume=True, show_progress=False)
    resumed = read_jsonl(run / "train_log.jsonl")
    assert resets == [4, 6]
    assert [r["step"] for r in resumed] == list(range(1, 9))
    for a, b in zip(full, resumed):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6), a["step"]
    # a config that puts the checkpoint's step at another stage cannot resume it
    shutil.rmtree(run / "checkpoint-final")
    with pytest.raises(KavaError, match=r"--resume cannot change curriculum.steps_per_stage \(2 -> 3\)"):
        train(_train_cfg(tmp_path, **{"curriculum.steps_per_stage": 3, "train.max_steps": 12}), resume=True,
              show_progress=False)


@pytest.mark.parametrize("latent, extra", [
    ({"mode": "jacobi", "num_iterations": 2}, {"kava.alpha_codi": 10, "kava.teacher_ce": True}),  # PCCoT
    ({"mode": "jacobi", "num_iterations": 2, "projection": True},
     {"kava.alpha_codi": 10, "kava.alpha_kv": 1, "kava.teacher_ce": True,
      "curriculum.thoughts_per_step": None}),  # KaVa
    ({"mode": "sequential", "projection": True},
     {"kava.alpha_codi": 20, "kava.teacher_ce": True, "kava.codi_position": "answer_start"}),  # CODI
])
def test_kava_pccot_and_codi_students_train_under_a_curriculum(tmp_path, latent, extra):
    extra = {"train.max_steps": 7, "train.save_every": None, "data.val_size": 4, "train.eval_every": 7,
             **{f"latent.{k}": v for k, v in latent.items()}, **extra}
    final = train(_train_cfg(tmp_path, **{k: ("null" if v is None else v) for k, v in extra.items()}),
                  show_progress=False)
    records = read_jsonl(final.parent / "train_log.jsonl")
    log = [r for r in records if r.get("split") != "validation"]
    (val,) = [r for r in records if r.get("split") == "validation"]  # at the final stage
    assert torch.isfinite(torch.tensor(val["ce_student"]))
    assert [r["curriculum_stage"] for r in log] == [0, 0, 1, 1, 2, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    assert "codi" in log[-1] and ("kv" in log[-1]) == (extra.get("kava.alpha_kv", 0) > 0)
