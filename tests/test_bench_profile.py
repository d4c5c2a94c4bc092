"""`kava bench speed --profile` (kava.bench.profile): FLOPs by part checked against a count
by hand, the operator table's kinds adding up, and the command's output. No timing is
asserted."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from kava.bench.common import Timer, bench_config, build_model
from kava.bench.profile import count_step_flops, format_profile, profile_step
from kava.cli import main


def test_timer_with_a_counting_clock_keeps_each_sections_own_count():
    count = [0]

    def add(n):
        count[0] += n

    timer = Timer(None, clock=lambda: count[0])
    with timer.section("outer"):
        add(5)
        with timer.section("inner"):
            add(7)
            with timer.section("outer"):  # a part inside itself: its own count once
                add(1)
        add(2)
    assert timer.exclusive == {"outer": 5 + 2 + 1, "inner": 7}


def test_flops_by_part_are_the_matrix_products_made_inside_each_part():
    a, b, c = torch.randn(6, 4), torch.randn(4, 3), torch.randn(3, 5)

    def step(sections):
        with sections.section("forward_backward"):  # (train_step's outer section: not a part)
            with sections.section("question"):
                a @ b  # 2·6·4·3 = 144
            with sections.section("backward"):
                (a @ b) @ c  # 144 + 2·6·3·5 = 324
        torch.relu(a)  # no FLOPs counted
        b @ c  # 2·4·3·5 = 120, in no part

    f = count_step_flops(step)
    assert f["total"] == 144 + 324 + 120
    assert f["parts"] == {"question": 144, "backward": 324, "other": 120}


def _tiny(overrides=()):
    from kava.bench.speed import training_items

    cfg = bench_config("tiny-llama", None, "float32", overrides=["lora.enabled=false", "latent.num_latents=4",
                                                               "latent.num_iterations=2", *overrides], batch_size=3)
    _, _, builder = build_model(cfg, torch.device("cpu"))
    return cfg, training_items(cfg, builder, 3, seq_len=20)


def test_profile_of_a_tiny_step_counts_the_question_pass_as_by_hand():
    cfg, items = _tiny()
    p = profile_step(cfg, torch.device("cpu"), items, steps=1, warmup=1)
    f = p["flops"]
    assert f["parts"]["other"] == 0  # every matrix product of the step falls in a named part
    assert all(f["parts"][k] > 0 for k in ("question", "teacher", "student_latent_passes", "backward"))
    # The question pass by hand: every linear layer of the decoder once per question token,
    # and the LM head at the last column only (it predicts the teacher's first label).
    model, _, builder = build_model(cfg, torch.device("cpu"))
    layers = model.backbone.model.layers
    linear = sum(m.weight.numel() for m in layers.modules() if isinstance(m, nn.Linear))
    rows = len(items)
    q_len = max(len(e.q) for e in items)  # the left-padded question (no <bot>)
    text = model.backbone.config
    expected = 2 * rows * q_len * linear + 2 * rows * text.hidden_size * text.vocab_size
    assert f["parts"]["question"] == expected
    ops = p["operators"]
    assert sum(ops["by_kind"].values()) == pytest.approx(ops["seconds_per_step"])
    assert ops["by_kind"]["matrix products"] > 0 and ops["top"]
    assert p["reference_matmul"]["flops_per_second"] > 0 and p["matmul_floor_seconds"] > 0
    text_out = format_profile(p)
    assert "| question |" in text_out and "| matrix products |" in text_out


def test_bench_speed_profile_flag_prints_and_writes_the_profile(tmp_path, capsys):
    out = tmp_path / "speed.json"  # (batch 3: not a divisor of the default config's global batch of 8)
    assert main(["bench", "speed", "--model", "tiny-llama", "--seq-len", "20", "--batch-size", "3", "--reps", "1",
                 "--warmup", "0", "--threads", "1", "--no-infer", "--no-memory", "--profile", "--output", str(out),
                 "latent.num_latents=4", "latent.num_iterations=2"]) == 0
    printed = capsys.readouterr().out
    assert "profile of one KaVa step" in printed and "| operator kind |" in printed
    r = json.loads(out.read_text())
    assert r["profile"]["flops"]["total"] > 0 and "training" in r and r["batch_size"] == 3
