"""The teacher: the same weights read Q + C + P + A (docs/algorithm.md §3) and give the targets.

One pass with gradient (its CE on C, P, A is part of the loss). The distillation targets
are taken from it and detached: the R-KV-compressed CoT keys/values (§4) and the
hidden states at the CODI position (the token before the answer's first digit) for the CODI loss. `teacher_targets:
separate_pass` takes the targets from a second, no-grad, eval-mode pass instead.

Under `kava.shared_question` the teacher reads `C + P + A` over the question's pass that
the student continues too (`kava.model.question`); the targets are the same, taken from
the continuation's own positions.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from kava.compression import RKVSelection, rkv_select
from kava.data.sequences import TeacherBatch
from kava.model.cache import kv_of, pass_cache, replays_layers
from kava.model.capture import capture_importance, enable_capture
from kava.model.kava_model import KavaModel
from kava.model.lm import lm_with_ce, no_logits
from kava.model.question import Question, question_pass


@dataclass(frozen=True)
class TargetSpec:
    """What the distillation needs from the teacher: the hidden states at the CODI position
    always; with `kv` the R-KV-compressed CoT keys and values (docs/algorithm.md §4: `budget`
    entries per head, `compression` with λ = `lam`; without, PCCoT's CODI targets only);
    `separate_pass`: taken from a no-grad, eval-mode pass of their own (`kava.teacher_targets:
    separate_pass` or `frozen`) instead of the training pass."""

    budget: int
    compression: str = "rkv"
    lam: float = 0.1
    kv: bool = True
    separate_pass: bool = False


@dataclass
class TeacherOutput:
    ce: torch.Tensor | None
    selections: list[RKVSelection] | None  # per layer, detached
    codi_hidden: list[torch.Tensor] | None  # per layer [B, d], detached
    question: Question | None = None  # the question's pass the student continues (kava.shared_question)


def _teacher_pass(model: KavaModel, batch: TeacherBatch, targets: TargetSpec | None, with_ce: bool = False,
                  question: Question | None = None):
    """(model output, importance or None, CE or None); targets: what the pass must keep for the
    targets (None: nothing). question: `batch` continues this question's pass (`continuation_batch`)."""
    mask = batch.attention_mask
    want_targets = targets is not None
    if question is not None:
        key_mask = torch.cat([question.mask, mask], dim=1)
        cache = pass_cache(question.kv, model.config)
        kwargs = dict(input_ids=batch.input_ids, attention_mask=key_mask, position_ids=batch.position_ids,
                      use_cache=True, past_key_values=cache, output_hidden_states=want_targets)
    else:
        key_mask = mask
        cache = pass_cache(None, model.config) if want_targets and replays_layers(model) else None
        kwargs = dict(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids,
                      use_cache=want_targets, past_key_values=cache, output_hidden_states=want_targets)
    lead = question.logits if question is not None else None
    needs_importance = want_targets and targets.kv and targets.compression in ("rkv", "attention")

    def run():
        if with_ce:
            out, ce = lm_with_ce(model, batch.labels, lead_logits=lead, **kwargs)
        else:
            out, ce = model.lm(**kwargs, logits_to_keep=no_logits(model, mask.device)), None
        if cache is not None:
            out.past_key_values = cache  # (some models return none under gradient checkpointing)
        return out, ce

    if needs_importance:
        enable_capture(model.backbone)  # idempotent; numerically identical attention
        offset = key_mask.shape[1] - mask.shape[1]
        with capture_importance(batch.query_mask, key_mask.bool(), offset) as importance:
            out, ce = run()
        return out, importance, ce
    out, ce = run()
    return out, None, ce


def _targets(out, importance, batch: TeacherBatch, targets: TargetSpec, generator):
    """R-KV selections over this pass's own tokens (a question prefix in the cache is skipped);
    their `positions` are the kept tokens' positions, as the index is in a full teacher sequence."""
    selections = [] if targets.kv else None
    for layer, (k, v) in enumerate(kv_of(out.past_key_values) if targets.kv else []):
        offset = k.shape[2] - batch.cot_mask.shape[1]
        imp = importance[layer][..., offset:] if importance is not None else None
        selections.append(
            rkv_select(
                k[:, :, offset:].detach(),
                v[:, :, offset:].detach(),
                None,
                batch.cot_mask,
                batch.query_mask,
                targets.budget,
                lam=targets.lam,
                method=targets.compression,
                generator=generator,
                importance=imp,
            )
        )
    if batch.continues_question and selections:  # after a question: indices into C + P + A -> positions
        pos = batch.position_ids
        selections = [sel._replace(positions=torch.where(
            sel.slot_mask, pos.gather(1, sel.positions.flatten(1)).view_as(sel.positions), 0)) for sel in selections]
    idx = batch.codi_index
    rows = torch.arange(idx.shape[0], device=idx.device)
    codi = [h[rows, idx].detach() for h in out.hidden_states[1:]]
    return selections, codi


def teacher_forward(
    model: KavaModel,
    batch: TeacherBatch,
    targets: TargetSpec | None,
    *,
    with_ce: bool = True,
    generator: torch.Generator | None = None,
    question: Question | None = None,
    target_weights=None,
) -> TeacherOutput:
    """The teacher's CE (with_ce) and the distillation targets `targets` asks for (None: CE only).

    question (`kava.shared_question`): `batch` continues this question (`batch.continues_question`,
    `SequenceBuilder.continuation_batch`). Its pass (`question.kv`, made here when missing) serves
    the training pass and is returned as the output's `question`, for the student to continue; a
    target pass without gradient (`targets.separate_pass`, or with_ce=False) runs the question
    again in eval mode. target_weights: a context manager under which that pass runs
    (`kava.teacher_targets: frozen`: the weights training started from)."""
    if batch.continues_question != (question is not None):
        raise ValueError("a continuation batch (SequenceBuilder.continuation_batch) needs its question, and only it")
    ce = selections = codi = None
    same_pass = targets is not None and not targets.separate_pass
    if with_ce:
        if question is not None and question.kv is None:
            question = question_pass(model, question, with_logits=True)
        out, importance, ce = _teacher_pass(model, batch, targets if same_pass else None, with_ce=True,
                                            question=question)
        if same_pass:
            selections, codi = _targets(out, importance, batch, targets, generator)
        del out
    if targets is not None and (targets.separate_pass or not with_ce):
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), (target_weights() if target_weights is not None else contextlib.nullcontext()):
                q = question_pass(model, question, with_logits=False) if question is not None else None
                out, importance, _ = _teacher_pass(model, batch, targets, question=q)
                selections, codi = _targets(out, importance, batch, targets, generator)
        finally:
            model.train(was_training)
    return TeacherOutput(ce=ce, selections=selections, codi_hidden=codi, question=question if with_ce else None)
