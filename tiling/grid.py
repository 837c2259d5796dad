"""Tile grids: where tiles of a target pixel size sit on a slide, in level-0 pixels, and how to read them."""

from __future__ import annotations

import math

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import ConfigError
from .settings import KEEP_RULES


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
        Keep tiles whose tissue fraction (0–1) is at least this (``keep_rule="fraction"`` only).
    keep_rule : str
        Which tiles of the grid are kept (:data:`KEEP_RULES`, :func:`keep_tiles`).
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
    keep_rule: str = "fraction"

    def __post_init__(self):
        if self.keep_rule not in KEEP_RULES:
            raise ConfigError(f"keep rule must be one of {', '.join(KEEP_RULES)}, got {self.keep_rule!r}")
        if not (isinstance(self.mpp, (int, float)) and math.isfinite(self.mpp) and self.mpp > 0):
            raise ConfigError(f"mpp (--target-mpp) must be a positive number of µm/px, got {self.mpp!r}")
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
            f"slidestream never upsamples: choose --target-mpp {slide_mpp:.4g} or coarser (or correct the slide's "
            "pixel size with --mpp if its metadata is wrong)"
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


def keep_tiles(coords: np.ndarray, extent0: float, fractions: np.ndarray, mask: np.ndarray,
               mask_downsample: tuple[float, float], params: TilingParams) -> np.ndarray:
    """Which tiles of a grid are kept, by ``params.keep_rule`` (:data:`KEEP_RULES`) on a tissue mask.

    Parameters
    ----------
    coords : (N, 2) int array
        Level-0 top-left x, y of each tile.
    extent0 : float
        Tile side in level-0 pixels.
    fractions : (N,) float array
        :func:`tissue_fractions` of the tiles (the ``fraction`` rule).
    mask : (H, W) bool array
        Tissue mask at a low resolution; its holes are the background components it encloses
        (:func:`~slidestream.tiling.tissue.hole_mask`).
    mask_downsample : (float, float)
        Level-0 pixels per mask pixel along x and y.
    params : TilingParams

    Returns
    -------
    (N,) bool array.

    Notes
    -----
    The other tools' rules, applied to slidestream's grid and tissue mask (what differs from the tools themselves):

    - ``clam-four-pt`` follows CLAM's ``isInContourV3_Easy`` (``create_patches_fp.py``, ``contour_fn='four_pt'``):
      centre ``c = x + ps // 2``, test points ``c ± int(ps // 2 * 0.5)`` in both axes, ``ps`` the level-0 tile
      side; a point counts when its mask pixel is tissue or hole (the outline with holes filled), and the tile is
      dropped when its centre's mask pixel is a hole. CLAM tests points against each contour polygon on its
      own grid, whose origin is that contour's bounding-box corner; here one global grid is tested against the
      raster mask, so a point is in or out by the mask pixel it falls on.
    - ``any-tissue`` (TRIDENT, ``min_tissue_proportion`` 0) keeps a tile when a mask pixel it overlaps, even in
      part, is tissue (TRIDENT intersects the tile's square with its simplified tissue polygons, holes counting as
      tissue unless ``--remove_holes``: use ``--no-tissue-holes`` for that).
    - LazySlide's default (contained in the tissue or covered at least 70 %) is ``fraction`` with
      ``min_tissue=0.7``.
    """
    coords = np.asarray(coords).reshape(-1, 2)
    if len(coords) == 0:
        return np.zeros(0, bool)
    rule = params.keep_rule
    if rule == "fraction":
        fractions = np.asarray(fractions)
        return fractions >= params.min_tissue if params.min_tissue > 0 else fractions > 0
    h, w = mask.shape
    sx, sy = mask_downsample
    if rule == "any-tissue":
        # every mask pixel the tile overlaps, even partly (floor of the start, ceiling of the end)
        x0 = np.clip(np.floor(coords[:, 0] / sx).astype(np.int64), 0, w)
        y0 = np.clip(np.floor(coords[:, 1] / sy).astype(np.int64), 0, h)
        x1 = np.clip(np.ceil((coords[:, 0] + extent0) / sx).astype(np.int64), 0, w)
        y1 = np.clip(np.ceil((coords[:, 1] + extent0) / sy).astype(np.int64), 0, h)
        sat = np.zeros((h + 1, w + 1), np.int64)
        sat[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1)
        counts = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
        return counts > 0
    from .tissue import hole_mask

    holes = hole_mask(mask)
    outline = mask | holes
    ps = int(extent0)
    shift = int(ps // 2 * 0.5)

    def at(grid: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        col = np.clip(np.floor(x / sx).astype(np.int64), 0, w - 1)
        row = np.clip(np.floor(y / sy).astype(np.int64), 0, h - 1)
        inside = (x >= 0) & (y >= 0) & (x < w * sx) & (y < h * sy)
        return grid[row, col] & inside

    cx = coords[:, 0] + ps // 2
    cy = coords[:, 1] + ps // 2
    any_point = np.zeros(len(coords), bool)
    for dx in (-shift, shift):
        for dy in (-shift, shift):
            any_point |= at(outline, cx + dx, cy + dy)
    return any_point & ~at(holes, cx, cy)
