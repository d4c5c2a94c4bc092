"""`training_losses.png`: a run's losses (and validation accuracy) from its `train_log.jsonl`.

Drawn with matplotlib's object API (no pyplot, no global backend), at print size: one
panel for the cross-entropies in nats per token, one for the distillation losses
(dimensionless, log scale) when the method has them, one for the validation accuracy when
`train.eval_every` measured it; validation values as markers over the training curves, a
dotted line where a resumed run changed its config. Written atomically (`kava.io`).
`kava train` writes it next to the log; `kava demo` draws its own run with the same code.
"""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.figure import Figure

from kava.io import atomic_write_bytes

CROSS_ENTROPY = {"ce_student": "student: answer tokens", "ce_teacher": "teacher: CoT and answer tokens"}
DISTILLATION = {"codi": "CODI (hidden states)", "kv": "KV (latent keys/values)"}
COLORS = {"ce_student": "C0", "ce_teacher": "C1", "codi": "C2", "kv": "C3", "accuracy": "C4"}  # one colour a quantity


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return ([s for s, _ in pts], [v for _, v in pts]) if pts else ([], [])


def _panel(ax, train: list[dict], val: list[dict], names: dict[str, str], ylabel: str) -> None:
    for key, label in names.items():
        color = COLORS[key]
        xs, ys = _series(train, key)
        if xs:
            ax.plot(xs, ys, color=color, lw=1.5, label=f"{label}, training")
        xs, ys = _series(val, key)
        if xs:
            ax.plot(xs, ys, color=color, ls="--", marker="o", ms=4, label=f"{label}, validation")
    ax.set_ylabel(ylabel)


def plot_training_losses(records: list[dict], path: str | Path, title: str | None = None) -> Path | None:
    """Draw the run whose log records are `records` into `path` (PNG); None when the log has no step."""
    fig = draw_training_losses(records, title)
    if fig is None:
        return None
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def draw_training_losses(records: list[dict], title: str | None = None) -> Figure | None:
    """The figure of `plot_training_losses`."""
    train = [r for r in records if "loss" in r and "split" not in r]
    val = [r for r in records if r.get("split") == "validation"]
    if not train:
        return None
    panels = [("cross-entropy\n(nats per token)", CROSS_ENTROPY)]
    if any(k in r for r in train for k in DISTILLATION):
        panels.append(("distillation loss\n(dimensionless)", DISTILLATION))
    accuracy = _series(val, "accuracy")
    fig = Figure(figsize=(8.4, 2.4 * (len(panels) + bool(accuracy[0]))), layout="constrained")
    axes = fig.subplots(len(panels) + bool(accuracy[0]), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (ylabel, names) in zip(axes, panels):
        _panel(ax, train, val, names, ylabel)
    if len(panels) > 1:
        axes[1].set_yscale("log")
    if accuracy[0]:
        mode = val[-1].get("mode", "")
        axes[-1].plot(*accuracy, color=COLORS["accuracy"], marker="o", ms=4, label=f"validation, {mode} mode")
        axes[-1].set_ylabel("validation\nexact match (%)")
        axes[-1].set_ylim(-2, 102)
    for event in (r for r in records if r.get("event") == "resume"):
        for ax in axes:
            ax.axvline(event["step"], color="0.5", ls=":", lw=1,
                       label="resumed with a changed config" if ax is axes[0] else None)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)  # beside: over no curve
    axes[-1].set_xlabel("optimizer step")
    if title:
        fig.suptitle(title)
    return fig
