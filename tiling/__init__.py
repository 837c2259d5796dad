"""Tissue segmentation, tile grids, the per-slide Zarr store and the tiler that fills it."""

from .grid import ReadPlan, TilingParams, grid_coords, plan_reads, tissue_fractions
from .store import SlideStore
from .tiler import TileResult, tile_slide, tissue_mask, tissue_polygons
from .tissue import TissueConfig, mask_to_polygons, pen_mask, segment_tissue

__all__ = [
    "ReadPlan", "TilingParams", "grid_coords", "plan_reads", "tissue_fractions", "SlideStore", "TileResult",
    "tile_slide", "tissue_mask", "tissue_polygons", "TissueConfig", "mask_to_polygons", "pen_mask", "segment_tissue",
]
