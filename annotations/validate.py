"""What QuPath 0.4–0.6 accepts in a GeoJSON file, as rules R-01 … R-36, and a checker for them.

The rules were read from the sources of QuPath 0.4.4, 0.5.1 and 0.6.0 (``PathObjectTypeAdapters``,
``ROITypeAdapters``, ``PathIO``, ``GeometryTools``, the measurement-map mapper) and checked with probe imports.
Writers in :mod:`slidestream.annotations.qupath` follow them; :func:`check_qupath_geojson` reports violations.

========  =======================================================================================================
rule      what QuPath does
========  =======================================================================================================
R-01      imports only ``.geojson``/``.json`` (optionally ``.gz``) file names, judged lower-cased
R-02      reads UTF-8 and parses the whole file as a lenient JSON tree first (NaN accepted on read)
R-03      top level: a FeatureCollection, a Feature, a list of Features or a bare geometry
R-04      every element of ``features``/``childObjects`` is a Feature with a ``geometry`` (else the import fails)
R-05      ``id``: a string (a UUID is kept); null aborts the import
R-06      ``geometry`` is required; one without ``type`` gives no ROI
R-07      ``nucleusGeometry`` is a Feature member beside ``geometry`` (cells), not a property
R-08      ``properties`` must be an object; null aborts
R-09      object type from ``objectType``, then ``object_type``, then ``type``; never put other data in ``type``
R-10      object types (case-sensitive): annotation, detection, tile, cell (and legacy ``Path*Object`` names)
R-11      TMA cores and root objects are dropped or refused; never written
R-12      ``classification``: an object with ``name`` and a ``color`` array (a name-only object fails to parse)
R-13      a classification colour is an array of 3 or 4 integers
R-14      class names: non-blank parts split on ``:`` (derived classes), no line breaks
R-15      class colours are per-session: an existing class keeps its colour
R-16      ``properties.color`` sets one object's colour and wins over its class colour
R-17      ``name``: a string (numbers are stringified); null, objects and arrays abort
R-18      ``isLocked`` is read when it is a primitive
R-19      ``measurements``: an object ``{name: number}`` (or a legacy list); other values are silently ignored
R-20      ``metadata``: an object; only primitive values are kept, as strings
R-21      ``childObjects`` are attached as given, without checks
R-22      one error rejects the whole file: there is no partial import
R-23      geometry types (case-sensitive): Point, MultiPoint, LineString, MultiLineString, Polygon, MultiPolygon,
          GeometryCollection
R-24      a GeometryCollection becomes one ROI only when its parts are of one kind; avoid it
R-25      positions are ``[x, y]`` numbers
R-26      polygon rings are closed, with at least 4 positions
R-27      QuPath 0.6 snaps coordinates to a 0.01 px grid; a polygon that turns invalid there aborts the import
R-28      ROI vertices are float32: whole-pixel precision is lost beyond 2**24 px; zero-area rings vanish
R-29      ``plane`` lives inside the geometry; omit it for 2-D slides
R-30      ``isEllipse: true`` replaces the shape by an ellipse fitted to its bounding box
R-31      CRS and ``bbox`` are ignored
R-32      coordinates are level-0 pixels, y down, with the origin where QuPath's reader puts it (OpenSlide bounds
          of MRXS slides are subtracted)
R-33      measurement maps show detection-like objects only: detection, tile, cell
R-34      a map's colour range comes from the finite values of all objects
R-35      a measurement named "Class probability" is replaced by the class probability: the map shows nothing
R-36      measurement maps draw each object filled with its value's colour
========  =======================================================================================================
"""

from __future__ import annotations

import gzip
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import shapely

from ..errors import ConfigError
from .geometry import _slide_box, _snap_ok

__all__ = ["check_qupath_feature", "check_qupath_geojson"]

# objectType values QuPath maps to an object it can add to a hierarchy; tmaCore/root are refused.
_GOOD_OBJECT_TYPES = frozenset(
    {"annotation", "detection", "tile", "cell", "unknown",
     "PathAnnotationObject", "PathDetectionObject", "PathTileObject", "PathCellObject"}
)
_BAD_OBJECT_TYPES = frozenset({"tmaCore", "tma_core", "TMACoreObject", "root", "PathRootObject"})
_GEOMETRY_TYPES = frozenset({"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon"})
_FORBIDDEN_MEASUREMENT = "class probability"
# float32 vertices lose whole-pixel precision beyond 2**24.
_FLOAT32_EXACT = float(2**24)

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
        # Fast path for heatmap tiles (shapely is slow per feature): an axis-aligned rectangle is
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
    """Rule violations that make QuPath 0.4–0.6 refuse or misread a Feature (the rules in this module's docstring).

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
