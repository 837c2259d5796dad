"""The CAMELYON16-like preset: layout, file formats, class proportions, hard content, determinism, difficulty."""

from __future__ import annotations

import csv
import hashlib
import json
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np
import openslide
import pytest
import shapely
import tiffslide
from click.testing import CliRunner

from slidestream.annotations import read_annotations
from slidestream.errors import ConfigError
from slidestream.synth.camelyon16 import (
    CENTRES,
    Camelyon16Preset,
    _look,
    camelyon16_scene,
    plan_camelyon16,
    slide_geometry,
    write_camelyon16,
)
from slidestream.synth.lesions import largest_dimension_um, lesion_class
from slidestream.wsi import open_slide

# small slides hold no macro-metastasis (> 2 mm): the tiny sets have micro-metastases and ITC only
TINY = Camelyon16Preset(n_train_normal=2, n_train_tumor=2, n_test_normal=1, n_test_tumor=2, slide_mm=(0.9, 0.6),
                        lesion_mix=(0.0, 0.5, 0.5), tile_size=256, seed=3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("c16") / "set"
    write_camelyon16(out, TINY)
    return out


def _rows(path: Path, header: bool = True) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f)) if header else list(csv.reader(f))


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- layout and formats


def test_layout_is_the_official_one(tiny):
    files = set(_tree(tiny))
    assert {"training/normal/normal_001.tif", "training/normal/normal_002.tif", "training/tumor/tumor_001.tif",
            "training/tumor/tumor_002.tif", "training/lesion_annotations/tumor_001.xml",
            "training/lesion_annotations/tumor_002.xml", "testing/images/test_001.tif",
            "testing/images/test_002.tif", "testing/images/test_003.tif", "testing/reference.csv",
            "truth.csv", "preset.json"} == files - {f for f in files if f.startswith("testing/lesion_annotations/")}
    truth = {r["slide"]: r for r in _rows(tiny / "truth.csv")}
    test_tumours = sorted(s for s, r in truth.items() if r["split"] == "test" and r["label"] == "1")
    assert len(test_tumours) == 2
    assert sorted(f for f in files if f.startswith("testing/lesion_annotations/")) == [
        f"testing/lesion_annotations/{s}.xml" for s in test_tumours]
    assert json.loads((tiny / "preset.json").read_text())["seed"] == 3


def test_reference_csv_has_the_camelyon16_rows(tiny):
    truth = {r["slide"]: r for r in _rows(tiny / "truth.csv")}
    rows = _rows(tiny / "testing" / "reference.csv", header=False)
    assert [r[0] for r in rows] == ["test_001", "test_002", "test_003"]  # no header, lower-case names
    for name, cls, kind, size in rows:
        t = truth[name]
        assert cls == ("Tumor" if t["label"] == "1" else "Normal")
        assert kind == {"micro": "Micro", "itc": "ITC", "macro": "Macro", "none": ""}[t["largest_lesion"]]
        assert size == ("" if t["label"] == "0" else str(round(float(t["largest_lesion_um"]))))


def test_every_slide_is_a_generic_tiff_with_its_centres_pixel_size(tiny):
    truth = _rows(tiny / "truth.csv")
    assert {float(r["mpp"]) for r in truth} == {0.243, 0.226}
    for r in truth:
        path = tiny / r["path"]
        mpp = float(r["mpp"])
        with openslide.OpenSlide(path) as s:
            assert s.properties["openslide.vendor"] == "generic-tiff"
            assert float(s.properties["openslide.mpp-x"]) == pytest.approx(mpp, rel=1e-4)
            assert s.level_dimensions[0] == (int(r["width"]), int(r["height"]))
            assert s.level_count >= 2 and s.level_downsamples[1] == pytest.approx(2, rel=0.01)
            assert "tiff.ImageDescription" not in s.properties
            levels = s.level_dimensions
        with tiffslide.TiffSlide(path) as t:
            assert t.properties["tiffslide.mpp-x"] == pytest.approx(mpp, rel=1e-4)
            assert tuple(tuple(d) for d in t.level_dimensions) == levels
        for backend in ("openslide", "tiffslide"):
            with open_slide(path, backend=backend) as sl:
                assert sl.vendor == "generic-tiff"
                assert sl.mpp == pytest.approx(mpp, rel=1e-4)
        # the same width in mm at either pixel size
        assert int(r["width"]) * mpp == pytest.approx(TINY.slide_mm[0] * 1000, abs=1)


