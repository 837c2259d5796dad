"""The tiling QC image of one slide (``<out>/qc/<slide_id>.jpg``), drawn from its store and its slide."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["QC_IMAGE_SIZE", "qc_image_path", "write_qc_image"]

#: Longest side of the QC images' thumbnails in pixels (TRIDENT's are 1000 px; CLAM's are the level nearest 64x).
QC_IMAGE_SIZE = 1024


def qc_image_path(out_dir: str | os.PathLike, slide_id: str) -> Path:
    """Where the QC image of a slide tiled into ``out_dir`` goes."""
    return Path(out_dir) / "qc" / f"{slide_id}.jpg"


def write_qc_image(store_path: str | os.PathLike, slide_path: str | os.PathLike, path: str | os.PathLike, *,
                   mpp: float | None = None, size: int = QC_IMAGE_SIZE) -> Path:
    """Draw a tiled slide's QC image (:func:`slidestream.viz.qc.render_tissue_qc`) and write it as JPEG, atomically.

    The thumbnail is read from the slide (at most ``size`` px on its longer side); the tissue mask, the kept tiles
    and the tiling parameters come from the store, so the picture shows what the store holds.

    Returns
    -------
    Path of the JPEG.
    """
    from ..store import SlideStore
    from ..tiling.overview import overview
    from ..tiling.tissue import hole_mask
    from ..viz.qc import render_tissue_qc, write_qc_jpeg
    from ..wsi import open_slide

    store = SlideStore.open(store_path)
    with open_slide(slide_path, mpp=mpp) as slide:
        thumb = overview(slide, size)
        w0, h0 = slide.dimensions
    ds = (w0 / thumb.shape[1], h0 / thumb.shape[0])
    mask = mask_ds = holes = None
    if "tissue_mask" in store.group:
        arr = store.group["tissue_mask"]
        mask = arr[...].astype(bool)
        mask_ds = tuple(float(v) for v in arr.attrs["downsample"])
        holes = hole_mask(mask)
    t = store.tiling
    coords = store.coords
    tissue_mm2 = float(store.attrs.get("tissue_area_mm2", 0.0))
    caption = (f"{store.slide_id}: {len(coords)} tiles of {t['tile_size']} px at {t['mpp']:g} um/px, "
               f"keep rule {t.get('keep_rule', 'fraction')}"
               + (f" >= {t['min_tissue']:g}" if t.get("keep_rule", "fraction") == "fraction" else "")
               + f", tissue {tissue_mm2:.2f} mm2")
    image = render_tissue_qc(thumb, ds, mask, mask_ds, np.asarray(coords), float(t["extent0"]), holes=holes,
                             caption=caption)
    return write_qc_jpeg(path, image)
