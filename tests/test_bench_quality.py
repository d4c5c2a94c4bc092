"""`kava bench quality` end to end on a tiny budget, its table and its resumability."""

from __future__ import annotations

import json

import pytest
import yaml

import kava.bench.quality as quality
from kava.cli import main
from kava.io import read_jsonl

TINY_OPTIONS = ["--steps", "2", "--base-steps", "2", "--test-size", "6", "--eval-batch-size", "4", "--no-progress",
                "--jobs", "1"]
BASE_MODEL = "model.name=runs/a-trained-base-model"  # frozen targets are refused from random weights
TINY_OVERRIDES = [
    "data.synthetic.num_train=32", "data.synthetic.num_val=0",
    "train.global_batch_size=8", "train.micro_batch_size=8", "train.save_every=1",
    "model.tiny.hidden_size=32", "model.tiny.num_layers=2", "model.tiny.intermediate_size=64",
    "latent.num_latents=3", "latent.num_iterations=1",
]


def _bench(out, *extra):
    """A tiny budget: 2 steps of batch 8 of a 2-layer model, 6 test problems (`extra` wins)."""
    return main(["bench", "quality", "--output-dir", str(out), *TINY_OPTIONS, *extra, *TINY_OVERRIDES])


def test_default_config_and_every_run_validate(tmp_path):
    for seed in (0, 1):
        for run in quality.ALL_RUNS.values():
            cfg = quality.run_config(quality.DEFAULT_CONFIG, run, seed, tmp_path / run.name, [])
            assert cfg.seed == seed and cfg.model.tiny.seed == seed and cfg.data.source == "synthetic"
    kava = quality.run_config(quality.DEFAULT_CONFIG, quality.ALL_RUNS["kava"], 0, tmp_path, [])
    pccot = quality.run_config(quality.DEFAULT_CONFIG, quality.ALL_RUNS["pccot"], 0, tmp_path, [])
    assert kava.kava.alpha_kv > 0 and pccot.kava.alpha_kv == 0
    assert pccot.model_dump(exclude={"kava", "output_dir",
                                     "run_name"}) == kava.model_dump(exclude={"kava", "output_dir", "run_name"})
    # CODI is PCCoT with sequential latents and the loss at the answer's first digit
    codi = quality.run_config(quality.DEFAULT_CONFIG, quality.ALL_RUNS["codi"], 0, tmp_path, [])
    expected = pccot.model_dump(exclude={"output_dir", "run_name"})
    expected["latent"]["mode"], expected["kava"]["codi_position"] = "sequential", "answer_start"
    expected["latent"]["num_latents"] = 6  # CODI's own 6 latents
    assert codi.model_dump(exclude={"output_dir", "run_name"}) == expected
    # Coconut's curriculum: stages 1, 2, 3 of 1/6 of the steps each, then the final stage
    from kava.training.curriculum import Curriculum

    coconut = quality.run_config(quality.DEFAULT_CONFIG, quality.ALL_RUNS["coconut"], 0, tmp_path, [])
    steps = coconut.train.max_steps
    cur = Curriculum(coconut, steps_per_epoch=coconut.data.synthetic.num_train // coconut.train.global_batch_size,
                     total_steps=steps)
    k = cur.steps_per_stage
    assert k == round(steps / 6)
    assert [cur.stage(s) for s in (0, k - 1, k, 2 * k, 3 * k, steps - 1)] == [1, 1, 2, 3, 4, 4]
    assert coconut.latent.mode == "sequential" and not coconut.latent.projection and not coconut.kava.teacher_ce
    assert coconut.curriculum.thoughts_per_step == coconut.latent.num_latents // 3 == 2  # Coconut's 2 a stage, 3 stages