def test_lesion_xml_is_asap_with_camelyon16_groups(tiny):
    truth = {r["slide"]: r for r in _rows(tiny / "truth.csv")}
    specs = {s.name: s for s in plan_camelyon16(TINY)}
    for xml in sorted(tiny.rglob("lesion_annotations/*.xml")):
        root = ET.parse(xml).getroot()
        assert root.tag == "ASAP_Annotations"
        groups = {a.get("PartOfGroup") for a in root.iter("Annotation")}
        assert groups <= {"_0", "_1", "_2"} and groups & {"_0", "_1"}
        assert {a.get("Color") for a in root.iter("Annotation") if a.get("PartOfGroup") != "_2"} == {"#F4FA58"}
        anns = read_annotations(xml)
        assert anns and {a.class_name for a in anns} == {"Tumor"}
        scene = camelyon16_scene(specs[xml.stem], TINY)
        outline = shapely.union_all([les.outline for les in scene.lesions])
        got = shapely.union_all([a.geometry for a in anns])
        assert got.symmetric_difference(outline).area < 1e-3 * outline.area
        assert truth[xml.stem]["label"] == "1"


def test_the_bench_reads_the_set_as_camelyon16(tiny):
    from slidestream.pipeline.bench import benchmark_inputs

    truth = {r["slide"]: r for r in _rows(tiny / "truth.csv")}
    inputs = benchmark_inputs(tiny)
    assert sorted(i.slide_id for i in inputs) == sorted(truth)
    for it in inputs:
        t = truth[it.slide_id]
        assert it.label == int(t["label"]) and it.split == t["split"]
        assert (it.annotation is not None) == (t["label"] == "1")


def test_truth_agrees_with_the_pixels(tiny):
    # the recorded areas and classes are those of the painted lesions, and stained cells lie there
    truth = [r for r in _rows(tiny / "truth.csv") if r["label"] == "1"]
    specs = {s.name: s for s in plan_camelyon16(TINY)}
    for r in truth:
        scene = camelyon16_scene(specs[r["slide"]], TINY)
        mm2 = (scene.cfg.mpp / 1000) ** 2
        assert float(r["tumor_mm2"]) == pytest.approx(sum(les.geometry.area for les in scene.lesions) * mm2,
                                                      rel=1e-3)
        assert r["largest_lesion"] == max(scene.lesions, key=lambda les: les.largest_um).kind
        assert float(r["tumor_fraction"]) == pytest.approx(float(r["tumor_mm2"]) / float(r["tissue_mm2"]), rel=1e-3)
        x0, y0, x1, y1 = (int(v) for v in scene.lesions[0].geometry.bounds)
        with openslide.OpenSlide(tiny / r["path"]) as s:
            px = np.asarray(s.read_region((x0, y0), 0, (x1 - x0 + 1, y1 - y0 + 1)).convert("RGB")).astype(float)
        assert px.mean() < 215  # stained cells, not glass


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_other_seed_other_files(tmp_path):
    small = replace(TINY, n_train_normal=1, n_train_tumor=0, n_test_normal=0, n_test_tumor=1, slide_mm=(0.6, 0.6))
    write_camelyon16(tmp_path / "a", small, workers=1)
    write_camelyon16(tmp_path / "b", small, workers=2)
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert a == b and len(a) == 6  # 2 slides, 1 lesion XML, reference.csv, truth.csv, preset.json
    write_camelyon16(tmp_path / "c", replace(small, seed=4))
    c = _tree(tmp_path / "c")
    assert set(c) == set(a)
    assert all(c[k] != a[k] for k in a if k.endswith(".tif"))


