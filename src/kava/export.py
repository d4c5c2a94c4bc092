"""`kava export`: a checkpoint as a plain transformers folder, LoRA merged.

    kava export outputs/tiny/checkpoint-final exported/ [--dtype bf16|fp16|fp32]

    exported/
      config.json, model.safetensors, generation_config.json   the backbone with the LoRA adapter
                                  merged into its weights (peft's merge_and_unload) and the trained
                                  rows of <bot>, <eot>, <latent> in its embedding (and LM head)
      tokenizer.json, tokenizer_config.json, ...               the tokenizer, with the three tokens
      projection.safetensors      the latent projection (fp32; `load_projection`)   [latent.projection]
      kava_config.yaml            the training config, as in the checkpoint
      trainer_state.json          the checkpoint's, with "export": {source, dtype}

`AutoModelForCausalLM.from_pretrained(folder)` and `AutoTokenizer.from_pretrained(folder)`
read it with transformers alone (CoT and direct mode need nothing else). Latent mode needs
the projection too: `kava.api.load(checkpoint=folder)` and `kava evaluate --checkpoint folder`
read the whole folder back (`kava.training.checkpoint.load_checkpoint`), and
`load_projection(folder)` gives the projection on its own. Exported in fp32, the folder
answers exactly as the checkpoint does (tests/test_export.py).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from kava.errors import KavaError
from kava.io import atomic_replace_dir
from kava.model.kava_model import LatentProjection
from kava.training.checkpoint import EXPORT_KEY, PROJECTION_FILE, load_checkpoint, read_checkpoint_config

#: --dtype's names and the torch dtypes they export in
EXPORT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, dtype: str = "fp32") -> Path:
    """Write `checkpoint` (a folder from `kava train`) to `out_dir` as a transformers folder,
    LoRA merged, weights in `dtype` (fp32, bf16 or fp16). The folder is assembled under a
    temporary name and renamed into place; an existing `out_dir` that is not empty is refused."""
    if dtype not in EXPORT_DTYPES:
        raise KavaError(f"unknown export dtype {dtype!r}; use one of: {', '.join(EXPORT_DTYPES)}")
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    cfg = read_checkpoint_config(checkpoint)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise KavaError(f"{out_dir} already exists and is not empty; export into a new folder")
    if out_dir.resolve() == checkpoint.resolve() or checkpoint.resolve() in out_dir.resolve().parents:
        raise KavaError(f"export into a folder outside the checkpoint {checkpoint}")
    # Merged in fp32 (a bf16 merge rounds W + BA once more), cast at the end.
    print(f"kava: loading {checkpoint} ({cfg.model.name}) in float32", file=sys.stderr, flush=True)
    model, tok, _, _ = load_checkpoint(checkpoint, device="cpu", dtype="float32")
    backbone = model.backbone
    if cfg.lora.enabled:
        print("kava: merging the LoRA adapter and the new token rows into the weights", file=sys.stderr, flush=True)
        backbone = backbone.merge_and_unload(safe_merge=True)
    backbone.to(EXPORT_DTYPES[dtype])
    meta = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    meta[EXPORT_KEY] = {"source": str(checkpoint), "dtype": _DTYPE_NAMES[dtype]}
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"kava: writing {out_dir} ({dtype})", file=sys.stderr, flush=True)
    try:
        tmp.mkdir(parents=True)
        backbone.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if model.projection is not None:
            save_file({k: v.detach().float().contiguous() for k, v in model.projection.state_dict().items()},
                      str(tmp / PROJECTION_FILE))
        shutil.copyfile(checkpoint / "kava_config.yaml", tmp / "kava_config.yaml")
        (tmp / "trainer_state.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        atomic_replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_projection(folder: str | Path) -> LatentProjection:
    """The latent projection of an exported folder (or a checkpoint): Linear(d, d) → GELU →
    Linear(d, d) → LayerNorm(d), in fp32; kava feeds `projection(h)` of the last hidden state
    back as the next latent's input embedding (docs/algorithm.md §2)."""
    file = Path(folder) / PROJECTION_FILE
    if not file.is_file():
        raise KavaError(f"{folder} has no {PROJECTION_FILE} (a model trained with latent.projection: false has none)")
    weights = load_file(str(file))
    projection = LatentProjection(weights["net.0.weight"].shape[1])
    projection.load_state_dict(weights)
    return projection.eval()
