"""QuPath GeoJSON writers: heatmap tiles, classified regions, point detections.

Every function here is pure (arrays and shapely geometries in, plain ``dict`` Features out) except
:func:`atomic_open`, :func:`write_geojson` and :func:`check_qupath_geojson` on a path. The output follows
``shared/docs/qupath-geojson.md`` (rules R-01 … R-36, §10), written from QuPath 0.4.4, 0.5.1 and 0.6.0 sources.
The rules that shape this module:

* R-03/R-04: one ``FeatureCollection`` whose ``features`` are ``Feature`` objects, each with a ``geometry``.
* R-05, R-08, R-17: ``id``, ``properties``, ``name`` are never ``null`` (QuPath aborts the whole import).
* R-09/R-10: ``properties.objectType`` is always written (``"tile"`` for heatmaps so Measurement Maps see them).
* R-12/R-13: a classification is an object with **both** ``name`` and a ``color`` array of 3 integers.
* R-19/R-34/R-35: measurements are a ``{name: finite number}`` object; non-finite values are omitted, never
  written as NaN (QuPath 0.4 aborts on them); the name "Class probability" is refused.
* R-23/R-24/R-26/R-27: Point, MultiPoint, Polygon or MultiPolygon only, never GeometryCollection; rings closed;
  polygons valid **after** snapping to QuPath 0.6's 0.01 px grid (else 0.6 aborts with "Reduction failed").
* R-29: no ``plane`` for 2-D slides. R-32: level-0 pixels, y down; MRXS-style bounds are subtracted via ``offset``.

Coordinates are written rounded to 0.01 px (QuPath 0.6 snaps to that grid anyway) and as integers when whole.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import tempfile
import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Point, Polygon, box
from shapely.geometry.base import BaseGeometry

from ..errors import ConfigError

__all__ = [
    "DEFAULT_CLASS_COLORS",
    "GRID",
    "check_qupath_feature",
    "check_qupath_geojson",
    "class_color",
    "clean_polygonal",
    "atomic_open",
    "feature_collection",
    "make_valid_polygonal",
    "polygonal_parts",
    "point_features",
    "region_features",
    "tile_features",
    "tumor_regions",
    "write_geojson",
]

#: QuPath 0.6 snaps every imported coordinate to this grid (px, R-27).
GRID = 0.01

#: Display colours of QuPath's built-in classes. QuPath keeps its own colour for these anyway (R-15);
#: the values only matter for classes QuPath does not know yet.
DEFAULT_CLASS_COLORS: dict[str, tuple[int, int, int]] = {
    "Tumor": (200, 0, 0),
    "Stroma": (150, 200, 150),
    "Immune cells": (160, 90, 160),
    "Necrosis": (50, 50, 50),
    "Other": (255, 200, 0),
    "Region*": (0, 0, 180),
    "Ignore*": (180, 180, 180),
    "Positive": (200, 50, 50),
    "Negative": (112, 112, 225),
}

# objectType values QuPath maps to an object it can add to a hierarchy; tmaCore/root are refused.
_GOOD_OBJECT_TYPES = frozenset(
    {"annotation", "detection", "tile", "cell", "unknown",
     "PathAnnotationObject", "PathDetectionObject", "PathTileObject", "PathCellObject"}
)
_BAD_OBJECT_TYPES = frozenset({"tmaCore", "tma_core", "TMACoreObject", "root", "PathRootObject"})
_LEGACY_ID_TYPES = frozenset(
    {"PathAnnotationObject", "PathDetectionObject", "PathCellObject", "PathTileObject", "TMACoreObject",
     "PathRootObject"}
)
_WRITABLE_TILE_TYPES = ("tile", "detection", "annotation")
_GEOMETRY_TYPES = frozenset({"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon"})
_FORBIDDEN_MEASUREMENT = "class probability"
# float32 vertices lose whole-pixel precision beyond 2**24.
_FLOAT32_EXACT = float(2**24)
_GZIP_LEVEL = 6  # chosen with bench/geojson.py: see the module docstring there
_BATCH = 4096


# ----------------------------------------------------------------------------------------------------------------
# small validated inputs


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


def _class_parts(class_name: str) -> list[str]:
    # QuPath splits on ':' into a derived class; every part non-blank, no line breaks.
    if not isinstance(class_name, str):
        raise ConfigError(f"class_name must be a string, got {class_name!r}")
    if "\n" in class_name or "\r" in class_name:
        raise ConfigError(f"class_name {class_name!r} contains a line break, which QuPath refuses; remove it")
    parts = [p.strip() for p in class_name.split(":")]
    if not parts or any(not p for p in parts):
        raise ConfigError(
            f"class_name {class_name!r} is blank or has an empty part around ':'; QuPath refuses it "
            "(use e.g. 'Tumor' or the derived form 'Tumor: Positive')"
        )
    return parts


def class_color(class_name: str) -> tuple[int, int, int]:
    """A display colour for ``class_name``: QuPath's built-in one, else a stable colour derived from the name.

    Parameters
    ----------
    class_name : str
        Class name, e.g. ``"Tumor"``.

    Returns
    -------
    tuple of 3 int
        ``(r, g, b)`` in 0–255.
    """
    if class_name in DEFAULT_CLASS_COLORS:
        return DEFAULT_CLASS_COLORS[class_name]
    # crc32 rather than hash(): the colour must not change between Python runs.
    h = zlib.crc32(class_name.encode("utf-8"))
    return (64 + (h & 0x7F) + 64 * ((h >> 21) & 1), 64 + ((h >> 7) & 0x7F), 64 + ((h >> 14) & 0x7F))


def _color(color: Any, class_name: str | None) -> list[int]:
    if color is None:
        return list(class_color(class_name or "Other"))
    if isinstance(color, str):
        s = color.lstrip("#")
        if len(s) != 6:
            raise ConfigError(f"color {color!r} must be '#rrggbb' or (r, g, b)")
        try:
            return [int(s[i : i + 2], 16) for i in (0, 2, 4)]
        except ValueError:
            raise ConfigError(f"color {color!r} must be '#rrggbb' or (r, g, b)") from None
    try:
        rgb = [int(c) for c in color]
    except (TypeError, ValueError):
        raise ConfigError(f"color must be (r, g, b) integers 0-255, got {color!r}") from None
    # R-13 allows 4 (RGBA) too, but only the colour matters for display: write RGB.
    if len(rgb) not in (3, 4) or any(not 0 <= c <= 255 for c in rgb):
        raise ConfigError(f"color must be (r, g, b) integers 0-255, got {color!r}")
    return rgb[:3]


def _classification(class_name: str | None, color: Any) -> dict | None:
    if class_name is None:
        return None
    name = ": ".join(_class_parts(class_name))
    return {"name": name, "color": _color(color, name)}


def _check_measurement_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"measurement names must be non-empty strings, got {name!r}")
    if name.strip().lower() == _FORBIDDEN_MEASUREMENT:
        raise ConfigError(
            f"measurement name {name!r} is reserved by QuPath's Measurement Maps, which would show nothing "
            "for it (R-35); use e.g. 'tumor_probability'"
        )
    return name


def _finite_measurements(measurements: Mapping[str, Any] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in (measurements or {}).items():
        _check_measurement_name(name)
        if isinstance(value, bool) or value is None:
            raise ConfigError(f"measurement {name!r} must be a number, got {value!r}")
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"measurement {name!r} must be a number, got {value!r}") from None
        if math.isfinite(v):  # omit, never write NaN/Infinity
            out[name] = int(v) if isinstance(value, (int, np.integer)) else v
    return out


def _tile_sizes(tile_size: Any, n: int) -> np.ndarray:
    size = np.asarray(tile_size, dtype=np.float64)
    if size.ndim == 0:
        size = np.full(n, float(size))
    if size.shape != (n,):
        raise ConfigError(f"tile_size must be a number or have shape ({n},) like coords, got shape {size.shape}")
    if not np.all(np.isfinite(size) & (size > 0)):
        raise ConfigError("tile_size must be positive level-0 pixels")
    return size


def _num(v: float) -> float | int:
    v = round(float(v), 2)
    return int(v) if v.is_integer() else v


def _ring(coords: Any) -> list[list[float | int]]:
    return [[_num(x), _num(y)] for x, y, *_ in coords]


def _geometry_json(g: BaseGeometry) -> dict:
    if isinstance(g, Polygon):
        return {"type": "Polygon", "coordinates": [_ring(g.exterior.coords)] + [_ring(r.coords) for r in g.interiors]}
    if isinstance(g, MultiPolygon):
        return {
            "type": "MultiPolygon",
            "coordinates": [[_ring(p.exterior.coords)] + [_ring(r.coords) for r in p.interiors] for p in g.geoms],
        }
    if isinstance(g, Point):
        return {"type": "Point", "coordinates": [_num(g.x), _num(g.y)]}
    raise ConfigError(f"cannot write a {g.geom_type} here")


def _new_id() -> str:
    return str(uuid.uuid4())


# ----------------------------------------------------------------------------------------------------------------
# polygon cleaning


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


# ----------------------------------------------------------------------------------------------------------------
# feature builders


def tile_features(
    coords: Any,
    tile_size: int | Any,
    measurements: Mapping[str, Any],
    *,
    offset: Sequence[float] = (0, 0),
    slide_size: Sequence[float] | None = None,
    object_type: str = "tile",
    digits: int = 6,
) -> list[dict]:
    """One axis-aligned rectangle Feature per tile, for QuPath's Measurement Maps.

    Parameters
    ----------
    coords : (N, 2) int array_like
        Level-0 ``x, y`` of each tile's top-left corner.
    tile_size : int or (N,) int array_like
        Tile side in level-0 pixels.
    measurements : dict of str to (N,) float array_like
        Per-tile values, e.g. ``{"tumor_probability": p}``. Non-finite values are omitted for that tile
        (QuPath leaves the tile unpainted, R-34). The name "Class probability" is refused (R-35).
    offset : (x, y), default (0, 0)
        Subtracted from every coordinate: QuPath's origin is OpenSlide's ``bounds-x``/``bounds-y`` (MRXS).
    slide_size : (w, h), optional
        Clip rectangles to the slide (in the offset frame); tiles left with no area are dropped.
    object_type : {"tile", "detection", "annotation"}, default "tile"
        ``tile`` and ``detection`` appear in Measurement Maps; ``annotation`` does not (R-33).
    digits : int, default 6
        Significant digits kept per measurement; QuPath stores tile measurements as float32 (~7 digits).

    Returns
    -------
    list of dict
        GeoJSON Features with a UUID4 ``id``, ``properties.objectType`` and ``properties.measurements``
        (omitted when a tile has no finite value). Coordinates are rounded to 0.01 px.

    Raises
    ------
    ConfigError
        On mismatched shapes, a bad object type or a reserved measurement name.
    """
    if object_type not in _WRITABLE_TILE_TYPES:
        raise ConfigError(f"object_type must be one of {_WRITABLE_TILE_TYPES}, got {object_type!r}")
    xy = np.asarray(coords)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ConfigError(f"coords must have shape (N, 2), got {xy.shape}")
    n = xy.shape[0]
    size = _tile_sizes(tile_size, n)
    values: dict[str, np.ndarray] = {}
    for name, arr in measurements.items():
        _check_measurement_name(name)
        a = np.asarray(arr, dtype=np.float64)
        if a.shape != (n,):
            raise ConfigError(f"measurement {name!r} must have shape ({n},) like coords, got {a.shape}")
        values[name] = a
    ox, oy = _pair(offset, "offset")
    x0 = xy[:, 0].astype(np.float64) - ox
    y0 = xy[:, 1].astype(np.float64) - oy
    x1, y1 = x0 + size, y0 + size
    box_ = _slide_box(slide_size)
    if box_ is not None:
        x0, x1 = np.clip(x0, 0, box_[0]), np.clip(x1, 0, box_[0])
        y0, y1 = np.clip(y0, 0, box_[1]), np.clip(y1, 0, box_[1])
    corners = np.round(np.stack([x0, y0, x1, y1], axis=1), 2)
    # Rectangles thinner than QuPath's grid would become empty ROIs.
    keep = np.flatnonzero((corners[:, 2] - corners[:, 0] >= GRID) & (corners[:, 3] - corners[:, 1] >= GRID))
    corners = corners[keep]
    whole = np.all(corners == np.floor(corners))
    rows = (corners.astype(np.int64) if whole else corners).tolist()  # ints print shorter and exactly

    fmt = f"{{:.{int(digits)}g}}".format
    cols = []
    for name, a in values.items():
        a = a[keep]
        finite = np.isfinite(a)
        cols.append((name, [float(fmt(v)) if f else None for v, f in zip(a.tolist(), finite.tolist())]))

    feats = []
    for i, (a, b, c, d) in enumerate(rows):
        props: dict[str, Any] = {"objectType": object_type}
        m = {name: col[i] for name, col in cols if col[i] is not None}
        if m:
            props["measurements"] = m
        feats.append({
            "type": "Feature",
            "id": _new_id(),
            "geometry": {"type": "Polygon", "coordinates": [[[a, b], [c, b], [c, d], [a, d], [a, b]]]},
            "properties": props,
        })
    return feats


def region_features(
    geometry: BaseGeometry | Iterable[BaseGeometry],
    class_name: str | None,
    color: Any = None,
    *,
    name: str | None = None,
    measurements: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    offset: Sequence[float] = (0, 0),
    slide_size: Sequence[float] | None = None,
    locked: bool = False,
    force_color: bool = False,
    min_area: float = 1.0,
) -> list[dict]:
    """Classified annotation Features (tissue contours, tumour regions) from shapely geometries.

    Each geometry goes through :func:`clean_polygonal`: ``make_valid``, polygonal parts only, offset,
    clipping to the slide, slivers dropped, snapped to 0.01 px and still valid after QuPath 0.6 snaps it
    (R-27). A geometry that ends up empty yields no Feature.

    Parameters
    ----------
    geometry : shapely geometry or iterable of them
        Level-0 pixel coordinates. Each one becomes one Feature (Polygon, or MultiPolygon if several parts).
    class_name : str or None
        QuPath class (``"Tumor"``; ``"Tumor: Positive"`` is a derived class). None writes no classification.
    color : (r, g, b) or '#rrggbb', optional
        Class colour; default: :func:`class_color`. Always written as an int array next to the name (R-12).
    name : str, optional
        Object name shown in QuPath.
    measurements : dict or sequence of dict, optional
        ``{name: number}`` for every geometry, or one dict per geometry. Non-finite values are omitted.
    offset, slide_size
        As in :func:`tile_features`.
    locked : bool, default False
        Write ``isLocked: true`` so users cannot edit the object by accident.
    force_color : bool, default False
        Also write ``properties.color``: QuPath shows built-in classes such as Tumor in their own colour
        otherwise (R-15).
    min_area : float, default 1.0
        Parts and holes below this area (px²) are dropped.

    Returns
    -------
    list of dict
        Annotation Features.
    """
    geoms = [geometry] if isinstance(geometry, BaseGeometry) else list(geometry)
    if measurements is None or isinstance(measurements, Mapping):
        per_geom = [measurements] * len(geoms)
    else:
        per_geom = list(measurements)
        if len(per_geom) != len(geoms):
            raise ConfigError(f"got {len(per_geom)} measurement dicts for {len(geoms)} geometries")
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"name must be a string or None, got {name!r}")
    classification = _classification(class_name, color)
    feats = []
    for g, meas in zip(geoms, per_geom):
        clean = clean_polygonal(g, offset=offset, slide_size=slide_size, min_area=min_area)
        if clean.is_empty:
            continue
        props: dict[str, Any] = {"objectType": "annotation"}
        if name is not None:
            props["name"] = name
        if classification is not None:
            props["classification"] = dict(classification)
            if force_color:
                props["color"] = list(classification["color"])
        if locked:
            props["isLocked"] = True
        m = _finite_measurements(meas)
        if m:
            props["measurements"] = m
        feats.append({"type": "Feature", "id": _new_id(), "geometry": _geometry_json(clean), "properties": props})
    return feats


def point_features(
    points: Any,
    confidences: Any | None = None,
    class_name: str | None = "Tumor",
    color: Any = None,
    *,
    object_type: str = "annotation",
    offset: Sequence[float] = (0, 0),
    slide_size: Sequence[float] | None = None,
) -> list[dict]:
    """One Point Feature per detection (e.g. CAMELYON16 lesion locations), measurement ``confidence``.

    Parameters
    ----------
    points : (N, 2) float array_like
        Level-0 ``x, y``.
    confidences : (N,) float array_like, optional
        Written as measurement ``confidence`` when finite.
    class_name : str or None, default "Tumor"
    color : (r, g, b), optional
    object_type : {"annotation", "detection"}, default "annotation"
    offset, slide_size
        As in :func:`tile_features`; points outside the slide are dropped.

    Returns
    -------
    list of dict
    """
    if object_type not in ("annotation", "detection"):
        raise ConfigError(f"object_type must be 'annotation' or 'detection', got {object_type!r}")
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2) if np.size(points) else np.zeros((0, 2))
    n = len(pts)
    conf = None
    if confidences is not None:
        conf = np.asarray(confidences, dtype=np.float64)
        if conf.shape != (n,):
            raise ConfigError(f"confidences must have shape ({n},), got {conf.shape}")
    ox, oy = _pair(offset, "offset")
    pts = np.round(pts - np.array([ox, oy]), 2)
    keep = np.all(np.isfinite(pts), axis=1)
    box_ = _slide_box(slide_size)
    if box_ is not None:
        keep &= (pts[:, 0] >= 0) & (pts[:, 0] <= box_[0]) & (pts[:, 1] >= 0) & (pts[:, 1] <= box_[1])
    classification = _classification(class_name, color)
    feats = []
    for i in np.flatnonzero(keep).tolist():
        props: dict[str, Any] = {"objectType": object_type}
        if classification is not None:
            props["classification"] = dict(classification)
        if conf is not None and math.isfinite(conf[i]):
            props["measurements"] = {"confidence": float(conf[i])}
        feats.append({
            "type": "Feature",
            "id": _new_id(),
            "geometry": {"type": "Point", "coordinates": [_num(pts[i, 0]), _num(pts[i, 1])]},
            "properties": props,
        })
    return feats


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


def feature_collection(features: Iterable[dict]) -> dict:
    """Wrap Features into ``{"type": "FeatureCollection", "features": [...]}`` (R-03)."""
    return {"type": "FeatureCollection", "features": list(features)}


# ----------------------------------------------------------------------------------------------------------------
# writing


@contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[Any]:
    """Binary file handle on a temp file next to ``path``, moved onto ``path`` only if the block succeeds.

    Parameters
    ----------
    path : str or os.PathLike
        Final file; its folder must exist.

    Yields
    ------
    file object
        Opened ``"wb"``.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ConfigError(f"{path}: folder {path.parent} does not exist; create it first")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"), default=_json_default)


