"""Skip the optimizer steps that would wreck the weights; stop a run that keeps producing them.

A step whose loss or gradient norm is not finite (a NaN or inf anywhere poisons every
weight AdamW touches) is skipped: no update, the gradients are dropped, the step still
counts (the learning-rate schedule and the data order stay those of the uninterrupted run)
and the training log marks it. With `train.loss_spike_factor` set, a step whose loss
exceeds that multiple of the mean loss of the last `train.loss_spike_window` applied
steps is skipped the same way. After `train.max_skipped_in_a_row` skipped steps in a row
the run stops with a `KavaError`; the checkpoints on disk are those of the last good
steps (no checkpoint is written while steps are being skipped).

The counters and the window are part of `trainer_state.json`, so a resumed run decides
exactly as the uninterrupted one would.

Under fp16 (`train.mixed_precision: fp16`) an overflow is such a step: its gradients are
not finite. The GradScaler unscaled them for the clip, and only `optimizer.step()` would
have updated it; `release_skipped_step` does that update instead (the overflow halves the
loss scale), or the next step's clip fails with "unscale_() has already been called".
"""

from __future__ import annotations

import math


class StepGuard:
    def __init__(self, max_in_a_row: int, spike_factor: float | None = None, window: int = 20,
                 state: dict | None = None):
        self.max_in_a_row = max_in_a_row
        self.spike_factor = spike_factor
        self.window = window
        state = state or {}
        self.skipped = int(state.get("skipped_steps", 0))
        self.in_a_row = int(state.get("skipped_in_a_row", 0))
        self.first_of_streak = state.get("first_skipped_in_a_row")
        self.recent = [float(x) for x in state.get("recent_losses", [])][-window:]

    def reason_to_skip(self, loss: float, grad_norm: float) -> str | None:
        """Why this step must not be applied, or None."""
        if not math.isfinite(loss):
            return f"loss is {loss}"
        if not math.isfinite(grad_norm):
            return f"gradient norm is {grad_norm}"
        if self.spike_factor is not None and len(self.recent) == self.window:
            mean = sum(self.recent) / len(self.recent)
            if loss > self.spike_factor * mean:
                return (f"loss spike: {loss:.4g} > {self.spike_factor:g} × {mean:.4g} "
                        f"(mean of the last {self.window} steps)")
        return None

    def applied(self, loss: float) -> None:
        self.in_a_row = 0
        self.first_of_streak = None
        if self.spike_factor is not None:
            self.recent = (self.recent + [loss])[-self.window :]

    def skipped_step(self, step: int) -> bool:
        """Count a skipped step (1-based); True when the run must stop."""
        self.skipped += 1
        self.in_a_row += 1
        if self.first_of_streak is None:
            self.first_of_streak = step
        return self.in_a_row >= self.max_in_a_row

    @property
    def in_streak(self) -> bool:
        return self.in_a_row > 0

    def state_dict(self) -> dict:
        return {"skipped_steps": self.skipped, "skipped_in_a_row": self.in_a_row,
                "first_skipped_in_a_row": self.first_of_streak, "recent_losses": list(self.recent)}


def release_skipped_step(optimizer) -> None:
    """After a skipped step: update fp16's GradScaler (accelerate's optimizer holds it), as the
    skipped `optimizer.step()` would have; nothing without one."""
    scaler = getattr(optimizer, "scaler", None)
    if scaler is not None and scaler.is_enabled():
        scaler.update()
