"""Peak memory of a training run on a CPU: a fresh subprocess builds the same model, resets
the resident-set high-water mark (Linux /proc) and runs the same steps; the peak is then
the model plus what the step needs (`step_mb`: the part above the model). On a GPU the
benchmarks read `torch.cuda.max_memory_allocated` in-process instead."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from kava.bench.common import Timer, TrainRun, setup_runs, train_step
from kava.errors import KavaError


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cpu_peak_memory(cfg, items, run: TrainRun, steps: int = 2) -> dict:
    """Peak RSS of `steps` optimizer steps of `run` in a fresh process."""
    import torch

    from kava.config import config_to_dict

    if not Path("/proc/self/status").is_file():
        return {"peak_mb": float("nan"), "step_mb": float("nan"), "note": "no /proc: not measured"}
    spec = {"config": config_to_dict(cfg), "run": [run.name, run.method, run.overrides], "steps": steps,
            "items": [{"q": e.q, "c": e.c, "p": e.p, "a": e.a, "codi_shift": e.codi_shift} for e in items],
            "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.json"
        path.write_text(json.dumps(spec))
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        proc = subprocess.run([sys.executable, "-m", "kava.bench.memory", str(path)], capture_output=True,
                              text=True, env=env)
        if proc.returncode != 0:
            raise KavaError(f"the memory probe for {run.name} failed: {proc.stderr.strip()[-800:]}")
        return json.loads((Path(tmp) / "probe.out.json").read_text())


def _probe_main(path: str) -> int:
    import torch

    from kava.config import config_from_dict
    from kava.data.sequences import Encoded

    spec = json.loads(Path(path).read_text())
    torch.set_num_threads(spec["threads"])
    cfg = config_from_dict(spec["config"])
    items = [Encoded(**e) for e in spec["items"]]
    device = torch.device("cpu")
    run = TrainRun(*spec["run"])
    objective, optimizer, params, batch = setup_runs(cfg, device, items, [run])[run.name]
    gc.collect()
    reset = _reset_peak_rss()
    before = _status_kb("VmRSS")
    timer = Timer(device)
    for _ in range(spec["steps"]):
        train_step(objective, optimizer, params, batch, objective.cfg.train.grad_clip, timer)
    peak = _status_kb("VmHWM")
    out = {"peak_mb": peak / 1024, "model_mb": before / 1024, "step_mb": (peak - before) / 1024, "hwm_reset": reset}
    (Path(path).parent / "probe.out.json").write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 2:
        sys.exit(_probe_main(sys.argv[1]))
    sys.exit("usage: python -m kava.bench.memory SPEC.json (internal; use `kava bench speed`)")
