"""Annotation I/O: ASAP XML, QuPath GeoJSON (0.2 and current), NCRF JSON; round trips through our writers."""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import LineString, MultiPoint, MultiPolygon, Point, Polygon, box

from slidestream.errors import ConfigError
from slidestream.annotations import (
    EXCLUSION,
    Annotation,
    AnnotationError,
    read_annotations,
    tumor_geometry,
    write_asap_xml,
)
from slidestream.annotations import check_qupath_feature, region_features, tile_features, write_geojson


def _iou(a, b) -> float:
    return shapely.intersection(a, b).area / shapely.union(a, b).area


@pytest.fixture(scope="module")
def annotations_dir(shared_data: Path) -> Path:
    return shared_data / "annotations"


# ----------------------------------------------------------------------------------------------- shared real files

# Counted by hand from the files (objects, and their classes / geometry types).
_EXPECTED = {
    "camelyon16-asap/tumor_009.xml": (6, {"Tumor": 6}),
    "camelyon16-ncrf-json/Tumor_081.json": (1, {"Tumor": 1}),
    "qupath-0.2-export/qupath-brush.json": (1, {None: 1}),
    "qupath-0.2-export/qupath-ellipse.json": (1, {None: 1}),
    "qupath-0.2-export/qupath-line.json": (1, {None: 1}),
    "qupath-0.2-export/qupath-multipoint.json": (1, {None: 1}),
    "qupath-0.2-export/qupath-point.json": (1, {None: 1}),
    "qupath-0.2-export/qupath-polygon-cell-classified.json": (4, {"Cell": 2, "Nucleus": 2}),
    "qupath-0.2-export/qupath-polygon.json": (1, {None: 1}),
    "qupath-0.2-export/qupath-polyline.json": (1, {None: 1}),
    "qupath-0.2-export/qupath-rectangle.json": (1, {None: 1}),
    "qupath-0.2-export/qupath-wand.json": (1, {None: 1}),
}
_TYPES = {
    "qupath-line.json": "LineString",
    "qupath-polyline.json": "LineString",
    "qupath-multipoint.json": "MultiPoint",
    "qupath-point.json": "Point",
}


def test_every_shared_annotation_file_is_expected(annotations_dir):
    found = {p.relative_to(annotations_dir).as_posix() for p in annotations_dir.rglob("*") if p.is_file()}
    assert found == set(_EXPECTED), "a shared annotation file was added or removed: update _EXPECTED"


@pytest.mark.parametrize("rel", sorted(_EXPECTED))
def test_shared_files_read(annotations_dir, rel):
    anns = read_annotations(annotations_dir / rel)
    n, classes = _EXPECTED[rel]
    assert len(anns) == n
    assert Counter(a.class_name for a in anns) == Counter(classes)
    expected_type = _TYPES.get(Path(rel).name)
    for a in anns:
        assert a.geometry.is_valid and not a.geometry.is_empty
        if expected_type:
            assert a.geometry.geom_type == expected_type
        else:
            assert a.geometry.geom_type in ("Polygon", "MultiPolygon") and a.geometry.area > 0
        assert a.object_type == "annotation"


def test_camelyon_asap_coordinates_and_names(annotations_dir):
    path = annotations_dir / "camelyon16-asap/tumor_009.xml"
    text = path.read_text()
    xs = [float(v) for v in re.findall(r' X="([^"]+)"', text)]
    ys = [float(v) for v in re.findall(r' Y="([^"]+)"', text)]
    anns = read_annotations(path)
    assert [a.name for a in anns] == [f"_{i}" for i in range(6)]
    lo = np.min([a.geometry.bounds[:2] for a in anns], axis=0)
    hi = np.max([a.geometry.bounds[2:] for a in anns], axis=0)
    assert lo.tolist() == [min(xs), min(ys)] and hi.tolist() == [max(xs), max(ys)]
    # Three of the six spline outlines self-intersect; repairing must not change their area noticeably.
    for a, el in zip(anns, re.findall(r"<Coordinates>(.*?)</Coordinates>", text, flags=re.S)):
        ring = [(float(x), float(y)) for x, y in re.findall(r'X="([^"]+)" Y="([^"]+)"', el)]
        raw = Polygon(ring)
        assert abs(a.geometry.area - abs(shapely.area(raw))) / a.geometry.area < 0.01


