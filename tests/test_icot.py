"""iCoT (kava.training.icot): the schedule against a slow transcription of the official training
loop [icot: da03/Internalize_CoT_Step_by_Step src/train.py], the sequences at every stage, the
offsets' distribution, the optimizer resets, and the trained model evaluated in direct mode."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from conftest import EXAMPLES, build
from kava.config import PromptConfig, config_from_dict
from kava.data.sequences import IGNORE, SequenceBuilder
from kava.errors import KavaError
from kava.io import read_jsonl
from kava.training.icot import ALL, IcotSchedule, lambda_distribution
from kava.training.trainer import train

MINIMAL = {"model": {"name": "tiny-llama"}, "data": {"dataset": "x.jsonl", "source": "local"}}


def _schedule(lengths, steps_per_epoch=12, total_steps=10_000, batch=None, seed=0, **icot):
    overrides = [f"seed={seed}", "train.method=icot"]
    overrides += [f"icot.{k}={'null' if v is None else v}" for k, v in icot.items()]
    batch = batch or (lambda step: list(range(len(lengths))))
    return IcotSchedule(config_from_dict(MINIMAL, overrides), steps_per_epoch, total_steps, lengths, batch)


def official_compute_lambda_distribution(removal_smoothing_lambda, truncate_length=100):
    """src/train.py compute_lambda_distribution, as the official code has it (inf = no smoothing)."""
    if removal_smoothing_lambda == float("inf"):
        lambda_distribution = torch.zeros(truncate_length)
        lambda_distribution[0] = 1
    else:
        positions = torch.arange(truncate_length)
        lambda_distribution = (1 - math.exp(-removal_smoothing_lambda)) * positions.mul(-removal_smoothing_lambda).exp()
        cum_prob = lambda_distribution.sum()
        assert cum_prob <= 1
        lambda_distribution[-1] = lambda_distribution[-1] + (1 - cum_prob)
    return lambda_distribution


def official_loop(num_batches, steps_per_epoch, remove_per_epoch, beyond, start, lam, reset, lengths, batch, offset):
    """The official main() loop, statement by statement (left removal, --pretrain_epochs 0): for each
    batch, the tokens each of its examples loses and whether AdamW is re-created before it. Offsets come
    from `offset(step, index)` (the official draws them with torch.multinomial from the λ distribution;
    the draws are tested against that distribution separately)."""
    beyond = float("inf") if beyond is None else beyond
    scheduled_to_remove = start
    steps_per_removed_token = int(round(steps_per_epoch / remove_per_epoch))
    remove_step_counter = 0
    all_cot_removed_in_prev_batch = False
    out = []
    for step in range(num_batches):
        if step % steps_per_epoch == 0:  # the top of each epoch
            if scheduled_to_remove < float("inf"):
                scheduled_to_remove = int(round(scheduled_to_remove))
            if scheduled_to_remove >= beyond:
                scheduled_to_remove = float("inf")
        prev_scheduled_to_remove = scheduled_to_remove
        if remove_step_counter == steps_per_removed_token or steps_per_removed_token == 0:
            scheduled_to_remove += 1
            remove_step_counter = 0
        remove_step_counter += 1
        resets = False
        if scheduled_to_remove > prev_scheduled_to_remove:
            if reset and not all_cot_removed_in_prev_batch:
                resets = True
        if scheduled_to_remove >= beyond:
            scheduled_to_remove = float("inf")
        all_cot_removed_in_batch = False
        removed = {i: 0 for i in batch(step)}
        if scheduled_to_remove > 0 or lam is not None:
            all_cot_removed_in_batch = True
            for i in batch(step):
                to_remove = scheduled_to_remove + offset(step, i)
                removal_to = to_remove  # first_sep + 1 + to_remove, counted from the CoT's start
                if removal_to < lengths[i]:  # removal_to_position < second_sep_positions
                    all_cot_removed_in_batch = False
                removed[i] = min(removal_to, lengths[i])
        all_cot_removed_in_prev_batch = all_cot_removed_in_batch
        out.append((removed, resets))
    return out


@pytest.fixture(scope="module")
def builder():
    """The CoT teacher's builder without delimiters, every step kept (iCoT's data)."""
    _, tok, b = build("tiny-llama")
    return SequenceBuilder(tok, PromptConfig(), b.special, drop_last_step=False)


def expected_row(builder, ex, removed: int):
    """The official sequence surgery on Q + C + P + A written out from the text: the tokens
    [len(Q), len(Q) + removed) deleted, clipped to C; labels on everything after Q."""
    tok = builder.tok
    enc = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    q = builder.question_ids(ex.question)
    full = q + enc(" " + " ".join(ex.steps)) + enc(" The answer is:") + enc(" " + ex.answer) + [tok.eos_token_id]
    cot_end = len(q) + len(enc(" " + " ".join(ex.steps)))
    cut = full[: len(q)] + full[min(len(q) + removed, cot_end):]
    return cut, [IGNORE] * len(q) + cut[len(q):]


def actual_row(batch, b):
    keep = batch.attention_mask[b].bool()
    return batch.input_ids[b][keep].tolist(), batch.labels[b][keep].tolist()


# (remove_per_epoch, remove_all_when_remove_beyond, remove_start_from, λ): the README's GPT-2 and GSM8k
# settings, a start offset, no smoothing, and one token every batch (steps_per_removed_token rounds to 0)
SETTINGS = [(8, None, 0, 4.0), (8, 39, 0, 4.0), (4, 20, 3, None), (30, None, 0, 1.0), (6, 12, 0, 0.5)]


@pytest.mark.parametrize("per_epoch, beyond, start, lam", SETTINGS)
def test_sequences_and_resets_follow_the_official_loop(builder, per_epoch, beyond, start, lam):
    items = [builder.encode(e) for e in EXAMPLES]
    lengths = [len(e.c) for e in items]
    batches = lambda step: [step % 3, (step + 1) % 3] if step % 4 else [0, 1, 2]  # noqa: E731
    sched = _schedule(lengths, steps_per_epoch=12, batch=batches, remove_per_epoch=per_epoch,
                      remove_all_when_remove_beyond=beyond, remove_start_from=start, removal_smoothing_lambda=lam)
    steps = sched.final_step + 30
    ref = official_loop(steps, 12, per_epoch, beyond, start, lam, True, lengths, batches, sched.offset)
    assert [s for s in range(steps) if sched.resets_optimizer(s)] == [s for s, (_, r) in enumerate(ref) if r and s]
    for step, (removed, _) in enumerate(ref):
        idx = batches(step)
        cut, student = sched.batch(builder, [items[i] for i in idx], step, idx)
        assert student is None
        batch = builder.teacher_batch(cut)
        for b, i in enumerate(idx):
            assert sched.removed(step, i, lengths[i]) == removed[i], (step, i)
            assert actual_row(batch, b) == expected_row(builder, EXAMPLES[i], removed[i]), (step, i)


def test_removal_never_cuts_into_the_question_the_answer_prefix_or_the_answer(builder):
    items = [builder.encode(e) for e in EXAMPLES]
    lengths = [len(e.c) for e in items]
    sched = _schedule(lengths, steps_per_token=1, removal_smoothing_lambda=0.05)  # offsets of up to 99 tokens
    assert max(sched.offset(s, 0) for s in range(200)) > max(lengths)
    for step in range(0, 120, 3):
        batch = builder.teacher_batch(sched.batch(builder, items, step, [0, 1, 2])[0])
        for b, e in enumerate(items):
            ids, labels = actual_row(batch, b)
            assert ids[: len(e.q)] == e.q and ids[len(ids) - len(e.p) - len(e.a):] == e.p + e.a
            assert labels[len(ids) - len(e.p) - len(e.a):] == e.p + e.a
            assert len(ids) >= len(e.q) + len(e.p) + len(e.a)


def _lists(batch) -> dict:
    return {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in vars(batch).items()}


def test_the_final_stage_is_no_cot(builder):
    items = [builder.encode(e) for e in EXAMPLES]
    sched = _schedule([len(e.c) for e in items], steps_per_token=2, remove_all_when_remove_beyond=5)
    assert sched.final_step == 10 and sched.scheduled(9) == 4 and sched.scheduled(10) == ALL
    final = builder.teacher_batch(sched.batch(builder, items, 10, [0, 1, 2])[0])
    direct = builder.teacher_batch(items, with_cot=False)
    assert _lists(final) == _lists(direct)
    assert sched.record(10) == {"icot_removed": "all"} and sched.record(9) == {"icot_removed": 4}
    # validation cuts the scheduled count, no offset (the official evaluate disables it)
    val = sched.validation_batch(builder, items, 3)[0]
    assert [len(e.c) for e in val] == [len(e.c) - 1 for e in items]


@pytest.mark.parametrize("lam", [4.0, 1.0, 0.3])
def test_offsets_are_drawn_from_the_official_distribution(lam):
    ours = lambda_distribution(lam)
    torch.testing.assert_close(torch.tensor(ours, dtype=torch.float64),
                               official_compute_lambda_distribution(lam).double(), rtol=0,
                               atol=1e-6)
    sched = _schedule([5], removal_smoothing_lambda=lam, seed=3)
    n = 20_000
    draws = [sched.offset(step, i) for step in range(200) for i in range(n // 200)]
    for k in range(6):  # each frequency within 5 binomial standard deviations of its probability
        p = ours[k]
        assert abs(draws.count(k) / n - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-9, (k, draws.count(k) / n, p)
    assert draws == [sched.offset(step, i) for step in range(200) for i in range(n // 200)]  # reproducible
    assert draws != [_schedule([5], removal_smoothing_lambda=lam, seed=4).offset(step, i)
                     for step in range(200) for i in range(n // 200)]  # and a function of the seed


def test_no_smoothing_draws_no_offset():
    assert lambda_distribution(None) == [1.0] + [0.0] * 99
    torch.testing.assert_close(torch.tensor(lambda_distribution(None), dtype=torch.float64),
                               official_compute_lambda_distribution(float("inf")).double())
    sched = _schedule([5], removal_smoothing_lambda=None)
    assert {sched.offset(s, i) for s in range(50) for i in range(50)} == {0}


def test_schedule_and_its_errors():
    sched = _schedule([32, 20], steps_per_epoch=625, remove_per_epoch=8)  # round(625 / 8) = 78 steps a token
    assert sched.steps_per_token == 78 and sched.final_step == 32 * 78
    assert [sched.scheduled(s) for s in (0, 77, 78, 156)] == [0, 0, 1, 2]
    assert _schedule([32], steps_per_token=6,
                     remove_all_when_remove_beyond=40).final_step == 192  # the CoT runs out first
    assert _schedule([32], steps_per_token=6, remove_all_when_remove_beyond=10).final_step == 60
    assert _schedule([3], steps_per_epoch=4,
                     remove_per_epoch=10).final_step == 2  # 0 steps a token: one a step, from step 0
    with pytest.raises(KavaError, match="removes the whole CoT at step 192, but training stops at step 192"):
        _schedule([32], steps_per_token=6, total_steps=192)
    with pytest.raises(KavaError, match="teacher_delimiters: false"):
        config_from_dict(MINIMAL, ["train.method=icot", "prompt.teacher_delimiters=true"])


def test_the_reset_is_skipped_after_a_batch_with_no_cot_left():
    # CoTs of 2 tokens, one more token scheduled every 3 steps, no offsets: resets before steps 3 and 6
    # (counts 1 and 2); at count 2 every CoT is gone, so the switch to 3 (step 9) and later ones reset nothing
    sched = _schedule([2, 2], steps_per_token=3, removal_smoothing_lambda=None)
    assert [s for s in range(20) if sched.resets_optimizer(s)] == [3, 6]
    assert not any(_schedule([2, 2], steps_per_token=3, reset_optimizer=False).resets_optimizer(s) for s in range(20))


# ----- through the trainer -------------------------------------------------------------------


def _rows(n=48):
    rows = []
    for i in range(n):
        a, b = 3 + i % 7, 2 + i % 5
        rows.append({"question": f"Sam has {a} pens and buys {b} more. How many pens?",
                     "steps": [f"<<{a}+{b}={a + b}>>"], "answer": str(a + b)})
    return rows


def _train_cfg(tmp_path, **extra):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    raw = {
        "output_dir": str(tmp_path / "run"),
        "model": {"name": "tiny-llama", "dtype": "float32", "tiny": {"hidden_size": 32, "num_layers": 2}},
        "lora": {"enabled": False},
        "data": {"dataset": str(data), "source": "local", "val_size": 4, "drop_last_step": False},
        "icot": {"steps_per_token": 1, "remove_all_when_remove_beyond": 4, "removal_smoothing_lambda": 4},
        "train": {"method": "icot", "lr": 3e-3, "max_steps": 8, "global_batch_size": 8, "micro_batch_size": 4,
                  "warmup_ratio": 0.0, "save_every": 2, "keep_last": 5, "eval_every": 4},
    }
    return config_from_dict(raw, [f"{k}={v}" for k, v in extra.items()])


def test_icot_trains_resets_resumes_and_answers_in_direct_mode(tmp_path, monkeypatch):
    import kava.api
    import kava.training.trainer as trainer_module

    resets = []
    real_reset = trainer_module.reset_optimizer_state

    def spy(optimizer):
        resets.append(len([r for r in read_jsonl(tmp_path / "run" / "train_log.jsonl") if "split" not in r]))
        real_reset(optimizer)

    monkeypatch.setattr(trainer_module, "reset_optimizer_state", spy)  # as the trainer calls it
    cfg = _train_cfg(tmp_path)
    final = train(cfg, show_progress=False)
    run = tmp_path / "run"
    records = read_jsonl(run / "train_log.jsonl")
    full = [r for r in records if "split" not in r]
    assert [r["icot_removed"] for r in full] == [0, 1, 2, 3, "all", "all", "all", "all"]
    assert resets == [1, 2, 3, 4]  # before steps 2..5 (1-based): each new count, the switch to "all" too
    assert set(full[0]) >= {"loss", "ce_teacher"}
    assert [r["step"] for r in records if r.get("split") == "validation"] == [4, 8]
    assert json.loads((run / "checkpoint-4" / "trainer_state.json").read_text())["icot_removed"] == 3
    # evaluated in direct mode: No-CoT's prompt, one forward pass per answer token
    pipe = kava.api.load(checkpoint=final, device="cpu")
    assert pipe.default_mode == "direct"
    answers = pipe.answer([r["question"] for r in _rows(6)], max_new_tokens=4)
    direct = pipe.answer([r["question"] for r in _rows(6)], mode="direct", max_new_tokens=4)
    assert [a.text for a in answers] == [a.text for a in direct]
    assert all(a.mode == "direct" and a.forward_passes == a.generated_tokens for a in answers)
    # interrupted after step 4: the resumed run resets before step 5 and draws the same offsets
    shutil.rmtree(run / "checkpoint-final")
    shutil.rmtree(run / "checkpoint-6")
    resets.clear()
    train(cfg, resume=True, show_progress=False)
    resumed = [r for r in read_jsonl(run / "train_log.jsonl") if "split" not in r]
    assert resets == [4]
    for a, b in zip(full, resumed, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6), a["step"]
    shutil.rmtree(run / "checkpoint-final")
    # another schedule on resume: refused by the resume rules (kava.training.resume) before the schedule's own check
    with pytest.raises(KavaError, match=r"--resume cannot change icot.steps_per_token \(1 -> 2\)"):
        train(_train_cfg(tmp_path, **{"icot.steps_per_token": 2, "train.max_steps": 12}), resume=True,
              show_progress=False)


# ----- kava bench quality --only icot ----------------------------------------------------------


def test_the_benchmarks_icot_run_removes_its_cot_over_the_first_half(tmp_path):
    import kava.bench.quality as quality
    from kava.data.train_sets import load_training_examples
    from kava.model.kava_model import build_kava_model
    from kava.training.trainer import word_vocabulary_for

    cfg = quality.run_config(quality.DEFAULT_CONFIG, quality.ALL_RUNS["icot"], 0, tmp_path,
                             ["data.synthetic.num_train=300"])
    steps = cfg.train.max_steps
    assert cfg.train.method == "icot" and not cfg.data.drop_last_step and not cfg.prompt.teacher_delimiters
    assert cfg.icot.steps_per_token == round(steps / 2 / quality.ICOT_COT_TOKENS)
    # every training CoT is ICOT_COT_TOKENS long, so the count reaching it removes the CoT as it runs out
    _, _, builder = build_kava_model(cfg, "cpu", word_vocabulary=word_vocabulary_for(cfg))
    lengths = {len(builder.encode(e).c) for e in load_training_examples(cfg.data)[0]}
    assert lengths == {quality.ICOT_COT_TOKENS}
    sched = IcotSchedule(cfg, 625, steps, [quality.ICOT_COT_TOKENS], lambda s: [0])
    assert sched.final_step == quality.ICOT_COT_TOKENS * cfg.icot.steps_per_token <= steps / 2
    assert "icot" not in [r.name for r in quality.BASELINES]  # by name only


def test_bench_quality_only_icot_runs(tmp_path, capsys):
    from kava.cli import main

    out = tmp_path / "bench"
    tiny = ["data.synthetic.num_train=32", "data.synthetic.num_val=0", "train.global_batch_size=8",
            "train.micro_batch_size=8", "train.save_every=null", "model.tiny.hidden_size=32", "model.tiny.num_layers=2",
            "model.tiny.intermediate_size=64", "latent.num_latents=3", "latent.num_iterations=1"]
    assert main(["bench", "quality", "--only", "icot", "--output-dir", str(out), "--steps", "64", "--base-steps", "2",
                 "--test-size", "6", "--eval-batch-size", "6", "--no-progress", "--jobs", "1", *tiny]) == 0
    assert "| iCoT | direct |" in capsys.readouterr().out
    result = json.loads((out / "runs" / "icot-seed0" / "result.json").read_text())
    assert result["mode"] == "direct" and result["steps"] == 64
    assert result["forward_passes_mean"] == result["generated_tokens_mean"]  # No-CoT's passes: one per answer token
    log = read_jsonl(out / "runs" / "icot-seed0" / "train_log.jsonl")
    assert [r["icot_removed"] for r in log][31:34] == [31, "all", "all"]  # a token a step, all gone at step 33
