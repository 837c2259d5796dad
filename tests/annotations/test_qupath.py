"""QuPath GeoJSON writers: every rule of shared/docs/qupath-geojson.md that our output depends on."""

from __future__ import annotations

import gzip
import json
import math
import uuid

import numpy as np
import pytest
import shapely
from shapely.geometry import GeometryCollection, LineString, MultiPolygon, Point, Polygon, box, shape

from slidestream.errors import ConfigError
from slidestream.annotations import (
    GRID,
    check_qupath_feature,
    check_qupath_geojson,
    clean_polygonal,
    feature_collection,
    point_features,
    region_features,
    tile_features,
    tumor_regions,
    write_geojson,
)


def _strict_loads(text: str):
    """json.loads that refuses NaN / Infinity literals (what a strict consumer does)."""

    def refuse(token):
        raise AssertionError(f"non-strict JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def _read_back(path) -> dict:
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        raw = gzip.decompress(raw)
    return _strict_loads(raw.decode("utf-8"))


def _assert_qupath_ok(features, slide_size=None):
    for f in features:
        assert check_qupath_feature(f, slide_size) == [], f
        # never a GeometryCollection, anywhere in what we emit.
        assert f["geometry"]["type"] != "GeometryCollection"


def _grid(n_side: int, tile: int):
    ij = np.stack(np.meshgrid(np.arange(n_side), np.arange(n_side), indexing="xy"), -1).reshape(-1, 2)
    return ij * tile


# ---------------------------------------------------------------------------------------------------------- tiles


def test_tile_features_rectangles_measurements_and_ids():
    rng = np.random.default_rng(1)
    coords = _grid(12, 256)
    prob = rng.random(len(coords))
    prob[[3, 17, 50]] = [np.nan, np.inf, -np.inf]
    att = rng.random(len(coords)).astype(np.float32)
    feats = tile_features(coords, 256, {"tumor_probability": prob, "attention_score": att})

    assert len(feats) == len(coords)
    _assert_qupath_ok(feats)
    ids = [f["id"] for f in feats]
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 4 for i in ids)
    for (x, y), p, a, f in zip(coords.tolist(), prob, att, feats):
        assert f["properties"]["objectType"] == "tile"
        g = shape(f["geometry"])
        assert g.equals(box(x, y, x + 256, y + 256))
        m = f["properties"].get("measurements", {})
        if math.isfinite(p):
            assert m["tumor_probability"] == pytest.approx(p, rel=1e-5)
        else:
            assert "tumor_probability" not in m  # non-finite: omitted, never NaN
        assert m["attention_score"] == pytest.approx(float(a), rel=1e-5)


def test_tile_features_variable_size_and_detection_type():
    coords = np.array([[0, 0], [1000, 500]])
    feats = tile_features(coords, np.array([128, 512]), {"s": [0.1, 0.2]}, object_type="detection")
    assert [shape(f["geometry"]).area for f in feats] == [128 * 128, 512 * 512]
    assert {f["properties"]["objectType"] for f in feats} == {"detection"}


def test_tile_features_offset_and_clipping():
    # MRXS: QuPath's origin is (bounds-x, bounds-y) = (1000, 2000); slide is 1500 x 1200 in that frame.
    coords = np.array([[1000, 2000], [2400, 2000], [3000, 2000], [800, 2100], [700, 2100]])
    feats = tile_features(coords, 256, {"s": [1.0, 2.0, 3.0, 4.0, 5.0]}, offset=(1000, 2000), slide_size=(1500, 1200))
    _assert_qupath_ok(feats, slide_size=(1500, 1200))
    got = {f["properties"]["measurements"]["s"]: shape(f["geometry"]) for f in feats}
    assert set(got) == {1.0, 2.0, 4.0}  # tile 3 lies wholly right of the slide: dropped
    assert got[1.0].equals(box(0, 0, 256, 256))
    assert got[2.0].equals(box(1400, 0, 1500, 256))  # clipped at the right edge
    assert got[4.0].equals(box(0, 100, 56, 356))  # clipped at the left edge; tile 5 wholly left: dropped


def test_tile_features_reject_bad_input():
    with pytest.raises(ConfigError, match="Class probability"):
        tile_features(np.zeros((2, 2)), 256, {"Class probability": [0.1, 0.2]})
    with pytest.raises(ConfigError, match="reserved"):
        tile_features(np.zeros((2, 2)), 256, {"  class PROBABILITY ": [0.1, 0.2]})
    with pytest.raises(ConfigError, match="shape"):
        tile_features(np.zeros((2, 2)), 256, {"s": [0.1, 0.2, 0.3]})
    with pytest.raises(ConfigError, match="shape"):
        tile_features(np.zeros((2, 3)), 256, {})
    with pytest.raises(ConfigError, match="object_type"):
        tile_features(np.zeros((2, 2)), 256, {}, object_type="Tile")


