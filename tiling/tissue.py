"""Tissue segmentation on a low-resolution RGB image (thumbnail or a coarse pyramid level).

The method is the one most WSI tools converge on: tissue is more saturated than glass, so Otsu's threshold on a
blurred saturation channel separates them; morphology closes small gaps; small specks and small holes are removed.
Pen ink is saturated too, so strongly blue/green and near-black pixels are removed first.

Segmentation uses numpy and PIL only (scikit-image is imported only to trace outlines, scipy not at all), so it costs
about a tenth of a second on a 2048 px overview and little import time in ``slidestream tile``.
"""

from __future__ import annotations

import numpy as np
import shapely
import shapely.affinity
from PIL import Image, ImageFilter
from shapely.geometry import MultiPolygon, Polygon

from .settings import TISSUE_METHODS, TissueConfig

__all__ = ["TISSUE_METHODS", "TissueConfig", "blur", "close_mask", "hole_mask", "mask_to_polygons",
           "otsu_threshold_uint8", "pen_mask", "polygonal_parts", "remove_small_holes", "remove_small_objects",
           "saturation", "segment_tissue"]


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
    r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))
    blue = (b - r > 40) & (b - g > 15)
    green = (g - r > 15) & (g > b)
    black = (np.maximum(np.maximum(r, g), b) < 50) & (np.abs(r - b) < 25)
    return blue | green | black


