"""The reproduction plan: estimated GPU hours per config (`kava reproduce --dry-run`)."""

import pytest
import yaml

from kava.config import config_from_dict
from kava.errors import KavaError
from kava.experiments.plan import format_plan, model_params_b, plan_reproduction


def _cfg(**sections):
    """A config as kava train reads it: the given sections over a GSM8k-AUG Llama-1B run."""
    raw = {"run_name": "kava-llama1b", "model": {"name": "meta-llama/Llama-3.2-1B-Instruct"},
           "data": {"dataset": "whynlp/gsm8k-aug"}}
    for name, section in sections.items():
        raw[name] = {**raw.get(name, {}), **section} if isinstance(section, dict) else section
    return config_from_dict(raw)


def test_plan_reproduction():
    cfg = _cfg(train={"epochs": 2}, latent={"num_latents": 24, "num_iterations": 3})
    (p,) = plan_reproduction([cfg], [42, 43, 44])
    assert p["config"] == "kava-llama1b" and p["params_b"] == 1.0
    assert p["rows"] == 385_620 and p["avg_tokens"] == 120 and p["num_iterations"] == 3
    # teacher Q+C+P+A (120) + student: question (60) + (T + 1) * M (4 * 24) + <eot> P A (12)
    assert p["method"] == "kava" and p["tokens_per_example"] == pytest.approx(120 + 60 + 4 * 24 + 12)
    assert p["train_tokens"] == pytest.approx(2 * 385_620 * 288)
    assert p["gpu_hours_per_seed"] == pytest.approx(p["train_tokens"] / 20_000 / 3600)
    assert p["gpu_hours"] == pytest.approx(3 * p["gpu_hours_per_seed"]) and p["n_seeds"] == 3
    # Bigger model, more iterations: more hours; the schema's defaults fill the gaps (10 epochs, M = 24).
    (q,) = plan_reproduction([_cfg(model={"name": "Qwen/Qwen2.5-3B"}, data={"dataset": "my/set"},
                                   latent={"num_iterations": 5})], 2)
    assert q["params_b"] == 3.0 and q["epochs"] == 10 and q["num_latents"] == 24 and q["seeds"] == [0, 1]
    assert q["gpu_hours_per_seed"] > p["gpu_hours_per_seed"]
    assert any("dataset size unknown" in n for n in q["notes"])
    # The offline GSM8k train set, capped rows, T = 0 (no Jacobi iterations).
    (r,) = plan_reproduction([_cfg(run_name="small", model={"name": "Qwen/Qwen2.5-0.5B-Instruct"},
                                   data={"dataset": "gsm8k-train-nl", "source": "offline", "max_train_examples": 1000},
                                   latent={"num_iterations": 0})], [1])
    assert r["config"] == "small" and r["rows"] == 1000
    assert r["tokens_per_example"] == pytest.approx(200 + 60 + 1 * 24 + 12)  # T = 0: pass 0 only
    assert r["examples_seen"] == 10 * 1000 and r["notes"] == []
    (m,) = plan_reproduction([_cfg(model={"name": "x-1B"}, data={"dataset": "synthetic", "source": "synthetic"},
                                   train={"max_steps": 100, "global_batch_size": 32, "micro_batch_size": 8})], [1])
    assert m["rows"] == 20_000 and m["examples_seen"] == 3200
    # baselines: the CoT teacher alone; No-CoT: question and answer only
    (c,) = plan_reproduction([_cfg(data={"dataset": "gsm8k-aug"}, train={"method": "cot"})], [1])
    (d,) = plan_reproduction([_cfg(data={"dataset": "gsm8k-aug"}, train={"method": "direct"})], [1])
    assert c["tokens_per_example"] == 120 and d["tokens_per_example"] == 60 + 12
    # sequential latents (CODI, Coconut): the M latents once, one a pass, whatever T says
    (s,) = plan_reproduction([_cfg(latent={"num_latents": 6, "num_iterations": 3, "mode": "sequential"})], [1])
    assert s["tokens_per_example"] == pytest.approx(120 + 60 + 6 + 12)
    text = format_plan([p, q])
    assert "kava-llama1b" in text and "total: about" in text
    with pytest.raises(KavaError):
        plan_reproduction([cfg], [1, 1])


def test_plan_reproduction_reads_yaml_as_kava_train_does(tmp_path):
    config = tmp_path / "kava_llama1b.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": "meta-llama/Llama-3.2-1B-Instruct"},
                                      "data": {"dataset": "gsm8k-aug"}, "train": {"epochs": 1}}))
    (p,) = plan_reproduction([config], [1])
    assert p["config"] == str(config) and p["epochs"] == 1 and p["model"].endswith("1B-Instruct")
    config.write_text(yaml.safe_dump({"model": {"name": "x"}, "data": {"dataset": "gsm8k-aug", "num_rows": 5}}))
    with pytest.raises(KavaError, match="unknown key 'data.num_rows'"):
        plan_reproduction([config], [1])


@pytest.mark.parametrize("name,size", [("meta-llama/Llama-3.2-1B-Instruct", 1.0), ("Qwen/Qwen2.5-0.5B-Instruct", 0.5),
                                       ("HuggingFaceTB/SmolLM2-360M", 0.36), ("Llama-3.1-8B", 8.0), ("gpt2", None)])
def test_model_params_b(name, size):
    assert model_params_b(name) == size
