"""Tile grids: where tiles of a target pixel size sit on a slide, in level-0 pixels, and how to read them."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class TilingParams:
    """How a slide is cut into tiles.

    Parameters
    ----------
    mpp : float
        Target pixel size of the tiles in µm/px (0.5 ≈ 20x, 0.25 ≈ 40x).
    tile_size : int
        Side of each tile in target pixels.
    overlap : int
        Overlap between neighbouring tiles in target pixels (stride = tile_size - overlap).
    min_tissue : float
        Keep tiles whose tissue fraction (0–1) is at least this.
    thumbnail_size : int
        Longest side of the image tissue is segmented on.
    mpp_tolerance : float
        Relative difference between the target and a level's MPP below which the level is used as is, unresized.
    """

    mpp: float = 0.5
    tile_size: int = 224
    overlap: int = 0
    min_tissue: float = 0.5
    thumbnail_size: int = 2048
    mpp_tolerance: float = 0.02

    def __post_init__(self):
        if self.mpp <= 0:
            raise ConfigError(f"mpp must be positive, got {self.mpp}")
        if self.tile_size < 8:
            raise ConfigError(f"tile_size must be at least 8 px, got {self.tile_size}")
        if not 0 <= self.overlap < self.tile_size:
            raise ConfigError(f"overlap must be in [0, tile_size), got {self.overlap}")
        if not 0 <= self.min_tissue <= 1:
            raise ConfigError(f"min_tissue must be in [0, 1], got {self.min_tissue}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ReadPlan:
    """How tiles are read: at ``level``, ``read_size`` level pixels square, resized to ``tile_size`` if different.

    ``extent0`` is the side of one tile in level-0 pixels (float: the target MPP need not be a multiple of the
    slide's).
    """

    level: int
    read_size: int
    tile_size: int
    extent0: float
    stride0: float

    @property
    def needs_resize(self) -> bool:
        return self.read_size != self.tile_size


def plan_reads(params: TilingParams, slide_mpp: float, level_downsamples: tuple[float, ...]) -> ReadPlan:
    """Choose the pyramid level and read size for ``params`` on a slide of level-0 pixel size ``slide_mpp``.

    The level is the coarsest whose pixel size is at most the target (within ``mpp_tolerance``): reading finer and
    downsampling keeps detail, while upsampling would invent it, so a target finer than level 0 is refused.
    """
    target = params.mpp
    if target < slide_mpp * (1 - params.mpp_tolerance):
        raise ConfigError(
            f"target {target} µm/px is finer than the slide's level 0 ({slide_mpp:.4g} µm/px); "
            f"slidestream never upsamples: choose --mpp {slide_mpp:.4g} or coarser"
        )
    level = 0
    for i, ds in enumerate(level_downsamples):
        if slide_mpp * ds <= target * (1 + params.mpp_tolerance):
            level = i
    level_mpp = slide_mpp * level_downsamples[level]
    ratio = target / level_mpp
    read_size = params.tile_size if abs(ratio - 1) <= params.mpp_tolerance else int(round(params.tile_size * ratio))
    scale0 = target / slide_mpp
    if read_size == params.tile_size:
        # Read without resizing: the tile covers exactly read_size level pixels.
        scale0 = level_downsamples[level]
    return ReadPlan(
        level=level,
        read_size=read_size,
        tile_size=params.tile_size,
        extent0=read_size * level_downsamples[level],
        stride0=(params.tile_size - params.overlap) * scale0,
    )


def grid_coords(dimensions: tuple[int, int], plan: ReadPlan) -> np.ndarray:
    """Top-left level-0 coordinates of every tile lying wholly inside the slide.

    Edge policy: a tile that would cross the right or bottom border is not made (no padding, no partial tiles).

    Returns
    -------
    (N, 2) int64 array of x, y in row-major order (rows of tiles top to bottom).
    """
    w, h = dimensions
    nx = int(np.floor((w - plan.extent0) / plan.stride0)) + 1 if w >= plan.extent0 else 0
    ny = int(np.floor((h - plan.extent0) / plan.stride0)) + 1 if h >= plan.extent0 else 0
    xs = np.floor(np.arange(nx) * plan.stride0).astype(np.int64)
    ys = np.floor(np.arange(ny) * plan.stride0).astype(np.int64)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    return np.column_stack([gx.ravel(), gy.ravel()]).astype(np.int64)


def tissue_fractions(coords: np.ndarray, extent0: float, mask: np.ndarray, mask_downsample: tuple[float, float]) -> np.ndarray:
    """Fraction of each tile's footprint covered by ``mask``.

    Parameters
    ----------
    coords : (N, 2) int array
        Level-0 top-left x, y of each tile.
    extent0 : float
        Tile side in level-0 pixels.
    mask : (H, W) bool array
        Tissue mask at a low resolution.
    mask_downsample : (float, float)
        Level-0 pixels per mask pixel along x and y.

    Returns
    -------
    (N,) float32 array in [0, 1].
    """
    if len(coords) == 0:
        return np.zeros(0, np.float32)
    # Summed-area table: each tile's count is four lookups, whatever the tile size. int32 holds any count of a
    # mask up to 2**31 px (masks are thumbnails of a few megapixels) and halves the work of int64.
    dtype = np.int32 if mask.size < 2**31 else np.int64
    h, w = mask.shape
    sat = np.zeros((h + 1, w + 1), dtype)
    np.cumsum(mask, axis=1, dtype=dtype, out=sat[1:, 1:])
    # down the rows one vectorised add at a time: numpy's cumsum along axis 0 walks each column with a stride,
    # much slower on a few-megapixel mask
    for i in range(2, h + 1):
        np.add(sat[i - 1], sat[i], out=sat[i])
    sx, sy = mask_downsample
    x0 = np.clip(np.round(coords[:, 0] / sx).astype(np.int64), 0, w)
    y0 = np.clip(np.round(coords[:, 1] / sy).astype(np.int64), 0, h)
    x1 = np.clip(np.round((coords[:, 0] + extent0) / sx).astype(np.int64), 0, w)
    y1 = np.clip(np.round((coords[:, 1] + extent0) / sy).astype(np.int64), 0, h)
    x1 = np.maximum(x1, np.minimum(x0 + 1, w))
    y1 = np.maximum(y1, np.minimum(y0 + 1, h))
    counts = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    return (counts / area).astype(np.float32)
