"""`slidestream export-features` writes bags other MIL code loads."""

from __future__ import annotations

import h5py
import numpy as np
import torch
from click.testing import CliRunner

from slidestream.cli.main import main
from slidestream.store import SlideStore


def test_export_features_command(cmu_slide, tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["tile", str(cmu_slide), "--out", str(tmp_path / "s")]).exit_code == 0
    r = runner.invoke(main, ["embed", str(tmp_path / "s"), "--encoder", "handcrafted"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["export-features", str(tmp_path / "s"), "--encoder", "handcrafted",
                             "--out", str(tmp_path / "x")])
    assert r.exit_code == 0, r.output
    store = SlideStore.open(tmp_path / "s" / "CMU-1-Small-Region.zarr")
    with h5py.File(tmp_path / "x" / "CMU-1-Small-Region.h5") as f:
        assert np.allclose(f["features"][...], store.read_features("handcrafted"))
        assert np.array_equal(f["coords"][...], store.coords)
    bag = torch.load(tmp_path / "x" / "CMU-1-Small-Region.pt", weights_only=True)
    assert tuple(bag.shape) == (store.n_tiles, store.read_features("handcrafted").shape[1])
