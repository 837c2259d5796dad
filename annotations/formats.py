"""Annotation files in and out: ASAP XML (CAMELYON16), QuPath GeoJSON (0.2 and 0.4+ styles), NCRF JSON.

Everything is returned as :class:`Annotation` objects holding shapely geometries in **level-0 pixel**
coordinates (x right, y down). The format is recognised by content, not by file name; ``.gz`` files are
decompressed first.

Tumour and exclusion regions
----------------------------
CAMELYON16 ASAP files put lesions in groups ``_0``, ``_1`` or ``Tumor`` and regions *inside* lesions that are
not tumour in group ``_2``. NCRF JSON files have ``positive`` and ``negative`` lists with the same meaning.
The reader maps these to class ``"Tumor"`` and to :data:`EXCLUSION`; exclusion polygons are **subtracted from
every Tumor polygon of the same file and then removed** from the result, so a Tumor annotation can come back
with holes or as a MultiPolygon. Other group names are kept as class names unless ``class_map`` says otherwise.
:func:`write_asap_xml` writes holes back as ``_2`` polygons, so the round trip keeps them.

Invalid polygons (self-intersecting splines are common in CAMELYON16) are repaired with
``shapely.make_valid(method="structure")``: rings bound area, holes exclude it.

Hostile and damaged files
-------------------------
Reading is capped (:mod:`slidestream.annotations.limits`): at most ``max_bytes`` after decompression (read in
chunks, so a small ``.gz`` cannot inflate without bound), ``max_vertices`` in the file (counted while JSON is
parsed), and ``max_crossings`` self-crossings in a polygon to repair (counted before ``make_valid``, whose cost
grows with them). XML with entity declarations is refused (ASAP never writes them). Each cap is a keyword
argument of :func:`read_annotations`, named in the error.
"""

from __future__ import annotations

import math
import os
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import LineString, MultiPoint, MultiPolygon, Point, Polygon
from shapely.geometry.base import BaseGeometry

from ..errors import ConfigError, SlidestreamError
from ..fileio import atomic_open
from .geometry import make_valid_polygonal, polygonal_parts
from .limits import (DEFAULT_MAX_BYTES, DEFAULT_MAX_CROSSINGS, DEFAULT_MAX_VERTICES, DamagedGzip, LimitExceeded,
                     check_crossings, loads_json, read_bounded)
from .qupath import class_color

__all__ = [
    "ASAP_CLASS_MAP",
    "EXCLUSION",
    "NCRF_CLASS_MAP",
    "Annotation",
    "AnnotationError",
    "read_annotations",
    "tumor_geometry",
    "write_asap_xml",
]

#: Class of regions subtracted from the Tumor regions of the same file (CAMELYON16 ``_2``, NCRF ``negative``).
EXCLUSION = "Exclusion"

#: ASAP group → class. ``metastasis`` is what our shared copy of CAMELYON16 tumor_009 calls its group.
ASAP_CLASS_MAP: dict[str, str | None] = {
    "_0": "Tumor",
    "_1": "Tumor",
    "Tumor": "Tumor",
    "tumor": "Tumor",
    "metastasis": "Tumor",
    "Metastasis": "Tumor",
    "_2": EXCLUSION,
}

#: NCRF list name → class.
NCRF_CLASS_MAP: dict[str, str | None] = {"positive": "Tumor", "negative": EXCLUSION}

_LEGACY_TYPES = {
    "PathAnnotationObject": "annotation",
    "PathDetectionObject": "detection",
    "PathTileObject": "tile",
    "PathCellObject": "cell",
    "TMACoreObject": "tmaCore",
    "PathRootObject": "root",
    "tma_core": "tmaCore",
    "unknown": "annotation",
}
_KNOWN_TYPES = {"annotation", "detection", "tile", "cell", "tmaCore", "root"}
_GEOJSON_GEOMETRIES = {"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon",
                       "GeometryCollection"}


class AnnotationError(SlidestreamError, ValueError):
    """An annotation file cannot be read.

    Parameters
    ----------
    path : str or os.PathLike
        The file concerned; always part of the message.
    reason : str
        What went wrong.
    hint : str, optional
        What the user can do about it.
    """

    def __init__(self, path: str | os.PathLike, reason: str, hint: str | None = None):
        self.path = os.fspath(path)
        self.reason = reason
        self.hint = hint or "export it again as QuPath GeoJSON or ASAP XML, or drop it from the manifest"
        super().__init__(self.path, reason, self.hint)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason} ({self.hint})"


