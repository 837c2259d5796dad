"""QuPath GeoJSON writers: heatmap tiles, classified regions, point detections.

Every function here is pure (arrays and shapely geometries in, plain ``dict`` Features out) except
:func:`write_geojson`. The output follows the rules R-01 … R-36 listed in :mod:`slidestream.annotations.validate`
(what QuPath 0.4.4, 0.5.1 and 0.6.0 accept, read from their sources). The rules that shape this module:

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
import uuid
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from shapely.geometry import MultiPolygon, Point, Polygon
from shapely.geometry.base import BaseGeometry

from ..errors import ConfigError
from ..fileio import atomic_open
from .geometry import GRID, _pair, _slide_box, clean_polygonal
from .validate import _FORBIDDEN_MEASUREMENT, _class_parts, check_qupath_feature

__all__ = [
    "DEFAULT_CLASS_COLORS",
    "class_color",
    "feature_collection",
    "point_features",
    "region_features",
    "tile_features",
    "write_geojson",
]

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

_WRITABLE_TILE_TYPES = ("tile", "detection", "annotation")
_GZIP_LEVEL = 6  # chosen with bench/geojson.py: see the module docstring there
_BATCH = 4096



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



def feature_collection(features: Iterable[dict]) -> dict:
    """Wrap Features into ``{"type": "FeatureCollection", "features": [...]}`` (R-03)."""
    return {"type": "FeatureCollection", "features": list(features)}


# ----------------------------------------------------------------------------------------------------------------
# writing


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
    with atomic_open(path, mkdir=False, fsync=True) as raw:
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