# -------------------------------------------------------------------------------------------------------- regions


def test_bowtie_in_valid_out():
    bowtie = Polygon([(0, 0), (20, 20), (20, 0), (0, 20), (0, 0)])
    assert not bowtie.is_valid
    feats = region_features(bowtie, "Tumor", (200, 0, 0))
    assert len(feats) == 1
    _assert_qupath_ok(feats)
    g = shape(feats[0]["geometry"])
    assert g.is_valid and shapely.set_precision(g, GRID).is_valid
    assert g.area == pytest.approx(200.0)  # the two triangles


def test_self_overlapping_lasso_keeps_its_area():
    lasso = Polygon([(0, 0), (40, 0), (40, 40), (10, 40), (10, 10), (30, 10), (30, 30), (0, 30), (0, 0)])
    assert not lasso.is_valid
    (feat,) = region_features(lasso, "Tumor", None)
    _assert_qupath_ok([feat])
    assert shape(feat["geometry"]).area == pytest.approx(Polygon([(0, 0), (40, 0), (40, 40), (10, 40), (10, 30),
                                                                  (0, 30)]).area)


@pytest.mark.parametrize(
    "geom",
    [
        GeometryCollection([box(0, 0, 10, 10), LineString([(20, 20), (30, 30)]), Point(50, 50)]),
        # a zero-width spike: make_valid turns it into polygon + line
        Polygon([(0, 0), (10, 0), (10, 10), (10, 20), (10, 10), (0, 10), (0, 0)]),
        MultiPolygon([box(0, 0, 10, 10)]),
    ],
    ids=["collection", "spike", "one-part-multi"],
)
def test_never_geometry_collection_one_part_is_polygon(geom):
    (feat,) = region_features(geom, "Stroma", None)
    _assert_qupath_ok([feat])
    assert feat["geometry"]["type"] == "Polygon"
    assert shape(feat["geometry"]).equals(box(0, 0, 10, 10))


def test_overlapping_multipolygon_parts_are_merged():
    multi = MultiPolygon([box(0, 0, 10, 10), box(5, 5, 15, 15)])
    assert not multi.is_valid
    (feat,) = region_features(multi, "Tumor", None)
    _assert_qupath_ok([feat])
    assert shape(feat["geometry"]).area == pytest.approx(175.0)


def test_region_offset_and_clipping():
    poly = Polygon([(900, 900), (1300, 900), (1300, 1300), (900, 1300)])
    (feat,) = region_features(poly, "Tumor", None, offset=(100, 100), slide_size=(1000, 1000))
    _assert_qupath_ok([feat], slide_size=(1000, 1000))
    assert shape(feat["geometry"]).equals(box(800, 800, 1000, 1000))
    assert region_features(box(5000, 5000, 6000, 6000), "Tumor", None, slide_size=(1000, 1000)) == []


def test_slivers_dropped_and_grid_snapping_keeps_validity():
    # A 0.004 px sliver disappears on QuPath 0.6's grid (R-27): it must not be written.
    sliver = box(100, 0, 100.004, 50)
    feats = region_features(MultiPolygon([box(0, 0, 50, 50), sliver]), "Tumor", None)
    assert feats[0]["geometry"]["type"] == "Polygon"
    assert region_features(sliver, "Tumor", None) == []
    # A hole 0.004 px from the shell is valid in floats but snaps onto the shell edge.
    hole = [(4, 0.004), (6, 0.004), (5, 2)]
    near = Polygon(box(0, 0, 10, 10).exterior.coords, [hole])
    assert near.is_valid and not shapely.set_precision(near, GRID, mode="pointwise").is_valid
    (feat,) = region_features(near, "Tumor", None)
    _assert_qupath_ok([feat])
    g = shape(feat["geometry"])
    assert abs(g.area - near.area) < 0.05


def test_holes_are_kept():
    ring = Polygon(box(0, 0, 100, 100).exterior.coords, [box(40, 40, 60, 60).exterior.coords])
    (feat,) = region_features(ring, None, None)
    _assert_qupath_ok([feat])
    assert len(feat["geometry"]["coordinates"]) == 2  # shell + hole
    assert "classification" not in feat["properties"]  # unclassified: no classification at all, never null


