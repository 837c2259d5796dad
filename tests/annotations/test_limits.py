"""Caps on reading annotation files: bytes after decompression, vertices, and self-crossings before a repair."""

from __future__ import annotations

import gzip
import json
import time

import numpy as np
import pytest
import shapely
from shapely.geometry import LineString, MultiPolygon, Polygon

from slidestream.annotations import AnnotationError, read_annotations
from slidestream.annotations.limits import LimitExceeded, check_crossings


def _feature(coords, kind="Polygon"):
    return {"type": "Feature", "geometry": {"type": kind, "coordinates": coords},
            "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}}}


def _brute_crossings(geometry) -> int:
    edges = []
    for k, ring in enumerate(shapely.get_rings(shapely.get_parts(geometry))):
        xy = shapely.get_coordinates(ring)
        edges += [(k, i, len(xy) - 1, LineString(xy[i:i + 2])) for i in range(len(xy) - 1)]
    count = 0
    for a in range(len(edges)):
        for b in range(a + 1, len(edges)):
            (ra, ia, na, ea), (rb, ib, _, eb) = edges[a], edges[b]
            if ra == rb and (ib - ia == 1 or (ia == 0 and ib == na - 1)):
                continue  # neighbours share a vertex
            count += ea.intersects(eb)
    return count


def test_crossings_match_a_brute_force_count():
    rng = np.random.default_rng(7)
    for trial in range(40):
        n = int(rng.integers(4, 60))
        xy = rng.integers(0, 30, (n, 2)).astype(float) if trial % 2 else rng.uniform(0, 100, (n, 2))
        geometry = Polygon(xy)
        if trial % 5 == 0:  # a hole that may cross the shell, and a second part that may overlap it
            geometry = MultiPolygon([Polygon(xy, [rng.uniform(0, 100, (5, 2))]), Polygon(rng.uniform(0, 100, (6, 2)))])
        assert check_crossings(geometry, 10**9) == _brute_crossings(geometry), trial


def test_a_scribble_is_refused_at_once_and_a_large_benign_twist_is_counted():
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    with pytest.raises(LimitExceeded, match="crosses itself more than 10,000 times") as info:
        check_crossings(Polygon(rng.uniform(0, 1e5, (200_000, 2))), 10_000)
    assert info.value.option == "max_crossings" and time.perf_counter() - t0 < 10
    t = np.linspace(0, 2 * np.pi, 200_000, endpoint=False)
    figure8 = Polygon(np.c_[1e4 * np.sin(t), 1e4 * np.sin(t) * np.cos(t)])
    assert not figure8.is_valid and check_crossings(figure8, 10) == 1


def test_a_gzip_bomb_stops_at_the_byte_cap(tmp_path):
    path = tmp_path / "bomb.geojson.gz"
    with gzip.open(path, "wb") as f:  # 8 MiB of JSON in a file of a few KiB
        f.write(b'{"type": "FeatureCollection", "features": [' + b" " * (8 << 20) + b"]}")
    assert path.stat().st_size < 50_000
    with pytest.raises(AnnotationError, match="decompresses to more than 1,048,576 bytes") as info:
        read_annotations(path, max_bytes=1 << 20)
    assert "max_bytes=" in str(info.value) and str(path) in str(info.value)
    assert read_annotations(path, max_bytes=16 << 20) == []  # raised cap: read as what it is
    plain = tmp_path / "big.geojson"
    plain.write_bytes(b" " * (2 << 20) + b"[]")
    with pytest.raises(AnnotationError, match="is more than"):
        read_annotations(plain, max_bytes=1 << 20)


def test_damaged_gzip_is_named(tmp_path):
    path = tmp_path / "cut.geojson.gz"
    path.write_bytes(gzip.compress(json.dumps(_feature([[[0, 0], [9, 0], [9, 9], [0, 0]]])).encode())[:30])
    with pytest.raises(AnnotationError, match="damaged gzip data"):
        read_annotations(path)


def test_vertex_cap_in_json_and_xml(tmp_path):
    ring = [[float(np.cos(a) * 1e3), float(np.sin(a) * 1e3)] for a in np.linspace(0, 2 * np.pi, 3000)]
    ring[-1] = ring[0]
    path = tmp_path / "dense.geojson"
    path.write_text(json.dumps(_feature([ring])))
    with pytest.raises(AnnotationError, match="more than 500") as info:
        read_annotations(path, max_vertices=500)
    assert "max_vertices=" in str(info.value)
    many = tmp_path / "many.geojson"  # 60,000 vertices: refused before parsing, from the count of numbers
    many.write_text(json.dumps(_feature([[[float(i), float(i % 7)] for i in range(60_000)]])))
    with pytest.raises(AnnotationError, match="more than 100 vertices \\(over 100,400 numbers\\)"):
        read_annotations(many, max_vertices=100)
    with pytest.raises(AnnotationError, match="holds 3,000 vertices, more than 2,000"):
        read_annotations(path, max_vertices=2000)  # exact count after parsing
    assert len(read_annotations(path, max_vertices=3000)) == 1
    coords = "".join(f'<Coordinate Order="{i}" X="{x}" Y="{y}" />' for i, (x, y) in enumerate(ring[:-1]))
    xml = tmp_path / "dense.xml"
    xml.write_text(f'<?xml version="1.0"?><ASAP_Annotations><Annotations><Annotation Name="a" Type="Polygon" '
                   f'PartOfGroup="Tumor"><Coordinates>{coords}</Coordinates></Annotation></Annotations>'
                   '</ASAP_Annotations>')
    with pytest.raises(AnnotationError, match="more than 1,000 vertices"):
        read_annotations(xml, max_vertices=1000)
    assert read_annotations(xml)[0].class_name == "Tumor"


def test_xml_entities_are_refused(tmp_path):
    path = tmp_path / "laughs.xml"
    path.write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>'
                    "<ASAP_Annotations>&b;</ASAP_Annotations>")
    with pytest.raises(AnnotationError, match="entity declarations"):
        read_annotations(path)


def test_a_self_intersecting_scribble_is_refused_not_repaired(tmp_path):
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 1e4, (3000, 2)).round(1).tolist()  # make_valid would need minutes and gigabytes
    path = tmp_path / "scribble.geojson"
    path.write_text(json.dumps(_feature([xy + [xy[0]]])))
    t0 = time.perf_counter()
    with pytest.raises(AnnotationError, match="crosses itself more than 10,000 times") as info:
        read_annotations(path)
    assert time.perf_counter() - t0 < 5 and "max_crossings=" in str(info.value)
    few = xy[:40] + [xy[0]]  # a small scribble is repaired as before
    path.write_text(json.dumps(_feature([few])))
    (ann,) = read_annotations(path)
    assert ann.geometry.is_valid and ann.geometry.area > 0


def test_polygons_are_built_as_shapely_builds_them(tmp_path):
    shell = [[0, 0, 1], [100, 0, 1], [100, 80, 1], [0, 80, 1], [0, 0, 1]]
    hole = [[10, 10], [20, 10], [20, 20], [10, 20], [10, 10]]
    other = [[200, 0], [260, 0], [260, 50], [200, 0]]
    for geometry in ({"type": "Polygon", "coordinates": [shell, hole]},
                     {"type": "MultiPolygon", "coordinates": [[shell, hole], [other]]}):
        path = tmp_path / "shapes.geojson"
        path.write_text(json.dumps({"type": "Feature", "geometry": geometry, "properties": {}}))
        (ann,) = read_annotations(path)
        expected = shapely.force_2d(shapely.geometry.shape(geometry))
        assert ann.geometry.equals(expected) and ann.geometry.geom_type == expected.geom_type
