"""The whole path, thin but real: synthetic slides → stores → handcrafted features → ABMIL → GeoJSON/PNG/CSV."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from slidestream.pipeline.inputs import collect_inputs
from slidestream.cli.main import main
from slidestream.pipeline.demo import DemoConfig, run_demo
from slidestream.errors import ConfigError
from slidestream.pipeline import tile_batch
from slidestream.tiling.grid import TilingParams
from slidestream.store import SlideStore
from slidestream.annotations import check_qupath_geojson


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cfg = DemoConfig(preset=None, n_normal=5, n_tumor=5, slide_size=3072, epochs=15, folds=2)
    return run_demo(out, cfg)


def test_demo_learns_and_writes_every_output(small_demo):
    res = small_demo
    assert res.test_auc["auc_defined"] and res.test_auc["auc"] >= 0.75
    sens = [res.froc["sensitivity"][k] for k in ("0.25", "0.5", "1", "2", "4", "8")]
    assert sens == sorted(sens), "sensitivity can only grow with the false positives allowed"
    assert res.froc["froc"] == pytest.approx(sum(sens) / 6)
    for p in res.listed_outputs:
        assert p.exists(), p
    assert (res.out_dir / "roc.png").read_bytes()[:4] == b"\x89PNG"
    with open(res.predictions_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    for r in rows:
        p = float(r["calibrated_probability"])
        assert 0 <= p <= 1
    tumour = [float(r["calibrated_probability"]) for r in rows if r["label"] == "1"]
    normal = [float(r["calibrated_probability"]) for r in rows if r["label"] == "0"]
    assert min(tumour) > max(normal) - 0.5  # a loose check; the AUC above is the real one
    assert (res.checkpoint / "model.safetensors").is_file() and (res.checkpoint / "config.json").is_file()
    report = res.report.read_text()
    for r in rows:  # the report's table shows each held-out slide's numbers as predictions.csv has them
        line = (f"| {r['slide_id']} | {r['label']} | {float(r['probability']):.3f} | "
                f"{float(r['calibrated_probability']):.3f} | {float(r['uncertainty']):.3f} |")
        assert line in report
    assert f"**slide AUC {res.test_auc['auc']:.3f}**" in report


def test_demo_geojson_follows_the_qupath_rules(small_demo):
    for slide_id, paths in small_demo.outputs.items():
        store = SlideStore.open(small_demo.out_dir / "stores" / f"{slide_id}.zarr")
        w, h = store.slide["dimensions"]
        doc = json.loads(paths["geojson"].read_text(), parse_constant=lambda c: pytest.fail(f"non-strict {c}"))
        assert doc["type"] == "FeatureCollection"
        assert check_qupath_geojson(doc, slide_size=(w, h)) == []
        tiles = [f for f in doc["features"] if f["properties"].get("objectType") == "tile"]
        assert len(tiles) == store.n_tiles
        for f in tiles:
            m = f["properties"]["measurements"]
            assert set(m) == {"attention", "attention_normalized"}
            assert all(np.isfinite(v) for v in m.values())
        tissue = [f for f in doc["features"] if (f["properties"].get("classification") or {}).get("name") == "Tissue"]
        assert tissue and all(f["properties"]["objectType"] == "annotation" for f in tissue)
        assert paths["heatmap"].stat().st_size > 10_000
        assert paths["heatmap"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_attention_is_higher_inside_ground_truth_tumour(small_demo):
    from shapely.geometry import box

    from slidestream.annotations import read_annotations, tumor_geometry

    slides = small_demo.out_dir / "slides"
    for slide_id in small_demo.outputs:
        if not slide_id.startswith("tumor"):
            continue
        tumour = tumor_geometry(read_annotations(slides / "annotations" / f"{slide_id}.xml"))
        store = SlideStore.open(small_demo.out_dir / "stores" / f"{slide_id}.zarr")
        att = store.read_scores("bench")[:, 0]
        e = store.tiling["extent0"]
        inside = np.array([box(x, y, x + e, y + e).intersection(tumour).area > 0.5 * e * e for x, y in store.coords])
        assert inside.any() and (~inside).any()
        assert att[inside].mean() > att[~inside].mean()


def test_run_command_processes_new_slides_and_reports_bad_ones(small_demo, tmp_path, slides_dir):
    new = tmp_path / "new"
    new.mkdir()
    shutil.copy(small_demo.out_dir / "slides" / "tumor_001.svs", new / "case_a.svs")
    shutil.copy(slides_dir / "openslide-fixtures" / "unreadable.svs", new / "broken.svs")
    result = CliRunner().invoke(main, ["run", str(new), "--model", str(small_demo.checkpoint),
                                       "--out", str(tmp_path / "res"), "--weights", "none"])
    assert result.exit_code == 1, result.output
    assert "broken" in result.output and "Bogus marker" in result.output
    assert "Traceback" not in result.output
    rows = list(csv.DictReader(open(tmp_path / "res" / "predictions.csv")))
    assert [r["slide_id"] for r in rows] == ["case_a"]
    assert (tmp_path / "res" / "case_a.geojson").is_file()
    record = json.loads((tmp_path / "res" / "run-run.json").read_text())
    assert any(s["slide_id"] == "broken" and s["status"] == "failed" for s in record["slides"])


def test_batch_with_malformed_fixtures_goes_on(slides_dir, tmp_path):
    inputs = collect_inputs([slides_dir / "openslide-fixtures", slides_dir / "CMU-1-Small-Region.svs"])
    outcomes = tile_batch(inputs, tmp_path, TilingParams(mpp=0.5, tile_size=224))
    by = {Path(o.path).stem: o for o in outcomes if not o.path.endswith(".png")}
    assert by["CMU-1-Small-Region"].status == "ok" and by["CMU-1-Small-Region"].details["tiles"] > 20
    assert by["unreadable"].status == "failed" and "unreadable.svs" in by["unreadable"].error
    assert by["unopenable"].status == "failed" and "52479" in by["unopenable"].error
    # boxes.tiff is 352 µm/px: far too coarse for 0.5 µm/px tiles, refused with the reason
    assert by["boxes"].status == "failed" and "never upsamples" in by["boxes"].error
    record = json.loads((tmp_path / "run-tile.json").read_text())
    assert record["counts"]["failed"] >= 3 and record["counts"]["ok"] >= 1


def test_collect_inputs_dedupes_and_never_merges_different_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "slide.svs").write_bytes(b"x")
    items = collect_inputs([tmp_path / "a", tmp_path / "a" / "slide.svs", tmp_path / "b" / "slide.svs"])
    assert len(items) == 2
    assert len({it.slide_id for it in items}) == 2 and all(it.slide_id.startswith("slide-") for it in items)
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide,label,split,site\na/slide.svs,1,train,X\n")
    (it,) = collect_inputs([manifest])
    bad = tmp_path / "bad.csv"
    for evil in ("../escape", "a/b", ".hidden"):
        bad.write_text(f"slide,slide_id\na/slide.svs,{evil}\n")
        with pytest.raises(ConfigError, match="not a safe file name"):
            collect_inputs([bad])
    assert it.label == 1 and it.split == "train" and it.meta == {"site": "X"} and it.path == tmp_path / "a/slide.svs"


def test_version_is_the_installed_one():
    import importlib.metadata

    import slidestream

    # __init__.py holds the version and pyproject.toml reads it from there: the two cannot disagree after an install
    assert importlib.metadata.version("slidestream") == slidestream.__version__
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and slidestream.__version__ in result.output


def test_console_command_exits_hard_but_completely(cmu_slide, tmp_path):
    """``console`` (the installed ``slidestream``) skips the interpreter's teardown, not output, exit codes or exit
    handlers."""
    import subprocess
    import sys

    marker = tmp_path / "atexit-ran"
    prog = (f"import atexit, pathlib; atexit.register(pathlib.Path({str(marker)!r}).touch); "
            "from slidestream.cli.main import console; console()")
    done = subprocess.run([sys.executable, "-c", prog, "info", "--json", str(cmu_slide)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["slides"][0]["dimensions"] == [2220, 2967]  # all of it, flushed
    assert marker.exists()
    done = subprocess.run([sys.executable, "-c", prog, "info", str(tmp_path / "missing.svs")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and "missing.svs" in done.stdout + done.stderr


def test_info_prints_one_line_per_bad_file(slides_dir):
    files = sorted(str(p) for p in slides_dir.rglob("*") if p.is_file())
    result = CliRunner().invoke(main, ["info", *files])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "CMU-1-Small-Region.svs" in result.output and "0.499" in result.output
    bad = [line for line in result.output.splitlines() if line.startswith("✗")]
    assert len(bad) == 4, bad  # unopenable, unreadable, cells-2c (2 channels), cells.ome (planar)
    result = CliRunner().invoke(main, ["info", "--json", str(slides_dir / "CMU-1-Small-Region.svs")])
    assert result.exit_code == 0
    (desc,) = json.loads(result.output)["slides"]
    assert desc["dimensions"] == [2220, 2967] and desc["vendor"] == "aperio"


def test_heatmap_command_from_scores_and_from_features(small_demo, tmp_path):
    stores = small_demo.out_dir / "stores"
    # From stored scores: GeoJSON only, with high-attention regions.
    test_stores = [str(stores / f"{sid}.zarr") for sid in small_demo.outputs]
    r = CliRunner().invoke(main, ["heatmap", *test_stores, "--model", "bench", "--out", str(tmp_path / "a"),
                                  "--format", "geojson", "--threshold", "0.5"])
    assert r.exit_code == 0, r.output
    files = sorted((tmp_path / "a").glob("*.geojson"))
    assert len(files) == 4 and not list((tmp_path / "a").glob("*.png"))
    doc = json.loads(files[0].read_text())
    assert check_qupath_geojson(doc) == []
    assert any(f["properties"].get("name") == "High attention" for f in doc["features"])
    # From features with a checkpoint, under a new score name: PNG only.
    r = CliRunner().invoke(main, ["heatmap", str(stores), "--checkpoint", str(small_demo.checkpoint),
                                  "--model", "again", "--out", str(tmp_path / "b"), "--format", "png"])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "b").glob("*.heatmap.png"))) == 10
    test_store = SlideStore.open(stores / f"{next(iter(small_demo.outputs))}.zarr")
    assert np.allclose(test_store.read_scores("again"), test_store.read_scores("bench"), atol=1e-6)


def test_train_and_predict_commands_with_stratified_metrics(small_demo, tmp_path):
    slides = small_demo.out_dir / "slides"
    rows = list(csv.DictReader(open(slides / "labels.csv")))
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slide", "label", "site"])
        for i, r in enumerate(rows):
            w.writerow([str(slides / r["slide"]), r["label"], "A" if i % 2 else "B"])
    stores = small_demo.out_dir / "stores"
    ckpt = tmp_path / "ckpt"
    r = CliRunner().invoke(main, ["train", str(manifest), "--stores", str(stores), "--encoder", "handcrafted",
                                  "--out", str(ckpt), "--folds", "2", "--epochs", "10"])
    assert r.exit_code == 0, r.output
    assert "out-of-fold AUC" in r.output and (ckpt / "model.safetensors").is_file()
    r = CliRunner().invoke(main, ["predict", str(manifest), "--stores", str(stores), "--model", str(ckpt),
                                  "--out", str(tmp_path / "pred"), "--by", "site"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "pred" / "metrics.json").read_text())
    assert metrics["overall"]["n"] == 10 and set(metrics["groups"]) == {"A", "B"}
    assert metrics["overall"]["auc"] >= 0.75
    for png in ("roc.png", "reliability.png"):
        assert (tmp_path / "pred" / png).read_bytes()[:4] == b"\x89PNG"
    preds = list(csv.DictReader(open(tmp_path / "pred" / "predictions.csv")))
    assert {p["site"] for p in preds} == {"A", "B"} and all(p["prediction"] in ("0", "1") for p in preds)


def test_embed_with_stain_normalisation_on_the_fly(small_demo, tmp_path):
    sid = next(iter(small_demo.outputs))
    src = small_demo.out_dir / "stores" / f"{sid}.zarr"
    copy = tmp_path / f"{sid}.zarr"
    shutil.copytree(src, copy)
    before = SlideStore.open(copy).read_features("handcrafted")
    r = CliRunner().invoke(main, ["embed", str(copy), "--encoder", "handcrafted", "--stain", "macenko",
                                  "--overwrite"])
    assert r.exit_code == 0, r.output
    store = SlideStore.open(copy)
    after = store.read_features("handcrafted")
    assert after.shape == before.shape and not np.allclose(after, before)
    assert "macenko" in json.dumps(dict(store.group["features/handcrafted"].attrs))


def test_tile_command_with_roi_and_tissue_export(cmu_slide, tmp_path):
    from shapely.geometry import box

    from slidestream.annotations import region_features, write_geojson

    roi = tmp_path / "roi.geojson"
    write_geojson(roi, region_features(box(0, 1400, 2220, 2967), "Region", (0, 0, 255)))
    r = CliRunner().invoke(main, ["tile", str(cmu_slide), "--out", str(tmp_path / "a"), "--roi", str(roi),
                                  "--export-tissue"])
    assert r.exit_code == 0, r.output
    full = CliRunner().invoke(main, ["tile", str(cmu_slide), "--out", str(tmp_path / "b")])
    assert full.exit_code == 0
    part = SlideStore.open(tmp_path / "a" / "CMU-1-Small-Region.zarr")
    whole = SlideStore.open(tmp_path / "b" / "CMU-1-Small-Region.zarr")
    assert 0 < part.n_tiles < whole.n_tiles
    assert (part.coords[:, 1] + part.tiling["extent0"] / 2 >= 1400).all()
    doc = json.loads((tmp_path / "a" / "CMU-1-Small-Region.tissue.geojson").read_text())
    assert check_qupath_geojson(doc) == [] and doc["features"][0]["properties"]["classification"]["name"] == "Tissue"