def _features_of(data: Any) -> Iterable[dict]:
    if isinstance(data, Mapping):
        kind = data.get("type")
        if kind == "FeatureCollection":
            return data.get("features") or []
        if kind == "Feature":
            return [data]
        raise ConfigError(f"expected a FeatureCollection, a Feature or a list of Features, got type {kind!r}")
    return data


def write_geojson(
    path: str | os.PathLike,
    features_or_collection: Any,
    *,
    compresslevel: int = _GZIP_LEVEL,
    check: bool = False,
    slide_size: Sequence[float] | None = None,
) -> Path:
    """Write a QuPath-importable FeatureCollection: strict JSON, atomically, gzip by suffix.

    Parameters
    ----------
    path : str or os.PathLike
        Must end in ``.geojson``, ``.json``, ``.geojson.gz`` or ``.json.gz``: QuPath imports no other names
        (R-01). ``.gz`` is gzip-compressed.
    features_or_collection : FeatureCollection dict, Feature dict, or iterable of Feature dicts
    compresslevel : int, default 6
        gzip level (1–9) for ``.gz``; see ``bench/geojson.py``.
    check : bool, default False
        Run :func:`check_qupath_feature` on every Feature first and refuse to write on any violation.
    slide_size : (w, h), optional
        Passed to the check.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ConfigError
        On a bad suffix, a non-Feature element, NaN/Infinity anywhere, or a failed check. Nothing is left
        behind at ``path`` then.
    """
    path = Path(path)
    name = path.name.lower()
    gz = name.endswith(".gz")
    base = name[:-3] if gz else name
    if not base.endswith((".geojson", ".json")):
        raise ConfigError(
            f"{path}: QuPath only imports .geojson/.json (optionally .gz) files (R-01); rename it"
        )
    if not 1 <= int(compresslevel) <= 9:
        raise ConfigError(f"compresslevel must be 1-9, got {compresslevel}")
    with atomic_open(path) as raw:
        out = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=int(compresslevel), mtime=0) \
            if gz else raw
        try:
            out.write(b'{"type":"FeatureCollection","features":[')
            batch: list[str] = []
            sep = b""
            for i, feat in enumerate(_features_of(features_or_collection)):
                if not isinstance(feat, Mapping) or feat.get("type") != "Feature":
                    raise ConfigError(f"{path}: element {i} is not a GeoJSON Feature dict")
                if check:
                    problems = check_qupath_feature(feat, slide_size=slide_size)
                    if problems:
                        raise ConfigError(f"{path}: feature {i} would not import into QuPath: {'; '.join(problems)}")
                try:
                    batch.append(_ENCODER.encode(feat))
                except ValueError as e:
                    raise ConfigError(
                        f"{path}: feature {i} holds NaN or Infinity ({e}); omit non-finite values, QuPath 0.4 "
                        "aborts the import on them (R-19)"
                    ) from None
                if len(batch) >= _BATCH:  # one write per batch: per-feature writes dominate gzip time
                    out.write(sep + ",".join(batch).encode())
                    sep, batch = b",", []
            if batch:
                out.write(sep + ",".join(batch).encode())
            out.write(b"]}")
        finally:
            if gz:
                out.close()
    return path


