"""Kept tiles as image files, for people who train image models on tiles (TRIDENT's ``--dump_patches``).

Layout: ``<folder>/<slide_id>/<slide_id>_x<X>_y<Y>.png`` (or ``.jpg``), X and Y the tile's level-0 top-left
corner. TRIDENT names its files ``{i:06d}_x{X}_y{Y}`` inside ``patch_images/<slide>/``; the slide id in the name
here keeps a file recognisable when tiles of many slides are pooled into one training folder.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ConfigError, StoreError
from ..fileio import atomic_write
from ..store import SlideStore
from ..wsi import open_slide
from .grid import ReadPlan
from .local import local_workers
from .reads import patch_reader

__all__ = ["DUMP_FORMATS", "DumpResult", "dump_patches", "patch_file_name"]

#: Image formats of dumped tiles: format name -> file suffix.
DUMP_FORMATS = {"png": ".png", "jpg": ".jpg"}


@dataclass(frozen=True)
class DumpResult:
    """What :func:`dump_patches` did for one slide."""

    folder: Path
    n_tiles: int
    written: int
    existing: int


def patch_file_name(slide_id: str, x: int, y: int, fmt: str = "png") -> str:
    """File name of the tile of ``slide_id`` whose level-0 top-left corner is ``(x, y)``."""
    return f"{slide_id}_x{int(x)}_y{int(y)}{DUMP_FORMATS[fmt]}"


def _encode(tile: np.ndarray, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(tile).save(buf, format="PNG")
    else:
        Image.fromarray(tile).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def dump_patches(store_path: str | os.PathLike, folder: str | os.PathLike, *,
                 slide_path: str | os.PathLike | None = None, mpp: float | None = None, fmt: str = "png",
                 jpeg_quality: int = 90, workers: int | None = None,
                 progress: Callable[[int, int], None] | None = None) -> DumpResult:
    """Write every tile of a tiled store as an image file, skipping files that already exist (resumable).

    Parameters
    ----------
    store_path : path
        A store whose tiling is complete.
    folder : path
        Dump folder; the tiles go to ``<folder>/<slide_id>/`` (:func:`patch_file_name`).
    slide_path : path, optional
        The slide, read when the store holds no patches (tiled with ``--no-save-patches``): tiles are then read
        exactly as the tiler would have stored them (:func:`~slidestream.tiling.reads.patch_reader`).
    mpp : float, optional
        Level-0 µm/px override of the slide, as given to the tiler.
    fmt : {"png", "jpg"}
        PNG is lossless; JPEG (``jpeg_quality``) is much faster to write and several times smaller.
    workers : int, optional
        Threads encoding and writing files (default: CPU cores).
    progress : callable(done, total), optional

    Returns
    -------
    DumpResult
        The slide's folder, its number of tiles, the files written and those already there.

    Raises
    ------
    ConfigError
        Unknown format or bad quality.
    StoreError
        The store's tiling is not complete, or it holds no patches and no slide was given.
    """
    if fmt not in DUMP_FORMATS:
        raise ConfigError(f"dump format must be one of {', '.join(DUMP_FORMATS)}, got {fmt!r}")
    if not 1 <= int(jpeg_quality) <= 100:
        raise ConfigError(f"JPEG quality must be in 1..100, got {jpeg_quality}")
    store = SlideStore.open(store_path)
    if store.status.get("tiling") != "complete":
        raise StoreError(f"{store.path}: tiling is not complete; run `slidestream tile` on the slide first")
    if not store.has_patches and slide_path is None:
        raise StoreError(f"{store.path}: the store holds no patches; give the slide to read the tiles from")
    slide_id = store.slide_id
    out = Path(folder) / slide_id
    out.mkdir(parents=True, exist_ok=True)
    coords = store.coords
    names = [patch_file_name(slide_id, x, y, fmt) for x, y in coords]
    present = set(os.listdir(out))
    todo = np.array([i for i, name in enumerate(names) if name not in present], dtype=np.int64)
    total, done = len(coords), len(coords) - len(todo)
    if progress:
        progress(done, total)
    if not len(todo):
        return DumpResult(out, total, 0, done)

    def write(i: int, tile: np.ndarray) -> None:
        atomic_write(out / names[i], _encode(np.ascontiguousarray(tile), fmt, int(jpeg_quality)), mkdir=False)

    with ThreadPoolExecutor(max_workers=local_workers(workers)) as pool:
        pending: list = []
        # batches are read in this thread (slide and store handles are not shared between threads) while the
        # previous batch is encoded and written by the pool
        for batch, tiles in _batches(store, todo, slide_path, mpp):
            for f in pending:
                f.result()
            done += len(pending)
            if progress and pending:
                progress(done, total)
            pending = [pool.submit(write, i, tile) for i, tile in zip(batch, tiles)]
        for f in pending:
            f.result()
        done += len(pending)
        if progress and pending:
            progress(done, total)
    return DumpResult(out, total, len(todo), total - len(todo))


def _batches(store: SlideStore, todo: np.ndarray, slide_path, mpp):
    """``(indices, tiles)`` of the tiles in ``todo``: chunk by chunk from the store's patches, or read from the
    slide as the tiler reads them when the store holds none."""
    if store.has_patches:
        patches = store.patches
        for sl in store.chunk_slices("patches"):
            wanted = todo[(todo >= sl.start) & (todo < sl.stop)]
            if len(wanted):
                chunk = patches[sl]
                yield wanted, [chunk[i - sl.start] for i in wanted]
        return
    t = store.tiling
    plan = ReadPlan(t["level"], t["read_size"], t["tile_size"], t["extent0"], 0.0)
    coords = store.coords
    with open_slide(slide_path, mpp=mpp) as slide:
        read = patch_reader(slide, plan, coords)
        for start in range(0, len(todo), 64):
            batch = todo[start:start + 64]
            yield batch, [read(coords[i]) for i in batch]
