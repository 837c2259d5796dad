"""Fill a slide store: tissue mask → tile grid → patches, chunk by chunk, resumable."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..errors import StoreError
from ..wsi.slide import Slide, open_slide, slide_id_from_path
from .grid import ReadPlan, TilingParams, grid_coords, plan_reads, tissue_fractions
from .store import SlideStore, identity_dict, identity_of
from .tissue import TissueConfig, mask_to_polygons, segment_tissue

Progress = Callable[[int, int], None]


@dataclass
class TileResult:
    """What :func:`tile_slide` did for one slide."""

    slide_id: str
    store: Path
    n_tiles: int
    tissue_area_mm2: float
    seconds: float
    action: str  # "tiled", "resumed", "up-to-date"
    chunks_written: int = 0
    extra: dict = field(default_factory=dict)


def resize_patch(patch: np.ndarray, size: int) -> np.ndarray:
    """Area-averaging (antialiased) resize of an (h, w, 3) uint8 patch to (size, size, 3)."""
    if patch.shape[0] == size and patch.shape[1] == size:
        return patch
    return np.asarray(Image.fromarray(patch).resize((size, size), Image.Resampling.BOX))


def read_tile(slide: Slide, location: tuple[int, int], plan: ReadPlan) -> np.ndarray:
    """One tile as (tile_size, tile_size, 3) uint8, read at ``plan.level`` and resized as planned."""
    region = slide.read_region((int(location[0]), int(location[1])), plan.level, (plan.read_size, plan.read_size))
    return resize_patch(region, plan.tile_size)


def tissue_mask(slide: Slide, params: TilingParams, config: TissueConfig | None = None):
    """Tissue mask on the slide's thumbnail.

    Returns
    -------
    mask : (h, w) bool array
    downsample : (float, float)
        Level-0 pixels per mask pixel along x and y.
    """
    config = config or TissueConfig()
    w0, h0 = slide.dimensions
    size = int(np.ceil(max(w0, h0) * slide.mpp / config.working_mpp))
    thumb = slide.thumbnail(int(np.clip(size, 64, params.thumbnail_size)))
    ds = (w0 / thumb.shape[1], h0 / thumb.shape[0])
    mask = segment_tissue(thumb, mpp=slide.mpp * (ds[0] + ds[1]) / 2, config=config)
    return mask, ds


def _slide_attrs(slide: Slide, slide_path: Path) -> dict:
    ident = identity_of(slide_path, slide.fingerprint())
    return {
        **identity_dict(ident),
        "vendor": slide.vendor,
        "mpp": slide.mpp,
        "mpp_source": slide.mpp_source,
        "dimensions": list(slide.dimensions),
        "bounds": list(slide.bounds),
        "objective_power": slide.objective_power,
        "backend": slide.backend,
    }


def _check_resumable(store: SlideStore, slide_attrs: dict, tiling: dict, save_patches: bool) -> None:
    old_slide = store.slide
    if old_slide.get("fingerprint") != slide_attrs["fingerprint"] or old_slide.get("size") != slide_attrs["size"]:
        raise StoreError(
            f"{store.path}: the store was made from a different slide file (content changed since "
            f"{old_slide.get('path')}); pass --overwrite to rebuild it"
        )
    if store.tiling != tiling:
        changed = sorted(k for k in set(tiling) | set(store.tiling) if tiling.get(k) != store.tiling.get(k))
        raise StoreError(
            f"{store.path}: the store was tiled with other parameters ({', '.join(changed)}); "
            "pass --overwrite to rebuild it, or use another --out"
        )
    if save_patches and not store.has_patches:
        raise StoreError(f"{store.path}: the store holds no patches; pass --overwrite to rebuild it with patches")


def tile_slide(
    slide_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    params: TilingParams | None = None,
    *,
    mpp: float | None = None,
    save_patches: bool = True,
    chunk_tiles: int = 64,
    workers: int | None = None,
    overwrite: bool = False,
    tissue_config: TissueConfig | None = None,
    slide_id: str | None = None,
    progress: Progress | None = None,
) -> TileResult:
    """Tile one slide into ``<out_dir>/<slide_id>.zarr``.

    Re-running with the same slide and parameters does nothing more than finish missing chunks; a changed slide
    or parameter raises :class:`~slidestream.errors.StoreError` unless ``overwrite``.

    Parameters
    ----------
    slide_path : path
        The slide file.
    out_dir : path
        Folder of stores.
    params : TilingParams
        Target MPP, tile size, overlap, minimum tissue.
    mpp : float, optional
        Level-0 pixel size override for slides without one.
    save_patches : bool
        Store the RGB patches (otherwise only coordinates, read from the slide at embedding time).
    workers : int, optional
        Reader threads (default: number of CPU cores, at most 4).
    progress : callable(done_tiles, total_tiles), optional
    """
    t0 = time.perf_counter()
    params = params or TilingParams()
    slide_path = Path(slide_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    slide_id = slide_id or slide_id_from_path(slide_path)
    store_path = out_dir / f"{slide_id}.zarr"
    workers = workers or min(4, os.cpu_count() or 1)

    with open_slide(slide_path, mpp=mpp) as slide:
        slide_attrs = _slide_attrs(slide, slide_path)
        plan = plan_reads(params, slide.mpp, tuple(slide.level_downsamples))
        tiling = {**params.to_dict(), "level": plan.level, "read_size": plan.read_size, "extent0": plan.extent0,
                  "save_patches": save_patches, "edge_policy": "whole tiles inside the slide only"}
        action = "tiled"
        store = None
        if store_path.exists() and not overwrite:
            store = SlideStore.open(store_path, mode="r+")
            _check_resumable(store, slide_attrs, tiling, save_patches)
            action = "resumed"
        if store is None:
            mask, ds = tissue_mask(slide, params, tissue_config)
            coords = grid_coords(slide.dimensions, plan)
            frac = tissue_fractions(coords, plan.extent0, mask, ds)
            keep = frac >= params.min_tissue
            if params.min_tissue == 0:
                keep = frac > 0
            store = SlideStore.create(
                store_path, coords=coords[keep], tissue=frac[keep], slide=slide_attrs, tiling=tiling,
                tile_size=params.tile_size if save_patches else None, chunk_tiles=chunk_tiles, overwrite=overwrite,
            )
            store.group.create_array("tissue_mask", data=mask.astype(np.uint8), chunks=mask.shape,
                                     attributes={"downsample": list(ds)})
            tissue_um2 = float(mask.sum() * ds[0] * ds[1] * slide.mpp**2)
            store.update_attrs(tissue_area_mm2=tissue_um2 / 1e6)

        written = 0
        if save_patches:
            todo = [i for i, done in enumerate(store.done_chunks("patches")) if not done]
            slices = store.chunk_slices("patches")
            coords = store.coords
            total = store.n_tiles
            done_tiles = total - sum(slices[i].stop - slices[i].start for i in todo)
            if progress:
                progress(done_tiles, total)

            def work(ci: int) -> int:
                sl = slices[ci]
                batch = np.stack([read_tile(slide, xy, plan) for xy in coords[sl]])
                store.write_chunk("patches", ci, batch)
                return sl.stop - sl.start

            # openslide and the decoders release the GIL, so threads overlap reads on all cores.
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for n in pool.map(work, todo):
                    written += 1
                    done_tiles += n
                    if progress:
                        progress(done_tiles, total)
        if action == "resumed" and written == 0:
            action = "up-to-date"
        store.set_status("tiling", "complete")
        return TileResult(
            slide_id=slide_id, store=store_path, n_tiles=store.n_tiles,
            tissue_area_mm2=float(store.attrs.get("tissue_area_mm2", 0.0)),
            seconds=time.perf_counter() - t0, action=action, chunks_written=written,
        )


def tissue_polygons(store: SlideStore):
    """Tissue outline of a store's slide as a shapely MultiPolygon in level-0 pixels."""
    arr = store.group["tissue_mask"]
    return mask_to_polygons(arr[...].astype(bool), tuple(arr.attrs["downsample"]))
