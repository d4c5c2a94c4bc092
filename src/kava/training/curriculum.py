"""Coconut's curriculum as a schedule any latent student can train under (`curriculum:`).

Stage k replaces the first k CoT steps of the student's sequence with latents and keeps the
others written out, trained with CE like P and A [coconut: `dataset.py`,
`get_cot_latent_dataset`, with `pad_latent_to_max: True` as in all its configs]:

    stage k ≤ S:   Q + <bot> + <latent>×(k·c) + <eot> + steps[k:] + P + A
    stage S + 1:   Q + <bot> + <latent>×(S·c) + <eot> + P + A          (the final stage)

S = `curriculum.stages` (Coconut's `max_latent_stage`), c = `curriculum.thoughts_per_step`
(`c_thought`); with c unset every stage has `latent.num_latents` latents and only the
written CoT shrinks (the form KaVa's KV loss needs: M latents toward M compressed entries).
The final stage is what `generate` runs (M = S·c latents, then `<eot>` + P).

- The stage of optimizer step s is `start_stage + s // steps_per_stage`, capped at S + 1
  (Coconut: `epoch // epochs_per_stage`; `curriculum.epochs_per_stage` converts epochs to steps).
  `curriculum.stage0_epochs` gives stage 0 its own length; the stages after it follow at
  `steps_per_stage` (CODI's Coconut run on Llama-1B: 5 epochs of CoT, then 5 with thoughts).
- `mix_prob` (Coconut's `uniform_prob`): each example, with this probability, is trained
  at a stage drawn uniformly from 0..(its number of steps) instead — earlier or later, as in
  Coconut's code. The draw is a function of (seed, epoch, example index), so a resumed or
  multi-process run draws the same stages.
- `reset_optimizer`: the optimizer's state (AdamW moments and step counts) is cleared before
  the first step of every stage (`stage`), of every epoch (`epoch`: Coconut's code re-creates
  the optimizer every epoch when `reset_optimizer: True`), or never. The learning-rate
  schedule goes on. The stage is a function of the step, so a resumed run resets where an
  uninterrupted one would; the checkpoint records the stage, and resuming with a config that
  puts that step at another stage is an error.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from kava.config import KavaConfig
from kava.data.sequences import Encoded, SequenceBuilder
from kava.errors import KavaError
from kava.training.icot import IcotSchedule


class Curriculum:
    def __init__(self, cfg: KavaConfig, steps_per_epoch: int, total_steps: int):
        c = cfg.curriculum
        self.cfg = c
        self.num_latents = cfg.latent.num_latents
        self.seed = cfg.seed
        self.steps_per_epoch = steps_per_epoch
        self.final_stage = c.stages + 1
        self.steps_per_stage = c.steps_per_stage or max(1, round(c.epochs_per_stage * steps_per_epoch))
        # stage 0's length (stage0_epochs needs start_stage 0); the later stages start after it
        self.stage0_steps = (max(1, round(c.stage0_epochs * steps_per_epoch)) if c.stage0_epochs is not None
                             else self.steps_per_stage)
        final_at = self._start_of(self.final_stage)
        if final_at >= total_steps:
            raise KavaError(
                f"the curriculum reaches its final stage ({self.final_stage}) at step {final_at}, but training "
                f"stops at step {total_steps}: the model would never train as it is evaluated; lower "
                "curriculum.steps_per_stage (or epochs_per_stage), raise curriculum.start_stage or train longer"
            )

    def _start_of(self, stage: int) -> int:
        """The first optimizer step of `stage` (≥ start_stage)."""
        start = self.cfg.start_stage
        if start == 0 and stage > 0:
            return self.stage0_steps + (stage - 1) * self.steps_per_stage
        return (stage - start) * self.steps_per_stage

    def stage(self, step: int) -> int:
        """The scheduled stage of optimizer step `step` (0-based)."""
        start = self.cfg.start_stage
        if start == 0 and step >= self.stage0_steps:
            return min(1 + (step - self.stage0_steps) // self.steps_per_stage, self.final_stage)
        if start == 0:
            return 0
        return min(start + step // self.steps_per_stage, self.final_stage)

    def resets_optimizer(self, step: int) -> bool:
        """Whether the optimizer's state is cleared before step `step`."""
        if step == 0 or self.cfg.reset_optimizer == "never":
            return False
        if self.cfg.reset_optimizer == "epoch":
            return step % self.steps_per_epoch == 0
        return self.stage(step) != self.stage(step - 1)

    def example_stage(self, step: int, index: int, num_steps: int) -> int:
        """The stage example `index` (of the training set) is trained at in step `step`."""
        stage = self.stage(step)
        if self.cfg.mix_prob > 0:
            epoch = step // self.steps_per_epoch
            rng = random.Random((self.seed * 1_000_003 + epoch) * 10_000_019 + index)
            if rng.random() < self.cfg.mix_prob:
                stage = rng.randrange(num_steps + 1)
        return min(stage, self.final_stage)

    def view(self, stage: int, num_steps: int) -> tuple[int, int]:
        """(latents, steps removed) of an example with `num_steps` CoT steps at `stage`."""
        removed, thoughts = (num_steps, self.cfg.stages) if stage > self.cfg.stages else (stage, stage)
        c = self.cfg.thoughts_per_step
        return (thoughts * c if c is not None else self.num_latents), min(removed, num_steps)

    def student_inputs(self, builder: SequenceBuilder, items: list[Encoded], stages: list[int]) -> dict:
        """The keyword arguments of `builder.student_batch` for these examples at these stages."""
        num_latents, cot = [], []
        for e, stage in zip(items, stages, strict=True):
            n, removed = self.view(stage, len(e.steps))
            num_latents.append(n)
            cot.append(builder.cot_ids(e.steps[removed:]))
        return {"num_latents": num_latents, "cot": cot}

    def batch_inputs(self, builder: SequenceBuilder, items: list[Encoded], step: int, indices: list[int]) -> dict:
        """`student_inputs` for one training micro-batch (`indices`: the items' dataset indices)."""
        stages = [self.example_stage(step, i, len(e.steps)) for e, i in zip(items, indices, strict=True)]
        return self.student_inputs(builder, items, stages)

    def batch(self, builder: SequenceBuilder, items: list[Encoded], step: int, indices: list[int]):
        """(items, the student's inputs) of one training micro-batch (the schedule interface shared
        with `kava.training.icot.IcotSchedule`)."""
        return items, self.batch_inputs(builder, items, step, indices)

    def validation_batch(self, builder: SequenceBuilder, items: list[Encoded], step: int):
        """(items, the student's inputs) at step `step`'s stage for every example (no mixing)."""
        return items, self.student_inputs(builder, items, [self.stage(step)] * len(items))

    def record(self, step: int) -> dict:
        """What the log and the checkpoint record of step `step`."""
        return {"curriculum_stage": self.stage(step)}

    def check_resume(self, state: dict) -> None:
        """A checkpoint's recorded stage must be the one this config gives its step."""
        step, recorded = state.get("step", 0), state.get("curriculum_stage")
        if recorded is not None and step > 0 and recorded != self.stage(step - 1):
            raise KavaError(
                f"the checkpoint at step {step} was trained at curriculum stage {recorded}, but this config puts "
                f"that step at stage {self.stage(step - 1)}; resume with the curriculum settings the run started with"
            )


def training_schedule(cfg: KavaConfig, steps_per_epoch: int, total_steps: int, data: list[Encoded],
                      batch_indices: Callable[[int], list[int]]):
    """The config's schedule: a `Curriculum`, an `IcotSchedule` (`train.method: icot`), or None.
    batch_indices(step): the dataset indices of step `step`'s whole batch."""
    if cfg.train.method == "icot":
        return IcotSchedule(cfg, steps_per_epoch, total_steps, [len(e.c) for e in data], batch_indices)
    return Curriculum(cfg, steps_per_epoch, total_steps) if cfg.curriculum.enabled else None


def reset_optimizer_state(optimizer) -> None:
    """Clear AdamW's moments and step counts (what a new optimizer over the same parameters has)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it
    inner.state.clear()