@pytest.mark.parametrize(
    ("class_name", "color", "expect_name", "expect_color"),
    [
        ("Tumor", None, "Tumor", [200, 0, 0]),
        ("Tumor", "#00ff80", "Tumor", [0, 255, 128]),
        ("Lymphocytes", (1, 2, 3), "Lymphocytes", [1, 2, 3]),
        ("Tumor:Positive", None, "Tumor: Positive", None),
        ("My class", None, "My class", None),
    ],
)
def test_classification_always_has_name_and_color(class_name, color, expect_name, expect_color):
    for feats in (
        region_features(box(0, 0, 10, 10), class_name, color),
        point_features([[5, 5]], [0.5], class_name, color),
    ):
        cls = feats[0]["properties"]["classification"]
        assert cls["name"] == expect_name
        assert isinstance(cls["color"], list) and len(cls["color"]) == 3
        assert all(isinstance(c, int) and 0 <= c <= 255 for c in cls["color"])
        if expect_color is not None:
            assert cls["color"] == expect_color
        _assert_qupath_ok(feats)


@pytest.mark.parametrize("bad", ["", "  ", "a\nb", "Tumor:", (1, 2)])
def test_bad_class_names_refused(bad):
    with pytest.raises(ConfigError):
        region_features(box(0, 0, 10, 10), bad, None)


@pytest.mark.parametrize("bad", [(1, 2), (0, 0, 300), "red", "#12"])
def test_bad_colors_refused(bad):
    with pytest.raises(ConfigError):
        region_features(box(0, 0, 10, 10), "Tumor", bad)


def test_region_measurements_name_lock_and_force_color():
    feats = region_features(
        [box(0, 0, 10, 10), box(20, 20, 30, 30)], "Tumor", None, name="Predicted tumour",
        measurements=[{"area": 100.0, "bad": float("nan")}, {"area": 100.0, "n": np.int64(3)}],
        locked=True, force_color=True,
    )
    _assert_qupath_ok(feats)
    p0, p1 = (f["properties"] for f in feats)
    assert p0["measurements"] == {"area": 100.0}  # NaN omitted
    assert p1["measurements"] == {"area": 100.0, "n": 3}
    assert p0["isLocked"] is True and p0["name"] == "Predicted tumour"
    assert p0["color"] == p0["classification"]["color"]
    with pytest.raises(ConfigError, match="R-35"):
        region_features(box(0, 0, 10, 10), "Tumor", None, measurements={"Class Probability": 0.4})


def test_clean_polygonal_never_returns_collection():
    g = clean_polygonal(GeometryCollection([LineString([(0, 0), (1, 1)])]))
    assert g.is_empty and g.geom_type == "MultiPolygon"


# --------------------------------------------------------------------------------------------------------- points


def test_point_features():
    pts = np.array([[10.123, 20.0], [5000, 5000], [30, 40]])
    conf = np.array([0.9, 0.8, np.nan])
    feats = point_features(pts, conf, slide_size=(1000, 1000))
    _assert_qupath_ok(feats, slide_size=(1000, 1000))
    assert len(feats) == 2  # the point outside the slide is dropped
    assert feats[0]["geometry"] == {"type": "Point", "coordinates": [10.12, 20]}
    assert feats[0]["properties"]["measurements"] == {"confidence": 0.9}
    assert "measurements" not in feats[1]["properties"]
    assert feats[1]["properties"]["objectType"] == "annotation"
    det = point_features(pts[:1], conf[:1], object_type="detection", offset=(10, 0))
    assert det[0]["properties"]["objectType"] == "detection"
    assert det[0]["geometry"]["coordinates"] == [0.12, 20]


# ------------------------------------------------------------------------------------------------- tumour regions


