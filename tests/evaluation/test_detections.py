"""Lesion detections from tile scores: NMS, CSV output, QuPath points, and the path into the FROC."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from shapely.geometry import Point, box
from slidestream.errors import ConfigError
from slidestream.evaluation.detections import detections_from_tiles, write_detections_csv
from slidestream.evaluation.froc import FROCCase, compute_froc, evaluation_mask
from slidestream.evaluation.froc_files import read_detections_csv
from slidestream.annotations import check_qupath_feature, point_features, write_geojson


def _grid(nx, ny, tile=256):
    xs, ys = np.meshgrid(np.arange(nx) * tile, np.arange(ny) * tile)
    return np.column_stack([xs.ravel(), ys.ravel()])


def test_separate_peaks_give_one_detection_each():
    coords = _grid(20, 10)
    scores = np.full(len(coords), 0.1)
    peaks = {(2, 3): 0.9, (15, 2): 0.8, (10, 8): 0.6}
    for (cx, cy), s in peaks.items():
        i = cy * 20 + cx
        scores[i] = s
        for j in (i - 1, i + 1):  # shoulders above min_score, within the radius of their peak
            scores[j] = s - 0.05
    pts, conf = detections_from_tiles(coords, 256, scores, mpp=0.25, nms_radius_um=200)
    assert pts.dtype == np.float64 and pts.shape == (3, 2) and conf.shape == (3,)
    assert conf.tolist() == [0.9, 0.8, 0.6]
    assert pts.tolist() == [[2 * 256 + 128, 3 * 256 + 128], [15 * 256 + 128, 2 * 256 + 128],
                            [10 * 256 + 128, 8 * 256 + 128]]


def test_radius_decides_whether_neighbouring_peaks_merge():
    # Two peaks 3 tiles apart: 3 * 256 px * 0.25 µm/px = 192 µm.
    coords = _grid(10, 1)
    scores = np.zeros(10)
    scores[2], scores[5] = 0.9, 0.7
    assert len(detections_from_tiles(coords, 256, scores, mpp=0.25, nms_radius_um=192)[0]) == 1  # inclusive
    assert len(detections_from_tiles(coords, 256, scores, mpp=0.25, nms_radius_um=191.9)[0]) == 2
    # the same tiles at 0.5 µm/px are 384 µm apart
    assert len(detections_from_tiles(coords, 256, scores, mpp=0.5, nms_radius_um=200)[0]) == 2


def test_min_score_and_nan():
    coords = _grid(5, 1, tile=1000)
    scores = np.array([0.49, 0.5, np.nan, 0.95, 0.2])
    pts, conf = detections_from_tiles(coords, 1000, scores, mpp=0.25, min_score=0.5, nms_radius_um=10)
    assert conf.tolist() == [0.95, 0.5]
    pts, conf = detections_from_tiles(coords, 1000, scores, mpp=0.25, min_score=0.99)
    assert pts.shape == (0, 2) and conf.shape == (0,)


def test_ties_are_resolved_by_position_whatever_the_input_order():
    coords = np.array([[512, 0], [0, 0], [256, 0], [0, 256]])
    scores = np.array([0.8, 0.8, 0.8, 0.8])
    results = set()
    for perm in itertools.permutations(range(4)):
        perm = list(perm)
        pts, _ = detections_from_tiles(coords[perm], 256, scores[perm], mpp=0.25, nms_radius_um=70)
        results.add(tuple(map(tuple, pts.tolist())))
    # 70 µm = 280 px: (128,128) is kept first (lowest y, then x) and suppresses (384,128) and (128,384);
    # (640,128) is 512 px away and stays.
    assert results == {((128.0, 128.0), (640.0, 128.0))}


def test_nms_properties_on_random_maps():
    rng = np.random.default_rng(0)
    coords = _grid(40, 30)
    scores = rng.random(len(coords))
    r_um, mpp = 300.0, 0.25
    pts, conf = detections_from_tiles(coords, 256, scores, mpp=mpp, nms_radius_um=r_um, min_score=0.3)
    r = r_um / mpp
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    assert (d[~np.eye(len(pts), dtype=bool)] > r).all()  # kept detections are more than r apart
    assert np.all(np.diff(conf) <= 0)
    centres = coords + 128.0
    cand = scores >= 0.3
    near = np.linalg.norm(centres[cand][:, None] - pts[None], axis=-1) <= r
    # every candidate is covered by a kept detection scoring at least as high
    assert np.all((near & (conf[None] >= scores[cand][:, None])).any(axis=1))


def test_per_tile_sizes_and_errors():
    coords = np.array([[0, 0], [10_000, 0]])
    pts, _ = detections_from_tiles(coords, [512, 256], [0.9, 0.8], mpp=0.25)
    assert pts.tolist() == [[256, 256], [10_128, 128]]
    with pytest.raises(ConfigError, match="scores"):
        detections_from_tiles(coords, 256, [0.9], mpp=0.25)
    with pytest.raises(ConfigError, match="tile_size0"):
        detections_from_tiles(coords, [256], [0.9, 0.8], mpp=0.25)
    with pytest.raises(ConfigError, match="mpp"):
        detections_from_tiles(coords, 256, [0.9, 0.8], mpp=0)
    with pytest.raises(ConfigError, match="nms_radius_um"):
        detections_from_tiles(coords, 256, [0.9, 0.8], mpp=0.25, nms_radius_um=-1)
    pts, conf = detections_from_tiles(np.zeros((0, 2)), 256, [], mpp=0.25)
    assert pts.shape == (0, 2) and conf.shape == (0,)


def test_write_detections_csv_refuses_bad_input(tmp_path):
    with pytest.raises(ConfigError):
        write_detections_csv(tmp_path / "a.csv", [[1, 2]], [0.5, 0.6])
    with pytest.raises(ConfigError, match="finite"):
        write_detections_csv(tmp_path / "a.csv", [[1, 2]], [float("nan")])
    assert not (tmp_path / "a.csv").exists()
    write_detections_csv(tmp_path / "a.csv", np.zeros((0, 2)), [])
    assert (tmp_path / "a.csv").read_text() == ""


def test_detections_as_qupath_points(tmp_path):
    pts = np.array([[100.5, 200.25], [5000, 5000], [20, 30]])
    feats = point_features(pts, [0.9, 0.8, 0.7], slide_size=(1000, 1000))
    assert len(feats) == 2  # the point outside the slide is dropped
    assert feats[0]["geometry"] == {"type": "Point", "coordinates": [100.5, 200.25]}
    assert feats[0]["properties"]["measurements"] == {"confidence": 0.9}
    assert feats[0]["properties"]["classification"]["name"] == "Tumor"
    for f in feats:
        assert check_qupath_feature(f) == []
    out = write_geojson(tmp_path / "det.geojson", feats)
    assert out.stat().st_size > 0


def test_tiles_to_froc_end_to_end(tmp_path):
    # Two lesions on a 40,000 px slide at 0.243 µm/px; tiles overlapping a lesion score high, others low.
    lesions = [box(8000, 8000, 12000, 11000), Point(30000, 25000).buffer(2500)]
    size = (40_000, 32_000)
    tile = 512
    coords = _grid(size[0] // tile, size[1] // tile, tile)
    rng = np.random.default_rng(1)
    scores = rng.uniform(0.0, 0.3, len(coords))
    for k, les in enumerate(lesions):
        hit = np.array([les.intersects(box(x, y, x + tile, y + tile)) for x, y in coords])
        scores[hit] = rng.uniform(0.7, 0.95, hit.sum()) - 0.1 * k
    scores[100] = 0.6  # one isolated false alarm far from both lesions
    pts, conf = detections_from_tiles(coords, tile, scores, mpp=0.243, min_score=0.5, nms_radius_um=500)
    csv = write_detections_csv(tmp_path / "tumor_001.csv", pts, conf)
    back_pts, back_conf = read_detections_csv(csv)
    mask = evaluation_mask(lesions, size)
    assert int(mask.max()) == 2
    r = compute_froc([FROCCase("tumor_001", back_pts, back_conf, mask)])
    assert r["n_lesions"] == 2 and r["n_lesions_detected"] == 2
    # NMS leaves few detections per lesion; at least one FP (the false alarm) is counted at its score
    assert r["n_fp"] >= 1 and r["n_detections"] < 15
    assert r["sensitivity"]["8"] == 1.0
