"""PNG charts for reports and the Dagster UI (matplotlib, headless).

The PNG bytes depend only on the data and the matplotlib/FreeType versions: no timestamp is
written and the ``Software`` text chunk is dropped, so DVC sees an unchanged chart as unchanged.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

# Bars per category share this much of the slot between two category ticks.
_GROUP_WIDTH = 0.8

# One bar series per entry: None leaves that category's bar out (e.g. a dataset one run lacks).
BarSeries = Mapping[str, Sequence[float | None]]


def _png_bytes(figure: Figure) -> bytes:
    """``figure`` as PNG without metadata that would vary between renders or versions."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def line_chart_png(
    xs: Sequence[float],
    series: dict[str, Sequence[float]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    size: tuple[float, float] = (6.0, 3.5),
) -> bytes:
    """One or more lines over ``xs`` as PNG bytes."""
    figure, axes = plt.subplots(figsize=size, dpi=100)
    try:
        for label, ys in series.items():
            axes.plot(xs, ys, label=label, linewidth=1.5)
        axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
        axes.grid(alpha=0.3)
        if len(series) > 1:
            axes.legend()
        figure.tight_layout()
        return _png_bytes(figure)
    finally:
        plt.close(figure)


def _draw_bars(
    axes: Axes, categories: Sequence[str], series: BarSeries, *, horizontal: bool
) -> None:
    """Grouped bars: one slot per category, one bar per series inside it."""
    positions = np.arange(len(categories), dtype=float)
    width = _GROUP_WIDTH / max(len(series), 1)
    for index, (label, values) in enumerate(series.items()):
        if len(values) != len(categories):
            raise ValueError(f"series {label!r}: {len(values)} values for {len(categories)} bars")
        offset = (index - (len(series) - 1) / 2) * width
        # NaN draws no bar but keeps the slot, so series stay aligned with their categories.
        heights = [np.nan if value is None else value for value in values]
        if horizontal:
            axes.barh(positions + offset, heights, height=width, label=label)
        else:
            axes.bar(positions + offset, heights, width=width, label=label)
    if horizontal:
        axes.set_yticks(positions, categories)
        axes.invert_yaxis()  # first category on top, as in a table
        axes.grid(axis="x", alpha=0.3)
    else:
        axes.set_xticks(positions, categories, rotation=30 if len(categories) > 4 else 0)
        axes.grid(axis="y", alpha=0.3)
    axes.set_axisbelow(True)


def _legend_below(figure: Figure, axes: Axes) -> None:
    """One legend, for ``axes``' series, under the plot: inside it would hide bars."""
    handles, labels = axes.get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 3))


def bar_chart_png(
    categories: Sequence[str],
    series: BarSeries,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    horizontal: bool = False,
    size: tuple[float, float] = (6.0, 3.5),
) -> bytes:
    """Grouped bars as PNG bytes: per category, one bar per entry of ``series``.

    ``horizontal`` puts categories down the side, which suits many or long names.
    ``xlabel`` and ``ylabel`` name the axes as drawn.
    """
    figure, axes = plt.subplots(figsize=size, dpi=100, layout="constrained")
    try:
        _draw_bars(axes, categories, series, horizontal=horizontal)
        axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
        if len(series) > 1:
            _legend_below(figure, axes)
        return _png_bytes(figure)
    finally:
        plt.close(figure)


def bar_panels_png(
    panels: Mapping[str, tuple[Sequence[str], BarSeries]],
    *,
    title: str,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
    panel_size: tuple[float, float] = (4.5, 3.5),
) -> bytes:
    """Side-by-side grouped bar charts sharing the y axis, one per ``panels`` entry.

    Each entry maps a panel title to ``(categories, series)`` as for :func:`bar_chart_png`;
    give every panel the same series names (and order), as they share one legend.
    """
    if not panels:
        raise ValueError("no panel to draw")
    width, height = panel_size
    figure, grid = plt.subplots(
        1,
        len(panels),
        figsize=(width * len(panels), height),
        dpi=100,
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    try:
        for axes, (panel_title, (categories, series)) in zip(grid[0], panels.items(), strict=True):
            _draw_bars(axes, categories, series, horizontal=False)
            axes.set_title(panel_title)
        grid[0][0].set_ylabel(ylabel)
        if ylim is not None:
            grid[0][0].set_ylim(*ylim)
        _legend_below(figure, grid[0][0])
        figure.suptitle(title)
        return _png_bytes(figure)
    finally:
        plt.close(figure)