def test_rendering_does_not_depend_on_blocks():
    spec = next(s for s in plan_camelyon16(replace(TINY, slide_mm=(0.8, 0.6))) if s.label)
    spec.artefacts = {"fold": True, "blur": True, "bubble": True, "pen": True}
    scene = camelyon16_scene(spec, TINY)
    assert scene.artefacts.blurs and scene.artefacts.folds and scene.artefacts.bubbles
    x0, y0, x1, y1 = (int(v) for v in scene.artefacts.blurs[0].bounds)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    big = scene.paint(cx - 300, cy - 200, 600, 400)
    for dx, dy, w, h in [(0, 0, 301, 199), (301, 0, 299, 400), (17, 199, 250, 201)]:
        np.testing.assert_array_equal(scene.paint(cx - 300 + dx, cy - 200 + dy, w, h), big[dy : dy + h, dx : dx + w])


# --------------------------------------------------------------------------- what makes it hard


def test_plan_keeps_the_camelyon16_proportions():
    preset = Camelyon16Preset()
    specs = plan_camelyon16(preset)
    train = [s for s in specs if s.split == "train"]
    test = [s for s in specs if s.split == "test"]
    n_norm, n_tum = sum(not s.label for s in train), sum(s.label for s in train)
    assert 40 <= len(train) <= 60 and 30 <= len(test) <= 40
    assert n_norm / n_tum == pytest.approx(160 / 110, rel=0.1)
    assert sum(not s.label for s in test) / sum(s.label for s in test) == pytest.approx(80 / 49, rel=0.1)
    for group in (train, test):
        tum = [s for s in group if s.label]
        shares = {k: sum(s.largest == k for s in tum) / len(tum) for k in ("macro", "micro", "itc")}
        assert shares["macro"] == pytest.approx(0.5, abs=0.05)
        assert shares["micro"] == pytest.approx(0.4, abs=0.05)
        assert shares["itc"] == pytest.approx(0.1, abs=0.05)
        assert sum(s.centre is CENTRES[0] for s in group) / len(group) == pytest.approx(0.6, abs=0.05)
    # test slides are numbered in mixed order, as in CAMELYON16
    labels = [s.label for s in sorted(test, key=lambda s: s.name)]
    assert labels != sorted(labels) and labels != sorted(labels, reverse=True)
    assert [s.name for s in train[:2]] == ["normal_001", "normal_002"]


def test_lesion_sizes_are_real_and_tumour_is_often_under_one_percent():
    preset = Camelyon16Preset()
    fractions = {}
    for spec in (s for s in plan_camelyon16(preset) if s.label):
        anatomy, lesions, _ = slide_geometry(spec)
        for les in lesions:
            assert les.kind == lesion_class(largest_dimension_um(les.outline, spec.centre.mpp))
            assert les.geometry.difference(anatomy.node).area < 1.0
        largest = max(lesions, key=lambda les: les.largest_um)
        assert largest.kind == spec.largest
        if spec.largest == "macro":
            assert 2000 < largest.largest_um < 2500
        elif spec.largest == "micro":
            assert 200 < largest.largest_um <= 2000
        else:
            assert largest.largest_um <= 200
        fractions[spec.name] = sum(les.geometry.area for les in lesions) / anatomy.tissue.area
    small = [f for f in fractions.values() if f < 0.01]
    assert len(small) >= 4  # ITC slides and the smallest micro-metastases
    assert min(fractions.values()) < 0.002 and max(fractions.values()) > 0.1


def test_normal_slides_hold_tumour_look_alikes():
    preset = Camelyon16Preset()
    normals = [s for s in plan_camelyon16(preset) if not s.label][:12]
    gcs = [len(slide_geometry(s)[0].germinal_centres) for s in normals]
    assert sum(g > 0 for g in gcs) >= 8
    # a germinal centre is a pale nodule of larger cells in the dark cortex, like a metastasis
    spec = next(s for s, g in zip(normals, gcs, strict=True) if g)
    scene = camelyon16_scene(spec, preset)
    gc = max(scene.anatomy.germinal_centres, key=lambda g: g.area)
    cx, cy = (int(v) for v in gc.centroid.coords[0])
    pale = scene.paint(cx - 60, cy - 60, 120, 120)[..., :3].astype(float)
    cortex = scene.anatomy.node.buffer(-200).difference(shapely.union_all(scene.anatomy.follicles).buffer(100))
    cortex = cortex.difference(scene.anatomy.sinus.buffer(100))
    px, py = cortex.representative_point().coords[0]
    dark = scene.paint(int(px) - 60, int(py) - 60, 120, 120)[..., :3].astype(float)
    assert pale.mean() > dark.mean() + 5


