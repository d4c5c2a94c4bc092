"""The question's pass, computed once for the teacher and the student (`kava.shared_question`).

The teacher reads `Q + C + P + A` and the student `Q + <bot> + latents + <eot> + P + A`:
both begin with the same question, at the same positions, with the same weights. So a
KaVa step runs the left-padded question once; the teacher's `C + P + A` and the
student's `<bot>` + latents continue over its keys and values, and the gradients of
both flow back through that one computation. This saves the student's question tokens
(on GSM8k the largest part of its sequence) in the forward and the backward pass.

Under the two-phase step (`kava.training.trainer.forward_backward`) the teacher's
backward runs before the student exists, so the teacher continues over *detached copies*
of the question's tensors (`Question.detached`): its backward stops there and leaves
their gradients in `.grad`. The student continues over the question itself, and its loss
carries `question_gradient(...)`, a zero that hands those stored gradients to the
question's tensors in the student's backward; the question's graph is then traversed
once, with the sum of both gradients, which is what one backward of the whole loss does.

With LoRA dropout on, teacher and student see the same dropout masks on the question
(two separate passes draw two). `kava.shared_question: false` runs the question twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kava.model.cache import KV, kv_of, pass_cache, replays_layers
from kava.model.kava_model import KavaModel
from kava.model.lm import no_logits
from kava.model.positions import position_ids_from_mask


@dataclass
class Question:
    ids: torch.Tensor  # [B, Lq] left-padded Q (no <bot>)
    mask: torch.Tensor  # [B, Lq]
    kv: KV | None = None  # per layer ([B, H_kv, Lq, D], ...) once the pass has run
    logits: torch.Tensor | None = None  # [B, V] at the last column: they predict the teacher's first label
    leaves_of: Question | None = field(default=None, repr=False)  # the question these tensors were detached from

    @property
    def source(self) -> Question:
        """The question with its graph (itself unless these are detached copies)."""
        return self.leaves_of if self.leaves_of is not None else self

    def tensors(self) -> list[torch.Tensor]:
        out = [t for k, v in (self.kv or []) for t in (k, v)]
        return out + ([self.logits] if self.logits is not None else [])

    def detached(self) -> Question:
        """The same question with its tensors as leaves that collect their own gradient."""
        if not torch.is_grad_enabled() or self.kv is None:
            return self
        kv = [(_leaf(k), _leaf(v)) for k, v in self.kv]
        logits = _leaf(self.logits) if self.logits is not None else None
        return Question(self.ids, self.mask, kv, logits, leaves_of=self)


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_(t.requires_grad)


def question_pass(model: KavaModel, question: Question, with_logits: bool) -> Question:
    """Run the question; with_logits: also its last column's logits (the teacher's first label)."""
    cache = pass_cache(None, model.config) if replays_layers(model) else None
    out = model.lm(
        input_ids=question.ids,
        attention_mask=question.mask,
        position_ids=position_ids_from_mask(question.mask),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1 if with_logits else no_logits(model, question.ids.device),
    )
    cache = out.past_key_values if cache is None else cache
    logits = out.logits[:, -1] if with_logits else None
    return Question(question.ids, question.mask, kv_of(cache), logits)


class _StoredGradient(torch.autograd.Function):
    """A zero whose backward gives each input the gradient stored for it (already scaled as
    the loss it came from was: the same `backward` call scales both phases alike)."""

    @staticmethod
    def forward(ctx, grads, *tensors):
        ctx.grads = grads
        return tensors[0].new_zeros(())

    @staticmethod
    def backward(ctx, _):
        return (None, *ctx.grads)


def question_gradient(leaves: Question | None) -> torch.Tensor | float:
    """0 with the gradient the teacher's backward left on `leaves` (see `Question.detached`),
    to add to the student's loss; 0.0 when there is none."""
    if leaves is None or leaves.leaves_of is None or not torch.is_grad_enabled():
        return 0.0
    pairs = [(t, leaf.grad) for t, leaf in zip(leaves.leaves_of.tensors(), leaves.tensors()) if leaf.grad is not None]
    if not pairs:
        return 0.0
    tensors, grads = zip(*pairs)
    return _StoredGradient.apply(list(grads), *tensors)
