"""The student: parallel latent reasoning with Jacobi iterations (docs/algorithm.md §2) [pccot][paper].

    pass 0:  Q + <bot> + <latent>×M          -> cache of Q + <bot>, hidden states h⁰
    k=1..T:  [proj(h⁰_<bot>), proj(h^{k-1}_1), …, proj(h^{k-1}_{M-1})] over the Q + <bot> cache
             (causal inside the block)       -> hᵏ, latent keys/values KVᵏ
    then:    <eot> + P (+ A when training) over Q + <bot> + latents(KVᵀ)

The question's keys and values are computed once, in pass 0, and reused by every
iteration (never recomputed); in training they come from the question's pass that the
teacher continues too (`kava.model.question`), and pass 0 runs `<bot>` + latents over them.
Gradients flow through all T iterations (no detach).
Questions are left-padded so the latent blocks line up; positions follow the mask.
The first slot's input is the projected pass-0 hidden state at <bot>, the same in every
iteration, as in the official PCCoT and CODI code (`latent.first_input: latent_embedding`
feeds the constant e(<latent>) instead).
`latent.mode: sequential` (CODI, Coconut) computes the latents one per pass instead
(kava.model.sequential); `run_latents` dispatches to it, so everything after the latents
is shared.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kava.data.sequences import StudentBatch
from kava.model.cache import KV, cache_from_kv, kv_of, pass_cache, replays_layers, slice_kv
from kava.model.kava_model import KavaModel
from kava.model.latents import LatentState
from kava.model.lm import causal_ce, no_logits
from kava.model.positions import extend_mask, positions_for_new
from kava.model.sequential import run_sequential_latents


def first_latent_input(model: KavaModel, bot_hidden: torch.Tensor) -> torch.Tensor:
    """[B, 1, d]: the first slot's input in every iteration (from pass 0's h at <bot>, [B, 1, d])."""
    if model.first_input == "bot_hidden":
        return model.project(bot_hidden)
    return model.latent_embeddings(bot_hidden.shape[0]).to(bot_hidden.dtype)


def latent_inputs(model: KavaModel, first: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Jacobi inputs from the previous iteration's hidden states: shift by one after `first`."""
    return torch.cat([first, model.project(hidden[:, :-1])], dim=1)


def run_latents(model: KavaModel, q_ids: torch.Tensor, q_mask: torch.Tensor, num_iterations: int | None = None,
                latent_mask: torch.Tensor | None = None, question=None) -> LatentState:
    """Pass 0 and T Jacobi iterations. q_ids/q_mask: left-padded Q + <bot>, [B, Lq].

    latent_mask [B, K] (a curriculum): example b has the latents where it is 1, first in its
    block; the padding after them is never attended to. None: M latents for every example.
    question: the pass over `q_ids[:, :-1]` already made (`kava.model.question`, shared with
    the teacher); pass 0 then runs `<bot>` + latents over its cache instead of all of Q.
    A `latent.mode: sequential` model runs its sequential latents unless `num_iterations` is
    given: then this Jacobi computation runs (0, the pass0 control: every latent input
    e(<latent>), no hidden state fed back)."""
    if model.latent_mode == "sequential" and num_iterations is None:
        if question is not None:
            raise ValueError("sequential latents read their own question pass: "
                             "build the batch with shared_question=False")
        return run_sequential_latents(model, q_ids, q_mask, latent_mask)
    T = model.num_iterations if num_iterations is None else num_iterations
    M = model.num_latents if latent_mask is None else latent_mask.shape[1]
    T = T if M else 0
    B, Lq = q_ids.shape
    head = q_ids if question is None else q_ids[:, -1:]  # the tokens pass 0 reads before the latents
    q_emb = model.embed(head)
    lat = model.latent_embeddings(B).expand(B, M, -1).to(q_emb.dtype)
    mask = extend_mask(q_mask, M, latent_mask)
    # Under gradient checkpointing every pass gets a replay-safe cache, read from the object
    # itself (some models return none then); else pass 0 lets the model make its own.
    if question is not None:
        cache = pass_cache(question.kv, model.config)
    else:
        cache = pass_cache(None, model.config) if replays_layers(model) else None
    out = model.lm(
        inputs_embeds=torch.cat([q_emb, lat], dim=1),
        attention_mask=mask,
        position_ids=positions_for_new(mask, head.shape[1] + M),
        past_key_values=cache,
        use_cache=True,
        output_hidden_states=True,
        logits_to_keep=no_logits(model, q_ids.device),
    )
    hidden = out.hidden_states[-1][:, head.shape[1] :]  # the M latents (none when M = 0)
    inputs = lat
    cache = out.past_key_values if cache is None else cache
    prefix_kv = slice_kv(kv_of(cache), 0, Lq)
    latent_pos = positions_for_new(mask, M)
    first = first_latent_input(model, out.hidden_states[-1][:, -M - 1 : -M]) if T else None  # h⁰ at <bot>
    for _ in range(T):
        cache = pass_cache(prefix_kv, model.config)
        inputs = latent_inputs(model, first, hidden)
        out = model.lm(
            inputs_embeds=inputs,
            attention_mask=mask,
            position_ids=latent_pos,
            past_key_values=cache,
            use_cache=True,
            output_hidden_states=True,
            logits_to_keep=no_logits(model, q_ids.device),
        )
        hidden = out.hidden_states[-1]
    final_kv = kv_of(cache)  # (pass caches serve one pass: hand on a plain cache over the same tensors)
    return LatentState(cache=cache_from_kv(final_kv, model.config), mask=mask, hidden=hidden,
                       latent_kv=slice_kv(final_kv, Lq, None), passes=1 + T, inputs=inputs)


@dataclass
class StudentOutput:
    ce: torch.Tensor
    latent_kv: KV
    codi_hidden: list[torch.Tensor]  # per layer [B, d] at the CODI position
    logits: torch.Tensor


def student_forward(model: KavaModel, batch: StudentBatch, question=None,
                    latent_override=None) -> StudentOutput:
    """Training pass over Q + <bot> + latents + <eot> + P + A; CE on P and A (with a curriculum,
    the suffix is <eot> + the remaining CoT + P + A, CE on all but <eot>).

    question: the question's pass shared with the teacher (see `run_latents`).
    latent_override(state) -> state: replaces the latents the answer pass reads (the
    `kava.student_latents: teacher` diagnostic)."""
    state = run_latents(model, batch.q_ids, batch.q_mask, latent_mask=batch.latent_mask, question=question)
    if latent_override is not None:
        state = latent_override(state)
    suffix_ids, suffix_mask = batch.suffix_ids, batch.suffix_mask
    mask = extend_mask(state.mask, suffix_ids.shape[1], suffix_mask)
    out = model.lm(
        input_ids=suffix_ids,
        attention_mask=mask,
        position_ids=positions_for_new(mask, suffix_ids.shape[1]),
        past_key_values=pass_cache(kv_of(state.cache), model.config),
        use_cache=True,
        output_hidden_states=True,
    )
    ce = causal_ce(out.logits, batch.suffix_labels)
    idx = batch.suffix_codi_index
    rows = torch.arange(idx.shape[0], device=idx.device)
    codi = [h[rows, idx] for h in out.hidden_states[1:]]
    return StudentOutput(ce=ce, latent_kv=state.latent_kv, codi_hidden=codi, logits=out.logits)
