"""Tumour regions on the tiler's real grid: neighbouring grid tiles are one region at every pixel size."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from scipy import ndimage

from slidestream.annotations import tumor_regions
from slidestream.errors import ConfigError
from slidestream.tiling.grid import TilingParams, grid_coords, plan_reads

PYRAMIDS = {"aperio": (1.0, 4.0, 16.0), "halving": (1.0, 2.0, 4.0, 8.0)}


def _grid(mpp: float, overlap: int, pyramid: str, size: int = 20000):
    plan = plan_reads(TilingParams(mpp=0.5, tile_size=224, overlap=overlap), mpp, PYRAMIDS[pyramid])
    coords = grid_coords((size, size), plan)
    side = 224 * (plan.stride0 / (224 - overlap))  # the unrounded tile side, as pipeline.outputs passes it
    return plan, coords, side


def _indices(coords, stride):
    return np.rint(coords / stride).astype(int)


@pytest.mark.parametrize("pyramid", sorted(PYRAMIDS))
@pytest.mark.parametrize("overlap", [0, 32])
@pytest.mark.parametrize("mpp", [0.2527, 0.243, 0.25, 0.5])
def test_a_fully_positive_slide_is_one_region_tight_to_its_tiles(mpp, overlap, pyramid):
    plan, coords, side = _grid(mpp, overlap, pyramid)
    scores = np.linspace(0.6, 1.0, len(coords))
    regions = tumor_regions(coords, side, scores, 0.5, stride=plan.stride0, mpp=mpp)
    assert len(regions) == 1
    poly, stats = regions[0]
    assert poly.geom_type == "Polygon" and poly.is_valid and not poly.interiors
    assert stats["n_tiles"] == len(coords) and stats["mean_score"] == pytest.approx(scores.mean())
    # the outline follows the tiles as the tiler cut them (read extent, floored grid coordinates) within a pixel
    tiles = shapely.union_all(shapely.box(coords[:, 0], coords[:, 1], coords[:, 0] + plan.extent0,
                                          coords[:, 1] + plan.extent0))
    assert poly.buffer(1.5, join_style="mitre").contains(tiles) and tiles.buffer(1.5, join_style="mitre").contains(poly)
    # region and tiles differ at most by seams of a pixel along the grid lines (gaps or overlaps of the floors)
    assert abs(poly.area - tiles.area) <= (2 * np.sqrt(len(coords)) + 2) * poly.length / 4
    assert stats["area_um2"] == pytest.approx(poly.area * mpp * mpp)


@pytest.mark.parametrize("pyramid", sorted(PYRAMIDS))
@pytest.mark.parametrize("mpp", [0.2527, 0.243, 0.25, 0.5])
def test_regions_are_the_4_connected_groups_of_grid_tiles(mpp, pyramid):
    # a random blotchy score map on the grid: the regions must be exactly the 4-connected components of the
    # positive grid cells (scipy.ndimage.label's default structure), with their tiles and scores
    plan, coords, side = _grid(mpp, 0, pyramid, size=12000)
    ij = _indices(coords, plan.stride0)
    rng = np.random.default_rng(int(mpp * 1e4))
    field = ndimage.gaussian_filter(rng.normal(size=ij.max(0) + 1), 1.2)
    scores = field[ij[:, 0], ij[:, 1]]
    threshold = np.quantile(scores, 0.6)
    labels, n_expected = ndimage.label(field >= threshold)
    regions = tumor_regions(coords, side, scores, threshold, stride=plan.stride0)
    assert len(regions) == n_expected > 5
    expected_sizes = sorted(np.bincount(labels[ij[:, 0], ij[:, 1]])[1:].tolist())
    assert sorted(s["n_tiles"] for _, s in regions) == expected_sizes
    pos = scores >= threshold
    assert sum(s["n_tiles"] for _, s in regions) == pos.sum()
    for poly, stats in regions:
        assert poly.is_valid and poly.geom_type == "Polygon"
        inside = shapely.contains_xy(poly, coords[pos, 0] + side / 2, coords[pos, 1] + side / 2)
        assert inside.sum() == stats["n_tiles"]
        assert stats["max_score"] == pytest.approx(scores[pos][inside].max())


@pytest.mark.parametrize("mpp", [0.2527, 0.243])
def test_corner_neighbours_stay_apart_and_overlapping_ones_join(mpp):
    plan, coords, side = _grid(mpp, 0, "halving", size=6000)
    ij = _indices(coords, plan.stride0)
    checker = ((ij[:, 0] + ij[:, 1]) % 2 == 0).astype(float)
    assert len(tumor_regions(coords, side, checker, 0.5, stride=plan.stride0)) == checker.sum()
    # with overlapping tiles, diagonal neighbours share area: one region
    plan, coords, side = _grid(mpp, 32, "halving", size=6000)
    ij = _indices(coords, plan.stride0)
    checker = ((ij[:, 0] + ij[:, 1]) % 2 == 0).astype(float)
    assert len(tumor_regions(coords, side, checker, 0.5, stride=plan.stride0)) == 1
    # but two blocks one grid column apart do not touch, overlap or not
    two = (ij[:, 0] != 5).astype(float)
    assert len(tumor_regions(coords, side, two, 0.5, stride=plan.stride0)) == 2


def test_tiles_off_the_grid_are_refused():
    plan, coords, side = _grid(0.2527, 0, "aperio", size=3000)
    moved = coords + np.array([[0, 0]] * (len(coords) - 1) + [[150, 0]])
    with pytest.raises(ConfigError, match="not on the grid of stride"):
        tumor_regions(moved, side, np.ones(len(coords)), 0.5, stride=plan.stride0)
    with pytest.raises(ConfigError, match="stride must be a positive"):
        tumor_regions(coords, side, np.ones(len(coords)), 0.5, stride=0)
