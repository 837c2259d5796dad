"""Connected regions of high-scoring tiles (tumour regions of a heatmap), with their area and score statistics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import shapely
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from shapely.geometry import Polygon

from ..errors import ConfigError

from .geometry import polygonal_parts
from .geometry import _pair
from .qupath import _tile_sizes

__all__ = ["tumor_regions"]

#: A tile side exceeding the grid stride by at most this many level-0 pixels counts as abutting, not overlapping:
#: the tiler rounds its read size to whole pixels, so abutting grid tiles can be up to half a pixel wider than
#: the stride, while one target pixel of overlap makes them wider by more than that.
ABUT_TOLERANCE_PX = 0.5


def _grid_indices(x: np.ndarray, stride: float, what: str) -> np.ndarray:
    """Grid index of each coordinate on the tiler's grid ``floor(i * stride)`` (origin 0)."""
    i = np.rint(x / stride).astype(np.int64)
    off = np.abs(np.floor(i.astype(np.float64) * stride) - x)
    if off.size and off.max() > 1.0:
        bad = int(np.argmax(off))
        raise ConfigError(f"tile {what} {x[bad]:g} is not on the grid of stride {stride:g} level-0 px (nearest grid "
                          f"line {np.floor(i[bad] * stride):g}): pass the stride the tiles were cut with, or "
                          "stride=None for tiles off any grid")
    return i


def _grid_components(ix: np.ndarray, iy: np.ndarray, reach: float) -> tuple[int, np.ndarray]:
    """Connected components of grid tiles whose sides are ``reach`` strides long.

    Two tiles at index offsets ``(dx, dy)`` are connected when their boxes share area (``|d| < reach`` on both
    axes) or a side (``|d| < reach`` on one axis and ``|d| == reach`` on the other); with ``reach == 1`` this is
    4-connectivity, so tiles meeting only at a corner stay apart.
    """
    n = len(ix)
    r = int(np.ceil(reach - 1e-9))
    integral = abs(reach - round(reach)) < 1e-9

    def relation(d: int) -> str:
        if d < reach - 1e-9:
            return "overlap"
        return "touch" if integral and d == round(reach) else "apart"

    offsets = []
    for dx in range(0, r + 1):
        for dy in range(-r, r + 1):
            if (dx, dy) <= (0, 0):  # each unordered pair once; (0, 0) is the tile itself
                continue
            rx, ry = relation(abs(dx)), relation(abs(dy))
            if (rx, ry) in (("overlap", "overlap"), ("overlap", "touch"), ("touch", "overlap")):
                offsets.append((dx, dy))
    # one integer key per grid cell; the margin keeps neighbours of the last row apart from the next column
    x0, y0 = ix.min(), iy.min()
    span = int(iy.max() - y0) + 2 * r + 1
    keys = (ix - x0) * span + (iy - y0 + r)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    rows, cols = [np.arange(n)], [np.arange(n)]
    for dx, dy in offsets:
        target = keys + dx * span + dy
        pos = np.searchsorted(sorted_keys, target)
        pos = np.minimum(pos, n - 1)
        hit = sorted_keys[pos] == target
        rows.append(np.flatnonzero(hit))
        cols.append(order[pos[hit]])
    rows_a, cols_a = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(rows_a), np.int8), (rows_a, cols_a)), shape=(n, n))
    return connected_components(graph, directed=False)


