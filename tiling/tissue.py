"""Tissue segmentation on a low-resolution RGB image (thumbnail or a coarse pyramid level).

The method is the one most WSI tools converge on: tissue is more saturated than glass, so Otsu's threshold on a
blurred saturation channel separates them; morphology closes small gaps; small specks and small holes are removed.
Pen ink is saturated too, so strongly blue/green and near-black pixels are removed first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage import color, filters, measure, morphology
import shapely
import shapely.affinity
from shapely.geometry import MultiPolygon, Polygon


@dataclass(frozen=True)
class TissueConfig:
    """Parameters of :func:`segment_tissue`.

    Areas are in µm² so the same settings work whatever the thumbnail resolution; ``mpp`` of the image
    is passed to :func:`segment_tissue`.
    """

    min_saturation: float = 0.05
    """Floor for the Otsu threshold on saturation (0–1), so a slide of almost only glass finds no tissue."""
    blur_sigma_um: float = 16.0
    """Gaussian blur on saturation before thresholding, in µm."""
    close_um: float = 32.0
    """Radius of the morphological closing, in µm."""
    min_tissue_area_um2: float = 20_000.0
    """Connected tissue components smaller than this are dropped (dust, debris)."""
    min_hole_area_um2: float = 10_000.0
    """Holes smaller than this are filled."""
    pen_filter: bool = True
    """Exclude blue, green and black pen marks."""
    max_brightness: float = 0.92
    """Pixels brighter than this (0–1 value channel) and unsaturated are glass."""
    min_pen_area_um2: float = 2_000.0
    """Ink blobs smaller than this are ignored: single dark nuclei or dye specks are not pen strokes."""
    working_mpp: float = 4.0
    """Resolution (µm/px) at which callers should segment: fine enough for 112 µm tiles, cheap on any slide."""


def pen_mask(rgb: np.ndarray) -> np.ndarray:
    """Pixels of blue, green or black marker ink.

    Parameters
    ----------
    rgb : (H, W, 3) uint8 array

    Returns
    -------
    (H, W) bool array, True on ink.

    Notes
    -----
    H&E is pink to purple: red is never far below blue in stained tissue, and green is the lowest channel.
    Blue ink has blue far above red; green ink has green above red and blue; black ink is dark in all channels
    without the purple hue of dense nuclei.
    """
    img = rgb.astype(np.int16)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    blue = (b - r > 40) & (b - g > 15)
    green = (g - r > 15) & (g - b > 0)
    black = (img.max(axis=-1) < 50) & (np.abs(r - b) < 25)
    return blue | green | black


def segment_tissue(rgb: np.ndarray, mpp: float, config: TissueConfig | None = None) -> np.ndarray:
    """Tissue mask of a low-resolution RGB image.

    Parameters
    ----------
    rgb : (H, W, 3) uint8 array
        Thumbnail or coarse pyramid level, RGB.
    mpp : float
        Pixel size of ``rgb`` in µm/px (level-0 MPP times the thumbnail's downsample).
    config : TissueConfig, optional

    Returns
    -------
    (H, W) bool array, True on tissue.
    """
    config = config or TissueConfig()
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"segment_tissue expects an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    if min(rgb.shape[:2]) < 2:
        return np.zeros(rgb.shape[:2], bool)
    hsv = color.rgb2hsv(rgb)
    sat = hsv[..., 1].astype(np.float32)
    val = hsv[..., 2]
    pens = pen_mask(rgb) if config.pen_filter else np.zeros(rgb.shape[:2], bool)
    # Ink must not pull the Otsu threshold, and glass must not count as tissue even if the blur spreads into it.
    sat = np.where(pens, 0.0, sat)
    sigma = max(config.blur_sigma_um / mpp, 0.5)
    sat_blur = filters.gaussian(sat, sigma=sigma, preserve_range=True)
    try:
        thr = filters.threshold_otsu(sat_blur)
    except ValueError:  # a constant image has no threshold
        thr = 1.0
    thr = max(thr, config.min_saturation)
    mask = (sat_blur > thr) & ~((val > config.max_brightness) & (sat < config.min_saturation))
    radius = int(round(config.close_um / mpp))
    if radius >= 1:
        mask = ndi.binary_closing(mask, structure=morphology.disk(radius), border_value=0)
    px_area = mpp * mpp
    if config.pen_filter:
        pens = morphology.remove_small_objects(pens, max_size=int(config.min_pen_area_um2 / px_area))
        if pens.any():
            mask &= ~ndi.binary_dilation(pens, iterations=max(1, int(round(8.0 / mpp))))
    mask = morphology.remove_small_objects(mask, max_size=max(int(config.min_tissue_area_um2 / px_area), 0))
    mask = morphology.remove_small_holes(mask, max_size=max(int(config.min_hole_area_um2 / px_area), 0))
    return mask


def mask_to_polygons(mask: np.ndarray, downsample: float | tuple[float, float], *, tolerance: float = 1.0) -> MultiPolygon:
    """Outline of a binary mask as polygons in level-0 pixel coordinates.

    Parameters
    ----------
    mask : (H, W) bool array
    downsample : float or (float, float)
        Level-0 pixels per mask pixel (x, y).
    tolerance : float
        Simplification tolerance in mask pixels.

    Returns
    -------
    shapely MultiPolygon (possibly empty), valid, holes kept.
    """
    sx, sy = (downsample, downsample) if np.isscalar(downsample) else downsample
    padded = np.pad(mask.astype(np.uint8), 1)
    labels = measure.label(padded, connectivity=2)
    polys = []
    for region in measure.regionprops(labels):
        sub = (labels == region.label).astype(np.uint8)
        contours = measure.find_contours(sub, 0.5)
        rings = []
        for c in contours:
            if len(c) < 4:
                continue
            # find_contours gives (row, col) in the padded image; pixel centres sit at integer coordinates,
            # so a pixel's outline edge at 0.5 offset maps back to pixel-corner coordinates after +0.5 - 1 (pad).
            xy = np.column_stack([c[:, 1] - 0.5, c[:, 0] - 0.5])
            ring = Polygon(xy)
            if ring.area > 0:
                rings.append(ring)
        if not rings:
            continue
        rings.sort(key=lambda p: p.area, reverse=True)
        shell = rings[0]
        holes = [r for r in rings[1:] if shell.contains(r.representative_point())]
        geom = shell
        for h in holes:
            geom = geom.difference(h)
        polys.append(geom)
    if not polys:
        return MultiPolygon()
    merged = shapely.make_valid(shapely.union_all(polys).simplify(tolerance))
    merged = shapely.affinity.scale(merged, xfact=sx, yfact=sy, origin=(0, 0))
    return MultiPolygon(polygonal_parts(merged))


def polygonal_parts(geom) -> list[Polygon]:
    """Non-empty Polygons inside any shapely geometry (collections are flattened, lines and points dropped)."""
    out = []
    for part in shapely.get_parts(shapely.get_parts(geom)):
        if isinstance(part, Polygon) and not part.is_empty:
            out.append(part)
        elif isinstance(part, MultiPolygon):
            out.extend(p for p in part.geoms if not p.is_empty)
    return out