# ----------------------------------------------------------------------------------------------------------------
# checking


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_positions(coords: Any, depth: int, where: str, problems: list[str], bounds: list[float]) -> None:
    # depth: 0 = position, 1 = list of positions, 2 = list of rings, 3 = list of polygons
    if depth == 0:
        if not isinstance(coords, list) or len(coords) < 2 or not all(_is_number(c) for c in coords[:2]):
            problems.append(f"R-25: {where}: position {coords!r} is not [x, y] numbers")
            return
        x, y = float(coords[0]), float(coords[1])
        if not (math.isfinite(x) and math.isfinite(y)):
            problems.append(f"R-25: {where}: non-finite coordinate {coords!r}")
            return
        bounds[0], bounds[1] = min(bounds[0], x), min(bounds[1], y)
        bounds[2], bounds[3] = max(bounds[2], x), max(bounds[3], y)
        return
    if not isinstance(coords, list):
        problems.append(f"R-25: {where}: coordinates nesting is wrong")
        return
    for c in coords:
        _check_positions(c, depth - 1, where, problems, bounds)


def _check_rings(rings: Any, where: str, problems: list[str]) -> None:
    for ring in rings if isinstance(rings, list) else []:
        if not isinstance(ring, list) or len(ring) < 4:
            n = len(ring) if isinstance(ring, list) else 0
            problems.append(f"R-26: {where}: ring has {n} positions, needs >= 4")
        elif ring[0][:2] != ring[-1][:2]:
            problems.append(f"R-26: {where}: ring is not closed (first position != last)")


