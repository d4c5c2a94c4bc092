"""Sequential latents, one per forward pass [codi][coconut] (`latent.mode: sequential`).

    pass 0:    Q + <bot>                            -> cache of Q + <bot>, h_<bot>
    pass i:    proj(h_{i-1}) over the growing cache  -> h_i, the cache grows by one (i = 1..M; h_0 = h_<bot>)
    then:      <eot> + P (+ A when training) over Q + <bot> + the M latents

Each latent's input is the (projected) last-layer hidden state of the position before it,
after the final norm, so the first is fed from `<bot>` [codi: `src/model.py`, `CODI.forward`;
coconut: `coconut.py`, the continuous thought replaces the input embedding with the
preceding position's last hidden state]. With `latent.projection: false` the hidden state
is fed as it is (Coconut). M + 1 model calls; the question's keys and values are computed
once and every latent pass reuses the cache of everything before it. Gradients flow through
every pass (no detach), as in both codes.

Batches: questions are left-padded, so the latents of every example line up. A curriculum
can give the examples of one batch different numbers of latents (`latent_mask`, [B, K], 1
for the example's latents, which come first in its block, 0 for padding after them): the
padded slots are computed but never attended to, so an example gets what it gets alone.
"""

from __future__ import annotations

import torch

from kava.model.cache import cache_from_kv, kv_of, pass_cache, replays_layers, slice_kv
from kava.model.kava_model import KavaModel
from kava.model.latents import LatentState
from kava.model.lm import no_logits
from kava.model.positions import extend_mask, position_ids_from_mask, positions_for_new


def run_sequential_latents(model: KavaModel, q_ids: torch.Tensor, q_mask: torch.Tensor,
                           latent_mask: torch.Tensor | None = None) -> LatentState:
    """Pass 0 over Q + <bot> (left-padded, [B, Lq]) and one pass per latent."""
    B, Lq = q_ids.shape
    M = model.num_latents if latent_mask is None else latent_mask.shape[1]
    if latent_mask is None:
        latent_mask = torch.ones(B, M, dtype=q_mask.dtype, device=q_mask.device)
    cache = pass_cache(None, model.config) if replays_layers(model) else None
    out = model.lm(
        input_ids=q_ids,
        attention_mask=q_mask,
        position_ids=position_ids_from_mask(q_mask),
        past_key_values=cache,
        use_cache=True,
        output_hidden_states=True,
        logits_to_keep=no_logits(model, q_ids.device),
    )
    kv = kv_of(out.past_key_values if cache is None else cache)
    h = out.hidden_states[-1][:, -1:]  # at <bot>: the last column of a left-padded batch
    mask = q_mask
    hidden, inputs = [], []
    for i in range(M):
        mask = extend_mask(mask, 1, latent_mask[:, i : i + 1])
        # a pass cache per call: right under gradient checkpointing, and the same tensors otherwise
        cache = pass_cache(kv, model.config)
        inputs.append(model.project(h))
        out = model.lm(
            inputs_embeds=inputs[-1],
            attention_mask=mask,
            position_ids=positions_for_new(mask, 1),
            past_key_values=cache,
            use_cache=True,
            output_hidden_states=True,
            logits_to_keep=no_logits(model, q_ids.device),
        )
        h = out.hidden_states[-1]
        hidden.append(h)
        kv = kv_of(cache)
    hidden = torch.cat(hidden, dim=1) if hidden else h[:, :0]
    inputs = torch.cat(inputs, dim=1) if inputs else h[:, :0]
    return LatentState(cache=cache_from_kv(kv, model.config), mask=mask, hidden=hidden,
                       latent_kv=slice_kv(kv, Lq, None), passes=1 + M, inputs=inputs)
