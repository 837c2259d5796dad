"""Stores written by slidestream 0.1.0 (before the package was reorganised) still open, resume and embed.

``data/v0.1.0`` holds a small synthetic slide and the store 0.1.0 tiled from it at the slide's own grid (256 px at
0.5 µm/px), whose patches are the slide's JPEG tiles: the codec is found by its name in the store, whichever
module now defines it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from slidestream.models import create_encoder
from slidestream.models.embed import embed_store
from slidestream.store import SlideStore
from slidestream.tiling.grid import TilingParams
from slidestream.tiling.tiler import tile_slide

DATA = Path(__file__).parent / "data" / "v0.1.0"
PARAMS = TilingParams(mpp=0.5, tile_size=256, min_tissue=0.05)


def _copy(tmp_path: Path) -> tuple[Path, Path]:
    shutil.copy(DATA / "tiny.svs", tmp_path / "tiny.svs")
    shutil.copytree(DATA / "stores", tmp_path / "stores")
    return tmp_path / "tiny.svs", tmp_path / "stores"


def test_an_old_store_opens_resumes_and_matches_a_new_one(tmp_path):
    slide, stores = _copy(tmp_path)
    old = SlideStore.open(stores / "tiny.zarr")
    assert old.attrs["slidestream"]["version"] == "0.1.0"
    assert old.patch_encoding["name"] == "jpeg" and old.status["tiling"] == "complete"
    res = tile_slide(slide, stores, PARAMS, workers=1)
    assert res.action == "up-to-date" and res.chunks_written == 0
    new = SlideStore.open(tile_slide(slide, tmp_path / "new", PARAMS, workers=1).store)
    assert np.array_equal(old.coords, new.coords)
    assert np.array_equal(old.patches[...], new.patches[...])


def test_an_old_store_takes_new_features(tmp_path):
    _, stores = _copy(tmp_path)
    store = SlideStore.open(stores / "tiny.zarr", mode="r+")
    res = embed_store(store, create_encoder("handcrafted"))
    assert res.n_tiles == store.n_tiles and store.read_features("handcrafted").shape[0] == store.n_tiles


def test_plain_zarr_reads_an_old_jpeg_store_through_the_entry_point(tmp_path):
    # a process that does not import slidestream itself: zarr finds the codec through its entry point
    _, stores = _copy(tmp_path)
    code = ("import sys, zarr; g = zarr.open_group(sys.argv[1], mode='r'); p = g['patches'][...]; "
            "print(p.shape, p.dtype)")
    out = subprocess.run([sys.executable, "-c", code, str(stores / "tiny.zarr")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    n = SlideStore.open(stores / "tiny.zarr").n_tiles
    assert out.stdout.split("\n")[0].startswith(f"({n}, 256, 256, 3) uint8")
