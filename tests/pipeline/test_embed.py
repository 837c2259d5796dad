"""The embedding stage over a batch: stores tiled at another pixel size than the encoder's are refused or recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from slidestream.cli.main import main
from slidestream.synth import SynthConfig, write_synthetic_slide
from slidestream.tiling.grid import TilingParams
from slidestream.tiling.tiler import tile_slide

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.filterwarnings("ignore::slidestream.models.embed.MppMismatchWarning")
def test_embed_refuses_another_pixel_size_unless_allowed_and_records_it(tmp_path):
    slide = write_synthetic_slide(tmp_path / "s.svs", SynthConfig(width=2048, height=2048, mpp=0.5, seed=4)).path
    stores = tmp_path / "stores"
    tile_slide(slide, stores, TilingParams(mpp=1.0, tile_size=112, min_tissue=0.25))
    refused = CliRunner().invoke(main, ["embed", str(stores), "--encoder", "handcrafted"])
    assert refused.exit_code != 0
    record = json.loads((stores / "run-embed.json").read_text())
    assert record["counts"]["failed"] == 1
    error = record["slides"][0]["error"]
    assert "1 µm/px" in error and "expects 0.5 µm/px" in error and "--allow-mpp-mismatch" in error
    assert record["parameters"]["allow_mpp_mismatch"] is False

    allowed = CliRunner().invoke(main, ["embed", str(stores), "--encoder", "handcrafted", "--allow-mpp-mismatch"])
    assert allowed.exit_code == 0, allowed.output
    assert "another pixel size" in allowed.output
    record = json.loads((stores / "run-embed.json").read_text())
    assert record["counts"]["ok"] == 1 and record["parameters"]["allow_mpp_mismatch"] is True
    assert record["slides"][0]["details"]["mpp_mismatch"]["tile_mpp"] == 1.0
    assert record["slides"][0]["details"]["mpp_mismatch"]["encoder_mpp"] == 0.5
    help_text = CliRunner().invoke(main, ["embed", "--help"]).output
    assert "--allow-mpp-mismatch" in help_text and "10 %" in help_text


def test_random_encoders_are_the_same_in_every_process():
    """weights="none" in batch embedding draws from its own seed: whatever the process's random state (a fresh
    process starts from a different one every time), the same encoder comes out, and that state is left as it was."""
    import warnings

    import torch

    from slidestream.models import RandomWeightsWarning
    from slidestream.pipeline.embed import create_batch_encoder

    built = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        state = torch.random.get_rng_state().clone()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RandomWeightsWarning)
            enc = create_batch_encoder("vit_tiny_patch16_224", weights="none")
        assert enc.random_init and torch.equal(torch.random.get_rng_state(), state)
        built.append(enc.state_dict())
    assert built[0].keys() == built[1].keys()
    assert all(torch.equal(built[0][k], built[1][k]) for k in built[0])


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_embed_precision_option_reaches_the_encoder_and_is_recorded(tmp_path):
    from slidestream.store import SlideStore

    slide = write_synthetic_slide(tmp_path / "s.svs", SynthConfig(width=1024, height=1024, mpp=0.5, seed=5)).path
    stores = tmp_path / "stores"
    tile_slide(slide, stores, TilingParams(mpp=0.5, tile_size=112, min_tissue=0.25))
    base = ["embed", str(stores), "--encoder", "resnet18", "--weights", "none"]
    r = CliRunner().invoke(main, base + ["--precision", "float32"])
    assert r.exit_code == 0, r.output
    store = SlideStore.open(next(stores.glob("*.zarr")))
    assert store.n_tiles >= 4
    fp32 = store.read_features("resnet18").astype(np.float64)
    assert store.group["features/resnet18"].attrs["dtype"] == "float32"

    # features of another precision are not mixed into the same array
    r = CliRunner().invoke(main, base + ["--precision", "bfloat16"])
    assert r.exit_code != 0 and "overwrite" in json.loads((stores / "run-embed.json").read_text())["slides"][0]["error"]
    r = CliRunner().invoke(main, base + ["--precision", "bfloat16", "--overwrite"])
    assert r.exit_code == 0, r.output
    store = SlideStore.open(store.path)
    assert store.group["features/resnet18"].attrs["dtype"] == "bfloat16"
    assert json.loads((stores / "run-embed.json").read_text())["parameters"]["precision"] == "bfloat16"
    bf16 = store.read_features("resnet18").astype(np.float64)
    assert not np.array_equal(bf16, fp32)
    cos = (bf16 * fp32).sum(1) / (np.linalg.norm(bf16, axis=1) * np.linalg.norm(fp32, axis=1))
    assert cos.min() > 0.99, cos.min()
    assert CliRunner().invoke(main, base + ["--precision", "int8"]).exit_code == 2

    # what bench and the leaderboard do in the stores they own: features made with other settings are recomputed,
    # features made with these settings are resumed
    from slidestream.pipeline.embed import embed_batch

    [out] = embed_batch([store.path], "resnet18", weights="none", precision="float32", replace_changed=True)
    assert out.status == "ok" and out.details["chunks_written"] > 0
    assert SlideStore.open(store.path).group["features/resnet18"].attrs["dtype"] == "float32"
    np.testing.assert_allclose(SlideStore.open(store.path).read_features("resnet18"), fp32, rtol=1e-3, atol=1e-3)
    [again] = embed_batch([store.path], "resnet18", weights="none", precision="float32", replace_changed=True)
    assert again.status == "skipped" and again.details["chunks_written"] == 0