def _is_axis_rectangle(ring: list) -> bool:
    # 5 closed positions, edges alternating between horizontal and vertical, 2 distinct x and 2 distinct y.
    if len(ring) != 5 or ring[0][:2] != ring[4][:2]:
        return False
    axes = []
    for a, b in zip(ring, ring[1:]):
        dx, dy = a[0] != b[0], a[1] != b[1]
        if dx == dy:
            return False
        axes.append(dx)
    if any(axes[i] == axes[i + 1] for i in range(3)):
        return False
    return len({p[0] for p in ring}) == 2 and len({p[1] for p in ring}) == 2


def _check_geometry(geom: Any, where: str, slide_size: tuple[float, float] | None) -> list[str]:
    problems: list[str] = []
    if not isinstance(geom, Mapping):
        return [f"R-06: {where} is {'null' if geom is None else type(geom).__name__}, must be a geometry object"]
    kind = geom.get("type")
    if kind == "GeometryCollection":
        return [f"R-24: {where} is a GeometryCollection (QuPath 0.6 aborts the import); write its polygons"]
    if kind not in _GEOMETRY_TYPES:
        return [f"R-23: {where} has unknown type {kind!r}"]
    if "plane" in geom:
        problems.append(f"R-29: {where} has a 'plane'; omit it for 2-D slides")
    coords = geom.get("coordinates")
    if not isinstance(coords, list):
        return problems + [f"R-06: {where} has no coordinates array"]
    depth = {"Point": 0, "MultiPoint": 1, "LineString": 1, "MultiLineString": 2, "Polygon": 2, "MultiPolygon": 3}
    bounds = [math.inf, math.inf, -math.inf, -math.inf]
    n_before = len(problems)
    _check_positions(coords, depth[kind], where, problems, bounds)
    if len(problems) > n_before:
        return problems
    if kind == "Polygon":
        _check_rings(coords, where, problems)
    elif kind == "MultiPolygon":
        for poly in coords:
            _check_rings(poly, where, problems)
    elif kind == "LineString" and len(coords) == 1:
        problems.append(f"R-26: {where}: a LineString needs 0 or >= 2 positions")
    if len(problems) > n_before:
        return problems
    if bounds[0] <= bounds[2]:
        if max(abs(v) for v in bounds) >= _FLOAT32_EXACT:
            problems.append(f"R-28: {where}: coordinates beyond 2**24 px lose precision in QuPath")
        if slide_size is not None:
            w, h = slide_size
            if bounds[0] < 0 or bounds[1] < 0 or bounds[2] > w or bounds[3] > h:
                problems.append(
                    f"R-32: {where}: coordinates span x {bounds[0]}..{bounds[2]}, y {bounds[1]}..{bounds[3]}, "
                    f"outside the slide (0..{w}, 0..{h})"
                )
    if kind == "Polygon" and len(coords) == 1 and _is_axis_rectangle(coords[0]):
        # Fast path for heatmap tiles (shapely costs ~0.1 ms per feature): an axis-aligned rectangle is
        # valid; it survives QuPath 0.6's grid if both sides span at least one grid step.
        if bounds[2] * 100 - bounds[0] * 100 < 0.5 or bounds[3] * 100 - bounds[1] * 100 < 0.5:
            problems.append(f"R-27: {where} is thinner than QuPath 0.6's 0.01 px grid and becomes empty")
        return problems
    if kind in ("Polygon", "MultiPolygon"):
        try:
            g = shapely.geometry.shape(geom)
        except Exception as e:  # shapely raises several types for malformed input
            return problems + [f"R-26: {where}: shapely cannot build it ({e})"]
        if not g.is_valid:
            problems.append(f"R-27: {where} is invalid ({shapely.is_valid_reason(g)}); QuPath 0.6 aborts on it")
        elif not _snap_ok(g):
            problems.append(f"R-27: {where} becomes empty or invalid on QuPath 0.6's 0.01 px grid")
    return problems


