"""Tiling QC images, as CLAM and TRIDENT write them: the slide thumbnail with its tissue outline, the holes in it
and the tiles that were kept, so a person can see at a glance where tissue detection went wrong.

Drawn with numpy and PIL only (no matplotlib): one image per slide at tiling time must cost little.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..fileio import atomic_write

__all__ = ["HOLE_COLOUR", "TILE_COLOUR", "TILE_TINT", "TISSUE_COLOUR", "render_tissue_qc", "tile_boxes",
           "write_qc_jpeg"]

#: Tissue outline (CLAM and TRIDENT draw it green).
TISSUE_COLOUR = (0, 255, 0)
#: Outline of holes in the tissue (CLAM draws them blue).
HOLE_COLOUR = (0, 0, 255)
#: Kept tiles (TRIDENT draws them red): outlined where they are at least :data:`MIN_OUTLINED_TILE` px on the
#: thumbnail, and tinted everywhere: blended :data:`TILE_TINT` of the way towards the colour (``PIL.Image.blend``).
TILE_COLOUR = (255, 0, 0)
TILE_TINT = 0.25
MIN_OUTLINED_TILE = 6
#: Height of the caption strip under the thumbnail, in pixels.
CAPTION_HEIGHT = 18


def tile_boxes(coords: np.ndarray, extent0: float, downsample: tuple[float, float],
               shape: tuple[int, int]) -> np.ndarray:
    """Tiles as pixel boxes on a thumbnail.

    Parameters
    ----------
    coords : (N, 2) int array
        Level-0 top-left x, y of each tile.
    extent0 : float
        Tile side in level-0 pixels.
    downsample : (float, float)
        Level-0 pixels per thumbnail pixel along x and y.
    shape : (h, w)
        Thumbnail size.

    Returns
    -------
    (N, 4) int64 array of ``x0, y0, x1, y1`` (ends exclusive): the tile's corners divided by the downsample and
    rounded, clipped to the thumbnail, at least one pixel wide where the tile is on it.
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    h, w = shape
    sx, sy = downsample
    x0 = np.clip(np.round(coords[:, 0] / sx), 0, w).astype(np.int64)
    y0 = np.clip(np.round(coords[:, 1] / sy), 0, h).astype(np.int64)
    x1 = np.clip(np.round((coords[:, 0] + extent0) / sx), 0, w).astype(np.int64)
    y1 = np.clip(np.round((coords[:, 1] + extent0) / sy), 0, h).astype(np.int64)
    x1 = np.maximum(x1, np.minimum(x0 + 1, w))
    y1 = np.maximum(y1, np.minimum(y0 + 1, h))
    return np.column_stack([x0, y0, x1, y1])


def _cover(boxes: np.ndarray, shape: tuple[int, int], inner: np.ndarray | None = None) -> np.ndarray:
    """How many ``boxes`` cover each pixel, less how many ``inner`` boxes do, by a 2-D difference array (one pass
    whatever the number of tiles); ``(h, w)`` int32."""
    h, w = shape
    diff = np.zeros((h + 1, w + 1), np.int32)
    for sign, bx in ((1, boxes), (-1, inner)):
        if bx is None or not len(bx):
            continue
        x0, y0, x1, y1 = bx.T
        ok = (x1 > x0) & (y1 > y0)
        x0, y0, x1, y1 = x0[ok], y0[ok], x1[ok], y1[ok]
        np.add.at(diff, (y0, x0), sign)
        np.add.at(diff, (y0, x1), -sign)
        np.add.at(diff, (y1, x0), -sign)
        np.add.at(diff, (y1, x1), sign)
    np.cumsum(diff, axis=1, out=diff)
    # down the rows one vectorised add at a time (a cumsum along axis 0 walks each column with a stride)
    for i in range(1, h):
        np.add(diff[i - 1], diff[i], out=diff[i])
    return diff[:h, :w]


def _edge(region: np.ndarray, width: int) -> np.ndarray:
    """Pixels of ``region`` within ``width`` 4-neighbour steps of a pixel outside it (the image border counts as
    outside): the inner rim of the region."""
    inner = region.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:] &= inner[:-1]
        shrunk[:-1] &= inner[1:]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        shrunk[0, :] = shrunk[-1, :] = False
        shrunk[:, 0] = shrunk[:, -1] = False
        inner = shrunk
    return region & ~inner


def _resample(mask: np.ndarray, mask_downsample: tuple[float, float], downsample: tuple[float, float],
              shape: tuple[int, int]) -> np.ndarray:
    """``mask`` (any dtype) on the thumbnail's pixels: each thumbnail pixel takes the mask pixel under its centre."""
    h, w = shape
    mh, mw = mask.shape
    cols = np.clip(np.floor((np.arange(w) + 0.5) * downsample[0] / mask_downsample[0]).astype(np.int64), 0, mw - 1)
    rows = np.clip(np.floor((np.arange(h) + 0.5) * downsample[1] / mask_downsample[1]).astype(np.int64), 0, mh - 1)
    return np.take(np.take(np.asarray(mask), rows, axis=0), cols, axis=1)


