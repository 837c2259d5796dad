"""``slidestream qupath-project``: slides and output folders in, one QuPath project and its import script out."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from shapely.geometry import box

from slidestream.annotations import point_features, region_features, tile_features, write_geojson
from slidestream.annotations.qupath_project import OPENSLIDE_PROVIDER, SCRIPT_FILE
from slidestream.cli.main import main
from slidestream.errors import ConfigError
from slidestream.pipeline.inputs import collect_inputs
from slidestream.pipeline.qupath_project import make_qupath_project
from slidestream.pipeline.tile import tile_batch
from slidestream.synth import SynthConfig, write_synthetic_slide
from slidestream.tiling import TilingParams


def _outputs(folder: Path, slide_id: str, kinds: tuple[str, ...]) -> list[Path]:
    """GeoJSON as slidestream writes it: tiles (+ regions), tissue outline, detections."""
    paths = []
    for kind in kinds:
        if kind == "":
            feats = tile_features(np.array([[0, 0], [224, 0]]), 224, {"score": np.array([0.2, 0.9])})
            feats += region_features(box(0, 0, 448, 224), "Tumor", (200, 0, 0), name="High attention")
            paths.append(write_geojson(folder / f"{slide_id}.geojson", feats))
        elif kind == "tissue":
            paths.append(write_geojson(folder / f"{slide_id}.tissue.geojson",
                                       region_features(box(10, 10, 500, 400), "Tissue", (80, 180, 80))))
        else:
            paths.append(write_geojson(folder / f"{slide_id}.{kind}.geojson.gz",
                                       point_features(np.array([[50.0, 60.0]]), np.array([0.8]))))
    return paths


@pytest.fixture(scope="module")
def synth_slides(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qp") / "slides ä b"
    folder.mkdir()
    paths = [folder / "s1.svs", folder / "slide 2 ü.svs"]
    for i, p in enumerate(paths):
        # the synthetic writer puts the file name in an ASCII-only TIFF tag: write, then rename
        ascii_path = folder / f"tmp{i}.svs"
        write_synthetic_slide(ascii_path, SynthConfig(width=1024, height=768, mpp=0.5, seed=i + 1))
        ascii_path.rename(p)
    return paths


def _entries(project: Path) -> dict[str, dict]:
    data = json.loads(project.read_text(encoding="utf-8"))
    out = {}
    for e in data["images"]:
        path = Path(url2pathname(unquote(urlparse(e["serverBuilder"]["uri"]).path)))
        out[str(path)] = e
    return out


def test_slides_and_output_folders_make_a_project_and_a_matching_script(tmp_path, synth_slides, check_qpproj,
                                                                       parse_groovy_imports):
    ids = {str(it.path.resolve()): it.slide_id for it in collect_inputs([str(synth_slides[0].parent)])}
    s1, s2 = (ids[str(p.resolve())] for p in synth_slides)
    assert s2.startswith("slide_2")
    results = tmp_path / "results"
    (results / "nested").mkdir(parents=True)
    files1 = _outputs(results, s1, ("tissue", "", "points"))
    files2 = _outputs(results / "nested", s2, ("",))
    Image.new("RGB", (8, 8)).save(results / f"{s1}.heatmap.png")  # a figure, not a slide
    stray = write_geojson(results / "unknown-slide.geojson", region_features(box(0, 0, 5, 5), "Tumor", (1, 2, 3)))
    hidden_store = results / "stores" / f"{s1}.zarr"
    hidden_store.mkdir(parents=True)
    write_geojson(hidden_store / f"{s1}.tissue.geojson", region_features(box(0, 0, 5, 5), "Tissue", (1, 2, 3)))

    res = make_qupath_project([synth_slides[0].parent, results], tmp_path / "project")
    data = json.loads(res.project.read_text(encoding="utf-8"))
    assert check_qpproj(data, res.project) == []
    entries = _entries(res.project)
    assert set(entries) == {str(p.resolve()) for p in synth_slides}  # the PNG heatmap is no image
    for p in synth_slides:
        assert entries[str(p.resolve())]["serverBuilder"]["providerClassName"] == OPENSLIDE_PROVIDER
        assert entries[str(p.resolve())]["serverBuilder"]["args"] == []  # slidestream's GeoJSON: no --no-crop
    assert res.unmatched == [stray]
    assert res.script == res.project.parent / SCRIPT_FILE
    imports = parse_groovy_imports(res.script.read_text(encoding="utf-8"))
    by_id = {o.slide_id: o for o in res.outcomes}
    assert {o.status for o in res.outcomes} == {"ok"}
    for slide_id, slide, files in ((s1, synth_slides[0], files1), (s2, synth_slides[1], files2)):
        eid = by_id[slide_id].details["entry_id"]
        name, listed = imports[eid]
        assert name == slide.name == entries[str(slide.resolve())]["imageName"]
        assert [Path(f) for f in listed] == [f.resolve() for f in files]  # tissue, tiles+regions, detections
        assert entries[str(slide.resolve())]["entryID"] == int(eid)
        assert entries[str(slide.resolve())]["metadata"]["slidestream.slide_id"] == slide_id

    # a second run (say, after new outputs) keeps the entries: QuPath's data/<entryID>/ stays with its slide
    again = make_qupath_project([synth_slides[0].parent, results], tmp_path / "project")
    assert {o.slide_id: o.details["entry_id"] for o in again.outcomes} == {
        o.slide_id: o.details["entry_id"] for o in res.outcomes}
    assert (tmp_path / "project" / "project.qpproj.backup").is_file()


def test_copy_makes_a_self_contained_project(tmp_path, synth_slides, parse_groovy_imports):
    results = tmp_path / "results"
    results.mkdir()
    slide = synth_slides[0]
    files = _outputs(results, "s1", ("tissue", ""))
    res = make_qupath_project([slide, results], tmp_path / "proj", copy=True)
    (eid, (name, listed)), = parse_groovy_imports(res.script.read_text(encoding="utf-8")).items()
    assert listed == ["slidestream/s1/s1.tissue.geojson", "slidestream/s1/s1.geojson"]
    for rel, original in zip(listed, files):
        assert (res.project.parent / rel).read_bytes() == original.read_bytes()
    # a project inside the searched folder: its copies do not count as outputs a second time
    again = make_qupath_project([slide, results], results / "proj", copy=True)
    (_, (_, listed)), = parse_groovy_imports(again.script.read_text(encoding="utf-8")).items()
    assert listed == ["slidestream/s1/s1.tissue.geojson", "slidestream/s1/s1.geojson"]
    rerun = make_qupath_project([slide, results], results / "proj", copy=True)
    assert rerun.outcomes[0].details["geojson"] == 2 and rerun.unmatched == []
    # the same name in two output folders: both files, under two names
    (tmp_path / "maps").mkdir()
    other = _outputs(tmp_path / "maps", "s1", ("",))[0]
    both = make_qupath_project([slide, results, tmp_path / "maps"], tmp_path / "proj2", copy=True)
    (_, (_, listed)), = parse_groovy_imports(both.script.read_text(encoding="utf-8")).items()
    assert sorted(listed)[:2] == ["slidestream/s1/2-s1.geojson", "slidestream/s1/s1.geojson"]
    copies = {(both.project.parent / rel).read_bytes() for rel in listed}
    assert {files[1].read_bytes(), other.read_bytes()} <= copies


def test_a_store_brings_its_slide_and_its_id(tmp_path, cmu_slide, check_qpproj, parse_groovy_imports):
    # the real slide tiled into a store next to its tissue outline, as `slidestream tile --export-tissue` leaves them
    stores = tmp_path / "stores"
    [outcome] = tile_batch(collect_inputs([str(cmu_slide)]), stores, TilingParams(mpp=1.0, tile_size=224),
                           save_patches=False, export_tissue=True, workers=1)
    assert outcome.status == "ok", outcome.error
    res = make_qupath_project([stores], tmp_path / "proj")
    assert check_qpproj(json.loads(res.project.read_text(encoding="utf-8")), res.project) == []
    [entry] = _entries(res.project).values()
    assert Path(url2pathname(unquote(urlparse(entry["serverBuilder"]["uri"]).path))) == cmu_slide.resolve()
    assert entry["serverBuilder"]["providerClassName"] == OPENSLIDE_PROVIDER
    [(name, files)] = parse_groovy_imports(res.script.read_text(encoding="utf-8")).values()
    assert name == cmu_slide.name
    assert files == [str((stores / "CMU-1-Small-Region.tissue.geojson").resolve())]


def test_store_whose_slide_is_gone_fails_alone(tmp_path, synth_slides, cmu_slide):
    import shutil

    moved = tmp_path / "moved.svs"
    shutil.copyfile(cmu_slide, moved)
    stores = tmp_path / "stores"
    tile_batch(collect_inputs([str(moved)]), stores, TilingParams(mpp=2.0, tile_size=224), save_patches=False,
               workers=1)
    moved.unlink()
    res = make_qupath_project([stores, synth_slides[0]], tmp_path / "proj")
    status = {o.slide_id: o.status for o in res.outcomes}
    assert status == {"moved": "failed", "s1": "ok"}
    assert "not there any more" in next(o.error for o in res.outcomes if o.status == "failed")


def test_bad_arguments_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        make_qupath_project([tmp_path / "nope"], tmp_path / "proj")
    (tmp_path / "only-outputs").mkdir()
    write_geojson(tmp_path / "only-outputs" / "a.geojson", region_features(box(0, 0, 5, 5), "Tumor", (1, 2, 3)))
    with pytest.raises(ConfigError, match="no slide found"):
        make_qupath_project([tmp_path / "only-outputs"], tmp_path / "proj")


def test_cli_command(tmp_path, synth_slides):
    results = tmp_path / "results"
    results.mkdir()
    _outputs(results, "s1", ("",))
    r = CliRunner().invoke(main, ["qupath-project", str(synth_slides[0]), str(results), "--out",
                                  str(tmp_path / "p q")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "p q" / "project.qpproj").is_file() and (tmp_path / "p q" / SCRIPT_FILE).is_file()
    r = CliRunner().invoke(main, ["qupath-project", str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "no such file" in r.output
