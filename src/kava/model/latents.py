"""The latents as the answer pass reads them, and their replacement (docs/algorithm.md §2).

`LatentState` is what the latent passes hand on (Jacobi, `kava.model.student`; sequential,
`kava.model.sequential`): the cache over Q + <bot> + the M latents, their keys and values
and hidden states. `with_latent_kv` puts other keys and values in the latent slots, and
`selections_state` the teacher's R-KV-compressed CoT (the `kava.student_latents: teacher`
diagnostic in training and the teacher latent control at evaluation,
`kava.inference.latent_control`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kava.model.cache import KV, cache_from_kv, kv_of, slice_kv
from kava.model.kava_model import KavaModel
from kava.model.positions import positions_for_new
from kava.model.rope import move_keys


@dataclass
class LatentState:
    """What the latent passes hand on to the answer pass."""

    cache: object  # DynamicCache over Q + <bot> + M latents (the final iteration's)
    mask: torch.Tensor  # [B, Lq + M]
    hidden: torch.Tensor  # [B, M, d] last-layer hidden states of the final iteration
    latent_kv: KV  # per layer ([B, H_kv, M, D], [B, H_kv, M, D])
    passes: int  # model calls made (1 + T; sequential: 1 + M)
    inputs: torch.Tensor | None = None  # [B, M, d] the latent inputs of the final pass


def latent_positions(state: LatentState, num_latents: int) -> torch.Tensor:
    """[B, M] position ids of the latent slots."""
    return positions_for_new(state.mask, num_latents)


def with_latent_kv(model: KavaModel, state: LatentState, latent_kv: KV) -> LatentState:
    """`state` with its latent keys and values replaced (the question's cache is kept)."""
    Lq = state.mask.shape[1] - model.num_latents
    prefix = slice_kv(kv_of(state.cache), 0, Lq)
    kv = [(torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)) for (pk, pv), (k, v) in zip(prefix, latent_kv)]
    return LatentState(cache=cache_from_kv(kv, model.config), mask=state.mask, hidden=state.hidden,
                       latent_kv=latent_kv, passes=state.passes, inputs=state.inputs)


def selections_state(model: KavaModel, state: LatentState, selections, move: bool = False) -> LatentState:
    """`state` with the teacher's R-KV selections (per layer) in its latent slots (detached); slots
    a short CoT leaves empty keep the student's own latents. move: keys moved to the latent positions
    (the teacher's batch is right-padded, so a CoT token's position is its index)."""
    dst = latent_positions(state, model.num_latents)
    kv = []
    for (ks, vs), sel in zip(state.latent_kv, selections, strict=True):
        keys = sel.keys.detach()
        if move:
            keys = move_keys(model.backbone, keys, sel.positions, dst[:, None, :].expand_as(sel.positions))
        valid = sel.slot_mask[..., None]
        kv.append((torch.where(valid, keys.to(ks.dtype), ks), torch.where(valid, sel.values.detach().to(vs.dtype), vs)))
    return with_latent_kv(model, state, kv)
