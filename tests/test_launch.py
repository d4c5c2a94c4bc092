"""kava.experiments.launch: sweeps as submitit jobs.

For real, with submitit's local executor (real job processes, submitit's own pickling, signal
handling and requeueing; nothing of submitit is mocked): a 2-seed tiny sweep through
``--launcher submitit-local`` gives the same results as the local sweep, and a job stopped
mid-training by submitit's pre-emption signal is requeued and resumes from its checkpoint
to the same results. The SLURM path runs against stand-in ``sbatch``/``srun``/``sacct``
scripts: the sbatch file submitit writes from kava's options, the job array, the job ids
in ``kava sweep --status``, and resubmission of failed jobs only.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import time
from pathlib import Path

import pytest
import yaml

from fixtures_sweep import CONFIG, DATASETS, REPO, SEEDS, sweep_argv
from kava.cli import main
from kava.config import LauncherConfig
from kava.errors import KavaError
from kava.experiments.launch import executor_parameters, run_status

EVAL = ("--datasets", "gsm8k", "--source", "offline", "--limit", "3")  # (the quick, no-training tests)


def _outcome(seed_dir: Path) -> list:
    """What a seed produced: per dataset the accuracy, forward passes and generated texts;
    the training losses."""
    out = []
    for ds in DATASETS:
        res = yaml.safe_load((seed_dir / f"results_{ds}.yaml").read_text())
        texts = [r["text"] for r in map(json.loads, (seed_dir / f"predictions_{ds}.jsonl").read_text().splitlines())]
        out.append((ds, res["accuracy"], res["correct"], res["forward_passes_mean"], texts))
    log = [(r["step"], r["loss"]) for r in map(json.loads, (seed_dir / "train_log.jsonl").read_text().splitlines())]
    return out + [log]


def test_submitit_sweep_equals_the_local_sweep(tiny_sweep, tmp_path, capsys):
    capsys.readouterr()
    assert main(sweep_argv(tmp_path, SEEDS, "--launcher", "submitit-local", "--time", "30", "--wait")) == 0, \
        capsys.readouterr().err
    run, local_run = tmp_path / "tiny", tiny_sweep / "tiny"
    for s in SEEDS:
        assert _outcome(run / f"seed_{s}") == _outcome(local_run / f"seed_{s}")
        job = yaml.safe_load((run / f"seed_{s}" / "job.yaml").read_text())
        assert job["launcher"] == "submitit-local" and (run / "submitit" / f"{job['id']}_submitted.pkl").is_file()
    assert yaml.safe_load((run / "summary.yaml").read_text())["datasets"] == \
        yaml.safe_load((local_run / "summary.yaml").read_text())["datasets"]
    rows = run_status(run)
    assert [(r["seed"], r["state"], r["train"], r["eval"], r["requeues"]) for r in rows] == \
        [(1, "done", "done", "done", 0), (2, "done", "done", "done", 0)]
    assert main(["sweep", "--status", str(run)]) == 0
    assert "2 done" in capsys.readouterr().out


def _pid_of(*words: str, timeout: float = 120) -> int:
    """The pid of the process whose command line holds every word (Linux /proc)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    argv = (p / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if all(w.encode() in argv for w in words):
                    return int(p.name)
        time.sleep(0.02)
    raise AssertionError(f"no process with {words}")


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _wait_for(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_preempted_job_is_requeued_and_resumes_from_its_checkpoint(tiny_sweep, tmp_path):
    """submitit's pre-emption signal reaches the job mid-training: the job stops the training
    (kava.experiments.launch.SeedJob.checkpoint), is requeued, and the requeued job runs
    `kava train --resume` from the step checkpoint, ending where an uninterrupted run ends."""
    assert main(sweep_argv(tmp_path, (1,), "--launcher", "submitit-local", "--time", "30")) == 0
    seed_dir = tmp_path / "tiny" / "seed_1"
    trainer = _pid_of("train", "--output-dir", str(seed_dir))
    _wait_for(lambda: (seed_dir / "checkpoint-2").is_dir(), 120, "the first step checkpoint")
    os.kill(trainer, signal.SIGSTOP)  # hold it mid-training until the job acts
    assert not (seed_dir / "checkpoint-final").exists()
    job_task = _ppid(trainer)  # submitit's job process (python -m submitit.core._submit)
    os.kill(job_task, signal.SIGUSR2)  # what SLURM sends signal_delay_s before a time limit / pre-emption

    _wait_for(lambda: yaml.safe_load((seed_dir / "status.yaml").read_text()).get("job_state") == "finished",
              300, "the requeued job to finish")
    status = yaml.safe_load((seed_dir / "status.yaml").read_text())
    assert (status["train"], status["eval"], status["requeues"]) == ("done", "done", 1)
    log = (seed_dir / "train.out").read_text()
    runs = [ln for ln in log.splitlines() if ln.startswith("===== ")]
    assert len(runs) == 2 and "--resume" not in runs[0] and "--resume" in runs[1]
    assert "kava: resuming from" in log
    assert _outcome(seed_dir) == _outcome(tiny_sweep / "tiny" / "seed_1")  # resumed exactly
    job = yaml.safe_load((seed_dir / "job.yaml").read_text())
    job_log = (tmp_path / "tiny" / "submitit" / f"{job['id']}_0_log.out").read_text()
    assert "stopped the running step" in job_log


# ---------------------------------------------------------------- SLURM, with stand-in commands


def _script(path: Path, body: str) -> None:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """`sbatch` records the script and answers a job id; `sacct` answers the state in STATE."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    rec = tmp_path / "sbatch"
    rec.mkdir()
    state = tmp_path / "STATE"
    state.write_text("PENDING")
    _script(bin_dir / "sbatch", f"""import sys, pathlib, shutil
rec = pathlib.Path({str(rec)!r}); n = len(list(rec.iterdir()))
shutil.copy(sys.argv[-1], rec / f"{{n}}.sh")
print(f"Submitted batch job {{4242 + n}}")
""")
    _script(bin_dir / "srun", "")
    _script(bin_dir / "sacct", f"""import sys, pathlib
ids = [sys.argv[i + 1] for i, a in enumerate(sys.argv) if a == "-j"]
state = pathlib.Path({str(state)!r}).read_text()
print("JobID|State|NodeList")
for i in ids:  # (an array's elements, as sacct lists them)
    for k in range(4):
        print(f"{{i}}_{{k}}|{{state}}|node1")
""")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return rec, state


def test_slurm_sweep_submits_one_array_with_the_options(tmp_path, fake_slurm, monkeypatch, capsys):
    rec, state = fake_slurm
    monkeypatch.chdir(REPO)
    config = tmp_path / "tiny_cluster.yaml"
    cfg = yaml.safe_load((REPO / CONFIG).read_text())
    cfg["launcher"] = {"partition": "gpu", "account": "lab", "time": "2:00:00", "gpus_per_job": 2,
                       "cpus_per_job": 16, "mem_gb": 64, "qos": "normal", "setup": ["module load cuda/12.4"]}
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "exp"
    argv = ["sweep", "--config", str(config), "--seeds", "1", "2", "--output-dir", str(out), *EVAL,
            "--launcher", "slurm", "--qos", "high", "--constraint", "a100", "--sbatch-arg=--exclusive",
            "--sbatch-arg=--mail-type=END", "--array-parallelism", "1"]
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "seed 1: submitted as job 4242_0" in printed and "seed 2: submitted as job 4242_1" in printed
    assert "kava sweep --status" in printed
    scripts = sorted(rec.iterdir())
    assert len(scripts) == 1  # one array for the sweep
    sbatch = scripts[0].read_text()
    for line in ("--partition=gpu", "--account=lab", "--time=120", "--gpus-per-node=2", "--cpus-per-task=16",
                 "--mem=64G", "--qos=high", "--constraint=a100", "--exclusive", "--mail-type=END",
                 "--array=0-1%1", "--signal=USR2@120", "--job-name=kava-tiny_cluster"):
        assert f"#SBATCH {line}\n" in sbatch, line
    assert "module load cuda/12.4" in sbatch and "submitit.core._submit" in sbatch

    run = out / "tiny_cluster"
    assert [(r["seed"], r["state"], r["job_id"]) for r in run_status(run)] == [(1, "queued", "4242_0"),
                                                                           (2, "queued", "4242_1")]
    # while they are queued, a second sweep submits nothing
    assert main(argv) == 0
    assert "already queued or running as job 4242_0" in capsys.readouterr().err
    assert len(list(rec.iterdir())) == 1
    # the scheduler says they died (node failure): status says failed, the next sweep resubmits
    state.write_text("NODE_FAIL")
    rows = run_status(run)
    assert [r["state"] for r in rows] == ["failed", "failed"] and "SLURM: NODE_FAIL" in rows[0]["error"]
    assert main(["sweep", "--status", str(run)]) == 0
    assert "2 failed" in capsys.readouterr().out
    assert main(argv) == 0
    assert "seed 1: submitted as job 4243_0" in capsys.readouterr().out


def test_slurm_without_a_cluster_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    rc = main(["sweep", "--config", CONFIG, "--seeds", "1", "--output-dir", str(tmp_path / "e"), *EVAL,
               "--launcher", "slurm"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: cannot set up the slurm launcher") and len(err.splitlines()) == 1


@pytest.mark.parametrize("bad,msg", [
    ({"time": "soon"}, "time limit"),
    ({"time": 0}, "at least one minute"),
    ({"sbatch_args": ["exclusive"]}, "long sbatch flag"),
    ({"gpus_per_job": -1}, "gpus_per_job"),
    ({"partiton": "gpu"}, "partiton"),
])
def test_launcher_section_is_validated(tmp_path, monkeypatch, capsys, bad, msg):
    config = tmp_path / "c.yaml"
    cfg = yaml.safe_load((REPO / CONFIG).read_text())
    cfg["launcher"] = bad
    config.write_text(yaml.safe_dump(cfg))
    rc = main(["sweep", "--config", str(config), "--seeds", "1", "--output-dir", str(tmp_path / "e"), *EVAL,
               "--launcher", "slurm"])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and len(err.splitlines()) == 1
    with pytest.raises(KavaError, match="invalid config"):  # kava train reads the same section
        from kava.config import load_config

        load_config(config)


def test_executor_parameters():
    cfg = LauncherConfig(time="1-00:00:00", gpus_per_job=0, mem_gb=1.5, sbatch_args=["--gres=gpu:a100:1"])
    p = executor_parameters("slurm", cfg, "kava-x")
    assert p["time"] == 1440 and "gpus_per_node" not in p and p["mem"] == "1536M"
    assert p["additional_parameters"] == {"gres": "gpu:a100:1"} and "partition" not in p
    local = executor_parameters("submitit-local", cfg, "kava-x")
    assert local == {"name": "kava-x", "timeout_min": 1440, "gpus_per_node": 0, "signal_delay_s": 120, "setup": []}


def test_devices_are_for_the_local_launcher(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    rc = main(["sweep", "--config", CONFIG, "--seeds", "1", "--output-dir", str(tmp_path), *EVAL,
               "--launcher", "submitit-local", "--devices", "0,1"])
    assert rc == 2 and "--devices is for --launcher local" in capsys.readouterr().err


def test_reproduce_dry_run_passes_the_launcher_on(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert main(["reproduce", "--dry-run", "--launcher", "slurm", "--partition", "gpu", "--time", "30:00:00",
                 "--sbatch-arg=--exclusive", "--setup", "module load cuda"]) == 0
    sweeps = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("kava sweep")]
    assert len(sweeps) == 6
    assert all(ln.endswith("--launcher slurm --partition=gpu --time=30:00:00 --sbatch-arg=--exclusive "
                           "--setup='module load cuda'") for ln in sweeps)