def test_qupath_02_classified_colors_and_names(annotations_dir):
    path = annotations_dir / "qupath-0.2-export/qupath-polygon-cell-classified.json"
    doc = json.loads(path.read_text())
    anns = read_annotations(path)
    assert [a.name for a in anns] == [f["properties"]["name"] for f in doc]
    # colorRGB is a packed signed int; QuPath wrote the same colour unpacked as the object colour.
    assert [a.color for a in anns] == [tuple(f["properties"]["color"]) for f in doc]


# ----------------------------------------------------------------------------------------------- round trips


def test_tiles_roundtrip_gz(tmp_path):
    rng = np.random.default_rng(0)
    coords = np.stack(np.meshgrid(np.arange(10), np.arange(7)), -1).reshape(-1, 2) * 224
    meas = {"tumor_probability": rng.random(len(coords)), "attention_score": rng.random(len(coords)) * 1e-3}
    meas["tumor_probability"][5] = np.nan
    path = write_geojson(tmp_path / "slide.tiles.geojson.gz", tile_features(coords, 224, meas))
    anns = read_annotations(path)
    assert len(anns) == len(coords)
    for i, a in enumerate(anns):
        assert a.object_type == "tile" and a.class_name is None
        assert _iou(a.geometry, box(*coords[i], *(coords[i] + 224))) >= 0.999
        for name, values in meas.items():
            if np.isfinite(values[i]):
                assert a.measurements[name] == pytest.approx(values[i], rel=1e-5)
            else:
                assert name not in a.measurements


def test_regions_roundtrip_real_lesions(tmp_path, annotations_dir):
    lesions = read_annotations(annotations_dir / "camelyon16-asap/tumor_009.xml")
    stats = [{"area_px2": a.geometry.area, "rank": float(i)} for i, a in enumerate(lesions)]
    feats = region_features([a.geometry for a in lesions], "Tumor", None, measurements=stats, locked=True)
    for f in feats:
        assert check_qupath_feature(f) == []
    back = read_annotations(write_geojson(tmp_path / "regions.geojson", feats))
    assert len(back) == len(lesions)
    for a, b, s in zip(lesions, back, stats):
        assert b.class_name == "Tumor" and b.color == (200, 0, 0)
        assert _iou(a.geometry, b.geometry) >= 0.999
        assert b.measurements == pytest.approx(s)


def test_tissue_roundtrip_with_holes_and_offset(tmp_path):
    # Tissue with a hole, on an MRXS-like slide whose QuPath origin is (bounds-x, bounds-y) = (300, 500).
    tissue = Polygon(box(300, 500, 5300, 4500).exterior.coords, [box(2000, 2000, 2500, 2600).exterior.coords])
    feats = region_features(tissue, "Tissue", (10, 200, 10), offset=(300, 500), slide_size=(5000, 4000))
    path = write_geojson(tmp_path / "tissue.geojson", feats)
    back = read_annotations(path, offset=(300, 500))  # back into OpenSlide level-0 coordinates
    (b,) = back
    assert b.class_name == "Tissue" and b.color == (10, 200, 10)
    assert _iou(b.geometry, tissue) >= 0.999 and len(b.geometry.interiors) == 1


def test_asap_roundtrip_keeps_holes_and_points(tmp_path, annotations_dir):
    lesions = read_annotations(annotations_dir / "camelyon16-asap/tumor_009.xml")
    holed = Annotation(Polygon(box(0, 0, 1000, 1000).exterior.coords, [box(200, 200, 400, 400).exterior.coords]),
                       "Tumor")
    extra = [holed, Annotation(Point(5, 6), "Marker"), Annotation(MultiPoint([(1, 2), (3, 4)]), None),
             Annotation(LineString([(0, 0), (10, 10)]), "Ruler")]
    path = write_asap_xml(tmp_path / "gt.xml", lesions + extra, group="_0")
    text = path.read_text()
    assert 'PartOfGroup="_2"' in text and 'PartOfGroup="_0"' in text
    back = read_annotations(path)
    assert _iou(tumor_geometry(back), tumor_geometry(lesions + [holed])) >= 0.999
    n_parts = sum(len(getattr(a.geometry, "geoms", [a.geometry])) for a in lesions)  # ASAP: one polygon per part
    assert Counter(a.class_name for a in back) == Counter({"Tumor": n_parts + 1, "Marker": 1, None: 1, "Ruler": 1})
    assert {a.geometry.geom_type for a in back if a.class_name != "Tumor"} == {"Point", "MultiPoint", "LineString"}
    holed_back = [a for a in back if a.class_name == "Tumor" and a.geometry.bounds == (0, 0, 1000, 1000)]
    assert len(holed_back) == 1 and holed_back[0].geometry.area == pytest.approx(1000 * 1000 - 200 * 200)


