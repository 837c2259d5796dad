"""The tiling stage over a batch: per-slide tissue overrides, QC images (checked pixel by pixel against the store
after JPEG decoding) and dumped tiles, all listed in the run record."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi
from slidestream.pipeline.inputs import collect_inputs
from slidestream.pipeline.reporting import QuietReporter
from slidestream.pipeline.tile import tile_batch
from slidestream.pipeline.tile_qc import QC_IMAGE_SIZE
from slidestream.store import SlideStore
from slidestream.tiling.grid import TilingParams
from slidestream.tiling.overview import overview
from slidestream.viz.qc import TILE_COLOUR, TILE_TINT, tile_boxes
from slidestream.wsi.slide import open_slide

PARAMS = TilingParams(mpp=0.5, tile_size=224)


class _Recorder(QuietReporter):
    def __init__(self):
        self.lines = []

    def log(self, message: str) -> None:
        self.lines.append(message)


@pytest.fixture(scope="module")
def batch(cmu_slide, tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    slides = root / "slides"
    slides.mkdir()
    for name in ("a.svs", "b.svs"):
        shutil.copy(cmu_slide, slides / name)
    table = root / "overrides.csv"
    table.write_text("slide_id,keep-rule,tissue-holes\nb.svs,clam-four-pt,false\nnot-here,any-tissue,\n")
    reporter = _Recorder()
    outcomes = tile_batch(collect_inputs([slides]), root / "stores", PARAMS, workers=1, tissue_overrides=table,
                          dump_patches=root / "tiles", reporter=reporter)
    return root, outcomes, reporter


def test_overrides_reach_their_slide_only_and_are_recorded(batch):
    root, outcomes, reporter = batch
    assert [o.status for o in outcomes] == ["ok", "ok"]
    a, b = (SlideStore.open(root / "stores" / f"{s}.zarr") for s in ("a", "b"))
    assert a.tiling["keep_rule"] == "fraction" and a.tiling["tissue"]["keep_holes"] is True
    assert b.tiling["keep_rule"] == "clam-four-pt" and b.tiling["tissue"]["keep_holes"] is False
    assert a.n_tiles != b.n_tiles
    record = json.loads((root / "stores" / "run-tile.json").read_text())
    details = {s["slide_id"]: s["details"] for s in record["slides"]}
    assert "tissue_overrides" not in details["a"]
    assert details["b"]["tissue_overrides"] == {"keep-rule": "clam-four-pt", "tissue-holes": "false"}
    assert record["parameters"]["tissue_overrides"].endswith("overrides.csv")
    assert any("1 row(s) name no slide of this batch (not-here)" in line for line in reporter.lines)


def test_tiles_are_dumped_and_listed(batch):
    root, outcomes, _ = batch
    for o in outcomes:
        store = SlideStore.open(root / "stores" / f"{o.slide_id}.zarr")
        folder = root / "tiles" / o.slide_id
        assert o.details["patch_images"] == str(folder) and o.details["patch_images_written"] == store.n_tiles
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            f"{o.slide_id}_x{x}_y{y}.png" for x, y in store.coords)


def test_qc_image_shows_the_stores_tiles_and_tissue_outline(batch, cmu_slide):
    root, outcomes, _ = batch
    path = root / "stores" / "qc" / "a.jpg"
    assert outcomes[0].details["qc_image"] == str(path)
    with Image.open(path) as im:
        assert im.format == "JPEG"
        decoded = np.asarray(im.convert("RGB")).astype(float)
    with open_slide(cmu_slide) as slide:
        thumb = overview(slide, QC_IMAGE_SIZE).astype(float)
        w0, h0 = slide.dimensions
    h, w = thumb.shape[:2]
    assert max(h, w) == QC_IMAGE_SIZE and decoded.shape[1] == w and decoded.shape[0] > h  # a caption under it
    decoded = decoded[:h]
    ds = (w0 / w, h0 / h)
    store = SlideStore.open(root / "stores" / "a.zarr")
    mask = store.group["tissue_mask"][...].astype(bool)
    mds = store.group["tissue_mask"].attrs["downsample"]
    rows = np.minimum(((np.arange(h) + 0.5) * ds[1] / mds[1]).astype(int), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * ds[0] / mds[0]).astype(int), mask.shape[1] - 1)
    outline = ndi.binary_fill_holes(mask)[rows][:, cols]
    rim = outline & ~ndi.binary_erosion(outline, iterations=2, border_value=0)

    def layers(coords):
        tiles = np.zeros((h, w), bool)
        for x0, y0, x1, y1 in tile_boxes(coords, store.tiling["extent0"], ds, (h, w)):
            tiles[y0:y1, x0:x1] = True
        # JPEG blurs a few pixels either side of every drawn edge: compare only pixels away from them
        edges = ndi.binary_dilation(tiles ^ ndi.binary_erosion(tiles, iterations=2), iterations=3)
        near_rim = ndi.binary_dilation(rim, iterations=3)
        return tiles & ~edges & ~near_rim, ~tiles & ~edges & ~near_rim

    tinted = thumb + TILE_TINT * (np.array(TILE_COLOUR) - thumb)

    def errors(coords):
        inside, outside = layers(coords)
        err_in, err_out = np.abs(decoded[inside] - tinted[inside]), np.abs(decoded[outside] - thumb[outside])
        return inside, err_in.mean(), err_out.mean(), np.concatenate([err_in, err_out]).mean()

    inside, err_in, err_out, err = errors(store.coords)
    assert inside.sum() > 10_000
    green = decoded[rim]
    on_rim = ((green[:, 1] > green[:, 0] + 60) & (green[:, 1] > green[:, 2] + 60)).mean()
    print(f"QC JPEG: mean error {err_in:.2f} inside tiles, {err_out:.2f} outside; {on_rim:.1%} of the rim green")
    # JPEG at quality 90 errs by several grey levels on tissue texture; the tint moves pixels by tens
    assert err_in < 10 and err_out < 6 and on_rim > 0.85
    assert np.abs(decoded[inside] - thumb[inside]).mean() > 3 * err_in
    # the same comparison with every tile one tile to the right fails by a wide margin: the check sees placement
    shifted = errors(store.coords + [int(store.tiling["extent0"]), 0])[3]
    print(f"all compared pixels: mean error {err:.2f}, {shifted:.2f} with the tiles shifted")
    assert shifted > 2 * err


def test_a_rerun_rewrites_qc_images_only_when_missing(batch):
    root, _, _ = batch
    qc = root / "stores" / "qc"
    before = (qc / "a.jpg").stat().st_mtime_ns
    (qc / "b.jpg").unlink()
    table = root / "overrides.csv"
    again = tile_batch(collect_inputs([root / "slides"]), root / "stores", PARAMS, workers=1, tissue_overrides=table)
    assert [o.status for o in again] == ["skipped", "skipped"]
    assert (qc / "a.jpg").stat().st_mtime_ns == before and (qc / "b.jpg").is_file()
    assert all(o.details["qc_image"] for o in again)
    none = tile_batch(collect_inputs([root / "slides"]), root / "other", PARAMS, workers=1, qc_images=False)
    assert not (root / "other" / "qc").exists() and "qc_image" not in none[0].details
