"""One run on several processes (DDP through accelerate) equals the same run on one.

`accelerate launch` starts 2 CPU processes (gloo) that train the tiny config at global
batch 8 with micro-batches of 2: each process takes its half of every optimizer step's 8
examples as 2 micro-batches and gradients are averaged across processes; the single
process accumulates 4 micro-batches. Same examples, same micro-batches, same arithmetic: the
logged losses of every step and the final weights must agree.

On CPU, `accelerate launch --cpu --num_processes 2` silently starts ONE process (accelerate
wants an MPI config for multi-CPU); what works is `ACCELERATE_USE_CPU=true accelerate launch
--multi_gpu --num_processes 2`, which starts the processes like torchrun and makes accelerate
pick its MULTI_CPU mode with the gloo backend. The test checks that 2 processes really ran.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
STEPS = 3
OVERRIDES = [
    f"train.max_steps={STEPS}", "train.global_batch_size=8", "train.micro_batch_size=2", "train.save_every=100",
    "train.warmup_ratio=0.0",  # the lr is > 0 at step 1, so every step moves the weights
    "lora.dropout=0.0",  # dropout masks come from each process's own RNG
    "data.max_train_examples=48", "model.tiny.hidden_size=32", "model.tiny.num_layers=2",
    "train.eval_every=3", "train.eval_max_examples=7",  # validation sharded 4 + 3 over the processes
]
LOGGED = ("loss", "ce_student", "ce_teacher", "codi", "kv", "grad_norm", "lr")

# Runs kava's CLI, then records the world size it trained with (the process group is still up).
ENTRY = """
import os, sys
from kava.cli import main
rc = main(sys.argv[1:])
import torch.distributed as dist
world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
rank = os.environ.get("RANK", "0")
with open(os.path.join(os.environ["KAVA_TEST_MARKERS"], "rank" + rank), "w") as f:
    f.write(str(world))
sys.exit(rc)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    ckpt = run / "checkpoint-final"
    files = sorted(ckpt.glob("adapter/*.safetensors")) + [ckpt / "projection.safetensors"]
    out = {}
    for f in files:
        out.update({f"{f.name}:{k}": v for k, v in load_file(str(f)).items()})
    return out


def test_two_processes_train_exactly_like_one(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    entry = tmp_path / "kava_entry.py"
    entry.write_text(ENTRY)
    env = dict(os.environ, ACCELERATE_USE_CPU="true", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", KAVA_TEST_MARKERS=str(markers), PYTHONUNBUFFERED="1")
    train = ["train", "--config", "configs/tiny.yaml", "--seed", "3", "--no-progress", *OVERRIDES]
    one, two = tmp_path / "one", tmp_path / "two"
    single = [sys.executable, "-m", "kava", *train[:3], "--output-dir", str(one), *train[3:]]
    ddp = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(entry), *train[:3], "--output-dir", str(two), *train[3:]]
    # Both at once: the wall time is that of the slower one.
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for cmd in (single, ddp)]
    outputs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("training did not finish in 300 s")
        outputs.append(out)
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]

    assert (markers / "rank0").read_text() == "2" and (markers / "rank1").read_text() == "2", \
        "accelerate did not start 2 processes"

    (val1,), (val2,) = ([r for r in _read_log(run) if r.get("split") == "validation"] for run in (one, two))
    assert val1["n"] == val2["n"] == 7 and val1["step"] == val2["step"] == STEPS
    for key in ("accuracy", "forward_passes_mean"):  # gathered over the processes
        assert val2[key] == pytest.approx(val1[key], rel=1e-4, abs=2e-6), key
    # (not the validation loss: validation_losses averages per-micro-batch means, so its value
    # depends on how the examples are split into batches, and differs here by ~0.06%)
    log1, log2 = ([r for r in _read_log(run) if "split" not in r] for run in (one, two))
    assert [r["step"] for r in log1] == [r["step"] for r in log2] == list(range(1, STEPS + 1))
    for r1, r2 in zip(log1, log2):
        for key in LOGGED:
            # rel 1e-4, and 2e-6 absolute for the log's 6-decimal rounding of small losses
            assert r2[key] == pytest.approx(r1[key], rel=1e-4, abs=2e-6), (r1["step"], key, r1[key], r2[key])
        assert r2["tokens"] == r1["tokens"]  # summed over the processes
    assert log1[-1]["loss"] != log1[0]["loss"]

    w1, w2 = _weights(one), _weights(two)
    assert w1.keys() == w2.keys() and len(w1) > 4
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6, msg=k)
    # the weights moved away from their initialisation (LoRA B starts at zero)
    assert any("lora_B" in k and w1[k].abs().max() > 0 for k in w1)


@pytest.mark.parametrize("overrides", [["train.method=cot"], ["train.method=direct"], ["latent.num_iterations=0"],
                                       []])
def test_every_method_steps_twice_under_ddp(tmp_path, overrides):
    """Issue 20: DDP (accelerate's default find_unused_parameters=False) failed at the second step
    ("Expected to have finished reduction ...") when a trainable module went unused: the latent
    projection of CoT, No-CoT and T = 0. A one-process gloo group, two steps as the trainer makes them."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from conftest import EXAMPLES, make_config
    from kava.config import config_from_dict, config_to_dict, shares_question
    from kava.data.batches import make_batch
    from kava.model.kava_model import build_kava_model, trainable_parameters
    from kava.training.objective import KavaObjective
    from kava.training.trainer import forward_backward

    cfg = config_from_dict(config_to_dict(make_config("tiny-llama")), overrides)
    torch.manual_seed(0)
    model, _tok, builder = build_kava_model(cfg)
    batch = make_batch(builder, [builder.encode(e) for e in EXAMPLES], cfg.train.method, "cpu", shares_question(cfg))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        objective = DistributedDataParallel(KavaObjective(model, cfg))
        optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-3)
        for _ in range(2):
            losses = forward_backward(objective, batch, lambda loss: loss.backward(), no_sync=objective.no_sync)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            assert torch.isfinite(losses["loss"])
    finally:
        dist.destroy_process_group()
    assert (model.projection is None) == bool(overrides)
