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
        ca = dict(f["coords"].attrs)  # TRIDENT's coords attributes (trident/IO.py coords_to_h5)
        assert ca["patch_size"] == 224 and ca["patch_size_level0"] == 448 and "patch_level" not in ca
        assert ca["level0_magnification"] == 40.0 and ca["target_magnification"] == 20.0
        assert ca["name"] == "case-1" and ca["overlap"] == 0 and ca["savetodir"] == str(tmp_path / "out")
        assert ca["level0_width"] == 20000 and ca["level0_height"] == 10000
        fa = dict(f["features"].attrs)
        assert fa["encoder"] == "handcrafted" and bool(fa["random_init"]) is False and fa["dtype"] == "float32"
        assert fa["name"] == "case-1" and fa["savetodir"] == str(tmp_path / "out")
        assert fa["mpp"] == 0.5 and fa["level0_mpp"] == 0.25 and fa["slide_path"] == "/data/case 1.svs"
        assert fa["read_level"] == 0 and fa["read_size"] == 448 and fa["tile_size"] == 224
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


def test_clam_and_trident_layouts_and_single_formats(embedded, tmp_path):
    paths = export_features(embedded, "handcrafted", tmp_path, layout="clam")
    assert paths["h5"] == tmp_path / "h5_files" / "case-1.h5" and paths["pt"] == tmp_path / "pt_files" / "case-1.pt"
    assert paths["coords"] == tmp_path / "patches" / "case-1.h5"
    paths = export_features(embedded, "handcrafted", tmp_path / "t", layout="trident")
    assert paths == {"h5": tmp_path / "t" / "features_handcrafted" / "case-1.h5",
                     "pt": tmp_path / "t" / "features_handcrafted" / "case-1.pt",
                     "coords": tmp_path / "t" / "patches" / "case-1_patches.h5"}
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
        export_features(embedded, "handcrafted", tmp_path, layout="lazyslide")


def test_export_from_a_path(embedded, tmp_path):
    paths = export_features(embedded.path, "handcrafted", tmp_path, formats=["h5"])
    with h5py.File(paths["h5"], "r") as f:
        np.testing.assert_array_equal(f["coords"][...], embedded.coords)


# ------------------------------------------------------------------------------ other tools re-read the same pixels
# Each reader below is the tool's own reading rule, re-derived from its source (not imported: neither tool is a
# dependency), and run on the exported attributes against a real slide.


def _clam_reads(slide_path, h5_path, target_patch_size):
    """CLAM (mahmoodlab/CLAM, dataset_modules/dataset_h5.py ``Whole_Slide_Bag_FP`` and utils/transform_utils.py
    ``get_eval_transforms``): the slide is opened with ``openslide.open_slide``; each patch is
    ``wsi.read_region(coord, patch_level, (patch_size, patch_size)).convert('RGB')`` with ``patch_level`` and
    ``patch_size`` read from the ``coords`` attributes, then ``transforms.Resize(--target_patch_size)``."""
    import openslide
    from torchvision import transforms

    with h5py.File(h5_path, "r") as f:
        coords = f["coords"][...]
        patch_level = int(f["coords"].attrs["patch_level"])
        patch_size = int(f["coords"].attrs["patch_size"])
    resize = transforms.Resize(target_patch_size)
    with openslide.open_slide(str(slide_path)) as wsi:
        return np.stack([np.asarray(resize(wsi.read_region(tuple(int(v) for v in c), patch_level,
                                                           (patch_size, patch_size)).convert("RGB")))
                         for c in coords])


def _trident_reads(slide_path, h5_path):
    """TRIDENT (mahmoodlab/TRIDENT, trident/wsi_objects/WSI.py ``extract_patch_features`` → ``create_patcher`` →
    WSIPatcher.py): ``patch_size``, ``level0_magnification`` and ``target_magnification`` from the ``coords``
    attributes; ``downsample = (10 / target_mag) / (10 / level0_mag)``; ``patch_size_src = round(patch_size *
    downsample)``; the level is the one whose downsample is within 0.1 of it, else the highest below
    (``get_best_level_and_custom_downsample``); ``patch_size_level = round(patch_size_src / int(level_ds))``;
    ``read_region(xy, level, (psl, psl)).convert('RGB')`` then PIL ``resize((patch_size, patch_size))``."""
    import openslide

    with h5py.File(h5_path, "r") as f:
        coords = f["coords"][...]
        a = dict(f["coords"].attrs)
    downsample = (10 / a["target_magnification"]) / (10 / a["level0_magnification"])
    patch_size_src = round(a["patch_size"] * downsample)
    with openslide.open_slide(str(slide_path)) as wsi:
        ds = wsi.level_downsamples
        exact = [i for i, d in enumerate(ds) if abs(d - downsample) <= 0.1]
        level = exact[0] if exact else max(i for i, d in enumerate(ds) if d <= downsample)
        psl = round(patch_size_src / int(ds[level]))
        return np.stack([np.asarray(wsi.read_region(tuple(int(v) for v in c), level, (psl, psl)).convert("RGB")
                                    .resize((int(a["patch_size"]),) * 2)) for c in coords])


