"""Schema 3 stores: a checksum on every array, every chunk written, and hand-written chunk files byte for byte what
Zarr writes for the declared codecs."""

from __future__ import annotations

import json

import imagecodecs
import numpy as np
import pytest
import zarr
from zarr.codecs import Crc32cCodec, ShardingCodec

from slidestream.errors import StoreError
from slidestream.store import SCHEMA_VERSION, JpegTiles, SlideStore, checked_array
from slidestream.synth import SynthConfig, write_synthetic_slide
from slidestream.tiling.grid import TilingParams
from slidestream.tiling.tiler import tile_slide


def _store(tmp_path, n=10, chunk=4, jpeg=False, name="s.zarr", coords=None):
    coords = np.arange(2 * n).reshape(n, 2) * 10 if coords is None else coords
    return SlideStore.create(tmp_path / name, coords=coords, tissue=np.ones(n), slide={"path": "/slides/s.svs"},
                             tiling={"mpp": 0.5, "tile_size": 8}, tile_size=8, chunk_tiles=chunk,
                             jpeg_tiles=JpegTiles(level=0, colorspace=None, outcolorspace=2) if jpeg else None)


def _twin(store: SlideStore, array: str) -> zarr.Array:
    """A plain Zarr array with the metadata of ``array``, next to the store, for Zarr's own writes."""
    src = store.group[array]
    twin = zarr.create_array(store.path.parent / "twin.zarr", shape=src.shape, dtype=src.dtype,
                             chunks=src.chunks, shards=src.shards, fill_value=src.fill_value, overwrite=True,
                             serializer=src.serializer, compressors=src.compressors,
                             config={"write_empty_chunks": True})
    assert twin.metadata.codecs == src.metadata.codecs
    return twin


def _file(arr: zarr.Array, root, coords) -> bytes:
    return (root / arr.path / arr.metadata.encode_chunk_key(coords)).read_bytes()


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    """One synthetic slide tiled both ways: its own JPEG tiles, and decoded pixels; features and scores added."""
    root = tmp_path_factory.mktemp("tiled")
    slide = root / "s.svs"
    write_synthetic_slide(slide, SynthConfig(width=2048, height=2048, mpp=0.5, tile_size=64, seed=2))
    stores = {}
    for encoding, size in (("jpeg", 64), ("pixels", 48)):
        store = SlideStore.open(tile_slide(slide, root / encoding, TilingParams(mpp=0.5, tile_size=size),
                                           workers=1).store, mode="r+")
        assert store.patch_encoding["name"] == encoding
        store.create_feature_array("f", 4)
        for i, sl in enumerate(store.chunk_slices("features/f")):
            store.write_chunk("features/f", i, np.full((sl.stop - sl.start, 4), i, np.float16))
        store.write_scores("m", np.linspace(0, 1, store.n_tiles))
        stores[encoding] = store
    return stores


@pytest.mark.parametrize("encoding", ["jpeg", "pixels"])
def test_every_array_of_a_new_store_has_a_checksum(tiled, encoding):
    store = tiled[encoding]
    assert store.attrs["slidestream"]["schema"] == SCHEMA_VERSION == 3
    names = [name for name, node in store.group.members(max_depth=None) if isinstance(node, zarr.Array)]
    assert {"coords", "tissue", "tissue_mask", "patches", "qc/white", "qc/sharpness", "qc/flags", "done/patches",
            "features/f", "done/features/f", "scores/m", "done/scores/m"} <= set(names)
    for name in names:
        codecs = store.group[name].metadata.codecs
        if isinstance(codecs[0], ShardingCodec):  # a checksum per tile and one on the index
            assert isinstance(codecs[0].codecs[-1], Crc32cCodec) and isinstance(codecs[0].index_codecs[-1],
                                                                                 Crc32cCodec), name
        else:
            assert isinstance(codecs[-1], Crc32cCodec), name
    assert np.array_equal(store.read_features("f")[:, 0], np.repeat(np.arange(len(store.chunk_slices("features/f"))),
                                                                    store.chunk_tiles)[: store.n_tiles])


def test_raw_chunks_are_byte_for_byte_what_zarr_writes(tmp_path):
    store = _store(tmp_path)
    for name, dtype in (("qc/white", "float32"), ("qc/flags", "uint8")):
        checked_array(store.group, name, shape=(10,), dtype=dtype, chunks=(4,), fill_value=0, compressors=None)
        twin = _twin(store, name)
        values = np.arange(2, dtype=dtype) + 3  # the last, partial chunk: padded with the fill value
        store.write_raw_chunk(name, 2, values)
        twin[8:] = values
        assert _file(store.group[name], store.path, (2,)) == _file(twin, tmp_path / "twin.zarr", (2,))
        assert np.array_equal(SlideStore.open(store.path).group[name][8:], values)
    store.mark_done("patches", 1)
    twin = _twin(store, "done/patches")
    twin[1] = 1
    assert _file(store.group["done/patches"], store.path, (1,)) == _file(twin, tmp_path / "twin.zarr", (1,))


