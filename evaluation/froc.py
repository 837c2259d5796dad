"""CAMELYON16 lesion-level FROC, computed the way the challenge's ``Evaluation_FROC.py`` computes it.

The rules are those of the challenge's lesion-level task (its evaluation script and protocol text), quirks included:

1. Ground truth is rasterised at pyramid level ``level`` (5: downsample 32) of the level-0 grid.
2. :func:`evaluation_mask`: Euclidean distance transform of the non-tumour pixels; pixels closer than
   ``75 / (mpp * 2**level * 2)`` level pixels (the lesion grown by ~37.5 µm) are lesion, holes are filled,
   8-connected components are labelled ``1..K`` (raster order).
3. :func:`itc_labels`: a component whose ``skimage.measure.regionprops`` major-axis length is below
   ``275 / (mpp * 2**level)`` level pixels is an isolated-tumour-cell (ITC) region.
4. :func:`lesion_hits`: a detection ``(p, X, Y)`` looks up ``mask[int(Y / 2**level), int(X / 2**level)]``.
   Label 0 is a false positive; a non-ITC label keeps the highest ``p`` that hit it; an ITC hit is ignored.
   On a normal slide every detection is a false positive.
5. :func:`froc_curve`: all FP probabilities plus, per slide, one entry per label (its best TP probability,
   0 for a missed lesion and for every ITC label). Thresholds are the sorted distinct entries **without the
   lowest one**; at each threshold count FPs ``>= t`` and TPs ``>= t``; then the point (0, 0) is appended.
   Average FPs = FPs / number of slides (normal and tumour); sensitivity = TPs / number of non-ITC lesions.
6. :func:`compute_froc`: sensitivities at 0.25, 0.5, 1, 2, 4, 8 average FPs by ``numpy.interp`` over the curve
   reversed, and the FROC score = their mean.

One quirk the protocol text does not spell out is kept by default (``official_float32=True``): the official
script stores the per-lesion TP probabilities in a ``float32`` array while FP probabilities stay ``float64``,
so TP entries are rounded to float32, and TP counts compare in float32 (a TP of 0.69999999 counts at a
threshold of 0.7). ``official_float32=False`` keeps everything in float64, as the protocol text reads.
Thresholds are sorted by value, as the script sorted them under the NumPy 1 of the challenge (NumPy >= 2
compares ``np.float32`` scalars with Python floats in float32, which makes the script's ``sorted`` inconsistent).

Choices where the protocol is silent (documented, not official):

* Rasterisation of annotation polygons: a level pixel is tumour when its centre
  ``((col + 0.5) * 2**level, (row + 0.5) * 2**level)`` lies in the tumour geometry (boundary included); a
  polygon too small to cover any pixel centre marks the pixel holding its representative point, so tiny lesions
  survive as (ITC) regions instead of vanishing. Official masks can be passed as arrays instead
  (:func:`read_mask_image`).
* Mask size: ``(ceil(h / 2**level), ceil(w / 2**level))`` for a level-0 slide size ``(w, h)``.
* A tumour slide whose mask has no tumour pixel has no lesion (scipy's distance transform of an all-background
  image is not meaningful, and the official script would produce a spurious region at the corner).
* A detection whose looked-up index falls outside the mask raises (the official script raises on indices past
  the end; negative ones would wrap around).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from scipy import ndimage as ndi
from shapely.geometry.base import BaseGeometry
from skimage import measure

from ..annotations import Annotation, polygonal_parts, tumor_geometry
from ..errors import ConfigError

__all__ = [
    "EVALUATION_LEVEL",
    "FROC_RATES",
    "L0_MPP",
    "FROCCase",
    "SlideHits",
    "compute_froc",
    "dilation_threshold_px",
    "evaluation_mask",
    "froc_curve",
    "itc_labels",
    "itc_threshold_px",
    "label_tumor_mask",
    "lesion_hits",
    "mask_shape",
    "rasterize_tumor",
]

#: Average false positives per slide at which sensitivity is read off the curve.
FROC_RATES: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: Level-0 pixel size of the official evaluation (µm/px).
L0_MPP = 0.243
#: Pyramid level of the evaluation mask (downsample 2**5 = 32).
EVALUATION_LEVEL = 5



# ----------------------------------------------------------------------------------------------------------------
# thresholds


def _check_mpp_level(mpp: float, level: int) -> tuple[float, int]:
    try:
        mpp_f = float(mpp)
    except (TypeError, ValueError):
        raise ConfigError(f"mpp must be a positive number of µm/px, got {mpp!r}") from None
    if not math.isfinite(mpp_f) or mpp_f <= 0:
        raise ConfigError(f"mpp must be a positive number of µm/px (0.243 for CAMELYON16), got {mpp!r}")
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or level < 0:
        raise ConfigError(f"level must be an integer >= 0 (5 for CAMELYON16), got {level!r}")
    return mpp_f, int(level)


def dilation_threshold_px(mpp: float = L0_MPP, level: int = EVALUATION_LEVEL) -> float:
    """Distance (level pixels) below which a non-tumour pixel joins the lesion: ``75 / (mpp * 2**level * 2)``.

    4.8225… px for the official 0.243 µm/px at level 5.
    """
    mpp, level = _check_mpp_level(mpp, level)
    # Same operation order as the official script, so the float is bit-identical.
    return 75 / (mpp * 2**level * 2)


def itc_threshold_px(mpp: float = L0_MPP, level: int = EVALUATION_LEVEL) -> float:
    """Major-axis length (level pixels) below which a region is ITC: ``275 / (mpp * 2**level)`` (35.36… px)."""
    mpp, level = _check_mpp_level(mpp, level)
    return 275 / (mpp * 2**level)


# ----------------------------------------------------------------------------------------------------------------
# evaluation mask


def _slide_size(slide_size: Any) -> tuple[int, int]:
    try:
        w, h = (float(v) for v in slide_size)
    except (TypeError, ValueError):
        raise ConfigError(f"slide_size_level0 must be (w, h) in level-0 pixels, got {slide_size!r}") from None
    if not (math.isfinite(w) and math.isfinite(h)) or w <= 0 or h <= 0:
        raise ConfigError(f"slide_size_level0 must be positive (w, h) level-0 pixels, got {slide_size!r}")
    return math.ceil(w), math.ceil(h)


def mask_shape(slide_size_level0: Sequence[float], level: int = EVALUATION_LEVEL) -> tuple[int, int]:
    """``(rows, cols)`` of the evaluation mask of a slide of level-0 size ``(w, h)``: ``ceil(h / 2**level)`` …"""
    w, h = _slide_size(slide_size_level0)
    ds = 2**level
    return -(-h // ds), -(-w // ds)


def _tumor_geometry(source: Any) -> BaseGeometry:
    if isinstance(source, BaseGeometry):
        return source
    if isinstance(source, (str, os.PathLike)):
        raise ConfigError(f"{source}: read annotation files with slidestream.evaluation.froc_files.read_truth first")
    items = list(source)
    if all(isinstance(a, Annotation) for a in items):
        return tumor_geometry(items)
    if all(isinstance(g, BaseGeometry) for g in items):
        return shapely.union_all(items) if items else shapely.geometry.MultiPolygon()
    raise ConfigError(
        "tumour must be a shapely geometry, a list of Annotation objects or of shapely polygons, or a tumour mask "
        "array (read annotation files with slidestream.evaluation.froc_files.read_truth)"
    )


def rasterize_tumor(
    tumor: Any,
    slide_size_level0: Sequence[float],
    *,
    level: int = EVALUATION_LEVEL,
) -> np.ndarray:
    """Tumour mask at pyramid ``level`` of the level-0 grid, by pixel centres.

    Parameters
    ----------
    tumor : shapely geometry, list of Annotation, or list of geometries
        Tumour regions in level-0 pixels (exclusion regions already holes, as
        :func:`slidestream.evaluation.froc_files.read_truth` returns them).
    slide_size_level0 : (w, h)
        Level-0 slide size in pixels.
    level : int, default 5
        The mask has downsample ``2**level``.

    Returns
    -------
    ndarray, shape (ceil(h / 2**level), ceil(w / 2**level)), bool
        True where the pixel centre lies in a polygon (boundary included); a polygon covering no centre marks
        the pixel of its representative point. Parts outside the slide are clipped.
    """
    _, level = _check_mpp_level(1.0, level)
    rows, cols = mask_shape(slide_size_level0, level)
    ds = float(2**level)
    out = np.zeros((rows, cols), dtype=bool)
    for part in polygonal_parts(_tumor_geometry(tumor)):
        minx, miny, maxx, maxy = part.bounds
        # Pixel c has its centre at (c + 0.5) * ds; these are the first/last columns whose centre is in bounds.
        c0, c1 = max(0, math.ceil(minx / ds - 0.5)), min(cols - 1, math.floor(maxx / ds - 0.5))
        r0, r1 = max(0, math.ceil(miny / ds - 0.5)), min(rows - 1, math.floor(maxy / ds - 0.5))
        covered = False
        if c0 <= c1 and r0 <= r1:
            shapely.prepare(part)
            xs = (np.arange(c0, c1 + 1, dtype=np.float64) + 0.5) * ds
            ys = (np.arange(r0, r1 + 1, dtype=np.float64) + 0.5) * ds
            inside = shapely.intersects_xy(part, xs[None, :], ys[:, None])
            out[r0 : r1 + 1, c0 : c1 + 1] |= inside
            covered = bool(inside.any())
        if not covered:
            p = part.representative_point()
            r, c = math.floor(p.y / ds), math.floor(p.x / ds)
            if 0 <= r < rows and 0 <= c < cols:
                out[r, c] = True
    return out


def label_tumor_mask(tumor_mask: np.ndarray, *, mpp: float = L0_MPP, level: int = EVALUATION_LEVEL) -> np.ndarray:
    """Official evaluation mask from a tumour mask already at the evaluation level.

    Parameters
    ----------
    tumor_mask : (H, W) array_like
        Tumour where non-zero (bool, 0/1 or 0/255). For an official CAMELYON16 mask image read at level 5, pass
        ``pixels == 255`` to reproduce the official reading exactly (:func:`read_mask_image` does).
    mpp : float, default 0.243
        Level-0 µm/px.
    level : int, default 5
        Level of ``tumor_mask``.

    Returns
    -------
    ndarray, shape (H, W), int32
        0 background, ``1..K`` lesion regions: distance to tumour ``< dilation_threshold_px``, holes filled,
        8-connected, labelled in raster order (as ``skimage.measure.label``).
    """
    mpp, level = _check_mpp_level(mpp, level)
    tumor = np.asarray(tumor_mask)
    if tumor.ndim != 2:
        raise ConfigError(f"tumor_mask must be a 2-D (H, W) array, got shape {tumor.shape}")
    tumor = tumor != 0
    out = np.zeros(tumor.shape, dtype=np.int32)
    rr, cc = np.nonzero(tumor)
    if rr.size == 0:
        return out
    thr = dilation_threshold_px(mpp, level)
    # Work on the tumour bounding box plus a background ring wider than the growth: distances, hole filling
    # and raster-order labels are the same as on the full mask (every tumour pixel is inside, and the ring
    # connects the outside background to the border), at a fraction of the cost on a 100k x 200k px slide.
    m = math.ceil(thr) + 2
    r0, r1 = max(0, rr.min() - m), min(tumor.shape[0], rr.max() + m + 1)
    c0, c1 = max(0, cc.min() - m), min(tumor.shape[1], cc.max() + m + 1)
    distance = ndi.distance_transform_edt(~tumor[r0:r1, c0:c1])
    grown = ndi.binary_fill_holes(distance < thr)
    out[r0:r1, c0:c1] = measure.label(grown, connectivity=2)
    return out


def evaluation_mask(
    tumor: Any,
    slide_size_level0: Sequence[float] | None = None,
    *,
    mpp: float = L0_MPP,
    level: int = EVALUATION_LEVEL,
) -> np.ndarray:
    """Labelled CAMELYON16 evaluation mask of one tumour slide.

    Parameters
    ----------
    tumor : ndarray, shapely geometry, list of Annotation / geometries, or path
        Either a tumour mask ``(H, W)`` already at ``level`` (non-zero = tumour; ``slide_size_level0`` then only
        checks the shape), or vector annotations in level-0 pixels, rasterised by :func:`rasterize_tumor`.
    slide_size_level0 : (w, h), optional
        Level-0 slide size in pixels; required for vector input.
    mpp : float, default 0.243
        Level-0 µm/px used for the 75 µm growth (the official evaluation uses 0.243 for every slide).
    level : int, default 5
        Evaluation level (downsample ``2**level``).

    Returns
    -------
    ndarray, shape (ceil(h / 2**level), ceil(w / 2**level)), int32
        0 outside lesions, ``1..K`` lesion regions (see :func:`label_tumor_mask`).

    Examples
    --------
    >>> from shapely.geometry import box
    >>> m = evaluation_mask(box(3200, 3200, 6400, 6400), (12800, 12800))
    >>> m.shape, int(m.max())
    ((400, 400), 1)
    """
    mpp, level = _check_mpp_level(mpp, level)
    if isinstance(tumor, np.ndarray):
        if slide_size_level0 is not None and tumor.shape != mask_shape(slide_size_level0, level):
            raise ConfigError(
                f"tumour mask has shape {tumor.shape} but a slide of {tuple(slide_size_level0)} px at level "
                f"{level} needs {mask_shape(slide_size_level0, level)}; pass the mask of that level"
            )
        return label_tumor_mask(tumor, mpp=mpp, level=level)
    if slide_size_level0 is None:
        raise ConfigError("slide_size_level0 (w, h) is needed to rasterise annotations; pass the slide's size")
    return label_tumor_mask(rasterize_tumor(tumor, slide_size_level0, level=level), mpp=mpp, level=level)


def itc_labels(mask: np.ndarray, mpp: float = L0_MPP, level: int = EVALUATION_LEVEL) -> np.ndarray:
    """Labels of the isolated-tumour-cell regions of an evaluation mask.

    Parameters
    ----------
    mask : (H, W) int array_like
        Labelled evaluation mask (:func:`evaluation_mask`), labels ``1..K``.
    mpp : float, default 0.243
    level : int, default 5

    Returns
    -------
    ndarray, shape (I,), int64
        Sorted labels whose ``regionprops`` major-axis length is ``< itc_threshold_px(mpp, level)``.
    """
    mpp, level = _check_mpp_level(mpp, level)
    labels = _label_array(mask)
    thr = itc_threshold_px(mpp, level)
    itc = [p.label for p in measure.regionprops(labels) if p.axis_major_length < thr]
    return np.asarray(sorted(itc), dtype=np.int64)


def _label_array(mask: Any) -> np.ndarray:
    labels = np.asarray(mask)
    if labels.ndim != 2 or labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(
            f"mask must be a 2-D integer label image (from evaluation_mask), got {labels.dtype} {labels.shape}"
        )
    if labels.size and labels.min() < 0:
        raise ConfigError("mask labels must be >= 0 (0 = background)")
    return labels


# ----------------------------------------------------------------------------------------------------------------
# hits per slide


@dataclass
class FROCCase:
    """One evaluated slide: its detections and, for a tumour slide, its labelled evaluation mask.

    Attributes
    ----------
    name : str
        Slide name (for the per-slide summary).
    points : (K, 2) float array_like
        Detection locations, level-0 ``x, y`` pixels.
    confidences : (K,) float array_like
        Detection probabilities.
    mask : (H, W) int ndarray or None
        Labelled evaluation mask at the evaluation level (:func:`evaluation_mask`); None for a normal slide.
    itc : (I,) int array_like or None
        ITC labels of ``mask``; None computes them with :func:`itc_labels`.
    """

    name: str
    points: Any
    confidences: Any
    mask: np.ndarray | None = None
    itc: Any | None = None


@dataclass(frozen=True)
class SlideHits:
    """What one slide contributes to the FROC curve.

    Attributes
    ----------
    name : str
    tumor : bool
        False for a normal slide (no mask).
    fp_probs : ndarray, shape (F,), float64
        Probabilities of the false-positive detections.
    tp_probs : ndarray, shape (L,), float64
        Per mask label ``1..L``: the highest probability of a detection inside it, 0 when missed, and 0 for
        every ITC label (those entries still enter the threshold list, as in the official script).
    itc : ndarray, shape (I,), int64
        ITC labels.
    n_detections : int
    n_itc_hits : int
        Detections inside ITC regions (neither TP nor FP).
    lesion_points : ndarray, shape (L, 2), float64
        Level-0 ``x, y`` of the first detection (in input order) with the probability in ``tp_probs``; NaN where
        no detection scored above 0 in the label.
    """

    name: str
    tumor: bool
    fp_probs: np.ndarray
    tp_probs: np.ndarray
    itc: np.ndarray
    n_detections: int
    n_itc_hits: int
    lesion_points: np.ndarray = field(repr=False)

    @property
    def n_lesions(self) -> int:
        """Non-ITC lesions (the denominator's share of this slide)."""
        return int(self.tp_probs.size - self.itc.size)

    @property
    def n_detected(self) -> int:
        """Non-ITC lesions with a TP probability above 0."""
        hit = self.tp_probs > 0
        if self.itc.size:
            hit[self.itc - 1] = False
        return int(hit.sum())


def _detections(points: Any, confidences: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(confidences, dtype=np.float64).reshape(-1)
    xy = np.asarray(points, dtype=np.float64)
    if xy.size == 0 and p.size == 0:
        return np.zeros((0, 2)), p
    if xy.ndim != 2 or xy.shape[1] != 2 or xy.shape[0] != p.size:
        raise ConfigError(
            f"{where}: points must have shape (K, 2) and confidences (K,), got {xy.shape} and {p.shape}"
        )
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(xy))):
        raise ConfigError(f"{where}: detections must have finite confidences and coordinates")
    return xy, p