def test_same_budget_for_every_method(tmp_path):
    cfgs = [quality.run_config(quality.DEFAULT_CONFIG, r, 0, tmp_path, []) for r in quality.ALL_RUNS.values()]
    assert len({(c.train.max_steps, c.train.global_batch_size, c.train.lr, c.train.lr_scheduler, c.train.warmup_ratio)
                for c in cfgs}) == 1


def test_bench_runs_end_to_end_and_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "bench"
    assert _bench(out, "--steps", "4") == 0  # (Coconut's curriculum needs 4 steps: stages 1, 2, 3, final)
    printed = capsys.readouterr().out
    for label in ("No-CoT", "CoT", "PCCoT", "CODI", "Coconut", "KaVa", "Pause tokens (latents not fed back)"):
        assert f"| {label} |" in printed
    assert (out / "results.md").read_text().strip() == printed.strip()
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"base", "no_cot", "cot", "pccot", "codi", "coconut", "kava", "pause"}
    by_run = {r["run"]: r for r in results["runs"]}
    # every method starts from the shared base model's weights
    backbone = (out / "base" / "backbone").resolve()
    assert (backbone / "config.json").is_file()
    for name in ("no_cot", "cot", "pccot", "codi", "coconut", "kava", "pause"):
        saved = yaml.safe_load((out / "runs" / f"{name}-seed0" / "config.yaml").read_text())
        assert saved["model"]["name"] == str(backbone)
    assert {r["mode"] for r in results["runs"]} == {"direct", "cot", "latent"}
    # latent runs are evaluated under the causal controls too, and the table shows them
    for name in ("pccot", "codi", "coconut", "kava", "pause"):
        c = by_run[name]["controls"]
        assert set(c) == {"shuffled", "pass0", "teacher", "decoded"}
        assert c["shuffled"]["reliance"] == pytest.approx(by_run[name]["accuracy"] - c["shuffled"]["accuracy"])
        assert (out / "runs" / f"{name}-seed0" / "predictions.shuffled.jsonl").is_file()
    assert by_run["no_cot"]["controls"] == {}
    assert "latent reliance (points)" in printed and "| KaVa |" in printed.split("Latent controls")[1]
    assert by_run["kava"]["steps"] == 4 and by_run["kava"]["n"] == 6
    # latent mode: 1 + T + 1 + (answer tokens - 1) passes (sequential: 1 + M + 1 + ...); CoT writes its chain
    assert by_run["kava"]["forward_passes_mean"] >= 3
    M = 3  # TINY_OVERRIDES
    for name in ("codi", "coconut"):
        assert by_run[name]["forward_passes_mean"] >= 1 + M + 1 and by_run[name]["mode"] == "latent"
    stages = [r["curriculum_stage"] for r in read_jsonl(out / "runs" / "coconut-seed0" / "train_log.jsonl")]
    assert stages == [1, 2, 3, 4]
    # the pause control: one latent pass (T = 0), so 2 passes fewer than KaVa's 1 + T + 1 with T = 1
    assert by_run["pause"]["forward_passes_mean"] == pytest.approx(by_run["kava"]["forward_passes_mean"] - 1, abs=1)
    for name in ("no_cot", "cot", "pccot", "codi", "coconut", "kava", "pause"):
        assert (out / "runs" / f"{name}-seed0" / "result.json").is_file()
        assert (out / "runs" / f"{name}-seed0" / "predictions.jsonl").is_file()

    # Finished runs are not repeated.
    def fail(*a, **k):
        raise AssertionError("a finished run was repeated")

    monkeypatch.setattr(quality, "train_and_evaluate", fail)
    assert _bench(out, "--steps", "4") == 0

    def without_wall_time(table: str) -> str:  # the footer's wall time of each invocation differs
        return table.strip().rsplit("; wall time of this invocation", 1)[0]

    assert without_wall_time(capsys.readouterr().out) == without_wall_time(printed)
    monkeypatch.undo()

    # A run interrupted after training is evaluated again without retraining.
    kava_dir = out / "runs" / "kava-seed0"
    log_before = (kava_dir / "train_log.jsonl").read_text()
    (kava_dir / "result.json").unlink()
    (kava_dir / "predictions.jsonl").unlink()
    trained = []
    real_train = quality.train_and_evaluate

    def spy(cfg, run, *a, **k):
        trained.append(run.name)
        return real_train(cfg, run, *a, **k)

    monkeypatch.setattr(quality, "train_and_evaluate", spy)
    assert _bench(out, "--steps", "4") == 0
    assert trained == ["kava"]
    assert (kava_dir / "train_log.jsonl").read_text() == log_before
    assert json.loads((kava_dir / "result.json").read_text())["accuracy"] == by_run["kava"]["accuracy"]