def saturation(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV saturation and value of an RGB image.

    Parameters
    ----------
    rgb : (H, W, 3) uint8 array

    Returns
    -------
    sat : (H, W) float32 array in [0, 1]
        ``(max - min) / max`` over the channels, 0 where the pixel is black (as scikit-image's ``rgb2hsv``).
    value : (H, W) uint8 array
        ``max`` over the channels (HSV value times 255).
    """
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hi = np.maximum(np.maximum(r, g), b)
    lo = np.minimum(np.minimum(r, g), b)
    sat = np.zeros(hi.shape, np.float32)
    np.divide((hi - lo).astype(np.float32), hi, out=sat, where=hi > 0)
    return sat, hi


def otsu_threshold_uint8(values: np.ndarray) -> int | None:
    """Otsu's threshold of an (H, W) uint8 image: the grey level t maximising the between-class variance of
    ``values <= t`` and ``values > t``; None when all values are equal."""
    hist = np.asarray(Image.fromarray(np.ascontiguousarray(values), mode="L").histogram(), dtype=np.float64)
    if np.count_nonzero(hist) < 2:
        return None
    levels = np.arange(256, dtype=np.float64)
    w1 = np.cumsum(hist)
    w2 = w1[-1] - w1
    s1 = np.cumsum(hist * levels)
    m1 = s1 / np.maximum(w1, 1e-12)
    m2 = (s1[-1] - s1) / np.maximum(w2, 1e-12)
    between = w1 * w2 * (m1 - m2) ** 2
    return int(np.argmax(between[:-1]))


def remove_small_objects(mask: np.ndarray, max_size: int) -> np.ndarray:
    """``mask`` without its 4-connected components of at most ``max_size`` pixels."""
    out = mask.copy()
    if max_size >= 1 and out.any():
        # every component lies inside the bounding box of the True pixels: label only that (pen masks are small)
        rows, cols = np.flatnonzero(out.any(axis=1)), np.flatnonzero(out.any(axis=0))
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        _clear_small(out[box], out[box], max_size, False)
    return out


def remove_small_holes(mask: np.ndarray, max_size: int) -> np.ndarray:
    """``mask`` with its 4-connected background components of at most ``max_size`` pixels filled."""
    out = mask.copy()
    if max_size >= 1 and not out.all():
        _clear_small(~mask, out, max_size, True)
    return out


def _clear_small(components: np.ndarray, out: np.ndarray, max_size: int, value: bool) -> None:
    """Set ``out`` to ``value`` on the 4-connected components of ``components`` of at most ``max_size`` px."""
    starts, ends, stride = _runs(components)
    if not len(starts):
        return
    root = _run_components(starts, ends, stride)
    lengths = ends - starts
    sizes = np.bincount(root, weights=lengths, minlength=len(root))
    small = sizes[root] <= max_size
    if not small.any():
        return
    # every pixel of the small components' runs, as (row, column)
    starts, lengths = starts[small], lengths[small]
    first = np.cumsum(lengths) - lengths
    flat = np.arange(int(lengths.sum())) + np.repeat(starts - first, lengths)
    rows, cols = np.divmod(flat, stride)
    out[rows, cols - 1] = value


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Horizontal runs of True pixels of an (H, W) bool mask, in raster order.

    Returns flat ``starts`` and exclusive ``ends`` in the mask padded with a False column on each side
    (row stride ``W + 2``), so that no run continues from one row into the next.
    """
    h, w = mask.shape
    stride = w + 2
    padded = np.zeros((h, stride), bool)
    padded[:, 1:-1] = mask
    flat = padded.ravel()
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    return edges[0::2], edges[1::2], stride


def _run_components(starts: np.ndarray, ends: np.ndarray, stride: int) -> np.ndarray:
    """4-connected components of runs (from :func:`_runs`): for each run, the index of its component's first run.

    Labelling runs rather than pixels keeps this in a few numpy calls per pass (scipy.ndimage.label would do, but
    importing scipy.ndimage would cost every ``slidestream tile`` more start-up than labelling a tissue mask takes).
    """
    n = len(starts)
    # Runs of consecutive rows touch where their column spans overlap. For run j, the runs of the row above it that
    # do are a contiguous index range [lo, hi): those ending after j starts and starting before j ends, one row up
    # (the padding columns keep other rows out of both conditions).
    lo = np.searchsorted(ends, starts - stride, side="right")
    hi = np.searchsorted(starts, ends - stride, side="left")
    count = np.maximum(hi - lo, 0)
    below = np.repeat(np.arange(n), count)
    above = np.arange(int(count.sum())) + np.repeat(lo - (np.cumsum(count) - count), count)
    # Union-find by rounds: every root takes the smallest root it touches, then paths are compressed by pointer
    # jumping. Parents only ever point to smaller indices, so no cycle can form; edges inside one component are
    # dropped as they settle.
    parent = np.arange(n)
    while len(below):
        ra, rb = parent[above], parent[below]
        open_ = ra != rb
        if not open_.any():
            break
        above, below, ra, rb = above[open_], below[open_], ra[open_], rb[open_]
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    return parent


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of an (H, W) uint8 image, standard deviation ``sigma`` px (PIL's three-box approximation:
    much faster than an exact float convolution, and 8 bits are plenty for a threshold)."""
    return np.asarray(Image.fromarray(image, mode="L").filter(ImageFilter.GaussianBlur(radius=sigma)))


def close_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    """Morphological closing with an octagon of about ``radius`` px (a square and a diamond).

    Closing fills gaps and bays narrower than the element; the octagon is within a pixel of a disk at the radii
    used here. The image is padded with its edge values first, so tissue touching the border is not eroded.
    Written with shifted maxima/minima over bool arrays (what ``scipy.ndimage`` computes, at a third of its cost
    on a few-megapixel mask).
    """
    if radius < 1:
        return mask.copy()
    pad = 2 * radius + 1
    img = np.pad(mask.astype(bool), pad, mode="edge")
    # octagon = square of side 2a+1 dilated by a diamond of radius b, with a + b = radius, a ~ 0.41 radius
    a = max(int(round(radius * 0.414)), 0)
    b = radius - a
    for grow in (True, False):
        for axis in (0, 1):
            img = _spread(img, a, axis, grow)
        img = _diamond(img, b, grow)
    return img[pad:-pad, pad:-pad]


def _diamond(img: np.ndarray, radius: int, grow: bool) -> np.ndarray:
    """Dilation (``grow``) or erosion by a diamond of ``radius`` px: ``radius`` steps of the 4-neighbour cross."""
    for _ in range(radius):
        img = _cross(img, grow)
    return img


def _spread(img: np.ndarray, steps: int, axis: int, grow: bool) -> np.ndarray:
    """OR (``grow``) or AND of ``img`` with its shifts by 1..``steps`` px both ways along ``axis``; pixels beyond
    the border do not count (dilation with a 0 border, erosion with a 1 border)."""
    out = img.copy()
    op = np.logical_or if grow else np.logical_and
    for k in range(1, steps + 1):
        lo = [slice(None)] * 2
        hi = [slice(None)] * 2
        lo[axis], hi[axis] = slice(k, None), slice(None, -k)
        op(out[tuple(lo)], img[tuple(hi)], out=out[tuple(lo)])
        op(out[tuple(hi)], img[tuple(lo)], out=out[tuple(hi)])
    return out


def _cross(img: np.ndarray, grow: bool) -> np.ndarray:
    """One step of dilation (``grow``) or erosion by the 4-neighbour cross, borders as in :func:`_spread`."""
    out = img.copy()
    op = np.logical_or if grow else np.logical_and
    op(out[1:], img[:-1], out=out[1:])
    op(out[:-1], img[1:], out=out[:-1])
    op(out[:, 1:], img[:, :-1], out=out[:, 1:])
    op(out[:, :-1], img[:, 1:], out=out[:, :-1])
    return out


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
    sat, val = saturation(rgb)
    pens = pen_mask(rgb) if config.pen_filter else None
    if pens is not None:
        # Ink must not pull the Otsu threshold, and glass must not count as tissue even if the blur spreads into it.
        sat[pens] = 0.0
    sat8 = np.rint(sat * 255).astype(np.uint8)
    sat_blur = blur(sat8, max(config.blur_sigma_um / mpp, 0.5))
    thr = otsu_threshold_uint8(sat_blur) if config.method == "otsu" else 0
    thr = max(256 if thr is None else thr, config.min_saturation * 255)
    glass = (val > config.max_brightness * 255) & (sat < config.min_saturation)
    mask = (sat_blur > thr) & ~glass
    mask = close_mask(mask, int(round(config.close_um / mpp)))
    px_area = mpp * mpp
    if pens is not None and pens.any():
        pens = remove_small_objects(pens, int(config.min_pen_area_um2 / px_area))
        if pens.any():
            mask &= ~_diamond(pens, max(1, int(round(8.0 / mpp))), True)
    mask = remove_small_objects(mask, max(int(config.min_tissue_area_um2 / px_area), 0))
    mask = remove_small_holes(mask, max(int(config.min_hole_area_um2 / px_area), 0))
    if not config.keep_holes:
        mask |= hole_mask(mask)
    return mask


def hole_mask(mask: np.ndarray) -> np.ndarray:
    """The holes of a tissue mask: background pixels enclosed by tissue, i.e. the 4-connected components of
    ``~mask`` that do not touch the image border.

    Parameters
    ----------
    mask : (H, W) bool array

    Returns
    -------
    (H, W) bool array, True on hole pixels; ``mask | hole_mask(mask)`` is the tissue with its holes filled.
    """
    mask = np.asarray(mask, bool)
    h, w = mask.shape
    out = np.zeros((h, w), bool)
    if min(h, w) < 3 or mask.all():
        return out
    starts, ends, stride = _runs(~mask)
    root = _run_components(starts, ends, stride)
    row = starts // stride
    # a run touches the border if it lies in the first or last row, or starts in column 0 / ends in column w - 1
    border = (row == 0) | (row == h - 1) | (starts % stride == 1) | (ends % stride == w + 1)
    outside = np.zeros(len(root), bool)
    outside[root[border]] = True
    inside = ~outside[root]
    if not inside.any():
        return out
    starts, lengths = starts[inside], (ends - starts)[inside]
    first = np.cumsum(lengths) - lengths
    flat = np.arange(int(lengths.sum())) + np.repeat(starts - first, lengths)
    rows, cols = np.divmod(flat, stride)
    out[rows, cols - 1] = True
    return out


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
    from skimage import measure  # only here: importing scikit-image costs start-up time the tiler does not need

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