def _paint(image: np.ndarray, where: np.ndarray, colour: tuple[int, int, int]) -> None:
    """Set the pixels of an (h, w, 3) image where ``where`` is True to ``colour``, in place (by flat index: the
    outlines are a small part of the image)."""
    image.reshape(-1, 3)[np.flatnonzero(where)] = colour


def render_tissue_qc(thumbnail: np.ndarray, downsample: tuple[float, float], mask: np.ndarray | None,
                     mask_downsample: tuple[float, float] | None, coords: np.ndarray, extent0: float, *,
                     holes: np.ndarray | None = None, caption: str | None = None,
                     line_width: int | None = None) -> np.ndarray:
    """The QC picture of one tiled slide.

    Layers, bottom to top: the thumbnail; kept tiles (:func:`tile_boxes`) tinted :data:`TILE_TINT` of the way
    towards :data:`TILE_COLOUR` and outlined in it (1 px, where a tile is at least :data:`MIN_OUTLINED_TILE` px
    wide on the thumbnail); the tissue outline (the rim, ``line_width`` px wide, of tissue-or-hole pixels) in
    :data:`TISSUE_COLOUR`; the rim of each hole in :data:`HOLE_COLOUR`. Under the thumbnail, a caption strip when
    ``caption`` is given.

    Parameters
    ----------
    thumbnail : (h, w, 3) uint8 array
        The slide at low resolution.
    downsample : (float, float)
        Level-0 pixels per thumbnail pixel along x and y.
    mask : (H, W) bool array or None
        Tissue mask (any resolution); None draws no outline.
    mask_downsample : (float, float) or None
        Level-0 pixels per mask pixel.
    coords : (N, 2) int array
        Level-0 top-left x, y of the kept tiles.
    extent0 : float
        Tile side in level-0 pixels.
    holes : (H, W) bool array, optional
        Holes of ``mask`` (same shape; :func:`slidestream.tiling.tissue.hole_mask`), outlined in
        :data:`HOLE_COLOUR`; without it, hole edges are part of the tissue outline.
    caption : str, optional
        One line of text under the image (slide id, tile count ...).
    line_width : int, optional
        Outline width in thumbnail pixels; default ``max(1, round(max(h, w) / 500))`` (2 px at 1000 px).

    Returns
    -------
    (h, w, 3) uint8 array, or (h + CAPTION_HEIGHT, w, 3) with a caption; rows ``[:h]`` are the picture.
    """
    thumbnail = np.asarray(thumbnail)
    if thumbnail.ndim != 3 or thumbnail.shape[2] != 3 or thumbnail.dtype != np.uint8:
        raise ValueError(f"render_tissue_qc expects an (h, w, 3) uint8 thumbnail, got {thumbnail.shape} "
                         f"{thumbnail.dtype}")
    h, w = thumbnail.shape[:2]
    width = line_width if line_width is not None else max(1, round(max(h, w) / 500))
    boxes = tile_boxes(coords, extent0, downsample, (h, w))
    covered = _cover(boxes, (h, w)) > 0
    if covered.any():
        # blend and composite run in C over the image (the tinted area is most of it on a well-tiled slide)
        img = Image.fromarray(thumbnail)
        tinted = Image.blend(img, Image.new("RGB", (w, h), TILE_COLOUR), TILE_TINT)
        out = np.array(Image.composite(tinted, img, Image.fromarray(np.multiply(covered, 255, dtype=np.uint8))))
    else:
        out = thumbnail.copy()
    side = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) if len(boxes) else np.zeros(0)
    big = boxes[side >= MIN_OUTLINED_TILE]
    if len(big):
        _paint(out, _cover(big, (h, w), inner=big + np.array([1, 1, -1, -1])) > 0, TILE_COLOUR)
    if mask is not None and mask_downsample is not None:
        # tissue 1, hole 2: one resampling for both
        labels = np.asarray(mask, bool).astype(np.uint8)
        if holes is not None:
            labels |= np.asarray(holes, bool).astype(np.uint8) << 1
        labels = _resample(labels, mask_downsample, downsample, (h, w))
        _paint(out, _edge(labels > 0, width), TISSUE_COLOUR)
        if holes is not None:
            _paint(out, _edge(labels == 2, width), HOLE_COLOUR)
    if caption:
        framed = Image.new("RGB", (w, h + CAPTION_HEIGHT), (32, 32, 32))
        ImageDraw.Draw(framed).text((4, h + 3), caption, fill=(255, 255, 255))
        framed = np.array(framed)
        framed[:h] = out
        out = framed
    return out


def write_qc_jpeg(path: str | os.PathLike, image: np.ndarray, *, quality: int = 90) -> Path:
    """Write an RGB image as JPEG, atomically (parent folders created); returns the path.

    Chroma is not subsampled (4:4:4), so one- and two-pixel coloured lines keep their colour.
    """
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="JPEG", quality=quality, subsampling=0)
    return atomic_write(path, buf.getvalue())