def test_pixel_chunks_are_byte_for_byte_what_zarr_writes(tmp_path):
    store = _store(tmp_path)
    batch = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    store.write_pixel_chunk(2, batch)
    twin = _twin(store, "patches")
    twin[8:] = batch
    assert _file(store.group["patches"], store.path, (2, 0, 0, 0)) == _file(twin, tmp_path / "twin.zarr", (2, 0, 0, 0))
    store.mark_done("patches", 2)
    assert np.array_equal(SlideStore.open(store.path).patches[8:], batch)


def test_jpeg_shards_are_byte_for_byte_what_zarr_writes(tmp_path):
    store = _store(tmp_path, jpeg=True)
    codec = store.group["patches"].metadata.codecs[0].codecs[0]
    yy, xx = np.mgrid[:8, :8]
    tiles = np.stack([np.stack([120 + 10 * i + xx, 90 + yy, 160 + xx + yy], axis=-1)
                      for i in range(2)]).astype(np.uint8)
    # Zarr encodes pixels with the codec's quality; the same streams, written by hand, must give the same shard
    streams = [imagecodecs.jpeg8_encode(t, level=codec.level, colorspace="RGB", outcolorspace="YCBCR") for t in tiles]
    store.write_jpeg_shard(2, streams)
    twin = _twin(store, "patches")
    twin[8:] = tiles
    assert _file(store.group["patches"], store.path, (2, 0, 0, 0)) == _file(twin, tmp_path / "twin.zarr", (2, 0, 0, 0))
    store.mark_done("patches", 2)
    assert np.array_equal(SlideStore.open(store.path).patches[8:], zarr.open_array(tmp_path / "twin.zarr")[8:])


def test_chunks_of_fill_values_are_written_and_read_back(tmp_path):
    # one tile at the origin: coords all zero, Zarr's fill value; features all zero
    store = _store(tmp_path, n=1, chunk=4, coords=np.zeros((1, 2)))
    assert (store.path / "coords" / "c" / "0" / "0").is_file()
    store.create_feature_array("f", 3)
    store.write_chunk("features/f", 0, np.zeros((1, 3), np.float16))
    again = SlideStore.open(store.path)
    assert again.coords.tolist() == [[0, 0]] and again.read_features("f").tolist() == [[0, 0, 0]]


def test_a_missing_chunk_is_an_error_naming_store_array_chunk_and_repair(tmp_path):
    store = _store(tmp_path)
    (store.path / "coords" / "c" / "0" / "0").unlink()
    with pytest.raises(StoreError) as info:
        SlideStore.open(store.path).coords
    msg = str(info.value)
    assert msg.startswith(f"{store.path}: chunk 0 of coords is damaged (its file coords/c/0/0 is missing)")
    assert f"slidestream tile /slides/s.svs --out {tmp_path} --target-mpp 0.5 --tile-size 8 --overwrite" in msg


def test_done_markers_and_unwritten_chunks(tmp_path):
    store = _store(tmp_path)
    assert not store.done_chunks().any()  # no marker written: not done, no error
    store.create_feature_array("f", 2)
    store.write_chunk("features/f", 0, np.ones((4, 2), np.float16))
    with pytest.raises(StoreError, match="incomplete"):
        store.read_features("f")
    with pytest.raises(StoreError, match="chunk 1 of features/f is not written yet"):
        store.read("features/f", slice(4, 8))
    assert store.read("features/f", slice(0, 4)).tolist() == [[1, 1]] * 4


def test_a_flipped_bit_is_an_error_naming_the_chunk(tmp_path):
    store = _store(tmp_path)
    store.create_feature_array("f", 2)
    for i, sl in enumerate(store.chunk_slices("features/f")):
        store.write_chunk("features/f", i, np.full((sl.stop - sl.start, 2), i, np.float16))
    path = store.path / "features" / "f" / "c" / "1" / "0"
    data = bytearray(path.read_bytes())
    data[3] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"chunk 1 of features/f is damaged \(checksum mismatch\); recompute them "
                                         r"with `slidestream embed .*s.zarr --encoder f --overwrite`"):
        SlideStore.open(store.path).read_features("f")
    # reads that do not touch the chunk are unaffected
    assert SlideStore.open(store.path).read("features/f", slice(8, 10)).tolist() == [[2, 2]] * 2


def test_checked_patches_keep_the_zarr_array_interface(tmp_path):
    store = _store(tmp_path)
    for i, sl in enumerate(store.chunk_slices()):
        store.write_pixel_chunk(i, np.full((sl.stop - sl.start, 8, 8, 3), i, np.uint8))
        store.mark_done("patches", i)
    p = SlideStore.open(store.path).patches
    assert p.shape == (10, 8, 8, 3) and p.chunks == (4, 8, 8, 3)
    assert p.attrs["encoding"]["name"] == "pixels"
    assert p.get_orthogonal_selection(([0, 9],))[:, 0, 0, 0].tolist() == [0, 2]
    assert np.asarray(p).shape == (10, 8, 8, 3)
    (store.path / "patches" / "c" / "2" / "0" / "0" / "0").unlink()
    with pytest.raises(StoreError, match="chunk 2 of patches is damaged"):
        p.get_orthogonal_selection(([0, 9],))
    assert json.loads((store.path / "zarr.json").read_text())["attributes"]["slidestream"]["schema"] == 3
