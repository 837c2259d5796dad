"""A region of interest in a store: a small summary in ``zarr.json``, the geometry in its own array, and stores
from before (whole WKT in the attributes) still resumed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

from slidestream.errors import StoreError
from slidestream.store import SlideStore
from slidestream.tiling.grid import TilingParams
from slidestream.tiling.regions import roi_summary, store_roi
from slidestream.tiling.tiler import tile_slide

PARAMS = TilingParams(mpp=1.0, tile_size=128)


def _dense_roi(vertices: int) -> MultiPolygon:
    t = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    ring = np.c_[1110 + 900 * np.cos(t), 1480 + 1200 * np.sin(t)]  # inside CMU-1-Small-Region (2220 x 2967)
    return MultiPolygon([Polygon(ring)])


def test_summary_is_small_and_identifies_the_region():
    roi = _dense_roi(100_000)
    summary = roi_summary(roi)
    assert len(json.dumps(summary)) < 300
    assert summary["vertices"] == 100_001 and summary["polygons"] == 1
    assert summary["bounds"] == [round(v, 3) for v in roi.bounds] and summary["area"] == pytest.approx(roi.area)
    # the same region, rings started elsewhere and parts reordered: the same hash; another region: another
    a, b = box(0, 0, 10, 10), box(20, 0, 30, 10)
    shifted = Polygon(np.roll(np.asarray(a.exterior.coords)[:-1], 2, axis=0))
    assert roi_summary(MultiPolygon([a, b]))["sha256"] == roi_summary(MultiPolygon([b, shifted]))["sha256"]
    assert roi_summary(MultiPolygon([a]))["sha256"] != roi_summary(MultiPolygon([b]))["sha256"]


def test_a_large_region_stays_out_of_zarr_json(cmu_slide, tmp_path):
    roi = _dense_roi(100_000)
    res = tile_slide(cmu_slide, tmp_path, PARAMS, save_patches=False, roi=roi)
    metadata = (res.store / "zarr.json").read_bytes()
    assert len(metadata) < 20_000  # the whole WKT would be ~4 MB
    store = SlideStore.open(res.store)
    assert store.tiling["roi"] == roi_summary(roi)
    assert shapely.equals_exact(store_roi(store), roi, tolerance=0)
    centres = store.coords + store.tiling["extent0"] / 2
    assert res.n_tiles > 0 and shapely.contains_xy(roi, centres[:, 0], centres[:, 1]).all()
    # the same region again: resumed (up to date); another region: refused, as before
    assert tile_slide(cmu_slide, tmp_path, PARAMS, save_patches=False, roi=roi).action == "up-to-date"
    with pytest.raises(StoreError, match="roi"):
        tile_slide(cmu_slide, tmp_path, PARAMS, save_patches=False, roi=MultiPolygon([box(0, 0, 900, 900)]))


def test_a_store_from_before_summaries_still_resumes(cmu_slide, tmp_path):
    roi = MultiPolygon([box(100, 200, 1500, 2500)])
    res = tile_slide(cmu_slide, tmp_path, PARAMS, save_patches=False, roi=roi)
    store = SlideStore.open(res.store, mode="r+")
    # what earlier versions wrote: the whole geometry as WKT in the attribute, no array
    store.update_attrs(tiling={**store.tiling, "roi": roi.wkt})
    del store.group["roi"]
    assert store_roi(SlideStore.open(res.store)).equals(roi)
    assert tile_slide(cmu_slide, tmp_path, PARAMS, save_patches=False, roi=roi).action == "up-to-date"
