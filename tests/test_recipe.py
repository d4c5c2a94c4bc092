"""Recipe test (torchtune's): `kava train` for four optimizer steps on a tiny Llama loaded from
committed weights, every logged loss term compared with stored values; then `kava evaluate` in
latent mode, its predictions compared too.

tests/test_train.py checks that the loss goes down, which a wrong loss can pass; here a changed
formula, data order, batching, schedule or initialisation changes a pinned number. The runs cover
KaVa (Jacobi latents, R-KV, shared question), sequential latents (CODI/Coconut's) and the CoT and
No-CoT baselines.

Committed inputs, tests/data/recipe/:
    tiny-llama/    2 layers, hidden 32, the character tokenizer (model.safetensors, ~140 KB)
    train.jsonl    32 word problems with equation CoTs (one epoch = the four steps)
    eval.jsonl     4 questions for the latent evaluation
    expected.json  the pinned values

The expected values change only deliberately (a loss formula, the data order or the
initialisation changed on purpose). Then regenerate them and say in the commit why they moved:

    PYTHONPATH=src OMP_NUM_THREADS=1 python tests/test_recipe.py            # rewrites expected.json
    PYTHONPATH=src OMP_NUM_THREADS=1 python tests/test_recipe.py --weights  # also rebuilds tiny-llama/ (rarely)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from kava.cli import main
from kava.io import read_jsonl

DATA = Path(__file__).parent / "data" / "recipe"
EXPECTED = DATA / "expected.json"
RTOL, ATOL = 1e-4, 1e-6
LOSS_KEYS = ("loss", "ce_student", "ce_teacher", "codi", "kv", "grad_norm", "lr")

CONFIG = {
    "seed": 7,
    "model": {"name": str(DATA / "tiny-llama"), "dtype": "float32"},
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
    "latent": {"num_latents": 4, "num_iterations": 2},
    "data": {"dataset": str(DATA / "train.jsonl"), "source": "local", "val_size": 0},
    "kava": {"compression": "rkv", "alpha_codi": 10, "alpha_kv": 1},
    "train": {"lr": 3e-3, "max_steps": 4, "global_batch_size": 8, "micro_batch_size": 4, "warmup_ratio": 0.0},
}
# name -> overrides of CONFIG
RUNS = {
    "kava": [],
    "sequential": ["latent.mode=sequential"],
    "cot": ["train.method=cot"],
    "direct": ["train.method=direct"],
}


def run_recipe(name: str, out: Path) -> dict:
    """Train run `name` into `out`; the pinned values: per step the logged terms, and for the KaVa
    run the latent evaluation's predictions."""
    config = out / "config.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(CONFIG))
    run = out / name
    assert main(["train", "--config", str(config), "--output-dir", str(run), "--no-progress", *RUNS[name]]) == 0
    steps = [{k: r[k] for k in (*LOSS_KEYS, "step", "tokens") if k in r} for r in read_jsonl(run / "train_log.jsonl")]
    pinned = {"steps": steps}
    if name == "kava":
        evaluation = out / "eval"
        assert main(["evaluate", "--checkpoint", str(run / "checkpoint-final"), "--datasets", str(DATA / "eval.jsonl"),
                     "--mode", "latent", "--source", "offline", "--max-new-tokens", "8", "--output-dir", str(evaluation),
                     "--no-progress"]) == 0
        pinned["predictions"] = [{k: r[k] for k in ("id", "text", "answer", "forward_passes", "generated_tokens")}
                                 for r in read_jsonl(evaluation / "predictions_eval.jsonl")]
    return pinned


def _close(actual, expected, where: str) -> None:
    assert type(actual) is type(expected) or {type(actual), type(expected)} <= {int, float}, where
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), f"{where}: keys {sorted(actual)} != {sorted(expected)}"
        for k in expected:
            _close(actual[k], expected[k], f"{where}.{k}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), f"{where}: {len(actual)} entries, expected {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            _close(a, e, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=RTOL, abs=ATOL), f"{where}: {actual!r} != {expected!r}"
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


@pytest.mark.parametrize("name", list(RUNS))
def test_recipe_losses_and_predictions_are_pinned(name, tmp_path):
    expected = json.loads(EXPECTED.read_text())[name]
    _close(run_recipe(name, tmp_path), expected, name)


def test_the_pinned_values_cover_every_loss_term():
    """The pins are not vacuous: KaVa's record holds all four terms, each non-zero, and the
    evaluation's answers are pinned."""
    expected = json.loads(EXPECTED.read_text())
    assert all(len(expected[name]["steps"]) == 4 for name in RUNS)
    for name in ("kava", "sequential"):
        for step in expected[name]["steps"]:
            assert all(step[k] > 0 for k in ("ce_student", "ce_teacher", "codi", "kv")), (name, step)
    assert len(expected["kava"]["predictions"]) == 4


# ----- deliberate regeneration ------------------------------------------------------------------


def build_weights() -> None:
    """The committed tiny Llama: random weights (seed 0) and the character tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from kava.model.tiny import build_char_tokenizer

    tok = build_char_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512,
                         tie_word_embeddings=True, initializer_range=0.3, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(DATA / "tiny-llama")
    tok.save_pretrained(DATA / "tiny-llama")


def build_data() -> None:
    def row(i: int) -> dict:
        a, b, c = 2 + i % 9, 3 + (5 * i) % 7, 1 + (3 * i) % 4
        return {"id": f"r{i}", "question": f"Ann has {a} bags of {b} pens and gives away {c}. How many pens are left?",
                "steps": [f"<<{a}*{b}={a * b}>>", f"<<{a * b}-{c}={a * b - c}>>"], "answer": str(a * b - c)}

    (DATA / "train.jsonl").write_text("".join(json.dumps(row(i)) + "\n" for i in range(32)))
    (DATA / "eval.jsonl").write_text("".join(json.dumps(row(i)) + "\n" for i in range(100, 104)))


if __name__ == "__main__":
    import tempfile

    torch.set_num_threads(1)
    DATA.mkdir(parents=True, exist_ok=True)
    if "--weights" in sys.argv:
        build_weights()
        build_data()
    with tempfile.TemporaryDirectory() as tmp:
        values = {name: run_recipe(name, Path(tmp) / name) for name in RUNS}
    EXPECTED.write_text(json.dumps(values, indent=1) + "\n")
    print(f"wrote {EXPECTED}")