def _check_class_name(name: Any, where: str) -> list[str]:
    if not isinstance(name, str):
        return [f"R-12: {where} name must be a string, got {name!r}"]
    try:
        _class_parts(name)
    except ConfigError as e:
        return [f"R-14: {where}: {e}"]
    return []


def check_qupath_feature(feature: Any, slide_size: Sequence[float] | None = None) -> list[str]:
    """Rule violations that make QuPath 0.4–0.6 refuse or misread a Feature (``shared/docs/qupath-geojson.md``).

    Stricter than QuPath where QuPath silently degrades (legacy measurement lists, NaN measurements, colours
    outside 0–255, GeometryCollection, coordinates outside the slide).

    Parameters
    ----------
    feature : dict
        One GeoJSON Feature as parsed by ``json.loads``.
    slide_size : (w, h), optional
        Level-0 size in QuPath's frame; coordinates must lie in ``[0, w] x [0, h]``.

    Returns
    -------
    list of str
        One message per violation, each starting with the rule id; empty when the Feature is fine.
    """
    box_ = _slide_box(slide_size)
    if not isinstance(feature, Mapping):
        return [f"R-04: expected a Feature object, got {type(feature).__name__}"]
    problems: list[str] = []
    if feature.get("type") != "Feature":
        problems.append(f"R-03: type is {feature.get('type')!r}, must be 'Feature'")
    if "id" in feature and not isinstance(feature["id"], str):
        problems.append(f"R-05: id must be a string (a UUID), got {feature['id']!r}")
    if "geometry" not in feature:
        problems.append("R-06: geometry is missing")
    else:
        problems += _check_geometry(feature["geometry"], "geometry", box_)
    if "nucleusGeometry" in feature:
        problems += _check_geometry(feature["nucleusGeometry"], "nucleusGeometry", box_)
    if "properties" not in feature:
        return problems
    props = feature["properties"]
    if not isinstance(props, Mapping):
        return problems + [f"R-08: properties must be an object, got {props!r}"]

    for key in ("objectType", "object_type", "type"):  # R-09 precedence
        if key in props:
            ot = props[key]
            if not isinstance(ot, str):
                problems.append(f"R-09: properties.{key} must be a string, got {ot!r}")
            elif ot in _BAD_OBJECT_TYPES:
                problems.append(f"R-11: objectType {ot!r} cannot be imported (TMA cores are skipped, root refused)")
            elif ot not in _GOOD_OBJECT_TYPES:
                problems.append(f"R-10: unknown objectType {ot!r} (case-sensitive); QuPath makes it an annotation")
            break
    if "plane" in props:
        problems.append("R-29: 'plane' belongs in the geometry, and 2-D slides should omit it")
    if "name" in props and not isinstance(props["name"], str) and not _is_number(props["name"]):
        problems.append(f"R-17: name must be a string, got {props['name']!r}")

    if "classification" in props:
        cls = props["classification"]
        if isinstance(cls, str):
            problems += _check_class_name(cls, "classification")
        elif isinstance(cls, Mapping):
            if "name" not in cls and "names" not in cls:
                problems.append("R-12: classification object needs 'name' (and 'color')")
            elif "name" in cls:
                if cls["name"] is not None:
                    problems += _check_class_name(cls["name"], "classification")
            else:
                names = cls["names"]
                if not isinstance(names, list) or not names:
                    problems.append("R-12: classification 'names' must be a non-empty array")
                else:
                    for part in names:
                        if not isinstance(part, str) or ":" in part or not part.strip():
                            problems.append(f"R-14: classification names element {part!r} is blank or has ':'")
            if "color" not in cls:
                problems.append("R-12: classification object has no 'color'; QuPath aborts the import")
            else:
                col = cls["color"]
                if col is not None:
                    if not isinstance(col, list) or not all(_is_number(c) for c in col):
                        problems.append(f"R-13: classification color must be an array of integers, got {col!r}")
                    elif len(col) not in (0, 1, 3, 4):
                        problems.append(f"R-13: classification color has length {len(col)}, must be 0, 1, 3 or 4")
                    elif len(col) in (3, 4) and not all(0 <= c <= 255 for c in col):
                        problems.append(f"R-13: classification color components must be 0-255, got {col!r}")
        elif cls is not None:
            problems.append(f"R-12: classification must be an object with name and color, got {cls!r}")

    if "color" in props:
        col = props["color"]
        if isinstance(col, (str, bool)) or col is None:
            problems.append(f"R-16: properties.color must be [r, g, b] or a packed int, got {col!r}")
        elif isinstance(col, list) and (len(col) != 3 or not all(_is_number(c) and 0 <= c <= 255 for c in col)):
            problems.append(f"R-16: properties.color must be 3 integers 0-255, got {col!r}")
    if "isLocked" in props and not isinstance(props["isLocked"], bool):
        problems.append(f"R-18: isLocked must be true/false, got {props['isLocked']!r}")
    if "metadata" in props and not isinstance(props["metadata"], Mapping):
        problems.append("R-20: metadata must be an object")

    if "measurements" in props:
        meas = props["measurements"]
        if not isinstance(meas, Mapping):
            problems.append(f"R-19: measurements must be an object {{name: number}}, got {type(meas).__name__}")
        else:
            for k, v in meas.items():
                if str(k).strip().lower() == _FORBIDDEN_MEASUREMENT:
                    problems.append("R-35: measurement 'Class probability' is hidden by Measurement Maps")
                if not _is_number(v):
                    problems.append(f"R-19: measurement {k!r} is not a number: {v!r}")
                elif not math.isfinite(v):
                    problems.append(f"R-19: measurement {k!r} is {v}; QuPath 0.4 aborts on non-finite values")

    children = props.get("childObjects", props.get("children"))
    if children is not None:
        if not isinstance(children, list):
            problems.append("R-21: childObjects must be an array of Features")
        else:
            for j, child in enumerate(children):
                problems += [f"child {j}: {p}" for p in check_qupath_feature(child, slide_size)]
    return problems


