"""Pictures people look at instead of reading tables: score heatmaps over slide thumbnails, saved as PNG."""

from .figure import new_figure, save_png
from .heatmap import render_heatmap, score_grid

__all__ = ["new_figure", "render_heatmap", "save_png", "score_grid"]
