"""R-KV compression of the teacher's CoT key/value cache (docs/algorithm.md §4).

KaVa distils the student's M latent tokens toward a *compressed* copy of the teacher's
key/value cache over the chain of thought (CoT). For every layer and every key/value
head, independently, the CoT positions ``j`` (padding excluded) are scored and the
``M = budget`` best are kept, in their original order:

- **Importance** ``I_j``: the teacher's attention probabilities (softmax over all keys,
  as in the forward pass) from the query rows of ``P + A`` to key ``j``; within a GQA
  group the max over the query heads is taken, then the mean over those query rows
  (:func:`importance_from_attn`).
- **Redundancy** ``R_j``: cosine similarity between the cached key ``k_j`` and every
  *other* CoT key, averaged over the others; ``R_j = softmax_j(-mean_cos_j)`` over the CoT
  positions, so a key unlike the others scores high (:func:`redundancy_scores`). Keys
  are compared as cached (after RoPE).
- **Score** ``S_j = lam * I_j + (1 - lam) * R_j`` with ``lam = 0.1`` by default
  (:func:`rkv_scores`); positions outside the CoT score ``-inf`` and are never kept.
- If the CoT has fewer than ``budget`` tokens, all of them are kept, in order, at the
  front of the slots; the remaining slots are marked ``False`` in ``slot_mask`` so the
  loss can ignore them.

The ablation alternatives share one interface (:data:`COMPRESSION_METHODS`): ``rkv``
(default), ``attention`` (``lam = 1``), ``redundancy`` (``lam = 0``), ``crop`` (the last
``budget`` CoT tokens) and ``random`` (uniform CoT tokens from a ``torch.Generator``).

Everything is batched and padding-aware: no Python loops over batch, heads or
positions. Scores are computed in float32 whatever the input dtype, all functions run
under ``torch.no_grad`` and the returned tensors are detached (they are distillation
*targets*).

Shape letters: ``B`` batch, ``H_q`` query heads, ``H_kv`` key/value heads
(``H_q = H_kv * G``; query head ``h`` belongs to kv head ``h // G``, transformers'
``repeat_kv`` convention), ``S`` cached sequence length, ``S_q`` number of attention
rows given, ``D`` head dimension.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

__all__ = [
    "COMPRESSION_METHODS",
    "RKVSelection",
    "importance_from_attn",
    "redundancy_scores",
    "rkv_scores",
    "select_from_scores",
    "rkv_select",
]

COMPRESSION_METHODS: tuple[str, ...] = ("rkv", "attention", "redundancy", "crop", "random")
"""The valid values of ``method`` (docs/algorithm.md §4, the paper's ablation)."""


class RKVSelection(NamedTuple):
    """The compressed cache of one layer.

    Attributes:
        keys: ``[B, H_kv, budget, D]`` selected keys (input dtype), in original order;
            zeros in unused slots.
        values: ``[B, H_kv, budget, D]`` selected values, aligned with ``keys``; zeros in
            unused slots.
        slot_mask: ``[B, H_kv, budget]`` bool, ``True`` where the slot holds a CoT entry.
            Used slots always come first (``False`` only happens when the CoT has fewer
            than ``budget`` tokens).
        positions: ``[B, H_kv, budget]`` long, the index in ``[0, S)`` of each selected
            entry, strictly increasing over the used slots; ``0`` in unused slots.
    """

    keys: Tensor
    values: Tensor
    slot_mask: Tensor
    positions: Tensor


def _check_method(method: str) -> None:
    if method not in COMPRESSION_METHODS:
        raise ValueError(
            f"unknown compression method {method!r}; valid methods are: "
            + ", ".join(COMPRESSION_METHODS)
        )


def _check_bool_mask(name: str, mask: Tensor, shape: tuple[int, ...]) -> None:
    if mask.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor, got dtype {mask.dtype}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(mask.shape)}")


