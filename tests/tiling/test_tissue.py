"""Tissue segmentation against ground truth: synthetic slides with pen marks, and real H&E with margin dye.

Ground truth is rasterised at the mask's own resolution (mask pixel centres tested against the SynthSlide
polygons). Tissue under ink cannot be told from ink, so the tissue truth is the tissue minus the pen strokes.
"""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from scipy import ndimage as ndi
from slidestream.errors import ConfigError
from slidestream.tiling.grid import TilingParams
from slidestream.tiling.overview import overview, tissue_mask
from slidestream.tiling.tissue import (
    TissueConfig,
    blur,
    hole_mask,
    otsu_threshold_uint8,
    pen_mask,
    remove_small_holes,
    remove_small_objects,
    saturation,
    segment_tissue,
)
from slidestream.wsi.slide import open_slide
from slidestream.synth import SynthConfig, write_synthetic_slide

# (width, height, mpp, seed, overview size): 40x and 20x, square and wide, every ink colour among the seeds. The
# overviews are pyramid levels read as they are, except the last: a level the JPEG decoder reduces to 5/8.
CASES = [(8192, 6144, 0.25, 0, 2048), (6144, 6144, 0.25, 1, 2048), (8192, 8192, 0.25, 2, 2048),
         (12288, 8192, 0.25, 3, 2048), (6144, 4096, 0.5, 4, 2048), (12288, 8192, 0.25, 5, 500)]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}x{c[1]}@{c[2]}-seed{c[3]}-{c[4]}px")
def pen_slide(request, tmp_path_factory):
    w, h, mpp, seed, size = request.param
    path = tmp_path_factory.mktemp("pen") / f"pen{seed}.svs"
    synth = write_synthetic_slide(path, SynthConfig(width=w, height=h, mpp=mpp, pen_marks=True, n_pen=3, seed=seed))
    with open_slide(path) as slide:
        mask, ds = tissue_mask(slide, TilingParams(thumbnail_size=size))
    return synth, mask, ds


def _rasterise(geom, shape, ds) -> np.ndarray:
    h, w = shape
    ys, xs = np.mgrid[:h, :w]
    return shapely.contains_xy(geom, ((xs + 0.5) * ds[0]).ravel(), ((ys + 0.5) * ds[1]).ravel()).reshape(h, w)


def test_tissue_iou_against_ground_truth(pen_slide):
    synth, mask, ds = pen_slide
    pen = _rasterise(shapely.union_all(synth.pen), mask.shape, ds)
    truth = _rasterise(synth.tissue, mask.shape, ds) & ~pen
    iou = (mask & truth).sum() / (mask | truth).sum()
    print(f"IoU {iou:.3f} at {mask.shape[1]}x{mask.shape[0]} px, inks {synth.pen_colors}")
    assert iou >= 0.9


def test_pen_marks_are_excluded_from_tissue(pen_slide):
    synth, mask, ds = pen_slide
    pen = _rasterise(shapely.union_all(synth.pen), mask.shape, ds)
    tissue = _rasterise(synth.tissue, mask.shape, ds)
    assert pen.sum() > 100, "the slide has no pen stroke at mask resolution: the check would be empty"
    excluded = 1 - mask[pen].mean()
    over_tissue = pen & tissue
    print(f"pen pixels excluded {excluded:.3f}; over tissue {over_tissue.sum()} px, "
          f"excluded there {1 - mask[over_tissue].mean() if over_tissue.any() else float('nan'):.3f}")
    assert excluded >= 0.95


def test_some_pen_strokes_cross_tissue(tmp_path):
    # The exclusion check above means something only if ink lies over tissue, not just on glass.
    synth = write_synthetic_slide(tmp_path / "s.svs", SynthConfig(width=8192, height=8192, pen_marks=True, n_pen=3,
                                                                  seed=2))
    assert shapely.union_all(synth.pen).intersection(synth.tissue).area > 0.01 * synth.tissue.area


def test_margin_dye_and_nuclei_of_real_he_are_not_pen(cmu_slide):
    # CMU-1 has green margin dye on glass and dense dark nuclei: the pen filter may drop the dye, not tissue.
    with open_slide(cmu_slide) as slide:
        with_filter, _ = tissue_mask(slide, TilingParams())
        without, _ = tissue_mask(slide, TilingParams(), TissueConfig(pen_filter=False))
    assert with_filter.mean() > 0.2
    lost = (without & ~with_filter).sum() / without.sum()
    assert lost < 0.02


# ---------------------------------------------------------------------------------------------------- helpers
# The segmentation avoids scikit-image (start-up time); its helpers must agree with scikit-image's definitions.
def _random_masks(n=4):
    rng = np.random.default_rng(7)
    return [ndi.gaussian_filter(rng.random((120, 170)), 1.5 + i) > 0.5 for i in range(n)]


