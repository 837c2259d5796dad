"""Tissue segmentation, tile grids, the per-slide Zarr store and the tiler that fills it."""

from .codecs import JpegTileCodec
from .grid import ReadPlan, TilingParams, grid_coords, plan_reads, tissue_fractions
from .qc import QCConfig, tile_qc, tile_stats
from .store import JpegTiles, SlideStore
from .stored import jpeg_passthrough, reduced_read
from .tiler import TileResult, tile_slide, tissue_mask, tissue_polygons
from .tissue import TissueConfig, mask_to_polygons, pen_mask, segment_tissue

_LAZY = {"roi_from_file": "regions", "write_tissue_geojson": "regions"}


def __getattr__(name: str):
    # ROI files and QuPath export pull in the annotation and GeoJSON readers; plain tiling does not need them
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "JpegTileCodec",
    "JpegTiles",
    "QCConfig",
    "ReadPlan",
    "SlideStore",
    "TileResult",
    "TilingParams",
    "TissueConfig",
    "grid_coords",
    "jpeg_passthrough",
    "mask_to_polygons",
    "pen_mask",
    "plan_reads",
    "reduced_read",
    "roi_from_file",
    "segment_tissue",
    "tile_qc",
    "tile_slide",
    "tile_stats",
    "tissue_fractions",
    "tissue_mask",
    "tissue_polygons",
    "write_tissue_geojson",
]
