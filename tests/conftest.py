"""Shared fixtures: tiny perturbed KaVa models (Llama and Qwen2), their builders, examples.

LoRA's B matrices start at zero and the special-token rows start at the mean embedding,
so a freshly built student would equal the base model in many places. Every model built
here has random noise added to *all* its trainable parameters (LoRA A/B, the trainable
special-token rows, the projection), so the tests exercise the real code paths.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from kava.config import config_from_dict
from kava.data.train_sets import ReasoningExample
from kava.model.capture import enable_capture
from kava.model.kava_model import build_kava_model

warnings.filterwarnings("ignore", category=FutureWarning)

# Registered here, before the test modules import their constants (fixtures_sweep.sweep_argv).
pytest_plugins = ["fixtures_sweep"]

# The models are tiny: one intra-op thread is much faster than several (on a busy 2-core
# machine, multi-threaded matmuls of this size spend their time spinning).
torch.set_num_threads(1)

NUM_LATENTS = 6
NUM_ITERATIONS = 3
NOISE = 0.05

# Three examples of clearly different lengths (so a batch is left/right padded), one with
# a negative answer and a negative intermediate result, answers of different lengths.
EXAMPLES = (
    ReasoningExample(
        "Tom has 3 apples and buys 4 more. He then doubles them.",
        ("<<3+4=7>>", "<<7*2=14>>", "<<14-1=13>>"),
        "13",
    ),
    ReasoningExample("A duck lays 5 eggs; how many?", ("<<5-9=-4>>", "<<-4*1=-4>>"), "-4"),
    ReasoningExample(
        "Ann has 12 pens. She gives away 5, then buys 20 more pens and 1000 pencils. How many items now?",
        ("<<12-5=7>>", "<<7+20=27>>", "<<27*1=27>>", "<<27+1000=1027>>"),
        "1027",
    ),
)


def pens_run_config(folder, rows: int, **train) -> dict:
    """A raw config of a 2-layer tiny Llama (LoRA r 4, M = 2, T = 1) training on `rows` one-step
    "Sam has N pens" problems written to folder/train.jsonl; `train` sets the train section."""
    data = [{"question": f"Sam has {3 + i % 5} pens and buys 2 more. How many?",
             "steps": [f"<<{3 + i % 5}+2={5 + i % 5}>>"],
             "answer": str(5 + i % 5)} for i in range(rows)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    return {
        "model": {"name": "tiny-llama", "dtype": "float32", "tiny": {"hidden_size": 32, "num_layers": 2}},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "latent": {"num_latents": 2, "num_iterations": 1},
        "data": {"dataset": str(folder / "train.jsonl"), "source": "local", "val_size": 0},
        "train": {"warmup_ratio": 0.0, **train},
        "output_dir": str(folder / "out"),
    }


def make_config(name: str = "tiny-llama", **latent_overrides):
    latent = {"num_latents": NUM_LATENTS, "num_iterations": NUM_ITERATIONS}
    keys = ("num_latents", "num_iterations", "projection", "mode")
    latent.update({k: v for k, v in latent_overrides.items() if k in keys})
    model = {"name": name, "dtype": "float32", "attn_implementation": latent_overrides.get("attn", "sdpa")}
    return config_from_dict(
        {
            "model": model,
            "data": {"dataset": "x.jsonl", "source": "local"},
            "latent": latent,
            "lora": {"r": 8},
        }
    )


@torch.no_grad()
def perturb(model, seed: int = 0, scale: float = NOISE) -> None:
    """Add seeded Gaussian noise to every trainable parameter (deterministic in `seed`)."""
    g = torch.Generator().manual_seed(1000 + seed)
    for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if p.requires_grad:
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def build(name: str = "tiny-llama", seed: int = 0, noise: bool = True, capture: bool = False, **overrides):
    """(KavaModel in eval mode, tokenizer, SequenceBuilder), fp32, perturbed, deterministic.

    capture=True routes attention through kava's importance-capturing wrapper, which
    `teacher_forward` needs for the rkv/attention methods (as the trainer does).
    """
    torch.manual_seed(seed)  # LoRA's A matrices are drawn from the global RNG
    model, tok, builder = build_kava_model(make_config(name, **overrides))
    if noise:
        perturb(model, seed)
    if capture:
        enable_capture(model.backbone)
    model.eval()
    return model, tok, builder


@pytest.fixture
def build_model():
    """Factory: build_model(name='tiny-llama', seed=0, noise=True, capture=False, num_iterations=.., projection=..,
    mode=.., attn=..)."""
    return build


@pytest.fixture(scope="module")
def llama():
    return build("tiny-llama", capture=True)


@pytest.fixture(scope="module")
def qwen():
    return build("tiny-qwen2", capture=True)


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-qwen2"])
def any_model(request):
    """Both architectures (module-scoped; tests must not modify the model)."""
    return build(request.param, capture=True)


@pytest.fixture
def examples():
    return list(EXAMPLES)
