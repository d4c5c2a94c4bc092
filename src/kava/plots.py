"""Accuracy against forward passes, the figure `kava aggregate` (table.png) and `kava demo`
(accuracy_vs_forward_passes.png) draw.

One panel per dataset, sharing the accuracy axis (%, from 0); forward passes per question
on a linear axis from 0. Each series (a run, or a model and mode) has its own colour and
marker, named in one legend under the panels: no text is drawn on the data. Points that
would cover each other are nudged apart, each as little as it takes (`separate`), until
they at most touch. Error bars are the std over seeds where there are several.

Drawn on matplotlib's Agg canvas (no pyplot, no global backend): headless and thread-safe.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.transforms import ScaledTranslation

MARKERS = "osD^vP*Xph<>"
MARKER_SIZE = 7.0  # points
DPI = 150


@dataclass(frozen=True)
class Point:
    series: str
    dataset: str
    forward_passes: float
    accuracy: float  # %
    forward_passes_std: float = 0.0
    accuracy_std: float = 0.0


def accuracy_figure(points: list[Point], title: str, series: list[str] | None = None,
                    datasets: list[str] | None = None) -> Figure:
    """The figure (see the module docstring); `series` and `datasets` fix their order
    (default: as they first appear in `points`)."""
    series = series or list(dict.fromkeys(p.series for p in points))
    datasets = datasets or list(dict.fromkeys(p.dataset for p in points)) or [""]
    columns = min(4, max(1, len(series)))
    rows = -(-len(series) // columns)
    fig = Figure(figsize=(max(6.4, 3.4 * len(datasets) + 0.6), 3.5 + 0.22 * rows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(datasets), sharey=True, squeeze=False)[0]
    top = max([p.accuracy + (p.accuracy_std or 0) for p in points] + [1.0])
    right = max([p.forward_passes + (p.forward_passes_std or 0) for p in points] + [1.0])
    for ax, ds in zip(axes, datasets):
        ax.set_xlim(0, right * 1.12)
        ax.set_ylim(0, 100.0 if top > 87 else max(10.0, top * 1.15))
        ax.set_title(ds, fontsize=10)
        ax.set_xlabel("forward passes per question")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    if not points:
        axes[0].text(0.5, 0.5, "no forward-pass counts recorded", ha="center", va="center",
                     transform=axes[0].transAxes)
    handles = [axes[0].plot([], [], label=name, **_style(i))[0] for i, name in enumerate(series)]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=columns, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.canvas.draw()  # (the limits and the layout settle: display positions are final)
    for ax, ds in zip(axes, datasets):
        _draw_panel(fig, ax, [p for p in points if p.dataset == ds], series)
    return fig


def _draw_panel(fig: Figure, ax, points: list[Point], series: list[str]) -> None:
    """The panel's points, nudged apart where they would cover each other; error bars end at
    0 (and 100 %), where the quantities end."""
    true = [tuple(ax.transData.transform((p.forward_passes, p.accuracy))) for p in points]
    order = sorted(range(len(points)), key=lambda j: series.index(points[j].series))
    shown = separate([true[j] for j in order], MARKER_SIZE * fig.dpi / 72)
    for j, (x, y) in zip(order, shown):
        p, i = points[j], series.index(points[j].series)
        shift = ScaledTranslation((x - true[j][0]) / fig.dpi, (y - true[j][1]) / fig.dpi, fig.dpi_scale_trans)
        xs, ys = p.forward_passes_std or 0.0, p.accuracy_std or 0.0
        ax.errorbar([p.forward_passes], [p.accuracy],
                    xerr=[[min(xs, p.forward_passes)], [xs]] if xs else None,
                    yerr=[[min(ys, p.accuracy)], [min(ys, 100 - p.accuracy)]] if ys else None,
                    capsize=2.5, elinewidth=1, ecolor=f"C{i % 10}", transform=ax.transData + shift,
                    clip_on=False, zorder=3, **_style(i))


def separate(xy: list[tuple[float, float]], gap: float, rounds: int = 500) -> list[tuple[float, float]]:
    """Positions (pixels) moved as little as it takes for every two to be at least `gap` apart:
    each pair too close is pushed apart along the line between them (sideways, in list order,
    when they coincide), half the shortfall each, until none is too close."""
    pos = [list(p) for p in xy]
    for _ in range(rounds):
        moved = False
        for a in range(len(pos)):
            for b in range(a + 1, len(pos)):
                dx, dy = pos[b][0] - pos[a][0], pos[b][1] - pos[a][1]
                dist = math.hypot(dx, dy)
                if dist >= gap * 0.999:
                    continue
                ux, uy = (dx / dist, dy / dist) if dist > 1e-9 else (1.0, 0.0)
                push = (gap - dist) / 2
                pos[a][0] -= ux * push
                pos[a][1] -= uy * push
                pos[b][0] += ux * push
                pos[b][1] += uy * push
                moved = True
        if not moved:
            break
    return [tuple(p) for p in pos]


def _style(i: int) -> dict:
    """Series i's marker: its shape and colour, a translucent face and a solid edge."""
    color = f"C{i % 10}"
    return dict(marker=MARKERS[i % len(MARKERS)], linestyle="none", ms=MARKER_SIZE, mec=color, mew=1.2,
                mfc=to_rgba(color, 0.45))


def figure_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
