"""kava.model.cache: the cache keyword a backbone takes and the cache read off its output,
for transformers before 5.24 (`past_key_values`) and from 5.24 on (`cache`), and no
deprecation warning from kava's own backbone calls."""

from __future__ import annotations

import dataclasses
import logging
import warnings

import pytest
import torch
from torch import nn

from conftest import EXAMPLES, build, make_config
from kava.data.batches import make_batch
from kava.inference.generate import generate
from kava.model.cache import LMOutput, backbone_kwargs, cache_argument, replays_layers
from kava.model.capture import enable_capture
from kava.model.kava_model import build_kava_model
from kava.training.objective import KavaObjective


class OldForward(nn.Module):  # transformers <= 5.23
    def forward(self, input_ids=None, past_key_values=None, use_cache=None):
        return input_ids, past_key_values


class NewForward(nn.Module):  # transformers >= 5.24
    def forward(self, input_ids=None, cache=None, use_cache=None, **kwargs):
        return input_ids, cache


class PeftLike(nn.Module):
    """Like a PeftModel: forward(**kwargs) passes through to the base model's forward."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def get_base_model(self):
        return self.base

    def forward(self, **kwargs):
        return self.base(**kwargs)


@pytest.mark.parametrize("cls,name", [(OldForward, "past_key_values"), (NewForward, "cache")])
def test_the_cache_goes_under_the_name_the_forward_takes(cls, name):
    marker = object()
    for backbone in (cls(), PeftLike(cls())):
        assert cache_argument(backbone) == name
        for given in ("past_key_values", "cache"):
            kw = backbone_kwargs(backbone, {"input_ids": 1, given: marker, "use_cache": True})
            assert kw == {"input_ids": 1, name: marker, "use_cache": True}
            assert backbone(**kw) == (1, marker)
        assert backbone_kwargs(backbone, {"input_ids": 1}) == {"input_ids": 1}
    with pytest.raises(TypeError, match="once"):
        backbone_kwargs(cls(), {"past_key_values": None, "cache": None})


def test_lm_output_reads_either_field_name():
    @dataclasses.dataclass
    class Old:
        logits: object
        past_key_values: object = None
        hidden_states: object = None

    @dataclasses.dataclass
    class New:
        logits: object
        cache: object = None
        attentions: object = None

    assert LMOutput.of(Old("l", "c", "h")) == LMOutput(logits="l", hidden_states="h", past_key_values="c")
    assert LMOutput.of(New("l", "c", "a")) == LMOutput(logits="l", attentions="a", past_key_values="c")


def test_installed_transformers_gets_its_own_name():
    """The tiny Llama's forward takes `cache` exactly when the installed transformers has it."""
    import inspect

    import transformers

    model, _, _ = build("tiny-llama", noise=False)
    takes_cache = "cache" in inspect.signature(transformers.LlamaForCausalLM.forward).parameters
    assert cache_argument(model.backbone) == ("cache" if takes_cache else "past_key_values")
    assert type(model.backbone).__name__.startswith("Peft")  # through peft's wrapper


def test_no_deprecation_warning_from_kava_calls(monkeypatch):
    """Training passes (teacher and student, with gradient checkpointing's replay-safe caches)
    and generation in every mode: neither transformers' FutureWarning for the keyword nor its
    logged warning for reading `output.past_key_values` appears."""
    logging.Logger.warning_once.cache_clear()  # transformers logs each deprecation once per process
    logged: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    tlog = logging.getLogger("transformers")
    tlog.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cfg = make_config("tiny-llama")
            cfg.model.gradient_checkpointing = True
            model, _, builder = build_kava_model(cfg)
            enable_capture(model.backbone)
            model.train()
            batch = make_batch(builder, [builder.encode(e) for e in EXAMPLES], "kava", "cpu")
            assert replays_layers(model)
            KavaObjective(model, cfg)(batch)["loss"].backward()
            model.eval()
            with torch.no_grad():
                for mode in ("latent", "cot", "direct"):
                    generate(model, builder, ["What is 2+3?", "Tom has 3 apples."], mode=mode, max_new_tokens=3)
    finally:
        tlog.removeHandler(handler)
    texts = [str(w.message) for w in caught] + logged
    words = ("past_key_values", "cache_params", "gradient_checkpointing_enable")
    assert not [t for t in texts if any(w in t for w in words)]
