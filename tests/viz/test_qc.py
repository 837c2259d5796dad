"""Tiling QC images: every pixel is the thumbnail, a kept tile (tinted, outlined), the tissue outline or a hole's
outline, exactly where the mask and the tile coordinates say; checked against an independent rendering (scipy
erosion for the outlines, the tiles' boxes computed here)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi
from slidestream.viz.qc import (
    CAPTION_HEIGHT,
    HOLE_COLOUR,
    TILE_COLOUR,
    TILE_TINT,
    TISSUE_COLOUR,
    render_tissue_qc,
    write_qc_jpeg,
)


def _scene():
    rng = np.random.default_rng(0)
    h, w = 120, 160
    thumb = ndi.gaussian_filter(rng.integers(0, 256, (h, w, 3)).astype(float), (3, 3, 0))
    thumb = np.clip((thumb - thumb.mean()) * 8 + 180, 0, 255).astype(np.uint8)
    # the mask at half the thumbnail's resolution: a disk of tissue with a hole
    yy, xx = np.mgrid[:60, :80]
    mask = (yy - 30) ** 2 + (xx - 38) ** 2 < 24**2
    hole = (yy - 30) ** 2 + (xx - 40) ** 2 < 6**2
    mask &= ~hole
    coords = np.array([[200, 200], [400, 200], [200, 400], [1300, 900], [1555, 1100]])  # the last one 4 px wide
    return thumb, mask, hole, coords


def _expected_layers(thumb, mask, hole, coords, extent0, width):
    h, w = thumb.shape[:2]
    rows, cols = np.arange(h) // 2, np.arange(w) // 2  # thumbnail pixel centres fall in mask pixel // 2
    tissue, holes = mask[rows][:, cols], hole[rows][:, cols]
    cross = ndi.generate_binary_structure(2, 1)

    def rim(region):
        return region & ~ndi.binary_erosion(region, cross, iterations=width, border_value=0)

    covered = np.zeros((h, w), bool)
    outline = np.zeros((h, w), bool)
    for x, y in coords:
        x0, y0 = round(x / 10), round(y / 10)
        x1, y1 = min(round((x + extent0) / 10), w), min(round((y + extent0) / 10), h)
        covered[y0:y1, x0:x1] = True
        if min(x1 - x0, y1 - y0) >= 6:
            outline[y0:y1, x0:x1] = True
            outline[y0 + 1:y1 - 1, x0 + 1:x1 - 1] = False
    return covered, outline, rim(tissue | holes), rim(holes)


@pytest.mark.parametrize("width", [1, 2])
def test_every_pixel_is_where_the_mask_and_the_tiles_say(width):
    thumb, mask, hole, coords = _scene()
    extent0 = 200.0
    img = render_tissue_qc(thumb, (10.0, 10.0), mask, (20.0, 20.0), coords, extent0, holes=hole, line_width=width)
    assert img.shape == thumb.shape and img.dtype == np.uint8
    covered, outline, tissue_rim, hole_rim = _expected_layers(thumb, mask, hole, coords, extent0, width)
    assert tissue_rim.sum() > 100 and hole_rim.sum() > 20 and (covered & ~outline).sum() > 500
    assert (img[hole_rim] == HOLE_COLOUR).all()
    assert (img[tissue_rim & ~hole_rim] == TISSUE_COLOUR).all()
    lines = outline & ~tissue_rim & ~hole_rim
    assert (img[lines] == TILE_COLOUR).all()
    tinted = covered & ~outline & ~tissue_rim & ~hole_rim
    want = thumb[tinted] + TILE_TINT * (np.array(TILE_COLOUR) - thumb[tinted].astype(float))
    assert np.abs(img[tinted] - want).max() <= 1
    rest = ~covered & ~tissue_rim & ~hole_rim
    assert np.array_equal(img[rest], thumb[rest])


def test_without_holes_or_mask_or_tiles():
    thumb, mask, hole, coords = _scene()
    plain = render_tissue_qc(thumb, (10.0, 10.0), None, None, np.zeros((0, 2)), 200.0)
    assert np.array_equal(plain, thumb)
    no_holes = render_tissue_qc(thumb, (10.0, 10.0), mask, (20.0, 20.0), np.zeros((0, 2)), 200.0)
    assert not (no_holes == HOLE_COLOUR).all(axis=-1).any()
    # without the hole layer the hole's edge is part of the tissue outline
    _, _, _, hole_rim = _expected_layers(thumb, mask, hole, coords, 200.0, 1)
    assert (no_holes[ndi.binary_dilation(hole_rim)] == TISSUE_COLOUR).all(axis=-1).any()


def test_caption_strip_and_jpeg_file(tmp_path):
    thumb, mask, hole, coords = _scene()
    plain = render_tissue_qc(thumb, (10.0, 10.0), mask, (20.0, 20.0), coords, 200.0, holes=hole)
    captioned = render_tissue_qc(thumb, (10.0, 10.0), mask, (20.0, 20.0), coords, 200.0, holes=hole,
                                 caption="slide: 5 tiles")
    assert captioned.shape == (thumb.shape[0] + CAPTION_HEIGHT, thumb.shape[1], 3)
    assert np.array_equal(captioned[:thumb.shape[0]], plain)
    assert (captioned[thumb.shape[0]:] > 128).any(), "the caption text is drawn"
    path = write_qc_jpeg(tmp_path / "qc" / "s.jpg", captioned)
    with Image.open(path) as im:
        assert im.format == "JPEG" and im.size == (thumb.shape[1], thumb.shape[0] + CAPTION_HEIGHT)
        decoded = np.asarray(im.convert("RGB")).astype(int)
    assert np.abs(decoded - captioned).mean() < 6
    assert [p.name for p in path.parent.iterdir()] == ["s.jpg"]


def test_bad_thumbnail_is_refused():
    with pytest.raises(ValueError, match="uint8 thumbnail"):
        render_tissue_qc(np.zeros((10, 10), np.uint8), (1.0, 1.0), None, None, np.zeros((0, 2)), 1.0)
