"""Capture the teacher's attention importance without materialising attention maps
(docs/algorithm.md §4); keep padding rows finite.

R-KV's importance needs the teacher's attention probabilities from the `P + A` query
rows to every key. Asking transformers for `output_attentions` forces eager attention
and stores L maps of [B, H_q, S, S]. Instead we register a thin wrapper around the
configured attention function (sdpa, eager or flash attention): it runs the real
attention unchanged and, while a capture is active, recomputes softmax(q·kᵀ·scale + mask)
for the few query rows that matter, reducing them at once to the importance
[B, H_kv, S] (max over each GQA group, mean over the rows). The result equals the
importance read from the full eager attention map; `tests/test_capture.py` checks it.

Sliding-window attention and logit soft-capping are not modelled here (Llama and Qwen2
use neither in their standard configurations).

Every kava backbone goes through these wrappers (`kava.model.load.load_backbone` installs
them), for two more reasons than the capture:

- flash attention 2 is wrapped under its own name: transformers loads its kernels by the
  name `flash_attention_2`, and takes any other name containing "flash" for a hub kernel
  to download (`ValueError: Could not find the currently requested flash attention
  implementation`). The wrapper replaces the registered function for every model of the
  process; outside a capture it only calls the original.
- sdpa and eager run under `kava_capture_<name>`, whose mask function unmasks the query
  rows that may attend to no key (left padding: a padding token sees only padding). Since
  transformers 5 no longer does it for SDPA, a kernel that returns NaN for such rows
  (reported with torch 2.13 on recent NVIDIA GPUs; CPU kernels return 0) would put NaN in
  the padding's keys and values, and `0 · NaN` in the attention of every real token of
  the example. Unmasked, the padding rows attend to everything: finite values that no real
  token reads. Flash attention needs nothing: it drops padding rows before its kernel.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

from kava.compression.rkv import importance_from_attn

_PREFIX = "kava_capture_"
_ACTIVE: contextvars.ContextVar[_Capture | None] = contextvars.ContextVar("kava_capture", default=None)


@dataclass
class _Capture:
    rows: torch.Tensor  # [B, R] long: sequence indices of the query rows
    row_valid: torch.Tensor  # [B, R] bool
    key_mask: torch.Tensor  # [B, S] bool: real (non-padding) keys
    offset: int = 0  # keys before the first query row (a cached prefix: the question's)
    importance: dict[int, torch.Tensor] = field(default_factory=dict)


def _base_function(base: str, module):
    if base == "eager":
        # The model's own eager function (some architectures customise it).
        return getattr(sys.modules[type(module).__module__], "eager_attention_forward")
    return AttentionInterface._global_mapping[base]


def _capturing(attention):
    """`attention(module, query, key, value, attention_mask, **kwargs)` that also records the
    importance while a capture is active."""

    def wrapper(module, query, key, value, attention_mask, **kwargs):
        out = attention(module, query, key, value, attention_mask, **kwargs)
        cap = _ACTIVE.get()
        if cap is not None:
            with torch.no_grad():
                cap.importance[module.layer_idx] = _row_importance(
                    query, key, kwargs.get("scaling", module.scaling), cap
                )
        return out

    return wrapper


def _make_wrapper(base: str):
    """sdpa / eager: the function registered under `base` when called (tests may swap it)."""
    return _capturing(lambda module, *args, **kwargs: _base_function(base, module)(module, *args, **kwargs))


def _unmasking(mask_function):
    """`mask_function` with the boolean masks' fully masked query rows allowed to attend to every key."""

    def mask(*args, **kwargs):
        out = mask_function(*args, **kwargs)
        if isinstance(out, torch.Tensor) and out.dtype == torch.bool:
            out = out | ~out.any(dim=-1, keepdim=True)
        return out

    return mask


def _row_importance(query: torch.Tensor, key: torch.Tensor, scaling: float, cap: _Capture) -> torch.Tensor:
    """query [B, H_q, S_q, D], key [B, H_kv, S, D] (S = offset + S_q) -> importance [B, H_kv, S]."""
    b, h_q, _, d = query.shape
    h_kv, s = key.shape[1], key.shape[2]
    idx = cap.rows[:, None, :, None].expand(b, h_q, cap.rows.shape[1], d)
    q_rows = query.gather(2, idx).float()  # [B, H_q, R, D]
    k = key.float().repeat_interleave(h_q // h_kv, dim=1)  # [B, H_q, S, D]
    scores = torch.matmul(q_rows, k.transpose(-1, -2)) * scaling  # [B, H_q, R, S]
    causal = torch.arange(s, device=query.device)[None, None, :] <= cap.rows[:, :, None] + cap.offset  # [B, R, S]
    allowed = causal & cap.key_mask[:, None, :]
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return importance_from_attn(probs, cap.row_valid, h_kv)


def enable_capture(model) -> None:
    """Route `model`'s attention through kava's wrappers (numerically identical for every real
    token; idempotent): the capture, and for sdpa / eager the unmasking of fully masked rows."""
    config = model.config
    base = config._attn_implementation
    if base.startswith(_PREFIX):
        return
    if base not in ("sdpa", "eager", "flash_attention_2"):
        raise ValueError(f"attention implementation {base!r} is not supported by the importance capture")
    if base == "flash_attention_2":
        registered = AttentionInterface._global_mapping[base]
        if not getattr(registered, "_kava_capture", False):
            wrapper = _capturing(registered)
            wrapper._kava_capture = True
            AttentionInterface.register(base, wrapper)
        return
    name = _PREFIX + base
    if name not in AttentionInterface._global_mapping:
        AttentionInterface.register(name, _make_wrapper(base))
        AttentionMaskInterface.register(name, _unmasking(ALL_MASK_ATTENTION_FUNCTIONS[base]))
    model.set_attn_implementation(name)


@contextlib.contextmanager
def capture_importance(query_mask: torch.Tensor, key_mask: torch.Tensor, offset: int = 0):
    """Within this block, every attention layer records its R-KV importance.

    query_mask [B, S_q] bool: the rows of this pass whose attention gives the importance (`P + A`).
    key_mask   [B, S] bool: real tokens (padding is never attended), S = offset + S_q.
    offset: keys in the cache before this pass (the question's, under `kava.shared_question`).
    Yields a dict layer -> importance [B, H_kv, S], filled by the forward pass.
    """
    counts = query_mask.sum(-1)
    r = max(int(counts.max().item()), 1)
    # Stable sort puts the True rows first, in order; the rest are padding rows.
    order = torch.sort((~query_mask).int(), dim=-1, stable=True).indices[:, :r]
    row_valid = torch.arange(r, device=query_mask.device)[None, :] < counts[:, None]
    cap = _Capture(rows=order, row_valid=row_valid, key_mask=key_mask.bool(), offset=offset)
    token = _ACTIVE.set(cap)
    try:
        yield cap.importance
    finally:
        _ACTIVE.reset(token)
