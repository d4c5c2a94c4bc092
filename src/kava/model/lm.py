"""Calls of the language model whose logits are partly or not at all needed (docs/algorithm.md §2, §3).

`KavaModel.lm` is the one entry point into the backbone; these helpers choose what its
vocabulary projection computes. The latent passes read hidden states only (`no_logits`);
a training pass needs logits only where the next token is labelled (`lm_with_ce`), and
`causal_ce` is the plain next-token cross-entropy they are checked against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kava.model.kava_model import KavaModel

# Architectures whose causal-LM forward slices `logits_to_keep` with transformers'
# `slice_logits_to_keep` (a bool [B, S] mask: packed rows; an empty index: no rows).
_SLICING_TYPES = ("llama", "qwen2", "qwen3", "mistral")


def _slices_logits(model: KavaModel) -> bool:
    return getattr(model.config.get_text_config(), "model_type", None) in _SLICING_TYPES


def no_logits(model: KavaModel, device) -> torch.Tensor | int:
    """`logits_to_keep` for a pass whose logits are not used (the latent passes): no vocabulary
    projection at all where the architecture allows it, else the last position only."""
    return torch.zeros(0, dtype=torch.long, device=device) if _slices_logits(model) else 1


def lm_with_ce(model: KavaModel, labels: torch.Tensor, lead_logits: torch.Tensor | None = None, **kwargs):
    """(output of model.lm(**kwargs), mean next-token CE on `labels`).

    Equal to `causal_ce(model.lm(**kwargs).logits, labels)`, but the vocabulary projection
    is computed only at the positions whose next token is labelled (the CoT, P and A of a
    teacher sequence: not the question, not the padding): `out.logits` is then [N, V] over
    those positions in order. This saves the head's FLOPs and the [B, S, V] logits (and
    their float32 copy and gradient) on every unlabelled position.

    lead_logits [B, V]: the logits of the position before the sequence (the question's last
    one, when the sequence continues a question's cache): they predict `labels[:, 0]`, and
    the mean runs over those labels too.
    """
    if _slices_logits(model):
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = labels[:, 1:] != -100
        out = model.lm(**kwargs, logits_to_keep=keep)
        if out.logits.dim() == 2:
            logits, targets = out.logits, labels[:, 1:][keep[:, :-1]]
        else:  # pragma: no cover - a model that ignored the mask
            logits, targets = out.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()
    else:
        out = model.lm(**kwargs)
        logits, targets = out.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()
    if lead_logits is not None:
        logits, targets = torch.cat([lead_logits, logits]), torch.cat([labels[:, 0], targets])
    return out, F.cross_entropy(logits.float(), targets, ignore_index=-100)


def causal_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens (labels aligned with inputs)."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                           ignore_index=-100)
