"""Fault injection: damaged stores are found, refused with a message that says what to do, and repaired.

Five small synthetic slides (2048 px at 0.5 µm/px, 64 px JPEG tiles; two with tumour) are tiled once per module
through the real CLI into two folders: 48 px tiles (decoded, stored as lossless pixel chunks of 64 tiles) and
64 px tiles (the slide's own JPEG tiles, kept in shards). The pixel folder is also embedded (handcrafted
features), a model trained on it and its scores written. Each test copies a folder, plants one fault in slide
``s1`` (a deleted chunk file or one flipped bit), and checks that ``status --verify`` names the store, the array
and the chunk (exit 1), that the command reading that array fails for ``s1`` alone with the message (exit 1) while
the other slides are processed, and that the command the message names repairs the store.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from slidestream.errors import StoreError
from slidestream.store import SlideStore
from slidestream.synth import SynthConfig, write_synthetic_slide

from .conftest import cli, ok
from .conftest import flat as text

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SLIDES = [f"s{i}" for i in range(5)]
DAMAGED = "s1"  # a normal slide: training keeps two slides of each class without it
PIXELS = ["--target-mpp", "0.5", "--tile-size", "48", "--min-tissue", "0.5", "--workers", "1"]
JPEG = ["--target-mpp", "0.5", "--tile-size", "64", "--min-tissue", "0.5", "--workers", "1"]




@dataclass
class Batch:
    slides: Path
    pixels: Path  # tiled only
    jpeg: Path  # tiled only, the slides' own JPEG tiles
    embedded: Path  # pixels + features/handcrafted + scores/model
    manifest: Path
    model: Path


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> Batch:
    root = tmp_path_factory.mktemp("damage")
    slides = root / "slides"
    slides.mkdir()
    for i, name in enumerate(SLIDES):
        write_synthetic_slide(slides / f"{name}.svs", SynthConfig(width=2048, height=2048, mpp=0.5, tile_size=64,
                                                                   tumor=i >= 3, seed=i))
    ok("tile", slides, "--out", root / "pixels", *PIXELS)
    ok("tile", slides, "--out", root / "jpeg", *JPEG)
    shutil.copytree(root / "pixels", root / "embedded")
    ok("embed", root / "embedded", "--encoder", "handcrafted")
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slide", "label"])
        w.writerows([[str(slides / f"{name}.svs"), int(i >= 3)] for i, name in enumerate(SLIDES)])
    ok("train", manifest, "--stores", root / "embedded", "--encoder", "handcrafted", "--out", root / "model",
       "--folds", "2", "--epochs", "2", "--device", "cpu")
    ok("predict", manifest, "--stores", root / "embedded", "--model", root / "model", "--out", root / "pred")
    return Batch(slides, root / "pixels", root / "jpeg", root / "embedded", manifest, root / "model")


def copy(folder: Path, tmp_path: Path) -> Path:
    dst = tmp_path / folder.name
    shutil.copytree(folder, dst)
    return dst


def chunk_file(store: Path, array: str, chunk: int) -> Path:
    """The file of row chunk (shard) ``chunk`` of ``array``, as the array's own metadata names it."""
    arr = SlideStore.open(store).group[array]
    return store / array / arr.metadata.encode_chunk_key((chunk,) + (0,) * (arr.ndim - 1))


def plant(store: Path, array: str, chunk: int, fault: str, offset: int | None = None) -> Path:
    """Delete the chunk file, or flip one bit of it (at ``offset``, default its middle)."""
    path = chunk_file(store, array, chunk)
    assert path.is_file(), path
    if fault == "delete":
        path.unlink()
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2 if offset is None else offset] ^= 0x10
        path.write_bytes(bytes(data))
    return path


def verify(folder: Path) -> tuple[int, dict]:
    r = cli("status", folder, "--verify", "--json")
    return r.exit_code, json.loads(r.stdout)