@torch.no_grad()
def importance_from_attn(attn: Tensor, query_mask: Tensor, num_kv_heads: int) -> Tensor:
    """Attention importance of every key position, per key/value head (docs/algorithm.md §4).

    Within each GQA group the max over its ``G = H_q // H_kv`` query heads is taken
    (query head ``h`` belongs to kv head ``h // G``), then the mean over the valid
    query rows. Rows where ``query_mask`` is False contribute nothing (even if they hold
    NaN, as fully masked softmax rows may); an example without any valid row gets zeros.

    Args:
        attn: ``[B, H_q, S_q, S]`` one layer's attention probabilities. ``S_q`` may equal
            ``S`` (the full map) or be only some rows (e.g. the ``P + A`` rows).
        query_mask: ``[B, S_q]`` bool, the rows that count (the positions of ``P + A``).
        num_kv_heads: ``H_kv``; must divide ``H_q``.

    Returns:
        ``[B, H_kv, S]`` float32 importance, detached.
    """
    if attn.dim() != 4:
        raise ValueError(f"attn must be [B, H_q, S_q, S], got shape {list(attn.shape)}")
    bsz, n_q_heads, s_q, seq = attn.shape
    if num_kv_heads < 1 or n_q_heads % num_kv_heads != 0:
        raise ValueError(
            f"num_kv_heads={num_kv_heads} must be positive and divide the {n_q_heads} query heads"
        )
    _check_bool_mask("query_mask", query_mask, (bsz, s_q))
    group = n_q_heads // num_kv_heads
    # Max is exact in any dtype, so reduce the group before upcasting (saves memory).
    grouped = attn.detach().view(bsz, num_kv_heads, group, s_q, seq).amax(dim=2)
    rows = query_mask.to(attn.device)[:, None, :, None]  # [B, 1, S_q, 1]
    grouped = torch.where(rows, grouped.float(), grouped.new_zeros((), dtype=torch.float32))
    total = grouped.sum(dim=2)  # [B, H_kv, S]
    count = query_mask.to(attn.device).sum(dim=1).clamp(min=1).to(torch.float32)  # [B]
    return (total / count[:, None, None]).detach()


@torch.no_grad()
def redundancy_scores(keys: Tensor, cot_mask: Tensor) -> Tensor:
    """Redundancy score of every CoT key, per key/value head (docs/algorithm.md §4).

    ``mean_cos_j`` is the mean cosine similarity between ``k_j`` and every *other* CoT key
    of the same example and head (padding and non-CoT positions are not among the
    "others"; a CoT of one token has ``mean_cos = 0``). Then
    ``R_j = softmax over the CoT positions j of (-mean_cos_j)``; non-CoT positions get 0,
    and so does every position of an example without CoT. Keys are used as cached
    (after RoPE). A zero key has cosine 0 with everything.

    Computed in O(S·D) per head: ``sum_{i != j} cos(k_i, k_j) = k̂_j · (sum_i k̂_i) - k̂_j · k̂_j``
    over the CoT positions, with ``k̂`` the unit-normalised keys.

    Args:
        keys: ``[B, H_kv, S, D]`` one layer's cached keys.
        cot_mask: ``[B, S]`` bool, the CoT positions.

    Returns:
        ``[B, H_kv, S]`` float32 redundancy scores, detached; over each example's CoT
        positions they sum to 1 (per head).
    """
    if keys.dim() != 4:
        raise ValueError(f"keys must be [B, H_kv, S, D], got shape {list(keys.shape)}")
    bsz, _, seq, _ = keys.shape
    _check_bool_mask("cot_mask", cot_mask, (bsz, seq))
    cot = cot_mask.to(keys.device)
    k = torch.nn.functional.normalize(keys.detach().float(), dim=-1, eps=1e-12)
    k = torch.where(cot[:, None, :, None], k, k.new_zeros(()))  # only CoT keys count
    total = k.sum(dim=2, keepdim=True)  # [B, H_kv, 1, D]
    sum_others = (k * total).sum(dim=-1) - (k * k).sum(dim=-1)  # [B, H_kv, S]
    n_others = (cot.sum(dim=1) - 1).clamp(min=1).to(torch.float32)  # [B]
    mean_cos = sum_others / n_others[:, None, None]
    logits = torch.where(cot[:, None, :], -mean_cos, mean_cos.new_full((), float("-inf")))
    red = torch.softmax(logits, dim=-1)  # NaN for examples without CoT, removed below
    return torch.where(cot[:, None, :], red, red.new_zeros(())).detach()


