"""Dumping kept tiles as image files (``slidestream tile --dump-patches``): names, pixels, resuming, formats."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image
from slidestream.errors import ConfigError, StoreError
from slidestream.store import SlideStore
from slidestream.tiling.dump import dump_patches, patch_file_name
from slidestream.tiling.grid import TilingParams
from slidestream.tiling.tiler import tile_slide
from slidestream.wsi.slide import open_slide

PARAMS = TilingParams(mpp=0.5, tile_size=224)


@pytest.fixture(scope="module")
def stores(cmu_slide, tmp_path_factory):
    out = tmp_path_factory.mktemp("stores")
    with_patches = tile_slide(cmu_slide, out / "patches", PARAMS, workers=1).store
    without = tile_slide(cmu_slide, out / "coords", PARAMS, workers=1, save_patches=False).store
    return with_patches, without


def _read(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_every_tile_is_written_with_its_coordinates_and_its_pixels(stores, tmp_path):
    store = SlideStore.open(stores[0])
    res = dump_patches(store.path, tmp_path, workers=2)
    assert res.folder == tmp_path / "CMU-1-Small-Region"
    assert (res.n_tiles, res.written, res.existing) == (store.n_tiles, store.n_tiles, 0)
    names = sorted(os.listdir(res.folder))
    assert names == sorted(f"CMU-1-Small-Region_x{x}_y{y}.png" for x, y in store.coords)
    patches = store.patches[...]
    for i, (x, y) in enumerate(store.coords):
        assert np.array_equal(_read(res.folder / patch_file_name("CMU-1-Small-Region", x, y)), patches[i])


def test_a_dump_resumes_and_keeps_the_files_already_there(stores, tmp_path):
    store = SlideStore.open(stores[0])
    res = dump_patches(store.path, tmp_path)
    files = sorted(res.folder.iterdir())
    for f in files[:3]:
        f.unlink()
    kept = files[5]
    before = kept.stat().st_mtime_ns
    again = dump_patches(store.path, tmp_path)
    assert (again.written, again.existing) == (3, store.n_tiles - 3)
    assert kept.stat().st_mtime_ns == before
    assert sorted(res.folder.iterdir()) == files
    assert dump_patches(store.path, tmp_path).written == 0


def test_a_store_without_patches_is_dumped_from_the_slide(stores, cmu_slide, tmp_path):
    store = SlideStore.open(stores[1])
    assert not store.has_patches
    with pytest.raises(StoreError, match="holds no patches"):
        dump_patches(store.path, tmp_path)
    res = dump_patches(store.path, tmp_path, slide_path=cmu_slide)
    assert res.written == store.n_tiles
    with open_slide(cmu_slide) as slide:
        for x, y in store.coords[::7]:
            region = slide.read_region((int(x), int(y)), 0, (224, 224))
            assert np.array_equal(_read(res.folder / patch_file_name(store.slide_id, x, y)), region)


def test_jpeg_dumps_and_bad_requests(stores, tmp_path):
    store = SlideStore.open(stores[0])
    res = dump_patches(store.path, tmp_path, fmt="jpg", jpeg_quality=95)
    x, y = store.coords[0]
    tile = _read(res.folder / f"CMU-1-Small-Region_x{x}_y{y}.jpg").astype(int)
    own, other = (np.abs(tile - store.patches[i]).mean() for i in (0, 1))
    assert own < 8 and own < other / 3  # lossy (chroma subsampled, as PIL and TRIDENT write), but this tile
    with pytest.raises(ConfigError, match="dump format"):
        dump_patches(store.path, tmp_path, fmt="tiff")
    with pytest.raises(ConfigError, match="JPEG quality"):
        dump_patches(store.path, tmp_path, fmt="jpg", jpeg_quality=0)
    unfinished = SlideStore.open(stores[0], mode="r+")
    unfinished.set_status("tiling", "running")
    try:
        with pytest.raises(StoreError, match="tiling is not complete"):
            dump_patches(store.path, tmp_path / "other")
    finally:
        unfinished.set_status("tiling", "complete")
