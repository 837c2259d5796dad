"""The embedding stage over a batch: stores tiled at another pixel size than the encoder's are refused or recorded."""

from __future__ import annotations

import json

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
