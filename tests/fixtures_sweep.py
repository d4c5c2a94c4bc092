"""A real local sweep, run once per session (loaded with `pytest_plugins`): `kava sweep` on
configs/tiny.yaml over seeds 1 and 2 in subprocesses, evaluated on the offline GSM8k and
SVAMP copies. The sweep tests check it; the launcher tests compare their jobs against it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kava.cli import main

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/tiny.yaml"
SEEDS = (1, 2)
DATASETS = ("gsm8k", "svamp")
# Keep it quick: a smaller random model, 12 optimizer steps (a step checkpoint every 2, so a
# run can be interrupted and resumed), 4 questions per dataset.
OVERRIDES = ("train.max_steps=12", "train.save_every=2", "data.max_train_examples=32",
             "model.tiny.hidden_size=32", "model.tiny.num_layers=2")
EVAL_ARGS = ("--datasets", *DATASETS, "--source", "offline", "--limit", "4")


def sweep_argv(out, seeds=SEEDS, *extra) -> list[str]:
    return ["sweep", "--config", CONFIG, "--seeds", *map(str, seeds), *OVERRIDES, "--output-dir", str(out),
            *EVAL_ARGS, *extra]


@pytest.fixture(scope="session")
def subprocess_env():
    """The repository as working folder; one intra-op thread per subprocess (on a small,
    busy CPU machine the default thread pool makes these tiny matmuls tens of times slower)."""
    mp = pytest.MonkeyPatch()
    mp.chdir(REPO)
    mp.setenv("OMP_NUM_THREADS", "1")
    mp.setenv("TOKENIZERS_PARALLELISM", "false")
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_sweep(subprocess_env, tmp_path_factory) -> Path:
    """The experiments folder of the local sweep (its run is ``<folder>/tiny``)."""
    exp = tmp_path_factory.mktemp("sweep") / "exp"
    assert main(sweep_argv(exp)) == 0
    return exp
