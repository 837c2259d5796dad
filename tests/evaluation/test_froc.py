"""CAMELYON16 FROC: hand-computed cases, and agreement with a literal reading of the official rules.

``_ref_*`` below is an independent, deliberately plain re-implementation of the lesion-level rules of
``shared/docs/camelyon16-protocol.md`` (loops, Python lists, scipy/skimage for the image steps), including the
official script's float32 TP entries. The library (vectorised, cropped distance transform, searchsorted counts)
must agree with it on real annotations and on randomised synthetic slides.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib.path as mpath
import numpy as np
import pytest
from scipy import ndimage as nd
from shapely.geometry import MultiPolygon, Polygon, box
from skimage import measure
from slidestream.errors import ConfigError
from slidestream.annotations import polygonal_parts, read_annotations, tumor_geometry
from slidestream.evaluation.detections import write_detections_csv
from slidestream.evaluation.froc import (
    FROCCase,
    compute_froc,
    dilation_threshold_px,
    evaluation_mask,
    froc_curve,
    itc_labels,
    itc_threshold_px,
    label_tumor_mask,
    lesion_hits,
    rasterize_tumor,
)
from slidestream.evaluation.froc_files import (evaluate_froc_dirs, format_froc, read_detections_csv, read_mask_image,
                                               read_truth)

RATES = [0.25, 0.5, 1, 2, 4, 8]
KEYS = ["0.25", "0.5", "1", "2", "4", "8"]


# ----------------------------------------------------------------------------------------------------------------
# literal reference (protocol text, step by step)


def _ref_evaluation_mask(tumour_bool, resolution=0.243, level=5):
    pixelarray = np.where(tumour_bool, 255, 0).astype(np.uint8)
    distance = nd.distance_transform_edt(255 - pixelarray)
    threshold = 75 / (resolution * pow(2, level) * 2)
    binary = distance < threshold
    filled = nd.binary_fill_holes(binary)
    return measure.label(filled, connectivity=2)


def _ref_itc(mask, resolution=0.243, level=5):
    max_label = int(np.amax(mask))
    props = measure.regionprops(mask)
    threshold = 275 / (resolution * pow(2, level))
    itc = []
    for i in range(max_label):
        if props[i].axis_major_length < threshold:
            itc.append(i + 1)
    return itc


def _ref_hits(xs, ys, probs, is_tumor, mask, itc, level, tp_dtype):
    max_label = int(np.amax(mask)) if is_tumor else 0
    fp_probs = []
    tp_probs = np.zeros((max_label,), dtype=tp_dtype)
    if is_tumor:
        for i in range(len(xs)):
            label = mask[int(ys[i] / pow(2, level)), int(xs[i] / pow(2, level))]
            if label == 0:
                fp_probs.append(probs[i])
            elif label not in itc:
                tp_probs[label - 1] = max(tp_probs[label - 1], probs[i])
    else:
        for i in range(len(xs)):
            fp_probs.append(probs[i])
    return fp_probs, tp_probs, max_label - len(itc)


def _ref_froc(slides, level=5, tp_dtype=np.float32, resolution=0.243):
    """slides: list of (xs, ys, probs (python floats), mask or None). Returns (fps, sens, six values, score)."""
    all_fp, all_tp, n_tumours = [], [], []
    for xs, ys, probs, mask in slides:
        if mask is None:
            fp, tp, n = _ref_hits(xs, ys, probs, False, 0, [], level, tp_dtype)
        else:
            itc = _ref_itc(mask, resolution, level)
            fp, tp, n = _ref_hits(xs, ys, probs, True, mask, itc, level, tp_dtype)
        all_fp.append(fp)
        all_tp.append(tp)
        n_tumours.append(n)
    unlisted_fps = [v for sub in all_fp for v in sub]
    unlisted_tps = [v for sub in all_tp for v in sub]
    total_fps, total_tps = [], []
    # Sorted by value. (Running the official script under NumPy >= 2 compares np.float32 with Python floats in
    # float32, so its sorted() is not a total order there; NumPy 1, which the challenge used, compares in float64.)
    all_probs = sorted(set(unlisted_fps + unlisted_tps), key=float)
    for thresh in all_probs[1:]:
        total_fps.append((np.asarray(unlisted_fps) >= thresh).sum())
        total_tps.append((np.asarray(unlisted_tps) >= thresh).sum())
    total_fps.append(0)
    total_tps.append(0)
    fps = np.asarray(total_fps) / float(len(slides))
    sens = np.asarray(total_tps) / float(sum(n_tumours))
    at = np.interp(RATES, fps[::-1], sens[::-1])
    return fps, sens, at, float(np.mean(at))


def _assert_same(result, ref):
    fps, sens, at, score = ref
    assert len(result["fps"]) == len(fps)
    np.testing.assert_allclose(result["fps"], fps, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result["sensitivities"], sens, rtol=0, atol=1e-12)
    for k, v in zip(KEYS, at):
        assert abs(result["sensitivity"][k] - v) <= 1e-9
    assert abs(result["froc"] - score) <= 1e-9


def _ref_rasterise(geom, size, level=5):
    """Pixel-centre rasterisation with matplotlib paths (independent of shapely's predicates)."""
    ds = 2**level
    rows, cols = math.ceil(size[1] / ds), math.ceil(size[0] / ds)
    out = np.zeros((rows, cols), dtype=bool)
    for part in polygonal_parts(geom):
        # every pixel whose centre could be inside: the part's bounds, one pixel of slack on each side
        minx, miny, maxx, maxy = part.bounds
        c0, c1 = max(0, int(minx // ds) - 1), min(cols, int(maxx // ds) + 2)
        r0, r1 = max(0, int(miny // ds) - 1), min(rows, int(maxy // ds) + 2)
        yy, xx = np.mgrid[r0:r1, c0:c1]
        centres = np.column_stack([(xx.ravel() + 0.5) * ds, (yy.ravel() + 0.5) * ds])
        inside = mpath.Path(np.asarray(part.exterior.coords)).contains_points(centres)
        for ring in part.interiors:
            inside &= ~mpath.Path(np.asarray(ring.coords)).contains_points(centres)
        inside = inside.reshape(yy.shape)
        # matplotlib leaves points on an edge undefined; the rule includes them (annotations often have vertices
        # and axis-parallel edges exactly on pixel centres)
        for ring in [part.exterior, *part.interiors]:
            for (x1, y1), (x2, y2) in zip(ring.coords[:-1], ring.coords[1:]):
                ca, cb = math.ceil(min(x1, x2) / ds - 0.5), math.floor(max(x1, x2) / ds - 0.5)
                ra, rb = math.ceil(min(y1, y2) / ds - 0.5), math.floor(max(y1, y2) / ds - 0.5)
                for r in range(max(ra, r0), min(rb, r1 - 1) + 1):
                    for c in range(max(ca, c0), min(cb, c1 - 1) + 1):
                        px, py = (c + 0.5) * ds, (r + 0.5) * ds
                        if (x2 - x1) * (py - y1) - (y2 - y1) * (px - x1) == 0:
                            inside[r - r0, c - c0] = True
        if inside.any():
            out[r0:r1, c0:c1] |= inside
        else:
            p = part.representative_point()
            r, c = int(p.y // ds), int(p.x // ds)
            if 0 <= r < rows and 0 <= c < cols:
                out[r, c] = True
    return out


# ----------------------------------------------------------------------------------------------------------------
# hand-computed mask rules


def test_thresholds_match_the_protocol_numbers():
    # 75 / (0.243 * 32 * 2) and 275 / (0.243 * 32), worked out by hand: 75 / 15.552, 275 / 7.776.
    assert dilation_threshold_px() == pytest.approx(4.8225308642, abs=1e-9)
    assert itc_threshold_px() == pytest.approx(35.3652263374, abs=1e-9)
    assert dilation_threshold_px(0.5, 4) == pytest.approx(75 / 16, abs=1e-12)


def test_single_tumour_pixel_grows_to_69_pixels():
    # Lattice points with dx² + dy² < 4.8225² (i.e. <= 23): 9 + 2*9 + 2*9 + 2*7 + 2*5 = 69, counted by hand.
    tumour = np.zeros((21, 21), bool)
    tumour[10, 10] = True
    m = label_tumor_mask(tumour)
    assert m.dtype == np.int32 and int(m.max()) == 1
    assert int((m == 1).sum()) == 69
    assert m[10, 14] == 1 and m[10, 15] == 0 and m[13, 13] == 1 and m[14, 13] == 0
    # a disc 4.6 px across is an ITC: major axis 4 * sqrt(376 / 69) = 9.34 px < 35.37
    assert itc_labels(m).tolist() == [1]


def test_regions_touching_diagonally_are_one_lesion():
    # Grown discs of pixels (10,10) and (17,17) meet only corner to corner at (13,13)-(14,14): 8-connected.
    t = np.zeros((40, 40), bool)
    t[10, 10] = t[17, 17] = True
    assert int(label_tumor_mask(t).max()) == 1
    t = np.zeros((40, 40), bool)
    t[10, 10] = t[18, 18] = True  # one pixel further: a gap
    assert int(label_tumor_mask(t).max()) == 2
    t = np.zeros((40, 40), bool)
    t[10, 10] = t[10, 19] = True  # horizontal reach is 4 px each side: columns 14 and 15 meet at 9 apart
    assert int(label_tumor_mask(t).max()) == 1
    t = np.zeros((40, 40), bool)
    t[10, 10] = t[10, 20] = True
    assert int(label_tumor_mask(t).max()) == 2


def test_holes_are_filled():
    yy, xx = np.mgrid[0:80, 0:80]
    r2 = (yy - 40) ** 2 + (xx - 40) ** 2
    ring = (r2 <= 30**2) & (r2 >= 20**2)
    m = label_tumor_mask(ring)
    assert int(m.max()) == 1
    assert m[40, 40] == 1  # 20 px from any tumour pixel, yet inside the lesion
    assert int((m == 1).sum()) > int(((r2 <= 30**2)).sum())


def test_itc_rule_on_bars_computed_by_hand():
    # A 1 x n bar has major axis 4 * sqrt((n² - 1) / 12): 34.64 px for n = 30 (ITC), 35.78 px for n = 31 (not).
    m = np.zeros((10, 80), np.int32)
    m[2, 5:35] = 1
    m[6, 5:36] = 2
    assert itc_labels(m).tolist() == [1]
    # at 0.5 µm/px level 5 the limit is 17.19 px: both bars count as lesions
    assert itc_labels(m, 0.5, 5).tolist() == []
    with pytest.raises(ConfigError):
        itc_labels(m > 0)


def test_empty_tumour_mask_has_no_lesion():
    m = label_tumor_mask(np.zeros((30, 30), bool))
    assert m.shape == (30, 30) and int(m.max()) == 0


def test_rasterize_by_pixel_centres():
    # level 5: pixel centres at 16 + 32k level-0 px
    m = rasterize_tumor(box(32, 32, 96, 64), (320, 160))
    assert m.shape == (5, 10)
    assert sorted(zip(*np.nonzero(m), strict=True)) == [(1, 1), (1, 2)]
    # centres on the boundary are inside
    m = rasterize_tumor(box(48, 48, 80, 80), (320, 160))
    assert sorted(zip(*np.nonzero(m), strict=True)) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    # a polygon covering no centre marks the pixel of its representative point
    m = rasterize_tumor(box(100, 70, 101, 71), (320, 160))
    assert sorted(zip(*np.nonzero(m), strict=True)) == [(2, 3)]
    # holes stay out
    ring = Polygon(box(0, 0, 320, 160).exterior.coords, [box(64, 32, 256, 128).exterior.coords])
    m = rasterize_tumor(ring, (320, 160))
    assert m[0].all() and not m[2, 3:7].any() and m[2, 1]
    # slide size is ceil(w / 32) x ceil(h / 32); parts outside are clipped
    assert rasterize_tumor(box(5000, 5000, 6000, 6000), (33, 65)).shape == (3, 2)


def test_evaluation_mask_inputs_agree(tmp_path):
    geom = MultiPolygon([box(3200, 3200, 6400, 6400), box(9000, 1000, 9100, 1100)])
    size = (12800, 9600)
    a = evaluation_mask(geom, size)
    b = evaluation_mask(list(geom.geoms), size)
    c = evaluation_mask(rasterize_tumor(geom, size), size)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert a.shape == (300, 400) and int(a.max()) == 2
    with pytest.raises(ConfigError, match="shape"):
        evaluation_mask(np.zeros((10, 10), bool), size)
    with pytest.raises(ConfigError, match="slide_size"):
        evaluation_mask(geom)


# ----------------------------------------------------------------------------------------------------------------
# hand-computed FROC


def _label_mask():
    # three labels on a 10 x 10 level-5 mask; label 3 is declared ITC
    m = np.zeros((10, 10), np.int32)
    m[1:3, 1:3] = 1
    m[5:7, 5:7] = 2
    m[8, 8] = 3
    return m


def _at(label_rc):
    r, c = label_rc
    return [c * 32 + 10, r * 32 + 20]


def test_froc_hand_computed():
    m = _label_mask()
    a = FROCCase("A", [_at((1, 1)), _at((2, 2)), _at((0, 9)), _at((8, 8))], [0.9, 0.6, 0.8, 0.95], m, itc=[3])
    b = FROCCase("B", [_at((1, 1)), _at((9, 0))], [0.4, 0.3], np.where(m == 1, 1, 0).astype(np.int32), itc=[])
    c = FROCCase("C", [[5, 5], [7, 7]], [0.7, 0.2])
    d = FROCCase("D", [[1, 1]], [0.5])
    # FPs 0.8 (A), 0.3 (B), 0.7 0.2 (C), 0.5 (D); TP entries 0.9, 0 (missed), 0 (ITC) for A and 0.4 for B;
    # 3 lesions, 4 slides. Thresholds 0.2 .. 0.9 (0 skipped): FP 5 4 3 3 2 1 0, TP 2 2 2 1 1 1 1, then (0, 0).
    for f32 in (True, False):
        r = compute_froc([a, b, c, d], official_float32=f32)
        assert r["fps"] == pytest.approx([1.25, 1.0, 0.75, 0.75, 0.5, 0.25, 0, 0], abs=1e-15)
        assert r["sensitivities"] == pytest.approx([2 / 3] * 3 + [1 / 3] * 4 + [0], abs=1e-15)
        exp = [1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3]
        assert [r["sensitivity"][k] for k in KEYS] == pytest.approx(exp, abs=1e-15)
        assert r["froc"] == pytest.approx(5 / 9, abs=1e-15)
        assert r["thresholds"] == pytest.approx([0.2, 0.3, 0.4, 0.5, 0.7, 0.8, 0.9], abs=1e-7)
    assert (r["n_slides"], r["n_tumor_slides"], r["n_normal_slides"]) == (4, 2, 2)
    assert (r["n_lesions"], r["n_itc"], r["n_lesions_detected"], r["n_detections"], r["n_fp"]) == (3, 1, 2, 9, 5)
    sa = r["slides"][0]
    assert (sa["n_lesions"], sa["n_detected"], sa["n_fp"], sa["n_itc_hits"]) == (2, 1, 1, 1)


def test_float32_quirk_changes_the_score():
    # TP 0.69999999 against an FP of 0.7: the official float32 TP entry counts at threshold 0.7, float64 does not.
    lesion = np.zeros((4, 4), np.int32)
    lesion[1:3, 1:3] = 1
    t = FROCCase("T", [[40, 40]], [0.69999999], lesion, itc=[])
    n = FROCCase("N", [[0, 0], [1, 1]], [0.7, 0.1])
    official = compute_froc([t, n])
    plain = compute_froc([t, n], official_float32=False)
    assert official["fps"] == [0.5, 0.5, 0.0] and official["sensitivities"] == [1.0, 1.0, 0.0]
    assert plain["fps"] == [0.5, 0.5, 0.0] and plain["sensitivities"] == [1.0, 0.0, 0.0]
    assert official["sensitivity"]["0.25"] == 0.5 and plain["sensitivity"]["0.25"] == 0.0
    assert official["froc"] == pytest.approx(11 / 12, abs=1e-15)
    assert plain["froc"] == pytest.approx(5 / 6, abs=1e-15)


def test_lowest_threshold_is_skipped():
    # The only FP (0.3) is the lowest entry: it is never counted, so the curve is (0 FP, sens 1) then (0, 0).
    lesion = np.zeros((4, 4), np.int32)
    lesion[0:2, 0:2] = 1
    r = compute_froc([FROCCase("T", [[10, 10]], [0.9], lesion, itc=[]), FROCCase("N", [[5, 5]], [0.3])])
    assert r["fps"] == [0.0, 0.0] and r["sensitivities"] == [1.0, 0.0]
    assert r["froc"] == 1.0


def test_several_hits_in_one_lesion_keep_the_best():
    lesion = np.zeros((4, 4), np.int32)
    lesion[0:2, 0:2] = 1
    h = lesion_hits([[1, 1], [40, 40], [20, 50], [100, 100]], [0.2, 0.8, 0.5, 0.6], lesion, itc=[])
    assert h.tp_probs.tolist() == [0.8] and h.fp_probs.tolist() == [0.6]
    assert h.lesion_points.tolist() == [[40, 40]] and h.n_detected == 1


def test_detection_lookup_truncates_like_int():
    m = np.zeros((3, 3), np.int32)
    m[1, 1] = 1
    cases = {(32, 32): "tp", (63, 63): "tp", (31.9, 40): "fp", (64, 40): "fp", (40, 31.99): "fp"}
    for (x, y), kind in cases.items():
        h = lesion_hits([[x, y]], [0.5], m, itc=[])
        assert (h.tp_probs[0] == 0.5) == (kind == "tp"), (x, y)
        assert (h.fp_probs.size == 1) == (kind == "fp"), (x, y)
    # int(-5 / 32) == 0: the official lookup reads column 0 for small negative x
    assert lesion_hits([[-5, 40]], [0.5], m, itc=[]).fp_probs.size == 1
    with pytest.raises(ConfigError, match="outside"):
        lesion_hits([[-40, 40]], [0.5], m, itc=[])
    with pytest.raises(ConfigError, match="outside"):
        lesion_hits([[96, 40]], [0.5], m, itc=[])
    with pytest.raises(ConfigError, match="finite"):
        lesion_hits([[40, 40]], [float("nan")], m, itc=[])
    with pytest.raises(ConfigError, match="ITC labels"):
        lesion_hits([[40, 40]], [0.5], m, itc=[2])


def test_normal_slides_only_is_undefined_not_an_error():
    r = compute_froc([FROCCase("N1", [[1, 1], [2, 2]], [0.4, 0.9]), FROCCase("N2", np.zeros((0, 2)), [])])
    assert r["defined"] is False and math.isnan(r["froc"])
    assert r["fps"] == [0.5, 0.0]
    assert "undefined" in format_froc(r)
    with pytest.raises(ConfigError):
        compute_froc([])


# ----------------------------------------------------------------------------------------------------------------
# randomised agreement with the literal reference


def _random_tumour(rng, shape, *, sure_lesion=False):
    t = np.zeros(shape, bool)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    if sure_lesion:  # 41 px across before growing: never ITC
        cy, cx = rng.integers(20, shape[0] - 20), rng.integers(20, shape[1] - 20)
        t |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 20**2
    for _ in range(rng.integers(1, 9)):
        kind = rng.integers(0, 5)
        cy, cx = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        if kind == 0:  # single pixel / tiny speck: ITC
            t[cy, cx] = True
        elif kind == 1:  # disc, from ITC size to large lesion
            r = rng.uniform(0.5, 30)
            t |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        elif kind == 2:  # bar around the ITC length limit
            length = int(rng.integers(20, 40))
            if rng.random() < 0.5:
                t[cy, cx : cx + length] = True
            else:
                t[cy : cy + length, cx] = True
        elif kind == 3:  # ring whose hole must be filled
            r = rng.uniform(12, 25)
            d2 = (yy - cy) ** 2 + (xx - cx) ** 2
            t |= (d2 <= r * r) & (d2 >= (r - 2) ** 2)
        else:  # rectangle
            h, w = rng.integers(1, 25, size=2)
            t[cy : cy + h, cx : cx + w] = True
    if not t.any():
        t[shape[0] // 2, shape[1] // 2] = True
    return t


_SCORES = [0.0, 0.1, 0.2, 0.5, 0.7, 0.69999999, 0.70000001, 0.9, 1.0, 0.3333333333333333]


def _random_detections(rng, mask, n):
    rows, cols = mask.shape
    xs, ys = [], []
    labelled = np.argwhere(mask > 0)
    grown = nd.binary_dilation(mask > 0)
    border = np.argwhere(grown & ~nd.binary_erosion(mask > 0))  # both sides of every lesion edge
    for _ in range(n):
        pick = rng.random()
        if pick < 0.35 and len(labelled):
            r, c = labelled[rng.integers(len(labelled))]
        elif pick < 0.7 and len(border):
            r, c = border[rng.integers(len(border))]
        else:
            r, c = rng.integers(rows), rng.integers(cols)
        # integer level-0 coordinates, often exactly on a pixel edge (0 or 31 within the 32-px pixel)
        ox, oy = (rng.choice([0, 31]) if rng.random() < 0.5 else rng.integers(32) for _ in range(2))
        xs.append(int(c * 32 + ox))
        ys.append(int(r * 32 + oy))
    probs = [float(rng.choice(_SCORES)) if rng.random() < 0.6 else float(rng.random()) for _ in range(n)]
    return xs, ys, probs


@pytest.mark.parametrize("seed", range(30))
def test_matches_literal_reference_on_random_slides(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(60, 160)), int(rng.integers(60, 160)))
    cases, ref_slides = [], []
    for i in range(int(rng.integers(1, 7))):
        n = int(rng.integers(0, 40))
        if i > 0 and rng.random() < 0.35:
            xs = [int(v) for v in rng.integers(0, shape[1] * 32, n)]
            ys = [int(v) for v in rng.integers(0, shape[0] * 32, n)]
            probs = [float(rng.choice(_SCORES)) for _ in range(n)]
            mask = ref_mask = None
        else:
            tumour = _random_tumour(rng, shape, sure_lesion=i == 0)
            mask = evaluation_mask(tumour)
            ref_mask = _ref_evaluation_mask(tumour)
            np.testing.assert_array_equal(mask, ref_mask)
            assert itc_labels(mask).tolist() == _ref_itc(ref_mask)
            xs, ys, probs = _random_detections(rng, mask, n)
        cases.append(FROCCase(f"s{i}", np.column_stack([xs, ys]) if n else np.zeros((0, 2)), probs, mask))
        ref_slides.append((xs, ys, probs, ref_mask))
    for f32, dtype in ((True, np.float32), (False, np.float64)):
        r = compute_froc(cases, official_float32=f32)
        assert r["defined"]
        _assert_same(r, _ref_froc(ref_slides, tp_dtype=dtype))


# ----------------------------------------------------------------------------------------------------------------
# real CAMELYON16 annotations


@pytest.fixture(scope="module")
def real_truth(shared_data: Path):
    out = {}
    for name, rel in (("tumor_009", "annotations/camelyon16-asap/tumor_009.xml"),
                      ("Tumor_081", "annotations/camelyon16-ncrf-json/Tumor_081.json")):
        path = shared_data / rel
        geom = tumor_geometry(read_annotations(path))
        _, _, maxx, maxy = geom.bounds
        size = (math.ceil(maxx) + 2000, math.ceil(maxy) + 2000)
        out[name] = (path, geom, size)
    return out


def _detections_in(rng, geom, size, n):
    """Points inside each lesion, near its edge, inside the tiny parts, and anywhere on the slide."""
    pts = []
    for part in polygonal_parts(geom):
        minx, miny, maxx, maxy = part.bounds
        for _ in range(3):
            pts.append(part.representative_point().coords[0])
            x, y = rng.uniform(minx, maxx + 1), rng.uniform(miny, maxy + 1)
            pts.append((x, y))
        ring = part.exterior
        for f in rng.random(4):  # on the annotation boundary, and 60 µm outside it (inside the grown zone)
            p = ring.interpolate(f, normalized=True)
            pts.append((p.x, p.y))
            pts.append((p.x + 60 / 0.243, p.y))
    for _ in range(n):
        pts.append((rng.uniform(0, size[0] - 1), rng.uniform(0, size[1] - 1)))
    xy = np.floor(np.asarray(pts)).astype(np.int64)
    xy = np.clip(xy, 0, np.asarray(size) - 1)
    probs = [float(rng.choice(_SCORES)) if rng.random() < 0.5 else float(rng.random()) for _ in range(len(xy))]
    return xy, probs


def test_real_annotations_match_literal_reference(real_truth):
    rng = np.random.default_rng(9)
    cases, ref_slides = [], []
    for name, (path, geom, size) in real_truth.items():
        mine = rasterize_tumor(read_truth(path), size)
        ref_raster = _ref_rasterise(geom, size)
        np.testing.assert_array_equal(mine, ref_raster)
        mask = evaluation_mask(read_truth(path), size)
        ref_mask = _ref_evaluation_mask(ref_raster)
        np.testing.assert_array_equal(mask, ref_mask)
        assert int(mask.max()) >= 1
        xy, probs = _detections_in(rng, geom, size, 40)
        cases.append(FROCCase(name, xy, probs, mask))
        ref_slides.append((xy[:, 0].tolist(), xy[:, 1].tolist(), probs, ref_mask))
    for i in range(3):
        xy = rng.integers(0, 100_000, size=(25, 2))
        probs = [float(rng.choice(_SCORES)) for _ in range(25)]
        cases.append(FROCCase(f"normal_{i}", xy, probs))
        ref_slides.append((xy[:, 0].tolist(), xy[:, 1].tolist(), probs, None))
    for f32, dtype in ((True, np.float32), (False, np.float64)):
        r = compute_froc(cases, official_float32=f32)
        assert r["defined"] and r["n_tumor_slides"] == 2 and r["n_normal_slides"] == 3
        _assert_same(r, _ref_froc(ref_slides, tp_dtype=dtype))


def test_evaluate_dirs_on_real_annotations(real_truth, tmp_path):
    det_dir, ann_dir = tmp_path / "det", tmp_path / "ann"
    ann_dir.mkdir()
    rng = np.random.default_rng(3)
    cases, sizes = [], {}
    for name, (path, geom, size) in real_truth.items():
        os.symlink(path, ann_dir / path.name)  # evaluated in place, not copied
        xy, probs = _detections_in(rng, geom, size, 15)
        write_detections_csv(det_dir / f"{name.lower()}.csv", xy, probs)  # file names differ in case
        cases.append((name, xy, probs, size))
        sizes[name] = size
    nxy = rng.integers(0, 50_000, size=(10, 2))
    nprobs = rng.random(10).tolist()
    write_detections_csv(det_dir / "normal_001.csv", nxy, nprobs)
    write_detections_csv(det_dir / "normal_002.csv", np.zeros((0, 2)), [])
    (ann_dir / "tumor_110.xml").write_text("<ASAP_Annotations><Annotations/></ASAP_Annotations>")

    inferred = evaluate_froc_dirs(det_dir, ann_dir)
    given = evaluate_froc_dirs(det_dir, ann_dir, slide_sizes=sizes)
    manual = compute_froc(
        [FROCCase(name.lower(), xy, probs, evaluation_mask(read_truth(real_truth[name][0]), size))
         for name, xy, probs, size in cases]
        + [FROCCase("normal_001", nxy, nprobs), FROCCase("normal_002", np.zeros((0, 2)), [])]
    )
    for r in (inferred, given):
        assert r["n_slides"] == 4 and r["n_tumor_slides"] == 2
        assert r["truth_without_detections"] == ["tumor_110.xml"]
        assert r["fps"] == manual["fps"] and r["sensitivities"] == manual["sensitivities"]
        assert r["froc"] == manual["froc"]
    text = format_froc(inferred)
    rows = {line.split()[0]: line.split()[1] for line in text.splitlines()[2:8]}
    assert rows == {k: f"{inferred['sensitivity'][k]:.4f}" for k in KEYS}
    assert f"FROC score: {inferred['froc']:.4f}" in text and "tumor_110.xml" in text


def test_evaluate_dirs_with_a_mask_image(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    level0 = np.zeros((1024, 1536), np.uint8)
    level0[64:768, 320:1280] = 255  # 22 x 30 px at level 5 (every 32nd pixel): large enough not to be ITC
    ann_dir, det_dir = tmp_path / "ann", tmp_path / "det"
    ann_dir.mkdir()
    with tifffile.TiffWriter(ann_dir / "test_001_mask.tif") as tw:
        lv = level0
        for i in range(6):
            tw.write(lv, tile=(16, 16), compression="deflate", subfiletype=0 if i == 0 else 1,
                     photometric="minisblack")
            lv = lv[::2, ::2]
    tumour = read_mask_image(ann_dir / "test_001_mask.tif")
    assert tumour.shape == (32, 48) and int(tumour.sum()) == 22 * 30
    write_detections_csv(det_dir / "test_001.csv", [[700, 400], [100, 100]], [0.9, 0.4])
    r = evaluate_froc_dirs(det_dir, ann_dir)
    assert r["n_lesions"] == 1 and r["n_lesions_detected"] == 1 and r["n_fp"] == 1
    with pytest.raises(ConfigError, match="downsample"):
        read_mask_image(ann_dir / "test_001_mask.tif", level=7)


def test_evaluate_dirs_errors(tmp_path):
    (tmp_path / "det").mkdir()
    (tmp_path / "ann").mkdir()
    with pytest.raises(ConfigError, match="no <slide>.csv"):
        evaluate_froc_dirs(tmp_path / "det", tmp_path / "ann")
    with pytest.raises(ConfigError, match="not found"):
        evaluate_froc_dirs(tmp_path / "nope", tmp_path / "ann")
    (tmp_path / "ann" / "a.xml").write_text("<ASAP_Annotations><Annotations/></ASAP_Annotations>")
    (tmp_path / "ann" / "A.json").write_text('{"positive": [], "negative": []}')
    (tmp_path / "det" / "a.csv").write_text("0.5,1,1\n")
    with pytest.raises(ConfigError, match="two ground-truth files"):
        evaluate_froc_dirs(tmp_path / "det", tmp_path / "ann")


# ----------------------------------------------------------------------------------------------------------------
# CSV


def test_detection_csv_round_trip_and_official_layout(tmp_path):
    pts = np.array([[10.4, 20.6], [0, 0], [99999, 123456]])
    conf = np.array([0.1 + 0.2, 1e-9, 1.0])
    path = write_detections_csv(tmp_path / "sub" / "test_001.csv", pts, conf)
    lines = path.read_text().splitlines()
    assert lines[0] == "0.30000000000000004,10,21" and len(lines) == 3
    back_pts, back_conf = read_detections_csv(path)
    assert back_conf.tolist() == conf.tolist()
    assert back_pts.tolist() == [[10, 21], [0, 0], [99999, 123456]]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_read_detections_csv_header_blank_lines_and_errors(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("Confidence,X,Y\n0.5,1,2\n\n0.25,3.5,4\n")
    xy, c = read_detections_csv(p)
    assert c.tolist() == [0.5, 0.25] and xy.tolist() == [[1, 2], [3.5, 4]]
    p.write_text("")
    xy, c = read_detections_csv(p)
    assert xy.shape == (0, 2) and c.shape == (0,)
    for bad in ("X,Y,confidence\n1,2,0.5\n", "0.5,1\n", "0.5,1,nan\n", "0.5,1,2\nfoo,1,2\n"):
        p.write_text(bad)
        with pytest.raises(ConfigError, match="a.csv"):
            read_detections_csv(p)


def test_froc_curve_from_hits_directly():
    hits = [lesion_hits([[5, 5]], [0.9], np.ones((1, 1), np.int32), itc=[], name="t"),
            lesion_hits([[5, 5]], [0.8], None, name="n")]
    thr, fps, sens = froc_curve(hits)
    assert thr.tolist() == [float(np.float32(0.9))]
    assert fps.tolist() == [0.0, 0.0] and sens.tolist() == [1.0, 0.0]
