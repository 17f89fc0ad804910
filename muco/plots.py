"""PNG charts for reports and the Dagster UI (matplotlib, headless)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI

import matplotlib.pyplot as plt


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
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(figure)
