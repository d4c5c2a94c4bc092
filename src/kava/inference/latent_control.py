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

import dataclasses

import torch

from kava.data.train_sets import ReasoningExample
from kava.model.kava_model import KavaModel
from kava.model.latents import LatentState, latent_positions, selections_state, with_latent_kv
from kava.model.rope import move_keys
from kava.model.student import run_latents
from kava.model.teacher import TargetSpec, teacher_forward

CONTROLS = ("shuffled", "pass0", "teacher")


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
    M = model.num_latents
    # Q + C + P: the answer is not given (its tokens are dropped after encoding)
    items = [dataclasses.replace(builder.encode(ReasoningExample(q, tuple(s), "0")), a=[], codi_shift=0)
             for q, s in zip(questions, steps, strict=True)]
    batch = builder.teacher_batch(items).to(model.device)
    # (a no-grad, eval-mode pass: targets only; the query rows are those of P, no answer is given)
    teacher = teacher_forward(model, batch, TargetSpec(budget=M, compression=compression, lam=lam), with_ce=False,
                              generator=torch.Generator(device=model.device).manual_seed(0))
    return selections_state(model, state, teacher.selections, move)


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