def test_interrupted_training_continues_from_its_checkpoint(tmp_path):
    import shutil

    out = tmp_path / "bench"
    run_dir = out / "runs" / "no_cot-seed0"
    assert _bench(out, "--only", "no_cot", "--steps", "3") == 0
    log = (run_dir / "train_log.jsonl").read_text().splitlines()
    # Stop it after step 2: checkpoint-2 is on disk, the final checkpoint and the result are not.
    shutil.rmtree(run_dir / "checkpoint-final")
    (run_dir / "result.json").unlink()
    assert (run_dir / "checkpoint-2").is_dir()
    assert _bench(out, "--only", "no_cot", "--steps", "3") == 0
    resumed = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == [1, 2, 3]
    assert [r["loss"] for r in resumed] == pytest.approx([json.loads(x)["loss"] for x in log])


def test_seeds_give_mean_and_std(tmp_path, capsys):
    out = tmp_path / "bench"
    assert _bench(out, "--only", "no_cot", "--seeds", "2") == 0
    printed = capsys.readouterr().out
    assert "2 seeds" in printed and " ± " in printed
    results = json.loads((out / "results.json").read_text())
    assert results["methods"]["no_cot"]["seeds"] == [0, 1]
    assert sorted(r["seed"] for r in results["runs"] if r["run"] == "no_cot") == [0, 1]
    assert [r["run"] for r in results["runs"]].count("base") == 1  # one base model, shared by the seeds


def test_bad_arguments(tmp_path):
    assert main(["bench", "quality", "--only", "kava,nonsense", "--output-dir", str(tmp_path)]) == 2
    assert main(["bench", "quality", "--seeds", "0", "--output-dir", str(tmp_path)]) == 2
    assert main(["bench", "quality", "--jobs", "-1", "--output-dir", str(tmp_path)]) == 2
    assert main(["bench", "quality", "--base-steps", "-5", "--output-dir", str(tmp_path)]) == 2


def test_gap_closed_in_summary():
    runs = [quality.ALL_RUNS[n] for n in ("no_cot", "cot", "kava")]
    res = [
        {"run": "no_cot", "seed": 0, "accuracy": 10.0, "forward_passes_mean": 5.0, "train_seconds": 1,
         "eval_seconds": 1, "steps": 1, "n": 4},
        {"run": "cot", "seed": 0, "accuracy": 90.0, "forward_passes_mean": 50.0, "train_seconds": 1, "eval_seconds": 1,
         "steps": 1, "n": 4},
        {"run": "kava", "seed": 0, "accuracy": 70.0, "forward_passes_mean": 8.0, "train_seconds": 1, "eval_seconds": 1,
         "steps": 1, "n": 4},
    ]
    s = quality.summarize(res, runs)
    assert s["methods"]["kava"]["gap_closed"] == pytest.approx(0.75)
    assert s["methods"]["kava"]["forward_pass_ratio_to_cot"] == pytest.approx(0.16)
    assert s["methods"]["no_cot"]["gap_closed"] is None
    assert "| KaVa | latent | 70.0 | 8.0 | 0.16 | 75% |" in quality.format_table(s)