def tumor_regions(
    coords: Any,
    tile_size: int | Any,
    scores: Any,
    threshold: float,
    *,
    stride: float | None = None,
    tolerance: float = 0.0,
    mpp: float | Sequence[float] | None = None,
) -> list[tuple[Polygon, dict[str, float | int]]]:
    """Connected regions of tiles scoring at least ``threshold``, with area and score statistics.

    Parameters
    ----------
    coords : (N, 2) int array_like
        Level-0 ``x, y`` of each tile's top-left corner.
    tile_size : float or (N,) float array_like
        Tile side in level-0 pixels (with ``stride``: one number, the side of every tile).
    scores : (N,) float array_like
        Per-tile tumour score; NaN never passes the threshold.
    threshold : float
        Tiles with ``score >= threshold`` are merged.
    stride : float, optional
        Level-0 distance between neighbouring tiles of the tiler's grid (tile side minus overlap; need not be a
        whole number): tile ``(i, j)`` sits at ``(floor(i * stride), floor(j * stride))``, as
        :func:`slidestream.tiling.grid.grid_coords` places it. Regions are then groups of grid neighbours,
        whatever one-pixel gaps or overlaps the floored coordinates leave between them: tiles next to each other
        in a row or column are one region, tiles meeting only at a corner are not (unless the tiles overlap, in
        which case tiles whose boxes share area are connected). A ``tile_size`` at most
        :data:`ABUT_TOLERANCE_PX` larger than the stride means abutting tiles: each is drawn as its grid cell, from
        its own grid line to the next, so the outline stays within a pixel of the tiles and has no slits. Without
        ``stride`` the regions are the parts of the union of the tile boxes, which splits abutting tiles
        wherever floored coordinates leave a one-pixel gap (tiles off any grid only).
    tolerance : float, default 0.0
        Douglas–Peucker tolerance in level-0 pixels (topology preserved). 0 only drops collinear vertices
        of the staircase outline, so the area equals that of the tile union.
    mpp : float or (float, float), optional
        Level-0 microns per pixel (x, y); adds ``area_um2`` and ``area_mm2``.

    Returns
    -------
    list of (Polygon, dict)
        One entry per connected region, largest first. Holes are kept. The dict holds ``area_px2``,
        ``mean_score``, ``max_score``, ``n_tiles`` and, with ``mpp``, ``area_um2`` and ``area_mm2``. Pass each
        to :func:`region_features` with class Tumor.

    Raises
    ------
    ConfigError
        Shapes that do not match, a non-positive tile size, stride or mpp, a negative tolerance, or (with
        ``stride``) tiles that are not on that grid.
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
    if stride is not None:
        if not (np.isfinite(stride) and stride > 0):
            raise ConfigError(f"stride must be a positive number of level-0 pixels, got {stride!r}")
        if np.ndim(tile_size) != 0:
            raise ConfigError("with stride, tile_size must be one number (tiles of a grid share their size)")
    with np.errstate(invalid="ignore"):
        sel = np.flatnonzero(s >= threshold)
    if sel.size == 0:
        return []
    if stride is None:
        parts = _union_parts(xy[sel], size[sel])
    else:
        parts = _grid_parts(xy[sel], float(np.asarray(tile_size)), float(stride))
    out = []
    for part, members in parts:
        region = shapely.simplify(part, tolerance, preserve_topology=True)
        region_scores = s[sel[members]]
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


def _union_parts(xy: np.ndarray, size: np.ndarray) -> list[tuple[Polygon, np.ndarray]]:
    """Parts of the union of the tile boxes, each with the indices of the tiles whose centre it contains."""
    x0, y0 = xy[:, 0], xy[:, 1]
    x1, y1 = x0 + size, y0 + size
    union = shapely.union_all(shapely.box(x0, y0, x1, y1))
    tree = shapely.STRtree(shapely.points((x0 + x1) / 2, (y0 + y1) / 2))
    # tiles are assigned on the exact union, before any simplification
    return [(part, tree.query(part, predicate="contains")) for part in polygonal_parts(union)]


def _grid_parts(xy: np.ndarray, side: float, stride: float) -> list[tuple[Polygon, np.ndarray]]:
    """One polygon per connected group of grid tiles, with the indices of its tiles."""
    ix = _grid_indices(xy[:, 0], stride, "x")
    iy = _grid_indices(xy[:, 1], stride, "y")
    # abutting tiles span one stride; overlapping ones ``side / stride`` strides (snapped to a whole number of
    # strides when within rounding of one, so that tiles meeting edge to edge share the same grid line)
    reach = 1.0 if side - stride <= ABUT_TOLERANCE_PX else side / stride
    if abs(reach - round(reach)) < 1e-9 * max(1.0, reach):
        reach = float(round(reach))

    def edge(i: np.ndarray, plus: float) -> np.ndarray:
        # the grid's own arithmetic (grid_coords: floor(i * stride)), so neighbours' shared edges are equal floats
        return np.floor((i.astype(np.float64) + plus) * stride)

    boxes = shapely.box(edge(ix, 0.0), edge(iy, 0.0), edge(ix, reach), edge(iy, reach))
    n_comp, labels = _grid_components(ix, iy, reach)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(n_comp + 1))
    out = []
    for c in range(n_comp):
        members = np.sort(order[bounds[c]:bounds[c + 1]])
        parts = polygonal_parts(shapely.union_all(boxes[members]))
        geom = parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
        out.append((geom, members))
    return out
