"""`kava export`: the merged folder equals a slow merge written here, plain transformers reads
it, and kava reads it back answering exactly as the checkpoint does (fp32)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import kava.api
from kava.cli import main
from kava.io import read_jsonl
from kava.training.checkpoint import load_checkpoint, save_checkpoint

pytest_plugins = ["fixtures_eval"]

QUESTIONS = [
    "Tom has 3 apples and buys 4 more. How many apples does he have?",
    "A box holds 12 pens. How many pens are in 3 boxes?",
    "Sara had 20 dollars and spent 7. How much is left?",
    "What is 2 + 3?",
    "A train goes 60 miles an hour for 2 hours. How far does it go?",
    "There are 5 birds and 3 fly away. How many are left?",
]


@pytest.fixture(scope="module")
def trained(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint with seeded noise on everything it trains (LoRA A and B, the new
    token rows, the projection), saved again: a checkpoint whose adapter matters."""
    model, tok, _builder, cfg = load_checkpoint(tiny_checkpoint)  # (unmerged: kava.api.load merges LoRA)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_" in name or "trainable_tokens_delta" in name or name.startswith("projection."):
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    path = tmp_path_factory.mktemp("export") / "checkpoint-final"
    save_checkpoint(path, model, tok, cfg, state={"step": 2})
    return path


@pytest.fixture(scope="module")
def exported(trained):
    out = trained.parent / "exported"
    assert main(["export", str(trained), str(out)]) == 0
    return out


def test_export_is_the_merge_of_the_adapter(trained, exported):
    """Every tensor of model.safetensors equals the base model's with W + (alpha/r)·B·A on each
    LoRA layer and the trained rows of the new tokens (a merge written out here)."""
    from kava.model.kava_model import add_special_tokens
    from kava.model.load import load_backbone
    from kava.training.checkpoint import read_checkpoint_config

    cfg = read_checkpoint_config(trained)
    base, tok = load_backbone(cfg.model)
    add_special_tokens(base, tok)
    adapter = load_file(str(trained / "adapter" / "adapter_model.safetensors"))
    scale = cfg.lora.alpha / cfg.lora.r
    expected = {k: v.clone() for k, v in base.state_dict().items()}
    merged_layers = 0
    for key in adapter:
        if key.endswith("lora_A.weight"):
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            b = adapter[key.replace("lora_A", "lora_B")]
            expected[module + ".weight"] = expected[module + ".weight"] + scale * b @ adapter[key]
            merged_layers += 1
    rows = json.loads((trained / "adapter" / "adapter_config.json").read_text())["trainable_token_indices"]
    delta = adapter["base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"]
    expected["model.embed_tokens.weight"][rows] = delta
    found = load_file(str(exported / "model.safetensors"))
    assert merged_layers == 4 * 7 and sorted(rows) == tok.convert_tokens_to_ids(["<bot>", "<eot>", "<latent>"])
    assert set(found) <= set(expected) and "model.embed_tokens.weight" in found
    for key, value in found.items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-6, msg=key)
    proj = load_file(str(trained / "projection.safetensors"))
    assert load_file(str(exported / "projection.safetensors")).keys() == proj.keys()


def test_plain_transformers_reads_the_export(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kava.export import load_projection

    model = AutoModelForCausalLM.from_pretrained(exported)
    tok = AutoTokenizer.from_pretrained(exported)
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    assert all(tok.convert_tokens_to_ids(t) != tok.unk_token_id for t in ("<bot>", "<eot>", "<latent>"))
    h = torch.randn(2, model.config.hidden_size)
    pipe = kava.api.load(checkpoint=exported, device="cpu")
    torch.testing.assert_close(load_projection(exported)(h), pipe.model.projection(h), rtol=0, atol=0)


def _rows(path):
    return [{k: r[k] for k in ("id", "text", "answer", "correct", "forward_passes",
                               "generated_tokens")} for r in read_jsonl(path)]


@pytest.mark.parametrize("mode", ["latent", "cot", "direct"])
def test_kava_evaluate_reads_the_export_with_the_same_predictions(trained, exported, tmp_path, mode, capsys):
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "answer": str(i)}) + "\n"
                            for i, q in enumerate(QUESTIONS)))
    results = {}
    for name, checkpoint in (("checkpoint", trained), ("export", exported)):
        out = tmp_path / name
        argv = ["evaluate", "--checkpoint", str(checkpoint), "--datasets", str(data), "--mode", mode, "--dtype",
                "float32", "--max-new-tokens", "12", "--output-dir", str(out), "--no-progress"]
        assert main(argv) == 0
        results[name] = _rows(out / "predictions_questions.jsonl")
    capsys.readouterr()
    assert len(results["export"]) == len(QUESTIONS)
    assert len({r["text"] for r in results["export"]}) > 1  # the answers depend on the question
    assert results["export"] == results["checkpoint"]


def test_api_loads_a_bf16_export(trained, tmp_path, capsys):
    out = tmp_path / "bf16"
    assert main(["export", str(trained), str(out), "--dtype", "bf16"]) == 0
    assert "bf16, LoRA merged" in capsys.readouterr().out
    assert {v.dtype for v in load_file(str(out / "model.safetensors")).values()} == {torch.bfloat16}
    assert load_file(str(out / "projection.safetensors"))["net.0.weight"].dtype == torch.float32
    pipe = kava.api.load(checkpoint=out, device="cpu")
    assert pipe.model.backbone.dtype == torch.bfloat16 and pipe.default_mode == "latent"
    (answer,) = pipe.answer(QUESTIONS[:1], max_new_tokens=4)
    assert answer.forward_passes >= 1 + pipe.model.num_iterations + 1


def test_export_refuses_a_non_empty_folder_and_a_non_checkpoint(trained, exported, tmp_path, capsys):
    assert main(["export", str(trained), str(exported)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists and is not empty" in err
    assert main(["export", str(tmp_path), str(tmp_path / "x")]) == 2
    assert "not a kava checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["export", str(trained), str(tmp_path / "y"), "--dtype", "int8"])
    assert stop.value.code == 2 and "invalid choice: 'int8'" in capsys.readouterr().err
