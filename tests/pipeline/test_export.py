"""export_batch: CLAM's slide list is written next to the exported bags and grows over several runs."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from slidestream.models import create_encoder
from slidestream.models.embed import embed_store
from slidestream.pipeline.export import export_batch
from slidestream.store import SlideStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _store(path, n: int = 3) -> SlideStore:
    coords = np.stack([np.arange(n) * 448, np.zeros(n, int)], axis=1)
    slide = {"path": "/data/x.svs", "size": 1, "mtime": 0.0, "fingerprint": "x", "mpp": 0.25,
             "dimensions": [4096, 4096], "bounds": [0, 0, 4096, 4096]}
    tiling = {"mpp": 0.5, "tile_size": 224, "overlap": 0, "level": 0, "read_size": 448, "extent0": 448.0}
    store = SlideStore.create(path, coords=coords, tissue=np.ones(n), slide=slide, tiling=tiling, tile_size=224,
                              chunk_tiles=4)
    store.write_chunk("patches", 0, np.random.default_rng(0).integers(0, 256, (n, 224, 224, 3), dtype=np.uint8))
    store.set_status("tiling", "complete")
    embed_store(store, create_encoder("handcrafted"))
    return store


def _ids(path) -> list[str]:
    with open(path, newline="") as f:
        return [row["slide_id"] for row in csv.DictReader(f)]


def test_clam_layout_lists_the_exported_slides_for_extract_features_fp(tmp_path):
    a, b = _store(tmp_path / "a.zarr").path, _store(tmp_path / "b.zarr").path
    out = tmp_path / "out"
    outcomes = export_batch([a, tmp_path / "missing.zarr"], "handcrafted", out, ("h5", "pt"), layout="clam")
    assert [o.status for o in outcomes] == ["ok", "failed"]
    assert _ids(out / "slide_ids.csv") == ["a"]  # the failed slide is not listed
    assert (out / "patches" / "a.h5").is_file() and (out / "h5_files" / "a.h5").is_file()
    export_batch([b, a], "handcrafted", out, ("h5",), layout="clam")
    assert _ids(out / "slide_ids.csv") == ["a", "b"]
    export_batch([a], "handcrafted", tmp_path / "flat", ("h5",))
    assert not (tmp_path / "flat" / "slide_ids.csv").exists()
