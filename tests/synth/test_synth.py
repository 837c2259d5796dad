"""Synthetic Aperio SVS writer: readers agree with it, pixels match the ground truth, files are valid."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np
import openslide
import pytest
import shapely
import tifffile
import tiffslide
from shapely.geometry import Polygon, box
from skimage.color import rgb2hed

from slidestream.errors import ConfigError
from slidestream.synth import slide as synth_slide
from slidestream.synth import (
    SynthConfig,
    render_synthetic_region,
    write_synthetic_dataset,
    write_synthetic_slide,
)

# small but with two pyramid levels, tumours and pen marks
CFG = SynthConfig(width=2304, height=2048, tumor=True, n_tumors=2, pen_marks=True, n_pen=3, seed=7)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return write_synthetic_slide(out / "tumor.svs", CFG)


@pytest.fixture(scope="module")
def level0(slide):
    with openslide.OpenSlide(slide.path) as s:
        return np.asarray(s.read_region((0, 0), 0, (slide.width, slide.height)).convert("RGB"))


def _pixels_in(img: np.ndarray, geom, step: int = 3) -> np.ndarray:
    """RGB of the pixels (on a grid of ``step``) whose centres lie in ``geom``; ``(N, 3)``."""
    h, w = img.shape[:2]
    ys, xs = np.mgrid[0:h:step, 0:w:step]
    inside = shapely.contains_xy(geom, xs.ravel() + 0.5, ys.ravel() + 0.5).reshape(xs.shape)
    return img[ys[inside], xs[inside]]


def _md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------- readers


def test_openslide_sees_aperio_with_mpp_and_objective(slide):
    with openslide.OpenSlide(slide.path) as s:
        props = s.properties
        assert props["openslide.vendor"] == "aperio"
        assert float(props["openslide.mpp-x"]) == pytest.approx(0.25)
        assert float(props["openslide.mpp-y"]) == pytest.approx(0.25)
        assert props["aperio.AppMag"] == "40"
        assert float(props["openslide.objective-power"]) == 40
        assert s.level_dimensions == ((2304, 2048), (576, 512))
        assert s.level_downsamples == pytest.approx((1.0, 4.0))
        # the smallest level is below thumbnail_size, so the thumbnail is that level re-encoded
        thumb = np.asarray(s.associated_images["thumbnail"].convert("RGB")).astype(int)
        assert thumb.shape == (512, 576, 3)
        lvl1 = np.asarray(s.read_region((0, 0), 1, (576, 512)).convert("RGB"))
        assert np.abs(thumb - lvl1).mean() < 2.0
    assert slide.level_dimensions == [(2304, 2048), (576, 512)]


def test_pyramid_dimensions_follow_the_downsample(tmp_path):
    cfg = SynthConfig(width=5000, height=3001, level_downsample=2, min_level_size=600, seed=3)
    s = write_synthetic_slide(tmp_path / "p.svs", cfg)
    expected = [(5000, 3001), (2500, 1501), (1250, 751), (625, 376)]
    assert s.level_dimensions == expected
    with openslide.OpenSlide(s.path) as o:
        assert list(o.level_dimensions) == expected
    with tiffslide.TiffSlide(s.path) as t:
        assert [tuple(d) for d in t.level_dimensions] == expected


def test_generic_layout_is_a_plain_tiled_pyramid(tmp_path):
    cfg = SynthConfig(width=2304, height=1536, mpp=0.226, tile_size=512, level_downsample=2, min_level_size=500,
                      layout="generic", tumor=True, n_tumors=1, seed=9)
    s = write_synthetic_slide(tmp_path / "g.tif", cfg)
    with openslide.OpenSlide(s.path) as o:
        assert o.properties["openslide.vendor"] == "generic-tiff"
        assert float(o.properties["openslide.mpp-x"]) == pytest.approx(0.226, rel=1e-5)
        assert o.level_dimensions == ((2304, 1536), (1152, 768), (576, 384))
        assert "tiff.ImageDescription" not in o.properties and not o.associated_images
        assert o.properties["tiff.ResolutionUnit"] == "centimeter"
        px = np.asarray(o.read_region((0, 0), 0, (2304, 1536)).convert("RGB")).astype(int)
    with tiffslide.TiffSlide(s.path) as t:
        assert [tuple(d) for d in t.level_dimensions] == [(2304, 1536), (1152, 768), (576, 384)]
        assert t.properties["tiffslide.mpp-x"] == pytest.approx(0.226, rel=1e-5)
    with tifffile.TiffFile(s.path) as tf:
        assert [p.subfiletype for p in tf.pages] == [0, 1, 1]
        assert all(p.is_tiled and p.tilewidth == 512 for p in tf.pages)
    assert np.abs(px - render_synthetic_region(cfg, (0, 0), (2304, 1536))).mean() < 2.5
    with pytest.raises(ConfigError, match="layout"):
        write_synthetic_slide(tmp_path / "x.tif", replace(cfg, layout="ndpi"))


def test_tiffslide_reads_the_same_pixels(slide, level0):
    with tiffslide.TiffSlide(slide.path) as t:
        assert t.properties["tiffslide.vendor"] == "aperio"
        assert t.properties["tiffslide.mpp-x"] == pytest.approx(0.25)
        assert t.properties["tiffslide.objective-power"] == pytest.approx(40)
        assert [tuple(d) for d in t.level_dimensions] == [(2304, 2048), (576, 512)]
        region = np.asarray(t.read_region((0, 0), 0, (slide.width, slide.height)))[..., :3]
    assert np.abs(region.astype(int) - level0).mean() < 0.5


# --------------------------------------------------------------------------- pixels


def test_level0_matches_the_rendering(slide, level0):
    painted = render_synthetic_region(CFG, (0, 0), (slide.width, slide.height))
    diff = np.abs(level0.astype(np.int16) - painted)
    # JPEG q80 with 4:2:0 chroma: small mean error, colours not swapped or shifted
    assert diff.mean() < 2.5
    assert np.abs(level0.reshape(-1, 3).mean(0) - painted.reshape(-1, 3).mean(0)).max() < 1.0


def test_reduced_level_is_the_box_mean_of_level0(slide):
    painted = render_synthetic_region(CFG, (0, 0), (slide.width, slide.height)).astype(np.float64)
    box_mean = painted.reshape(512, 4, 576, 4, 3).mean(axis=(1, 3))
    with openslide.OpenSlide(slide.path) as s:
        lvl1 = np.asarray(s.read_region((0, 0), 1, (576, 512)).convert("RGB")).astype(np.float64)
    assert np.abs(lvl1 - box_mean).mean() < 3.0


def test_rendering_does_not_depend_on_block_boundaries():
    big = render_synthetic_region(CFG, (0, 0), (1536, 1536))
    # odd offsets and sizes, crossing nucleus bands (256 rows) and tiles
    for x, y, w, h in [(301, 517, 333, 250), (0, 250, 700, 20), (1000, 1, 17, 1500)]:
        part = render_synthetic_region(CFG, (x, y), (w, h))
        np.testing.assert_array_equal(part, big[y : y + h, x : x + w])


def test_background_is_bright_and_tissue_darker(slide, level0):
    glass = box(0, 0, slide.width, slide.height).difference(slide.tissue.buffer(60))
    for pen in slide.pen:
        glass = glass.difference(pen.buffer(4))
    bg = _pixels_in(level0, glass).astype(float)
    tissue = _pixels_in(level0, slide.tissue.buffer(-4)).astype(float)
    assert bg.shape[0] > 1000 and tissue.shape[0] > 1000
    assert np.all((bg.mean(0) >= 233) & (bg.mean(0) <= 247))
    assert bg.std(0).max() < 4
    assert tissue.mean(1).mean() < bg.mean(1).mean() - 40
    # eosin-dominated tissue is pinkish: red above green
    assert tissue[:, 0].mean() > tissue[:, 1].mean() + 20


def test_tumour_is_darker_and_more_hematoxylin(slide, level0):
    assert len(slide.tumors) == 2
    tumor = shapely.union_all([t.buffer(-20) for t in slide.tumors])
    normal = slide.tissue.buffer(-20).difference(shapely.union_all([t.buffer(60) for t in slide.tumors]))
    normal = normal.difference(shapely.union_all([p.buffer(10) for p in slide.pen]))
    t_px = _pixels_in(level0, tumor)
    n_px = _pixels_in(level0, normal)
    assert t_px.shape[0] > 1000 and n_px.shape[0] > 1000
    assert t_px.mean() < n_px.mean() - 15
    h_tumor = rgb2hed(t_px[None])[0, :, 0].mean()
    h_normal = rgb2hed(n_px[None])[0, :, 0].mean()
    assert h_tumor > h_normal + 0.02


def test_tumour_nuclei_are_denser_and_larger(slide, level0):
    from skimage.measure import label, regionprops

    ys, xs = np.mgrid[0 : slide.height, 0 : slide.width]
    tumor = shapely.union_all([t.buffer(-20) for t in slide.tumors])
    normal = slide.tissue.buffer(-20).difference(shapely.union_all([t.buffer(60) for t in slide.tumors]))
    normal = normal.difference(shapely.union_all([p.buffer(10) for p in slide.pen]))
    # hematoxylin absorbs red: nuclei are the only tissue pixels this dark in red (stroma ~215)
    nuclear = level0[..., 0] < 160
    stats = {}
    for name, geom in [("tumor", tumor), ("normal", normal)]:
        inside = shapely.contains_xy(geom, xs + 0.5, ys + 0.5)
        areas = [r.area for r in regionprops(label(nuclear & inside)) if r.area >= 10]
        stats[name] = (nuclear[inside].mean(), np.median(areas))
    assert stats["tumor"][0] > 4 * stats["normal"][0]  # denser
    assert stats["tumor"][1] > 2 * stats["normal"][1]  # larger (and crowded, so touching)


def test_a_simple_classifier_separates_tumour_tiles(slide, level0):
    t = 64
    ys, xs = (g.ravel() for g in np.mgrid[0 : slide.height - t + 1 : t, 0 : slide.width - t + 1 : t])
    cells = shapely.box(xs, ys, xs + t, ys + t)
    tumor = shapely.union_all(slide.tumors)
    usable = shapely.contains(slide.tissue, cells) & ~shapely.intersects(shapely.union_all(slide.pen), cells)
    label = np.where(shapely.contains(tumor, cells), 1, np.where(shapely.intersects(tumor.buffer(30), cells), -1, 0))
    keep = usable & (label >= 0)
    feats = []
    for x, y in zip(xs[keep], ys[keep], strict=True):
        tile = level0[y : y + t, x : x + t].reshape(-1, 3).astype(float)
        feats.append(np.concatenate([tile.mean(0), tile.std(0)]))
    labels = label[keep]
    assert labels.sum() >= 20 and (labels == 0).sum() >= 20
    # nearest centroid on standardised colour mean/std, trained on every other tile
    feats = np.array(feats)
    feats = (feats - feats.mean(0)) / feats.std(0)
    train = np.arange(labels.size) % 2 == 0
    centroids = np.stack([feats[train & (labels == k)].mean(0) for k in (0, 1)])
    pred = np.argmin(((feats[~train, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (pred == labels[~train]).mean() > 0.9


def test_pen_pixels_have_the_ink_colour(slide, level0):
    assert len(slide.pen) == 3 and len(slide.pen_colors) == 3
    others = [shapely.union_all([p for j, p in enumerate(slide.pen) if j != i]) for i in range(3)]
    for i, (pen, color) in enumerate(zip(slide.pen, slide.pen_colors, strict=True)):
        own = pen.buffer(-3).difference(others[i].buffer(3)) if not others[i].is_empty else pen.buffer(-3)
        px = _pixels_in(level0, own, step=2).astype(float)
        assert px.shape[0] > 200
        r, g, b = px.mean(0)
        if color == "blue":
            assert b > r + 40 and b > g + 30
        elif color == "green":
            assert g > r + 30 and g > b + 20
        else:
            assert max(r, g, b) < 110
        # ink darkens what is under it
        assert px.mean() < 200


def test_ground_truth_geometry_is_consistent(slide):
    assert slide.tissue.is_valid and slide.tissue.area > 0.1 * slide.width * slide.height
    frame = box(0, 0, slide.width, slide.height)
    assert frame.contains(slide.tissue)
    for t in slide.tumors:
        assert isinstance(t, Polygon) and t.is_valid
        # tumours lie inside the tissue (up to the 0.01 px vertex rounding)
        assert t.difference(slide.tissue).area < 1.0
    for p in slide.pen:
        assert isinstance(p, Polygon) and p.is_valid and frame.buffer(0.01).contains(p)
        # strokes reach both tissue and glass
        assert p.intersects(slide.tissue)


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_other_seed_other_pixels(tmp_path):
    cfg = SynthConfig(width=1024, height=768, tumor=True, n_tumors=1, seed=11)
    # the file name is part of the Aperio description, so equal bytes need equal names
    for d in "abc":
        (tmp_path / d).mkdir()
    a = write_synthetic_slide(tmp_path / "a" / "s.svs", cfg)
    b = write_synthetic_slide(tmp_path / "b" / "s.svs", cfg)
    c = write_synthetic_slide(tmp_path / "c" / "s.svs", replace(cfg, seed=12))
    assert _md5(a.path) == _md5(b.path)
    assert a.xml_path.read_bytes() == b.xml_path.read_bytes()
    assert a.geojson_path.read_bytes() == b.geojson_path.read_bytes()
    assert _md5(a.path) != _md5(c.path)
    with openslide.OpenSlide(a.path) as sa, openslide.OpenSlide(c.path) as sc:
        pa = np.asarray(sa.read_region((0, 0), 0, (1024, 768)))
        pc = np.asarray(sc.read_region((0, 0), 0, (1024, 768)))
    assert np.abs(pa.astype(int) - pc).mean() > 5
    assert not a.tissue.equals(c.tissue)


def test_disk_spool_gives_the_same_file(tmp_path, monkeypatch):
    cfg = SynthConfig(width=2048, height=1024, level_downsample=2, min_level_size=200, seed=5)
    (tmp_path / "ram").mkdir()
    (tmp_path / "disk").mkdir()
    ram = write_synthetic_slide(tmp_path / "ram" / "s.svs", cfg)
    monkeypatch.setattr(synth_slide, "_SPOOL_RAM_BYTES", 0)
    disk = write_synthetic_slide(tmp_path / "disk" / "s.svs", cfg)
    assert len(ram.level_dimensions) == 4
    assert _md5(ram.path) == _md5(disk.path)
    # temporary spools and partial files are gone
    assert [p.name for p in (tmp_path / "disk").iterdir()] == ["s.svs"]


def test_odd_size_smaller_than_a_tile(tmp_path):
    cfg = SynthConfig(width=333, height=201, tile_size=256, seed=2, n_tissue=1)
    s = write_synthetic_slide(tmp_path / "tiny.svs", cfg)
    with openslide.OpenSlide(s.path) as o:
        assert o.level_dimensions == ((333, 201),)
        px = np.asarray(o.read_region((0, 0), 0, (333, 201)).convert("RGB")).astype(int)
    assert np.abs(px - render_synthetic_region(cfg, (0, 0), (333, 201))).mean() < 2.5


# --------------------------------------------------------------------------- annotation files


def test_asap_xml_holds_the_tumour_polygons(slide):
    root = ET.parse(slide.xml_path).getroot()
    assert root.tag == "ASAP_Annotations"
    anns = root.findall("./Annotations/Annotation")
    assert len(anns) == len(slide.tumors) == 2
    for ann, truth in zip(anns, slide.tumors, strict=True):
        assert ann.get("Type") == "Polygon" and ann.get("PartOfGroup") == "Tumor"
        coords = sorted(ann.findall("./Coordinates/Coordinate"), key=lambda c: int(c.get("Order")))
        assert [int(c.get("Order")) for c in coords] == list(range(len(coords)))
        poly = Polygon([(float(c.get("X")), float(c.get("Y"))) for c in coords])
        assert poly.is_valid and poly.exterior.is_closed
        assert poly.symmetric_difference(Polygon(truth.exterior)).area < 1e-3 * truth.area
    assert [g.get("Name") for g in root.findall("./AnnotationGroups/Group")] == ["Tumor"]


def test_geojson_is_a_qupath_feature_collection(slide):
    def no_nan(token):
        raise ValueError(f"non-standard JSON constant {token}")

    doc = json.loads(slide.geojson_path.read_text(), parse_constant=no_nan)
    assert doc["type"] == "FeatureCollection"
    assert len(doc["features"]) == len(slide.tumors)
    for feat, truth in zip(doc["features"], slide.tumors, strict=True):
        assert feat["type"] == "Feature"
        props = feat["properties"]
        assert props["objectType"] == "annotation"
        assert props["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
        assert feat["geometry"]["type"] == "Polygon"
        rings = feat["geometry"]["coordinates"]
        for ring in rings:
            assert ring[0] == ring[-1] and len(ring) >= 4
        poly = shapely.geometry.shape(feat["geometry"])
        assert poly.is_valid
        assert poly.symmetric_difference(truth).area < 1e-3 * truth.area


def test_normal_slide_has_no_annotation_files(tmp_path):
    s = write_synthetic_slide(tmp_path / "n.svs", SynthConfig(width=1024, height=1024, seed=4))
    assert s.tumors == [] and s.label == 0
    assert s.xml_path is None and s.geojson_path is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.svs"]


# --------------------------------------------------------------------------- dataset


def test_dataset_names_labels_and_annotations(tmp_path):
    calls = []
    cfg = SynthConfig(width=1024, height=1024, n_tissue=1)
    csv_path = write_synthetic_dataset(
        tmp_path / "ds", n_normal=2, n_tumor=2, config=cfg, seed=3,
        progress=lambda i, n, name: calls.append((i, n, name)),
    )
    out = tmp_path / "ds"
    assert csv_path == out / "labels.csv"
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["slide"] for r in rows] == ["normal_001.svs", "normal_002.svs", "tumor_001.svs", "tumor_002.svs"]
    assert [r["label"] for r in rows] == ["0", "0", "1", "1"]
    assert [r["annotation"] for r in rows] == ["", "", "annotations/tumor_001.xml", "annotations/tumor_002.xml"]
    assert calls == [(1, 4, "normal_001"), (2, 4, "normal_002"), (3, 4, "tumor_001"), (4, 4, "tumor_002")]
    assert sorted(p.name for p in (out / "annotations").iterdir()) == [
        "tumor_001.geojson", "tumor_001.xml", "tumor_002.geojson", "tumor_002.xml",
    ]
    hashes = set()
    for r in rows:
        with openslide.OpenSlide(out / r["slide"]) as s:
            assert s.properties["openslide.vendor"] == "aperio"
            hashes.add(hashlib.md5(np.asarray(s.read_region((0, 0), 0, (1024, 1024))).tobytes()).hexdigest())
        if r["annotation"]:
            assert len(ET.parse(out / r["annotation"]).getroot().findall("./Annotations/Annotation")) >= 1
    assert len(hashes) == 4  # per-slide seeds differ


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "change",
    [dict(tile_size=100), dict(mpp=0), dict(jpeg_quality=0), dict(level_downsample=3), dict(width=0),
     dict(tumor_diameter_um=(300, 100)), dict(n_tissue=0)],
)
def test_bad_config_is_refused(tmp_path, change):
    with pytest.raises(ConfigError):
        write_synthetic_slide(tmp_path / "x.svs", replace(SynthConfig(width=512, height=512), **change))
    assert list(tmp_path.iterdir()) == []


def test_missing_output_folder_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        write_synthetic_slide(tmp_path / "nope" / "x.svs", SynthConfig(width=512, height=512))


# --------------------------------------------------------------------------- scale


# ru_maxrss survives execve on Linux (the child would report pytest's own peak): read VmHWM instead
_RSS_SCRIPT = """
import resource, sys, time
from pathlib import Path
from slidestream.synth import SynthConfig, write_synthetic_slide
n = int(sys.argv[2])
t = time.perf_counter()
write_synthetic_slide(sys.argv[1], SynthConfig(width=n, height=n, tumor=True, pen_marks=True, seed=1))
dt = time.perf_counter() - t
status = Path("/proc/self/status")
if status.exists():
    kib = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
else:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(kib // 1024, dt)
"""


@pytest.mark.slow
def test_large_slide_is_written_with_bounded_memory(tmp_path):
    n = 20_000
    path = tmp_path / "big.svs"
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(path), str(n)],
                         capture_output=True, text=True, check=True)
    peak_mib, seconds = out.stdout.split()
    # level 0 alone would be 1.1 GiB of RGB
    assert int(peak_mib) < 500, out.stdout
    with openslide.OpenSlide(path) as s:
        assert s.level_dimensions[0] == (n, n)
        assert s.level_dimensions[1] == (n // 4, n // 4)
        assert s.properties["openslide.vendor"] == "aperio"
        corner = np.asarray(s.read_region((n - 256, n - 256), 0, (256, 256)).convert("RGB"))
    assert corner.min() > 200  # glass in the corner, tiles up to the last one are present
    assert math.isfinite(float(seconds))