@torch.no_grad()
def rkv_scores(importance: Tensor, redundancy: Tensor, lam: float) -> Tensor:
    """R-KV score ``lam * importance + (1 - lam) * redundancy`` (docs/algorithm.md §4).

    Args:
        importance: ``[B, H_kv, S]`` from :func:`importance_from_attn`.
        redundancy: ``[B, H_kv, S]`` from :func:`redundancy_scores`.
        lam: the weight of importance, in ``[0, 1]`` (the paper uses 0.1).

    Returns:
        ``[B, H_kv, S]`` float32 scores, detached. Non-CoT positions are *not* masked
        here; :func:`select_from_scores` does it.
    """
    if not 0.0 <= float(lam) <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if importance.shape != redundancy.shape:
        raise ValueError(
            f"importance {list(importance.shape)} and redundancy {list(redundancy.shape)} "
            "must have the same shape"
        )
    lam = float(lam)
    return (lam * importance.detach().float() + (1.0 - lam) * redundancy.detach().float()).detach()


@torch.no_grad()
def select_from_scores(
    keys: Tensor,
    values: Tensor,
    scores: Optional[Tensor],
    cot_mask: Tensor,
    budget: int,
    method: str = "rkv",
    generator: Optional[torch.Generator] = None,
) -> RKVSelection:
    """Keep the ``budget`` best-scoring CoT entries of each head, in original order.

    For ``method`` in ``rkv``, ``attention``, ``redundancy`` the given ``scores`` rank
    the positions (higher is kept). For ``crop`` the last ``budget`` CoT positions are
    kept and for ``random`` a uniformly random subset of ``budget`` CoT positions is drawn
    with ``generator`` (independently per example and head); ``scores`` is ignored
    (may be None) for these two. Non-CoT positions score ``-inf`` and are never kept.

    Args:
        keys: ``[B, H_kv, S, D]`` one layer's cached keys.
        values: ``[B, H_kv, S, D]`` the matching values.
        scores: ``[B, H_kv, S]`` ranking scores, or None for ``crop``/``random``.
        cot_mask: ``[B, S]`` bool, the CoT positions.
        budget: number of slots ``M`` (>= 1).
        method: one of :data:`COMPRESSION_METHODS`.
        generator: ``torch.Generator`` for ``random`` (any device; the draw is made on
            the generator's device). None uses the global RNG.

    Returns:
        :class:`RKVSelection` with ``budget`` slots per example and head; see there for
        the layout of unused slots (keys/values zero, position 0, slot_mask False).
    """
    _check_method(method)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be a positive int, got {budget!r}")
    if keys.dim() != 4:
        raise ValueError(f"keys must be [B, H_kv, S, D], got shape {list(keys.shape)}")
    if values.shape[:3] != keys.shape[:3] or values.dim() != 4:
        raise ValueError(
            f"values {list(values.shape)} must match keys {list(keys.shape)} in [B, H_kv, S]"
        )
    bsz, n_heads, seq, _ = keys.shape
    device = keys.device
    _check_bool_mask("cot_mask", cot_mask, (bsz, seq))
    cot = cot_mask.to(device)[:, None, :].expand(bsz, n_heads, seq)  # [B, H_kv, S]

    if method == "crop":
        rank = torch.arange(seq, device=device, dtype=torch.float32).expand(bsz, n_heads, seq)
    elif method == "random":
        gen_device = generator.device if generator is not None else device
        rank = torch.rand(
            (bsz, n_heads, seq), generator=generator, device=gen_device, dtype=torch.float32
        ).to(device)
    else:
        if scores is None:
            raise ValueError(f"method {method!r} needs scores")
        if tuple(scores.shape) != (bsz, n_heads, seq):
            raise ValueError(
                f"scores must have shape {[bsz, n_heads, seq]}, got {list(scores.shape)}"
            )
        rank = scores.detach().to(device=device, dtype=torch.float32)
    rank = torch.where(cot, rank, rank.new_full((), float("-inf")))

    k = min(budget, seq)
    idx = torch.topk(rank, k, dim=-1, sorted=False).indices  # [B, H_kv, k]
    valid = torch.gather(cot, -1, idx)
    # Used slots first, in original order; unused slots (non-CoT picks) after them.
    order = torch.argsort(torch.where(valid, idx, idx + seq), dim=-1)
    idx = torch.gather(idx, -1, order)
    valid = torch.gather(valid, -1, order)

    gather_idx = idx[..., None].expand(bsz, n_heads, k, keys.shape[-1])
    sel_k = torch.gather(keys.detach(), 2, gather_idx)
    gather_idx_v = idx[..., None].expand(bsz, n_heads, k, values.shape[-1])
    sel_v = torch.gather(values.detach(), 2, gather_idx_v)
    sel_k = torch.where(valid[..., None], sel_k, sel_k.new_zeros(()))
    sel_v = torch.where(valid[..., None], sel_v, sel_v.new_zeros(()))
    positions = torch.where(valid, idx, idx.new_zeros(()))

    if budget > k:  # more slots than cached positions: pad with unused slots
        extra = budget - k
        sel_k = torch.nn.functional.pad(sel_k, (0, 0, 0, extra))
        sel_v = torch.nn.functional.pad(sel_v, (0, 0, 0, extra))
        valid = torch.nn.functional.pad(valid, (0, extra), value=False)
        positions = torch.nn.functional.pad(positions, (0, extra), value=0)

    return RKVSelection(
        keys=sel_k.detach(),
        values=sel_v.detach(),
        slot_mask=valid.detach(),
        positions=positions.to(torch.long).detach(),
    )


