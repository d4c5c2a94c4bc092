"""The command line as a user meets it: start-up without torch, help on every option."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kava.cli import build_parser

ROOT = Path(__file__).parent.parent
HEAVY = ("torch", "transformers", "peft", "accelerate", "datasets", "matplotlib")

# Runs argv through kava.cli.main in a fresh interpreter and prints which heavy modules it imported.
_PROBE = """
import json, sys
from kava.cli import main
try:
    code = main(json.loads(sys.argv[1]))
except SystemExit as stop:
    code = stop.code
print(json.dumps({"code": code, "heavy": [m for m in json.loads(sys.argv[2]) if m in sys.modules]}), file=sys.stderr)
"""


def _probe(argv: list[str]) -> tuple[dict, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(argv), json.dumps(HEAVY)], capture_output=True,
                          text=True, env=env, timeout=120)
    result = json.loads(proc.stderr.strip().splitlines()[-1])
    return result, proc.stdout + proc.stderr


@pytest.mark.parametrize("argv", [["--help"], ["train", "--bogus"], ["bench", "speed", "--help"], ["evaluate"]],
                         ids=["help", "bad-argument", "bench-help", "missing-argument"])
def test_help_and_argument_errors_do_not_import_torch(argv):
    """`kava --help` and an argument error take well under a second because building the
    parser imports neither torch nor transformers (their import alone takes seconds)."""
    result, out = _probe(argv)
    assert result["heavy"] == [], f"kava {' '.join(argv)} imported {result['heavy']}"
    assert result["code"] == (0 if "--help" in argv else 2), out


def _subparsers(parser, prefix="kava"):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from _subparsers(sub, f"{prefix} {name}")


def test_every_option_of_every_command_has_help():
    parser = build_parser()
    missing = []
    for name, sub in [("kava", parser), *_subparsers(parser)]:
        for action in sub._actions:
            if action.__class__.__name__ in ("_HelpAction", "_SubParsersAction"):
                continue
            if not (action.help or "").strip():
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"options without help text: {missing}"


# ----- the shipped configs -------------------------------------------------------------------

PAPER_CONFIGS = ("llama1b_aug", "llama1b_aug_nl", "qwen05b_aug", "qwen05b_aug_nl", "llama3b_aug", "llama3b_aug_nl")


def test_kava_configs_lists_every_shipped_config_with_its_provenance(capsys):
    from kava.cli import main
    from kava.config import CONFIGS_DIR, config_summary

    assert main(["configs"]) == 0
    out = capsys.readouterr().out.splitlines()
    files = sorted(CONFIGS_DIR.glob("*.yaml"))
    assert len(files) >= 11 and out[0].startswith("shipped configs")
    for path in files:
        what, source = config_summary(path)
        assert f"  {path.stem} " in "\n".join(out) and what in "\n".join(out), path.stem
        assert what and "\n" not in what and len(what) < 200
    for name in PAPER_CONFIGS:
        assert "Table 6" in config_summary(CONFIGS_DIR / f"{name}.yaml")[1]


def test_config_summary_reads_the_header(tmp_path):
    from kava.config import config_summary

    f = tmp_path / "x.yaml"
    f.write_text("# Model X on data Y: lr 2.0e-4 and more.\n# Provenance: Someone (2024) Table 3: lr 2.0e-4.\n"
                 "seed: 1\n# not the header\n")
    assert config_summary(f) == ("Model X on data Y", "Someone (2024) Table 3")
    f.write_text("seed: 1\n")
    assert config_summary(f) == ("", None)


def test_train_finds_a_shipped_config_by_name_and_prints_it(tmp_path, capsys, monkeypatch):
    import yaml

    from kava.cli import main

    monkeypatch.chdir(tmp_path)  # no configs/ folder here: the name is found in the package
    assert main(["train", "--config", "llama1b_aug", "--print-config", "--output-dir", "out", "train.lr=1e-5"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["name"] == "meta-llama/Llama-3.2-1B-Instruct"
    assert cfg["train"]["lr"] == 1e-5 and cfg["output_dir"] == "out"
    assert not (tmp_path / "out").exists()  # printed, nothing trained
    # a path still works, the name with .yaml too
    assert main(["train", "--config", str(ROOT / "configs" / "tiny.yaml"), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["name"] == "tiny-llama"
    assert main(["train", "--config", "tiny.yaml", "--print-config", "seed=7"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["seed"] == 7


def test_a_wrong_config_name_is_one_line_listing_the_names(tmp_path, capsys, monkeypatch):
    from kava.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "llama1b", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: unknown config 'llama1b'")
    assert "llama1b_aug, llama1b_aug_nl" in err and "tiny" in err
    assert main(["train", "--config", "nowhere/x.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: config file not found: nowhere/x.yaml")


def test_the_wheel_ships_the_configs(tmp_path):
    """A non-editable install finds the configs: they are inside the wheel, and kava run from
    the unpacked wheel lists them."""
    import shutil
    import zipfile

    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(tmp_path / "dist"), str(tree)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("kava-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.name for p in (ROOT / "src" / "kava" / "configs").glob("*.yaml"))
    assert sorted(n.split("/")[-1] for n in names if n.startswith("kava/configs/")) == shipped
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run([sys.executable, "-m", "kava", "configs"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120, check=True).stdout
    assert str(tmp_path / "site" / "kava" / "configs") in out and "  llama1b_aug " in out


def _preempted(*args, **kwargs):
    from kava.training.signals import Preempted

    raise Preempted(15, 3, 8, "runs/x/checkpoint-3")


def test_a_preempted_train_says_to_resume_with_resume(monkeypatch, capsys):
    import kava.training.trainer
    from kava.cli import main
    from kava.training.signals import EXIT_PREEMPTED

    monkeypatch.setattr(kava.training.trainer, "train", _preempted)
    assert main(["train", "--config", "tiny", "--output-dir", "runs/x", "--no-progress"]) == EXIT_PREEMPTED
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.endswith("resume with: kava train --config tiny --output-dir runs/x --no-progress --resume"), line


def test_a_preempted_bench_quality_says_to_run_the_same_command_again(monkeypatch, capsys):
    """kava bench quality takes no --resume: it resumes when run again (failed before: the line ended
    with `--resume`, which the command refuses)."""
    import kava.bench.quality
    from kava.cli import main
    from kava.training.signals import EXIT_PREEMPTED

    monkeypatch.setattr(kava.bench.quality, "run_quality", _preempted)
    argv = ["bench", "quality", "--output-dir", "runs/q", "--only", "kava"]
    assert main(argv) == EXIT_PREEMPTED
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--resume" not in line
    assert line.endswith("run the same command again to continue: kava bench quality --output-dir runs/q --only kava")
    with pytest.raises(SystemExit):  # (the command indeed refuses --resume)
        build_parser().parse_args([*argv, "--resume"])


def test_preempted_survives_a_worker_process():
    """kava bench quality --jobs N trains in worker processes: their Preempted pickles back whole."""
    import pickle

    from kava.training.signals import Preempted

    stop = pickle.loads(pickle.dumps(Preempted(15, 3, 8, "runs/x/checkpoint-3")))
    assert (stop.signum, stop.step, stop.total_steps, stop.checkpoint) == (15, 3, 8, "runs/x/checkpoint-3")
    assert str(stop) == "stopped by SIGTERM at step 3/8; checkpoint written to runs/x/checkpoint-3"
