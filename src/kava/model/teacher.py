"""The teacher: the same weights read Q + C + P + A (SPEC.md §3) and give the targets.

One pass with gradient (its CE on C, P, A is part of the loss). The distillation targets
are taken from it and detached: the R-KV-compressed CoT keys/values (§4) and the
hidden states at the CODI position (the token before the answer's first digit) for the CODI loss. `teacher_targets:
separate_pass` takes the targets from a second, no-grad, eval-mode pass instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kava.compression import RKVSelection, rkv_select
from kava.model.cache import kv_of, pass_cache, replays_layers
from kava.model.capture import capture_importance, enable_capture
from kava.model.kava_model import KavaModel
from kava.model.positions import position_ids_from_mask
from kava.model.student import lm_with_ce


@dataclass
class TeacherOutput:
    ce: torch.Tensor | None
    selections: list[RKVSelection] | None  # per layer, detached
    codi_hidden: list[torch.Tensor] | None  # per layer [B, d], detached


def _teacher_pass(model: KavaModel, batch, want_targets: bool, method: str, want_kv: bool = True, with_ce: bool = False):
    """(model output, importance or None, CE or None)."""
    mask = batch["attention_mask"]
    cache = pass_cache(None, model.config) if want_targets and replays_layers(model) else None
    kwargs = dict(
        input_ids=batch["input_ids"],
        attention_mask=mask,
        position_ids=position_ids_from_mask(mask),
        use_cache=want_targets,
        past_key_values=cache,
        output_hidden_states=want_targets,
    )
    needs_importance = want_targets and want_kv and method in ("rkv", "attention")

    def run():
        out, ce = lm_with_ce(model, batch["labels"], **kwargs) if with_ce else (model.lm(**kwargs), None)
        if cache is not None:
            out.past_key_values = cache  # (some models return none under gradient checkpointing)
        return out, ce

    if needs_importance:
        enable_capture(model.backbone)  # idempotent; numerically identical attention
        with capture_importance(batch["query_mask"], mask.bool()) as importance:
            out, ce = run()
        return out, importance, ce
    out, ce = run()
    return out, None, ce


def _targets(model, out, importance, batch, budget, lam, method, generator, want_kv=True):
    selections = [] if want_kv else None
    for layer, (k, v) in enumerate(kv_of(out.past_key_values) if want_kv else []):
        imp = importance[layer] if importance is not None else None
        selections.append(
            rkv_select(
                k.detach(),
                v.detach(),
                None,
                batch["cot_mask"],
                batch["query_mask"],
                budget,
                lam=lam,
                method=method,
                generator=generator,
                importance=imp,
            )
        )
    idx = batch["codi_index"]
    rows = torch.arange(idx.shape[0], device=idx.device)
    codi = [h[rows, idx].detach() for h in out.hidden_states[1:]]
    return selections, codi


def teacher_forward(
    model: KavaModel,
    batch: dict[str, torch.Tensor],
    *,
    budget: int,
    lam: float = 0.1,
    method: str = "rkv",
    with_ce: bool = True,
    want_targets: bool = True,
    separate_pass: bool = False,
    generator: torch.Generator | None = None,
    want_kv: bool = True,
) -> TeacherOutput:
    """want_targets=False: CE only. want_kv=False (PCCoT): the CODI targets only, no R-KV."""
    ce = selections = codi = None
    if with_ce:
        out, importance, ce = _teacher_pass(model, batch, want_targets and not separate_pass, method, want_kv, with_ce=True)
        if want_targets and not separate_pass:
            selections, codi = _targets(model, out, importance, batch, budget, lam, method, generator, want_kv)
        del out
    if want_targets and (separate_pass or not with_ce):
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out, importance, _ = _teacher_pass(model, batch, True, method, want_kv)
                selections, codi = _targets(model, out, importance, batch, budget, lam, method, generator, want_kv)
        finally:
            model.train(was_training)
    return TeacherOutput(ce=ce, selections=selections, codi_hidden=codi)
