"""`slidestream run` tiles new slides the way the checkpoint's training slides were tiled."""

from __future__ import annotations

import csv

from slidestream.mil import TrainConfig
from slidestream.pipeline.embed import embed_batch
from slidestream.pipeline.inputs import collect_inputs, store_paths
from slidestream.pipeline.run import run_inference
from slidestream.pipeline.tile import tile_batch
from slidestream.pipeline.train import train_from_stores
from slidestream.store import SlideStore
from slidestream.synth import SynthConfig, write_synthetic_dataset
from slidestream.tiling.grid import TilingParams
from slidestream.tiling.settings import TissueConfig


def test_run_uses_the_keep_rule_and_tissue_settings_training_used(tmp_path):
    data = tmp_path / "data"
    labels = write_synthetic_dataset(data, 3, 3, config=SynthConfig(width=2048, height=2048, mpp=0.5,
                                                                    tumor_diameter_um=(300.0, 500.0)), seed=4)
    params = TilingParams(mpp=0.5, tile_size=224, keep_rule="any-tissue")
    tissue = TissueConfig(keep_holes=False, close_um=48.0)
    stores = tmp_path / "stores"
    inputs = collect_inputs([labels])
    tile_batch(inputs, stores, params, tissue=tissue, save_patches=False, qc_images=False, workers=1)
    embed_batch(store_paths(stores), "handcrafted", weights="none")
    summary = train_from_stores(inputs, stores, "handcrafted", tmp_path / "model",
                                TrainConfig(head="mean_pool", epochs=2, seed=0), folds=2)
    new = collect_inputs([data / "tumor_001.svs"])
    res = run_inference(new, summary.checkpoint, tmp_path / "res", weights="none")
    with open(res.predictions_csv, newline="") as f:
        assert [r["slide_id"] for r in csv.DictReader(f)] == [new[0].slide_id]
    trained = SlideStore.open(stores / f"{new[0].slide_id}.zarr").tiling
    ran = SlideStore.open(tmp_path / "res" / "stores" / f"{new[0].slide_id}.zarr").tiling
    assert ran["keep_rule"] == trained["keep_rule"] == "any-tissue"
    assert ran["tissue"] == trained["tissue"] == tissue.to_dict()
    assert SlideStore.open(tmp_path / "res" / "stores" / f"{new[0].slide_id}.zarr").n_tiles == \
        SlideStore.open(stores / f"{new[0].slide_id}.zarr").n_tiles