def test_tumor_regions_union_holes_stats():
    ts = 100
    coords = _grid(8, ts)
    rng = np.random.default_rng(3)
    scores = rng.uniform(0.0, 0.3, len(coords))
    ix, iy = coords[:, 0] // ts, coords[:, 1] // ts
    ring = (ix >= 1) & (ix <= 3) & (iy >= 1) & (iy <= 3) & ~((ix == 2) & (iy == 2))  # 3x3 block minus centre
    single = (ix == 6) & (iy == 6)
    corner = (ix == 7) & (iy == 7)  # touches `single` only at a corner: its own region
    pos = ring | single | corner
    scores[pos] = rng.uniform(0.6, 1.0, pos.sum())
    scores[0] = np.nan

    regions = tumor_regions(coords, ts, scores, 0.5, mpp=0.25)
    assert len(regions) == 3
    big, stats = regions[0]
    assert big.is_valid and len(big.interiors) == 1  # the hole of the ring is kept
    assert stats["area_px2"] == pytest.approx(8 * ts * ts)
    assert stats["n_tiles"] == 8
    assert stats["mean_score"] == pytest.approx(scores[ring].mean())
    assert stats["max_score"] == pytest.approx(scores[ring].max())
    assert stats["area_um2"] == pytest.approx(8 * ts * ts * 0.25**2)
    assert stats["area_mm2"] == pytest.approx(stats["area_um2"] / 1e6)
    assert sorted(r[1]["mean_score"] for r in regions[1:]) == pytest.approx(sorted(scores[single | corner]))
    assert len(big.exterior.coords) == 5  # collinear staircase vertices dropped

    feats = [f for g, s in regions for f in region_features(g, "Tumor", None, measurements=s)]
    _assert_qupath_ok(feats)
    assert feats[0]["properties"]["measurements"]["n_tiles"] == 8
    assert tumor_regions(coords, ts, scores, 2.0) == []


def test_tumor_regions_tolerance_simplifies():
    ts = 10
    # a diagonal staircase of tiles
    coords = np.array([[i * ts, j * ts] for i in range(20) for j in range(20) if j <= i])
    exact = tumor_regions(coords, ts, np.ones(len(coords)), 0.5)[0][0]
    smooth = tumor_regions(coords, ts, np.ones(len(coords)), 0.5, tolerance=ts)[0][0]
    assert len(smooth.exterior.coords) < len(exact.exterior.coords)
    assert smooth.is_valid and abs(smooth.area - exact.area) / exact.area < 0.1


# -------------------------------------------------------------------------------------------------------- writing


@pytest.mark.parametrize("suffix", [".geojson", ".geojson.gz", ".json"])
def test_write_geojson_strict_compact_roundtrip(tmp_path, suffix):
    feats = tile_features(_grid(5, 64), 64, {"p": np.linspace(0, 1, 25)})
    feats += region_features(Polygon([(0, 0), (20, 20), (20, 0), (0, 20)]), "Tumor", None)
    feats += point_features([[1, 2]], [np.float32(0.5)])
    path = write_geojson(tmp_path / f"slide{suffix}", feats)
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == suffix.endswith(".gz")
    doc = _read_back(path)
    assert doc["type"] == "FeatureCollection"
    assert doc["features"] == json.loads(json.dumps(feats))
    assert check_qupath_geojson(path) == []
    text = gzip.decompress(raw).decode() if suffix.endswith(".gz") else raw.decode()
    assert ", " not in text and ": " not in text.replace("Tumor: ", "")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left


def test_write_geojson_accepts_collection_feature_and_generator(tmp_path):
    feats = region_features([box(0, 0, 5, 5), box(10, 10, 15, 15)], "Tumor", None)
    a = write_geojson(tmp_path / "a.geojson", feature_collection(feats))
    b = write_geojson(tmp_path / "b.geojson", (f for f in feats))
    c = write_geojson(tmp_path / "c.geojson", feats[0])
    assert _read_back(a) == _read_back(b)
    assert _read_back(c)["features"] == [feats[0]]


def test_write_geojson_refuses_nan_and_leaves_nothing(tmp_path):
    good = tile_features(np.zeros((1, 2)), 10, {"p": [0.5]})
    bad = {"type": "Feature", "id": "x", "geometry": good[0]["geometry"],
           "properties": {"measurements": {"p": float("nan")}}}
    target = tmp_path / "out.geojson.gz"
    target.write_bytes(b"previous")
    with pytest.raises(ConfigError, match="NaN"):
        write_geojson(target, good + [bad])
    assert target.read_bytes() == b"previous"  # atomic: the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.geojson.gz"]


def test_write_geojson_bad_suffix_and_check(tmp_path):
    feats = region_features(box(0, 0, 5, 5), "Tumor", None)
    with pytest.raises(ConfigError, match="geojson"):
        write_geojson(tmp_path / "out.txt", feats)
    with pytest.raises(ConfigError, match="R-32"):
        write_geojson(tmp_path / "out.geojson", feats, check=True, slide_size=(3, 3))
    assert not (tmp_path / "out.geojson").exists()


# ----------------------------------------------------------------------------------------------------- the checker


_GOOD = {
    "type": "Feature",
    "id": "3f0c6b2e-8a5e-4a53-9b0f-1b8f3c2d4e5f",
    "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]},
    "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]},
                   "measurements": {"a": 1.0}},
}


