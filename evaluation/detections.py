"""Lesion detections from tile scores: non-maximum suppression, CAMELYON16 CSV, QuPath points.

A detection is a level-0 point with a confidence. :func:`detections_from_tiles` turns per-tile tumour scores
(e.g. ``scores/<model>`` of a slide store) into detections by greedy non-maximum suppression over the tile
centres: the best-scoring tile is kept, every tile whose centre lies within ``nms_radius_um`` of it is dropped,
and so on. :func:`write_detections_csv` writes the ``confidence,X,Y`` file that
:func:`slidestream.evaluation.froc_files.read_detections_csv` and the official CAMELYON16 evaluation read;
:func:`slidestream.annotations.point_features` makes QuPath point annotations of the same detections.

Why NMS with a radius of ~200 µm by default: the FROC counts only the best detection inside a lesion, but
every detection outside one is a false positive; lesions shorter than 200 µm are ITC and do not count, so two
peaks closer than that rarely are two lesions worth finding.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from ..errors import ConfigError
from ..fileio import atomic_write

__all__ = [
    "DEFAULT_NMS_RADIUS_UM",
    "detections_from_tiles",
    "write_detections_csv",
]

#: Default suppression radius in µm (the ITC limit of CAMELYON16 is 200 µm).
DEFAULT_NMS_RADIUS_UM = 200.0


def _tile_sizes(tile_size0: Any, n: int) -> np.ndarray:
    size = np.asarray(tile_size0, dtype=np.float64)
    if size.ndim == 0:
        size = np.full(n, float(size))
    if size.shape != (n,) or not np.all(np.isfinite(size)) or (n and size.min() <= 0):
        raise ConfigError(
            f"tile_size0 must be a positive number or ({n},) positive numbers of level-0 pixels, got "
            f"{np.shape(tile_size0)}"
        )
    return size


def detections_from_tiles(
    coords: Any,
    tile_size0: float | Any,
    scores: Any,
    *,
    min_score: float = 0.5,
    nms_radius_um: float = DEFAULT_NMS_RADIUS_UM,
    mpp: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Lesion detections as local maxima of a tile probability map (greedy non-maximum suppression).

    Parameters
    ----------
    coords : (N, 2) array_like
        Level-0 ``x, y`` of each tile's top-left corner.
    tile_size0 : float or (N,) array_like
        Tile side in level-0 pixels.
    scores : (N,) float array_like
        Tumour probability of each tile; NaN never becomes a detection.
    min_score : float, default 0.5
        Tiles scoring below this are not candidates.
    nms_radius_um : float, default 200.0
        A candidate is suppressed when its centre is within this distance (inclusive) of the centre of an
        already kept, higher-ranked one. 0 keeps every candidate except exact duplicates of a kept centre.
    mpp : float
        Level-0 µm/px, to turn the radius into pixels.

    Returns
    -------
    points : ndarray, shape (K, 2), float64
        Level-0 ``x, y`` of the kept tiles' centres.
    confidences : ndarray, shape (K,), float64
        Their scores, highest first; ties are ranked by ``y`` then ``x`` of the centre, so the output is
        deterministic.

    Raises
    ------
    ConfigError
        On mismatched shapes, a non-positive tile size or mpp, or a negative radius.
    """
    xy = np.asarray(coords, dtype=np.float64)
    if xy.size == 0:
        xy = xy.reshape(0, 2)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ConfigError(f"coords must have shape (N, 2), got {xy.shape}")
    n = len(xy)
    s = np.asarray(scores, dtype=np.float64).reshape(-1) if np.size(scores) else np.zeros(0)
    if s.shape != (n,):
        raise ConfigError(f"scores must have shape ({n},) like coords, got {np.shape(scores)}")
    size = _tile_sizes(tile_size0, n)
    try:
        mpp_f, radius_um = float(mpp), float(nms_radius_um)
    except (TypeError, ValueError):
        raise ConfigError(f"mpp and nms_radius_um must be numbers, got {mpp!r}, {nms_radius_um!r}") from None
    if not math.isfinite(mpp_f) or mpp_f <= 0:
        raise ConfigError(f"mpp must be a positive µm/px (the slide's level-0 pixel size), got {mpp!r}")
    if not math.isfinite(radius_um) or radius_um < 0:
        raise ConfigError(f"nms_radius_um must be >= 0 µm, got {nms_radius_um!r}")
    centres = xy + size[:, None] / 2.0
    with np.errstate(invalid="ignore"):
        cand = np.flatnonzero(s >= float(min_score))
    if cand.size == 0:
        return np.zeros((0, 2)), np.zeros(0)
    order = cand[np.lexsort((centres[cand, 0], centres[cand, 1], -s[cand]))]
    pts = centres[order]
    neighbours = cKDTree(pts).query_ball_point(pts, r=radius_um / mpp_f, return_sorted=False)
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed[neighbours[i]] = True
    kept = order[np.asarray(keep, dtype=np.intp)]
    return centres[kept].copy(), s[kept].copy()


def write_detections_csv(path: str | os.PathLike, points: Any, confidences: Any) -> Path:
    """Write detections in the CAMELYON16 submission format, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        ``<slide>.csv``; the folder is created if needed.
    points : (K, 2) float array_like
        Level-0 ``x, y``; rounded to the nearest integer pixel, as the format requires.
    confidences : (K,) float array_like
        Written with full precision (``repr``), so reading back gives the same floats.

    Returns
    -------
    pathlib.Path
        ``path``: one ``confidence,X,Y`` line per detection, no header (an empty file for no detections).

    Raises
    ------
    ConfigError
        On mismatched shapes or non-finite values; nothing is written then.
    """
    p = np.asarray(confidences, dtype=np.float64).reshape(-1)
    xy = np.asarray(points, dtype=np.float64)
    if xy.size == 0:
        xy = xy.reshape(0, 2)
    if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) != len(p):
        raise ConfigError(f"points must have shape (K, 2) and confidences (K,), got {xy.shape} and {p.shape}")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(xy))):
        raise ConfigError(f"{path}: detections must be finite; drop NaN scores or coordinates first")
    ixy = np.rint(xy).astype(np.int64)
    text = "".join(f"{float(c)!r},{x},{y}\n" for c, (x, y) in zip(p.tolist(), ixy.tolist()))
    return atomic_write(path, text.encode("ascii"))