def test_ncrf_to_asap_roundtrip(tmp_path, annotations_dir):
    src = read_annotations(annotations_dir / "camelyon16-ncrf-json/Tumor_081.json")
    back = read_annotations(write_asap_xml(tmp_path / "t.xml", src))
    assert _iou(tumor_geometry(back), tumor_geometry(src)) >= 0.999


def test_asap_writer_refuses_what_it_cannot_hold(tmp_path):
    with pytest.raises(ConfigError, match="GeoJSON"):
        write_asap_xml(tmp_path / "a.xml", [Annotation(LineString([(0, 0), (1, 1), (2, 0)]), "Tumor")])
    holed = Polygon(box(0, 0, 10, 10).exterior.coords, [box(2, 2, 4, 4).exterior.coords])
    with pytest.raises(ConfigError, match="holes"):
        write_asap_xml(tmp_path / "a.xml", [Annotation(holed, "Stroma")])
    assert not (tmp_path / "a.xml").exists()


# ----------------------------------------------------------------------------------------------- ASAP and NCRF rules

_ASAP = """<?xml version="1.0"?>
<ASAP_Annotations><Annotations>
<Annotation Name="a" Type="Polygon" PartOfGroup="{g0}" Color="#F4FA58"><Coordinates>
<Coordinate Order="0" X="0" Y="0"/><Coordinate Order="2" X="100" Y="100"/>
<Coordinate Order="1" X="100" Y="0"/><Coordinate Order="3" X="0" Y="100"/></Coordinates></Annotation>
<Annotation Name="b" Type="Spline" PartOfGroup="_2" Color="#64FE2E"><Coordinates>
<Coordinate Order="0" X="40,5" Y="40"/><Coordinate Order="1" X="60" Y="40"/>
<Coordinate Order="2" X="60" Y="60"/><Coordinate Order="3" X="40,5" Y="60"/></Coordinates></Annotation>
<Annotation Name="c" Type="Dot" PartOfGroup="None" Color="#000000"><Coordinates>
<Coordinate Order="0" X="7" Y="8"/></Coordinates></Annotation>
</Annotations><AnnotationGroups><Group Name="{g0}" PartOfGroup="None" Color="#FF0000"><Attributes/></Group>
</AnnotationGroups></ASAP_Annotations>"""


@pytest.mark.parametrize("group", ["_0", "_1", "Tumor", "metastasis"])
def test_asap_exclusion_subtracted(tmp_path, group):
    p = tmp_path / "c16.xml"
    p.write_text(_ASAP.format(g0=group))
    anns = read_annotations(p)
    assert [a.class_name for a in anns] == ["Tumor", None]  # `_2` is gone, subtracted from the lesion
    lesion = anns[0].geometry
    assert lesion.area == pytest.approx(100 * 100 - 19.5 * 20)  # Order sorts the vertices; "40,5" is 40.5
    assert len(lesion.interiors) == 1
    assert anns[0].color == (255, 0, 0) and anns[1].geometry.equals(Point(7, 8))
    assert tumor_geometry(anns).area == pytest.approx(lesion.area)


def test_asap_class_map(tmp_path):
    p = tmp_path / "x.xml"
    p.write_text(_ASAP.format(g0="lesion"))
    plain = read_annotations(p)
    assert [a.class_name for a in plain] == ["lesion", None]
    assert plain[0].geometry.area == pytest.approx(10000)  # `_2` has no Tumor to cut: nothing subtracted
    mapped = read_annotations(p, class_map={"lesion": "Tumor"})
    assert mapped[0].class_name == "Tumor" and mapped[0].geometry.area < 10000
    dropped = read_annotations(p, class_map={"lesion": None, "_2": "Necrosis"})
    assert [a.class_name for a in dropped] == ["Necrosis", None]


def test_ncrf_negative_is_a_hole(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps({
        "positive": [{"name": "Annotation 0", "vertices": [[0, 0], [50, 0], [50, 50], [0, 50]]}],
        "negative": [{"name": "Annotation 1", "vertices": [[10, 10], [20, 10], [20, 20], [10, 20]]}],
    }))
    (a,) = read_annotations(p)
    assert a.class_name == "Tumor" and a.name == "Annotation 0" and a.geometry.area == pytest.approx(2400)


# ----------------------------------------------------------------------------------------------- GeoJSON forms

_POLY = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]}


def _write(tmp_path, obj, name="x.geojson") -> Path:
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


