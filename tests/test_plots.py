"""The accuracy-against-forward-passes figure (kava aggregate's table.png, kava demo's
accuracy_vs_forward_passes.png): axes from 0, linear, labelled; a legend; no point hidden
behind another and no text on the data."""

from __future__ import annotations

import itertools
import math

import pytest

from kava.plots import MARKER_SIZE, Point, accuracy_figure, figure_png, separate

GAP = 10.0


def _min_distance(xy):
    return min((math.dist(a, b) for a, b in itertools.combinations(xy, 2)), default=math.inf)


def test_separate_moves_only_what_overlaps_and_as_little_as_it_takes():
    far = [(0.0, 0.0), (50.0, 0.0), (0.0, 50.0)]
    assert separate(far, GAP) == far
    # two at the same place: side by side, centred on it, just touching
    (a, b), = [separate([(5.0, 5.0), (5.0, 5.0)], GAP)]
    assert a == pytest.approx((0.0, 5.0)) and b == pytest.approx((10.0, 5.0))
    # a pile of five at nearly one place, and one far away that stays
    pile = [(20.0 + 0.3 * k, 20.0 - 0.2 * k) for k in range(5)] + [(200.0, 200.0)]
    out = separate(pile, GAP)
    assert _min_distance(out) >= GAP * 0.99
    assert out[-1] == (200.0, 200.0)
    # each moved at most half the width of the pile laid side by side, not across the plot
    assert max(math.dist(p, q) for p, q in zip(pile, out)) <= (len(pile) - 2) / 2 * GAP * 1.05


def _markers(fig):
    """Display positions of the drawn markers, per panel."""
    fig.canvas.draw()
    panels = []
    for ax in fig.axes:
        pts = [tuple(line.get_transform().transform(line.get_xydata())[0]) for line in ax.lines
               if line.get_marker() not in (None, "None", "", " ", "|", "_") and len(line.get_xydata())]
        panels.append(pts)
    return panels


POINTS = [  # two runs at the same place on gsm8k, a third just next to them; a std larger than the mean
    Point("a", "gsm8k", 7.0, 56.5, 0.0, 0.4), Point("b", "gsm8k", 7.0, 56.5, 0.0, 0.4),
    Point("c", "gsm8k", 7.2, 56.0), Point("cot", "gsm8k", 65.0, 61.6, 2.0, 0.9),
    Point("a", "svamp", 19.0, 0.5, 0.0, 1.2), Point("b", "svamp", 19.0, 0.0), Point("c", "svamp", 18.6, 1.7, 0.5, 2.9),
]


def test_no_point_hides_another_and_the_axes_start_at_zero():
    fig = accuracy_figure(POINTS, "title", datasets=["gsm8k", "svamp"])
    px = MARKER_SIZE * fig.dpi / 72
    for ax, pts in zip(fig.axes, _markers(fig)):
        assert len(pts) == len([p for p in POINTS if p.dataset == ax.get_title()])
        assert _min_distance(pts) >= 0.99 * px, ax.get_title()
        assert ax.get_ylim()[0] == 0 and ax.get_xlim()[0] == 0  # never below 0 %, even with std > mean
        assert ax.get_xscale() == "linear" and ax.get_yscale() == "linear"
        assert ax.get_xlabel() == "forward passes per question"
        assert [t for t in ax.texts] == []  # no labels on the data: the legend names the series
    assert fig.axes[0].get_ylabel() == "accuracy (%)"
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["a", "b", "c", "cot"]
    png = figure_png(fig)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_ticks_are_plain_numbers():
    fig = accuracy_figure([Point("x", "gsm8k", 6.0, 3.0), Point("y", "gsm8k", 9.0, 0.0)], "t")
    fig.canvas.draw()
    labels = [t.get_text() for ax in fig.axes for t in ax.get_xticklabels() + ax.get_yticklabels()]
    assert labels and all(lab.replace("−", "-").replace(".", "").lstrip("-").isdigit() for lab in labels if lab), labels


def test_the_error_bars_end_at_zero(tmp_path):
    fig = accuracy_figure([Point("x", "svamp", 18.0, 1.0, 3.0, 2.5)], "t")
    fig.canvas.draw()
    ax = fig.axes[0]
    ys = [y for coll in ax.collections for seg in coll.get_segments() for _, y in seg]
    xs = [x for coll in ax.collections for seg in coll.get_segments() for x, _ in seg]
    assert min(ys) == pytest.approx(0.0) and max(ys) == pytest.approx(3.5)
    assert min(xs) == pytest.approx(15.0) and max(xs) == pytest.approx(21.0)


def test_kava_aggregate_and_demo_draw_it(monkeypatch, tmp_path):
    """table.png (kava aggregate) and accuracy_vs_forward_passes.png (kava demo): from 0 on
    both axes, a legend, no text on the data (before: the y axis went below 0 %, run names were
    written next to points that overprinted; the demo's x axis was logarithmic, no legend)."""
    from matplotlib.figure import Figure

    from kava.demo import _accuracy_plot
    from kava.experiments.aggregate import render_plot

    drawn = []
    real_savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (drawn.append(self), real_savefig(self, *a, **k))[1])
    run = {"datasets": {"gsm8k": {"accuracy_mean": 0.5, "accuracy_std": 1.2, "forward_passes_mean": 19.0,
                                  "forward_passes_std": 0.0}}}
    render_plot([{"run_name": "a", **run}, {"run_name": "b", **run}], ["gsm8k"])
    results = [{"model": m, "mode": mode, "dataset": ds, "accuracy": 0.0, "forward_passes_mean": fp}
               for m, mode, fp in (("untrained", "direct", 6.4), ("kava", "direct", 6.4), ("kava", "latent", 9.5))
               for ds in ("gsm8k", "svamp")]
    _accuracy_plot(results, tmp_path, 16)
    assert (tmp_path / "accuracy_vs_forward_passes.png").read_bytes()[:4] == b"\x89PNG"
    assert len(drawn) == 2
    for fig in drawn:
        assert fig.legends or any(ax.get_legend() for ax in fig.axes)
        for ax, pts in zip(fig.axes, _markers(fig)):
            assert ax.get_ylim()[0] >= 0 and ax.get_xscale() == "linear" and not ax.texts
            assert _min_distance(pts) >= 0.99 * MARKER_SIZE * fig.dpi / 72
