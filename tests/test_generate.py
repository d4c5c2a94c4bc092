"""Batched generation (kava.inference.generate): batch == batch size 1 in every mode, exact
forward-pass counts (docs/algorithm.md §2), finished examples dropped (sampling: tests/test_sampling.py).

Tiny random models repeat one token forever, so in most tests every example runs to the
budget. To make examples finish at different steps, `eos_at_positions` wraps `model.lm`
and raises the EOS logit of a row whose last position id is a multiple of `period`: a
function of each example's own positions, so a correct batch still equals batch size 1
(and a wrong position id under left padding would show up as a different stopping step).
"""

from __future__ import annotations

import pytest
import torch

from kava.inference.generate import generate

pytest_plugins = ["fixtures_eval"]

MODES = ("latent", "cot", "direct")
# Different lengths (left padding) and different lengths modulo the EOS period below.
QUESTIONS = [
    "Tom has 3 apples and buys 4 more. How many?",
    "What is 12 times 3?",
    "A duck lays 5 eggs a day for a week; how many eggs does it lay?",
    "2+2?",
    "Ann has 12 pens and gives away 5. How many are left?",
]


@pytest.fixture(scope="module", params=["checkpoint", "tiny-qwen2"])
def setup(request):
    """(model, builder): the perturbed tiny checkpoint (Llama + LoRA from kava train), or a
    perturbed tiny Qwen2 KaVa model built in memory (another architecture, T=3)."""
    if request.param == "checkpoint":
        pipe = request.getfixturevalue("perturbed_pipeline")
        return pipe.model, pipe.builder
    from conftest import build

    model, _, builder = build("tiny-qwen2", seed=3)
    return model, builder


def count_calls(monkeypatch, model) -> list[int]:
    """Wrap model.lm; returns the list of batch sizes of the calls made."""
    sizes: list[int] = []
    inner = model.lm

    def wrapped(**kw):
        x = kw.get("input_ids") if kw.get("input_ids") is not None else kw["inputs_embeds"]
        sizes.append(x.shape[0])
        return inner(**kw)

    monkeypatch.setattr(model, "lm", wrapped)
    return sizes


def eos_at_positions(monkeypatch, model, eos_id: int, period: int = 5) -> None:
    inner = model.lm

    def wrapped(**kw):
        out = inner(**kw)
        pos = kw["position_ids"][:, -1]
        stop = (pos % period) == 0
        if stop.any() and out.logits.shape[1] > 0:  # (the latent passes compute no logits)
            logits = out.logits.clone()
            logits[stop, -1, eos_id] = logits[stop, -1].max(-1).values + 10.0
            out.logits = logits
        return out

    monkeypatch.setattr(model, "lm", wrapped)


def _same(batched, singles):
    for b, s in zip(batched, singles):
        assert b.question == s.question
        assert b.token_ids == s.token_ids
        assert b.text == s.text
        assert b.forward_passes == s.forward_passes
        if s.latent_hidden is not None:
            torch.testing.assert_close(b.latent_hidden, s.latent_hidden, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_batch_equals_batch_size_one(setup, mode):
    model, builder = setup
    kw = dict(mode=mode, max_new_tokens=8, return_latents=True)
    batched = generate(model, builder, QUESTIONS, **kw)
    singles = [generate(model, builder, [q], **kw)[0] for q in QUESTIONS]
    _same(batched, singles)
    # Non-trivial outputs: the questions get different answers.
    assert len({tuple(g.token_ids) for g in batched}) >= 2
    if mode == "latent":
        assert batched[0].latent_hidden.shape == (model.num_latents, model.config.hidden_size)
    else:
        assert all(g.latent_hidden is None for g in batched)


@pytest.mark.parametrize("mode", MODES)
def test_batch_equals_batch_size_one_with_ragged_stops(setup, mode, monkeypatch):
    model, builder = setup
    eos_at_positions(monkeypatch, model, builder.eos_id)
    batched = generate(model, builder, QUESTIONS, mode=mode, max_new_tokens=8)
    singles = [generate(model, builder, [q], mode=mode, max_new_tokens=8)[0] for q in QUESTIONS]
    _same(batched, singles)
    lengths = [g.generated_tokens for g in batched]
    assert len(set(lengths)) >= 3, lengths  # examples finish at different steps
    assert all(g.token_ids[-1] == builder.eos_id for g in batched if g.generated_tokens < 8)


@pytest.mark.parametrize("mode", MODES)
def test_forward_passes_formula_and_real_model_calls(setup, mode, monkeypatch):
    model, builder = setup
    eos_at_positions(monkeypatch, model, builder.eos_id, period=4)
    T = model.num_iterations
    calls = count_calls(monkeypatch, model)
    for q in QUESTIONS:
        calls.clear()
        (g,) = generate(model, builder, [q], mode=mode, max_new_tokens=8)
        assert len(calls) == g.forward_passes
        if mode == "latent":
            assert g.forward_passes == 1 + T + 1 + (g.generated_tokens - 1)
        else:
            assert g.forward_passes == g.generated_tokens


@pytest.mark.parametrize("mode", MODES)
def test_finished_examples_are_dropped(setup, mode, monkeypatch):
    model, builder = setup
    eos_at_positions(monkeypatch, model, builder.eos_id)
    sizes = count_calls(monkeypatch, model)
    gens = generate(model, builder, QUESTIONS, mode=mode, max_new_tokens=8)
    passes = [g.forward_passes for g in gens]
    # Call k holds exactly the examples still running at step k: none that has finished.
    assert sizes == [sum(1 for p in passes if p > k) for k in range(max(passes))]
    assert sum(sizes) == sum(passes)
    assert min(sizes) < len(QUESTIONS)


def test_generation_budget_and_eos(setup, monkeypatch):
    model, builder = setup
    gens = generate(model, builder, QUESTIONS, mode="direct", max_new_tokens=3)
    assert all(1 <= g.generated_tokens <= 3 for g in gens)
    assert all(g.generated_tokens == 3 or g.token_ids[-1] == builder.eos_id for g in gens)
    assert generate(model, builder, [], mode="latent") == []
    with pytest.raises(ValueError, match="unknown mode"):
        generate(model, builder, QUESTIONS[:1], mode="chat")


def test_cot_mode_with_teacher_delimiters_writes_after_bot(build_model, monkeypatch):
    """prompt.teacher_delimiters: the chain of thought is written after Q + <bot>, as the teacher read it."""
    model, tok, builder = build_model("tiny-llama")
    builder.prompt.teacher_delimiters = True
    calls = []
    real = model.lm

    def lm(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(model, "lm", lm)
    q = "Tom has 3 apples."
    gen = generate(model, builder, [q], mode="cot", max_new_tokens=3)[0]
    first = calls[0]["input_ids"][0].tolist()
    assert first == builder.question_ids(q) + [builder.special.bot]
    assert gen.forward_passes == len(calls) == gen.generated_tokens