def lesion_hits(
    points: Any,
    confidences: Any,
    mask: np.ndarray | None = None,
    itc: Any | None = None,
    *,
    mpp: float = L0_MPP,
    level: int = EVALUATION_LEVEL,
    name: str = "",
) -> SlideHits:
    """Classify one slide's detections as TP / FP / ignored by the official rules.

    Parameters
    ----------
    points : (K, 2) float array_like
        Level-0 ``x, y``.
    confidences : (K,) float array_like
    mask : (H, W) int ndarray or None
        Labelled evaluation mask at ``level``; None for a normal slide (every detection is an FP).
    itc : (I,) int array_like, optional
        ITC labels; computed with :func:`itc_labels` when None.
    mpp : float, default 0.243
    level : int, default 5
    name : str, optional
        Used in error messages and kept in the result.

    Returns
    -------
    SlideHits

    Raises
    ------
    ConfigError
        On malformed or non-finite detections, or a detection outside the mask.
    """
    mpp, level = _check_mpp_level(mpp, level)
    where = name or "slide"
    xy, p = _detections(points, confidences, where)
    if mask is None:
        return SlideHits(name, False, p.copy(), np.zeros(0), np.zeros(0, np.int64), int(p.size), 0,
                         np.zeros((0, 2)))
    labels = _label_array(mask)
    itc_arr = itc_labels(labels, mpp, level) if itc is None else np.unique(np.asarray(itc, dtype=np.int64))
    n_labels = int(labels.max()) if labels.size else 0
    if itc_arr.size and (itc_arr.min() < 1 or itc_arr.max() > n_labels):
        raise ConfigError(f"{where}: ITC labels must be mask labels 1..{n_labels}, got {itc_arr.tolist()}")
    ds = 2**level
    # int(Y / 32) as the official script: true division, then truncation toward zero.
    rows = np.trunc(xy[:, 1] / ds)
    cols = np.trunc(xy[:, 0] / ds)
    outside = (rows < 0) | (cols < 0) | (rows >= labels.shape[0]) | (cols >= labels.shape[1])
    if np.any(outside):
        i = int(np.flatnonzero(outside)[0])
        raise ConfigError(
            f"{where}: detection {i} at level-0 ({xy[i, 0]:g}, {xy[i, 1]:g}) lies outside the evaluation mask "
            f"({labels.shape[1] * ds} x {labels.shape[0] * ds} px); check the slide size or the coordinates"
        )
    hit = labels[rows.astype(np.intp), cols.astype(np.intp)].astype(np.int64)
    is_itc = np.isin(hit, itc_arr) & (hit > 0)
    fp = p[hit == 0]
    tp_sel = (hit > 0) & ~is_itc
    tp = np.zeros(n_labels, dtype=np.float64)
    lesion_points = np.full((n_labels, 2), np.nan)
    # The official loop keeps p when p > stored (stored starts at 0): the maximum above 0 per label. The first
    # detection reaching that maximum (in file order) is the one it reports.
    idx = np.flatnonzero(tp_sel)
    if idx.size:
        np.maximum.at(tp, hit[idx] - 1, p[idx])
        for i in idx[::-1]:
            if p[i] > 0 and p[i] == tp[hit[i] - 1]:
                lesion_points[hit[i] - 1] = xy[i]
    return SlideHits(name, True, fp, tp, itc_arr, int(p.size), int(is_itc.sum()), lesion_points)


