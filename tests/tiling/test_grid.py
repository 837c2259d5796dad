"""Tile keep rules (``--keep-rule``): constructed masks where each rule's answer is known, and the shared real slide,
where the raster rules are checked against the same rules on polygons (CLAM and TRIDENT test points and squares
against tissue polygons; here the polygons are the mask's own pixel squares, so both must agree exactly)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import shapely
from scipy import ndimage as ndi
from slidestream.errors import ConfigError
from slidestream.tiling.grid import (
    KEEP_RULES,
    TilingParams,
    grid_coords,
    keep_tiles,
    plan_reads,
    tissue_fractions,
)
from slidestream.tiling.overview import tissue_mask
from slidestream.wsi.slide import open_slide


def _keep(rule, coords, extent0, mask, ds=(1.0, 1.0), min_tissue=0.5):
    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    params = TilingParams(min_tissue=min_tissue, keep_rule=rule)
    return keep_tiles(coords, extent0, tissue_fractions(coords, extent0, mask, ds), mask, ds, params)


def test_unknown_keep_rule_is_refused():
    with pytest.raises(ConfigError, match="keep rule must be one of fraction, clam-four-pt, any-tissue"):
        TilingParams(keep_rule="four_pt")


def test_fraction_is_the_tissue_fraction_threshold():
    mask = np.zeros((64, 64), bool)
    mask[:, :12] = True  # 12 of the first tile's 32 columns: 37.5 %
    assert _keep("fraction", [[0, 0], [32, 0]], 32, mask, min_tissue=0.375).tolist() == [True, False]
    assert _keep("fraction", [[0, 0], [32, 0]], 32, mask, min_tissue=0.4).tolist() == [False, False]
    assert _keep("fraction", [[0, 0], [32, 0]], 32, mask, min_tissue=0.0).tolist() == [True, False]


def test_clam_four_pt_keeps_a_tile_with_one_point_in_tissue_and_its_centre_out_of_holes():
    # 32 px tiles: centre (16, 16), test points 8 px either way: (8, 8), (24, 8), (8, 24), (24, 24)
    mask = np.zeros((64, 96), bool)
    mask[6:11, 6:11] = True  # tile 0: a speck around one test point only (2.4 % tissue)
    mask[32 + 14:32 + 19, :] = True  # row 1 (y 32..63): a band through the centres, missing every test point
    mask[0:32, 64:96] = True  # tile 2: all tissue but a hole around its centre
    mask[12:21, 76:85] = False
    keep = _keep("clam-four-pt", [[0, 0], [32, 0], [64, 0], [0, 32]], 32, mask)
    assert keep.tolist() == [True, False, False, False]
    # the band tile has more tissue than the speck tile: CLAM's rule is not a fraction rule
    frac = tissue_fractions(np.array([[0, 0], [0, 32]]), 32, mask, (1.0, 1.0))
    assert frac[1] > frac[0]
    # a hole only counts when it is enclosed: open the hole to the slide's edge and the tile is kept
    mask[0:12, 76:85] = False
    assert _keep("clam-four-pt", [[64, 0]], 32, mask).tolist() == [True]


def test_clam_four_pt_counts_points_in_holes_as_inside_the_outline():
    mask = np.zeros((64, 64), bool)
    mask[0:40, 0:40] = True
    mask[4:12, 4:12] = False  # a hole under the test point (8, 8), away from the centre (16, 16)
    mask[14:19, 14:19] = False  # a small hole under the centre
    # points (8, 8) in a hole, (24, 8), (8, 24), (24, 24) in tissue; centre in a hole: dropped
    assert _keep("clam-four-pt", [[0, 0]], 32, mask).tolist() == [False]
    mask[14:19, 14:19] = True
    assert _keep("clam-four-pt", [[0, 0]], 32, mask).tolist() == [True]
    only_hole_point = np.zeros((64, 64), bool)
    only_hole_point[0:13, 0:13] = True
    only_hole_point[6:11, 6:11] = False  # (8, 8) is in a hole of a ring that holds no other test point
    assert _keep("clam-four-pt", [[0, 0]], 32, only_hole_point).tolist() == [True]


def test_any_tissue_keeps_a_tile_that_overlaps_one_tissue_pixel_in_part():
    mask = np.zeros((16, 16), bool)
    mask[5, 5] = True  # level-0 square [20, 24) x [20, 24) at 4 px per mask pixel
    ds = (4.0, 4.0)
    coords = [[0, 0], [21, 21], [23, 0], [24, 24], [0, 24]]
    # a 21-px tile at (0, 0) ends at 21, inside the pixel; (24, 24) and (0, 24) start where it ends
    assert _keep("any-tissue", coords, 21, mask, ds).tolist() == [True, True, True, False, False]
    # the fraction rule rounds to whole mask pixels: the (0, 0) tile covers a quarter of the pixel, rounded away
    assert _keep("fraction", [[0, 0]], 21, mask, ds, min_tissue=0.0).tolist() == [False]


def _pixel_polygons(mask: np.ndarray, ds: tuple[float, float]):
    """The union of a mask's pixel squares in level-0 coordinates, built from runs along rows."""
    boxes = []
    for row in range(mask.shape[0]):
        padded = np.concatenate([[False], mask[row], [False]])
        edges = np.flatnonzero(padded[1:] != padded[:-1])
        for a, b in zip(edges[::2], edges[1::2]):
            boxes.append(shapely.box(a * ds[0], row * ds[1], b * ds[0], (row + 1) * ds[1]))
    return shapely.union_all(boxes) if boxes else shapely.Polygon()