@dataclass
class Annotation:
    """One annotated object in level-0 pixel coordinates.

    Attributes
    ----------
    geometry : shapely geometry
        Point, MultiPoint, LineString, MultiLineString, Polygon or MultiPolygon; polygons are valid.
    class_name : str or None
        E.g. ``"Tumor"``; None when unclassified.
    name : str or None
        The object's own name (ASAP ``Name``, QuPath ``name``).
    object_type : str
        QuPath object type: ``"annotation"``, ``"detection"``, ``"tile"``, ``"cell"`` …
    measurements : dict of str to float
        QuPath measurements; empty for formats without them.
    color : (r, g, b) or None
        Class colour from the file, if any.
    """

    geometry: BaseGeometry
    class_name: str | None
    name: str | None = None
    object_type: str = "annotation"
    measurements: dict[str, float] = field(default_factory=dict)
    color: tuple[int, int, int] | None = None


# ----------------------------------------------------------------------------------------------------------------
# reading


def read_annotations(
    path: str | os.PathLike,
    *,
    class_map: Mapping[str, str | None] | None = None,
    offset: Sequence[float] = (0, 0),
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_vertices: int = DEFAULT_MAX_VERTICES,
    max_crossings: int = DEFAULT_MAX_CROSSINGS,
) -> list[Annotation]:
    """Read ASAP XML, QuPath GeoJSON (any version, ``.gz`` too) or NCRF JSON annotations.

    Parameters
    ----------
    path : str or os.PathLike
        The file; its format is recognised by content.
    class_map : dict of str to (str or None), optional
        Renames classes (ASAP group names, QuPath class names, NCRF list names): the value is the new class,
        :data:`EXCLUSION` to make the objects holes in the Tumor regions, or None to drop them. Applied on top of
        :data:`ASAP_CLASS_MAP` / :data:`NCRF_CLASS_MAP` for those formats.
    offset : (x, y), default (0, 0)
        Added to every coordinate. ASAP and NCRF files are already in OpenSlide level-0 pixels; QuPath GeoJSON
        from a slide with OpenSlide bounds (MRXS) needs ``(bounds-x, bounds-y)`` here.
    max_bytes : int, default 64 MiB
        Largest content read, after decompression.
    max_vertices : int, default 2,000,000
        Most vertices in the file.
    max_crossings : int, default 10,000
        Most self-crossings of one polygon that is repaired; a polygon crossing itself more often (a scribble)
        is refused rather than repaired in unbounded time and memory.

    Returns
    -------
    list of Annotation
        In file order; QuPath child objects follow their parent. Exclusion objects are subtracted from the
        Tumor objects and not returned (see the module docstring).

    Raises
    ------
    AnnotationError
        If the file is not one of these formats, is malformed, or exceeds a cap (the message names the keyword
        argument that raises it).
    FileNotFoundError
        If ``path`` does not exist.
    """
    path = Path(path)
    try:
        items, mapping = _read_items(path, class_map, max_bytes, max_vertices, max_crossings)
    except LimitExceeded as e:
        raise AnnotationError(path, e.reason, f"simplify or split the annotations (QuPath: Objects > Annotations > "
                                              f"Simplify shape), or raise the cap: read_annotations(..., "
                                              f"{e.option}=N) or roi_from_file(..., {e.option}=N)") from None

    ox, oy = (float(v) for v in offset)
    kept: list[Annotation] = []
    holes: list[BaseGeometry] = []
    for ann in items:
        # Only objects mapped to EXCLUSION (by default or by class_map) are holes; a QuPath class that merely
        # happens to be called "Exclusion" stays an ordinary class unless the caller maps it.
        is_hole = False
        if ann.class_name in mapping:
            ann.class_name = mapping[ann.class_name]
            if ann.class_name is None:
                continue
            is_hole = ann.class_name == EXCLUSION and bool(polygonal_parts(ann.geometry))
        if ox or oy:
            ann.geometry = shapely.transform(ann.geometry, lambda xy: xy + np.array([ox, oy]))
        if is_hole:
            holes.append(ann.geometry)
        else:
            kept.append(ann)
    if holes:
        kept = _subtract(kept, holes)
    return kept