# ----------------------------------------------------------------------------------------------------------------
# curve and score


def froc_curve(
    hits: Sequence[SlideHits], *, official_float32: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The FROC curve over all slides, in the official order (threshold rising, then the (0, 0) point).

    Parameters
    ----------
    hits : sequence of SlideHits
        One per evaluated slide (normal and tumour).
    official_float32 : bool, default True
        Round TP entries to float32 and compare TPs in float32, as the official script does.

    Returns
    -------
    thresholds : ndarray, shape (T,), float64
        Sorted distinct probabilities of all FP and TP entries, lowest one skipped.
    fps : ndarray, shape (T + 1,), float64
        Average false positives per slide at each threshold, then 0.
    sensitivity : ndarray, shape (T + 1,), float64
        Fraction of non-ITC lesions found at each threshold, then 0. NaN when there is no lesion at all.
    """
    if len(hits) == 0:
        raise ConfigError("no slides to evaluate: pass at least one slide's detections")
    fp = np.concatenate([np.asarray(h.fp_probs, dtype=np.float64) for h in hits])
    tp = np.concatenate([np.asarray(h.tp_probs, dtype=np.float64) for h in hits])
    n_lesions = sum(h.n_lesions for h in hits)
    if official_float32:
        tp_cmp = tp.astype(np.float32)
        tp_values = tp_cmp.astype(np.float64)  # exact: what the float32 entries are worth in the threshold set
    else:
        tp_cmp = tp_values = tp
    thresholds = np.unique(np.concatenate([fp, tp_values]))[1:]
    fp_sorted = np.sort(fp)
    tp_sorted = np.sort(tp_cmp)
    n_fp = fp.size - np.searchsorted(fp_sorted, thresholds, side="left")
    # A float32 array compared with a float64 threshold compares in float32 (NumPy casts the scalar).
    t_cmp = thresholds.astype(np.float32) if official_float32 else thresholds
    n_tp = tp.size - np.searchsorted(tp_sorted, t_cmp, side="left")
    n_fp = np.append(n_fp, 0)
    n_tp = np.append(n_tp, 0)
    fps = n_fp / float(len(hits))
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = n_tp / float(n_lesions) if n_lesions else np.full(n_tp.shape, np.nan)
    return thresholds, fps, sens


def _rate_key(rate: float) -> str:
    return f"{rate:g}"


def _summarise(hits: Sequence[SlideHits], *, mpp: float, level: int, official_float32: bool) -> dict[str, Any]:
    thresholds, fps, sens = froc_curve(hits, official_float32=official_float32)
    n_lesions = sum(h.n_lesions for h in hits)
    defined = n_lesions > 0
    at = np.interp(FROC_RATES, fps[::-1], sens[::-1]) if defined else np.full(len(FROC_RATES), np.nan)
    slides = []
    for h in hits:
        slides.append({
            "slide": h.name,
            "tumor": h.tumor,
            "n_detections": h.n_detections,
            "n_lesions": h.n_lesions,
            "n_itc": int(h.itc.size),
            "n_detected": h.n_detected,
            "n_fp": int(h.fp_probs.size),
            "n_itc_hits": h.n_itc_hits,
        })
    return {
        "sensitivity": {_rate_key(r): float(s) for r, s in zip(FROC_RATES, at)},
        "froc": float(np.mean(at)),
        "defined": defined,
        "fps": fps.tolist(),
        "sensitivities": sens.tolist(),
        "thresholds": thresholds.tolist(),
        "n_slides": len(hits),
        "n_tumor_slides": sum(h.tumor for h in hits),
        "n_normal_slides": sum(not h.tumor for h in hits),
        "n_lesions": n_lesions,
        "n_lesions_detected": sum(h.n_detected for h in hits),
        "n_itc": sum(int(h.itc.size) for h in hits),
        "n_detections": sum(h.n_detections for h in hits),
        "n_fp": sum(int(h.fp_probs.size) for h in hits),
        "mpp": mpp,
        "level": level,
        "official_float32": official_float32,
        "slides": slides,
    }


def compute_froc(
    cases: Sequence[FROCCase],
    *,
    mpp: float = L0_MPP,
    level: int = EVALUATION_LEVEL,
    official_float32: bool = True,
) -> dict[str, Any]:
    """CAMELYON16 FROC of a set of slides.

    Parameters
    ----------
    cases : sequence of FROCCase
        Every evaluated slide, normal (``mask=None``) and tumour; each counts once in the FP rate.
    mpp : float, default 0.243
        Level-0 µm/px for the ITC rule (the growth already happened in :func:`evaluation_mask`).
    level : int, default 5
        Level of the masks.
    official_float32 : bool, default True
        Keep the official script's float32 TP entries (see the module docstring).

    Returns
    -------
    dict
        ``sensitivity``: ``{"0.25": s, "0.5": …, "1": …, "2": …, "4": …, "8": …}``; ``froc``: their mean;
        ``defined``: False when there is no non-ITC lesion (scores are then NaN); ``fps``, ``sensitivities``,
        ``thresholds``: the curve (see :func:`froc_curve`); counts ``n_slides``, ``n_tumor_slides``,
        ``n_normal_slides``, ``n_lesions``, ``n_lesions_detected``, ``n_itc``, ``n_detections``, ``n_fp``;
        ``slides``: per-slide counts; the parameters used.

    Raises
    ------
    ConfigError
        No cases, malformed detections, or a detection outside its mask.
    """
    mpp, level = _check_mpp_level(mpp, level)
    hits = [
        lesion_hits(c.points, c.confidences, c.mask, c.itc, mpp=mpp, level=level, name=c.name) for c in cases
    ]
    return _summarise(hits, mpp=mpp, level=level, official_float32=official_float32)
