"""Latent warm-up: the first optimizer steps train only the new latent parameters (docs/algorithm.md §2).

At the start of KaVa fine-tuning the projection is random and `<latent>` (and on a model
that never saw them, `<bot>` and `<eot>`) are new tokens: the student's answer pass reads M
garbage latents, its CE starts near log(vocabulary), and its gradients reshape the shared
weights at once. On the CPU benchmark's 0.6M-parameter model this wrecked the teacher in
the first ten steps (its accuracy fell from 99.6% to 23% and never came back, so its CODI and
KV targets stopped carrying the answer; docs/quality.md). `train.latent_warmup_steps: N`
trains only the projection and the special tokens' embedding rows for the first N steps,
with the backbone frozen — linear probing before fine-tuning (LP-FT, Kumar et al. 2022,
"Fine-Tuning can Distort Pretrained Features") — so the latents learn to look like the
teacher's CoT before the backbone adapts to them [decision; off in the paper configs].

Frozen parameters get no gradient at all (`grad = None`), so AdamW leaves them and their
optimizer state untouched (no weight decay either) and starts their moments afresh when they
are unfrozen. In full fine-tuning the special tokens' rows live in the embedding matrix: its
gradient is kept on those rows only (weight decay, if any, still applies to the whole matrix).
"""

from __future__ import annotations

import torch


def latent_parameters(model) -> tuple[set[int], list[tuple[torch.nn.Parameter, torch.Tensor]]]:
    """(ids of the parameters trained whole, [(embedding matrix, its special-token rows)])."""
    whole = {id(p) for p in model.projection.parameters()} if model.projection is not None else set()
    for name, p in model.backbone.named_parameters():
        if "trainable_tokens_delta" in name and p.requires_grad:  # peft's trainable token rows (LoRA)
            whole.add(id(p))
    rows = []
    special = torch.tensor([model.special.bot, model.special.eot, model.special.latent])
    for module in (model.backbone.get_input_embeddings(), model.backbone.get_output_embeddings()):
        w = getattr(module, "weight", None)
        if w is not None and w.requires_grad and id(w) not in whole and all(w is not r[0] for r in rows):
            rows.append((w, special.to(w.device)))
    return whole, rows


def keep_latent_gradients(model, params) -> None:
    """Drop every gradient but the latent parameters' (call between backward and the optimizer step)."""
    whole, rows = latent_parameters(model)
    masked = {id(w): idx for w, idx in rows}
    for p in params:
        if p.grad is None or id(p) in whole:
            continue
        if id(p) in masked:
            keep = torch.zeros(p.shape[0], dtype=torch.bool, device=p.device)
            keep[masked[id(p)]] = True
            p.grad.mul_(keep.view(-1, *([1] * (p.dim() - 1))).to(p.grad.dtype))
        else:
            p.grad = None
