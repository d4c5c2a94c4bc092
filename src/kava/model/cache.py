"""All access to transformers' KV caches lives here (SPEC.md §8: keep cache access in one place).

transformers 5.x stores a `DynamicCache` as a list of layers, each holding `keys` and
`values` of shape [B, H_kv, S, D] (after RoPE). The rest of kava only sees plain
per-layer (keys, values) tuples and these few functions, so a change in the cache
classes touches this file alone.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

KV = list[tuple[torch.Tensor, torch.Tensor]]


def new_cache(config) -> DynamicCache:
    return DynamicCache(config=config)


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
    if (kv is not None and len(kv) != len(cache.layers)) or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return cache_from_kv(kv, config) if kv is not None else cache  # sliding-window layers: plain cache
    cache.layers = [_PassLayer(*kv[i]) if kv is not None else _PassLayer() for i in range(len(cache.layers))]
    return cache


def kv_of(cache: DynamicCache) -> KV:
    """Per-layer (keys, values), each [B, H_kv, S, D]."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def slice_kv(kv: KV, start: int, end: int | None = None) -> KV:
    """Positions [start:end) of every layer."""
    return [(k[:, :, start:end], v[:, :, start:end]) for k, v in kv]


def seq_length(cache: DynamicCache) -> int:
    return cache.get_seq_length()


def select_batch(cache: DynamicCache, indices: torch.Tensor) -> None:
    """Keep only the examples `indices` (in place); used to stop decoding finished examples."""
    for layer in cache.layers:
        layer.batch_select_indices(indices)
