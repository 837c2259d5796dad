"""Tissue segmentation, tile grids, the slide store and the tiler, on real and constructed inputs."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from slidestream.errors import ConfigError, StoreError
from slidestream.tiling.grid import TilingParams, grid_coords, plan_reads, tissue_fractions
from slidestream.tiling.store import SlideStore
from slidestream.tiling.tiler import tile_slide, tissue_polygons
from slidestream.tiling.tissue import mask_to_polygons, pen_mask, segment_tissue
from slidestream.wsi.slide import open_slide


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
    assert (again.patches[4:8] == 7).all() and (again.patches[:4] == 255).all()
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
