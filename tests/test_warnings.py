"""No warning that is not the user's concern on the commands that load a model."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

import kava.api
from conftest import make_config
from kava.model.kava_model import build_kava_model

pytest_plugins = ["fixtures_eval"]
RECIPE_MODEL = Path(__file__).parent / "data" / "recipe" / "tiny-llama"  # a base with its config.json


def _deprecations(fn) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in caught if "is_gradient_checkpointing" in str(w.message)]


def test_loading_a_lora_checkpoint_raises_no_gradient_checkpointing_deprecation(tiny_checkpoint):
    """transformers >= 5.24 deprecates `is_gradient_checkpointing`, which peft reads when it
    wraps a model: kava silences that one warning where it calls peft (kava evaluate, infer,
    export and train printed it on every run)."""
    assert _deprecations(lambda: kava.api.load(checkpoint=tiny_checkpoint, device="cpu")) == []
    assert _deprecations(lambda: build_kava_model(make_config())) == []


def test_the_filter_is_not_global(tiny_checkpoint):
    """Only peft's call is silenced: the process's warning filters are as they were."""
    before = list(warnings.filters)
    kava.api.load(checkpoint=tiny_checkpoint, device="cpu")
    assert warnings.filters == before


@pytest.mark.parametrize("base", ["tiny-llama", str(RECIPE_MODEL)], ids=["built-in-memory", "from-a-folder"])
def test_saving_a_lora_checkpoint_raises_no_peft_note(tmp_path, base):
    """peft notes on every adapter save, and on every read of its state dict, that it cannot
    compare the base's vocabulary (a model built in memory) or that the embeddings grew (a base
    from a folder with its config.json); printed in the middle of the training bar (on peft 0.18
    it split the bar in `kava sweep`'s train.out). kava.training.checkpoint silences those two."""
    from kava.training.checkpoint import save_checkpoint

    cfg = make_config(base)
    model, tok, _ = build_kava_model(cfg)
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        save_checkpoint(tmp_path / "ckpt", model, tok, cfg, state={"step": 1})
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == []
    assert (tmp_path / "ckpt" / "adapter" / "adapter_model.safetensors").is_file()
    assert warnings.filters == before
    # ... nor when the checkpoint is read back (its adapter is checked against peft's state dict)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kava.api.load(checkpoint=tmp_path / "ckpt", device="cpu")
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == []
