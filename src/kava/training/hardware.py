"""What `kava train` settles about the hardware before its first step.

- **Distributed mode.** One device, or one process per GPU with DDP (`accelerate launch
  --multi_gpu`). FSDP, DeepSpeed and Megatron-LM are refused in one line: kava saves on
  rank 0 alone (an FSDP state dict is a collective: the run would hang), clips the
  trainable subset's gradient norm as one tensor list (per-shard norms under FSDP), resumes
  by loading full tensors (not shards), and wraps no layer for sharding. Llama-3.2-3B, the
  largest shipped model, fits one 80 GB GPU with LoRA (docs/performance.md).
- **Mixed precision** (`train.mixed_precision`): accelerate's autocast; a second `train()`
  in the same process may ask for another one (accelerate keeps one state per process).
- **TF32** (`train.tf32`, CUDA only): fp32 matrix products on tensor cores — peft keeps the
  LoRA adapters in fp32, so without autocast they are fp32 GEMMs.
- **Trainable weights in full precision.** Full fine-tuning (`lora.enabled: false`) with
  bf16/fp16 weights is refused: AdamW's updates are far below the weights' rounding step
  (bf16 keeps 8 significant bits), so most of them round away. Keep `model.dtype: float32`
  and compute in bf16 with `train.mixed_precision: bf16`. (Under LoRA the frozen base may
  be bf16: peft keeps the adapters in fp32.)
"""

from __future__ import annotations

import torch

from kava.config import KavaConfig
from kava.errors import KavaError

REFUSED = {"FSDP": "FSDP", "DEEPSPEED": "DeepSpeed", "MEGATRON_LM": "Megatron-LM"}


def make_accelerator(cfg: KavaConfig, **kwargs):
    """accelerate's Accelerator for this run (mixed precision from the config, `kwargs` passed on),
    after the checks above; TF32 set as the config asks."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") not in (None, cfg.train.mixed_precision):
        AcceleratorState._reset_state()  # (keeps the process group: only the precision changes)
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision, **kwargs)
    check_distributed(accelerator.distributed_type)
    set_tf32(cfg.train.tf32, accelerator.device)
    return accelerator


def check_distributed(distributed_type) -> None:
    """KavaError for the distributed modes kava cannot train under (see the module docstring)."""
    name = REFUSED.get(getattr(distributed_type, "name", str(distributed_type)))
    if name is not None:
        raise KavaError(
            f"kava train does not support {name}: it trains on one device or with DDP. Run `accelerate config` "
            "again and choose multi-GPU (DDP), or launch with `accelerate launch --multi_gpu`; "
            "Llama-3.2-3B with LoRA fits one 80 GB GPU (docs/experiments.md)")


def set_tf32(enabled: bool, device: torch.device) -> None:
    """fp32 matrix products in TF32 on CUDA (`torch.set_float32_matmul_precision("high")`)."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high" if enabled else "highest")


def check_trainable_precision(params: list[torch.nn.Parameter], cfg: KavaConfig) -> None:
    """KavaError when full fine-tuning would update half-precision weights (see the module docstring)."""
    if cfg.lora.enabled:
        return
    half = sorted({str(p.dtype).removeprefix("torch.") for p in params if p.dtype in (torch.bfloat16, torch.float16)})
    if half:
        raise KavaError(
            f"full fine-tuning (lora.enabled: false) of {'/'.join(half)} weights: AdamW's small updates round away "
            "in half precision. Set model.dtype: float32 and train.mixed_precision: bf16 (fp32 weights, bf16 "
            "compute), or train LoRA")
