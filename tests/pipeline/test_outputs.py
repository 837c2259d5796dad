"""Per-slide outputs from stored scores: the GeoJSON's tumour regions follow the tiler's grid at any pixel size."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from slidestream.pipeline import outputs
from slidestream.store import SlideStore
from slidestream.synth import SynthConfig, write_synthetic_slide
from slidestream.tiling.grid import TilingParams, plan_reads
from slidestream.tiling.tiler import tile_slide
from slidestream.wsi import open_slide


@pytest.mark.parametrize("mpp, level_downsample, overlap", [(0.2527, 4, 0), (0.243, 2, 0), (0.243, 2, 32)])
def test_high_score_regions_are_the_connected_groups_of_stored_tiles(tmp_path, mpp, level_downsample, overlap):
    cfg = SynthConfig(width=5120, height=4096, mpp=mpp, level_downsample=level_downsample, n_tissue=2, seed=11)
    slide = write_synthetic_slide(tmp_path / "s.svs", cfg).path
    params = TilingParams(mpp=0.5, tile_size=224, overlap=overlap, min_tissue=0.25)
    store = SlideStore.open(tile_slide(slide, tmp_path / "stores", params, save_patches=False, workers=1).store,
                            mode="r+")
    coords = store.coords
    with open_slide(slide) as s:
        plan = plan_reads(params, s.mpp, s.level_downsamples)  # the tiler's own grid
    ij = np.rint(coords / plan.stride0).astype(int)
    assert np.array_equal(np.floor(ij * plan.stride0), coords)  # tile (i, j) at floor((i, j) * stride0)
    store.write_scores("m", np.ones(len(coords)), attrs={"columns": ["score"]})
    # every stored tile scores 1: the regions are the groups of neighbouring stored tiles (4-connected without
    # overlap; overlapping tiles also join their diagonal neighbours)
    cells = np.zeros(ij.max(0) + 1, bool)
    cells[ij[:, 0], ij[:, 1]] = True
    structure = None if overlap == 0 else np.ones((3, 3), bool)
    _, n_expected = ndimage.label(cells, structure=structure)
    paths = outputs.write_slide_outputs(store.path, "m", tmp_path / "out", threshold=0.5, formats=("geojson",))
    feats = json.loads(paths["geojson"].read_text())["features"]
    tumour = [f for f in feats if f["properties"].get("classification", {}).get("name") == "Tumor"]
    assert len(tumour) == n_expected
    assert sum(f["properties"]["measurements"]["n_tiles"] for f in tumour) == len(coords)
    # the stride the outputs pass is the tiler's, recovered from what the store records
    side0, stride0 = outputs.grid_geometry(store.tiling, store.slide["mpp"])
    assert stride0 == pytest.approx(plan.stride0, rel=1e-12)
    assert side0 == pytest.approx(plan.stride0 * 224 / (224 - overlap), rel=1e-12)
