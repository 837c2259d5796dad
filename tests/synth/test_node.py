"""The lymph node painter: compartments, tumour grade and artefacts show in the pixels."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import shapely

from slidestream.synth.camelyon16 import Camelyon16Preset, camelyon16_scene, plan_camelyon16
from slidestream.synth.node import NodeLook, NodeScene


@pytest.fixture(scope="module")
def scene() -> NodeScene:
    preset = Camelyon16Preset(slide_mm=(1.2, 0.9), lesion_mix=(0, 1, 0), seed=11)
    spec = next(s for s in plan_camelyon16(preset) if s.label)
    spec.artefacts = {"fold": True, "blur": True, "bubble": True, "pen": False}
    spec.lesion_kinds = ["micro"]
    return camelyon16_scene(spec, preset)


def _patch(scene: NodeScene, geom, size: int = 96) -> np.ndarray:
    x, y = geom.representative_point().coords[0]
    return scene.paint(int(x) - size // 2, int(y) - size // 2, size, size)[..., :3].astype(float)


def _detail(px: np.ndarray) -> float:
    """Mean absolute difference between neighbouring pixels (sharpness)."""
    g = px.mean(-1)
    return float(np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean())


def test_glass_is_the_background_colour(scene):
    corner = scene.paint(0, 0, 32, 32)[..., :3]
    assert not shapely.box(0, 0, 32, 32).intersects(scene.tissue.buffer(scene.margin))
    assert (corner == scene.background).all()
    assert scene.is_glass(np.array([0]), np.array([0]), 32, 32)[0]


def test_fold_is_darker_and_blur_is_softer(scene):
    um = 1 / scene.cfg.mpp
    others = shapely.union_all(scene.artefacts.blurs + scene.artefacts.bubbles + scene.tumors).buffer(30 * um)
    fold = scene.artefacts.folds[0].buffer(-8 * um).difference(others)
    near = scene.artefacts.folds[0].buffer(60 * um).difference(scene.artefacts.folds[0].buffer(20 * um))
    near = near.intersection(scene.anatomy.node.buffer(-40 * um)).difference(others)
    assert _patch(scene, fold, 24).mean() < _patch(scene, near, 24).mean() - 15
    blur = scene.artefacts.blurs[0].buffer(-40 * um)
    sharp = scene.anatomy.node.buffer(-60 * um).difference(shapely.union_all(scene.artefacts.blurs).buffer(40 * um))
    sharp = sharp.difference(others)
    assert _detail(_patch(scene, blur)) < 0.7 * _detail(_patch(scene, sharp))


def test_bubble_has_a_dark_rim(scene):
    bubble = scene.artefacts.bubbles[0]
    um = 1 / scene.cfg.mpp
    rim = bubble.difference(bubble.buffer(-5 * um))
    x0, y0, x1, y1 = (int(v) for v in bubble.bounds)
    px = scene.paint(x0, y0, x1 - x0, y1 - y0)[..., :3].astype(float).mean(-1)
    ys, xs = np.mgrid[y0:y1, x0:x1]
    on_rim = shapely.contains_xy(rim, xs + 0.5, ys + 0.5)
    assert px[on_rim].mean() < 150 < scene.background.mean()


def test_low_grade_tumour_looks_like_a_germinal_centre():
    high, low = NodeLook(tumor_grade=1.0), NodeLook(tumor_grade=0.0)
    kinds_h, _ = high.kinds()
    kinds_l, mix = low.kinds()
    tumour = {k.name: k for k in kinds_h}["tumor"], {k.name: k for k in kinds_l}["tumor"]
    centroblast = {k.name: k for k in kinds_l}["centroblast"]
    lymphocyte = {k.name: k for k in kinds_l}["lymphocyte"]
    # high grade: larger, darker nuclei than any normal cell; low grade: in the range of germinal-centre cells
    assert tumour[0].major_um[0] > centroblast.major_um[1] - 1 and tumour[0].hematoxylin[1] > centroblast.hematoxylin[1]
    assert centroblast.major_um[0] - 1 < tumour[1].major_um[0] < centroblast.major_um[1]
    assert tumour[1].major_um[0] >= lymphocyte.major_um[1]  # still larger than a small lymphocyte
    assert abs(np.mean(tumour[1].hematoxylin) - np.mean(centroblast.hematoxylin)) < 0.15
    assert high.densities()[5] < low.densities()[5]


def test_stain_gains_change_the_colour(scene):
    um = 1 / scene.cfg.mpp
    region = scene.anatomy.node.buffer(-100 * um).difference(
        shapely.union_all(scene.artefacts.folds + scene.artefacts.blurs + scene.artefacts.bubbles).buffer(50 * um))
    paler = NodeScene(scene.cfg, scene.anatomy, scene.lesions, scene.artefacts, replace(scene.look, h_gain=0.6))
    assert _patch(paler, region).mean() > _patch(scene, region).mean() + 10