@pytest.fixture(scope="module")
def real_store(tmp_path_factory):
    """A 0.25 µm/px synthetic slide (pyramid 1, 4, 16: no 0.5 µm/px level) tiled 224 px at 0.5 µm/px: every tile
    is read as 448 level-0 pixels and averaged down to 224, then embedded."""
    from slidestream.synth import SynthConfig, write_synthetic_slide
    from slidestream.tiling.grid import TilingParams
    from slidestream.tiling.tiler import tile_slide

    root = tmp_path_factory.mktemp("peer")
    cfg = SynthConfig(width=3072, height=2560, mpp=0.25, n_tissue=1, seed=21)
    slide = write_synthetic_slide(root / "peer-1.svs", cfg).path
    store = SlideStore.open(tile_slide(slide, root / "stores", TilingParams(mpp=0.5, tile_size=224, min_tissue=0.5),
                                       workers=1).store, mode="r+")
    assert store.tiling["level"] == 0 and store.tiling["read_size"] == 448 and store.n_tiles >= 4
    embed_store(store, create_encoder("handcrafted"))
    return slide, store


def _mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_clam_reads_the_stored_tiles_back(real_store, tmp_path):
    slide, store = real_store
    paths = export_features(store, "handcrafted", tmp_path, layout="clam")
    stored = store.patches[...]
    reread = _clam_reads(slide, paths["h5"], target_patch_size=224)
    assert reread.shape == stored.shape
    # the same tissue, resampled by another filter (bilinear vs block average): about a grey level apart, where
    # a quarter of the tile (224 level-0 px read as if they were the 0.5 µm/px tile) is tens of levels apart
    assert _mean_abs_diff(reread, stored) < 2.0
    # the coordinates file extract_features_fp.py reads carries the same reading attributes
    with h5py.File(paths["h5"], "r") as f, h5py.File(paths["coords"], "r") as g:
        assert dict(f["coords"].attrs) == dict(g["coords"].attrs)
        assert f["coords"].attrs["patch_size"] == 448 and f["coords"].attrs["patch_level"] == 0
        assert f["coords"].attrs["target_patch_size"] == 224
        np.testing.assert_array_equal(g["coords"][...], store.coords)
    with h5py.File(tmp_path / "wrong.h5", "w") as f:
        f["coords"] = store.coords
        f["coords"].attrs.update({"patch_level": 0, "patch_size": 224})
    assert _mean_abs_diff(_clam_reads(slide, tmp_path / "wrong.h5", 224), stored) > 10.0


def test_trident_reads_the_stored_tiles_back(real_store, tmp_path):
    slide, store = real_store
    paths = export_features(store, "handcrafted", tmp_path, layout="trident")
    stored = store.patches[...]
    for h5 in (paths["coords"], paths["h5"]):  # the coordinates file and the copy in the features file
        reread = _trident_reads(slide, h5)
        assert reread.shape == stored.shape and _mean_abs_diff(reread, stored) < 2.0
    with h5py.File(paths["h5"], "r") as f:
        fa, ca = dict(f["features"].attrs), dict(f["coords"].attrs)
    assert fa["name"] == "peer-1" and fa["savetodir"] == str(tmp_path / "features_handcrafted")
    assert fa["encoder"] == "handcrafted"
    assert ca["level0_width"] == 3072 and ca["level0_height"] == 2560 and ca["savetodir"] == str(tmp_path)
    assert ca["patch_size"] == 224 and ca["patch_size_level0"] == 448


def test_trident_reads_the_tiles_of_an_off_nominal_slide(tmp_path):
    # an Aperio-like 0.2527 µm/px slide labelled 40x: slidestream's 0.5 µm/px tiles span 443 level-0 px, where
    # TRIDENT's nominal 40x -> 20x would read 448; the real magnifications make it read the stored 443
    from slidestream.synth import SynthConfig, write_synthetic_slide
    from slidestream.tiling.grid import TilingParams
    from slidestream.tiling.tiler import tile_slide

    cfg = SynthConfig(width=2560, height=2560, mpp=0.2527, objective_power=40.0, n_tissue=1, seed=22)
    slide = write_synthetic_slide(tmp_path / "aperio.svs", cfg).path
    store = SlideStore.open(tile_slide(slide, tmp_path / "stores", TilingParams(mpp=0.5, tile_size=224,
                                                                               min_tissue=0.5), workers=1).store,
                            mode="r+")
    embed_store(store, create_encoder("handcrafted"))
    paths = export_features(store, "handcrafted", tmp_path / "out", formats=("h5",), layout="trident")
    with h5py.File(paths["coords"], "r") as f:
        assert f["coords"].attrs["patch_size_level0"] == 443
    stored = store.patches[...]
    assert _mean_abs_diff(_trident_reads(slide, paths["coords"]), stored) < 2.0
