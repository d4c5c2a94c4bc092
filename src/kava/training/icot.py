"""iCoT — implicit chain of thought by stepwise internalization (Deng et al. 2024) — as a schedule
of CoT fine-tuning (`train.method: icot`, section `icot:`).

The official code [icot: da03/Internalize_CoT_Step_by_Step, `src/train.py`: `main`,
`compute_lambda_distribution`] fine-tunes on `Q <eos> C <eos> A <eos>` (CE on everything after
the first `<eos>`) and deletes tokens from the front of C as training goes on:

- `scheduled_to_remove` starts at `--remove_start_from` and grows by one every
  `steps_per_removed_token = int(round(steps_per_epoch / remove_per_epoch))` batches (every
  batch when that rounds to 0); the counter runs over the whole run, across epochs;
- once it reaches `--remove_all_when_remove_beyond` it becomes inf: the whole CoT goes;
- each example of a batch loses `scheduled_to_remove + offset` tokens, at most its whole C (the
  separator before A and A stay), the offset drawn per example and batch from
  `lambda_distribution`: P(k) = (1 − e^−λ)·e^−λk for k = 0..99, the rest of the mass on k = 99
  (`--removal_smoothing_lambda` λ; inf: offset 0); offsets are drawn from step 0 on;
- with `--reset_optimizer`, AdamW is re-created before the first batch of each new count, unless
  every example of the batch before had lost its whole C.

kava's sequence is the CoT teacher's, Q + C + P + A with CE on C, P and A (`train.method: cot`,
without `prompt.teacher_delimiters`), with the first r tokens of C cut: Q + C[r:] + P + A. Once C
is gone it is No-CoT's Q + P + A, so an iCoT checkpoint runs in direct mode with No-CoT's forward
passes. Q, P and A are never cut: r is clipped to len(C).

Where kava differs: the count advances per optimizer step (the official per batch; the same with
`--accumulate 1`, and the same tokens per epoch otherwise); the offsets are a function of (seed,
step, example index), so a resumed or multi-process run draws the same ones; "the batch before" of
the reset rule is the previous optimizer step's whole batch. Not implemented (at their defaults in
every official command): `--removal_side right`, `--pretrain_epochs`, `--keep_position`; the
official `--max_len_train` skip is kava's `data.max_length` filter.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Callable, Sequence

from kava.config import KavaConfig
from kava.data.sequences import Encoded, SequenceBuilder
from kava.errors import KavaError

TRUNCATE_LENGTH = 100  # offsets 0..99 [icot: compute_lambda_distribution(truncate_length=100)]
ALL = math.inf  # the whole CoT is scheduled for removal


def lambda_distribution(lam: float | None, truncate_length: int = TRUNCATE_LENGTH) -> list[float]:
    """P(offset = k), k < truncate_length: (1 − e^−λ)·e^−λk, the remaining mass on the last k;
    λ None (inf): always 0."""
    if lam is None:
        return [1.0] + [0.0] * (truncate_length - 1)
    p = [(1 - math.exp(-lam)) * math.exp(-lam * k) for k in range(truncate_length)]
    p[-1] += 1 - sum(p)
    return p


def shortened(e: Encoded, removed: int) -> Encoded:
    """The example with the first `removed` tokens of its CoT cut (Q, P and A untouched)."""
    return dataclasses.replace(e, c=e.c[removed:])


class IcotSchedule:
    """How many CoT tokens each example loses at each optimizer step, and when AdamW is reset.

    cot_lengths: len(C) of every training example; batch_indices(step): the dataset indices of
    the step's whole batch (all processes), for the reset rule."""

    def __init__(self, cfg: KavaConfig, steps_per_epoch: int, total_steps: int, cot_lengths: Sequence[int],
                 batch_indices: Callable[[int], list[int]]):
        i = cfg.icot
        self.cfg = i
        self.seed = cfg.seed
        self.steps_per_token = i.steps_per_token or int(round(steps_per_epoch / i.remove_per_epoch))
        self.cot_lengths = cot_lengths
        self.batch_indices = batch_indices
        self.cum_weights = list(itertools.accumulate(lambda_distribution(i.removal_smoothing_lambda)))
        longest = max(cot_lengths, default=0)
        self.final_step = self._first_step_removing(min(longest, i.remove_all_when_remove_beyond or ALL))
        if self.final_step >= total_steps:
            raise KavaError(
                f"iCoT removes the whole CoT at step {self.final_step}, but training stops at step {total_steps}: the "
                "model would never train as it is evaluated (direct mode); raise icot.remove_per_epoch, lower "
                "icot.steps_per_token, set icot.remove_all_when_remove_beyond or train longer"
            )

    def scheduled(self, step: int) -> float:
        """The official `scheduled_to_remove` at optimizer step `step` (0-based): a count, or ALL."""
        n = self.cfg.remove_start_from + (step // self.steps_per_token if self.steps_per_token else step + 1)
        beyond = self.cfg.remove_all_when_remove_beyond
        return ALL if beyond is not None and n >= beyond else n

    def _first_step_removing(self, tokens: float) -> int:
        """The first step whose scheduled count is at least `tokens` (offsets only add to it)."""
        missing = tokens - self.cfg.remove_start_from
        if missing <= 0:
            return 0
        return int(missing * self.steps_per_token if self.steps_per_token else missing - 1)

    def offset(self, step: int, index: int) -> int:
        """The random extra tokens example `index` loses at step `step` (a function of seed, step, index)."""
        if self.cfg.removal_smoothing_lambda is None:
            return 0
        rng = random.Random((self.seed * 1_000_003 + step) * 10_000_019 + index)
        return rng.choices(range(TRUNCATE_LENGTH), cum_weights=self.cum_weights)[0]

    def removed(self, step: int, index: int, length: int) -> int:
        """CoT tokens example `index` (its CoT `length` tokens long) loses at step `step`."""
        return int(min(self.scheduled(step) + self.offset(step, index), length))

    def all_removed(self, step: int) -> bool:
        """Whether every example of step `step`'s batch lost its whole CoT (the official
        `all_cot_removed_in_batch`; False when nothing is removed at all)."""
        if self.scheduled(step) == 0 and self.cfg.removal_smoothing_lambda is None:
            return False
        return all(self.removed(step, i, self.cot_lengths[i]) >= self.cot_lengths[i] for i in self.batch_indices(step))

    def resets_optimizer(self, step: int) -> bool:
        """Whether the optimizer's state is cleared before step `step`."""
        if step == 0 or not self.cfg.reset_optimizer:
            return False
        return self.scheduled(step) > self.scheduled(step - 1) and not self.all_removed(step - 1)

    def batch(self, builder: SequenceBuilder, items: list[Encoded], step: int, indices: list[int]):
        """(the items with their CoTs cut for step `step`, no student inputs)."""
        return [shortened(e, self.removed(step, i, len(e.c))) for e, i in zip(items, indices, strict=True)], None

    def validation_batch(self, builder: SequenceBuilder, items: list[Encoded], step: int):
        """The items cut by the scheduled count alone (the official evaluation disables the offset)."""
        n = self.scheduled(step)
        return [shortened(e, int(min(n, len(e.c)))) for e in items], None

    def record(self, step: int) -> dict:
        """What the log and the checkpoint record of step `step`: the scheduled count."""
        n = self.scheduled(step)
        return {"icot_removed": "all" if n == ALL else n}

    def check_resume(self, state: dict) -> None:
        """A checkpoint's recorded count must be the one this config gives its step."""
        step, recorded = state.get("step", 0), state.get("icot_removed")
        if recorded is not None and step > 0 and {"icot_removed": recorded} != self.record(step - 1):
            raise KavaError(
                f"the checkpoint at step {step} was trained with {recorded} CoT tokens scheduled for removal, but this "
                f"config schedules {self.record(step - 1)['icot_removed']} there; resume with the icot settings the "
                "run started with"
            )