def test_other_settings_in_the_same_dir_are_refused_and_finished_runs_join_the_table(tmp_path, capsys):
    out = tmp_path / "bench"
    assert _bench(out, "--only", "no_cot") == 0
    assert _bench(out, "--only", "no_cot", "--steps", "3") == 2  # another budget: not mixed in
    capsys.readouterr()
    assert _bench(out, "--only", "kava") == 0
    printed = capsys.readouterr().out
    assert "| No-CoT |" in printed and "| KaVa |" in printed  # the earlier run is in the table


def test_base_steps_zero_trains_from_scratch(tmp_path, capsys):
    out = tmp_path / "bench"
    # the config's frozen targets would be a random network's: refused in one line before anything runs
    assert _bench(out, "--only", "no_cot,kava", "--base-steps", "0") == 2
    assert "starts from random weights" in capsys.readouterr().err and not out.exists()
    assert _bench(out, "--only", "kava", "--base-steps", "0", "kava.teacher_targets=same_pass") == 0
    assert "trained from scratch" in capsys.readouterr().out
    assert not (out / "base").exists()
    saved = yaml.safe_load((out / "runs" / "kava-seed0" / "config.yaml").read_text())
    assert saved["model"]["name"] == "tiny-llama"


def test_parallel_jobs_give_the_same_results_as_one_at_a_time(tmp_path, capsys):
    """--jobs 2 trains in spawned worker processes; every number must equal the sequential run's."""
    assert _bench(tmp_path / "seq", "--only", "no_cot,kava") == 0
    assert _bench(tmp_path / "par", "--only", "no_cot,kava", "--jobs", "2") == 0
    capsys.readouterr()
    seq = json.loads((tmp_path / "seq" / "results.json").read_text())
    par = json.loads((tmp_path / "par" / "results.json").read_text())
    keys = ("run", "seed", "accuracy", "correct", "forward_passes_mean", "steps", "final_losses")
    assert [{k: r[k] for k in keys} for r in par["runs"]] == [{k: r[k] for k in keys} for r in seq["runs"]]
    for name in ("no_cot", "kava"):
        a = (tmp_path / "seq" / "runs" / f"{name}-seed0" / "predictions.jsonl").read_text()
        b = (tmp_path / "par" / "runs" / f"{name}-seed0" / "predictions.jsonl").read_text()
        assert [json.loads(x)["text"] for x in a.splitlines()] == [json.loads(x)["text"] for x in b.splitlines()]


def test_table_header_names_where_the_runs_started():
    def res(model):
        return [{"run": "kava", "seed": 0, "accuracy": 10.0, "forward_passes_mean": 5.0, "train_seconds": 1,
                 "eval_seconds": 1, "steps": 3, "n": 4, "model": model}]

    runs = [quality.ALL_RUNS["kava"]]
    table = quality.format_table(quality.summarize(res("tiny-llama"), runs))
    assert "trained from scratch for 3 optimizer steps" in table
    table = quality.format_table(quality.summarize(res("/x/base/backbone"), runs))
    assert "fine-tuned from /x/base/backbone for 3 optimizer steps" in table
    older = res("tiny-llama")
    del older[0]["model"]  # a result.json written before results named their model
    assert "trained from scratch for 3 optimizer steps" in quality.format_table(quality.summarize(older, runs))