def assert_found(folder: Path, array: str, chunk: int) -> None:
    """``status --verify`` names the damaged store, array and chunk (and nothing else), exit 1; so does the table."""
    code, st = verify(folder)
    assert code == 1 and st["damaged"] == [DAMAGED]
    (entry,) = [s for s in st["stores"] if s["slide_id"] == DAMAGED]
    assert [(d["array"], d["chunk"]) for d in entry["verify"]["damage"]] == [(array, chunk)]
    assert all(s["verify"]["ok"] for s in st["stores"] if s["slide_id"] != DAMAGED)
    r = cli("status", folder, "--verify")
    assert r.exit_code == 1
    out = text(r)
    assert f"✗ {folder / (DAMAGED + '.zarr')}: {array} chunk {chunk}:" in out
    assert f"1 of {len(SLIDES)} store(s) damaged: {DAMAGED}" in out


def assert_clean(folder: Path) -> None:
    code, st = verify(folder)
    assert code == 0 and st["damaged"] == [] and len(st["stores"]) == len(SLIDES)
    assert all(s["verify"]["chunks"] > 0 for s in st["stores"])


def run_record(folder: Path, stage: str) -> dict[str, dict]:
    return {s["slide_id"]: s for s in json.loads((folder / f"run-{stage}.json").read_text())["slides"]}


# ------------------------------------------------------------------------------------------------------- clean
def test_clean_folders_pass_verify(batch):
    for folder in (batch.pixels, batch.jpeg, batch.embedded):
        assert_clean(folder)
    r = cli("status", batch.embedded, "--verify")
    assert r.exit_code == 0 and "damaged" not in r.output and "ok (" in r.output


# ------------------------------------------------------------------------------------------------------- patches
@pytest.mark.parametrize("encoding, fault", [("pixels", "delete"), ("pixels", "flip"), ("jpeg", "flip"),
                                             ("jpeg", "delete")])
def test_damaged_patches_are_found_refused_by_embed_and_repaired_by_tile(batch, tmp_path, encoding, fault):
    folder = copy(getattr(batch, encoding), tmp_path)
    store = folder / f"{DAMAGED}.zarr"
    assert SlideStore.open(store).patch_encoding["name"] == encoding
    # JPEG: a bit of the first tile's own bytes, not the shard index
    plant(store, "patches", 1, fault, offset=1000 if encoding == "jpeg" else None)
    assert_found(folder, "patches", 1)

    r = cli("embed", folder, "--encoder", "handcrafted")
    assert r.exit_code == 1
    rec = run_record(folder, "embed")
    assert rec[DAMAGED]["status"] == "failed"
    err = rec[DAMAGED]["error"]
    assert f"{store}: chunk 1 of patches is damaged" in err
    assert ("is missing" if fault == "delete" else "checksum mismatch") in err
    assert f"slidestream tile {batch.slides / (DAMAGED + '.svs')} --out {folder}" in err and "--overwrite" in err
    assert "chunk 1 of patches is damaged" in text(r)
    for name in SLIDES:  # the other slides were embedded
        if name != DAMAGED:
            assert rec[name]["status"] == "ok"
            assert SlideStore.open(folder / f"{name}.zarr").is_complete("features/handcrafted")

    # the repair the message names
    ok("tile", batch.slides / f"{DAMAGED}.svs", "--out", folder, *(PIXELS if encoding == "pixels" else JPEG),
       "--overwrite")
    ok("embed", folder, "--encoder", "handcrafted")
    assert_clean(folder)
    fresh = SlideStore.open(store)
    assert fresh.read_features("handcrafted").shape[0] == fresh.n_tiles


# ------------------------------------------------------------------------------------------------------- QC
@pytest.mark.parametrize("fault", ["delete", "flip"])
def test_damaged_qc_is_found_and_refused(batch, tmp_path, fault):
    folder = copy(batch.pixels, tmp_path)
    store = folder / f"{DAMAGED}.zarr"
    plant(store, "qc/white", 0, fault)
    assert_found(folder, "qc/white", 0)
    with pytest.raises(StoreError, match=r"chunk 0 of qc/white is damaged .*slidestream tile .*--overwrite"):
        SlideStore.open(store).read_qc()
    ok("tile", batch.slides / f"{DAMAGED}.svs", "--out", folder, *PIXELS, "--overwrite")
    assert_clean(folder)
    assert set(SlideStore.open(store).read_qc()) == {"white", "sharpness", "flags"}


