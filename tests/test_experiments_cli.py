"""`kava sweep / aggregate / compare / reproduce` through the real command line (kava.cli.main),
with a fake runner standing in for the train/evaluate subprocesses (the real thing runs in
test_experiments_e2e.py)."""

import csv
import sys
from pathlib import Path

import pytest
import yaml

import kava.experiments.sweep as sweep_mod
from kava.cli import build_parser, main
from kava.evaluation.results import dataset_key
from kava.experiments.cli import PAPER_CONFIGS

REPO = Path(__file__).resolve().parents[1]


class Fake:
    """Writes what `kava train` / `kava evaluate` would; seeds in `fail` fail to train."""

    def __init__(self, fail=()):
        self.calls = []
        self.fail = set(fail)

    def __call__(self, argv, env, log_path):
        assert argv[:3] == [sys.executable, "-m", "kava"]
        seed_dir = log_path.parent
        seed = int(seed_dir.name.split("_")[1])
        self.calls.append((argv[3], seed, list(argv)))
        if argv[3] == "train":
            if seed in self.fail:
                log_path.write_text(log_path.read_text() + "Traceback\nRuntimeError: CUDA out of memory\n")
                return 1
            (seed_dir / "checkpoint-final").mkdir()
            return 0
        i = argv.index("--datasets") + 1
        j = argv.index("--output-dir")
        for k, ds in enumerate(argv[i:j]):
            (seed_dir / f"results_{dataset_key(ds)}.yaml").write_text(yaml.safe_dump(
                {"accuracy": 40.0 + seed + 10 * k, "n": 10, "correct": 4, "forward_passes_mean": 7.0 + k,
                 "forward_passes_std": 0.0}))
        return 0


@pytest.fixture
def fake(monkeypatch):
    f = Fake()
    monkeypatch.setattr(sweep_mod, "subprocess_runner", f)
    return f


@pytest.fixture
def config(tmp_path):
    p = tmp_path / "kava_small.yaml"
    p.write_text(yaml.safe_dump({"model": {"name": "Qwen/Qwen2.5-0.5B-Instruct"},
                                 "data": {"dataset": "whynlp/gsm8k-aug"}, "train": {"epochs": 1}}))
    return p


def test_every_command_has_a_description_and_an_example():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("sweep", "aggregate", "compare", "reproduce"):
        p = sub.choices[name]
        assert p.description and len(p.description) > 40, name
        assert p.epilog and f"kava {name}" in p.epilog, name
        assert f"kava {name}" in p.format_help()


