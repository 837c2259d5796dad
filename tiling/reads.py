"""Reading patches from a slide exactly as the tiler stores them, and the sample of tiles a stain is fitted on."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from PIL import Image

from ..wsi import Slide
from .grid import ReadPlan
from .jpeg_fastpath import ReducedTileReader, reduced_read

__all__ = ["STAIN_SAMPLE_TILES", "patch_reader", "read_tile", "resize_patch", "stain_sample_index"]

#: Tiles a slide's source stain is estimated from, by the tiler (``tile --stain``) and by embedding (``embed --stain``).
STAIN_SAMPLE_TILES = 64


def stain_sample_index(n_tiles: int) -> np.ndarray:
    """Indices of the tiles a slide's stain is estimated from: :data:`STAIN_SAMPLE_TILES` evenly spread over the
    grid (all tiles of a smaller grid), sorted and unique.

    The sample depends only on the number of tiles, so a resumed run estimates exactly the same parameters.
    """
    if n_tiles <= 0:
        return np.zeros(0, dtype=int)
    return np.unique(np.linspace(0, n_tiles - 1, min(n_tiles, STAIN_SAMPLE_TILES)).round().astype(int))


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
