"""Sampled evaluation (kava.inference.sampling): transformers' warpers against a slow reference,
the draws against their distribution, temperature → 0 and top-k = 1 equal greedy, the same seed
reproduces whatever the batch, `kava evaluate --sampling --samples 4` end to end, the protocol in
the results, and `kava aggregate` / `kava compare` refusing to mix protocols."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from kava.cli import main
from kava.errors import KavaError
from kava.evaluation.evaluate import evaluate_dataset
from kava.evaluation.protocol import protocol_name
from kava.inference.generate import generate
from kava.inference.sampling import Sampler, Sampling, sampling_from

pytest_plugins = ["fixtures_eval"]

MODES = ("latent", "cot", "direct")
QUESTIONS = [
    "Tom has 3 apples and buys 4 more. How many?",
    "What is 12 times 3?",
    "A duck lays 5 eggs a day for a week; how many eggs does it lay?",
    "2+2?",
    "Ann has 12 pens and gives away 5. How many are left?",
]


def reference_distribution(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, then the top k, then the smallest set of most likely tokens whose probability
    reaches top_p (a token stays while the mass of the tokens before it is below top_p), one row
    at a time with Python lists; the kept tokens' probabilities renormalised, the others 0."""
    out = []
    for row in logits.tolist():
        scaled = [x / temperature for x in row]
        order = sorted(range(len(row)), key=lambda i: -scaled[i])
        kept = order[:top_k] if top_k else order
        z = sum(math.exp(scaled[i] - scaled[kept[0]]) for i in kept)
        p = {i: math.exp(scaled[i] - scaled[kept[0]]) / z for i in kept}
        final, mass = [], 0.0
        for i in kept:
            if mass >= top_p and final:
                break
            final.append(i)
            mass += p[i]
        total = sum(p[i] for i in final)
        out.append([p[i] / total if i in final else 0.0 for i in range(len(row))])
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 10, 0.8), (1.5, 0, 0.9), (0.5, 3, 1.0),
                                                       (2.0, 25, 0.5)])
def test_warpers_match_a_slow_reference(temperature, top_k, top_p):
    logits = torch.randn(6, 40, generator=torch.Generator().manual_seed(1)) * 3
    s = Sampling(temperature=temperature, top_k=top_k, top_p=top_p)
    ours = torch.softmax(s.warpers()(None, logits.clone()).double(), dim=-1)
    torch.testing.assert_close(ours, reference_distribution(logits, temperature, top_k, top_p), rtol=0, atol=1e-6)


def test_draws_follow_the_filtered_distribution():
    logits = torch.randn(1, 30, generator=torch.Generator().manual_seed(2)) * 2
    s = Sampling(temperature=0.8, top_k=8, top_p=0.9, seed=5)
    p = reference_distribution(logits, 0.8, 8, 0.9)[0]
    n = 20_000
    sampler = Sampler(s, keys=list(range(n)))
    draws = sampler(logits.expand(n, -1), list(range(n))).tolist()
    counts = torch.bincount(torch.tensor(draws), minlength=30).double() / n
    assert set(draws) <= set(torch.nonzero(p).flatten().tolist())  # filtered tokens are never drawn
    assert ((counts - p).abs() <= 5 * (p * (1 - p) / n).sqrt() + 1e-9).all(), (counts, p)


@pytest.fixture(scope="module", params=["checkpoint", "tiny-qwen2"])
def setup(request):
    """(model, builder): the perturbed tiny checkpoint, or a perturbed tiny Qwen2 KaVa model."""
    if request.param == "checkpoint":
        pipe = request.getfixturevalue("perturbed_pipeline")
        return pipe.model, pipe.builder
    from conftest import build

    model, _, builder = build("tiny-qwen2", seed=3)
    return model, builder


def _ids(model, builder, mode, questions=QUESTIONS, **kw):
    return [g.token_ids for g in generate(model, builder, questions, mode=mode, max_new_tokens=8, **kw)]


@pytest.mark.parametrize("mode", MODES)
def test_temperature_to_zero_and_top_k_one_are_greedy(setup, mode):
    model, builder = setup
    greedy = _ids(model, builder, mode)
    assert _ids(model, builder, mode, sampling=Sampling(temperature=1e-6, seed=3)) == greedy
    assert _ids(model, builder, mode, sampling=Sampling(temperature=2.0, top_k=1, seed=4)) == greedy
    assert _ids(model, builder, mode, sampling=Sampling(temperature=1.5, top_p=0.95)) != greedy  # it does sample


