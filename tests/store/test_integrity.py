"""verify_store: which chunks must exist, what counts as damage, and how it is named."""

from __future__ import annotations

import numpy as np
import pytest

from slidestream.errors import StoreError
from slidestream.store import JpegTiles, SlideStore, verify_store
from slidestream.store.integrity import rows_of


def _store(tmp_path, n=10, chunk=4, jpeg=False):
    coords = np.arange(2 * n).reshape(n, 2) * 10
    return SlideStore.create(tmp_path / "s.zarr", coords=coords, tissue=np.ones(n), slide={"path": "/s.svs"},
                             tiling={"mpp": 0.5}, tile_size=8, chunk_tiles=chunk,
                             jpeg_tiles=JpegTiles(level=0, colorspace=None, outcolorspace=2) if jpeg else None)


def _fill(store: SlideStore, chunks=None):
    for i, sl in enumerate(store.chunk_slices()):
        if chunks is None or i in chunks:
            store.write_pixel_chunk(i, np.full((sl.stop - sl.start, 8, 8, 3), 10 * i, np.uint8))
            store.mark_done("patches", i)


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_an_interrupted_store_is_not_damaged_but_a_missing_done_chunk_is(tmp_path):
    store = _store(tmp_path)
    _fill(store, chunks={0, 2})  # chunk 1 never written, not marked done: an interrupted run
    seen = []
    check = verify_store(store.path, progress=lambda d, n: seen.append((d, n)))
    assert check.ok and check.unprotected == [] and seen[-1][0] == seen[-1][1] > 0
    assert check.arrays == 4 and check.chunks == 2 + 2 + 1 + 1  # patches, done/patches, coords, tissue
    (store.path / "patches" / "c" / "2" / "0" / "0" / "0").unlink()
    check = verify_store(store.path)
    assert [(d.array, d.chunk) for d in check.damage] == [("patches", 2)]
    assert "patches/c/2/0/0/0 is missing" in check.damage[0].problem
    assert "slidestream tile /s.svs" in check.hint()


def test_flipped_bits_anywhere_are_found(tmp_path):
    store = _store(tmp_path)
    _fill(store)
    _flip(store.path / "done" / "patches" / "c" / "1", 0)
    _flip(store.path / "tissue" / "c" / "0", 5)
    check = verify_store(store.path)
    assert sorted((d.array, d.chunk, d.problem) for d in check.damage) == [
        ("done/patches", 1, "checksum mismatch"), ("tissue", 0, "checksum mismatch")]
    with pytest.raises(StoreError, match="chunk 1 of done/patches is damaged"):
        SlideStore.open(store.path).done_chunks()


def test_jpeg_shards_name_the_damaged_tile(tmp_path):
    import imagecodecs

    store = _store(tmp_path, jpeg=True)
    tile = imagecodecs.jpeg8_encode(np.full((8, 8, 3), 128, np.uint8), level=90)
    for i, sl in enumerate(store.chunk_slices()):
        store.write_jpeg_shard(i, [tile] * (sl.stop - sl.start))
        store.mark_done("patches", i)
    assert verify_store(store.path).ok
    shard = store.path / "patches" / "c" / "1" / "0" / "0" / "0"
    _flip(shard, len(tile) + 4 + 10)  # inside the second tile of the shard: row 5
    assert [d.problem for d in verify_store(store.path).damage] == ["checksum mismatch in inner chunk 1 (row 5)"]
    shard.write_bytes(shard.read_bytes()[:-3])  # truncated: the index no longer ends where it should
    assert [d.problem for d in verify_store(store.path).damage] == ["checksum mismatch in the shard index"]
    with pytest.raises(StoreError, match=r"chunk 1 of patches is damaged \(checksum mismatch in the shard index\)"):
        SlideStore.open(store.path).patches[4:6]


def test_unreadable_metadata_is_damage(tmp_path):
    store = _store(tmp_path)
    _fill(store)
    (store.path / "tissue" / "zarr.json").write_text("{not json")
    check = verify_store(store.path)
    assert [d.array for d in check.damage] == ["tissue"] and "unreadable zarr.json" in check.damage[0].problem
    (store.path / "coords" / "zarr.json").unlink()
    check = verify_store(store.path)
    assert sorted((d.array, d.problem.split(":")[0]) for d in check.damage) == [
        ("coords", "its zarr.json is missing (chunk files without array metadata)"),
        ("tissue", "unreadable zarr.json")]
    (store.path / "zarr.json").unlink()
    check = verify_store(store.path)
    assert [d.array for d in check.damage] == ["(root)"]


def test_a_read_only_store_stays_read_only(tmp_path):
    store = _store(tmp_path)
    ro = SlideStore.open(store.path)
    with pytest.raises(ValueError, match="read-only"):
        ro.write_chunk("patches", 0, np.zeros((4, 8, 8, 3), np.uint8))
    assert not (store.path / "patches" / "c").exists()


def test_rows_of_selections():
    class A:  # the attributes rows_of reads
        ndim, shape, chunks, shards = 2, (10, 3), (4, 3), None

    assert rows_of(slice(None), A) == [0, 1, 2]
    assert rows_of((slice(4, 8), slice(None)), A) == [1]
    assert rows_of(slice(5, 5), A) == []
    assert rows_of(9, A) == [2] and rows_of(-1, A) == [2]
    assert rows_of((np.array([0, 9, 1]),), A) == [0, 2]
    assert rows_of(Ellipsis, A) is None
