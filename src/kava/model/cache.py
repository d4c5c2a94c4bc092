"""All access to transformers' KV caches lives here (docs/algorithm.md §9: keep cache access in one place).

transformers 5.x stores a `DynamicCache` as a list of layers, each holding `keys` and
`values` of shape [B, H_kv, S, D] (after RoPE). The rest of kava only sees plain
per-layer (keys, values) tuples and these few functions, so a change in the cache
classes touches this file alone.

It also holds the one piece of knowledge about how a backbone's forward names its cache:
transformers up to 5.23 takes and returns `past_key_values`; 5.24 renamed both to `cache`
(`deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")`: the old name warns now
and stops working in 5.40). kava's own calls always go through `KavaModel.lm`, which speaks
`past_key_values` to its callers and, through `backbone_kwargs` and `LMOutput.of`, whatever
the installed transformers speaks to the backbone.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

KV = list[tuple[torch.Tensor, torch.Tensor]]


@functools.lru_cache(maxsize=None)
def _forward_takes_cache(cls: type) -> bool:
    try:
        return "cache" in inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - a forward without a signature
        return False


def cache_argument(backbone) -> str:
    """The keyword under which `backbone.forward` takes a cache: `cache` or `past_key_values`.
    A peft wrapper passes its keywords through, so the base model's forward decides."""
    base = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    return "cache" if _forward_takes_cache(type(base)) else "past_key_values"


def backbone_kwargs(backbone, kwargs: dict) -> dict:
    """`kwargs` of a `KavaModel.lm` call with its cache (`past_key_values=` or `cache=`)
    under the name `backbone` takes."""
    if "past_key_values" in kwargs and "cache" in kwargs:
        raise TypeError("pass the cache once: past_key_values= or cache=, not both")
    name = "past_key_values" if "past_key_values" in kwargs else "cache" if "cache" in kwargs else None
    want = cache_argument(backbone)
    if name is None or name == want:
        return kwargs
    out = dict(kwargs)
    out[want] = out.pop(name)
    return out


@dataclasses.dataclass
class LMOutput:
    """What kava reads off one backbone call, whatever transformers names the cache."""

    logits: torch.Tensor | None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    past_key_values: DynamicCache | None = None

    @classmethod
    def of(cls, out) -> "LMOutput":
        """From a transformers `ModelOutput` (its `cache` field, else `past_key_values`)."""
        names = {f.name for f in dataclasses.fields(out)}
        cache = out.cache if "cache" in names else getattr(out, "past_key_values", None)
        return cls(logits=out.logits, hidden_states=getattr(out, "hidden_states", None),
                   attentions=getattr(out, "attentions", None), past_key_values=cache)


def cache_from_kv(kv: KV, config) -> DynamicCache:
    """A fresh cache holding the given per-layer (keys, values); the tensors are shared, not copied."""
    cache = DynamicCache(config=config)
    if len(cache.layers) != len(kv) or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return DynamicCache(ddp_cache_data=list(kv), config=config)  # sliding-window layers: let them set up
    for layer, (k, v) in zip(cache.layers, kv):
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
    return cache


class _PassLayer(DynamicLayer):
    """A cache layer for one forward pass over a fixed prefix: `update` returns and keeps
    prefix + the new block, and a second `update` (the backward replay of a gradient-
    checkpointed layer) replaces the new block instead of appending it a second time."""

    def __init__(self, keys: torch.Tensor | None = None, values: torch.Tensor | None = None):
        super().__init__()
        self._prefix = None
        if keys is not None:
            self.lazy_initialization(keys, values)
            self.keys, self.values = keys, values
            self._prefix = (keys, values)

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self._prefix is None:
            self._prefix = (self.keys, self.values)
        self.keys = torch.cat([self._prefix[0], key_states], dim=-2)
        self.values = torch.cat([self._prefix[1], value_states], dim=-2)
        return self.keys, self.values


def replays_layers(model) -> bool:
    """Whether `model`'s forward runs checkpointed layers that the backward pass replays."""
    return model.training and any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def pass_cache(kv: KV | None, config) -> DynamicCache:
    """A cache for one training forward pass over `kv` (None: no prefix).

    It computes what a DynamicCache computes for a single pass, and it stays right when
    gradient checkpointing replays a layer in the backward pass (kava's training passes
    all use it, so `model.gradient_checkpointing` works with the student's cache). For
    one pass only: continue from `cache_from_kv(kv_of(cache), config)`.
    """
    cache = DynamicCache(config=config)
    if (kv is not None and len(kv) != len(cache.layers)) or any(
            type(layer) is not DynamicLayer for layer in cache.layers):
        return cache_from_kv(kv, config) if kv is not None else cache  # sliding-window layers: plain cache
    cache.layers = [_PassLayer(*kv[i]) if kv is not None else _PassLayer() for i in range(len(cache.layers))]
    return cache


def kv_of(cache: DynamicCache) -> KV:
    """Per-layer (keys, values), each [B, H_kv, S, D]."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def slice_kv(kv: KV, start: int, end: int | None = None) -> KV:
    """Positions [start:end) of every layer."""
    return [(k[:, :, start:end], v[:, :, start:end]) for k, v in kv]


def select_batch(cache: DynamicCache, indices: torch.Tensor) -> None:
    """Keep only the examples `indices` (in place); used to stop decoding finished examples."""
    for layer in cache.layers:
        layer.batch_select_indices(indices)