def test_geojson_top_level_forms(tmp_path):
    feature = {"type": "Feature", "geometry": _POLY, "properties": {"objectType": "detection"}}
    assert len(read_annotations(_write(tmp_path, _POLY))) == 1  # bare geometry: unclassified annotation
    assert read_annotations(_write(tmp_path, feature))[0].object_type == "detection"
    coll = {"type": "FeatureCollection", "features": [feature, feature]}
    assert len(read_annotations(_write(tmp_path, coll))) == 2
    assert len(read_annotations(_write(tmp_path, [feature, [feature, _POLY], {"type": "feature"}]))) == 3
    assert read_annotations(_write(tmp_path, {"type": "FeatureCollection"})) == []


def test_geojson_current_style_properties(tmp_path):
    f = {
        "type": "Feature", "id": "9a1c7a4e-0000-4000-8000-000000000000",
        "geometry": {"type": "MultiPolygon", "coordinates": [_POLY["coordinates"]], "plane": {"c": -1, "z": 0, "t": 0}},
        "properties": {
            "objectType": "tile", "name": "t1", "classification": {"names": ["Tumor", "Positive"], "color": [1, 2, 3]},
            "measurements": {"p": 0.25, "q": "NaN", "flag": True},
            "childObjects": [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2, 3]},
                              "properties": {"classification": "Stroma"}}],
        },
    }
    parent, child = read_annotations(_write(tmp_path, f))
    assert parent.object_type == "tile" and parent.name == "t1"
    assert parent.class_name == "Tumor: Positive" and parent.color == (1, 2, 3)
    assert parent.geometry.geom_type == "Polygon"  # one-part MultiPolygon
    assert parent.measurements["p"] == 0.25 and np.isnan(parent.measurements["q"]) and "flag" not in parent.measurements
    assert child.class_name == "Stroma" and child.geometry.equals(Point(1, 2)) and not child.geometry.has_z


def test_geojson_legacy_and_lenient_input(tmp_path):
    # QuPath 0.2 style: type from id, colorRGB, list measurements; NaN literal (QuPath's reader is lenient).
    text = ('{"type":"Feature","id":"PathDetectionObject","geometry":' + json.dumps(_POLY) + ','
            '"properties":{"classification":{"name":"Necrosis","colorRGB":-16711936},'
            '"measurements":[{"name":"area","value":100},{"name":"x","value":NaN}]}}')
    (a,) = read_annotations(_write(tmp_path, text, "legacy.json"))
    assert a.object_type == "detection" and a.class_name == "Necrosis" and a.color == (0, 255, 0)
    assert a.measurements["area"] == 100 and np.isnan(a.measurements["x"])


def test_geojson_collections_and_invalid_polygons_repaired(tmp_path):
    gc = {"type": "GeometryCollection", "geometries": [_POLY, {"type": "LineString", "coordinates": [[0, 0], [5, 5]]}]}
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]}
    a, b = read_annotations(_write(tmp_path, [gc, bowtie]))
    assert a.geometry.equals(box(0, 0, 10, 10))
    assert b.geometry.is_valid and b.geometry.area == pytest.approx(50)


def test_gz_detected_by_content(tmp_path):
    p = tmp_path / "x.json.gz"
    p.write_bytes(gzip.compress(json.dumps(_POLY).encode()))
    assert read_annotations(p)[0].geometry.area == 100
    q = tmp_path / "no-suffix"
    q.write_bytes(gzip.compress(json.dumps(_POLY).encode()))
    assert len(read_annotations(q)) == 1


@pytest.mark.parametrize(
    "content",
    ["hello", "{not json", "<svg></svg>", "<ASAP_Annotations><unclosed>",
     '{"positive": [{"name": "a"}]}'],
)
def test_unreadable_files_raise_annotation_error(tmp_path, content):
    p = _write(tmp_path, content, "bad.json")
    with pytest.raises(AnnotationError, match="bad.json") as err:
        read_annotations(p)
    assert isinstance(err.value, ValueError)


def test_tumor_geometry_union_minus_exclusions():
    anns = [Annotation(box(0, 0, 10, 10), "Tumor"), Annotation(box(5, 0, 15, 10), "Tumor"),
            Annotation(box(2, 2, 4, 4), EXCLUSION), Annotation(box(100, 100, 200, 200), "Stroma")]
    g = tumor_geometry(anns)
    assert isinstance(g, MultiPolygon) and g.is_valid
    assert g.area == pytest.approx(150 - 4)
    assert tumor_geometry([Annotation(box(0, 0, 1, 1), "Stroma")]).is_empty