# ------------------------------------------------------------------------------------------------------- features
@pytest.mark.parametrize("fault", ["delete", "flip"])
def test_damaged_features_are_refused_by_heatmap_predict_train_and_repaired_by_embed(batch, tmp_path, fault):
    folder = copy(batch.embedded, tmp_path)
    store = folder / f"{DAMAGED}.zarr"
    plant(store, "features/handcrafted", 1, fault)
    assert_found(folder, "features/handcrafted", 1)
    message = f"{store}: chunk 1 of features/handcrafted is damaged"
    repair = f"slidestream embed {store} --encoder handcrafted --overwrite"

    r = cli("heatmap", folder, "--checkpoint", batch.model, "--model", "again", "--out", tmp_path / "maps",
            "--format", "geojson")
    assert r.exit_code == 1 and message in text(r) and repair in text(r)
    made = sorted(p.name for p in (tmp_path / "maps").glob("*.geojson"))
    assert made == [f"{n}.geojson" for n in SLIDES if n != DAMAGED]
    record = json.loads((tmp_path / "maps" / "run-heatmap.json").read_text())
    assert record["counts"] == {"ok": len(SLIDES) - 1, "skipped": 0, "failed": 1}
    failed = [s for s in record["slides"] if s["status"] == "failed"]
    assert [s["slide_id"] for s in failed] == [DAMAGED] and message in failed[0]["error"]

    r = cli("predict", batch.manifest, "--stores", folder, "--model", batch.model, "--out", tmp_path / "pred")
    assert r.exit_code == 1 and message in text(r)
    with open(tmp_path / "pred" / "predictions.csv", newline="") as f:
        assert sorted(row["slide_id"] for row in csv.DictReader(f)) == [n for n in SLIDES if n != DAMAGED]

    r = cli("train", batch.manifest, "--stores", folder, "--encoder", "handcrafted", "--out", tmp_path / "model",
            "--folds", "2", "--epochs", "2", "--device", "cpu")
    assert r.exit_code == 1 and message in text(r) and f"{DAMAGED} (left out)" in text(r)
    assert (tmp_path / "model" / "model.safetensors").is_file()  # trained on the four intact slides

    ok("embed", store, "--encoder", "handcrafted", "--overwrite")
    assert_clean(folder)
    ok("heatmap", folder, "--checkpoint", batch.model, "--model", "again", "--out", tmp_path / "maps2",
       "--format", "geojson")
    assert len(list((tmp_path / "maps2").glob("*.geojson"))) == len(SLIDES)


# ------------------------------------------------------------------------------------------------------- scores
@pytest.mark.parametrize("fault", ["delete", "flip"])
def test_damaged_scores_are_refused_by_heatmap_and_repaired_by_predict(batch, tmp_path, fault):
    folder = copy(batch.embedded, tmp_path)
    store = folder / f"{DAMAGED}.zarr"
    plant(store, "scores/model", 0, fault)
    assert_found(folder, "scores/model", 0)
    r = cli("heatmap", folder, "--model", "model", "--out", tmp_path / "maps", "--format", "geojson")
    assert r.exit_code == 1
    assert f"{store}: chunk 0 of scores/model is damaged" in text(r) and "slidestream predict" in text(r)
    assert len(list((tmp_path / "maps").glob("*.geojson"))) == len(SLIDES) - 1

    ok("predict", batch.manifest, "--stores", folder, "--model", batch.model, "--out", tmp_path / "pred")
    assert_clean(folder)
    ok("heatmap", folder, "--model", "model", "--out", tmp_path / "maps2", "--format", "geojson")
    assert len(list((tmp_path / "maps2").glob("*.geojson"))) == len(SLIDES)