@pytest.mark.parametrize("mode", MODES)
def test_the_same_seed_reproduces_whatever_the_batch(setup, mode):
    model, builder = setup
    s = Sampling(temperature=1.5, top_p=0.95, seed=7)
    keys = [11, 22, 33, 44, 55]
    first = _ids(model, builder, mode, sampling=s, sample_keys=keys)
    assert _ids(model, builder, mode, sampling=s, sample_keys=keys) == first
    singles = [_ids(model, builder, mode, [q], sampling=s, sample_keys=[k])[0] for q, k in zip(QUESTIONS, keys)]
    assert singles == first  # batch size 1, the same streams
    backwards = _ids(model, builder, mode, QUESTIONS[::-1], sampling=s, sample_keys=keys[::-1])
    assert backwards[::-1] == first  # another order in the batch
    assert _ids(model, builder, mode, sampling=Sampling(temperature=1.5, top_p=0.95, seed=8), sample_keys=keys) != first
    assert _ids(model, builder, mode, sampling=s, sample_keys=keys, sample=1) != first  # another decoding


def test_latent_passes_are_not_sampled(perturbed_pipeline):
    model, builder = perturbed_pipeline.model, perturbed_pipeline.builder
    greedy = generate(model, builder, QUESTIONS, mode="latent", max_new_tokens=4, return_latents=True)
    sampled = generate(model, builder, QUESTIONS, mode="latent", max_new_tokens=4, return_latents=True,
                       sampling=Sampling(temperature=3.0))
    for g, s in zip(greedy, sampled):
        torch.testing.assert_close(g.latent_hidden, s.latent_hidden, rtol=0, atol=0)


def test_options_without_sampling_are_errors():
    assert sampling_from(False) is None
    assert sampling_from(True) == Sampling(1.0, 1.0, 0, 0)
    with pytest.raises(KavaError, match="temperature, top_p apply to sampled decoding"):
        sampling_from(False, temperature=0.5, top_p=0.9)
    for bad in (dict(temperature=0.0), dict(temperature=-1.0), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1),
                dict(top_k=1.5)):
        with pytest.raises(KavaError):
            sampling_from(True, **bad)


# ----- evaluation, CLI, API ------------------------------------------------------------------


