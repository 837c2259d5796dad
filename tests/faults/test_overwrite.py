"""Fault injection: nothing overwritten by surprise.

Before the output ledgers, ``run`` writing into a folder of slides replaced the ground-truth GeoJSON next to a
slide (its ``<slide_id>.geojson``), ``heatmap`` replaced a user's file of the same name and ``train --out``
replaced an existing checkpoint. Each test here plants a file where a command writes, runs the real command line,
and checks the refusal (exit 1, the file named, ``--overwrite`` named), that every file of the folder kept its bytes
and modification time, that reruns over slidestream's own outputs still work, and what ``--overwrite`` changes.
Inputs (slides, manifests) are never written, ``--overwrite`` or not.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slidestream.fileio import LEDGER_NAME

from .conftest import TILING, cli, flat, ok, snapshot

pytestmark = pytest.mark.usefixtures("one_torch_thread")

USER = b"the user's own file: ground truth drawn by a pathologist\n"


@pytest.fixture
def batch(batch_copy):
    """A private copy of the trained batch: ``(root, slides, manifest, stores, model)``."""
    root = batch_copy
    return root, root / "slides", root / "manifest.csv", root / "stores", root / "model"


def refused(result, *names: Path) -> str:
    out = flat(result)
    assert result.exit_code == 1, out
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    for name in names:
        assert str(name) in out, out
    return out


def changed(before: dict, after: dict) -> set[str]:
    """Files added, removed or changed (bytes or mtime) between two snapshots."""
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def test_run_into_the_slides_folder_keeps_the_ground_truth_next_to_a_slide(batch):
    root, slides, _, _, model = batch
    truth = slides / "s2.geojson"
    truth.write_bytes(USER)
    before = snapshot(root)
    r = cli("run", slides / "s2.svs", slides / "s3.svs", "--model", model, "--out", slides)
    out = refused(r, truth)
    assert "--overwrite" in out and "not written by slidestream" in out
    assert snapshot(root) == before  # refused before anything: no store, no heatmap, no record
    assert not (slides / "stores").exists()


def test_run_overwrite_replaces_the_named_file_but_never_an_input(batch):
    root, slides, _, _, model = batch
    truth = slides / "s2.geojson"
    truth.write_bytes(USER)
    r = cli("run", slides / "s2.svs", slides / "s3.svs", "--model", model, "--out", slides, "--overwrite")
    assert r.exit_code == 0, r.output
    assert json.loads(truth.read_text())["type"] == "FeatureCollection"  # replaced, as asked
    before = snapshot(root)
    # a manifest named like an output is an input: never written, --overwrite or not
    manifest = slides / "predictions.csv"
    manifest.write_text("slide,label\ns2.svs,1\n")
    before = snapshot(root)
    r = cli("run", manifest, "--model", model, "--out", slides, "--overwrite")
    out = refused(r, manifest)
    assert "input of the command" in out
    assert snapshot(root) == before


def test_run_reruns_over_its_own_outputs_and_refuses_an_edited_one(batch):
    root, slides, _, _, model = batch
    out_dir = root / "res"
    ok("run", slides / "s0.svs", slides / "s2.svs", "--model", model, "--out", out_dir)
    first = snapshot(out_dir)
    assert {"s0.geojson", "s2.heatmap.png", "predictions.csv", LEDGER_NAME} <= set(first)
    ok("run", slides / "s0.svs", slides / "s2.svs", "--model", model, "--out", out_dir)  # resumes, replaces
    # an output edited since (QuPath export over it, a hand edit) is the user's now
    edited = out_dir / "s0.geojson"
    edited.write_text(edited.read_text().replace("Tumor", "Stroma"))
    before = snapshot(root)
    refused(cli("run", slides / "s0.svs", slides / "s2.svs", "--model", model, "--out", out_dir), edited)
    assert snapshot(root) == before


def test_heatmap_keeps_a_users_file_of_the_same_name(batch):
    root, _, _, stores, model = batch
    out_dir = root / "maps"
    out_dir.mkdir()
    mine = out_dir / "s1.heatmap.png"
    mine.write_bytes(USER)
    before = snapshot(root)
    r = cli("heatmap", stores, "--checkpoint", model, "--out", out_dir)
    out = refused(r, mine)
    assert "--overwrite" in out
    assert snapshot(root) == before  # not even the scores were written into the stores
    r = cli("heatmap", stores, "--checkpoint", model, "--out", out_dir, "--overwrite")
    assert r.exit_code == 0, r.output
    assert mine.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = snapshot(out_dir)
    ok("heatmap", stores, "--model", "model", "--out", out_dir)  # its own files: replaced without --overwrite
    assert set(snapshot(out_dir)) == set(again)


def test_predict_keeps_a_users_predictions_csv(batch):
    root, _, manifest, stores, model = batch
    out_dir = root / "pred"
    out_dir.mkdir()
    mine = out_dir / "predictions.csv"
    mine.write_bytes(USER)
    before = snapshot(root)
    refused(cli("predict", manifest, "--stores", stores, "--model", model, "--out", out_dir), mine)
    assert snapshot(root) == before
    ok("predict", manifest, "--stores", stores, "--model", model, "--out", out_dir, "--overwrite")
    assert mine.read_text().startswith("slide_id,")
    ok("predict", manifest, "--stores", stores, "--model", model, "--out", out_dir)  # rerun over its own


def test_train_never_replaces_a_checkpoint_without_overwrite(batch):
    root, _, manifest, stores, model = batch
    args = ["--stores", stores, "--encoder", "handcrafted", "--folds", "2", "--epochs", "1", "--device", "cpu"]
    before = snapshot(root)
    # another training's checkpoint, written by slidestream: still refused, it is a trained model
    out = refused(cli("train", manifest, *args, "--out", model), model / "model.safetensors", model / "config.json")
    assert "--overwrite" in out and "earlier run" in out
    assert snapshot(root) == before
    # a folder holding a file that is not a checkpoint, under a checkpoint's name
    other = root / "other"
    other.mkdir()
    (other / "config.json").write_bytes(USER)
    (other / "notes.txt").write_bytes(USER)
    before = snapshot(root)
    refused(cli("train", manifest, *args, "--out", other), other / "config.json")
    assert snapshot(root) == before
    # a folder holding other files only: they stay as they are next to the new checkpoint
    (other / "config.json").unlink()
    ok("train", manifest, *args, "--out", other)
    assert (other / "notes.txt").read_bytes() == USER and (other / "model.safetensors").is_file()
    weights = (other / "model.safetensors").read_bytes()
    ok("train", manifest, *args, "--out", other, "--overwrite", "--seed", "1")
    assert (other / "model.safetensors").read_bytes() != weights


def test_export_features_keeps_a_users_file(batch):
    root, _, _, stores, _ = batch
    out_dir = root / "export"
    (out_dir / "h5_files").mkdir(parents=True)
    mine = out_dir / "h5_files" / "s3.h5"
    mine.write_bytes(USER)
    before = snapshot(root)
    refused(cli("export-features", stores, "--encoder", "handcrafted", "--out", out_dir, "--layout", "clam"), mine)
    assert snapshot(root) == before
    ok("export-features", stores, "--encoder", "handcrafted", "--out", out_dir, "--layout", "flat")
    ok("export-features", stores, "--encoder", "handcrafted", "--out", out_dir, "--layout", "flat")  # rerun


def test_qupath_project_keeps_a_users_script_and_backs_the_project_up(batch):
    root, slides, _, _, _ = batch
    project = root / "project"
    script = project / "scripts" / "import_slidestream_geojson.groovy"
    script.parent.mkdir(parents=True)
    script.write_bytes(USER)
    before = snapshot(root)
    out = refused(cli("qupath-project", slides, "--out", project), script)
    assert "--overwrite" in out
    assert snapshot(root) == before
    ok("qupath-project", slides, "--out", project, "--overwrite")
    first = (project / "project.qpproj").read_bytes()
    ok("qupath-project", slides, "--out", project)  # its own script: replaced; the project: updated
    assert (project / "project.qpproj.backup").read_bytes() == first


def test_tiling_qc_image_and_dumped_tiles_keep_users_files(batch):
    root, slides, _, _, _ = batch
    out_dir = root / "tiles"
    qc = out_dir / "qc" / "s1.jpg"
    qc.parent.mkdir(parents=True)
    qc.write_bytes(USER)
    dump = root / "dump"
    r = cli("tile", slides, "--out", out_dir, *TILING, "--dump-patches", dump)
    out = refused(r, qc)
    assert "--overwrite" in out
    assert qc.read_bytes() == USER
    assert (out_dir / "qc" / "s0.jpg").is_file() and (out_dir / "s1.zarr").is_dir()  # the batch went on
    # dumped tiles: a file already there is never replaced (the dump resumes by skipping them)
    tile_name = sorted((dump / "s0").iterdir())[0]
    tile_name.write_bytes(USER)
    before = snapshot(dump / "s0")
    ok("tile", slides, "--out", out_dir, *TILING, "--dump-patches", dump)  # s1's store is complete: no QC image
    assert snapshot(dump / "s0") == before and (dump / "s1").is_dir()
    ok("tile", slides, "--out", out_dir, *TILING, "--overwrite")
    assert qc.read_bytes()[:2] == b"\xff\xd8"  # a JPEG now


def test_bench_and_demo_refuse_before_any_work(batch):
    root, _, manifest, _, _ = batch
    out_dir = root / "bench"
    out_dir.mkdir()
    (out_dir / "report.md").write_bytes(USER)
    before = snapshot(root)
    out = refused(cli("bench", manifest, "--out", out_dir, "--folds", "2", "--epochs", "1"), out_dir / "report.md")
    assert "--overwrite" in out
    assert snapshot(root) == before and not (out_dir / "stores").exists()
    demo = root / "demo"
    (demo / "slides").mkdir(parents=True)
    (demo / "slides" / "case.svs").write_bytes(USER)
    before = snapshot(root)
    refused(cli("demo", "--out", demo, "--slides", "10"), demo / "slides" / "case.svs")
    assert snapshot(root) == before


def test_outputs_written_before_the_ledger_existed(batch):
    """A results folder of a version without ledgers holds slidestream's run record: its outputs are adopted and
    a rerun goes on as before. Elsewhere, a file no ledger lists is refused."""
    root, slides, manifest, stores, model = batch
    out_dir = root / "res"
    ok("run", slides / "s0.svs", "--model", model, "--out", out_dir)
    (out_dir / LEDGER_NAME).unlink()
    ok("run", slides / "s0.svs", "--model", model, "--out", out_dir)
    assert (out_dir / LEDGER_NAME).is_file()  # the ledger starts again
    pred = root / "pred"
    ok("predict", manifest, "--stores", stores, "--model", model, "--out", pred)
    (pred / LEDGER_NAME).unlink()  # no run record here: nothing tells slidestream's files from the user's
    before = snapshot(root)
    refused(cli("predict", manifest, "--stores", stores, "--model", model, "--out", pred), pred / "predictions.csv")
    assert snapshot(root) == before
    ok("predict", manifest, "--stores", stores, "--model", model, "--out", pred, "--overwrite")
