"""Connected regions of high-scoring tiles (tumour regions of a heatmap), with their area and score statistics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import shapely
from shapely.geometry import Polygon

from ..errors import ConfigError

from .geometry import polygonal_parts
from .geometry import _pair
from .qupath import _tile_sizes

__all__ = ["tumor_regions"]


def tumor_regions(
    coords: Any,
    tile_size: int | Any,
    scores: Any,
    threshold: float,
    *,
    tolerance: float = 0.0,
    mpp: float | Sequence[float] | None = None,
) -> list[tuple[Polygon, dict[str, float | int]]]:
    """Connected regions of tiles scoring at least ``threshold``, with area and score statistics.

    Parameters
    ----------
    coords : (N, 2) int array_like
        Level-0 ``x, y`` of each tile's top-left corner.
    tile_size : int or (N,) int array_like
        Tile side in level-0 pixels.
    scores : (N,) float array_like
        Per-tile tumour score; NaN never passes the threshold.
    threshold : float
        Tiles with ``score >= threshold`` are merged.
    tolerance : float, default 0.0
        Douglas–Peucker tolerance in level-0 pixels (topology preserved). 0 only drops collinear vertices
        of the staircase outline, so the area equals that of the tile union.
    mpp : float or (float, float), optional
        Level-0 microns per pixel (x, y); adds ``area_um2`` and ``area_mm2``.

    Returns
    -------
    list of (Polygon, dict)
        One entry per connected region (tiles touching only at a corner are separate regions), largest
        first. Holes are kept. The dict holds ``area_px2``, ``mean_score``, ``max_score``, ``n_tiles`` and,
        with ``mpp``, ``area_um2`` and ``area_mm2``. Pass each to :func:`region_features` with class Tumor.
    """
    xy = np.asarray(coords, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ConfigError(f"coords must have shape (N, 2), got {xy.shape}")
    n = len(xy)
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (n,):
        raise ConfigError(f"scores must have shape ({n},) like coords, got {s.shape}")
    size = _tile_sizes(tile_size, n)
    if tolerance < 0:
        raise ConfigError(f"tolerance must be >= 0 px, got {tolerance}")
    if mpp is not None:
        mx, my = _pair((mpp, mpp) if np.ndim(mpp) == 0 else mpp, "mpp")
        if mx <= 0 or my <= 0:
            raise ConfigError(f"mpp must be positive, got {mpp!r}")
    with np.errstate(invalid="ignore"):
        sel = np.flatnonzero(s >= threshold)
    if sel.size == 0:
        return []
    x0, y0 = xy[sel, 0], xy[sel, 1]
    x1, y1 = x0 + size[sel], y0 + size[sel]
    union = shapely.union_all(shapely.box(x0, y0, x1, y1))
    centres = shapely.points((x0 + x1) / 2, (y0 + y1) / 2)
    tree = shapely.STRtree(centres)
    out = []
    for part in polygonal_parts(union):
        inside = tree.query(part, predicate="contains")  # assigned on the exact union, before simplifying
        region = shapely.simplify(part, tolerance, preserve_topology=True)
        region_scores = s[sel[inside]]
        stats: dict[str, float | int] = {
            "area_px2": float(region.area),
            "mean_score": float(region_scores.mean()) if region_scores.size else float("nan"),
            "max_score": float(region_scores.max()) if region_scores.size else float("nan"),
            "n_tiles": int(region_scores.size),
        }
        if mpp is not None:
            stats["area_um2"] = stats["area_px2"] * mx * my
            stats["area_mm2"] = stats["area_um2"] / 1e6
        out.append((region, stats))
    out.sort(key=lambda r: (-r[1]["area_px2"], r[0].bounds))
    return out

