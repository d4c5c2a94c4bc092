"""`kava bench losses` (kava.bench.loss_terms): each loss term's value, weight and gradient share
at step 0, checked against the objective's own loss and one plain backward, on a small shape
registered for the test under a hub id (the real shapes need minutes of CPU)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from kava.cli import main

HUB_ID = "test-org/Tiny-Llama-Instruct"


@pytest.fixture
def small_shape(monkeypatch):
    from kava.model import shapes

    monkeypatch.setitem(shapes.SHAPES, "test-llama", dict(
        arch="llama", hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=50000, rope_theta=10000.0))
    monkeypatch.setitem(shapes.HUB_IDS, HUB_ID, "test-llama")


@pytest.fixture
def config(tmp_path, small_shape):
    raw = yaml.safe_load((__import__("pathlib").Path(__file__).resolve().parents[1] / "configs" / "llama1b_aug.yaml")
                         .read_text())
    raw["model"]["name"] = HUB_ID
    raw["lora"].update(r=4, dropout=0.0)
    raw["latent"]["num_latents"] = 4
    path = tmp_path / "small_aug.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_terms_add_up_to_the_objective_and_its_gradient(config):
    from kava.bench.common import build_model
    from kava.bench.loss_terms import bench_examples, bench_loss_config, loss_terms
    from kava.config import shares_question
    from kava.data.batches import make_batch
    from kava.model.kava_model import trainable_parameters
    from kava.training.objective import KavaObjective

    device = torch.device("cpu")
    cfg = bench_loss_config(config, device)
    assert cfg.model.name == "random:test-llama" and cfg.data.source == "offline"
    model, _tok, builder = build_model(cfg, device)
    items, _source = bench_examples(cfg, builder, 3)
    r = loss_terms(cfg, model, builder, items, device)
    t = r["terms"]
    assert set(t) == {"ce_student", "ce_teacher", "codi", "kv_mean", "kv_paper"}
    for name, row in t.items():
        assert row["weighted"] == pytest.approx(row["weight"] * row["value"])
    assert t["codi"]["weight"] == cfg.kava.alpha_codi and t["kv_paper"]["weight"] == cfg.kava.alpha_kv
    # every layer has the same valid slots: `paper` is `mean` times layers × KV heads × head dims (docs/algorithm.md §5)
    assert t["kv_paper"]["value"] == pytest.approx(t["kv_mean"]["value"] * 3 * 2 * 8, rel=1e-5)
    assert t["kv_paper"]["grad_norm"] == pytest.approx(t["kv_mean"]["grad_norm"] * 3 * 2 * 8, rel=1e-4)
    assert abs(r["unexplained_loss"]) < 1e-4  # the terms make the objective's loss
    for row in t.values():  # the parameter groups split the gradient: their squared norms add up
        groups = row["grad_norm_by_group"]
        assert set(groups) == {"all", "lora", "projection", "token_rows"}
        assert sum(v ** 2 for g, v in groups.items() if g != "all") == pytest.approx(groups["all"] ** 2, rel=1e-4)
    # the whole loss's gradient norm equals one plain backward of the objective (dropout is off)
    params = trainable_parameters(model)
    for reduction in ("mean", "paper"):
        cfg.kava.kv_loss_reduction = reduction
        model.zero_grad(set_to_none=True)
        KavaObjective(model, cfg)(make_batch(builder, items, "kava", device, shares_question(cfg)))["loss"].backward()
        norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params if p.grad is not None]))
        assert r["grad_norm_total"][reduction] == pytest.approx(float(norm), rel=1e-4)
        terms = ("ce_student", "ce_teacher", "codi", f"kv_{reduction}")
        assert r["loss"][reduction] == pytest.approx(sum(row["weighted"] for n, row in t.items() if n in terms))


def test_the_command_writes_a_table_and_json(config, tmp_path, capsys):
    out = tmp_path / "losses"
    assert main(["bench", "losses", "--config", str(config), "--examples", "2", "--output-dir", str(out)]) == 0
    results = json.loads((out / "losses.json").read_text())
    assert len(results) == 1 and results[0]["model"] == "random:test-llama" and results[0]["examples"] == 2
    md = (out / "losses.md").read_text()
    assert md.strip() in capsys.readouterr().out
    assert "| small_aug | kv_paper |" in md and "| small_aug | **L** (KV mean / paper) |" in md
    assert "share of LoRA ‖∇L‖, KV mean" in md


def test_a_model_without_a_shape_is_one_line(tmp_path, capsys):
    raw = yaml.safe_load((__import__("pathlib").Path(__file__).resolve().parents[1] / "configs" / "llama1b_aug.yaml")
                         .read_text())
    raw["model"]["name"] = "someone/Unknown-7B"
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["bench", "losses", "--config", str(path), "--output-dir", str(tmp_path / "o")]) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("kava bench losses")]
    assert len(err) == 1 and "no built-in shape for model 'someone/Unknown-7B'" in err[0]


def test_the_cot_format_of_a_training_set():
    from kava.bench.common import is_nl_dataset

    assert is_nl_dataset("zen-E/GSM8k-Aug-NL") and is_nl_dataset("gsm8k-train-nl")
    assert not is_nl_dataset("whynlp/gsm8k-aug") and not is_nl_dataset("gsm8k-train-equations")  # (whyNLP)


def test_pretrained_weights_measure_the_configs_own_model(config, tmp_path):
    """--weights pretrained keeps model.name: the terms of the model as it loads (here a trained-looking local
    folder: a random model saved with save_pretrained), not a random model of its shape."""
    from kava.bench.loss_terms import measure_config
    from kava.config import ModelConfig
    from kava.model.load import load_backbone

    folder = tmp_path / "local-model"
    model, tok = load_backbone(ModelConfig(name="random:test-llama", dtype="float32"))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)  # other weights than a fresh random model of the shape
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    device = torch.device("cpu")
    own = measure_config(config, device, 2, weights="pretrained", overrides=(f"model.name={folder}",))
    assert own["model"] == str(folder) and own["weights"] == "pretrained"
    shaped = measure_config(config, device, 2)
    assert shaped["weights"] == "random" and shaped["model"] == "random:test-llama"
    assert own["terms"]["ce_teacher"]["value"] != pytest.approx(shaped["terms"]["ce_teacher"]["value"])
    assert abs(own["unexplained_loss"]) < 1e-4
    assert main(["bench", "losses", "--config", str(config), "--weights", "pretrained", "--layers", "2",
                 "--output-dir", str(tmp_path / "o")]) == 1  # a cut is for random shapes: one line, not a traceback
