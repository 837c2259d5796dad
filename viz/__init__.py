"""Pictures people look at instead of reading tables: score heatmaps over slide thumbnails (PNG), tiling QC images
(JPEG: tissue outline, holes and kept tiles over the thumbnail)."""

from .figure import new_figure, save_png
from .heatmap import render_heatmap, score_grid
from .qc import render_tissue_qc, write_qc_jpeg

__all__ = ["new_figure", "render_heatmap", "render_tissue_qc", "save_png", "score_grid", "write_qc_jpeg"]
