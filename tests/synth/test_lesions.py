"""Geometry of the synthetic lymph node: size classes, anatomy, metastases, artefacts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from shapely.geometry import Point, Polygon

from slidestream.errors import ConfigError
from slidestream.synth.lesions import (
    ITC_MAX_UM,
    MICRO_MAX_UM,
    largest_dimension_um,
    lesion_class,
    make_anatomy,
    make_artefacts,
    place_lesions,
)

MPP = 0.243
W, H = (int(round(mm * 1000 / MPP)) for mm in (2.7, 1.6))


def test_largest_dimension_is_the_feret_diameter_in_um():
    assert largest_dimension_um(Point(0, 0).buffer(100, quad_segs=64), 0.5) == pytest.approx(100, rel=1e-3)
    assert largest_dimension_um(Polygon([(0, 0), (300, 0), (300, 400), (0, 400)]), 0.25) == pytest.approx(125)
    assert largest_dimension_um(Polygon(), 0.25) == 0.0


@pytest.mark.parametrize("size,kind", [(10, "itc"), (ITC_MAX_UM, "itc"), (ITC_MAX_UM + 0.1, "micro"),
                                       (MICRO_MAX_UM, "micro"), (MICRO_MAX_UM + 0.1, "macro")])
def test_size_classes_follow_tnm(size, kind):
    assert lesion_class(size) == kind


def test_anatomy_nests_its_compartments():
    a = make_anatomy(np.random.default_rng(1), W, H, MPP, follicles_per_mm2=5, germinal_fraction=1.0, fat=True)
    assert a.node.is_valid and a.tissue.is_valid
    assert a.tissue.area > 0.45 * W * H
    assert a.capsule.intersects(a.node.exterior)
    assert a.follicles and a.germinal_centres
    for f in a.follicles:
        assert f.difference(a.node).area < 1.0
        assert not any(f.intersection(g).area > 1 for g in a.follicles if g is not f)
    for g in a.germinal_centres:
        assert any(g.difference(f).area < 1.0 for f in a.follicles)
    # fat: adipocytes are holes of the tissue, outside the node
    fat = a.tissue.difference(a.node)
    assert fat.area > 0 and sum(len(p.interiors) for p in getattr(fat, "geoms", [fat])) > 10
    lean = make_anatomy(np.random.default_rng(1), W, H, MPP, follicles_per_mm2=0, sinus_amount=0)
    assert not lean.follicles and lean.tissue.equals(lean.node)


def test_lesions_have_their_class_and_stay_apart():
    a = make_anatomy(np.random.default_rng(2), W, H, MPP)
    lesions = place_lesions(np.random.default_rng(3), a, MPP, ["itc", "micro", "macro", "itc"])
    assert [les.kind for les in lesions] == ["macro", "micro", "itc", "itc"]  # largest first
    for les in lesions:
        assert les.kind == lesion_class(largest_dimension_um(les.outline, MPP))
        assert les.geometry.difference(a.node.buffer(-25 / MPP)).area < 1.0
        assert les.outline.buffer(0.01).contains(les.geometry)
    for i, x in enumerate(lesions):
        for y in lesions[i + 1:]:
            assert x.outline.distance(y.outline) > 50 / MPP
    # an ITC is a few cells: its painted area is a small part of its hull
    itc = lesions[2]
    assert itc.geometry.area < itc.outline.area
    assert itc.geometry.area * MPP**2 < math.pi * ITC_MAX_UM**2 / 4


def test_macro_needs_a_large_enough_slide():
    small = make_anatomy(np.random.default_rng(2), int(1.2e3 / MPP), int(0.9e3 / MPP), MPP)
    with pytest.raises(ConfigError, match="macro"):
        place_lesions(np.random.default_rng(0), small, MPP, ["macro"])
    with pytest.raises(ConfigError, match="unknown lesion class"):
        place_lesions(np.random.default_rng(0), small, MPP, ["huge"])


def test_artefacts_are_drawn_when_asked():
    a = make_anatomy(np.random.default_rng(4), W, H, MPP)
    none = make_artefacts(np.random.default_rng(5), a.tissue, W, H, MPP)
    assert none.names == []
    arts = make_artefacts(np.random.default_rng(5), a.tissue, W, H, MPP, fold=True, blur=True, bubble=True, pen=True)
    assert arts.names == ["fold", "blur", "bubble", "pen"]
    assert len(arts.blur_sigma_um) == len(arts.blurs)
    for fold in arts.folds:
        assert fold.difference(a.tissue).area < 1.0
    assert all(shapely.intersects(p, a.tissue) for p in arts.pens)
    assert all(b.intersects(a.tissue) for b in arts.bubbles)