def _read_items(path: Path, class_map, max_bytes: int, max_vertices: int,
                max_crossings: int) -> tuple[list[Annotation], dict]:
    try:
        raw = read_bounded(path, max_bytes)
    except DamagedGzip as e:
        raise AnnotationError(path, f"damaged gzip data ({e})", "re-copy or re-export the file") from None
    head = raw.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if head == b"<":
        if b"<!ENTITY" in raw:
            raise AnnotationError(path, "XML with entity declarations (can expand without bound)",
                                  "ASAP never writes them: export the annotations again")
        if raw.count(b"<Coordinate ") + raw.count(b"<Coordinate/") > max_vertices:
            raise LimitExceeded(f"holds more than {max_vertices:,} vertices", "max_vertices")
        mapping = {**ASAP_CLASS_MAP, **(class_map or {})}
        items = _read_asap(path, raw, max_crossings)
    elif head in (b"{", b"["):
        try:
            doc = loads_json(raw.decode("utf-8-sig"), max_vertices)  # lenient about NaN/Infinity, like QuPath
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise AnnotationError(path, f"not valid JSON ({e})") from None
        del raw
        if isinstance(doc, dict) and "type" not in doc and ("positive" in doc or "negative" in doc):
            mapping = {**NCRF_CLASS_MAP, **(class_map or {})}
            items = _read_ncrf(path, doc, max_crossings)
        else:
            mapping = dict(class_map or {})
            items = []
            _walk_geojson(path, doc, items, max_crossings)
    else:
        raise AnnotationError(path, "not ASAP XML, GeoJSON or NCRF JSON (unrecognised content)")
    vertices = sum(int(shapely.get_num_coordinates(a.geometry)) for a in items)
    if vertices > max_vertices:
        raise LimitExceeded(f"holds {vertices:,} vertices, more than {max_vertices:,}", "max_vertices")
    return items, mapping


def _repaired(geometry: BaseGeometry, max_crossings: int) -> Polygon | MultiPolygon:
    """``make_valid_polygonal(geometry)``, once its self-crossings are known to be few enough to repair."""
    if not geometry.is_valid:
        check_crossings(geometry, max_crossings)
    return make_valid_polygonal(geometry)


def _subtract(anns: list[Annotation], holes: list[BaseGeometry]) -> list[Annotation]:
    cut = shapely.union_all([make_valid_polygonal(h) for h in holes])
    out = []
    for ann in anns:
        if ann.class_name == "Tumor" and polygonal_parts(ann.geometry):
            ann.geometry = make_valid_polygonal(shapely.difference(ann.geometry, cut))
            if ann.geometry.is_empty:
                continue
        out.append(ann)
    return out


