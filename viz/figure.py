"""Saving matplotlib figures as PNG files, atomically, with no display and no pyplot global state."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from ..fileio import atomic_write

__all__ = ["new_figure", "save_png"]


def new_figure(figsize: tuple[float, float], dpi: float = 100) -> Any:
    """A matplotlib ``Figure`` on the Agg canvas (no display, nothing registered with pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: str | os.PathLike, *, dpi: float | None = None) -> Path:
    """Render ``fig`` to PNG and write it to ``path`` atomically (parent folders created); returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi if dpi is not None else fig.dpi)
    return atomic_write(path, buf.getvalue())
