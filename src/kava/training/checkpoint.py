"""Checkpoints: written atomically, loadable again (SPEC.md §8).

    checkpoint-<step>/ or checkpoint-final/
      adapter/                 LoRA + new-token embedding rows (peft, safetensors)   [LoRA on]
      model/                   the full backbone (safetensors)                        [LoRA off]
      projection.safetensors   the latent projection
      tokenizer/               with <bot>, <eot>, <latent>
      kava_config.yaml         the resolved config
      trainer_state.json       step, epoch, total steps
      training_state.pt        optimizer, scheduler and RNG states (for --resume)

A checkpoint is assembled in a temporary folder and renamed into place, so an
interrupted save leaves the previous checkpoint intact and never a half-written one.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from kava.config import KavaConfig, config_to_dict
from kava.errors import KavaError
from kava.io import atomic_replace_dir, atomic_write_yaml

_STEP_DIR = re.compile(r"^checkpoint-(\d+)$")


def _unwrap(model):
    return getattr(model, "module", model)


def save_checkpoint(path: str | Path, model, tokenizer, cfg: KavaConfig, state: dict | None = None,
                    optimizer=None, scheduler=None) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model = _unwrap(model)
    if cfg.lora.enabled:
        model.backbone.save_pretrained(tmp / "adapter")
    else:
        model.backbone.save_pretrained(tmp / "model")
    if model.projection is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.projection.state_dict().items()},
                  str(tmp / "projection.safetensors"))
    tokenizer.save_pretrained(tmp / "tokenizer")
    atomic_write_yaml(tmp / "kava_config.yaml", config_to_dict(cfg))
    (tmp / "trainer_state.json").write_text(json.dumps(state or {}, indent=2))
    if optimizer is not None:
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": {
                    "python": random.getstate(),
                    "numpy": np.random.get_state(),
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                },
            },
            tmp / "training_state.pt",
        )
    atomic_replace_dir(tmp, path)
    return path


def step_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for p in output_dir.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / "trainer_state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def prune_checkpoints(output_dir: str | Path, keep_last: int) -> None:
    for _, p in step_checkpoints(output_dir)[:-keep_last]:
        shutil.rmtree(p, ignore_errors=True)


def read_checkpoint_config(path: str | Path) -> KavaConfig:
    from kava.config import config_from_dict

    path = Path(path)
    cfg_file = path / "kava_config.yaml"
    if not path.is_dir():
        raise KavaError(f"checkpoint not found: {path}")
    if not cfg_file.is_file():
        raise KavaError(f"{path} is not a kava checkpoint (no kava_config.yaml); point to a checkpoint-* folder")
    import yaml

    return config_from_dict(yaml.safe_load(cfg_file.read_text()), source=str(cfg_file))


def load_trainable_state(model, path: str | Path) -> None:
    """Load the adapter/full weights and projection of a checkpoint into an already built model."""
    from peft import set_peft_model_state_dict

    path = Path(path)
    model = _unwrap(model)
    if (path / "adapter").is_dir():
        weights = load_file(str(path / "adapter" / "adapter_model.safetensors"))
        result = set_peft_model_state_dict(model.backbone, weights)
        if getattr(result, "unexpected_keys", None):
            raise KavaError(f"checkpoint {path} does not match the model: unexpected keys {result.unexpected_keys[:3]}")
    else:
        from safetensors.torch import load_model

        files = sorted((path / "model").glob("*.safetensors"))
        state = {}
        for f in files:
            state.update(load_file(str(f)))
        model.backbone.load_state_dict(state, strict=False)
    if model.projection is not None:
        model.projection.load_state_dict(load_file(str(path / "projection.safetensors")))


def load_training_state(path: str | Path, optimizer, scheduler) -> dict:
    path = Path(path)
    blob = torch.load(path / "training_state.pt", weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    if scheduler is not None and blob["scheduler"] is not None:
        scheduler.load_state_dict(blob["scheduler"])
    rng = blob["rng"]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "trainer_state.json").read_text())


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu", dtype: str | None = None):
    """(KavaModel in eval mode, tokenizer, SequenceBuilder, config) from a checkpoint folder."""
    from transformers import AutoTokenizer

    from kava.data.sequences import SequenceBuilder
    from kava.model.kava_model import KavaModel, add_special_tokens
    from kava.model.load import load_backbone

    path = Path(path)
    cfg = read_checkpoint_config(path)
    if dtype is not None:
        cfg.model.dtype = dtype
    cfg.model.gradient_checkpointing = False
    backbone, _ = load_backbone(cfg.model, device)
    tok = AutoTokenizer.from_pretrained(path / "tokenizer")
    tok.padding_side = "left"
    if (path / "model").is_dir():
        from transformers import AutoModelForCausalLM

        from kava.model.load import resolve_dtype

        backbone = AutoModelForCausalLM.from_pretrained(path / "model", dtype=resolve_dtype(cfg.model.dtype, device))
        special = add_special_tokens(backbone, tok)
    else:
        from peft import PeftModel

        special = add_special_tokens(backbone, tok)
        backbone = PeftModel.from_pretrained(backbone, path / "adapter", is_trainable=False)
    model = KavaModel.from_config(backbone, special, cfg)
    if model.projection is not None:
        model.projection.load_state_dict(load_file(str(path / "projection.safetensors")))
    model.to(device).eval()
    builder = SequenceBuilder(tok, cfg.prompt, special, drop_last_step=cfg.data.drop_last_step,
                              codi_position=cfg.kava.codi_position)
    return model, tok, builder, cfg
