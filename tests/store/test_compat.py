"""Stores written by slidestream 0.1.0 (before the package was reorganised; schema 2, no checksums) still open,
resume, embed and verify; new arrays in them get checksums, and ``tile --overwrite`` rebuilds them as schema 3.

``data/v0.1.0`` holds a small synthetic slide and the store 0.1.0 tiled from it at the slide's own grid (256 px at
0.5 µm/px), whose patches are the slide's JPEG tiles: the codec is found by its name in the store, whichever
module now defines it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from slidestream.cli.main import main
from slidestream.errors import StoreError
from slidestream.models import create_encoder
from slidestream.models.embed import embed_store
from slidestream.store import SCHEMA_VERSION, SlideStore, verify_store
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


# ---------------------------------------------------------------------------------------------- schema 2 → 3
def _codec_names(store: SlideStore, array: str) -> list[str]:
    return [c["name"] for c in json.loads((store.path / array / "zarr.json").read_text())["codecs"]]


def test_an_old_store_verifies_clean_and_says_what_has_no_checksum(tmp_path):
    _, stores = _copy(tmp_path)
    check = verify_store(stores / "tiny.zarr")
    assert check.ok and check.chunks > 0
    # schema 2: nothing is fully under a checksum (its JPEG shards check only their index)
    assert set(check.unprotected) == {"coords", "tissue", "tissue_mask", "patches", "qc/white", "qc/sharpness",
                                      "qc/flags", "done/patches"}
    r = CliRunner().invoke(main, ["status", str(stores), "--verify"])
    assert r.exit_code == 0, r.output
    assert "no checksums in coords" in " ".join(r.output.split())


def test_new_arrays_in_an_old_store_get_checksums_and_the_store_keeps_schema_2(tmp_path):
    _, stores = _copy(tmp_path)
    store = SlideStore.open(stores / "tiny.zarr", mode="r+")
    embed_store(store, create_encoder("handcrafted"))
    store.write_scores("m", np.arange(store.n_tiles, dtype=np.float32))
    for array in ("features/handcrafted", "done/features/handcrafted", "scores/m", "done/scores/m"):
        assert _codec_names(store, array)[-1] == "crc32c", array
    assert _codec_names(store, "qc/white") == ["bytes"]  # the old arrays are left as they are
    again = SlideStore.open(store.path)
    assert again.attrs["slidestream"]["schema"] == 2
    assert again.read_features("handcrafted").shape[0] == again.n_tiles
    check = verify_store(store.path)
    assert check.ok and "features/handcrafted" not in check.unprotected and "patches" in check.unprotected
    # a flipped bit in the new features is found like in any new store
    path = store.path / "features" / "handcrafted" / "c" / "0" / "0"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="chunk 0 of features/handcrafted is damaged"):
        SlideStore.open(store.path).read_features("handcrafted")


def test_an_old_store_resumes_in_its_own_layout(tmp_path):
    slide, stores = _copy(tmp_path)
    old = stores / "tiny.zarr"
    before = SlideStore.open(old).patches[...]
    shard = old / "patches" / "c" / "0" / "0" / "0" / "0"
    shard_bytes = shard.read_bytes()
    # an interrupted 0.1.0 run: the shard and its done marker not written yet
    shard.unlink()
    (old / "done" / "patches" / "c" / "0").unlink()
    with pytest.raises(StoreError, match="chunk 0 of patches is not written yet"):
        SlideStore.open(old).patches[0]
    res = tile_slide(slide, stores, PARAMS, workers=1)
    assert res.action == "resumed" and res.chunks_written == 1
    store = SlideStore.open(old)
    # written as the store declares it (tiles without checksums): the same bytes 0.1.0 wrote
    assert _codec_names(store, "patches") == ["sharding_indexed"] and shard.read_bytes() == shard_bytes
    assert np.array_equal(store.patches[...], before) and verify_store(old).ok


def test_a_missing_chunk_of_an_old_store_is_an_error(tmp_path):
    _, stores = _copy(tmp_path)
    old = stores / "tiny.zarr"
    (old / "patches" / "c" / "0" / "0" / "0" / "0").unlink()
    (old / "coords" / "c" / "0" / "0").unlink()
    with pytest.raises(StoreError, match=r"chunk 0 of patches is damaged \(its file .* is missing\)"):
        SlideStore.open(old).patches[0]
    with pytest.raises(StoreError, match="chunk 0 of coords is damaged"):
        SlideStore.open(old).coords
    assert sorted(d.array for d in verify_store(old).damage) == ["coords", "patches"]
    r = CliRunner().invoke(main, ["status", str(stores), "--verify"])
    assert r.exit_code == 1


def test_tile_overwrite_rebuilds_an_old_store_as_schema_3(tmp_path):
    slide, stores = _copy(tmp_path)
    res = tile_slide(slide, stores, PARAMS, workers=1, overwrite=True)
    store = SlideStore.open(res.store)
    assert store.attrs["slidestream"]["schema"] == SCHEMA_VERSION == 3
    check = verify_store(res.store)
    assert check.ok and check.unprotected == []
