"""`kava sweep`'s progress: a bar over the stages, and the running child's own bar mirrored
under it, while the child's log keeps its lines (and its bar's final state only)."""

from __future__ import annotations

import io
import sys

from kava.experiments.progress import SweepDisplay, parse_bar

# A child that prints lines and draws a tqdm bar, as `kava train` does.
CHILD = r"""
import sys, time
from tqdm import tqdm
print("kava: 24 training examples", flush=True)
bar = tqdm(total=5, desc="train", mininterval=0, file=sys.stderr)
for i in range(5):
    bar.update()
    bar.set_postfix_str(f"loss={9 - i}.5")
bar.close()
print("kava: wrote checkpoint-final", flush=True)
sys.exit(3)
"""


def test_parse_bar_reads_tqdm_states():
    assert parse_bar("train:  40%|████      | 8/20 [00:05<00:07,  1.81it/s, loss=8.93]") == (
        "train", 8, 20, "loss=8.93", "it")
    assert parse_bar("gsm8k (latent): 100%|██████████| 4/4 [00:00<00:00,  8.02q/s, acc=0.0%]") == (
        "gsm8k (latent)", 4, 4, "acc=0.0%", "q")
    assert parse_bar("train:  12%|█▎        | 1/8 [00:01<00:09,  1.38s/it, loss=9.2448]")[3:] == ("loss=9.2448", "it")
    assert parse_bar("train:   0%|          | 0/12 [00:00<?, ?it/s]") == ("train", 0, 12, "", "it")
    assert parse_bar("kava: 24 training examples (0 dropped)") is None
    assert parse_bar("") is None


def test_the_runner_logs_lines_and_mirrors_the_bar(tmp_path):
    screen = io.StringIO()
    display = SweepDisplay("tiny", stages=4, file=screen)
    shown = []
    display._show = lambda *state: shown.append(state)  # (what would be drawn)
    log = tmp_path / "train.out"
    log.write_text("===== header\n")
    assert display.runner([sys.executable, "-c", CHILD], {}, log) == 3
    lines = log.read_text().splitlines()
    assert "\r" not in log.read_text()
    assert lines[:2] == ["===== header", "kava: 24 training examples"]
    assert lines[-1] == "kava: wrote checkpoint-final"
    assert len(lines) == 4 and parse_bar(lines[2])[:3] == ("train", 5, 5)  # the bar's final state, once
    assert [s[1] for s in shown] == sorted(s[1] for s in shown) and shown[-1][:3] == ("train", 5, 5)
    assert shown[-1][3] == "loss=5.5" and len({s[1] for s in shown}) >= 5
    display.advance(2)
    display.message("[tiny] seed 1: done")
    display.close()
    out = screen.getvalue()
    assert "[tiny] seed 1: done" in out and "sweep tiny:  50%" in out


def test_the_mirrored_bar_is_drawn_under_the_sweeps(tmp_path):
    screen = io.StringIO()
    display = SweepDisplay("tiny", stages=2, file=screen)
    display.runner([sys.executable, "-c", CHILD], {}, tmp_path / "log")
    display.close()
    out = screen.getvalue()
    assert "  train: 100%" in out and "5/5" in out and "loss=5.5" in out


def test_a_tiny_sweep_logs_the_final_training_bar(tiny_sweep):
    """The real sweep of the session (kava sweep, default progress bars): train.out holds the
    training's lines and its bar's final state, no intermediate one."""
    for seed in (1, 2):
        text = (tiny_sweep / "tiny" / f"seed_{seed}" / "train.out").read_text()
        assert "\r" not in text
        finals = [ln for ln in text.splitlines() if parse_bar(ln)]
        assert [parse_bar(ln)[1:3] for ln in finals] == [(12, 12)]