def _hex_color(value: str | None) -> tuple[int, int, int] | None:
    if not value or not value.startswith("#") or len(value) != 7:
        return None
    try:
        return tuple(int(value[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
    except ValueError:
        return None


def _number(text: str | None) -> float:
    # ASAP writes the locale's decimal separator; some CAMELYON files have "1234,5".
    return float((text or "nan").replace(",", "."))


def _read_asap(path: Path, raw: bytes, max_crossings: int) -> list[Annotation]:
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as e:
        raise AnnotationError(path, f"malformed XML ({e})") from None
    if root.tag != "ASAP_Annotations":
        raise AnnotationError(path, f"XML root is <{root.tag}>, not <ASAP_Annotations>",
                              "only ASAP/CAMELYON16 XML is supported; convert others to GeoJSON")
    group_colors = {g.get("Name"): _hex_color(g.get("Color")) for g in root.iter("Group")}
    out = []
    for i, el in enumerate(root.iter("Annotation")):
        pts = []
        for j, c in enumerate(el.iter("Coordinate")):
            try:
                order = int(c.get("Order", j))
                pts.append((order, _number(c.get("X")), _number(c.get("Y"))))
            except ValueError:
                raise AnnotationError(path, f"annotation {i} has a non-numeric coordinate") from None
        xy = [(x, y) for _, x, y in sorted(pts)]
        if not all(math.isfinite(v) for p in xy for v in p):
            raise AnnotationError(path, f"annotation {i} has a coordinate without X or Y")
        kind = el.get("Type", "Polygon")
        group = el.get("PartOfGroup", "None")
        geom: BaseGeometry | None
        if not xy:
            geom = None
        elif kind == "Dot":
            geom = Point(xy[0])
        elif kind == "PointSet":
            geom = MultiPoint(xy)
        elif kind in ("Measurement", "Ruler"):
            geom = LineString(xy) if len(xy) >= 2 else None
        else:  # Polygon, Spline (control points taken as vertices, as CAMELYON16's evaluation does), Rectangle
            geom = _repaired(Polygon(xy), max_crossings) if len(xy) >= 3 else None
        if geom is None or geom.is_empty:
            warnings.warn(f"{path}: annotation {i} ({el.get('Name')!r}) has no area or points; skipped",
                          stacklevel=3)
            continue
        out.append(Annotation(
            geometry=geom,
            class_name=None if group == "None" else group,
            name=el.get("Name"),
            color=group_colors.get(group) or _hex_color(el.get("Color")),
        ))
    return out


def _read_ncrf(path: Path, doc: dict, max_crossings: int) -> list[Annotation]:
    out = []
    for key in ("positive", "negative"):
        entries = doc.get(key) or []
        if not isinstance(entries, list):
            raise AnnotationError(path, f"NCRF '{key}' must be a list of {{name, vertices}}")
        for i, entry in enumerate(entries):
            try:
                xy = [(float(x), float(y)) for x, y, *_ in entry["vertices"]]
            except (KeyError, TypeError, ValueError):
                raise AnnotationError(path, f"NCRF {key}[{i}] has no usable 'vertices' [[x, y], ...]") from None
            geom = _repaired(Polygon(xy), max_crossings) if len(xy) >= 3 else MultiPolygon()
            if geom.is_empty:
                warnings.warn(f"{path}: NCRF {key}[{i}] has no area; skipped", stacklevel=3)
                continue
            out.append(Annotation(geometry=geom, class_name=key, name=entry.get("name")))
    return out


def _walk_geojson(path: Path, obj: Any, out: list[Annotation], max_crossings: int) -> None:
    # Same dispatch as QuPath's GsonTools.addPathObjects, but lenient about what sits in `features`.
    if isinstance(obj, list):
        for item in obj:
            _walk_geojson(path, item, out, max_crossings)
        return
    if not isinstance(obj, dict):
        return
    kind = obj.get("type")
    if kind == "FeatureCollection":
        for item in obj.get("features") or []:
            if isinstance(item, dict) and "geometry" in item and item.get("type") != "FeatureCollection":
                _read_feature(path, item, out, max_crossings)
            else:
                _walk_geojson(path, item, out, max_crossings)
    elif kind == "Feature":
        _read_feature(path, obj, out, max_crossings)
    elif kind in _GEOJSON_GEOMETRIES:
        geom = _shape(path, obj, max_crossings)
        if geom is not None:
            out.append(Annotation(geometry=geom, class_name=None))


def _polygonal(geometry: dict) -> BaseGeometry | None:
    """A GeoJSON Polygon or MultiPolygon built through numpy (shapely's ``shape`` walks every vertex in Python);
    None for other types and anything unusual, which ``shape`` then handles and reports."""
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    if kind not in ("Polygon", "MultiPolygon") or not isinstance(coords, list):
        return None
    try:
        polys = []
        for rings in [coords] if kind == "Polygon" else coords:
            arrays = [np.asarray(ring, dtype=float) for ring in rings]
            if not arrays or any(a.ndim != 2 or a.shape[1] < 2 or len(a) < 4 for a in arrays):
                return None
            rings_ = [shapely.linearrings(a[:, :2]) for a in arrays]
            polys.append(shapely.polygons(rings_[0], holes=rings_[1:] or None))
    except (TypeError, ValueError, shapely.errors.GEOSException):
        return None
    return polys[0] if kind == "Polygon" else MultiPolygon(polys)


def _shape(path: Path, geometry: Any, max_crossings: int) -> BaseGeometry | None:
    if not isinstance(geometry, dict):
        return None
    g = _polygonal(geometry)
    if g is None:
        try:
            g = shapely.geometry.shape(geometry)  # 'plane', 'isEllipse' and other extra members are ignored
        except Exception as e:  # shapely raises several exception types on malformed coordinates
            raise AnnotationError(path, f"malformed {geometry.get('type')} geometry ({e})") from None
    g = shapely.force_2d(g)
    if g.geom_type == "GeometryCollection":
        # QuPath 0.4/0.5 keep the highest dimension only (GeometryTools.homogenizeGeometryCollection).
        polys = polygonal_parts(g)
        if polys:
            g = MultiPolygon(polys)
        else:
            lines = [p for p in g.geoms if p.geom_type in ("LineString", "MultiLineString")]
            g = shapely.union_all(lines) if lines else shapely.union_all(list(g.geoms))
    if g.geom_type in ("Polygon", "MultiPolygon") and not g.is_valid:
        check_crossings(g, max_crossings)
        g = make_valid_polygonal(g)
    if g.geom_type == "MultiPolygon" and len(g.geoms) == 1:
        g = g.geoms[0]
    return None if g.is_empty else g


def _class_of(cls: Any) -> tuple[str | None, tuple[int, int, int] | None]:
    if cls is None:
        return None, None
    if isinstance(cls, str):
        return ": ".join(p.strip() for p in cls.split(":")) or None, None
    if not isinstance(cls, dict):
        return None, None
    name = cls.get("name")
    if name is None and isinstance(cls.get("names"), list):
        name = ": ".join(str(n) for n in cls["names"])
    color = None
    col = cls.get("color")
    if isinstance(col, list) and len(col) >= 3:
        color = tuple(int(c) & 0xFF for c in col[:3])
    elif isinstance(col, list) and len(col) == 1 or isinstance(cls.get("colorRGB"), int):
        packed = int(col[0]) if isinstance(col, list) and len(col) == 1 else int(cls["colorRGB"])
        color = ((packed >> 16) & 0xFF, (packed >> 8) & 0xFF, packed & 0xFF)
    return (": ".join(p.strip() for p in str(name).split(":")) if name is not None else None), color


def _measurements(meas: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(meas, dict):
        pairs = meas.items()
    elif isinstance(meas, list):  # QuPath <= 0.3: [{"name": ..., "value": ...}]
        pairs = [(m.get("name"), m.get("value")) for m in meas if isinstance(m, dict)]
    else:
        return out
    for k, v in pairs:
        if k is None or isinstance(v, bool) or v is None:
            continue
        try:
            out[str(k)] = float(v)  # also "NaN"/"Infinity" strings, as QuPath 0.5+ does
        except (TypeError, ValueError):
            continue
    return out


def _read_feature(path: Path, feat: dict, out: list[Annotation], max_crossings: int) -> None:
    geom = _shape(path, feat.get("geometry"), max_crossings)
    props = feat.get("properties")
    props = props if isinstance(props, dict) else {}
    if geom is None:
        warnings.warn(f"{path}: a feature without usable geometry was skipped (QuPath would refuse the file)",
                      stacklevel=4)
    else:
        object_type = _LEGACY_TYPES.get(str(feat.get("id")), "annotation")
        for key in ("objectType", "object_type", "type"):  # R-09 precedence
            if key in props:
                t = str(props[key])
                object_type = _LEGACY_TYPES.get(t, t if t in _KNOWN_TYPES else "annotation")
                break
        class_name, color = _class_of(props.get("classification"))
        name = props.get("name")
        out.append(Annotation(
            geometry=geom,
            class_name=class_name,
            name=None if name is None else str(name),
            object_type=object_type,
            measurements=_measurements(props.get("measurements")),
            color=color,
        ))
    children = props.get("childObjects", props.get("children"))
    if isinstance(children, list):
        for child in children:
            if isinstance(child, dict):
                _read_feature(path, child, out, max_crossings)


# ----------------------------------------------------------------------------------------------------------------
# writing and ground truth


def _fmt(v: float) -> str:
    s = f"{v:.4f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _hex(rgb: Sequence[int]) -> str:
    return "#{:02X}{:02X}{:02X}".format(*(int(c) & 0xFF for c in rgb[:3]))


def write_asap_xml(path: str | os.PathLike, annotations: Iterable[Annotation], group: str = "Tumor") -> Path:
    """Write annotations as ASAP XML (readable by ASAP and CAMELYON16 tools), atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Output ``.xml`` file; its folder must exist.
    annotations : iterable of Annotation
        Level-0 pixel geometries. Polygon parts become ``Polygon`` annotations, Points ``Dot``, MultiPoints
        ``PointSet``, two-point LineStrings ``Measurement``.
    group : str, default "Tumor"
        ``PartOfGroup`` of Tumor-class annotations (CAMELYON16 tools accept ``Tumor``, ``_0``, ``_1``). Other
        classes use their class name, unclassified objects ``None``, :data:`EXCLUSION` objects and the holes of
        Tumor polygons ``_2`` (the reader subtracts them again).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ConfigError
        For geometries ASAP cannot hold: polylines, and holes in non-Tumor polygons.
    """
    root = ET.Element("ASAP_Annotations")
    anns_el = ET.SubElement(root, "Annotations")
    groups: dict[str, str] = {}
    count = 0

    def add(kind: str, grp: str, xy: Sequence[Sequence[float]], color: str) -> None:
        nonlocal count
        el = ET.SubElement(anns_el, "Annotation", Name=f"Annotation {count}", Type=kind, PartOfGroup=grp,
                           Color=color)
        coords = ET.SubElement(el, "Coordinates")
        for k, (x, y) in enumerate(xy):
            ET.SubElement(coords, "Coordinate", Order=str(k), X=_fmt(x), Y=_fmt(y))
        count += 1
        if grp != "None":
            groups.setdefault(grp, color)

    for a in annotations:
        if a.class_name == EXCLUSION:
            grp = "_2"
        elif a.class_name == "Tumor":
            grp = group
        else:
            grp = "None" if a.class_name is None else a.class_name
        color = _hex(a.color or class_color(a.class_name or "Other"))
        g = a.geometry
        if g.geom_type in ("Polygon", "MultiPolygon"):
            for poly in polygonal_parts(g):
                add("Polygon", grp, list(poly.exterior.coords)[:-1], color)  # ASAP rings are implicitly closed
                if poly.interiors and a.class_name != "Tumor":
                    raise ConfigError(
                        f"{path}: a {a.class_name!r} polygon has holes, which ASAP XML can only hold for Tumor "
                        "(as _2 regions); write QuPath GeoJSON instead"
                    )
                for ring in poly.interiors:
                    add("Polygon", "_2", list(ring.coords)[:-1], _hex(class_color(EXCLUSION)))
        elif g.geom_type == "Point":
            add("Dot", grp, [(g.x, g.y)], color)
        elif g.geom_type == "MultiPoint":
            add("PointSet", grp, [(p.x, p.y) for p in g.geoms], color)
        elif g.geom_type == "LineString" and len(g.coords) == 2:
            add("Measurement", grp, list(g.coords), color)
        else:
            raise ConfigError(f"{path}: ASAP XML cannot hold a {g.geom_type} with {len(shapely.get_coordinates(g))} "
                              "points; write QuPath GeoJSON instead")

    groups_el = ET.SubElement(root, "AnnotationGroups")
    for name, color in groups.items():
        g_el = ET.SubElement(groups_el, "Group", Name=name, PartOfGroup="None", Color=color)
        ET.SubElement(g_el, "Attributes")
    ET.indent(root, space="\t")
    path = Path(path)
    with atomic_open(path, mkdir=False, fsync=True) as f:
        ET.ElementTree(root).write(f, encoding="utf-8", xml_declaration=True)
    return path


def tumor_geometry(annotations: Iterable[Annotation], *, class_name: str = "Tumor") -> MultiPolygon:
    """Ground-truth tumour area: union of ``class_name`` polygons minus :data:`EXCLUSION` polygons.

    Parameters
    ----------
    annotations : iterable of Annotation
        As returned by :func:`read_annotations` (which already subtracts exclusions; doing it again is harmless).
    class_name : str, default "Tumor"

    Returns
    -------
    MultiPolygon
        Valid, level-0 pixels; empty when there is no tumour.
    """
    anns = list(annotations)
    tumor = [p for a in anns if a.class_name == class_name for p in polygonal_parts(a.geometry)]
    holes = [p for a in anns if a.class_name == EXCLUSION for p in polygonal_parts(a.geometry)]
    if not tumor:
        return MultiPolygon()
    g = shapely.union_all([make_valid_polygonal(p) for p in tumor])
    if holes:
        g = shapely.difference(g, shapely.union_all([make_valid_polygonal(p) for p in holes]))
    return MultiPolygon(polygonal_parts(g))