def _bad(**changes):
    f = json.loads(json.dumps(_GOOD))
    for key, value in changes.items():
        target, _, name = key.rpartition("__")
        obj = f
        for part in filter(None, target.split("__")):
            obj = obj[part]
        if value is _DELETE:
            del obj[name]
        else:
            obj[name] = value
    return f


_DELETE = object()


@pytest.mark.parametrize(
    ("feature", "rule"),
    [
        (_bad(id=None), "R-05"),
        (_bad(geometry=_DELETE), "R-06"),
        (_bad(geometry=None), "R-06"),
        (_bad(properties=None), "R-08"),
        (_bad(properties__objectType="tmaCore"), "R-11"),
        (_bad(properties__objectType="Tile"), "R-10"),
        (_bad(properties__objectType=None), "R-09"),
        (_bad(properties__classification={"name": "Tumor"}), "R-12"),
        (_bad(properties__classification=3), "R-12"),
        (_bad(properties__classification={"name": "Tu\nmor", "color": [1, 2, 3]}), "R-14"),
        (_bad(properties__classification={"name": "Tumor", "color": [1, 2]}), "R-13"),
        (_bad(properties__classification={"name": "Tumor", "color": "#ff0000"}), "R-13"),
        (_bad(properties__color="#ff0000"), "R-16"),
        (_bad(properties__name=None), "R-17"),
        (_bad(properties__isLocked="yes"), "R-18"),
        (_bad(properties__measurements={"a": float("nan")}), "R-19"),
        (_bad(properties__measurements={"a": "0.5"}), "R-19"),
        (_bad(properties__measurements=[{"name": "a", "value": 1}]), "R-19"),
        (_bad(properties__measurements={"Class probability": 0.5}), "R-35"),
        (_bad(geometry={"type": "GeometryCollection", "geometries": []}), "R-24"),
        (_bad(geometry={"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10]]]}), "R-26"),
        (_bad(geometry={"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [0, 0]]]}), "R-26"),
        (_bad(geometry={"type": "Polygon", "coordinates": [[[0, 0], [9, 9], [9, 0], [0, 9], [0, 0]]]}), "R-27"),
        (_bad(geometry={"type": "Polygon", "coordinates": [[[0, 0], [0.004, 0], [0.004, 50], [0, 50], [0, 0]]]}),
         "R-27"),
        (_bad(geometry={"type": "Point", "coordinates": [1, 2], "plane": {"c": -1, "z": 0, "t": 0}}), "R-29"),
        (_bad(geometry={"type": "Circle", "coordinates": [1, 2]}), "R-23"),
        (_bad(geometry={"type": "Point", "coordinates": [1]}), "R-25"),
        (_bad(geometry={"type": "Point", "coordinates": [5, 3e7]}), "R-28"),
    ],
)
def test_checker_flags_each_rule(feature, rule):
    problems = check_qupath_feature(feature)
    assert any(p.startswith(rule) for p in problems), problems


def test_checker_accepts_good_and_checks_slide_bounds():
    assert check_qupath_feature(_GOOD) == []
    assert check_qupath_feature(_GOOD, slide_size=(10, 10)) == []
    assert any(p.startswith("R-32") for p in check_qupath_feature(_GOOD, slide_size=(5, 50)))
    child = _bad(properties__childObjects=[_bad(id=None)])
    assert any(p.startswith("child 0: R-05") for p in check_qupath_feature(child))


@pytest.mark.parametrize("width", [0.004, 0.02, 1.0, 256.0])
def test_checker_rectangle_fast_path_agrees_with_shapely(width):
    rect = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
        [[10, 10], [10 + width, 10], [10 + width, 60], [10, 60], [10, 10]]]}}
    g = shapely.geometry.shape(rect["geometry"])
    snapped = shapely.set_precision(g, GRID)
    expect_ok = g.is_valid and not snapped.is_empty and snapped.is_valid
    assert (check_qupath_feature(rect) == []) == expect_ok


def test_check_geojson_file_refuses_nan_literals(tmp_path):
    p = tmp_path / "nan.geojson"
    p.write_text('{"type":"FeatureCollection","features":[{"type":"Feature","geometry":{"type":"Point",'
                 '"coordinates":[1,2]},"properties":{"measurements":{"a":NaN}}}]}')
    assert check_qupath_geojson(p)[0].startswith("R-02")
    assert check_qupath_geojson({"type": "FeatureCollection", "features": [_GOOD, _bad(id=None)]}) == [
        "feature 1: R-05: id must be a string (a UUID), got None"
    ]
