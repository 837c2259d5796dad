"""Fill a slide store: tissue mask → tile grid → patches, chunk by chunk, resumable.

Two ways of storing patches (see :mod:`slidestream.tiling.store`):

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import shapely
from dask.callbacks import Callback
from PIL import Image

from ..errors import StoreError
from ..wsi.direct import DirectTiffReader, merge_jpeg_tables
from ..wsi.slide import Slide, open_slide, slide_id_from_path
from .grid import ReadPlan, TilingParams, grid_coords, plan_reads, tissue_fractions
from .local import local_processes_available, local_workers
from .qc import QC_FLAG_DOC, QC_MEASURE, QCConfig, luma_stats, qc_flags, tile_stats
from .store import DEFAULT_CHUNK_TILES, JPEG_CHUNK_TILES, JpegTiles, SlideStore, identity_dict, identity_of
from .overview import EarlyTissue, tissue_mask
from .stored import ReducedRead, ReducedTileReader, jpeg_passthrough, reduced_read
from .tissue import TissueConfig, mask_to_polygons

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


def resize_patch(patch: np.ndarray, size: int) -> np.ndarray:
    """Area-averaging (antialiased) resize of an (h, w, 3) uint8 patch to (size, size, 3)."""
    h, w = patch.shape[:2]
    if h == size and w == size:
        return patch
    if h == w and h % size == 0:
        # Whole-number factor (the common 40x → 20x case): block averaging, about twice as fast as a BOX resize.
        return np.asarray(Image.fromarray(patch).reduce(h // size))
    return np.asarray(Image.fromarray(patch).resize((size, size), Image.Resampling.BOX))


def read_tile(slide: Slide, location: tuple[int, int], plan: ReadPlan) -> np.ndarray:
    """One tile as (tile_size, tile_size, 3) uint8, read at ``plan.level`` and resized as planned."""
    region = slide.read_region((int(location[0]), int(location[1])), plan.level, (plan.read_size, plan.read_size))
    return resize_patch(region, plan.tile_size)


def patch_reader(slide: Slide, plan: ReadPlan, coords: np.ndarray) -> Callable[[tuple[int, int]], np.ndarray]:
    """A function reading the patches of a grid (``coords``, level-0 x, y) exactly as the tiler stores them.

    The tiler assembles patches from reduced stored tiles where it can (:func:`reduced_read`); where the decoder
    does the reduction its pixels differ from :func:`read_tile`'s box reduction by rounding, so whatever reads
    patches from the slide instead of a store (embedding a store without patches, checks) reads them with this.
    """
    spec = reduced_read(slide, plan, coords)
    if spec is None:
        return functools.partial(read_tile, slide, plan=plan)
    return ReducedTileReader(slide.path, slide.level_dimensions, spec).read


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


def _slide_for_task(path: str, mpp: float | None) -> Slide:
    return _handles.get(("slide", path, mpp, *_file_key(path)), lambda: open_slide(path, mpp=mpp))


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
        Set when patches are assembled from reduced stored tiles (see :mod:`slidestream.tiling.stored`).
    level_dimensions : tuple of (int, int)
        The slide's levels, to find the stored tiles of ``plan.level`` (both fast paths).
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
    return store, _slide_for_task(job.slide_path, job.mpp)


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


class _CountTiles(Callback):
    """Dask callback that reports tiles finished by the local scheduler."""

    def __init__(self, on_done: Callable[[int], None]):
        super().__init__()
        self.on_done = on_done

    def _posttask(self, key, result, dsk, state, worker_id):
        if isinstance(result, int):
            self.on_done(result)


def dispatch_order(chunks: list[int], bands: int) -> list[int]:
    """The order in which local workers should take ``chunks``: ``bands`` contiguous bands, interleaved.

    Neighbouring chunks share stored tiles (a patch row and the next one read the same stored tile rows), and a
    worker caches the tiles it decoded. Taking chunks in turn from one band per worker keeps each worker in its
    own part of the slide as long as the workers finish in turn: with two processes taking consecutive chunks in
    turn, 29 % more stored tiles are decoded than by one process (224 px @ 0.5 µm/px from 0.25 µm/px); with
    bands, 8 %, as the processes drift out of turn. Forked worker processes therefore claim their chunks instead
    (:class:`BandClaims`: 3 % more); this order serves threads, which share one cache, and clusters.
    """
    n = len(chunks)
    bands = max(1, min(bands, n))
    edges = [round(i * n / bands) for i in range(bands + 1)]
    parts = [chunks[edges[i]:edges[i + 1]] for i in range(bands)]
    return [part[k] for k in range(max((len(p) for p in parts), default=0)) for part in parts if k < len(part)]


class BandClaims:
    """Chunks handed out band by band to forked worker processes, as they ask for work.

    :func:`dispatch_order` fixes which chunk each task writes, and a process does not always get the next task of
    its own band: on the 20x job two processes switched bands every few chunks and decoded 8 % more stored tiles
    than one process. Here a task does not name its chunk: each process claims the next chunk of its own band,
    and once that band is done it takes chunks from the end of the band with the most left (so the owner keeps
    its run of neighbours). Every task writes one chunk, so the graph still has one task per chunk to do.

    Created before the workers are forked: the counters live in shared memory, and each forked copy of this
    object remembers its own band.

    Parameters
    ----------
    chunks : list of int
        The chunks to write, in order (they are split into ``bands`` contiguous bands).
    bands : int
        Worker processes.
    """

    def __init__(self, chunks: list[int], bands: int):
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        n = len(chunks)
        bands = max(1, min(bands, n))
        edges = [round(i * n / bands) for i in range(bands + 1)]
        self.chunks = list(chunks)
        self._next = ctx.RawArray("q", edges[:-1])
        self._end = ctx.RawArray("q", edges[1:])
        self._owners = ctx.RawValue("q", 0)
        self._lock = ctx.Lock()
        self._pid: int | None = None
        self._band = 0

    def claim(self) -> int | None:
        """The next chunk for the calling process, or None when every chunk has been claimed."""
        with self._lock:
            if self._pid != os.getpid():  # this process's first claim: it takes the next band nobody owns
                self._pid = os.getpid()
                self._band = self._owners.value % len(self._next)
                self._owners.value += 1
            band = self._band
            if self._next[band] < self._end[band]:
                self._next[band] += 1
                return self.chunks[self._next[band] - 1]
            left = [self._end[b] - self._next[b] for b in range(len(self._next))]
            band = max(range(len(left)), key=left.__getitem__)
            if left[band] <= 0:
                return None
            self._end[band] -= 1
            return self.chunks[self._end[band]]


#: Work of the running claim-based graphs, by token: set before the workers are forked, so they inherit it.
_CLAIMED: dict[str, tuple[BandClaims, Callable[[int], int]]] = {}


def tile_claimed_chunk(token: str) -> int:
    """Task of a claim-based graph (see :class:`BandClaims`): write the next chunk this process claims."""
    claims, write = _CLAIMED[token]
    chunk = claims.claim()
    return 0 if chunk is None else write(chunk)


def task_key(slide_id: str, rank: int, n: int, chunk: int | str) -> str:
    """Dask key of a chunk's task. Dask's local schedulers start independent tasks in reverse order of their keys
    (``tests/test_tiling_dask.py`` checks it), so a fixed-width, falling number makes ``rank`` the start order."""
    return f"tile-{slide_id}-{n - rank:08d}-{chunk}"


def run_graph(graph: Mapping[str, tuple], keys: list[str], *, scheduler: str | None = None,
              workers: int | None = None, on_done: Callable[[int], None] | None = None,
              processes: bool | None = None, batch: int = 1) -> list:
    """Compute the tasks ``keys`` of a dask graph locally (threads or forked processes), or on a
    ``dask.distributed`` cluster.

    Parameters
    ----------
    graph : mapping
        A dask task graph, ``{key: (function, *args)}``.
    keys : list of str
        The tasks to compute (their results are returned in this order).
    scheduler : str, optional
        Address of a running ``dask.distributed`` scheduler (``tcp://host:8786``); None runs locally.
    workers : int, optional
        Local workers (default: CPU cores).
    on_done : callable(int), optional
        Called with each task's integer result as it finishes (progress).
    processes : bool, optional
        Local workers as processes (default where :func:`local_processes_available` and ``workers > 1``) or
        threads. Tiling holds the GIL between its numpy calls (QC, assembly): two threads reach ~1.6x one,
        processes scale with the cores. One worker always runs in this process.
    batch : int
        Tasks sent to a worker process at a time (in key order). Each dispatch costs the worker ~2 ms of waiting
        for a result and the next task to go round through this process; batches of tasks that choose their own
        work when they run (:class:`BandClaims`) cut that without binding work to a worker early.

    Notes
    -----
    The graph goes straight to a scheduler's ``get``: ``dask.compute`` over delayed objects would first tokenize
    and optimise an expression of the whole graph, ~0.5 ms per task of serial work in this process.
    """
    if not keys:
        return []
    if scheduler:
        from distributed import Client, as_completed

        with Client(scheduler) as client:
            # a chunk whose task raised (a flaky network read) gets two more tries; a dead worker's chunks are
            # re-run by the scheduler anyway
            futures = client.get(dict(graph), keys, sync=False, retries=2)
            for fut in as_completed(futures):
                if on_done:
                    on_done(fut.result())
            return client.gather(futures)
    n = local_workers(workers)
    if processes is None:
        processes = n > 1 and local_processes_available()
    with _CountTiles(on_done or (lambda n: None)):
        if processes and n > 1:
            import multiprocessing

            import dask.multiprocessing

            # Forked, the workers start in milliseconds with every module imported (spawned ones would import
            # slidestream again, ~0.5 s each). Zarr re-creates its event loop in a forked child itself.
            _release_free_heap()
            with multiprocessing.get_context("fork").Pool(min(n, len(keys))) as pool:
                out = dask.multiprocessing.get(graph, keys, pool=pool, num_workers=n, chunksize=max(1, batch),
                                               optimize_graph=False)
                # reaped before returning: their CPU time then counts towards this process's children
                pool.close()
                pool.join()
            return list(out)
        import dask.threaded

        return list(dask.threaded.get(graph, keys, num_workers=n))


def _release_free_heap() -> None:
    """Return the free pages of this process's heap to the system (glibc ``malloc_trim``; elsewhere nothing).

    Called before forking workers: a worker allocating inside free pages it inherited pays a copy-on-write copy of
    each, while a trimmed heap gives it fresh zeroed pages. That cut the first chunk of each worker from ~95 to
    ~78 ms on the 20x job; the call itself takes well under a millisecond.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


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
        :data:`~slidestream.tiling.store.JPEG_CHUNK_TILES` (256) where the slide's JPEG tiles are kept, whose
        tiles cost ~0.2 ms each, else :data:`~slidestream.tiling.store.DEFAULT_CHUNK_TILES` (64; decoded and
        resized tiles cost ~1 ms): about 50 ms of work per chunk either way, so the fixed cost of a chunk (a
        task, five atomic file writes) stays small against its tiles.
    workers : int, optional
        Local workers (default: CPU cores): forked processes where the platform allows (Linux), else threads.
    scheduler : str, optional
        Address of a ``dask.distributed`` scheduler to run the graph on; the slide and the store must be at the
        same paths on the workers (a shared file system).
    roi : shapely geometry, optional
        Region of interest in level-0 pixels; only tiles whose centre lies inside are kept
        (:func:`slidestream.tiling.regions.roi_from_file` reads one from an annotation file).
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
    """
    t0 = time.perf_counter()
    params = params or TilingParams()
    slide_path = Path(slide_path).resolve()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    slide_id = slide_id or slide_id_from_path(slide_path)
    store_path = out_dir / f"{slide_id}.zarr"
    qc_config = qc_config or QCConfig()

    with open_slide(slide_path, mpp=mpp) as slide:
        slide_attrs = _slide_attrs(slide, slide_path)
        level_dimensions = tuple(tuple(int(v) for v in d) for d in slide.level_dimensions)
        plan = plan_reads(params, slide.mpp, tuple(slide.level_downsamples))
        tiling = {**params.to_dict(), "level": plan.level, "read_size": plan.read_size, "extent0": plan.extent0,
                  "save_patches": save_patches, "edge_policy": "whole tiles inside the slide only",
                  "roi": roi.wkt if roi is not None else None,
                  "stain": None if stain is None else {k: v for k, v in stain.to_dict().items() if k != "source"},
                  "jpeg_passthrough": bool(passthrough), "qc_measure": QC_MEASURE}
        action = "tiled"
        store = None
        if store_path.exists() and not overwrite:
            store = SlideStore.open(store_path, mode="r+")
            _check_resumable(store, slide_attrs, tiling, save_patches)
            action = "resumed"
        if store is None:
            early = None
            if tissue is not None and tissue.matches(slide_path, params, mpp, tissue_config):
                early = tissue.result()
            mask, ds = early if early is not None else tissue_mask(slide, params, tissue_config)
            coords = grid_coords(slide.dimensions, plan)
            frac = tissue_fractions(coords, plan.extent0, mask, ds)
            keep = frac >= params.min_tissue if params.min_tissue > 0 else frac > 0
            if roi is not None:
                centres = coords + plan.extent0 / 2
                keep &= shapely.contains_xy(roi, centres[:, 0], centres[:, 1])
            tissue_um2 = float(mask.sum() * ds[0] * ds[1] * slide.mpp**2)
            jpeg = None
            if save_patches and passthrough and stain is None:
                jpeg = jpeg_passthrough(slide, plan, coords[keep])

            def extra(group) -> None:
                group.create_array("tissue_mask", data=mask.astype(np.uint8), chunks=mask.shape,
                                   attributes={"downsample": list(ds)})
                group.attrs["tissue_area_mm2"] = tissue_um2 / 1e6
                if save_patches:
                    patches = group["patches"]
                    n, rows = int(keep.sum()), (patches.shards or patches.chunks)[0]
                    for name, dtype in (("white", "float32"), ("sharpness", "float32"), ("flags", "uint8")):
                        # uncompressed: tasks write whole chunks of these straight to their files
                        group.create_array(f"qc/{name}", shape=(n,), dtype=dtype, chunks=(rows,), fill_value=0,
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
        stain = _fit_stain(stain, store, slide_path, mpp, plan)

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
                       stain=stain, jpeg=jpeg, reduced=reduced, level_dimensions=level_dimensions)
        # The job goes in as a bound argument: dask would otherwise walk its fields for every task.
        task = functools.partial(tile_chunk, job)
        if not scheduler and (job.jpeg is not None or job.reduced is not None):
            # Opened here, before any worker is forked, the store and the stored-tile reader are inherited by every
            # worker instead of being opened by each in its first task (~40 ms each, on the critical path). Only
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
            # and progress comes every ~0.2 s, with a quarter of the dispatch round trips
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


STAIN_SAMPLE_TILES = 64


def _fit_stain(stain, store: SlideStore, slide_path: Path, mpp: float | None, plan: ReadPlan):
    """Estimate the slide's source stain from a fixed, evenly spread sample of its tiles and record it.

    The sample depends only on the tile grid, so a resumed run re-estimates exactly the same parameters; a
    mismatch with the recorded ones means the slide or the method changed and is refused.
    """
    n = store.n_tiles
    idx = np.unique(np.linspace(0, n - 1, min(n, STAIN_SAMPLE_TILES)).round().astype(int))
    slide = _slide_for_task(str(slide_path), mpp)
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


def tissue_polygons(store: SlideStore):
    """Tissue outline of a store's slide as a shapely MultiPolygon in level-0 pixels."""
    arr = store.group["tissue_mask"]
    return mask_to_polygons(arr[...].astype(bool), tuple(arr.attrs["downsample"]))
