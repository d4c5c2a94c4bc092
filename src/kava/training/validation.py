"""Validation accuracy during training, and `checkpoint-best/`.

With `train.eval_every: N`, every N optimizer steps (and after the last) the run measures on
the validation split, never the test split (docs/algorithm.md §6: model selection uses
validation data): the mean loss terms (`kava.training.trainer.validation_losses`) and,
here, the exact-match accuracy of generated answers in the method's mode: `latent` for a
latent student (`train.method: kava`: KaVa, PCCoT, CODI, Coconut), `cot` for CoT
fine-tuning, `direct` for No-CoT; scored as `kava evaluate` scores (answer extraction,
forward passes per question), over the first `train.eval_max_examples` validation examples
in batches of `train.eval_batch_size`.

The validation split of each source: a hub dataset's `data.val_split` (GSM8k-AUG:
`validation`, 500 rows); `data.val_size` rows held out from the end of a local JSONL or of
the offline GSM8k training set (never its test set); the synthetic task's own
`data.synthetic.num_val` problems, drawn apart from its test problems.

`checkpoint-best/` holds the weights of the step with the highest validation accuracy so far
(the first of equal ones), as PCCoT's and Coconut's code keep the checkpoint with the best
validation exact match. It is written atomically (`save_checkpoint`), without optimizer
state, and its `trainer_state.json` records the step and the validation result. A resumed
run reads the best so far from there, so a kill between a new best and the next step
checkpoint loses nothing (the steps replayed after the resume reach the same accuracy and
do not replace it).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from kava.config import EVAL_MODE, KavaConfig
from kava.data.eval_sets import EvalExample
from kava.data.train_sets import ReasoningExample
from kava.errors import KavaError
from kava.evaluation.evaluate import evaluate_dataset
from kava.training.checkpoint import read_trainer_state, save_checkpoint

BEST = "checkpoint-best"


def check_validation_split(cfg: KavaConfig, rows: list[ReasoningExample]) -> None:
    """train.eval_every needs validation examples: say how to get some."""
    if cfg.train.eval_every and not rows:
        raise KavaError(
            f"train.eval_every needs a validation split, and {cfg.data.dataset} (source {cfg.data.source}) has none "
            "as configured: set data.val_split (a hub split), data.val_size (rows held out of a local or offline "
            "training set) or data.synthetic.num_val; or set train.eval_every: null")


def validation_examples(rows: list[ReasoningExample], limit: int) -> list[EvalExample]:
    """The first `limit` validation rows as evaluation examples (ids `validation-<i>`)."""
    return [EvalExample(f"validation-{i}", r.question, float(r.answer), r.answer, steps=tuple(r.steps))
            for i, r in enumerate(rows[:limit])]


def validation_accuracy(model, builder, examples: list[EvalExample], cfg: KavaConfig, accelerator) -> dict:
    """Accuracy (%) and mean forward passes of the answers generated for `examples` in the
    method's mode; sharded over processes, the model in eval mode meanwhile."""
    mode = EVAL_MODE[cfg.train.method]
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = examples[rank::world]
    was_training = model.training
    model.eval()
    try:
        res = evaluate_dataset(model, builder, mine, mode=mode, batch_size=cfg.train.eval_batch_size, progress=False,
                               dataset="validation") if mine else {"correct": 0, "n": 0, "forward_passes_mean": 0.0}
    finally:
        model.train(was_training)
    t = torch.tensor([float(res["correct"]), float(res["n"]), res["forward_passes_mean"] * res["n"]],
                     device=accelerator.device)
    if world > 1:
        t = accelerator.reduce(t, reduction="sum")
    correct, n, passes = t.tolist()
    return {"accuracy": round(100.0 * correct / n, 4), "forward_passes_mean": round(passes / n, 4),
            "mode": mode, "n": int(n)}


class BestCheckpoint:
    """`checkpoint-best/` of a run folder and the validation result it holds."""

    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / BEST
        state = read_trainer_state(self.path) if (self.path / "trainer_state.json").is_file() else {}
        self.step = state.get("step")
        self.accuracy = state.get("validation", {}).get("accuracy")

    def offer(self, validation: dict, model, tokenizer, cfg: KavaConfig, state: dict) -> bool:
        """Save the model as checkpoint-best if its validation accuracy beats the best so far;
        whether this step is the best (also when a resumed run replays the step saved)."""
        if self.accuracy is not None and validation["accuracy"] <= self.accuracy:
            return self.step == state["step"] and validation["accuracy"] == self.accuracy
        save_checkpoint(self.path, model, tokenizer, cfg, {**state, "validation": validation})
        self.step, self.accuracy = state["step"], validation["accuracy"]
        return True

    def fields(self) -> dict:
        """The best so far, for the validation record of train_log.jsonl."""
        return {"best_accuracy": self.accuracy, "best_step": self.step}


def remove_stale_best(out_dir: Path, log) -> None:
    """A run starting from step 0 drops the checkpoint-best an earlier attempt left (not this run's)."""
    best = Path(out_dir) / BEST
    if best.is_dir():
        shutil.rmtree(best)
        log(f"kava: removed {best}, left by an earlier attempt that wrote no step checkpoint")
