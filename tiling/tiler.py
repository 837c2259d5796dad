"""Fill a slide store: tissue mask → tile grid → patches, chunk by chunk, resumable.

Two ways of storing patches (see :mod:`slidestream.store`):

- the pass-through path: when the grid *is* a pyramid level's own JPEG tile grid (no resize, tiles on stored tile
  boundaries, no stain normalisation), each patch is the slide's stored JPEG tile, copied without re-encoding;
  it is decoded once, to grey, for QC only. This is the fast path of ``slidestream tile --target-mpp <native> --tile-size
  <the file's tile size>``.
- the pixel path otherwise: regions are read (direct tile decoding where the file allows it), resized,
  optionally stain-normalised, QC'd and stored losslessly.

Both compute QC on each tile right after decoding it, while it is in the CPU cache, and write QC values and
done markers as whole raw chunk files (Zarr's per-call overhead would otherwise cost as much as the tiles).
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import shapely

from ..errors import StoreError, UnsupportedSlideError
from ..store import (DEFAULT_CHUNK_TILES, JPEG_CHUNK_TILES, JpegTiles, SlideStore, checked_array, identity_dict,
                     identity_of)
from ..wsi import Slide, open_slide, slide_id_from_path
from ..wsi.direct import DirectTiffReader, merge_jpeg_tables
from ..wsi.pixels import is_greyscale
from .grid import ReadPlan, TilingParams, grid_coords, keep_tiles, plan_reads, tissue_fractions
from .local import local_processes_available, local_workers
from .qc import QC_FLAG_DOC, QC_MEASURE, QCConfig, luma_stats, qc_flags, tile_stats
from .overview import EarlyTissue, tissue_mask
from .executor import BandClaims, _CLAIMED, dispatch_order, run_graph, task_key, tile_claimed_chunk
from .jpeg_fastpath import ReducedRead, ReducedTileReader, jpeg_passthrough, reduced_read
from .reads import read_tile, stain_sample_index
from .tissue import TissueConfig

Progress = Callable[[int, int], None]
_GREY = imagecodecs.JPEG8.CS.GRAYSCALE


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


def _slide_attrs(slide: Slide, slide_path: Path, max_pixels: int | None = None) -> dict:
    ident = identity_of(slide_path, slide.fingerprint())
    # a raised pixel budget is kept with the slide, like an mpp override: later stages reopen the slide with it
    budget = {} if max_pixels is None else {"max_pixels": int(max_pixels)}
    return {
        **identity_dict(ident), **budget,
        "vendor": slide.vendor,
        "mpp": slide.mpp,
        "mpp_source": slide.mpp_source,
        "dimensions": list(slide.dimensions),
        "bounds": list(slide.bounds),
        "objective_power": slide.objective_power,
        "backend": slide.backend,
    }


def _implicit_tiling() -> dict:
    """Tiling settings that stores made before they were recorded were tiled with: such a store resumes when this
    run uses exactly these."""
    return {"keep_rule": "fraction", "tissue": TissueConfig().to_dict()}


def _check_resumable(store: SlideStore, slide_attrs: dict, tiling: dict, save_patches: bool) -> None:
    old_slide = store.slide
    if old_slide.get("fingerprint") != slide_attrs["fingerprint"] or old_slide.get("size") != slide_attrs["size"]:
        raise StoreError(
            f"{store.path}: the store was made from a different slide file (content changed since "
            f"{old_slide.get('path')}); pass --overwrite to rebuild it"
        )
    recorded = {**_implicit_tiling(), **store.tiling}
    if isinstance(recorded.get("roi"), str):  # stores from before ROI summaries kept the whole WKT
        from .regions import roi_summary

        recorded["roi"] = roi_summary(shapely.from_wkt(recorded["roi"]))
    if recorded != tiling:
        changed = sorted(k for k in set(tiling) | set(recorded) if tiling.get(k) != recorded.get(k))
        if "tissue" in changed:
            old_t, new_t = recorded.get("tissue") or {}, tiling.get("tissue") or {}
            changed.remove("tissue")
            changed += [f"tissue.{k}" for k in sorted(set(old_t) | set(new_t)) if old_t.get(k) != new_t.get(k)]
        raise StoreError(
            f"{store.path}: the store was tiled with other parameters ({', '.join(changed)}); "
            "pass --overwrite to rebuild it, or use another --out"
        )
    if save_patches and not store.has_patches:
        raise StoreError(f"{store.path}: the store holds no patches; pass --overwrite to rebuild it with patches")


class _Handles:
    """Open slides, tile readers and stores shared by the tiling tasks that run in this process.

    Tasks take only paths (they may run on ``dask.distributed`` workers), so each opens what it needs; opening
    per task would cost more than the task's tiles on small chunks. Keys carry the file's size and mtime (the
    store's root metadata inode), so a rewritten file is reopened, never read through a stale handle. Evicted
    handles are dropped, not closed (another task may still be using them); :meth:`release` closes a slide's
    handles once no task of it runs any more.
    """

    def __init__(self, maxsize: int = 8):
        self.maxsize = maxsize
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, make: Callable[[], Any]) -> Any:
        with self._lock:
            obj = self._items.get(key)
            if obj is None:
                obj = self._items[key] = make()
                while len(self._items) > self.maxsize:
                    self._items.popitem(last=False)
            else:
                self._items.move_to_end(key)
            return obj

    def release(self, *paths: str) -> None:
        """Close and forget every handle opened for one of ``paths``."""
        with self._lock:
            for key in [k for k in self._items if k[1] in paths]:
                close = getattr(self._items.pop(key), "close", None)
                if close is not None:
                    close()


_handles = _Handles()


def _file_key(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _slide_for_task(path: str, mpp: float | None, max_pixels: int | None = None) -> Slide:
    return _handles.get(("slide", path, mpp, max_pixels, *_file_key(path)),
                        lambda: open_slide(path, mpp=mpp, max_pixels=max_pixels))


def _reader_for_task(path: str, level_dimensions: tuple) -> DirectTiffReader:
    # raw tile bytes only: no decoded-tile cache
    return _handles.get(("reader", path, level_dimensions, *_file_key(path)),
                        lambda: DirectTiffReader(path, level_dimensions, cache_bytes=0))


def _reduced_for_task(path: str, level_dimensions: tuple, spec: ReducedRead) -> ReducedTileReader:
    return _handles.get(("reduced", path, level_dimensions, spec, *_file_key(path)),
                        lambda: ReducedTileReader(path, level_dimensions, spec))


def _store_for_task(path: str) -> SlideStore:
    st = os.stat(Path(path) / "zarr.json")
    return _handles.get(("store", path, st.st_ino, st.st_mtime_ns), lambda: SlideStore.open(path, mode="r+"))


@dataclass(frozen=True)
class ChunkJob:
    """What every task of one slide's tiling graph needs: paths and small values, picklable for any scheduler.

    Attributes
    ----------
    slide_path, store_path : str
        Files as the workers see them.
    mpp : float or None
        Level-0 µm/px override.
    plan : ReadPlan
        Level, read size and tile size.
    qc : QCConfig
    stain : stain normaliser or None
        Applied to the pixel path's batches.
    jpeg : JpegTiles or None
        Set when patches are the slide's own JPEG tiles (pass-through path).
    reduced : ReducedRead or None
        Set when patches are assembled from reduced stored tiles (see :mod:`slidestream.tiling.jpeg_fastpath`).
    level_dimensions : tuple of (int, int)
        The slide's levels, to find the stored tiles of ``plan.level`` (both fast paths).
    max_pixels : int or None
        Pixel budget the slide is opened with (None: the default).
    """

    slide_path: str
    mpp: float | None
    store_path: str
    plan: ReadPlan
    qc: QCConfig
    stain: Any = None
    jpeg: JpegTiles | None = None
    reduced: ReducedRead | None = None
    level_dimensions: tuple = ()
    max_pixels: int | None = None


def tile_chunk(job: ChunkJob, chunk_index: int, coords: np.ndarray) -> int:
    """Read, QC and write one chunk of tiles of a store; the unit of work of the tiling graph.

    Runs wherever the scheduler puts it (a local thread or a ``dask.distributed`` worker), so it takes only
    paths and small values, opens what it needs there, and writes its chunk into the store itself: QC values
    first, patches next, the chunk's done marker last, so a chunk marked done is complete in every array.

    Parameters
    ----------
    job : ChunkJob
    chunk_index : int
        Which chunk of ``patches`` (tiles ``store.chunk_slices()[chunk_index]``).
    coords : (n, 2) int array
        Level-0 x, y of the chunk's tiles.

    Returns
    -------
    int : the number of tiles written.
    """
    store, source = _open_for(job)
    n = len(coords)
    white = np.empty(n, np.float64)
    sharpness = np.empty(n, np.float64)
    if job.jpeg is not None:
        tiles = _jpeg_tiles(job, source, coords, white, sharpness)
    else:
        read = source.read if job.reduced is not None else functools.partial(read_tile, source, plan=job.plan)
        size = job.plan.tile_size
        batch = np.empty((n, size, size, 3), np.uint8)
        for i, xy in enumerate(coords):
            batch[i] = read(xy)
            if job.stain is None:
                white[i], sharpness[i] = tile_stats(batch[i], job.qc)
        if job.stain is not None:
            batch = job.stain.transform(batch)
            for i in range(n):
                white[i], sharpness[i] = tile_stats(batch[i], job.qc)
    white, sharpness = white.astype(np.float32), sharpness.astype(np.float32)
    store.write_raw_chunk("qc/white", chunk_index, white)
    store.write_raw_chunk("qc/sharpness", chunk_index, sharpness)
    store.write_raw_chunk("qc/flags", chunk_index, qc_flags(white, sharpness, job.qc))
    if job.jpeg is not None:
        store.write_jpeg_shard(chunk_index, tiles)
    else:
        store.write_pixel_chunk(chunk_index, batch)
    store.mark_done("patches", chunk_index)
    return n


def _open_for(job: ChunkJob) -> tuple[SlideStore, Any]:
    """The store a task of ``job`` writes, and what it reads from: the direct reader (pass-through), the
    reduced-tile reader, or the slide; opened once per process (:data:`_handles`)."""
    store = _store_for_task(job.store_path)
    if job.jpeg is not None:
        return store, _reader_for_task(job.slide_path, job.level_dimensions)
    if job.reduced is not None:
        return store, _reduced_for_task(job.slide_path, job.level_dimensions, job.reduced)
    return store, _slide_for_task(job.slide_path, job.mpp, job.max_pixels)


def _jpeg_tiles(job: ChunkJob, reader: DirectTiffReader, coords: np.ndarray, white: np.ndarray,
                sharpness: np.ndarray) -> list[bytes]:
    """The stored JPEG tiles under ``coords`` as complete streams; each is decoded once, for its QC values.

    QC needs only the luma, so the tiles are decoded straight to grey: libjpeg then skips the chroma planes'
    inverse DCT, upsampling and colour conversion, about 40 % of an RGB decode.
    """
    level = reader.levels[job.plan.level]
    step = int(round(job.plan.extent0))  # level-0 pixels per stored tile (aligned grid: tile size x downsample)
    tables, colorspace = level.jpegtables, job.jpeg.colorspace
    out = []
    for i, (x, y) in enumerate(coords):
        data = reader.raw_tile(job.plan.level, int(x) // step, int(y) // step)
        if not data:
            raise StoreError(f"{job.slide_path}: tile at {x},{y} is not stored in the file; tile with "
                             "passthrough=False")
        data = merge_jpeg_tables(data, tables)
        grey = imagecodecs.jpeg8_decode(data, colorspace=colorspace, outcolorspace=_GREY)
        white[i], sharpness[i] = luma_stats(grey[::2, ::2], job.qc)
        out.append(data)
    return out


def tile_slide(
    slide_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    params: TilingParams | None = None,
    *,
    mpp: float | None = None,
    save_patches: bool = True,
    chunk_tiles: int | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    overwrite: bool = False,
    tissue_config: TissueConfig | None = None,
    qc_config: QCConfig | None = None,
    roi=None,
    stain=None,
    slide_id: str | None = None,
    progress: Progress | None = None,
    passthrough: bool = True,
    processes: bool | None = None,
    tissue: EarlyTissue | None = None,
    max_pixels: int | None = None,
) -> TileResult:
    """Tile one slide into ``<out_dir>/<slide_id>.zarr``.

    The work is a Dask graph with one task per chunk of tiles (:func:`tile_chunk`); each task writes its chunk
    and marks it done. Re-running with the same slide and parameters only runs the tasks of chunks not marked
    done; a changed slide or parameter raises :class:`~slidestream.errors.StoreError` unless ``overwrite``.

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
        Store the RGB patches and their QC (otherwise only coordinates, read from the slide at embedding time).
    chunk_tiles : int, optional
        Tiles per store chunk, the unit of work and of resume (used when the store is created). Default
        :data:`~slidestream.store.JPEG_CHUNK_TILES` (256) where the slide's JPEG tiles are kept, whose
        tiles are cheap, else :data:`~slidestream.store.DEFAULT_CHUNK_TILES` (64; decoded and resized tiles cost
        several times more): about the same work per chunk either way, so the fixed cost of a chunk (a task, five
        atomic file writes) stays small against its tiles (``bench/tile.py`` measures both).
    workers : int, optional
        Local workers (default: CPU cores): forked processes where the platform allows (Linux), else threads.
    scheduler : str, optional
        Address of a ``dask.distributed`` scheduler to run the graph on; the slide and the store must be at the
        same paths on the workers (a shared file system).
    tissue_config : TissueConfig, optional
        How tissue is segmented (default :class:`TissueConfig`); recorded with the tiling parameters
        (``tiling["tissue"]``), so a store is not resumed with other settings.
    roi : shapely geometry, optional
        Region of interest in level-0 pixels; only tiles whose centre lies inside are kept
        (:func:`slidestream.tiling.regions.roi_from_file` reads one from an annotation file). The store's
        ``tiling`` attribute records a summary of it (:func:`~slidestream.tiling.regions.roi_summary`: hash,
        bounds, size), the geometry itself goes to the array ``roi`` (WKB bytes), out of ``zarr.json``.
    stain : stain normaliser, optional
        An object with ``fit_source(tiles)``, ``transform(batch)`` and ``to_dict()`` (e.g.
        ``slidestream.stain.get_normalizer("macenko")``, already fitted to its target). Its source stain is
        estimated once from a fixed sample of the slide's tiles, every stored patch is normalised with it, and
        its record is stored in the store's ``stain`` attribute. (Tiling only calls these methods: the stain
        package sits above tiling.)
    progress : callable(done_tiles, total_tiles), optional
    passthrough : bool
        Keep the slide's own JPEG tiles as patches, without re-encoding, when the grid is a level's stored tile
        grid and no stain normalisation is asked for (:func:`jpeg_passthrough`); False always stores decoded
        pixels. Which one was used is ``store.patch_encoding``.
    processes : bool, optional
        Force local workers to be processes (True) or threads (False); see :func:`run_graph`.
    tissue : EarlyTissue, optional
        The slide's tissue mask, already being computed by a helper process
        (:func:`~slidestream.tiling.overview.start_tissue_mask`); used when it was made for this slide and these
        parameters, else segmented here.
    max_pixels : int, optional
        Pixel budget of :func:`~slidestream.wsi.open_slide` (default 2^28): files claiming larger tiles or strips,
        and slides without a pyramid level small enough for the tissue overview, are refused.
    """
    t0 = time.perf_counter()
    params = params or TilingParams()
    slide_path = Path(slide_path).resolve()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    slide_id = slide_id or slide_id_from_path(slide_path)
    store_path = out_dir / f"{slide_id}.zarr"
    qc_config = qc_config or QCConfig()
    tissue_config = tissue_config or TissueConfig()

    if roi is not None:
        from .regions import roi_summary, write_roi_array  # annotation readers: only for a region of interest

    with open_slide(slide_path, mpp=mpp, max_pixels=max_pixels) as slide:
        if is_greyscale(slide_path, dict(slide.properties)):
            raise UnsupportedSlideError(
                slide_path, "greyscale image (one sample per pixel, no colour): tissue is found by its colour "
                            "saturation, which a grey image has none of, so no tile would be kept",
                hint="slidestream tiles bright-field colour slides (H&E, IHC); re-export the slide in colour if it "
                     "is one")
        slide_attrs = _slide_attrs(slide, slide_path, max_pixels)
        level_dimensions = tuple(tuple(int(v) for v in d) for d in slide.level_dimensions)
        plan = plan_reads(params, slide.mpp, tuple(slide.level_downsamples))
        tiling = {**params.to_dict(), "level": plan.level, "read_size": plan.read_size, "extent0": plan.extent0,
                  "save_patches": save_patches, "edge_policy": "whole tiles inside the slide only",
                  "roi": roi_summary(roi) if roi is not None else None,
                  "stain": None if stain is None else {k: v for k, v in stain.to_dict().items() if k != "source"},
                  "jpeg_passthrough": bool(passthrough), "qc_measure": QC_MEASURE,
                  "tissue": tissue_config.to_dict()}
        action = "tiled"
        store = None
        if store_path.exists() and not overwrite:
            store = SlideStore.open(store_path, mode="r+")
            _check_resumable(store, slide_attrs, tiling, save_patches)
            action = "resumed"
        if store is None:
            early = None
            if tissue is not None and tissue.matches(slide_path, params, mpp, tissue_config, max_pixels):
                early = tissue.result()
            mask, ds = early if early is not None else tissue_mask(slide, params, tissue_config)
            coords = grid_coords(slide.dimensions, plan)
            frac = tissue_fractions(coords, plan.extent0, mask, ds)
            keep = keep_tiles(coords, plan.extent0, frac, mask, ds, params)
            if roi is not None:
                centres = coords + plan.extent0 / 2
                keep &= shapely.contains_xy(roi, centres[:, 0], centres[:, 1])
            tissue_um2 = float(mask.sum() * ds[0] * ds[1] * slide.mpp**2)
            jpeg = None
            if save_patches and passthrough and stain is None:
                jpeg = jpeg_passthrough(slide, plan, coords[keep])

            def extra(group) -> None:
                checked_array(group, "tissue_mask", data=mask.astype(np.uint8), chunks=mask.shape,
                              attributes={"downsample": list(ds)})
                group.attrs["tissue_area_mm2"] = tissue_um2 / 1e6
                if roi is not None:
                    write_roi_array(group, roi)
                if save_patches:
                    patches = group["patches"]
                    n, rows = int(keep.sum()), (patches.shards or patches.chunks)[0]
                    for name, dtype in (("white", "float32"), ("sharpness", "float32"), ("flags", "uint8")):
                        # uncompressed: tasks write whole chunks of these straight to their files
                        checked_array(group, f"qc/{name}", shape=(n,), dtype=dtype, chunks=(rows,), fill_value=0,
                                      compressors=None)
                    group["qc"].attrs.update({"config": qc_config.to_dict(), "flags": QC_FLAG_DOC})

            if chunk_tiles is None:
                chunk_tiles = JPEG_CHUNK_TILES if jpeg is not None else DEFAULT_CHUNK_TILES
            store = SlideStore.create(
                store_path, coords=coords[keep], tissue=frac[keep], slide=slide_attrs, tiling=tiling,
                tile_size=params.tile_size if save_patches else None, chunk_tiles=chunk_tiles, overwrite=overwrite,
                extra=extra, jpeg_tiles=jpeg,
            )
        jpeg = reduced = None
        if save_patches:
            jpeg = _jpeg_of(store)
            if jpeg is None:
                reduced = reduced_read(slide, plan, store.coords)
                _check_reduction(store, "box" if reduced is None else reduced.reduction, action)

    if stain is not None and save_patches and store.n_tiles:
        stain = _fit_stain(stain, store, slide_path, mpp, plan, max_pixels)

    written = 0
    if save_patches:
        todo = [i for i, done in enumerate(store.done_chunks("patches")) if not done]
        slices = store.chunk_slices("patches")
        total = store.n_tiles
        done_tiles = total - sum(slices[i].stop - slices[i].start for i in todo)
        if progress:
            progress(done_tiles, total)
        lock = threading.Lock()
        coords = store.coords

        def on_done(n: int) -> None:
            nonlocal done_tiles
            with lock:
                done_tiles += n
                if progress:
                    progress(done_tiles, total)

        job = ChunkJob(slide_path=str(slide_path), mpp=mpp, store_path=str(store_path), plan=plan, qc=qc_config,
                       stain=stain, jpeg=jpeg, reduced=reduced, level_dimensions=level_dimensions,
                       max_pixels=max_pixels)
        # The job goes in as a bound argument: dask would otherwise walk its fields for every task.
        task = functools.partial(tile_chunk, job)
        if not scheduler and (job.jpeg is not None or job.reduced is not None):
            # Opened here, before any worker is forked, the store and the stored-tile reader are inherited by every
            # worker instead of being opened by each in its first task (on the critical path). Only
            # these: they read with os.pread, so forked copies share no file position (an OpenSlide handle reads by
            # seek-then-read, and forked copies of it would move each other's offset).
            _open_for(job)
        n_local = local_workers(workers)
        forked = (not scheduler and n_local > 1 and len(todo) > 1
                  and (local_processes_available() if processes is None else processes))
        token = None
        if forked:
            # worker processes claim chunks band by band (BandClaims): one task per chunk, none naming its chunk
            token = f"{slide_id}-{os.getpid()}-{time.monotonic_ns()}"
            _CLAIMED[token] = (BandClaims(todo, n_local), lambda ci: task(ci, coords[slices[ci]]))
            keys = [task_key(slide_id, rank, len(todo), "claim") for rank in range(len(todo))]
            graph = {key: (tile_claimed_chunk, token) for key in keys}
        else:
            order = dispatch_order(todo, 1 if scheduler else n_local)
            keys = [task_key(slide_id, rank, len(order), ci) for rank, ci in enumerate(order)]
            graph = {key: (task, ci, coords[slices[ci]]) for key, ci in zip(keys, order)}
        try:
            # claimed chunks go out four tasks at a time: a batch claims its chunks as it runs, so loads stay even
            # and progress still comes often, with a quarter of the dispatch round trips
            written = sum(1 for n in run_graph(graph, keys, scheduler=scheduler, workers=workers, on_done=on_done,
                                               processes=forked if not scheduler else processes,
                                               batch=4 if forked else 1) if n)
        finally:
            _CLAIMED.pop(token, None)
            # the slide's readers hold decoded-tile caches: do not keep them for the next slide of a batch
            _handles.release(str(slide_path), str(store_path))
    if action == "resumed" and written == 0:
        action = "up-to-date"
    store.set_status("tiling", "complete")
    return TileResult(
        slide_id=slide_id, store=store_path, n_tiles=store.n_tiles,
        tissue_area_mm2=float(store.attrs.get("tissue_area_mm2", 0.0)),
        seconds=time.perf_counter() - t0, action=action, chunks_written=written,
        extra={"patch_encoding": store.patch_encoding["name"]} if save_patches else {},
    )


def _check_reduction(store: SlideStore, reduction: str, action: str) -> None:
    """Record how the pixel patches are reduced in a new store; refuse to resume one reduced otherwise."""
    recorded = store.patches.attrs.get("reduction")
    if action == "tiled" or (recorded is None and not store.done_chunks("patches").any()):
        if recorded != reduction:
            store.patches.attrs["reduction"] = reduction
    elif recorded != reduction:
        raise StoreError(f"{store.path}: its patches were reduced as {recorded!r}, this run would reduce them as "
                         f"{reduction!r} (another slidestream version?); pass --overwrite to rebuild the store")


def _jpeg_of(store: SlideStore) -> JpegTiles | None:
    """The pass-through settings a store's patches were created with (None for decoded pixels)."""
    enc = store.patch_encoding
    if enc.get("name") != "jpeg":
        return None
    return JpegTiles(level=int(enc["level"]), colorspace=enc.get("colorspace"), outcolorspace=enc.get("outcolorspace"))


def _fit_stain(stain, store: SlideStore, slide_path: Path, mpp: float | None, plan: ReadPlan,
               max_pixels: int | None = None):
    """Estimate the slide's source stain from a fixed, evenly spread sample of its tiles and record it.

    The sample depends only on the tile grid, so a resumed run re-estimates exactly the same parameters; a
    mismatch with the recorded ones means the slide or the method changed and is refused.
    """
    idx = stain_sample_index(store.n_tiles)
    slide = _slide_for_task(str(slide_path), mpp, max_pixels)
    sample = np.stack([read_tile(slide, xy, plan) for xy in store.coords[idx]])
    stain.fit_source(sample)
    record = stain.to_dict()
    old = store.attrs.get("stain")
    if old is None:
        store.update_attrs(stain=record)
    elif old != json.loads(json.dumps(record)):
        raise StoreError(f"{store.path}: the stored patches were normalised with other stain parameters; "
                         "pass --overwrite to rebuild the store")
    return stain