@pytest.mark.parametrize("max_size", [2, 15, 60])
def test_small_object_and_hole_removal_match_scikit_image(max_size):
    morphology = pytest.importorskip("skimage.morphology")
    for m in _random_masks():
        assert np.array_equal(remove_small_objects(m, max_size), morphology.remove_small_objects(m, max_size=max_size))
        assert np.array_equal(remove_small_holes(m, max_size), morphology.remove_small_holes(m, max_size=max_size))


def test_otsu_and_saturation_match_scikit_image():
    from skimage import color, filters

    rng = np.random.default_rng(3)
    img = np.concatenate([rng.normal(60, 10, 4000), rng.normal(170, 15, 6000)]).clip(0, 255).astype(np.uint8)
    img = img.reshape(100, 100)
    t = otsu_threshold_uint8(img)
    # skimage's threshold is a bin centre; ours is the last level of the lower class: same split of the data
    assert ((img > t) == (img > filters.threshold_otsu(img))).all()
    assert otsu_threshold_uint8(np.full((5, 5), 9, np.uint8)) is None
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    sat, val = saturation(rgb)
    hsv = color.rgb2hsv(rgb)
    assert np.abs(sat - hsv[..., 1]).max() < 1e-6 and np.array_equal(val, (hsv[..., 2] * 255).round())


def test_blank_and_tiny_images():
    assert not segment_tissue(np.full((64, 64, 3), 242, np.uint8), mpp=4.0).any()
    assert segment_tissue(np.zeros((1, 5, 3), np.uint8), mpp=4.0).shape == (1, 5)


# ---------------------------------------------------------------------------------------------------- settings
@pytest.fixture(scope="module")
def cmu_overview(cmu_slide):
    with open_slide(cmu_slide) as slide:
        params = TilingParams()
        mask, ds = tissue_mask(slide, params)
        thumb = overview(slide, max(mask.shape))
    assert thumb.shape[:2] == mask.shape
    return thumb, slide.mpp * (ds[0] + ds[1]) / 2


def test_hole_mask_equals_scipy_fill_holes():
    for m in _random_masks() + [np.zeros((9, 9), bool), np.ones((9, 9), bool)]:
        assert np.array_equal(hole_mask(m), ndi.binary_fill_holes(m) & ~m)


def test_filled_holes_count_as_tissue(cmu_overview):
    thumb, mpp = cmu_overview
    with_holes = segment_tissue(thumb, mpp)
    assert (ndi.binary_fill_holes(with_holes) & ~with_holes).sum() > 100, "CMU-1's tissue has a hole"
    filled = segment_tissue(thumb, mpp, TissueConfig(keep_holes=False))
    assert np.array_equal(filled, ndi.binary_fill_holes(with_holes))


def test_fixed_threshold_method(cmu_overview):
    thumb, mpp = cmu_overview
    sat, _ = saturation(thumb)
    sat[pen_mask(thumb)] = 0  # as segment_tissue does before thresholding
    otsu = otsu_threshold_uint8(blur(np.rint(sat * 255).astype(np.uint8), 16.0 / mpp)) / 255
    # below the slide's Otsu threshold, a fixed threshold finds more tissue than Otsu (which ignores the floor) ...
    low = otsu / 2
    otsu_mask = segment_tissue(thumb, mpp, TissueConfig(min_saturation=low))
    fixed_mask = segment_tissue(thumb, mpp, TissueConfig(method="fixed", min_saturation=low))
    assert fixed_mask.sum() > otsu_mask.sum() and not (otsu_mask & ~fixed_mask).any()
    # ... above it, the floor is the threshold either way
    high = min(otsu * 1.3, 0.9)
    assert np.array_equal(segment_tissue(thumb, mpp, TissueConfig(min_saturation=high)),
                          segment_tissue(thumb, mpp, TissueConfig(method="fixed", min_saturation=high)))
    fixed_masks = [segment_tissue(thumb, mpp, TissueConfig(method="fixed", min_saturation=t)) for t in (0.02, 0.1, 0.3)]
    assert fixed_masks[0].sum() > fixed_masks[1].sum() > fixed_masks[2].sum() > 0


@pytest.mark.parametrize("bad, message", [
    ({"method": "triangle"}, "method must be one of otsu, fixed"),
    ({"min_saturation": 1.5}, "min_saturation must be in"),
    ({"close_um": -1.0}, "close_um must be a finite number"),
    ({"min_tissue_area_um2": float("nan")}, "min_tissue_area_um2 must be a finite number"),
    ({"keep_holes": "no"}, "keep_holes must be True or False"),
])
def test_bad_tissue_settings_are_refused(bad, message):
    with pytest.raises(ConfigError, match=message):
        TissueConfig(**bad)