@pytest.fixture(scope="module")
def cmu_grid(cmu_slide):
    params = TilingParams(mpp=0.5, tile_size=224)
    with open_slide(cmu_slide) as slide:
        plan = plan_reads(params, slide.mpp, tuple(slide.level_downsamples))
        mask, ds = tissue_mask(slide, params)
        coords = grid_coords(slide.dimensions, plan)
    return params, plan, mask, ds, coords


def test_keep_rules_on_the_real_slide_match_the_rules_on_polygons(cmu_grid):
    params, plan, mask, ds, coords = cmu_grid
    frac = tissue_fractions(coords, plan.extent0, mask, ds)
    kept = {rule: keep_tiles(coords, plan.extent0, frac, mask, ds, replace(params, keep_rule=rule))
            for rule in KEEP_RULES}
    kept["fraction 0.7 (LazySlide)"] = keep_tiles(coords, plan.extent0, frac, mask, ds, replace(params, min_tissue=0.7))
    kept["fraction 0"] = keep_tiles(coords, plan.extent0, frac, mask, ds, replace(params, min_tissue=0.0))
    print("tiles kept on CMU-1-Small-Region, 224 px at 0.5 µm/px, of", len(coords), ":",
          {k: int(v.sum()) for k, v in kept.items()})

    # references on polygons, with holes found by scipy rather than by our own labelling
    filled = ndi.binary_fill_holes(mask)
    assert (filled & ~mask).any(), "the slide's mask has a hole: the hole test below is exercised"
    tissue, outline, holes = (_pixel_polygons(m, ds) for m in (mask, filled, filled & ~mask))
    e = plan.extent0
    squares = [shapely.box(x, y, x + e, y + e) for x, y in coords]
    any_ref = np.array([sq.intersection(tissue).area > 0 for sq in squares])
    ps, shift = int(e), int(int(e) // 2 * 0.5)
    centres = coords + ps // 2
    four_ref = np.array([
        any(outline.covers(shapely.Point(cx + dx, cy + dy)) for dx in (-shift, shift) for dy in (-shift, shift))
        and not holes.contains(shapely.Point(cx, cy))
        for cx, cy in centres])
    assert np.array_equal(kept["any-tissue"], any_ref)
    assert np.array_equal(kept["clam-four-pt"], four_ref)
    # what follows from the rules' definitions
    assert not (kept["fraction 0"] & ~kept["any-tissue"]).any()
    assert not (kept["clam-four-pt"] & ~kept["any-tissue"]).any()
    assert not (kept["fraction 0.7 (LazySlide)"] & ~kept["fraction"]).any()
    assert kept["any-tissue"].sum() > kept["clam-four-pt"].sum() > kept["fraction"].sum() > kept[
        "fraction 0.7 (LazySlide)"].sum() > 0
