"""Feature export: TRIDENT/CLAM-style HDF5 and .pt bags, read back with h5py and torch.load(weights_only=True)."""

from __future__ import annotations

import json
import warnings

import h5py
import numpy as np
import pytest
import torch

from slidestream.errors import ConfigError, StoreError
from slidestream.models import create_encoder
from slidestream.models.embed import embed_store
from slidestream.models.export import export_features
from slidestream.store import SlideStore

CHUNK = 4


def _store(path, n: int = 10, seed: int = 0) -> SlideStore:
    """A store of ``n`` 224 px patches at 0.5 µm/px read from the 0.25 µm/px level (448 px level-0 extent)."""
    rng = np.random.default_rng(seed)
    coords = np.stack([np.arange(n) * 448 + 1000, np.full(n, 2240)], axis=1)
    slide = {"path": "/data/case 1.svs", "size": 1, "mtime": 0.0, "fingerprint": "x", "vendor": "aperio",
             "mpp": 0.25, "mpp_source": "metadata", "dimensions": [20000, 10000], "bounds": [0, 0, 20000, 10000],
             "objective_power": 40.0, "backend": "openslide"}
    tiling = {"mpp": 0.5, "tile_size": 224, "overlap": 0, "min_tissue": 0.25, "level": 0, "read_size": 448,
              "extent0": 448.0}
    store = SlideStore.create(path, coords=coords, tissue=np.ones(n), slide=slide, tiling=tiling, tile_size=224,
                              chunk_tiles=CHUNK)
    for ci, sl in enumerate(store.chunk_slices("patches")):
        patches = rng.integers(0, 256, (sl.stop - sl.start, 224, 224, 3), dtype=np.uint8)
        store.write_chunk("patches", ci, patches)
    store.set_status("tiling", "complete")
    return store


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> SlideStore:
    store = _store(tmp_path_factory.mktemp("export") / "case-1.zarr")
    embed_store(store, create_encoder("handcrafted"))
    return store


def test_h5_and_pt_hold_the_stores_features_and_coords(embedded, tmp_path):
    paths = export_features(embedded, "handcrafted", tmp_path / "out")
    assert paths == {"h5": tmp_path / "out" / "case-1.h5", "pt": tmp_path / "out" / "case-1.pt"}
    expected = embedded.read_features("handcrafted")
    with h5py.File(paths["h5"], "r") as f:
        feats, coords = f["features"][...], f["coords"][...]
        assert feats.dtype == np.float32 and feats.shape == (embedded.n_tiles, 96)
        assert coords.dtype == np.int64 and coords.shape == (embedded.n_tiles, 2)
        np.testing.assert_array_equal(feats, expected)
        np.testing.assert_array_equal(coords, embedded.coords)
        ca = dict(f["coords"].attrs)
        assert ca["patch_size"] == 224 and ca["patch_level"] == 0 and ca["patch_size_level0"] == 448
        assert ca["level0_magnification"] == 40.0 and ca["target_magnification"] == 20.0
        assert ca["name"] == "case-1" and ca["overlap"] == 0
        fa = dict(f["features"].attrs)
        assert fa["encoder"] == "handcrafted" and bool(fa["random_init"]) is False and fa["dtype"] == "float32"
        assert fa["mpp"] == 0.5 and fa["level0_mpp"] == 0.25 and fa["slide_path"] == "/data/case 1.svs"
        assert json.loads(fa["mean"]) == list(create_encoder("handcrafted").preset.mean)
        assert fa["stain"] == "null"
        assert dict(f.attrs)["encoder"] == "handcrafted" and dict(f.attrs)["slide_id"] == "case-1"
    bag = torch.load(paths["pt"], weights_only=True)
    assert isinstance(bag, torch.Tensor) and bag.dtype == torch.float32
    np.testing.assert_array_equal(bag.numpy(), expected)


def test_random_init_encoders_are_marked_in_the_export(tmp_path):
    store = _store(tmp_path / "r.zarr", n=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = create_encoder("vit_tiny_patch16_224", weights="none")
    embed_store(store, enc, name="rn")
    path = export_features(store, "rn", tmp_path / "o", formats=["h5"])["h5"]
    with h5py.File(path, "r") as f:
        assert bool(f["features"].attrs["random_init"]) is True
        assert f["features"].attrs["weights"].startswith("none")
        assert f["features"].shape == (3, enc.embed_dim)


def test_clam_layout_and_single_formats(embedded, tmp_path):
    paths = export_features(embedded, "handcrafted", tmp_path, layout="clam")
    assert paths["h5"] == tmp_path / "h5_files" / "case-1.h5" and paths["pt"] == tmp_path / "pt_files" / "case-1.pt"
    only = export_features(embedded, "handcrafted", tmp_path / "pt", formats=("pt",))
    assert list(only) == ["pt"] and sorted(p.name for p in (tmp_path / "pt").iterdir()) == ["case-1.pt"]


def test_existing_files_are_replaced_whole_and_no_temp_files_remain(embedded, tmp_path):
    (tmp_path / "case-1.h5").write_bytes(b"not hdf5")
    (tmp_path / "case-1.pt").write_bytes(b"junk")
    export_features(embedded, "handcrafted", tmp_path)
    with h5py.File(tmp_path / "case-1.h5", "r") as f:
        assert f["features"].shape[0] == embedded.n_tiles
    assert torch.load(tmp_path / "case-1.pt", weights_only=True).shape[0] == embedded.n_tiles
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case-1.h5", "case-1.pt"]


def test_missing_or_incomplete_features_and_bad_arguments(embedded, tmp_path):
    with pytest.raises(StoreError, match="have: handcrafted"):
        export_features(embedded, "uni", tmp_path)
    store = _store(tmp_path / "half.zarr", n=9)
    embed_store(store, create_encoder("handcrafted"))
    store.group["done/features/handcrafted"][1] = 0
    with pytest.raises(StoreError, match="incomplete"):
        export_features(store, "handcrafted", tmp_path / "o")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    with pytest.raises(ConfigError, match="formats"):
        export_features(embedded, "handcrafted", tmp_path, formats=("npy",))
    with pytest.raises(ConfigError, match="layout"):
        export_features(embedded, "handcrafted", tmp_path, layout="trident")


def test_export_from_a_path(embedded, tmp_path):
    paths = export_features(embedded.path, "handcrafted", tmp_path, formats=["h5"])
    with h5py.File(paths["h5"], "r") as f:
        np.testing.assert_array_equal(f["coords"][...], embedded.coords)
