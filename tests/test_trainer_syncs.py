"""The training loop reads the device from the host once per step for its logged numbers, not
once per loss term and micro-batch (issue 20: about eight host syncs per micro-batch, each a
pause of the GPU). Counted on CPU: every Tensor.item / float / int / tolist the run makes."""

from __future__ import annotations

import torch

from conftest import pens_run_config
from kava.config import config_from_dict
from kava.training.trainer import train


def _reads_per_run(tmp_path, micro: int, monkeypatch) -> int:
    raw = pens_run_config(tmp_path, 16, max_steps=2, global_batch_size=8, micro_batch_size=micro)
    cfg = config_from_dict({**raw, "output_dir": str(tmp_path / f"run{micro}")})
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
