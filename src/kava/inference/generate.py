"""Batched generation with the KV cache, in three modes, counting forward passes (docs/algorithm.md §2).

    latent  (the student)  Q + <bot> -> pass 0 + T Jacobi passes -> <eot> + P -> answer tokens
            forward passes = 1 + T + 1 + (generated tokens − 1)
    cot     (the teacher)  Q (+ <bot>, prompt.teacher_delimiters) -> chain of thought, answer prefix and answer
            forward passes = generated tokens (the prefill makes the first)
    direct  (No-CoT)       Q + P -> answer tokens; forward passes = generated tokens

Questions are left-padded and positions follow the mask, so a batch gives the answers
of batch size 1. A model call counts once for each example still running in it;
finished examples are dropped from the batch and the cache instead of being decoded on.
Generated tokens include the final EOS when the model emits one. Decoding is greedy, or sampled
(`kava.inference.sampling`): only generated tokens are sampled, never the latent passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kava.data.sequences import SequenceBuilder
from kava.inference.latent_control import controlled_latents
from kava.inference.sampling import Sampler, Sampling
from kava.model.cache import select_batch
from kava.model.kava_model import KavaModel
from kava.model.positions import extend_mask, position_ids_from_mask, positions_for_new

MODES = ("latent", "cot", "direct")
DEFAULT_MAX_NEW_TOKENS = {"latent": 16, "direct": 16, "cot": 256}


@dataclass
class Generation:
    question: str
    text: str  # the decoded generated tokens (special tokens removed)
    token_ids: list[int]
    forward_passes: int
    mode: str
    latent_hidden: torch.Tensor | None = field(default=None, repr=False)  # [M, d], latent mode

    @property
    def generated_tokens(self) -> int:
        return len(self.token_ids)


def _greedy(logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
    return logits.argmax(-1)


def _decode_loop(model, cache, mask, logits, passes, max_new_tokens, eos_ids, pick):
    """Decoding of every example until EOS or the budget, `pick(logits, rows)` choosing each
    running example's next token (greedy, or a `Sampler`); returns token lists.

    Per step: one host read of the picked tokens (not one per example), and the next
    position is the previous one + 1 instead of a cumulative sum over the whole mask."""
    B = logits.shape[0]
    tokens: list[list[int]] = [[] for _ in range(B)]
    running = list(range(B))
    position = mask.sum(-1, keepdim=True) - 1  # [B, 1]: the last real token's position
    nxt = pick(logits, running)
    while True:
        keep = []
        for j, (b, t) in enumerate(zip(running, nxt.tolist())):
            tokens[b].append(t)
            if t not in eos_ids and len(tokens[b]) < max_new_tokens:
                keep.append(j)
        if not keep:
            return tokens
        if len(keep) < len(running):
            k = torch.tensor(keep, device=logits.device)
            select_batch(cache, k)
            running, mask, nxt, position = [running[j] for j in keep], mask[k], nxt[k], position[k]
        mask = extend_mask(mask, 1)
        position = position + 1
        out = model.lm(
            input_ids=nxt[:, None],
            attention_mask=mask,
            position_ids=position,
            past_key_values=cache,
            use_cache=True,
        )
        for b in running:
            passes[b] += 1
        nxt = pick(out.logits[:, -1], running)


def stop_token_ids(model: KavaModel, builder: SequenceBuilder) -> set[int]:
    """The tokenizer's EOS plus every end token of the model's generation config (Llama 3 has several)."""
    ids = {builder.eos_id} if builder.eos_id is not None else set()
    gen_cfg = getattr(model.backbone, "generation_config", None)
    extra = getattr(gen_cfg, "eos_token_id", None) if gen_cfg is not None else None
    if isinstance(extra, int):
        ids.add(extra)
    elif extra:
        ids.update(int(i) for i in extra)
    return ids


@torch.no_grad()
def generate(
    model: KavaModel,
    builder: SequenceBuilder,
    questions: list[str],
    mode: str = "latent",
    max_new_tokens: int | None = None,
    sampling: Sampling | None = None,
    sample_keys: list[int] | None = None,
    sample: int = 0,
    return_latents: bool = False,
    ignore_eos: bool = False,
    latent_control: str | None = None,
    donors: list[str] | None = None,
    steps: list[list[str]] | None = None,
    teacher_settings: dict | None = None,
) -> list[Generation]:
    """Greedy, or with `sampling` (kava.inference.sampling) sampled: each question's stream is
    seeded by (sampling.seed, `sample`, its `sample_keys` entry; default its position here), so its
    tokens do not depend on the rest of the batch. Latent passes are never sampled.

    ignore_eos: decode exactly max_new_tokens (speed benchmarks of untrained models).

    latent_control (latent mode): answer with latents other than the question's own —
    "shuffled" (`donors`: the question whose latents each one gets), "pass0" (T = 0) or
    "teacher" (`steps`: each question's CoT) — see `kava.inference.latent_control`.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    if latent_control is not None and mode != "latent":
        raise ValueError(f"a latent control needs mode 'latent', not {mode!r}")
    if not questions:
        return []
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    max_new = max_new_tokens if max_new_tokens is not None else DEFAULT_MAX_NEW_TOKENS[mode]
    device = model.device
    q_ids = [builder.question_ids(q) for q in questions]
    passes = [0] * len(questions)
    latent_hidden = None
    if mode == "latent":
        qb = builder.question_batch(q_ids, add_bot=True)
        state = controlled_latents(model, builder, qb["input_ids"].to(device), qb["attention_mask"].to(device),
                                   latent_control, questions=questions, donors=donors, steps=steps,
                                   teacher_settings=teacher_settings)
        latent_hidden = state.hidden
        for b in range(len(questions)):
            passes[b] += state.passes
        prompt = torch.tensor([[builder.special.eot] + builder.p_ids], device=device).expand(len(questions), -1)
        mask = extend_mask(state.mask, prompt.shape[1])
        out = model.lm(
            input_ids=prompt,
            attention_mask=mask,
            position_ids=positions_for_new(mask, prompt.shape[1]),
            past_key_values=state.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        cache = state.cache
    else:
        if mode == "direct":
            q_ids = [q + builder.p_ids for q in q_ids]
        else:
            q_ids = [builder.cot_prompt_ids(q) for q in questions]
        qb = builder.question_batch(q_ids, add_bot=False)
        mask = qb["attention_mask"].to(device)
        out = model.lm(
            input_ids=qb["input_ids"].to(device),
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
            use_cache=True,
            logits_to_keep=1,
        )
        cache = out.past_key_values
    for b in range(len(questions)):
        passes[b] += 1
    eos_ids = set() if ignore_eos else stop_token_ids(model, builder)
    if sampling is not None:
        keys = list(range(len(questions))) if sample_keys is None else list(sample_keys)
        if len(keys) != len(questions):
            raise ValueError(f"sample_keys has {len(keys)} entries for {len(questions)} questions")
        pick = Sampler(sampling, keys, sample)
    else:
        pick = _greedy
    tokens = _decode_loop(model, cache, mask, out.logits[:, -1], passes, max_new, eos_ids, pick)
    tok = builder.tok
    return [
        Generation(
            question=q,
            text=tok.decode(t, skip_special_tokens=True).strip(),
            token_ids=t,
            forward_passes=passes[b],
            mode=mode,
            latent_hidden=latent_hidden[b].cpu() if (return_latents and latent_hidden is not None) else None,
        )
        for b, (q, t) in enumerate(zip(questions, tokens))
    ]