def test_ablations_flag_adds_every_ablation_run(tmp_path, monkeypatch):
    seen = {}

    def fake_run_quality(config, runs, **kwargs):
        seen["runs"] = [r.name for r in runs]
        seen["kwargs"] = kwargs
        return {"table": "t"}

    monkeypatch.setattr(quality, "run_quality", fake_run_quality)
    assert main(["bench", "quality", "--output-dir", str(tmp_path)]) == 0
    baselines = ["no_cot", "cot", "pccot", "codi", "coconut", "kava", "pause"]
    assert seen["runs"] == baselines
    assert seen["kwargs"]["base_steps"] == quality.DEFAULT_BASE_STEPS and seen["kwargs"]["jobs"] == 0
    assert main(["bench", "quality", "--ablations", "--output-dir", str(tmp_path)]) == 0
    assert seen["runs"] == [*baselines, *(r.name for r in quality.ABLATIONS)]
    # every ablation changes only the switches it names, relative to KaVa
    kava = quality.run_config(quality.DEFAULT_CONFIG, quality.ALL_RUNS["kava"], 0, tmp_path, []).model_dump()
    for run in quality.ABLATIONS:
        cfg = quality.run_config(quality.DEFAULT_CONFIG, run, 0, tmp_path, []).model_dump()
        changed = {f"{sec}.{k}" for sec in kava if isinstance(kava[sec], dict)
                   for k in kava[sec] if kava[sec][k] != cfg[sec][k]}
        named = ({o.split("=")[0] for o in run.overrides}
                 | ({"curriculum.steps_per_stage"} if run.stage_fraction else set()))
        named |= {"curriculum.thoughts_per_step"} if run.split_latents else set()
        assert changed and changed <= named, run.name


def test_pause_control_is_kava_with_fixed_latent_inputs(tmp_path):
    """The pause run changes one switch against KaVa: no Jacobi iteration, so every latent input stays the fixed
    <latent> embedding (`run_latents` with T = 0) while the losses, M and the budget are KaVa's."""
    kava = quality.run_config(quality.DEFAULT_CONFIG, quality.ALL_RUNS["kava"], 0, tmp_path, [BASE_MODEL])
    pause = quality.run_config(quality.DEFAULT_CONFIG, quality.ALL_RUNS["pause"], 0, tmp_path, [BASE_MODEL])
    assert pause.latent.num_iterations == 0 and kava.latent.num_iterations > 0
    pause.latent.num_iterations = kava.latent.num_iterations
    assert pause.model_dump(exclude={"run_name"}) == kava.model_dump(exclude={"run_name"})


def test_validation_split_is_evaluated_apart_from_the_test_split(tmp_path, capsys, monkeypatch):
    """--split validation evaluates the finished runs on the validation problems (which training excluded), into
    result-validation.json, without training again and without touching the test results."""
    out = tmp_path / "bench"
    val = ["data.synthetic.num_val=5"]

    def _bench(out, *extra):  # the validation split's size after TINY_OVERRIDES (which has none)
        return main(["bench", "quality", "--output-dir", str(out), *TINY_OPTIONS, *extra, *TINY_OVERRIDES, *val])

    assert _bench(out, "--only", "no_cot") == 0
    run_dir = out / "runs" / "no_cot-seed0"
    test_result = (run_dir / "result.json").read_text()
    log = (run_dir / "train_log.jsonl").read_text()
    capsys.readouterr()
    assert _bench(out, "--only", "no_cot", "--split", "validation") == 0
    assert "Synthetic validation split: 5 problems" in capsys.readouterr().out
    assert (run_dir / "train_log.jsonl").read_text() == log and (run_dir / "result.json").read_text() == test_result
    result = json.loads((run_dir / "result-validation.json").read_text())
    assert result["split"] == "validation" and result["n"] == 5
    cfg = quality.run_config(quality.DEFAULT_CONFIG, quality.ALL_RUNS["no_cot"], 0, run_dir,
                             [*TINY_OVERRIDES, *val, BASE_MODEL])
    from kava.data.eval_sets import held_out_examples

    questions = {e.question for e in held_out_examples(cfg, "validation")}
    assert {r["question"] for r in read_jsonl(run_dir / "predictions-validation.jsonl")} == questions
    assert not questions & {e.question for e in held_out_examples(cfg, "test")}
    from kava.data.train_sets import load_training_examples

    assert not questions & {e.question for e in load_training_examples(cfg.data)[0]}
    assert json.loads((out / "results-validation.json").read_text())["split"] == "validation"