@torch.no_grad()
def rkv_select(
    keys: Tensor,
    values: Tensor,
    attn: Optional[Tensor],
    cot_mask: Tensor,
    query_mask: Optional[Tensor],
    budget: int,
    lam: float = 0.1,
    method: str = "rkv",
    generator: Optional[torch.Generator] = None,
    importance: Optional[Tensor] = None,
) -> RKVSelection:
    """Compress one layer's CoT cache to ``budget`` entries per key/value head (docs/algorithm.md §4).

    Args:
        keys: ``[B, H_kv, S, D]`` one layer's cached keys (after RoPE).
        values: ``[B, H_kv, S, D]`` the matching values.
        attn: ``[B, H_q, S_q, S]`` that layer's attention probabilities (usually the full
            map, ``S_q = S``), or None when ``importance`` is given or not needed
            (``redundancy``, ``crop``, ``random``, or ``rkv`` with ``lam = 0``).
        cot_mask: ``[B, S]`` bool, the CoT positions (the only candidates).
        query_mask: ``[B, S_q]`` bool, the ``P + A`` rows of ``attn``; needed with ``attn``.
        budget: number of slots ``M`` (>= 1).
        lam: weight of importance for ``rkv`` (default 0.1 [paper]); ``attention`` uses 1
            and ``redundancy`` 0 whatever ``lam`` is.
        method: one of :data:`COMPRESSION_METHODS`.
        generator: ``torch.Generator`` for ``random``, for reproducibility.
        importance: ``[B, H_kv, S]`` precomputed importance (e.g. from captured queries of
            the ``P + A`` rows); used instead of ``attn`` when given.

    Returns:
        :class:`RKVSelection`: ``keys``/``values`` ``[B, H_kv, budget, D]``,
        ``slot_mask`` ``[B, H_kv, budget]`` bool, ``positions`` ``[B, H_kv, budget]`` long;
        selected entries in original order, unused slots (CoT shorter than ``budget``)
        at the end with zero keys/values, position 0 and ``slot_mask`` False.
    """
    _check_method(method)
    if keys.dim() != 4:
        raise ValueError(f"keys must be [B, H_kv, S, D], got shape {list(keys.shape)}")
    bsz, n_kv, seq, _ = keys.shape

    if method in ("crop", "random"):
        return select_from_scores(keys, values, None, cot_mask, budget, method, generator)

    if method == "attention":
        lam = 1.0
    elif method == "redundancy":
        lam = 0.0
    if not 0.0 <= float(lam) <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    lam = float(lam)

    imp: Optional[Tensor] = None
    if lam > 0.0:
        if importance is not None:
            if tuple(importance.shape) != (bsz, n_kv, seq):
                raise ValueError(
                    f"importance must have shape {[bsz, n_kv, seq]}, got {list(importance.shape)}"
                )
            imp = importance.detach().to(device=keys.device, dtype=torch.float32)
        elif attn is not None:
            if query_mask is None:
                raise ValueError("query_mask is required to compute importance from attn")
            if attn.dim() != 4 or attn.shape[0] != bsz or attn.shape[-1] != seq:
                raise ValueError(
                    f"attn must be [B={bsz}, H_q, S_q, S={seq}], got {list(attn.shape)}"
                )
            imp = importance_from_attn(attn, query_mask, n_kv).to(keys.device)
        else:
            raise ValueError(f"method {method!r} with lam={lam} needs attn or importance")

    red: Optional[Tensor] = redundancy_scores(keys, cot_mask) if lam < 1.0 else None

    if imp is None:
        assert red is not None
        scores = red
    elif red is None:
        scores = imp
    else:
        scores = rkv_scores(imp, red, lam)
    return select_from_scores(keys, values, scores, cot_mask, budget, method, generator)
