"""Tissue segmentation, tile grids, tile QC, and the tiler that fills the per-slide store (:mod:`slidestream.store`)."""

import importlib

# Every name is loaded on first use (PEP 562), so that importing one submodule, e.g. the tissue segmentation, does
# not import Zarr and Dask with the store and the tiler: `slidestream tile` segments the first slide in
# a forked helper while the parent imports those.
_WHERE = {
    "ReadPlan": "grid", "TilingParams": "grid", "grid_coords": "grid", "plan_reads": "grid",
    "tissue_fractions": "grid",
    "QCConfig": "qc", "tile_qc": "qc", "tile_stats": "qc",
    "jpeg_passthrough": "jpeg_fastpath", "reduced_read": "jpeg_fastpath",
    "patch_reader": "reads", "read_tile": "reads", "resize_patch": "reads",
    "TileResult": "tiler", "tile_slide": "tiler", "tissue_polygons": "regions",
    "run_graph": "executor",
    "tissue_mask": "overview",
    "TissueConfig": "tissue", "mask_to_polygons": "tissue", "pen_mask": "tissue", "segment_tissue": "tissue",
    "roi_from_file": "regions", "write_tissue_geojson": "regions",
    "KEEP_RULES": "settings", "keep_tiles": "grid", "hole_mask": "tissue", "dump_patches": "dump",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "KEEP_RULES",
    "QCConfig",
    "ReadPlan",
    "TileResult",
    "TilingParams",
    "TissueConfig",
    "dump_patches",
    "grid_coords",
    "hole_mask",
    "jpeg_passthrough",
    "keep_tiles",
    "patch_reader",
    "mask_to_polygons",
    "pen_mask",
    "plan_reads",
    "read_tile",
    "reduced_read",
    "resize_patch",
    "roi_from_file",
    "run_graph",
    "segment_tissue",
    "tile_qc",
    "tile_slide",
    "tile_stats",
    "tissue_fractions",
    "tissue_mask",
    "tissue_polygons",
    "write_tissue_geojson",
]
