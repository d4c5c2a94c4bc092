"""Rotary position embeddings on cached keys: undo them, apply them, move keys (docs/algorithm.md §4, §5).

The cache holds keys after RoPE: a key at position p is the raw key rotated by angles
p·θ. The teacher's kept CoT entries sit at positions far from the student's latent slots
(a CoT of 40 tokens, M = 6 latents), so comparing cached keys asks the student to produce
a key pre-rotated for another position. `unrotate_keys` rotates each key back by its
own position, so the KV loss can compare the raw keys (`kava.kv_keys: pre_rope`).
"""

from __future__ import annotations

import torch


def _rotary_module(model) -> torch.nn.Module:
    for name, module in model.named_modules():
        if name.endswith("rotary_emb") and hasattr(module, "inv_freq"):
            return module
    raise ValueError(f"{type(model).__name__} has no rotary embedding module (rotary_emb)")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def unrotate_keys(model, keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """keys [B, H, N, D] cached at positions [B, H, N] (or [B, N]) -> the keys before RoPE.

    Exact inverse of `k·cos + rotate_half(k)·sin` (with the module's attention scaling).
    """
    rotary = _rotary_module(model)
    b, h, n, d = keys.shape
    pos = positions if positions.dim() == 3 else positions[:, None, :].expand(b, h, n)
    cos, sin = rotary(keys.float(), pos.reshape(b, h * n).to(keys.device))
    cos, sin = cos.float().view(b, h, n, d), sin.float().view(b, h, n, d)
    k = keys.float()
    raw = (k * cos - _rotate_half(k) * sin) / (cos * cos + sin * sin)
    return raw.to(keys.dtype)


def rotate_keys(model, raw: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """raw keys [B, H, N, D] (before RoPE) -> the keys as cached at positions [B, H, N] (or [B, N])."""
    rotary = _rotary_module(model)
    b, h, n, d = raw.shape
    pos = positions if positions.dim() == 3 else positions[:, None, :].expand(b, h, n)
    cos, sin = rotary(raw.float(), pos.reshape(b, h * n).to(raw.device))
    cos, sin = cos.float().view(b, h, n, d), sin.float().view(b, h, n, d)
    k = raw.float()
    return (k * cos + _rotate_half(k) * sin).to(raw.dtype)


def move_keys(model, keys: torch.Tensor, from_positions: torch.Tensor, to_positions: torch.Tensor) -> torch.Tensor:
    """Cached keys at `from_positions` -> the same raw keys cached at `to_positions`."""
    return rotate_keys(model, unrotate_keys(model, keys, from_positions), to_positions)