@pytest.fixture()
def questions_file(tmp_path):
    path = tmp_path / "set.jsonl"
    rows = [{"id": f"q{i}", "question": q, "answer": str(i + 3)} for i, q in enumerate(QUESTIONS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_evaluate_dataset_samples_reproducibly_at_any_batch_size(perturbed_pipeline, questions_file):
    from kava.data.eval_sets import load_eval_dataset

    pipe = perturbed_pipeline
    examples = load_eval_dataset(str(questions_file))
    s = Sampling(temperature=1.5, top_p=0.95, seed=1)
    runs = [evaluate_dataset(pipe.model, pipe.builder, examples, mode="cot", batch_size=b, max_new_tokens=6,
                             progress=False, sampling=s, samples=3, keep_records=True) for b in (5, 2, 1)]
    texts = [[(r["id"], r["sample"], r["text"]) for r in run["records"]] for run in runs]
    assert texts[0] == texts[1] == texts[2]
    assert len({t for _, sample, t in texts[0] if sample == 0}) > 1
    assert len({tuple(t for _, sample, t in texts[0] if sample == k) for k in range(3)}) > 1  # the decodings differ
    r = runs[0]
    assert r["n"] == 5 and r["samples"] == 3 and len(r["accuracies"]) == 3
    assert r["accuracy"] == pytest.approx(sum(r["accuracies"]) / 3)
    assert r["protocol"] == {"decoding": "sampling", "temperature": 1.5, "top_p": 0.95, "top_k": 0,
                             "samples": 3, "seed": 1}
    greedy = evaluate_dataset(pipe.model, pipe.builder, examples, mode="cot", max_new_tokens=6, progress=False)
    assert greedy["protocol"] == {"decoding": "greedy"} and "accuracy_std" not in greedy


def test_kava_evaluate_sampling_samples_4_offline(tiny_checkpoint, questions_file, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--datasets", str(questions_file), "--device", "cpu",
            "--output-dir", str(out), "--no-progress", "--sampling", "--temperature", "1.0", "--top-p", "0.9",
            "--samples", "4", "--seed", "3", "--mode", "cot", "--max-new-tokens", "6"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "decoding: sampling (temperature 1, top-p 0.9, top-k off), 4 samples, seed 3" in printed
    res = yaml.safe_load((out / "results_set.yaml").read_text())
    assert res["protocol"] == {"decoding": "sampling", "temperature": 1.0, "top_p": 0.9, "top_k": 0, "samples": 4,
                               "seed": 3}
    assert res["samples"] == 4 and len(res["accuracies"]) == 4 and res["n"] == 5 and "accuracy_std" in res
    preds = [json.loads(x) for x in (out / "predictions_set.jsonl").read_text().splitlines()]
    assert [(p["sample"], p["id"]) for p in preds] == [(s, f"q{i}") for s in range(4) for i in range(5)]
    # the same command resumes everything and gives the same results
    assert main(argv) == 0
    again = yaml.safe_load((out / "results_set.yaml").read_text())
    assert again["resumed"] == 20 and again["accuracies"] == res["accuracies"]
    # another seed into the same folder is refused; greedy is the default and is recorded
    assert main([*argv[:-2], "--seed", "4", "--max-new-tokens", "6"]) == 2
    assert "decoded with sampling" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--datasets", str(questions_file), "--device", "cpu",
                 "--output-dir", str(tmp_path / "greedy"), "--no-progress"]) == 0
    assert yaml.safe_load((tmp_path / "greedy" / "results_set.yaml").read_text())["protocol"] == {"decoding": "greedy"}


@pytest.mark.parametrize("extra, message", [
    (["--temperature", "0.7"], "temperature applies to sampled decoding"),
    (["--samples", "4"], "--samples needs --sampling"),
    (["--sampling", "--top-p", "0"], "top_p must be in (0, 1]"),
    (["--sampling", "--latent-control", "shuffled"], "--latent-control compares greedy answers"),
])
def test_bad_sampling_options_are_one_line_errors(tiny_checkpoint, questions_file, capsys, extra, message):
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--datasets", str(questions_file), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_api_answer_and_evaluate_take_the_same_options(perturbed_pipeline, questions_file):
    pipe = perturbed_pipeline
    a = pipe.answer(QUESTIONS, mode="cot", max_new_tokens=6, sampling=True, temperature=1.5, seed=2, batch_size=2)
    b = pipe.answer(QUESTIONS, mode="cot", max_new_tokens=6, sampling=True, temperature=1.5, seed=2, batch_size=5)
    assert [x.text for x in a] == [x.text for x in b]
    assert [x.text for x in a] != [x.text for x in pipe.answer(QUESTIONS, mode="cot", max_new_tokens=6)]
    res = pipe.evaluate(str(questions_file), mode="cot", max_new_tokens=6, sampling=True, temperature=1.5, top_k=20,
                        samples=2, seed=2)
    assert res["samples"] == 2 and protocol_name(res["protocol"]) == "sampling (temperature 1.5, top-p 1, top-k 20)"
    with pytest.raises(KavaError, match="applies to sampled decoding"):
        pipe.answer(QUESTIONS, temperature=0.5)
    with pytest.raises(KavaError, match="need sampled decoding"):
        pipe.evaluate(str(questions_file), samples=3)


# ----- aggregate and compare -------------------------------------------------------------------


SAMPLED = {"decoding": "sampling", "temperature": 1.0, "top_p": 0.9, "top_k": 0, "samples": 4, "seed": 0}


def _tree(root, protocols: dict[str, list]):
    """experiments/<run>/seed_<s>/results_gsm8k.yaml with the given protocol per seed (None: none recorded)."""
    for run, per_seed in protocols.items():
        for seed, protocol in enumerate(per_seed):
            d = root / run / f"seed_{seed}"
            d.mkdir(parents=True)
            res = {"accuracy": 40.0 + seed, "forward_passes_mean": 7.0, "n": 10}
            if protocol is not None:
                res["protocol"] = protocol
            (d / "results_gsm8k.yaml").write_text(yaml.safe_dump(res))
    return root


def test_aggregate_refuses_two_protocols_in_one_column(tmp_path, capsys):
    from kava.experiments.aggregate import aggregate

    same = _tree(tmp_path / "same", {"a": [None, {"decoding": "greedy"}], "b": [None, None]})
    assert aggregate(same)["runs"][0]["datasets"]["gsm8k"]["protocol"] == "greedy"  # no protocol: greedy
    sampled = _tree(tmp_path / "sampled", {"a": [SAMPLED, SAMPLED | {"seed": 1}], "b": [SAMPLED]})
    assert "gsm8k [sampling (temperature 1, top-p 0.9, top-k off)] accuracy (%)" in aggregate(sampled)["markdown"]
    mixed = _tree(tmp_path / "mixed", {"a": [None, None], "b": [SAMPLED, SAMPLED]})
    with pytest.raises(KavaError, match=r"the gsm8k column mixes two evaluation protocols, greedy \(run a\) and "
                                        r"sampling \(temperature 1, top-p 0.9, top-k off\) \(run b\)"):
        aggregate(mixed)
    assert main(["aggregate", "--experiments-dir", str(mixed)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([x for x in err if x.startswith("error:")]) == 1 and "mixes two evaluation protocols" in err[-1]
    within = _tree(tmp_path / "within", {"a": [None, SAMPLED]})
    with pytest.raises(KavaError, match="run a, dataset gsm8k, mixes two evaluation protocols"):
        aggregate(within)


def test_compare_refuses_two_protocols(tmp_path, capsys):
    from kava.experiments.compare import compare_runs

    root = _tree(tmp_path, {"a": [None, None], "b": [SAMPLED, SAMPLED], "c": [{"decoding": "greedy"}] * 2})
    assert compare_runs(root / "a", root / "c")[0]["dataset"] == "gsm8k"
    with pytest.raises(KavaError, match="comparing gsm8k mixes two evaluation protocols"):
        compare_runs(root / "a", root / "b")
    assert main(["compare", str(root / "a"), str(root / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mixes two evaluation protocols" in err
