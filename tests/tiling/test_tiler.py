"""Tissue segmentation, tile grids, the slide store and the tiler, on real and constructed inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import openslide
import pytest
import zarr
from slidestream.errors import ConfigError, StoreError
from slidestream.store.codecs import JpegTileCodec
from slidestream.tiling.grid import TilingParams, grid_coords, plan_reads, tissue_fractions
from slidestream.tiling.regions import roi_from_file, write_tissue_geojson
from slidestream.tiling.qc import tile_stats
from slidestream.store import SlideStore
from slidestream.tiling.jpeg_fastpath import jpeg_passthrough, reduced_read
from slidestream.tiling.reads import patch_reader, read_tile, resize_patch
from slidestream.tiling.regions import tissue_polygons
from slidestream.tiling.tiler import tile_slide
from slidestream.tiling.tissue import mask_to_polygons, pen_mask, segment_tissue
from slidestream.wsi.direct import merge_jpeg_tables
from slidestream.annotations import check_qupath_geojson
from slidestream.wsi.slide import open_slide
from slidestream.synth import SynthConfig, write_synthetic_slide


# ---------------------------------------------------------------------------------------------------- tissue
def _disk_image(h=300, w=400, r=80, pen=False):
    yy, xx = np.mgrid[:h, :w]
    truth = (yy - 150) ** 2 + (xx - 150) ** 2 < r**2
    img = np.full((h, w, 3), 240, np.uint8)
    rng = np.random.default_rng(0)
    tissue_rgb = np.array([200, 110, 170]) + rng.normal(0, 12, (h, w, 3))
    img[truth] = np.clip(tissue_rgb[truth], 0, 255).astype(np.uint8)
    pen_truth = np.zeros((h, w), bool)
    if pen:
        pen_truth[40:60, 220:380] = True  # a thick blue stroke on glass
        pen_truth[140:160, 100:200] = True  # and across the tissue
        img[pen_truth] = (30, 60, 170)
    return img, truth, pen_truth


def test_segment_tissue_finds_the_disk():
    img, truth, _ = _disk_image()
    mask = segment_tissue(img, mpp=4.0)
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.95


def test_pen_marks_are_excluded():
    img, truth, pen = _disk_image(pen=True)
    assert pen_mask(img)[pen].mean() > 0.99
    mask = segment_tissue(img, mpp=4.0)
    assert mask[pen].mean() < 0.05
    # the tissue around the stroke stays
    assert (mask & truth & ~pen).sum() / (truth & ~pen).sum() > 0.8


def test_blank_image_has_no_tissue():
    assert not segment_tissue(np.full((100, 100, 3), 245, np.uint8), mpp=4.0).any()


def test_mask_to_polygons_scales_to_level0():
    mask = np.zeros((50, 60), bool)
    mask[10:20, 5:25] = True
    mask[13:16, 10:14] = False  # a hole
    poly = mask_to_polygons(mask, (4.0, 4.0), tolerance=0)
    assert poly.is_valid
    assert poly.area == pytest.approx((200 - 12) * 16, rel=0.08)
    minx, miny, maxx, maxy = poly.bounds
    assert (minx, miny, maxx, maxy) == pytest.approx((20, 40, 100, 80), abs=4)


# ---------------------------------------------------------------------------------------------------- grid
def test_plan_reads_picks_the_coarsest_level_without_upsampling():
    params = TilingParams(mpp=0.5, tile_size=224)
    plan = plan_reads(params, 0.25, (1.0, 4.0, 16.0))
    assert plan.level == 0 and plan.read_size == 448 and plan.extent0 == 448
    plan = plan_reads(TilingParams(mpp=1.0, tile_size=256), 0.25, (1.0, 4.0, 16.0))
    assert plan.level == 1 and plan.read_size == 256 and not plan.needs_resize
    plan = plan_reads(TilingParams(mpp=0.5, tile_size=224), 0.499, (1.0,))
    assert plan.read_size == 224 and plan.extent0 == 224  # within tolerance: read as is
    with pytest.raises(ConfigError, match="never upsamples"):
        plan_reads(TilingParams(mpp=0.25), 0.5, (1.0,))


def test_grid_coords_stay_inside_the_slide():
    plan = plan_reads(TilingParams(mpp=0.5, tile_size=224, overlap=24), 0.25, (1.0,))
    coords = grid_coords((5000, 3000), plan)
    assert coords.dtype == np.int64
    assert (coords[:, 0] + plan.extent0 <= 5000).all() and (coords[:, 1] + plan.extent0 <= 3000).all()
    xs = np.unique(coords[:, 0])
    assert np.allclose(np.diff(xs), 400, atol=1)  # stride (224 - 24) target px = 400 level-0 px
    assert len(coords) == len(xs) * len(np.unique(coords[:, 1]))


def test_tissue_fractions_match_brute_force():
    rng = np.random.default_rng(1)
    mask = rng.random((64, 80)) > 0.6
    coords = np.array([[0, 0], [32, 16], [120, 200], [300, 220]])
    frac = tissue_fractions(coords, 40.0, mask, (4.0, 4.0))
    for (x, y), f in zip(coords, frac):
        sub = mask[y // 4:(y + 40) // 4, x // 4:(x + 40) // 4]
        assert f == pytest.approx(sub.mean(), abs=1e-6)


# ---------------------------------------------------------------------------------------------------- store
def _toy_store(tmp_path, n=10, chunk=4):
    coords = np.arange(2 * n).reshape(n, 2) * 10
    return SlideStore.create(tmp_path / "s.zarr", coords=coords, tissue=np.ones(n), slide={"fingerprint": "x"},
                             tiling={"mpp": 0.5}, tile_size=8, chunk_tiles=chunk)


def test_store_chunks_and_done_markers(tmp_path):
    store = _toy_store(tmp_path)
    assert [s.stop - s.start for s in store.chunk_slices()] == [4, 4, 2]
    assert not store.done_chunks().any()
    store.write_chunk("patches", 1, np.full((4, 8, 8, 3), 7, np.uint8))
    assert store.done_chunks().tolist() == [False, True, False]
    again = SlideStore.open(store.path)
    assert (again.patches[4:8] == 7).all()
    with pytest.raises(StoreError, match="chunk 0 of patches is not written yet"):  # never read as white tiles
        again.patches[:4]
    with pytest.raises(StoreError, match="already exists"):
        _toy_store(tmp_path)


def test_store_features_refuse_silent_mixing(tmp_path):
    store = _toy_store(tmp_path)
    store.create_feature_array("enc", 16, attrs={"weights": "a"})
    assert store.create_feature_array("enc", 16, attrs={"weights": "a"}).shape == (10, 16)
    with pytest.raises(StoreError, match="different settings"):
        store.create_feature_array("enc", 16, attrs={"weights": "b"})
    with pytest.raises(StoreError, match="incomplete"):
        store.read_features("enc")
    with pytest.raises(StoreError, match="no features/other"):
        store.read_features("other")


def test_open_rejects_non_stores(tmp_path):
    with pytest.raises(StoreError, match="not a slidestream store"):
        SlideStore.open(tmp_path)


# ---------------------------------------------------------------------------------------------------- tiler on real slides
def test_cmu_store_holds_only_tissue_tiles_equal_to_the_slide(cmu_slide, tmp_path):
    res = tile_slide(cmu_slide, tmp_path, TilingParams(mpp=0.5, tile_size=224))
    store = SlideStore.open(res.store)
    assert res.n_tiles == store.n_tiles > 20
    assert (store.tissue >= 0.5).all()
    assert store.status["tiling"] == "complete" and store.is_complete("patches")
    coords, patches = store.coords, store.patches[...]
    with open_slide(cmu_slide) as slide:
        for i in range(len(coords)):
            region = slide.read_region(tuple(int(v) for v in coords[i]), 0, (224, 224))
            assert np.array_equal(region, patches[i]), f"tile {i} at {coords[i]} differs from the slide"
        # Tiles are tissue: clearly darker and more saturated than the glass around the section.
        assert patches.mean() < 215
    poly = tissue_polygons(store)
    assert poly.is_valid and poly.area > 0
    for x, y in coords:
        assert poly.intersects(__import__("shapely").geometry.box(x, y, x + 224, y + 224))


def test_resume_rewrites_only_missing_chunks(cmu_slide, tmp_path):
    params = TilingParams(mpp=0.5, tile_size=224)
    first = tile_slide(cmu_slide, tmp_path, params, chunk_tiles=8)
    store = SlideStore.open(first.store, mode="r+")
    reference = store.patches[...]
    n_chunks = len(store.chunk_slices())
    # Simulate a crash after chunk 0: later chunks were never marked done (and hold junk).
    store.group["done/patches"][1:] = 0
    store.patches[8:] = 0
    again = tile_slide(cmu_slide, tmp_path, params, chunk_tiles=8)
    assert again.action == "resumed" and again.chunks_written == n_chunks - 1
    assert np.array_equal(SlideStore.open(first.store).patches[...], reference)
    assert tile_slide(cmu_slide, tmp_path, params).action == "up-to-date"


def test_changed_parameters_or_slide_are_refused(cmu_slide, tmp_path):
    tile_slide(cmu_slide, tmp_path / "out", TilingParams(mpp=0.5))
    with pytest.raises(StoreError, match="other parameters"):
        tile_slide(cmu_slide, tmp_path / "out", TilingParams(mpp=1.0))
    rebuilt = tile_slide(cmu_slide, tmp_path / "out", TilingParams(mpp=1.0), overwrite=True)
    assert rebuilt.action == "tiled"
    # A store whose QC was measured another way (as by an older version) is not resumed into
    store = SlideStore.open(rebuilt.store, mode="r+")
    store.update_attrs(tiling={**store.tiling, "qc_measure": "green channel"})
    with pytest.raises(StoreError, match="qc_measure"):
        tile_slide(cmu_slide, tmp_path / "out", TilingParams(mpp=1.0))
    # Same file name, different bytes: the fingerprint notices.
    copy = tmp_path / "slide" / cmu_slide.name
    copy.parent.mkdir()
    shutil.copy(cmu_slide, copy)
    tile_slide(copy, tmp_path / "out2", TilingParams(mpp=0.5))
    data = bytearray(copy.read_bytes())
    data[-10] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="different slide"):
        tile_slide(copy, tmp_path / "out2", TilingParams(mpp=0.5))


# ---------------------------------------------------------------------------------------------------- fast paths
NATIVE = TilingParams(mpp=0.25, tile_size=256)


@pytest.fixture(scope="module")
def synth40(tmp_path_factory):
    """A 40x synthetic SVS (YCbCr JPEG tiles of 256 px, no shared tables)."""
    path = tmp_path_factory.mktemp("synth40") / "s40.svs"
    write_synthetic_slide(path, SynthConfig(width=4096, height=3072, mpp=0.25, seed=5))
    return path


def _slide_reads(path, store, mpp=None):
    plan_args = store.tiling
    with open_slide(path, mpp=mpp) as slide:
        plan = plan_reads(TilingParams(mpp=plan_args["mpp"], tile_size=plan_args["tile_size"],
                                       overlap=plan_args["overlap"]), slide.mpp, tuple(slide.level_downsamples))
        return np.stack([read_tile(slide, xy, plan) for xy in store.coords])


def _openslide_reads(path, store):
    size = store.tiling["read_size"]
    with openslide.OpenSlide(str(path)) as osr:
        return np.stack([np.asarray(osr.read_region((int(x), int(y)), store.tiling["level"], (size, size))
                                    .convert("RGB")) for x, y in store.coords])


def test_native_grid_keeps_the_slides_own_jpeg_tiles(synth40, tmp_path):
    res = tile_slide(synth40, tmp_path / "jpeg", NATIVE, chunk_tiles=16)
    store = SlideStore.open(res.store)
    assert store.patch_encoding["name"] == "jpeg" and res.extra["patch_encoding"] == "jpeg"
    assert store.n_tiles > 40 and len(store.chunk_slices()) == -(-store.n_tiles // 16)
    patches = store.patches[...]
    assert patches.dtype == np.uint8 and patches.shape[1:] == (256, 256, 3)
    assert store.patches[3].shape == (256, 256, 3)
    # the stored bytes decode to exactly what reading the slide gives, and to OpenSlide's pixels within 1 level
    assert np.array_equal(patches, _slide_reads(synth40, store))
    assert np.abs(patches.astype(int) - _openslide_reads(synth40, store)).mean() <= 1
    # one shard file per chunk, each smaller than its decoded tiles by far
    shards = sorted((store.path / "patches" / "c").rglob("*"))
    shard_files = [f for f in shards if f.is_file()]
    assert len(shard_files) == len(store.chunk_slices())
    assert sum(f.stat().st_size for f in shard_files) < patches.nbytes / 5
    # the same tiles decoded and stored as pixels are the same pixels, with the same QC: the pass-through path
    # measures it on a grey decode, whose luma differs from the RGB decode's by the chroma's rounding only
    pixels = SlideStore.open(tile_slide(synth40, tmp_path / "px", NATIVE, chunk_tiles=16, passthrough=False).store)
    assert pixels.patch_encoding["name"] == "pixels"
    assert np.array_equal(pixels.patches[...], patches)
    for k in ("qc/white", "qc/flags"):
        assert np.array_equal(pixels.group[k][...], store.group[k][...]), k
    sharp_px, sharp_jpeg = pixels.group["qc/sharpness"][...], store.group["qc/sharpness"][...]
    np.testing.assert_allclose(sharp_jpeg, sharp_px, rtol=0.05, atol=1.0)
    print("sharpness, pass-through vs pixels: max relative difference",
          float(np.max(np.abs(sharp_jpeg - sharp_px) / np.maximum(sharp_px, 1.0))))
    assert (store.group["qc/sharpness"][...] > 0).all()
    # plain Zarr, with nothing imported from slidestream, finds the JPEG tile codec through the entry point that
    # the installed package declares
    code = f"import zarr; p = zarr.open_group({str(store.path)!r}, mode='r')['patches'][3]; print(p.shape, p.sum())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["(256,", "256,", "3)", str(int(patches[3].sum()))], out.stderr[-2000:]
    # by default, chunks of about the same work: 256 kept JPEG tiles, 64 decoded ones
    for passthrough, rows in ((True, 256), (False, 64)):
        default = SlideStore.open(tile_slide(synth40, tmp_path / f"default-{passthrough}", NATIVE,
                                             passthrough=passthrough).store)
        assert default.chunk_tiles == rows and default.patches.attrs["encoding"]["name"] == \
            ("jpeg" if passthrough else "pixels")


def test_real_aperio_rgb_jpeg_with_shared_tables_passes_through(cmu_slide, tmp_path):
    # CMU-1 stores "RGB" JPEG (no colour transform) with JPEGTables: both must be honoured.
    params = TilingParams(mpp=0.499, tile_size=240, min_tissue=0.25)
    store = SlideStore.open(tile_slide(cmu_slide, tmp_path, params).store)
    enc = store.patch_encoding
    assert enc["name"] == "jpeg" and enc["colorspace"] == 2
    patches = store.patches[...]
    assert len(patches) > 20
    assert np.array_equal(patches, _slide_reads(cmu_slide, store))
    assert np.abs(patches.astype(int) - _openslide_reads(cmu_slide, store)).mean() <= 1
    # QC from the grey decode of RGB-coded JPEG (libjpeg converts RGB to luma itself) matches the pixel path's
    px = SlideStore.open(tile_slide(cmu_slide, tmp_path / "px", params, passthrough=False).store)
    assert np.array_equal(px.group["qc/white"][...], store.group["qc/white"][...])
    np.testing.assert_allclose(store.group["qc/sharpness"][...], px.group["qc/sharpness"][...], rtol=0.05, atol=1.0)
    # pixels written through Zarr are encoded in the store's JPEG colour space, so they read back in colour
    writable = SlideStore.open(store.path, mode="r+")
    writable.patches[0] = patches[1]
    assert np.abs(writable.patches[0].astype(int) - patches[1]).mean() < 3


def test_grids_off_the_stored_tiles_are_stored_as_pixels(synth40):
    with open_slide(synth40) as slide:
        coords = grid_coords(slide.dimensions, plan_reads(NATIVE, 0.25, (1.0,)))
        ok = jpeg_passthrough(slide, plan_reads(NATIVE, slide.mpp, slide.level_downsamples), coords)
        assert ok is not None and ok.level == 0
        shifted = plan_reads(TilingParams(mpp=0.25, tile_size=256, overlap=32), slide.mpp, slide.level_downsamples)
        assert jpeg_passthrough(slide, shifted, grid_coords(slide.dimensions, shifted)) is None
        small = plan_reads(TilingParams(mpp=0.25, tile_size=224), slide.mpp, slide.level_downsamples)
        assert jpeg_passthrough(slide, small, grid_coords(slide.dimensions, small)) is None
        resized = plan_reads(TilingParams(mpp=0.5, tile_size=128), slide.mpp, slide.level_downsamples)
        assert jpeg_passthrough(slide, resized, grid_coords(slide.dimensions, resized)) is None


def test_reduced_tile_reads_equal_region_reads(synth40, cmu_slide, tmp_path):
    params = TilingParams(mpp=0.5, tile_size=224)
    store = SlideStore.open(tile_slide(synth40, tmp_path / "a", params).store)
    with open_slide(synth40) as slide:
        plan = plan_reads(params, slide.mpp, slide.level_downsamples)
        spec = reduced_read(slide, plan, store.coords)
        read_back = np.stack([patch_reader(slide, plan, store.coords)(xy) for xy in store.coords])
    # YCbCr JPEG, factor 2: the decoder reduces the stored tiles (DCT scaling), recorded in the store
    assert spec is not None and spec.factor == 2 and spec.jpeg and spec.dct
    assert store.patch_encoding["name"] == "pixels" and store.patches.attrs["reduction"] == "jpeg-dct"
    patches = store.patches[...]
    assert np.array_equal(patches, read_back)  # read back from the slide: the same pixels
    # within rounding of the box reduction of region reads, and of OpenSlide's pixels box-reduced
    box = _slide_reads(synth40, store)
    diff = np.abs(patches.astype(int) - box)
    print(f"DCT vs box reduction: mean {diff.mean():.3f}, 99.9th percentile {np.percentile(diff, 99.9):.0f}")
    assert diff.mean() <= 0.5 and np.percentile(diff, 99.9) <= 8
    osr = np.stack([resize_patch(p, 224) for p in _openslide_reads(synth40, store)])
    assert np.abs(patches.astype(int) - osr).mean() <= 1
    # QC is measured on the stored patches
    expected = np.array([tile_stats(p) for p in patches], np.float32)
    assert np.array_equal(store.group["qc/white"][...], expected[:, 0])
    assert np.array_equal(store.group["qc/sharpness"][...], expected[:, 1])
    # real RGB-coded JPEG with shared tables, 2x from the level (MPP overridden so the factor is whole): the
    # decoder cannot be left to guess the colour space, so the box reduction, identical to region reads
    params = TilingParams(mpp=1.0, tile_size=120, min_tissue=0.25)
    store = SlideStore.open(tile_slide(cmu_slide, tmp_path / "b", params, mpp=0.5).store)
    with open_slide(cmu_slide, mpp=0.5) as slide:
        spec = reduced_read(slide, plan_reads(params, slide.mpp, slide.level_downsamples), store.coords)
    assert spec is not None and spec.colorspace == 2 and not spec.dct
    assert store.patches.attrs["reduction"] == "box"
    patches = store.patches[...]
    assert np.array_equal(patches, _slide_reads(cmu_slide, store, mpp=0.5))
    expected = np.array([tile_stats(p) for p in patches], np.float32)
    assert np.array_equal(store.group["qc/sharpness"][...], expected[:, 1])


def test_overview_reduced_by_the_decoder(synth40, cmu_slide, tmp_path):
    from PIL import Image

    from slidestream.tiling.jpeg_fastpath import dct_reduced_level
    from slidestream.tiling.overview import overview
    from slidestream.wsi.direct import DirectTiffReader

    with open_slide(synth40) as slide:
        # 4096 x 3072 at 0.25 µm/px: levels 4096, 1024, 256 px wide; 900 px comes from level 1 at 7/8
        level, exact_size = slide.overview_level(900)
        assert level == 1 and exact_size == (900, 675)
        small = overview(slide, 900)
        assert small.shape == (768 * 7 // 8, 1024 * 7 // 8, 3) == (672, 896, 3)
        region = slide.read_region((0, 0), 1, slide.level_dimensions[1])
        box = np.asarray(Image.fromarray(region).resize((896, 672), Image.Resampling.BOX))
        diff = np.abs(small.astype(int) - box)
        print(f"decoder-reduced overview vs box: mean {diff.mean():.3f}, 99.9th percentile {np.percentile(diff, 99.9)}")
        mpp = slide.mpp * 4096 / 896
        a, b = segment_tissue(small, mpp), segment_tissue(box, mpp)
        print(f"tissue masks IoU {(a & b).sum() / (a | b).sum():.4f}")
        assert diff.mean() <= 1.5 and (a & b).sum() / (a | b).sum() >= 0.98
        # 520 px: level 1 at 4/8, 512 px (at least two thirds of 520)
        assert overview(slide, 520).shape == (384, 512, 3)
        # 256 px is level 2 itself: read as it is
        assert overview(slide, 256).shape == (192, 256, 3)
        # level 1 to at most 240 px would take 1/8 (128 px), under two thirds of 240: not done by the decoder
        assert dct_reduced_level(slide, 1, 240) is None
    # a damaged tile: the decoder refuses it, and the exact path reads the level as the slide reader can
    damaged = tmp_path / "damaged.svs"
    shutil.copy(synth40, damaged)
    with open_slide(damaged) as slide:
        with DirectTiffReader(damaged, slide.level_dimensions, cache_bytes=0) as reader:
            lv = reader.levels[1]
            index = int(np.flatnonzero(lv.counts)[5])
            offset, count = int(lv.offsets[index]), int(lv.counts[index])
    with open(damaged, "r+b") as f:
        f.seek(offset + count // 3)
        f.write(b"\xff\xd9" + bytes(range(200)))  # an end-of-image marker mid-stream, then garbage
    with open_slide(damaged) as slide:
        assert dct_reduced_level(slide, 1, 900) is None
        assert overview(slide, 900).shape == (675, 900, 3)
    with open_slide(cmu_slide) as slide:
        # RGB-coded JPEG: the decoder cannot be left to guess the colour space, so the exact resize
        level, size = slide.overview_level(1000)
        assert dct_reduced_level(slide, level, 1000) is None
        assert overview(slide, 1000).shape[:2] == size[::-1]


def test_a_store_reduced_otherwise_is_not_resumed(synth40, tmp_path):
    params = TilingParams(mpp=0.5, tile_size=224)
    store = SlideStore.open(tile_slide(synth40, tmp_path, params, chunk_tiles=8).store, mode="r+")
    store.patches.attrs["reduction"] = "box"  # as if made by a version that box-reduced these tiles
    store.group["done/patches"][1:] = 0
    with pytest.raises(StoreError, match="reduced as 'box'"):
        tile_slide(synth40, tmp_path, params, chunk_tiles=8)


def test_resume_of_a_jpeg_store_rewrites_only_missing_shards(synth40, tmp_path):
    first = tile_slide(synth40, tmp_path, NATIVE, chunk_tiles=8)
    store = SlideStore.open(first.store, mode="r+")
    reference = store.patches[...]
    n_chunks = len(store.chunk_slices())
    store.group["done/patches"][2:] = 0
    for f in (store.path / "patches" / "c").iterdir():
        if int(f.name) >= 2:
            shutil.rmtree(f)
    again = tile_slide(synth40, tmp_path, NATIVE, chunk_tiles=8)
    assert again.action == "resumed" and again.chunks_written == n_chunks - 2
    assert np.array_equal(SlideStore.open(first.store).patches[...], reference)
    with pytest.raises(StoreError, match="other parameters"):
        tile_slide(synth40, tmp_path, NATIVE, chunk_tiles=8, passthrough=False)


def test_jpeg_shards_are_checked_and_pixels_can_still_be_written(synth40, tmp_path):
    store = SlideStore.open(tile_slide(synth40, tmp_path, NATIVE, chunk_tiles=16).store, mode="r+")
    shard = store.path / "patches" / "c" / "0" / "0" / "0" / "0"  # tiles 0-15
    data = bytearray(shard.read_bytes())
    data[-6] ^= 0xFF  # inside the shard index: its CRC32C no longer matches
    shard.write_bytes(bytes(data))
    fresh = SlideStore.open(store.path)
    with pytest.raises(StoreError, match=r"chunk 0 of patches is damaged \(checksum mismatch in the shard index\)"):
        fresh.patches[0]
    # writing pixels through Zarr encodes them as JPEG (lossy): close, not equal
    tile = np.full((256, 256, 3), (200, 120, 180), np.uint8)
    fresh = SlideStore.open(store.path, mode="r+")
    fresh.patches[20] = tile
    assert np.abs(fresh.patches[20].astype(int) - tile).max() <= 3
    with pytest.raises(StoreError, match="holds"):
        fresh.write_jpeg_shard(0, [b"\xff\xd8\xff\xd9"])


def test_merge_jpeg_tables_and_codec_round_trip():
    import imagecodecs

    yy, xx = np.mgrid[:64, :64]
    # smooth, like stained tissue at this scale (noise would lose its colour detail to chroma subsampling)
    tile = np.stack([150 + 60 * np.sin(xx / 9), 100 + 50 * np.cos(yy / 7), 170 + 30 * np.sin((xx + yy) / 11)],
                    axis=-1).astype(np.uint8)
    full = imagecodecs.jpeg8_encode(tile, level=90)
    assert merge_jpeg_tables(full, None) is full
    with pytest.raises(ValueError, match="SOI"):
        merge_jpeg_tables(b"junk", b"\xff\xd8\xff\xd9")
    codec = JpegTileCodec(colorspace=None, outcolorspace=2, level=95)
    assert JpegTileCodec.from_dict(codec.to_dict()) == codec
    g = zarr.open_group(zarr.storage.MemoryStore(), mode="w", zarr_format=3)
    arr = g.create_array("p", shape=(3, 64, 64, 3), dtype="uint8", chunks=(1, 64, 64, 3), serializer=codec,
                         compressors=None, fill_value=255)
    arr[1] = tile
    back = arr[1]
    assert back.dtype == np.uint8 and np.abs(back.astype(int) - tile).mean() < 2
    assert (arr[0] == 255).all()  # never written: the fill value


def test_raw_chunk_writes_refuse_compressed_arrays(tmp_path):
    store = _toy_store(tmp_path)
    with pytest.raises(StoreError, match="uncompressed"):
        store.write_raw_chunk("tissue", 0, np.ones(3))
    store.write_pixel_chunk(2, np.full((2, 8, 8, 3), 9, np.uint8))  # the last, partial chunk
    store.mark_done("patches", 2)
    again = SlideStore.open(store.path)
    assert (again.patches[8:] == 9).all()
    with pytest.raises(StoreError, match="chunk 1 of patches is not written yet"):
        again.patches[4:8]
    assert again.done_chunks().tolist() == [False, False, True]


# ---------------------------------------------------------------------------------------------------- regions
def test_tissue_outline_exports_to_qupath_and_reads_back_as_roi(cmu_slide, tmp_path):
    store = SlideStore.open(tile_slide(cmu_slide, tmp_path, TilingParams(), save_patches=False).store)
    path = write_tissue_geojson(store, tmp_path / "tissue.geojson")
    doc = json.loads(path.read_text())
    assert check_qupath_geojson(doc) == []
    props = doc["features"][0]["properties"]
    assert props["classification"]["name"] == "Tissue" and props["measurements"]["Area µm^2"] > 1e5
    roi = roi_from_file(path)
    tissue = tissue_polygons(store)
    assert roi.is_valid and roi.symmetric_difference(tissue).area < 0.01 * tissue.area
    inside = tile_slide(cmu_slide, tmp_path / "roi", TilingParams(), save_patches=False, roi=roi)
    assert 0 < inside.n_tiles <= store.n_tiles


def test_roi_from_file_needs_areas(shared_data):
    qupath = shared_data / "annotations" / "qupath-0.2-export"
    assert roi_from_file(qupath / "qupath-rectangle.json").area > 0
    with pytest.raises(ConfigError, match="no area annotation"):
        roi_from_file(qupath / "qupath-point.json")
    with pytest.raises(ConfigError, match="of class Stroma"):
        roi_from_file(qupath / "qupath-rectangle.json", classes=["Stroma"])
    lesions = roi_from_file(shared_data / "annotations" / "camelyon16-asap" / "tumor_009.xml")
    assert lesions.is_valid and len(lesions.geoms) >= 1


def test_close_mask_equals_scipy_morphology():
    """The numpy closing (shifted OR/AND) against the same octagon built from scipy.ndimage operations."""
    from scipy import ndimage as ndi

    from slidestream.tiling.tissue import close_mask

    def reference(mask, radius):
        pad = 2 * radius + 1
        img = np.pad(mask.astype(np.uint8), pad, mode="edge")
        a = max(int(round(radius * 0.414)), 0)
        b = radius - a
        cross = ndi.generate_binary_structure(2, 1)
        for square, diamond, border in ((ndi.maximum_filter1d, ndi.binary_dilation, 0),
                                        (ndi.minimum_filter1d, ndi.binary_erosion, 1)):
            if a:
                img = square(square(img, 2 * a + 1, axis=0), 2 * a + 1, axis=1)
            if b:
                img = diamond(img, structure=cross, iterations=b, border_value=border)
            img = img.astype(np.uint8)
        return img[pad:-pad, pad:-pad].astype(bool)

    rng = np.random.default_rng(0)
    for _ in range(20):
        h, w = (int(v) for v in rng.integers(5, 90, 2))
        mask = rng.random((h, w)) < rng.uniform(0.1, 0.9)
        for radius in (1, 2, 4, 7):
            assert np.array_equal(close_mask(mask, radius), reference(mask, radius)), (h, w, radius)
    assert np.array_equal(close_mask(mask, 0), mask)


def test_small_component_removal_equals_a_label_size_reference():
    from scipy import ndimage as ndi

    from slidestream.tiling.tissue import remove_small_holes, remove_small_objects

    def spiral(n: int) -> np.ndarray:  # one long component that winds back on itself: many union-find rounds
        m = np.zeros((n, n), bool)
        for d in range(0, n // 2, 4):
            m[d, d:n - d] = m[d:n - d, n - 1 - d] = m[n - 1 - d, d:n - d] = True
            m[d + 2:n - d, d] = True
            if d + 2 < n - d:
                m[d + 2, d:n - 2 - d] = True
        return m

    rng = np.random.default_rng(1)
    stairs = np.eye(90, dtype=bool) | np.eye(90, k=1, dtype=bool)  # 4-connected only through the second diagonal
    comb = np.zeros((60, 70), bool)
    comb[::2] = True
    comb[:, -1] = True
    shapes = [spiral(97), ~spiral(97), stairs, np.eye(50, dtype=bool), comb, ~comb,
              np.ones((5, 7), bool), np.zeros((5, 7), bool)]
    masks = [(m, k) for m in shapes for k in (1, 3, 60, 10_000)]
    for _ in range(40):
        masks.append((rng.random((int(rng.integers(3, 80)), int(rng.integers(3, 80)))) < rng.uniform(0.05, 0.9),
                      int(rng.integers(1, 20))))
    for mask, k in masks:
        labels, _ = ndi.label(mask)
        keep = np.bincount(labels.ravel()) > k
        keep[0] = False
        assert np.array_equal(remove_small_objects(mask, k), keep[labels])
        holes, _ = ndi.label(~mask)
        fill = np.bincount(holes.ravel()) <= k
        fill[0] = False
        assert np.array_equal(remove_small_holes(mask, k), mask | fill[holes])


# ---------------------------------------------------------------------------------------------------- tissue settings
def test_tissue_settings_and_keep_rule_are_recorded_and_a_store_is_not_resumed_with_others(cmu_slide, tmp_path):
    from dataclasses import replace

    from slidestream.tiling.grid import keep_tiles
    from slidestream.tiling.overview import tissue_mask
    from slidestream.tiling.tissue import TissueConfig

    params = TilingParams(mpp=0.5, tile_size=224)
    res = tile_slide(cmu_slide, tmp_path, params, save_patches=False)
    store = SlideStore.open(res.store)
    assert store.tiling["tissue"] == TissueConfig().to_dict() and store.tiling["keep_rule"] == "fraction"
    with pytest.raises(StoreError, match=r"other parameters \(tissue\.close_um\)"):
        tile_slide(cmu_slide, tmp_path, params, save_patches=False, tissue_config=TissueConfig(close_um=64.0))
    with pytest.raises(StoreError, match=r"other parameters \(keep_rule\)"):
        tile_slide(cmu_slide, tmp_path, replace(params, keep_rule="clam-four-pt"), save_patches=False)
    assert tile_slide(cmu_slide, tmp_path, params, save_patches=False,
                      tissue_config=TissueConfig()).action == "up-to-date"
    # the store holds the tiles the rule keeps, on the mask the settings give
    clam = replace(params, keep_rule="clam-four-pt")
    tissue = TissueConfig(keep_holes=False, min_saturation=0.08)
    other = SlideStore.open(tile_slide(cmu_slide, tmp_path / "clam", clam, save_patches=False,
                                       tissue_config=tissue).store)
    assert other.tiling["tissue"]["keep_holes"] is False and other.tiling["keep_rule"] == "clam-four-pt"
    with open_slide(cmu_slide) as slide:
        mask, ds = tissue_mask(slide, clam, tissue)
        plan = plan_reads(clam, slide.mpp, tuple(slide.level_downsamples))
        coords = grid_coords(slide.dimensions, plan)
    keep = keep_tiles(coords, plan.extent0, tissue_fractions(coords, plan.extent0, mask, ds), mask, ds, clam)
    assert np.array_equal(other.coords, coords[keep]) and other.n_tiles != store.n_tiles
    assert np.array_equal(SlideStore.open(other.path).group["tissue_mask"][...].astype(bool), mask)


def test_a_store_from_before_tissue_settings_resumes_only_with_the_defaults(tmp_path):
    from pathlib import Path

    from slidestream.tiling.tissue import TissueConfig

    data = Path(__file__).parents[1] / "store" / "data" / "v0.1.0"
    shutil.copy(data / "tiny.svs", tmp_path / "tiny.svs")
    shutil.copytree(data / "stores", tmp_path / "stores")
    assert "tissue" not in SlideStore.open(tmp_path / "stores" / "tiny.zarr").tiling
    params = TilingParams(mpp=0.5, tile_size=256, min_tissue=0.05)
    with pytest.raises(StoreError, match=r"tissue\.pen_filter"):
        tile_slide(tmp_path / "tiny.svs", tmp_path / "stores", params, workers=1,
                   tissue_config=TissueConfig(pen_filter=False))
    with pytest.raises(StoreError, match="keep_rule"):
        tile_slide(tmp_path / "tiny.svs", tmp_path / "stores", TilingParams(mpp=0.5, tile_size=256, min_tissue=0.05,
                                                                            keep_rule="any-tissue"), workers=1)
    res = tile_slide(tmp_path / "tiny.svs", tmp_path / "stores", params, workers=1, tissue_config=TissueConfig())
    assert res.action == "up-to-date"