def test_difficulty_changes_what_it_says():
    easy, hard = Camelyon16Preset(difficulty=0.1), Camelyon16Preset(difficulty=0.9)
    e_specs, h_specs = plan_camelyon16(easy), plan_camelyon16(hard)
    # same slides, labels and lesion classes: only their look changes
    assert [(s.name, s.label, s.largest) for s in e_specs] == [(s.name, s.label, s.largest) for s in h_specs]
    grade = {n: np.mean([_look(s).tumor_grade for s in ss if s.label]) for n, ss in (("e", e_specs), ("h", h_specs))}
    assert grade["h"] < grade["e"] - 0.2
    spread = {n: np.std([np.log(_look(s).h_gain) for s in ss if s.centre is CENTRES[0]])
              for n, ss in (("e", e_specs), ("h", h_specs))}
    assert spread["h"] > 1.5 * spread["e"]
    arts = {n: sum(sum(s.artefacts.values()) for s in ss) for n, ss in (("e", e_specs), ("h", h_specs))}
    assert arts["h"] > 1.5 * arts["e"]
    micro = {}
    gcs = {}
    for n, ss in (("e", e_specs), ("h", h_specs)):
        geo = [slide_geometry(s) for s in ss if s.split == "train"]
        gcs[n] = sum(len(a.germinal_centres) for a, _, _ in geo)
        micro[n] = np.median([les.largest_um for _, ls, _ in geo for les in ls if les.kind == "micro"])
    assert gcs["h"] > 1.5 * gcs["e"]
    assert micro["h"] < micro["e"]


def test_bad_presets_are_refused(tmp_path):
    for change in (dict(difficulty=1.5), dict(n_train_normal=-1), dict(lesion_mix=(0, 0, 0)),
                   dict(slide_mm=(0.2, 0.2)), dict(tile_size=100), dict(n_train_normal=0, n_train_tumor=0)):
        with pytest.raises(ConfigError):
            write_camelyon16(tmp_path / "x", replace(TINY, **change))
    # slides of another run would join the set: refused, nothing written
    stray = tmp_path / "z" / "training" / "normal" / "normal_099.tif"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"x")
    with pytest.raises(ConfigError, match="normal_099.tif"):
        write_camelyon16(tmp_path / "z", TINY)
    assert sorted(p.name for p in (tmp_path / "z").rglob("*") if p.is_file()) == ["normal_099.tif"]
    # a macro-metastasis does not fit a 0.9 mm slide: said, not silently shrunk
    with pytest.raises(ConfigError, match="macro"):
        write_camelyon16(tmp_path / "y", replace(TINY, lesion_mix=(1, 0, 0)))
    assert not (tmp_path / "y").exists()


def test_cli_writes_the_preset(tmp_path):
    from slidestream.cli.main import main

    res = CliRunner().invoke(main, ["synth", str(tmp_path / "set"), "--dataset", "--preset", "camelyon16",
                                   "--normal", "1", "--tumor", "1", "--test-normal", "0", "--test-tumor", "1",
                                   "--slide-mm", "0.8", "0.6", "--difficulty", "0.3", "--seed", "5",
                                   "--lesion-mix", "0", "1", "1"])
    assert res.exit_code == 0, res.output
    truth = _rows(tmp_path / "set" / "truth.csv")
    assert [r["slide"] for r in truth] == ["normal_001", "tumor_001", "test_001"]
    assert {r["difficulty"] for r in truth} == {"0.3"}
    assert (tmp_path / "set" / "training" / "tumor" / "tumor_001.tif").is_file()
