"""`kava train`'s run header and summary, and its training_losses.png (kava.training.report,
kava.training.plots)."""

import json
import os
import stat

import pytest
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg

from kava.cli import main
from kava.config import config_from_dict
from kava.io import read_jsonl
from kava.model.kava_model import build_kava_model
from kava.training.plots import draw_training_losses


@pytest.fixture()
def config(tmp_path):
    rows = [{"question": f"Sam has {3 + i % 7} pens and buys {2 + i % 5} more. How many pens?",
             "steps": [f"<<{3 + i % 7}+{2 + i % 5}={5 + i % 7 + i % 5}>>"], "answer": str(5 + i % 7 + i % 5)}
            for i in range(60)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = {"model": {"name": "tiny-llama", "dtype": "float32", "tiny": {"hidden_size": 32, "num_layers": 2}},
           "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "latent": {"num_latents": 3, "num_iterations": 1},
           "data": {"dataset": str(data), "source": "local", "val_size": 6},
           "train": {"lr": 3e-3, "max_steps": 3, "global_batch_size": 8, "micro_batch_size": 4, "eval_every": 3,
                     "eval_max_examples": 4}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_train_prints_a_header_and_a_summary_and_writes_the_plot(tmp_path, config, capsys):
    out = tmp_path / "run"
    old = os.umask(0o022)
    try:
        assert main(["train", "--config", str(config), "--output-dir", str(out), "--no-progress"]) == 0
    finally:
        os.umask(old)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("kava: ")]
    cfg = config_from_dict(yaml.safe_load(config.read_text()))
    model, _, _ = build_kava_model(cfg)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log = read_jsonl(out / "train_log.jsonl")
    steps = [r for r in log if "split" not in r]
    assert lines[1] == (f"kava: tiny-llama, method kava: {trainable:,} of {total:,} parameters trainable "
                        f"({100 * trainable / total:.2f}%, LoRA r=4)")
    tokens = steps[0]["tokens"]  # what step 1 counted as it ran
    shown = f"{tokens / 1000:.3g}k" if tokens >= 1000 else str(tokens)
    assert lines[2] == (f"kava: 3 steps, 8 examples a step (4 a micro-batch × 2 accumulation × 1 process), "
                        f"{shown} tokens a step; cpu, float32")
    last = steps[-1]
    assert lines[-4].startswith("kava: trained steps 1-3 in ") and lines[-4].endswith(" s a step)")
    assert lines[-3] == (f"kava: step 3 losses: loss {last['loss']:.4g} (ce_student {last['ce_student']:.4g}, "
                         f"ce_teacher {last['ce_teacher']:.4g}, codi {last['codi']:.4g}, kv {last['kv']:.4g})")
    assert lines[-2] == (f"kava: validation accuracy 0.0% at step 3 (latent mode, 4 questions); best 0.0% at step 3: "
                         f"{out / 'checkpoint-best'}")
    assert lines[-1] == f"kava: wrote {out / 'checkpoint-final'}; loss plot: {out / 'training_losses.png'}"
    png = out / "training_losses.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Every file of the run has the umask's mode: weights (safetensors writes 0600), configs, the plot.
    modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
    assert {"checkpoint-final/adapter/adapter_model.safetensors", "checkpoint-best/projection.safetensors",
            "checkpoint-final/training_state.safetensors", "config.yaml", "training_losses.png"} <= set(modes)
    assert {k: m for k, m in modes.items() if m != 0o644} == {}


def _boxes_overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_the_loss_plot_is_a_figure_for_a_paper():
    """Axis labels with units, a legend in every panel, and nothing drawn over anything else."""
    records = [{"step": s, "loss": 9 - s / 10, "ce_student": 4.6 - s / 20, "ce_teacher": 4.5 - s / 20,
                "codi": 1e-3 / s, "kv": 2e-2} for s in range(1, 11)]
    records += [{"step": s, "split": "validation", "loss": 9.0, "ce_student": 4.5, "ce_teacher": 4.4, "codi": 1e-3,
                 "kv": 2e-2, "accuracy": 10.0 * s, "forward_passes_mean": 7.0, "mode": "latent", "n": 8}
                for s in (5, 10)]
    records.insert(5, {"step": 4, "event": "resume", "changed": {"train.lr": [1e-3, 5e-4]}})
    fig = draw_training_losses(records, "run: model, method kava")
    axes = fig.axes
    assert [ax.get_ylabel() for ax in axes] == ["cross-entropy\n(nats per token)", "distillation loss\n(dimensionless)",
                                                "validation\nexact match (%)"]
    assert axes[-1].get_xlabel() == "optimizer step" and axes[1].get_yscale() == "log"
    labels = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in axes]
    assert labels[0] == ["student: answer tokens, training", "student: answer tokens, validation",
                         "teacher: CoT and answer tokens, training", "teacher: CoT and answer tokens, validation",
                         "resumed with a changed config"]
    assert labels[2] == ["validation, latent mode"]
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    texts = []
    for ax in axes:
        legend = ax.get_legend().get_window_extent(renderer)
        assert not _boxes_overlap(legend, ax.get_window_extent(renderer))  # beside the panel, over no curve
        texts.append(ax.yaxis.label.get_window_extent(renderer))
        lo, hi = sorted(ax.get_ylim())
        texts += [t.get_window_extent(renderer) for y, t in zip(ax.get_yticks(), ax.get_yticklabels())
                  if lo <= y <= hi and t.get_text()]  # the ticks drawn
        texts.append(legend)
    texts.append(axes[-1].xaxis.label.get_window_extent(renderer))
    texts.append(fig._suptitle.get_window_extent(renderer))
    assert not [(a, b) for i, a in enumerate(texts) for b in texts[i + 1:] if _boxes_overlap(a, b)]
    canvas = fig.bbox
    assert all(canvas.x0 <= t.x0 and t.x1 <= canvas.x1 and canvas.y0 <= t.y0 and t.y1 <= canvas.y1 for t in texts)


def test_a_log_without_steps_draws_nothing():
    assert draw_training_losses([]) is None