def check_qupath_geojson(data: Any, slide_size: Sequence[float] | None = None) -> list[str]:
    """:func:`check_qupath_feature` over a whole document (or a file written by :func:`write_geojson`).

    Parameters
    ----------
    data : dict, list, str or os.PathLike
        A parsed FeatureCollection / Feature / list of Features, or a ``.geojson[.gz]`` path (parsed strictly:
        NaN/Infinity literals are violations).
    slide_size : (w, h), optional

    Returns
    -------
    list of str
        ``"feature i: <violation>"`` messages; empty when every Feature is fine.
    """
    if isinstance(data, (str, os.PathLike)):
        p = Path(data)
        raw = p.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)

        def _strict(token: str) -> Any:
            raise ValueError(token)

        try:
            data = json.loads(raw.decode("utf-8-sig"), parse_constant=_strict)
        except ValueError as e:
            return [f"R-02: {p}: not strict JSON ({e})"]
    if isinstance(data, Mapping) and data.get("type") == "FeatureCollection":
        feats = data.get("features")
        if not isinstance(feats, list):
            return ["R-03: FeatureCollection has no 'features' array"]
    elif isinstance(data, Mapping):
        feats = [data]
    elif isinstance(data, list):
        feats = data
    else:
        return [f"R-03: expected a FeatureCollection, Feature or array, got {type(data).__name__}"]
    return [f"feature {i}: {p}" for i, f in enumerate(feats) for p in check_qupath_feature(f, slide_size)]
