"""The training loop reads the device from the host once per step for its logged numbers, not
once per loss term and micro-batch (issue 20: about eight host syncs per micro-batch, each a
pause of the GPU). Counted on CPU: every Tensor.item / float / int / tolist the run makes."""

from __future__ import annotations

import json

import torch

from kava.config import config_from_dict
from kava.training.trainer import train


def _reads_per_run(tmp_path, micro: int, monkeypatch) -> int:
    rows = [{"question": f"Sam has {3 + i % 5} pens and buys 2 more. How many?",
             "steps": [f"<<{3 + i % 5}+2={5 + i % 5}>>"],
             "answer": str(5 + i % 5)} for i in range(16)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config_from_dict({
        "model": {"name": "tiny-llama", "dtype": "float32", "tiny": {"hidden_size": 32, "num_layers": 2}},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "latent": {"num_latents": 2, "num_iterations": 1},
        "data": {"dataset": str(data), "source": "local", "val_size": 0},
        "train": {"max_steps": 2, "global_batch_size": 8, "micro_batch_size": micro, "warmup_ratio": 0.0},
        "output_dir": str(tmp_path / f"run{micro}"),
    })
    reads = []
    for name in ("item", "__float__", "__int__", "tolist"):
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, **kwargs):
            reads.append(1)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    train(cfg, show_progress=False)
    monkeypatch.undo()
    return len(reads)


def test_host_reads_do_not_grow_with_the_micro_batches(tmp_path, monkeypatch):
    one = _reads_per_run(tmp_path, 8, monkeypatch)  # 2 steps of 1 micro-batch
    four = _reads_per_run(tmp_path, 2, monkeypatch)  # 2 steps of 4 micro-batches
    # 6 more micro-batches: at most the R-KV capture's one read each (the rows to gather)
    assert four - one <= 6, (one, four)
