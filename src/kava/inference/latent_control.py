"""Causal checks of the latent channel: answer with latents that are not the question's own.

Accuracy alone cannot tell whether a student reasons in its latents or answers from the
question, as a No-CoT model does. These controls change only the latent keys and values
the answer pass reads (`<eot> + P` and the answer tokens attend to `Q + <bot> + latents`):

    shuffled  each question is answered with another question's latents (the next one in
              the evaluation set): its final latent keys and values, computed over the other
              question, with the keys' rotary embeddings moved to this question's latent
              positions (the content is swapped, not the positions).
    pass0     T = 0: the latents of pass 0 (every input e(<latent>)), no Jacobi iteration.
    teacher   the teacher's CoT keys and values in place of the latents (the same weights
              reading Q + C + P, compressed with the model's R-KV settings to M entries):
              what the channel can carry at best. Needs each question's CoT steps. Keys are
              moved to the latent positions when the student was trained on keys before RoPE
              (`kava.kv_keys: pre_rope`) and left as cached otherwise (the student was trained
              to produce them so). Slots beyond a short CoT keep the student's own latents.

`latent reliance` = accuracy with the question's own latents − accuracy under `shuffled`:
near 0 when the answer ignores which latents it gets (docs/algorithm.md §2; docs/quality.md).
"""

from __future__ import annotations

import torch

from kava.model.cache import KV, cache_from_kv, kv_of, slice_kv
from kava.model.kava_model import KavaModel
from kava.model.positions import positions_for_new
from kava.model.rope import move_keys
from kava.model.student import LatentState, run_latents

CONTROLS = ("shuffled", "pass0", "teacher")


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


def shuffled_state(model: KavaModel, state: LatentState, donor: LatentState) -> LatentState:
    """Row b answers with `donor`'s row b latents (keys moved to row b's latent positions)."""
    M = model.num_latents
    src, dst = latent_positions(donor, M), latent_positions(state, M)
    kv = [(move_keys(model.backbone, k, src, dst), v) for k, v in donor.latent_kv]
    return with_latent_kv(model, state, kv)


def teacher_state(model: KavaModel, builder, state: LatentState, questions: list[str],
                  steps: list[list[str]], compression: str = "rkv", lam: float = 0.1,
                  move: bool = False) -> LatentState:
    """The teacher's compressed CoT keys/values in place of the latents (see the module docstring)."""
    import dataclasses

    from kava.data.train_sets import ReasoningExample
    from kava.model.teacher import teacher_forward

    M = model.num_latents
    # Q + C + P: the answer is not given (its tokens are dropped after encoding)
    items = [dataclasses.replace(builder.encode(ReasoningExample(q, tuple(s), "0")), a=[], codi_shift=0)
             for q, s in zip(questions, steps, strict=True)]
    batch = {k: t.to(model.device) for k, t in builder.teacher_batch(items).items()}
    # (a no-grad, eval-mode pass: targets only; the query rows are those of P, no answer is given)
    teacher = teacher_forward(model, batch, budget=M, lam=lam, method=compression, with_ce=False,
                              generator=torch.Generator(device=model.device).manual_seed(0))
    return selections_state(model, state, teacher.selections, move)


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


def controlled_latents(model: KavaModel, builder, q_ids: torch.Tensor, q_mask: torch.Tensor, control: str | None,
                       questions: list[str] | None = None, donors: list[str] | None = None,
                       steps: list[list[str]] | None = None, teacher_settings: dict | None = None) -> LatentState:
    """`run_latents`, then the control (None: the question's own latents). `passes` counts the
    question's own latent passes (1 + T; 1 for pass0) — a donor's or the teacher's are not counted."""
    if control is None:
        return run_latents(model, q_ids, q_mask)
    if control not in CONTROLS:
        raise ValueError(f"unknown latent control {control!r}; choose one of {CONTROLS}")
    if control == "pass0":
        return run_latents(model, q_ids, q_mask, num_iterations=0)
    state = run_latents(model, q_ids, q_mask)
    if control == "shuffled":
        if donors is None or len(donors) != q_ids.shape[0]:
            raise ValueError("the shuffled control needs one donor question per question")
        qb = builder.question_batch([builder.question_ids(d) for d in donors], add_bot=True)
        donor = run_latents(model, qb["input_ids"].to(q_ids.device), qb["attention_mask"].to(q_ids.device))
        return shuffled_state(model, state, donor)
    if steps is None or questions is None or len(steps) != q_ids.shape[0]:
        raise ValueError("the teacher control needs each question's CoT steps")
    return teacher_state(model, builder, state, questions, steps, **(teacher_settings or {}))
