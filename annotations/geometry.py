"""Polygon cleaning for annotations and QuPath objects: any shapely geometry in, valid polygons out.

:func:`make_valid_polygonal` repairs (self-intersecting lassos and splines, overlapping parts);
:func:`clean_polygonal` also clips to the slide and snaps to QuPath 0.6's 0.01 px grid so that QuPath accepts the
result unchanged (rule R-27 in :mod:`slidestream.annotations.validate`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

from ..errors import ConfigError

__all__ = ["GRID", "clean_polygonal", "make_valid_polygonal", "polygonal_parts"]

#: QuPath 0.6 snaps every imported coordinate to this grid (px, R-27).
GRID = 0.01


def _pair(value: Any, what: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a pair of numbers (x, y) / (w, h), got {value!r}") from None
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ConfigError(f"{what} must be finite, got {value!r}")
    return a, b


def _slide_box(slide_size: Any) -> tuple[float, float] | None:
    if slide_size is None:
        return None
    w, h = _pair(slide_size, "slide_size")
    if w <= 0 or h <= 0:
        raise ConfigError(f"slide_size must be positive (w, h) in level-0 pixels, got {slide_size!r}")
    return w, h



def polygonal_parts(g: BaseGeometry | None) -> list[Polygon]:
    """The Polygon parts of any geometry, flattening Multi* and GeometryCollection; lines and points dropped."""
    if g is None or g.is_empty:
        return []
    if isinstance(g, Polygon):
        return [g]
    if hasattr(g, "geoms"):  # Multi* and GeometryCollection: keep polygonal parts only
        return [p for part in g.geoms for p in polygonal_parts(part)]
    return []


def _valid_union(parts: Sequence[Polygon]) -> BaseGeometry:
    fixed = []
    for p in parts:
        if not p.is_valid:
            # 'structure': rings bound area, holes exclude it, so a self-overlapping lasso keeps its full area.
            fixed.extend(polygonal_parts(shapely.make_valid(p, method="structure", keep_collapsed=False)))
        else:
            fixed.append(p)
    if not fixed:
        return MultiPolygon()
    if len(fixed) == 1:
        return fixed[0]
    return shapely.union_all(fixed)  # also merges overlapping MultiPolygon parts (invalid otherwise)


def make_valid_polygonal(geometry: BaseGeometry) -> Polygon | MultiPolygon:
    """Valid polygonal version of ``geometry``: invalid parts repaired, overlapping parts merged.

    Unlike :func:`clean_polygonal` nothing is snapped, clipped or dropped (except non-polygonal parts).

    Parameters
    ----------
    geometry : shapely geometry

    Returns
    -------
    Polygon or MultiPolygon
        Possibly empty; a one-part result is a Polygon.
    """
    g = _valid_union(polygonal_parts(geometry))
    parts = polygonal_parts(g)
    if not parts:
        return MultiPolygon()
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


def _drop_small(parts: list[Polygon], min_area: float) -> list[Polygon]:
    out = []
    for p in parts:
        if p.area < min_area or p.area <= 0:
            continue
        holes = [r for r in p.interiors if Polygon(r).area >= min_area]
        out.append(p if len(holes) == len(p.interiors) else Polygon(p.exterior, holes))
    return out


def _snap_ok(g: BaseGeometry) -> bool:
    # What QuPath 0.6 does on import: snap-round to 0.01 px; must stay valid and non-empty.
    snapped = shapely.set_precision(g, GRID)
    return g.is_valid and not snapped.is_empty and snapped.is_valid


def clean_polygonal(
    geometry: BaseGeometry,
    *,
    offset: Sequence[float] = (0, 0),
    slide_size: Sequence[float] | None = None,
    min_area: float = 1.0,
) -> Polygon | MultiPolygon:
    """Make a geometry safe for QuPath 0.4–0.6: valid, polygonal, clipped, snapped to 0.01 px.

    Parameters
    ----------
    geometry : shapely geometry
        Any geometry in level-0 pixels; lines and points inside it are dropped.
    offset : (x, y) float, default (0, 0)
        Subtracted from every coordinate (OpenSlide ``bounds-x``/``bounds-y``: QuPath's origin, R-32).
    slide_size : (w, h) float, optional
        Clip to ``[0, w] x [0, h]`` after the offset.
    min_area : float, default 1.0
        Parts and holes smaller than this (px²) are dropped as slivers.

    Returns
    -------
    Polygon or MultiPolygon
        Valid, possibly empty; a one-part result is a Polygon, never a GeometryCollection. Coordinates are
        on the 0.01 px grid and the result stays valid and non-empty when QuPath 0.6 snaps it again.
    """
    if not isinstance(geometry, BaseGeometry):
        raise ConfigError(f"geometry must be a shapely geometry, got {type(geometry).__name__}")
    ox, oy = _pair(offset, "offset")
    box_ = _slide_box(slide_size)
    g = _valid_union(polygonal_parts(shapely.force_2d(geometry)))
    if g.is_empty:
        return MultiPolygon()
    if ox or oy:
        g = shapely.transform(g, lambda xy: xy - np.array([ox, oy]))
    if box_ is not None:
        g = shapely.intersection(g, box(0, 0, *box_))
    for _ in range(3):
        g = shapely.set_precision(g, GRID)  # snap-rounding; thinner-than-grid slivers collapse here
        parts = _drop_small(polygonal_parts(g), min_area)
        if not parts:
            return MultiPolygon()
        g = parts[0] if len(parts) == 1 else MultiPolygon(parts)
        if _snap_ok(g):
            break
        g = _valid_union(parts)
    else:  # pragma: no cover - set_precision's valid_output mode converges in one pass in practice
        raise ConfigError("geometry could not be made valid on QuPath's 0.01 px grid; simplify it first")
    parts = polygonal_parts(g)
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)

