import sys
import threading

import pytest
import yaml

from kava.cli import main
from kava.errors import KavaError
from kava.experiments.sweep import run_sweep, subprocess_runner

DATASETS = ["gsm8k", "svamp"]


class FakeRunner:
    """Stands in for `python -m kava train/evaluate`: writes what they would write."""

    def __init__(self, fail_train=(), fail_eval=(), eval_writes_only=None, barrier=None):
        self.calls = []  # (step, seed, argv, CUDA_VISIBLE_DEVICES)
        self.fail_train = set(fail_train)
        self.fail_eval = set(fail_eval)
        self.eval_writes_only = eval_writes_only
        self.barrier = barrier
        self.lock = threading.Lock()
        self.active = {}
        self.max_active = {}

    def __call__(self, argv, env, log_path):
        assert argv[:3] == [sys.executable, "-m", "kava"]
        step = argv[3]
        seed_dir = log_path.parent
        seed = int(seed_dir.name.split("_")[1])
        dev = env.get("CUDA_VISIBLE_DEVICES")
        with self.lock:
            self.calls.append((step, seed, list(argv), dev))
            self.active[dev] = self.active.get(dev, 0) + 1
            self.max_active[dev] = max(self.max_active.get(dev, 0), self.active[dev])
        try:
            if self.barrier is not None and step == "train":
                self.barrier.wait()  # proves two seeds train at the same time
            with open(log_path, "a") as log:
                if step == "train":
                    assert argv[argv.index("--seed") + 1] == str(seed)
                    assert argv[argv.index("--output-dir") + 1] == str(seed_dir)
                    if seed in self.fail_train:
                        log.write("loading model\nRuntimeError: CUDA out of memory\n")
                        return 1
                    (seed_dir / "checkpoint-final").mkdir()
                    (seed_dir / "train_log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
                    log.write("trained\n")
                    return 0
                assert step == "evaluate"
                assert argv[argv.index("--checkpoint") + 1] == str(seed_dir / "checkpoint-final")
                i = argv.index("--datasets") + 1
                datasets = []
                while not argv[i].startswith("--"):
                    datasets.append(argv[i])
                    i += 1
                assert argv[i:i + 2] == ["--output-dir", str(seed_dir)]
                if seed in self.fail_eval:
                    log.write("Traceback...\nValueError: bad answer format\n")
                    datasets = [d for d in datasets if d in (self.eval_writes_only or ())]
                    rc = 1
                else:
                    rc = 0
                for k, ds in enumerate(datasets):
                    (seed_dir / f"results_{ds}.yaml").write_text(yaml.safe_dump({
                        "accuracy": 50.0 + seed - 42 + 10 * k, "n": 100, "correct": 50 + seed - 42,
                        "forward_passes_mean": 8.0, "forward_passes_std": 0.0,
                        "generated_tokens_mean": 5.0, "seconds": 1.0}))
                return rc
        finally:
            with self.lock:
                self.active[dev] -= 1

    def steps(self):
        return [(step, seed) for step, seed, _, _ in self.calls]


@pytest.fixture
def config(tmp_path):
    p = tmp_path / "configs" / "kava_llama1b.yaml"
    p.parent.mkdir()
    p.write_text(yaml.safe_dump({"model": {"name": "meta-llama/Llama-3.2-1B-Instruct"},
                                 "data": {"dataset": "gsm8k-aug"}, "train": {"epochs": 1}}))
    return p


def _status(run_dir, seed):
    return yaml.safe_load((run_dir / f"seed_{seed}" / "status.yaml").read_text())


def test_sweep_produces_tree_and_skips_finished_seeds(tmp_path, config):
    out = tmp_path / "experiments"
    runner = FakeRunner()
    res = run_sweep(config, [42, 43, 44], out, DATASETS, runner=runner, progress=lambda m: None)
    run_dir = out / "kava_llama1b"  # run name = config stem
    assert res["run_name"] == "kava_llama1b" and res["run_dir"] == str(run_dir.resolve())
    assert res["n_failed"] == 0 and res["done"] == [42, 43, 44] and res["failed"] == []
    assert runner.steps() == [("train", 42), ("evaluate", 42), ("train", 43), ("evaluate", 43),
                              ("train", 44), ("evaluate", 44)]
    # without devices the environment is left alone
    assert all(dev is None for *_, dev in runner.calls)
    train_argv = runner.calls[0][2]
    assert train_argv[3:] == ["train", "--config", str(config.resolve()), "--output-dir",
                              str((run_dir / "seed_42").resolve()), "--seed", "42", "--no-progress"]

    meta = yaml.safe_load((run_dir / "run.yaml").read_text())
    assert meta["run_name"] == "kava_llama1b" and meta["seeds"] == [42, 43, 44] and meta["datasets"] == DATASETS
    assert meta["model"] == "meta-llama/Llama-3.2-1B-Instruct" and meta["train_data"] == "gsm8k-aug"
    for s in (42, 43, 44):
        seed_dir = run_dir / f"seed_{s}"
        assert (seed_dir / "checkpoint-final").is_dir() and (seed_dir / "train_log.jsonl").is_file()
        assert (seed_dir / "results_gsm8k.yaml").is_file() and (seed_dir / "results_svamp.yaml").is_file()
        assert "trained" in (seed_dir / "train.out").read_text()
        assert "python" in (seed_dir / "eval.out").read_text()  # the command line header
        st = _status(run_dir, s)
        assert (st["seed"], st["train"], st["eval"], st["error"]) == (s, "done", "done", None)
    summary = yaml.safe_load((run_dir / "summary.yaml").read_text())
    assert summary["n_seeds"] == 3
    assert summary["datasets"]["gsm8k"]["accuracy_mean"] == 51.0
    assert summary["datasets"]["gsm8k"]["accuracy_std"] == 1.0
    assert (run_dir / "summary.csv").is_file() and (run_dir / "all_seeds_results.yaml").is_file()
    assert res["summary"]["n_seeds"] == 3

    # Second run: everything is there, the runner is not called again.
    runner2 = FakeRunner()
    res2 = run_sweep(config, [42, 43, 44], out, DATASETS, runner=runner2, progress=lambda m: None)
    assert runner2.calls == []
    assert res2["skipped"] == [42, 43, 44] and res2["n_failed"] == 0


def test_failed_seed_is_recorded_and_rerun_retries_only_it(tmp_path, config):
    out = tmp_path / "exp"
    runner = FakeRunner(fail_train={43})
    res = run_sweep(config, [42, 43, 44], out, DATASETS, run_name="r", runner=runner, progress=lambda m: None)
    assert res["n_failed"] == 1 and res["failed"] == [43] and res["done"] == [42, 44]
    run_dir = out / "r"
    st = _status(run_dir, 43)
    assert st["train"] == "failed" and st["eval"] == "pending"
    assert "exit code 1" in st["error"] and "CUDA out of memory" in st["error"]
    assert _status(run_dir, 44)["eval"] == "done"  # a later seed still finished
    summary = yaml.safe_load((run_dir / "summary.yaml").read_text())
    assert summary["n_seeds"] == 2 and summary["seeds"] == [42, 44] and summary["seeds_failed"] == [43]

    runner2 = FakeRunner()
    res2 = run_sweep(config, [42, 43, 44], out, DATASETS, run_name="r", runner=runner2, progress=lambda m: None)
    assert runner2.steps() == [("train", 43), ("evaluate", 43)]
    assert res2["n_failed"] == 0 and res2["skipped"] == [42, 44] and res2["done"] == [43]
    st = _status(run_dir, 43)
    assert (st["train"], st["eval"], st["error"]) == ("done", "done", None)
    assert yaml.safe_load((run_dir / "summary.yaml").read_text())["n_seeds"] == 3


def test_partial_evaluation_is_retried_for_missing_datasets_only(tmp_path, config):
    out = tmp_path / "exp"
    runner = FakeRunner(fail_eval={42}, eval_writes_only={"gsm8k"})
    res = run_sweep(config, [42], out, DATASETS, runner=runner, progress=lambda m: None)
    assert res["n_failed"] == 1
    st = _status(out / "kava_llama1b", 42)
    assert st["train"] == "done" and st["eval"] == "failed"
    assert "bad answer format" in st["error"] and "missing: svamp" in st["error"]

    runner2 = FakeRunner()
    res2 = run_sweep(config, [42], out, DATASETS, runner=runner2, progress=lambda m: None)
    assert res2["n_failed"] == 0
    assert runner2.steps() == [("evaluate", 42)]  # checkpoint exists: no retraining
    argv = runner2.calls[0][2]
    assert argv[argv.index("--datasets") + 1:argv.index("--output-dir")] == ["svamp"]


def test_corrupt_results_are_reevaluated(tmp_path, config):
    out = tmp_path / "exp"
    run_sweep(config, [42], out, DATASETS, runner=FakeRunner(), progress=lambda m: None)
    (out / "kava_llama1b" / "seed_42" / "results_svamp.yaml").write_text("{{{ not yaml")
    runner = FakeRunner()
    run_sweep(config, [42], out, DATASETS, runner=runner, progress=lambda m: None)
    assert runner.steps() == [("evaluate", 42)]


def test_interrupted_training_is_resumed(tmp_path, config):
    out = tmp_path / "exp"
    seed_dir = out / "kava_llama1b" / "seed_7"
    for step in (4, 12, 8):  # what a killed training leaves behind
        (seed_dir / f"checkpoint-{step}").mkdir(parents=True)
    (seed_dir / "checkpoint-16.tmp").mkdir()
    runner = FakeRunner()
    messages = []
    res = run_sweep(config, [7, 8], out, DATASETS, runner=runner, progress=messages.append)
    assert res["n_failed"] == 0
    train7, train8 = (argv for step, _, argv, _ in runner.calls if step == "train")
    assert train7[-1] == "--resume" and "--resume" not in train8
    assert any("seed 7: resuming training from checkpoint-12" in m for m in messages)


def test_exit_zero_without_outputs_is_a_failure(tmp_path, config):
    def lazy(argv, env, log_path):
        return 0

    res = run_sweep(config, [1], tmp_path / "exp", DATASETS, runner=lazy, progress=lambda m: None)
    assert res["n_failed"] == 1
    assert "wrote no" in _status(tmp_path / "exp" / "kava_llama1b", 1)["error"]


def test_runner_exception_is_recorded(tmp_path, config):
    def broken(argv, env, log_path):
        raise OSError("no such interpreter")

    res = run_sweep(config, [1, 2], tmp_path / "exp", DATASETS, runner=broken, progress=lambda m: None)
    assert res["failed"] == [1, 2]
    assert "no such interpreter" in _status(tmp_path / "exp" / "kava_llama1b", 2)["error"]


def test_train_only_then_eval_only(tmp_path, config):
    out = tmp_path / "exp"
    runner = FakeRunner()
    res = run_sweep(config, [1, 2], out, None, train_only=True, overrides=["train.lr=1e-4"], runner=runner,
                    progress=lambda m: None)
    assert res["n_failed"] == 0
    assert runner.steps() == [("train", 1), ("train", 2)]
    assert runner.calls[0][2][-1] == "train.lr=1e-4"
    st = _status(out / "kava_llama1b", 1)
    assert st["train"] == "done" and st["eval"] == "pending"
    assert yaml.safe_load((out / "kava_llama1b" / "summary.yaml").read_text())["n_seeds"] == 0

    runner2 = FakeRunner()
    res2 = run_sweep(config, [1, 2, 3], out, DATASETS, eval_only=True, eval_args=["--batch-size", "8"],
                     runner=runner2, progress=lambda m: None)
    assert runner2.steps() == [("evaluate", 1), ("evaluate", 2)]
    assert runner2.calls[0][2][-2:] == ["--batch-size", "8"]
    assert res2["failed"] == [3]
    st = _status(out / "kava_llama1b", 3)
    assert st["eval"] == "failed" and "no checkpoint" in st["error"] and "--eval-only" in st["error"]


def test_parallel_devices(tmp_path, config):
    runner = FakeRunner(barrier=threading.Barrier(2, timeout=10))
    res = run_sweep(config, [1, 2, 3, 4], tmp_path / "exp", DATASETS, devices=["0", "1"], runner=runner,
                    progress=lambda m: None)
    assert res["n_failed"] == 0, res
    assert sorted(res["done"]) == [1, 2, 3, 4]
    assert list(res["seeds"]) == [1, 2, 3, 4]
    assert {dev for *_, dev in runner.calls} == {"0", "1"}
    assert runner.max_active == {"0": 1, "1": 1}  # one process per device at a time
    by_seed = {}
    for step, seed, _, dev in runner.calls:
        by_seed.setdefault(seed, set()).add(dev)
    assert all(len(devs) == 1 for devs in by_seed.values())  # a seed trains and evaluates on one device
    for s in (1, 2, 3, 4):
        assert _status(tmp_path / "exp" / "kava_llama1b", s)["device"] == by_seed[s].pop()
    assert yaml.safe_load((tmp_path / "exp" / "kava_llama1b" / "summary.yaml").read_text())["n_seeds"] == 4


def test_single_device_is_sequential_with_cuda_visible_devices(tmp_path, config):
    runner = FakeRunner()
    run_sweep(config, [1, 2], tmp_path / "exp", ["gsm8k"], devices="3", runner=runner, progress=lambda m: None)
    assert [dev for *_, dev in runner.calls] == ["3"] * 4


def test_user_mistakes(tmp_path, config):
    kw = dict(runner=FakeRunner(), progress=lambda m: None)
    with pytest.raises(KavaError, match="seed 42 is given twice"):
        run_sweep(config, [42, 43, 42], tmp_path / "exp", DATASETS, **kw)
    with pytest.raises(KavaError, match="no seeds"):
        run_sweep(config, [], tmp_path / "exp", DATASETS, **kw)
    with pytest.raises(KavaError, match="exclude each other"):
        run_sweep(config, [1], tmp_path / "exp", DATASETS, train_only=True, eval_only=True, **kw)
    with pytest.raises(KavaError, match="no datasets"):
        run_sweep(config, [1], tmp_path / "exp", [], **kw)
    with pytest.raises(KavaError, match="config file not found"):
        run_sweep(tmp_path / "missing.yaml", [1], tmp_path / "exp", DATASETS, **kw)
    with pytest.raises(KavaError, match="device 0 is given twice"):
        run_sweep(config, [1], tmp_path / "exp", DATASETS, devices=["0", "0"], **kw)
    with pytest.raises(KavaError, match="invalid run name"):
        run_sweep(config, [1], tmp_path / "exp", DATASETS, run_name="../x", **kw)
    assert not (tmp_path / "exp").exists()  # nothing was started


@pytest.mark.parametrize("config_text, overrides, message", [
    ("train: {epochs: 1, bogus: 3}\n", [], "unknown key 'train.bogus'"),
    ("", ["train.bogus=3"], "unknown key 'train.bogus'"),
    ("", ["train.lr=-1"], "'train.lr': Input should be greater than 0"),
    ("latent: 5\n", [], "'latent': Input should be a valid dictionary"),
])
def test_the_sweep_refuses_what_kava_train_refuses(tmp_path, config, capsys, config_text, overrides, message):
    """The sweep reads its config through kava.config, as kava train does: a key or value train
    rejects stops the sweep with the same error before any seed runs."""
    config.write_text(config.read_text() + config_text)
    train_dir = tmp_path / "train"
    assert main(["train", "--config", str(config), "--output-dir", str(train_dir), *overrides]) == 2
    train_error = capsys.readouterr().err
    assert message in train_error
    runner = FakeRunner()
    with pytest.raises(KavaError) as err:
        run_sweep(config, [1], tmp_path / "exp", DATASETS, overrides=overrides, runner=runner, progress=lambda m: None)
    assert f"error: {err.value}\n" == train_error
    assert runner.calls == [] and not (tmp_path / "exp").exists() and not train_dir.exists()


def test_run_refuses_a_changed_config(tmp_path, config):
    run_sweep(config, [1], tmp_path / "exp", DATASETS, runner=FakeRunner(), progress=lambda m: None)
    config.write_text(config.read_text() + "\nlatent: {num_iterations: 5}\n")
    with pytest.raises(KavaError, match="different config"):
        run_sweep(config, [2], tmp_path / "exp", DATASETS, runner=FakeRunner(), progress=lambda m: None)
    # Same config, but the second sweep of the run would train with other overrides.
    run_sweep(config, [1], tmp_path / "exp2", DATASETS, runner=FakeRunner(), progress=lambda m: None)
    with pytest.raises(KavaError, match="overrides"):
        run_sweep(config, [2], tmp_path / "exp2", DATASETS, overrides=["train.lr=1"], runner=FakeRunner(),
                  progress=lambda m: None)
    # Another run name is fine.
    res = run_sweep(config, [2], tmp_path / "exp2", DATASETS, overrides=["train.lr=1"], run_name="lr1",
                    runner=FakeRunner(), progress=lambda m: None)
    assert res["n_failed"] == 0


def test_subprocess_runner_appends_output(tmp_path):
    log = tmp_path / "x.out"
    log.write_text("before\n")
    code = "import os, sys; print('hello', os.environ['KAVA_T']); print('oops', file=sys.stderr); sys.exit(3)"
    rc = subprocess_runner([sys.executable, "-c", code], {"KAVA_T": "1", "PATH": "/usr/bin:/bin"}, log)
    assert rc == 3
    text = log.read_text()
    assert text.startswith("before\n") and "hello 1" in text and "oops" in text


@pytest.mark.parametrize("datasets, overrides, eval_args, message", [
    (["gsm8k", "gsm8kk"], [], [], "unknown evaluation dataset 'gsm8kk'"),
    (["svamp-test300"], [], ["--source", "offline"], "dataset svamp-test300 is hub-only"),
    (["synthetic-test"], [], [], "synthetic-test is the test split of the synthetic task"),
    (["gsm8k"], ["train.bogus=1"], [], "unknown key 'train.bogus'"),
    (["gsm8k"], ["data.source=local", "data.dataset=missing.jsonl"], [], "training data file not found: missing.jsonl"),
])
def test_everything_is_checked_before_the_first_training_step(tmp_path, config, datasets, overrides, eval_args,
                                                               message):
    """Before: a misspelt dataset name (or a bad override) failed only after every seed had trained."""
    runner = FakeRunner()
    with pytest.raises(KavaError, match=message):
        run_sweep(config, [1, 2], tmp_path / "exp", datasets, overrides=overrides, eval_args=eval_args, runner=runner,
                  progress=lambda m: None)
    assert runner.calls == [] and not (tmp_path / "exp").exists()
