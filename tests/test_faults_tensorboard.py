"""A resumed run's TensorBoard curves hold each step once (the interrupted run's replayed
steps are purged). Needs the optional `tensorboard` package (pip install kava[tensorboard])."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from kava import failpoints  # noqa: E402
from kava.config import config_from_dict  # noqa: E402
from kava.training.trainer import train  # noqa: E402


def _cfg(root, out):
    return config_from_dict({
        "model": {"name": "tiny-llama", "dtype": "float32", "tiny": {"hidden_size": 32, "num_layers": 2}},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "latent": {"num_latents": 2, "num_iterations": 1},
        "data": {"dataset": str(root / "t.jsonl"), "source": "local", "val_size": 0},
        "train": {"lr": 3e-3, "max_steps": 6, "global_batch_size": 4, "micro_batch_size": 2, "warmup_ratio": 0.0,
                  "save_every": 2, "loggers": ["jsonl", "tensorboard"]},
        "run_name": "tb", "output_dir": str(out)})


def _curve(out):
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars("loss")]


def test_tensorboard_steps_after_a_resume_are_those_of_an_uninterrupted_run(tmp_path, monkeypatch):
    rows = [{"question": f"Sam has {3 + i % 5} pens?", "steps": ["<<1+1=2>>"], "answer": "2"} for i in range(16)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train(_cfg(tmp_path, tmp_path / "ref"), show_progress=False)
    monkeypatch.setenv(failpoints.ENV, "train.step:6:enospc")  # dies in step 6: step 5 is logged, not checkpointed
    monkeypatch.setattr(failpoints, "_hits", {})
    with pytest.raises(OSError):
        train(_cfg(tmp_path, tmp_path / "cut"), show_progress=False)
    assert [s for s, _ in _curve(tmp_path / "cut")] == [1, 2, 3, 4, 5]
    monkeypatch.delenv(failpoints.ENV)
    train(_cfg(tmp_path, tmp_path / "cut"), resume=True, show_progress=False)  # from checkpoint-4: replays step 5
    assert _curve(tmp_path / "cut") == _curve(tmp_path / "ref")
