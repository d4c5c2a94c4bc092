"""From encoded examples to the tensors of one optimizer step: the tokenised training set, the
dataset indices each step consumes, its micro-batches and their token count.

Data order is a seeded permutation per epoch (`step_indices`): optimizer step `s` always
consumes the same `train.global_batch_size` examples, whatever the number of processes, so a
resumed run continues exactly where the interrupted one stopped (kava.training.trainer).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from kava.config import KavaConfig, shares_question
from kava.data.sequences import Encoded, SequenceBuilder, StudentBatch, TeacherBatch


def encode_dataset(examples, builder: SequenceBuilder, cfg: KavaConfig) -> tuple[list[Encoded], int]:
    """Tokenise; drop (and count) examples longer than data.max_length — never truncate them."""
    kept, dropped = [], 0
    M, longest = cfg.latent.num_latents, cfg.data.max_length
    for ex in examples:
        e = builder.encode(ex)
        if builder.teacher_length(e) > longest or builder.student_length(e, M) > longest + M + 2:
            dropped += 1
            continue
        kept.append(e)
    return kept, dropped


def make_batch(builder: SequenceBuilder, items: list[Encoded], method: str, device, shared_question: bool = True,
               student: dict | None = None) -> dict[str, TeacherBatch | StudentBatch]:
    """The sequences of `method`'s objective, by role: "teacher" and "student" (KaVa and the
    latent baselines), "teacher" (CoT, iCoT) or "direct" (No-CoT). shared_question
    (`shares_question(cfg)`): the teacher's part is its C + P + A, to continue the student's
    question. student: keyword arguments of `builder.student_batch` (a curriculum's latents
    and kept CoT)."""
    if method == "direct":
        parts = {"direct": builder.teacher_batch(items, with_cot=False)}
    elif method in ("cot", "icot"):  # iCoT: the CoT teacher's sequence with its CoT cut (kava.training.icot)
        parts = {"teacher": builder.teacher_batch(items)}
    else:
        teacher = builder.continuation_batch(items) if shared_question else builder.teacher_batch(items)
        parts = {"teacher": teacher, "student": builder.student_batch(items, **(student or {}))}
    return {k: v.to(device) for k, v in parts.items()}


def step_indices(step: int, n: int, cfg: KavaConfig, spe: int) -> list[int]:
    """The dataset indices consumed by optimizer step `step` (all processes together); spe: steps per epoch."""
    epoch, offset = divmod(step, spe)
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    G = cfg.train.global_batch_size
    return perm[offset * G : (offset + 1) * G].tolist()


def micro_batches(builder: SequenceBuilder, data: list[Encoded], indices: list[int], step: int, cfg: KavaConfig,
                  device, curriculum=None) -> Iterator[dict]:
    """The micro-batches (`train.micro_batch_size` examples each) of optimizer step `step` over
    these dataset indices; curriculum: a `kava.training.curriculum` schedule (or iCoT's), which
    gives each example its stage's latents and kept CoT."""
    micro = cfg.train.micro_batch_size
    for a in range(0, len(indices), micro):
        chunk = indices[a : a + micro]
        items = [data[i] for i in chunk]
        items, student = curriculum.batch(builder, items, step, chunk) if curriculum is not None else (items, None)
        yield make_batch(builder, items, cfg.train.method, device, shares_question(cfg), student)


def batch_token_count(batch: dict[str, TeacherBatch | StudentBatch]):
    """Tokens in a micro-batch, as a tensor on the batch's device (no host read): each sequence's
    real tokens (the student's question and answer parts, not its latents)."""
    return sum(part.token_count() for part in batch.values())


def step_tokens(builder: SequenceBuilder, data: list[Encoded], cfg: KavaConfig, steps_per_epoch: int, step: int,
                curriculum=None) -> int:
    """Tokens of optimizer step `step`, all processes together (for the run header)."""
    indices = step_indices(step, len(data), cfg, steps_per_epoch)
    total = sum(batch_token_count(b) for b in micro_batches(builder, data, indices, step, cfg, "cpu", curriculum))
    return int(total)  # one host read for the header
