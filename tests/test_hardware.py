"""kava.training.hardware: the distributed modes kava refuses, TF32, full fine-tuning in full
precision, and a second run in one process with another mixed precision."""

from __future__ import annotations

import pytest
import torch
import yaml

from conftest import pens_run_config
from kava.cli import main
from kava.io import read_jsonl
from kava.training.hardware import set_tf32


@pytest.fixture
def config(tmp_path):
    raw = pens_run_config(tmp_path, 8, lr=3e-3, max_steps=2, global_batch_size=4, micro_batch_size=4)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _error_lines(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]


@pytest.mark.parametrize("mode, name", [("FSDP", "FSDP"), ("DEEPSPEED", "DeepSpeed")])
def test_fsdp_and_deepspeed_are_refused_in_one_line(config, monkeypatch, capsys, mode, name):
    """Issue 20: under FSDP kava's rank-0 save hangs (an FSDP state dict is a collective), its clip
    sees per-shard norms and its resume loads full tensors into shards: refused before any step."""
    import accelerate
    from accelerate.utils import DistributedType

    monkeypatch.setattr(accelerate.Accelerator, "distributed_type", property(lambda self: DistributedType[mode]))
    assert main(["train", "--config", str(config), "--no-progress"]) == 2
    assert _error_lines(capsys) == [
        f"error: kava train does not support {name}: it trains on one device or with DDP. Run `accelerate config` "
        "again and choose multi-GPU (DDP), or launch with `accelerate launch --multi_gpu`; Llama-3.2-3B with LoRA "
        "fits one 80 GB GPU (docs/experiments.md)"]
    assert not (config.parent / "out" / "train_log.jsonl").exists()


def test_full_fine_tuning_of_bf16_weights_is_refused(config, capsys):
    """Issue 20: Coconut's config fine-tuned every weight in bf16, where AdamW's updates round away."""
    assert main(["train", "--config", str(config), "--no-progress", "lora.enabled=false", "model.dtype=bfloat16"]) == 2
    err = _error_lines(capsys)
    assert len(err) == 1 and err[0].startswith("error: full fine-tuning (lora.enabled: false) of bfloat16 weights")
    assert "model.dtype: float32 and train.mixed_precision: bf16" in err[0]


def test_fp32_weights_with_bf16_autocast_train_and_a_second_run_changes_precision(config):
    """fp32 master weights, bf16 compute (what the Coconut config now does), after a run without
    mixed precision in the same process (accelerate keeps one state per process)."""
    out = config.parent / "out"
    assert main(["train", "--config", str(config), "--no-progress", f"output_dir={out}-fp32"]) == 0
    assert main(["train", "--config", str(config), "--no-progress", "lora.enabled=false",
                 "train.mixed_precision=bf16"]) == 0
    log = read_jsonl(out / "train_log.jsonl")
    assert len(log) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)


def test_tf32_is_set_on_cuda_only():
    before = torch.get_float32_matmul_precision()
    try:
        set_tf32(True, torch.device("cpu"))
        assert torch.get_float32_matmul_precision() == before
        set_tf32(True, torch.device("cuda"))
        assert torch.get_float32_matmul_precision() == "high"
        set_tf32(False, torch.device("cuda"))
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.set_float32_matmul_precision(before)
