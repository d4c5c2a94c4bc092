"""The training objective as one module, so DDP/FSDP wrap a single forward (docs/algorithm.md §5).

`method: kava` — L = CE_student + CE_teacher + α₁·L_CODI + α₂·L_KV (α₂ = 0 is PCCoT);
`method: cot` — the teacher's CE alone (CoT fine-tuning baseline; `icot` the same on cut CoTs);
`method: direct` — CE on Q + P + A (No-CoT fine-tuning baseline).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from kava.config import KavaConfig, shares_question
from kava.data.sequences import StudentBatch, TeacherBatch
from kava.losses import codi_loss, kv_loss
from kava.model.kava_model import KavaModel
from kava.model.latents import selections_state
from kava.model.lm import lm_with_ce
from kava.model.question import Question, question_gradient, question_pass
from kava.model.rope import unrotate_keys
from kava.model.student import student_forward
from kava.model.teacher import TargetSpec, TeacherOutput, teacher_forward


class KavaObjective(nn.Module):
    def __init__(self, model: KavaModel, cfg: KavaConfig):
        super().__init__()
        self.model = model
        self.cfg = cfg
        # kava.teacher_targets: frozen: the trainable weights as they are now (built, not yet resumed)
        frozen = cfg.kava.teacher_targets == "frozen" and cfg.train.method == "kava"
        self._frozen = FrozenWeights(model) if frozen else None

    def two_phase(self) -> bool:
        """Whether `forward_backward` runs this objective in two phases (KaVa: the teacher's
        forward and backward, then the student's), so that the teacher's activations are freed
        before the student's are made. The gradients equal one backward of the whole loss:
        the student's terms only see the teacher's detached targets."""
        return self.cfg.train.method == "kava"

    def forward(self, batch: dict[str, TeacherBatch | StudentBatch], phase: str | None = None,
                teacher: TeacherOutput | None = None) -> dict[str, torch.Tensor]:
        """phase None: the whole objective. phase "teacher": the teacher pass only; returns its
        CE as `loss` (when trained) and its detached targets as `teacher`. phase "student": the
        student's CE and the distillation terms toward `teacher` (the teacher's CE excluded)."""
        method = self.cfg.train.method
        if method in ("cot", "icot"):  # iCoT: the teacher's sequence with its CoT cut (kava.training.icot)
            _, ce = _sequence_ce(self.model, batch["teacher"])
            return {"loss": ce, "ce_teacher": ce.detach()}
        if method == "direct":
            _, ce = _sequence_ce(self.model, batch["direct"])
            return {"loss": ce, "ce_student": ce.detach()}
        k = self.cfg.kava
        reads_teacher = k.student_latents == "teacher"
        if phase in (None, "teacher"):
            question = self._question(batch)
            if question is not None and phase == "teacher":
                question = question.detached()  # the teacher's backward stops at the question (kava.model.question)
            teacher = teacher_forward(self.model, batch["teacher"], target_spec(self.cfg), with_ce=k.teacher_ce,
                                      target_weights=self._frozen, question=question)
            if phase == "teacher":
                first = {"teacher": teacher}
                if teacher.ce is not None:
                    first.update(loss=teacher.ce, ce_teacher=teacher.ce.detach())
                return first
        elif phase != "student" or teacher is None:
            raise ValueError(f"phase must be None, 'teacher' or 'student' (with teacher=), got {phase!r}")
        override = None
        if reads_teacher:
            def override(state):
                return selections_state(self.model, state, teacher.selections, move=k.kv_keys == "pre_rope")

        shared = teacher.question
        student = student_forward(self.model, batch["student"], question=shared.source if shared is not None else None,
                                  latent_override=override)
        loss = student.ce + question_gradient(shared)
        out = {"ce_student": student.ce.detach()}
        if teacher.ce is not None and phase is None:
            loss = loss + teacher.ce
            out["ce_teacher"] = teacher.ce.detach()
        if k.alpha_codi > 0:
            lc = codi_loss(student.codi_hidden, teacher.codi_hidden, k.codi_layer_std)
            loss = loss + k.alpha_codi * lc
            out["codi"] = lc.detach()
        if k.alpha_kv > 0:
            student_kv, selections = student.latent_kv, teacher.selections
            if k.kv_keys == "pre_rope":
                student_kv, selections = _unrotated(self.model, batch, student_kv, selections)
            lk = kv_loss(student_kv, selections, k.kv_loss, k.kv_loss_layer_std, k.kv_loss_reduction)
            loss = loss + k.alpha_kv * lk
            out["kv"] = lk.detach()
        out["loss"] = loss
        return out


    def _question(self, batch) -> Question | None:
        """kava.shared_question: the question both read (its pass made here when the teacher trains on it)."""
        continuation = batch["teacher"].continues_question
        if continuation != shares_question(self.cfg):
            raise ValueError(f"the batch was built with shared_question={continuation} but shares_question(cfg) is "
                             f"{shares_question(self.cfg)}: pass make_batch(..., shared_question=shares_question(cfg))")
        if not continuation:
            return None
        s = batch["student"]
        question = Question(s.q_ids[:, :-1], s.q_mask[:, :-1])
        if self.cfg.kava.teacher_ce:  # the teacher's training pass and the student read one question pass
            question = question_pass(self.model, question, with_logits=True)
        return question


class FrozenWeights:
    """The trainable weights of a model at one moment, put in place of the live ones for the
    duration of a `with frozen():` block (`kava.teacher_targets: frozen`).

    A copy of the trainable tensors only (LoRA: the adapters, whose initial B = 0 makes the
    model the base model; full fine-tuning: every weight, so twice the weights' memory). The
    swap replaces the modules' parameter entries (no in-place write), so graphs already built
    over the live weights stay valid; a weight tied between modules gets one copy."""

    def __init__(self, model: nn.Module):
        self.snapshot = {id(p): nn.Parameter(p.detach().clone(), requires_grad=False)
                         for p in model.parameters() if p.requires_grad}
        # every (module, name) entry holding a trainable weight, found once (a tied weight has two)
        self.slots = [(m, name, p) for m in model.modules() for name, p in m._parameters.items()
                      if p is not None and id(p) in self.snapshot]

    @contextlib.contextmanager
    def __call__(self):
        for m, name, p in self.slots:
            frozen = self.snapshot[id(p)]
            if frozen.device != p.device:  # the model moved after the snapshot (accelerate's prepare)
                frozen = self.snapshot[id(p)] = nn.Parameter(frozen.data.to(p.device), requires_grad=False)
            m._parameters[name] = frozen
        try:
            yield
        finally:
            for m, name, p in self.slots:
                m._parameters[name] = p


def _unrotated(model: KavaModel, batch, student_kv, selections):
    """RoPE undone on the student's latent keys and the teacher's kept keys (`kava.kv_keys: pre_rope`)."""
    M = student_kv[0][0].shape[2]
    q_mask = batch["student"].q_mask
    # latent slot i follows the real tokens of Q + <bot>: its position is their count + i
    s_pos = q_mask.sum(-1, keepdim=True) + torch.arange(M, device=q_mask.device)
    t = batch["teacher"]
    out_s, out_t = [], []
    for (ks, vs), sel in zip(student_kv, selections, strict=True):
        out_s.append((unrotate_keys(model.backbone, ks, s_pos), vs))
        # (after a shared question the selections already hold positions, not indices)
        t_pos = (sel.positions if t.continues_question
                 else t.position_ids.gather(1, sel.positions.flatten(1)).view_as(sel.positions))
        out_t.append(sel._replace(keys=unrotate_keys(model.backbone, sel.keys, t_pos)))
    return out_s, out_t


def _sequence_ce(model: KavaModel, t: TeacherBatch):
    """A plain language-model pass over a teacher (or No-CoT) sequence and its CE."""
    return lm_with_ce(model, t.labels, input_ids=t.input_ids, attention_mask=t.attention_mask,
                      position_ids=t.position_ids)


def target_spec(cfg: KavaConfig) -> TargetSpec | None:
    """What the config's losses need from the teacher (None: its CE only): the CODI targets for
    α₁ > 0, the R-KV selections for α₂ > 0 or `kava.student_latents: teacher`."""
    k = cfg.kava
    reads_teacher = k.student_latents == "teacher"
    if not (k.alpha_codi > 0 or k.alpha_kv > 0 or reads_teacher):
        return None
    return TargetSpec(budget=cfg.latent.num_latents, compression=k.compression, lam=k.rkv_lambda,
                      kv=k.alpha_kv > 0 or reads_teacher,
                      separate_pass=k.teacher_targets in ("separate_pass", "frozen"))