def test_sweep_cli(tmp_path, config, fake, capsys):
    out = tmp_path / "exp"
    # overrides may follow --seeds: they are not taken for seeds
    rc = main(["sweep", "--config", str(config), "--seeds", "1", "2", "train.lr=1e-4", "--output-dir", str(out),
               "--datasets", "gsm8k", "svamp", "--source", "offline", "--limit", "4", "--eval-batch-size", "8"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert [(s, seed) for s, seed, _ in fake.calls] == [("train", 1), ("evaluate", 1), ("train", 2), ("evaluate", 2)]
    train_argv, eval_argv = fake.calls[0][2], fake.calls[1][2]
    assert train_argv[-1] == "train.lr=1e-4" and "--no-progress" in train_argv
    assert eval_argv[-6:] == ["--source", "offline", "--limit", "4", "--batch-size", "8"]
    assert eval_argv[eval_argv.index("--datasets") + 1:eval_argv.index("--output-dir")] == ["gsm8k", "svamp"]
    run = out / "kava_small"
    meta = yaml.safe_load((run / "run.yaml").read_text())
    assert meta["overrides"] == ["train.lr=1e-4"] and meta["seeds"] == [1, 2]
    assert "seed 1: done" in cap.out and "seed 2: done" in cap.out
    assert "summary over 2 seed(s) [1, 2]" in cap.out
    # gsm8k: 41, 42 -> 41.50 ± 0.71 (sample std); forward passes 7.0 ± 0.0
    line = next(ln for ln in cap.out.splitlines() if ln.strip().startswith("gsm8k"))
    assert line.split() == ["gsm8k", "41.50", "±", "0.71", "7.0", "±", "0.0", "2"]
    assert "[kava_small] seed 1: training" in cap.err  # progress goes to stderr

    # Again: nothing runs.
    fake.calls.clear()
    assert main(["sweep", "--config", str(config), "--seeds", "1", "2", "train.lr=1e-4", "--output-dir", str(out),
                 "--datasets", "gsm8k", "svamp"]) == 0
    assert fake.calls == [] and "already done (skipped)" in capsys.readouterr().out


def test_sweep_cli_failed_seed_exits_1_and_rerun_retries_it(tmp_path, config, fake, capsys):
    fake.fail = {2}
    argv = ["sweep", "--config", str(config), "--seeds", "1", "2", "3", "--output-dir", str(tmp_path / "exp"),
            "--datasets", "gsm8k", "--run-name", "r"]
    assert main(argv) == 1
    cap = capsys.readouterr()
    assert "seed 2: FAILED" in cap.out and "seed 3: done" in cap.out
    assert "error: r seed 2: training failed (exit code 1)" in cap.err
    assert "last line of the log: RuntimeError: CUDA out of memory" in cap.err
    assert "1 of 3 seed(s) failed" in cap.err
    summary = yaml.safe_load((tmp_path / "exp" / "r" / "summary.yaml").read_text())
    assert summary["n_seeds"] == 2 and summary["seeds_failed"] == [2]

    fake.fail = set()
    fake.calls.clear()
    assert main(argv) == 0
    assert [(s, seed) for s, seed, _ in fake.calls] == [("train", 2), ("evaluate", 2)]


def test_sweep_cli_train_only_and_eval_only(tmp_path, config, fake, capsys):
    base = ["sweep", "--config", str(config), "--seeds", "5", "--output-dir", str(tmp_path / "exp")]
    assert main(base + ["--train-only"]) == 0
    assert [s for s, _, _ in fake.calls] == ["train"]
    assert "no results yet" in capsys.readouterr().out
    assert main(base + ["--eval-only", "--datasets", "svamp"]) == 0
    assert [s for s, _, _ in fake.calls] == ["train", "evaluate"]
    with pytest.raises(SystemExit) as e:  # argparse: not allowed together
        main(base + ["--train-only", "--eval-only"])
    assert e.value.code == 2


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "1", "2", "1"], "error: seed 1 is given twice"),
    (["--seeds", "x"], "error: seed 'x' is not an integer"),
    (["--seeds", "1", "--devices", "0,0"], "error: device 0 is given twice"),
])
def test_sweep_cli_user_errors(tmp_path, config, fake, capsys, argv, message):
    rc = main(["sweep", "--config", str(config), "--output-dir", str(tmp_path / "exp"), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(message) and len(err.strip().splitlines()) == 1
    assert fake.calls == []


def test_sweep_cli_with_a_jsonl_dataset(tmp_path, config, fake, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my set.jsonl").write_text('{"question": "1+1?", "answer": "2"}\n')
    argv = ["sweep", "--config", str(config), "--seeds", "1", "--datasets", "gsm8k", "my set.jsonl"]
    assert main(argv) == 0
    eval_argv = fake.calls[1][2]
    # passed to kava evaluate as an absolute path; its results file is named after the stem
    assert eval_argv[eval_argv.index("--datasets") + 2] == str(tmp_path / "my set.jsonl")
    seed_dir = tmp_path / "experiments" / "kava_small" / "seed_1"
    assert (seed_dir / "results_my_set.yaml").is_file()
    assert "my_set" in capsys.readouterr().out
    fake.calls.clear()
    assert main(argv) == 0 and fake.calls == []  # found as done
    capsys.readouterr()
    assert main(argv[:-1] + ["missing.jsonl"]) == 2
    assert capsys.readouterr().err.strip() == "error: dataset file not found: missing.jsonl"


def test_sweep_cli_missing_config(tmp_path, fake, capsys):
    assert main(["sweep", "--config", str(tmp_path / "nope.yaml"), "--seeds", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: config file not found: {tmp_path / 'nope.yaml'} "
                          "(or give the name of a shipped config: ")
    assert "\n" not in err


def _make_tree(root):
    for run, accs in (("a", [60, 61, 62]), ("b", [50, 51, 52])):
        for seed, acc in zip((42, 43, 44), accs):
            d = root / run / f"seed_{seed}"
            d.mkdir(parents=True)
            (d / "results_gsm8k.yaml").write_text(yaml.safe_dump({"accuracy": acc, "forward_passes_mean": 6.5}))
    return root


def test_aggregate_cli(tmp_path, capsys):
    exp = _make_tree(tmp_path / "exp")
    (exp / "b" / "seed_44" / "results_svamp.yaml").write_text("accuracy: [broken")
    assert main(["aggregate", "--experiments-dir", str(exp), "--output", str(tmp_path / "t" / "table.csv")]) == 0
    cap = capsys.readouterr()
    lines = cap.out.splitlines()
    assert lines[0] == "| run | model | train_data | gsm8k accuracy (%) | gsm8k forward passes | n_seeds |"
    assert lines[2] == "| a | ? | ? | 61.0 ± 1.0 | 6.5 | 3 |"
    assert lines[3] == "| b | ? | ? | 51.0 ± 1.0 | 6.5 | 3 |"
    assert f"wrote {tmp_path / 't' / 'table.csv'}" in cap.out
    assert "skipping results file" in cap.err and "results_svamp.yaml" in cap.err  # reported by path
    rows = list(csv.reader((tmp_path / "t" / "table.csv").open()))
    assert rows[1] == ["a", "?", "?", "61.0 ± 1.0", "6.5", "3"]
    for ext in ("tex", "md", "png"):
        assert (tmp_path / "t" / f"table.{ext}").is_file()


def test_aggregate_cli_errors(tmp_path, capsys):
    assert main(["aggregate", "--experiments-dir", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"error: experiments directory not found: {tmp_path / 'missing'}"
    (tmp_path / "empty" / "run" / "seed_1").mkdir(parents=True)
    assert main(["aggregate", "--experiments-dir", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: no results found under {tmp_path / 'empty'}; run `kava sweep` first"


def test_compare_cli(tmp_path, capsys):
    exp = _make_tree(tmp_path / "exp")
    assert main(["compare", str(exp / "a"), str(exp / "b")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("A = a\nB = b\n")
    assert "61.00 ± 1.00 (3)" in out and "51.00 ± 1.00 (3)" in out and "+10.00" in out
    assert "gsm8k: A better: significant by the 2-std rule and Welch's t-test" in out

    assert main(["compare", str(exp / "a"), str(exp / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"error: run directory not found: {exp / 'nope'}"
    assert main(["compare", str(exp / "a"), str(exp / "a")]) == 2
    assert "the same folder" in capsys.readouterr().err
    assert main(["compare", str(exp / "a"), str(exp / "b"), "--alpha", "2"]) == 2
    assert "--alpha" in capsys.readouterr().err


def test_reproduce_dry_run_uses_the_paper_configs(monkeypatch, capsys, fake):
    monkeypatch.chdir(REPO)
    assert main(["reproduce", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("kava reproduce: 6 config(s) x 3 seed(s) [42, 43, 44] into experiments/")
    for name in PAPER_CONFIGS:
        assert f"configs/{name}.yaml" in out
        assert (f"kava sweep --config configs/{name}.yaml --seeds 42 43 44 --output-dir experiments "
                f"--datasets gsm8k gsm8k-hard svamp\n") in out
    assert "kava aggregate --experiments-dir experiments --output experiments/table.csv" in out
    assert "GPU hours" in out and "total: about" in out
    assert fake.calls == [] and not (REPO / "experiments").exists()


def test_reproduce_runs_every_config_then_aggregates(tmp_path, config, fake, capsys):
    other = tmp_path / "kava_other.yaml"
    other.write_text(yaml.safe_dump({"model": {"name": "meta-llama/Llama-3.2-1B-Instruct"},
                                     "data": {"dataset": "zen-E/GSM8k-Aug-NL"}}))
    exp = tmp_path / "exp"
    argv = ["reproduce", "--configs", str(config), str(other), "--seeds", "1", "2", "--output-dir", str(exp),
            "--datasets", "gsm8k", "--source", "offline"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert [(s, seed) for s, seed, _ in fake.calls] == [("train", 1), ("evaluate", 1), ("train", 2),
                                                         ("evaluate", 2)] * 2
    assert all(c[2][-2:] == ["--source", "offline"] for c in fake.calls if c[0] == "evaluate")
    assert "| kava_other | meta-llama/Llama-3.2-1B-Instruct | zen-E/GSM8k-Aug-NL | 41.5 ± 0.7 | 7.0 | 2 |" in out
    assert "| kava_small | Qwen/Qwen2.5-0.5B-Instruct | whynlp/gsm8k-aug | 41.5 ± 0.7 | 7.0 | 2 |" in out
    assert (exp / "table.tex").is_file() and (exp / "kava_small" / "summary.yaml").is_file()

    # Resumable: nothing left to do.
    fake.calls.clear()
    assert main(argv) == 0 and fake.calls == []


def test_reproduce_reports_failed_seeds_but_still_aggregates(tmp_path, config, fake, capsys):
    fake.fail = {2}
    exp = tmp_path / "exp"
    assert main(["reproduce", "--configs", str(config), "--seeds", "1", "2", "--output-dir", str(exp),
                 "--datasets", "gsm8k"]) == 1
    cap = capsys.readouterr()
    assert "| kava_small |" in cap.out and (exp / "table.csv").is_file()
    assert "error: some seeds failed in kava_small" in cap.err


def test_reproduce_errors(tmp_path, config, capsys, fake):
    assert main(["reproduce", "--configs", str(tmp_path / "x.yaml"), "--dry-run"]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: config file not found: {tmp_path / 'x.yaml'} (or give")
    assert main(["reproduce", "--configs", str(config), str(config), "--dry-run"]) == 2
    assert "share the run name 'kava_small'" in capsys.readouterr().err
    assert main(["reproduce", "--configs", str(config), "--seeds", "1", "1", "--dry-run"]) == 2
    assert capsys.readouterr().err.strip() == "error: seed 1 is given twice; give each seed once"


# The launcher flags, one per field of kava.config.LauncherConfig (a sample value each).
LAUNCHER_SAMPLES = {"partition": "gpu", "account": "lab", "time": "1-00:30", "gpus_per_job": "2", "cpus_per_job": "4",
                    "mem_gb": "7.5", "constraint": "a100", "qos": "high", "sbatch_args": "--exclusive",
                    "setup": "module load cuda", "array_parallelism": "3", "max_requeues": "0",
                    "signal_delay_s": "60"}


def test_every_launcher_setting_is_a_flag_made_from_the_schema(tmp_path):
    """A field added to LauncherConfig gets its flag, which overrides the config's value."""
    from kava.config import LauncherConfig
    from kava.experiments.cli import launcher_config, launcher_flags

    flags = {name: flag for name, flag, _ in launcher_flags()}
    assert list(flags) == list(LauncherConfig.model_fields) == list(LAUNCHER_SAMPLES)
    assert flags["sbatch_args"] == "--sbatch-arg" and flags["mem_gb"] == "--mem-gb"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": "tiny-llama"},
                                      "data": {"dataset": "x.jsonl", "source": "local"},
                                      "launcher": {"partition": "cpu", "qos": "low", "setup": ["echo hi"]}}))
    argv = ["sweep", "--config", str(config), "--seeds", "1", "--launcher", "slurm",
            *(f"{flags[n]}={v}" for n, v in LAUNCHER_SAMPLES.items())]
    got = launcher_config(config, build_parser().parse_args(argv))
    expected = {n: [v] if n in ("sbatch_args", "setup") else v for n, v in LAUNCHER_SAMPLES.items()}
    assert got == LauncherConfig.model_validate(expected)
    assert launcher_config(config, build_parser().parse_args(argv[:7])).partition == "cpu"  # the config's value


@pytest.mark.parametrize("flag, value", [("--signal-delay-s", "10"), ("--cpus-per-job", "0"), ("--gpus-per-job", "-1"),
                                         ("--mem-gb", "lots")])
def test_launcher_flags_check_their_values(flag, value, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["sweep", "--config", "c.yaml", "--seeds", "1", flag, value])
    assert stop.value.code == 2 and f"error: argument {flag}" in capsys.readouterr().err
