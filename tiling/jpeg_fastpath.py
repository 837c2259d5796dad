"""Tiles made straight from a slide's stored tiles: the two fast paths of the tiler.

Both apply only where the slide reads the level with its direct tile decoder (:mod:`slidestream.wsi.direct`) and
the grid lines up with the stored tiles; the results equal :func:`slidestream.tiling.tiler.read_tile` (a region
read through :class:`~slidestream.wsi.slide.Slide`, resized by ``resize_patch``) except where noted:

- :func:`jpeg_passthrough`: the grid is the level's own JPEG tile grid, so each patch *is* a stored tile and
  its compressed bytes can be kept without decoding or re-encoding.
- :func:`reduced_read`: patches are read ``k`` times larger and reduced by ``k`` (224 px at 0.5 µm/px from
  a 0.25 µm/px level: ``k = 2``) on a grid whose ``k``-pixel blocks never straddle a stored tile. Reducing each
  stored tile once and assembling patches from the reduced tiles gives the same pixels as reducing each
  assembled region (a block's average depends on the block only), decodes every stored tile once instead of
  once per overlapping region, and copies a quarter of the bytes. :class:`ReducedTileReader` does it, with its
  own cache of reduced tiles (a quarter of the memory of decoded ones, so it holds the tile rows that
  consecutive grid rows share).

  Where the stored tiles are YCbCr JPEG and ``k`` is 2, 4 or 8, the decoder reduces them itself (libjpeg's DCT
  scaling, through simplejpeg): it decodes only the low-frequency coefficients, an antialiased reduction at a
  third of the cost of a full decode plus a box reduction. Its pixels are not bit-identical to the box reduction
  of ``read_tile`` (mean absolute difference 0.13 grey levels on the synthetic H&E slide, 99.9th percentile 3),
  so patches are read back with the same reader (:func:`slidestream.tiling.tiler.patch_reader`), and which
  reduction a store's patches had is recorded in ``patches.attrs["reduction"]``. Other tiles are box-reduced
  (``Image.reduce``, ``resize_patch``'s own arithmetic: pixel-identical to ``read_tile``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import imagecodecs
import numpy as np
import simplejpeg
import tifffile
from PIL import Image
from tifffile.tifffile import jpeg_decode_colorspace

from ..wsi.direct import DirectTiffReader, DirectUnsupported, TileCache, merge_jpeg_tables
from ..wsi.slide import Slide
from .grid import ReadPlan

if TYPE_CHECKING:  # the store module imports Zarr: not needed to read tiles (or by the tissue overview)
    from ..store import JpegTiles

#: Bound of the reduced-tile cache of one :class:`ReducedTileReader` (bytes).
REDUCED_CACHE_BYTES = 96 << 20


def _whole_downsample(slide: Slide, level: int) -> int | None:
    ds = float(slide.level_downsamples[level])
    return int(round(ds)) if abs(ds - round(ds)) <= 1e-9 else None


def _level_coords(coords: np.ndarray, ds: int) -> np.ndarray | None:
    """Level pixel coordinates of level-0 ``coords``, or None when some do not fall on a level pixel."""
    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    if (coords % ds).any():
        return None
    return coords // ds


def _direct_reader(slide: Slide) -> DirectTiffReader | None:
    """A direct reader of the slide's stored tiles (no decoded-tile cache), or None where it has none."""
    try:
        return DirectTiffReader(slide.path, slide.level_dimensions, cache_bytes=0)
    except DirectUnsupported:
        return None


def jpeg_passthrough(slide: Slide, plan: ReadPlan, coords: np.ndarray) -> JpegTiles | None:
    """How to keep the slide's own JPEG tiles for these tiles, or None when they cannot be kept as they are.

    They can when ``plan`` reads a level without resizing, the slide reads that level directly from a plain JPEG
    tile grid whose tiles are ``plan.tile_size`` square, the level's downsample is a whole number, and every tile
    of ``coords`` is exactly one stored tile, wholly inside the level. Then the stored bytes decode to exactly the
    pixels :func:`~slidestream.tiling.tiler.read_tile` returns.

    Parameters
    ----------
    slide : Slide
    plan : ReadPlan
    coords : (N, 2) int array
        Level-0 top-left corners of the tiles.
    """
    if plan.needs_resize or plan.level not in slide.direct_levels:
        return None
    ds = _whole_downsample(slide, plan.level)
    level_xy = None if ds is None else _level_coords(coords, ds)
    if level_xy is None:
        return None
    reader = _direct_reader(slide)
    if reader is None:
        return None
    with reader:
        level = reader.levels.get(plan.level)
        size = plan.tile_size
        if (level is None or level.compression != "jpeg" or level.samples != 3 or level.alpha
                or level.tile_size != (size, size) or (level_xy % size).any()):
            return None
        cols, rows = level_xy[:, 0] // size, level_xy[:, 1] // size
        lw, lh = level.size
        if ((cols + 1) * size > lw).any() or ((rows + 1) * size > lh).any():
            return None  # edge tiles are stored padded: their padding is not slide pixels
        if (level.counts[rows * level.grid[0] + cols] == 0).any():
            return None  # a tile missing from the file reads as white, which no stored bytes say
        with tifffile.TiffFile(slide.path) as tf:
            page = tf.pages[level.page]
            colorspace, outcolorspace = jpeg_decode_colorspace(page.photometric, page.planarconfig,
                                                               page.extrasamples, page.is_jfif)
    from ..store import JpegTiles

    return JpegTiles(level=plan.level, colorspace=_json_value(colorspace), outcolorspace=_json_value(outcolorspace))


def _json_value(v):
    # tifffile gives ints, enum members or strings; the codec configuration must be plain JSON
    return None if v is None else (v if isinstance(v, str) else int(v))


@dataclass(frozen=True)
class ReducedRead:
    """How a plan's patches are assembled from stored tiles reduced ``factor`` times (see the module docstring).

    Attributes
    ----------
    level : int
        Pyramid level read.
    downsample : int
        Level-0 pixels per pixel of ``level`` (a whole number).
    factor : int
        ``plan.read_size // plan.tile_size``.
    read_size, tile_size : int
        As in the plan.
    jpeg : bool
        The level's tiles are 3-sample JPEG: decoded with imagecodecs straight into 4-byte pixels, which PIL
        reduces without copying them first (its RGB images are 4 bytes per pixel).
    colorspace : int, str or None
        JPEG colour space of the tiles, as the TIFF tags say (with ``jpeg``).
    dct : bool
        The decoder reduces the tiles (libjpeg DCT scaling; YCbCr JPEG and ``factor`` 2, 4 or 8); else box.
    """

    level: int
    downsample: int
    factor: int
    read_size: int
    tile_size: int
    jpeg: bool = False
    colorspace: int | str | None = None
    dct: bool = False

    @property
    def reduction(self) -> str:
        """How the patches are reduced, as recorded in a store: ``"jpeg-dct"`` or ``"box"``."""
        return "jpeg-dct" if self.dct else "box"


def reduced_read(slide: Slide, plan: ReadPlan, coords: np.ndarray) -> ReducedRead | None:
    """A :class:`ReducedRead` for these tiles, or None when the reduced-tile path does not apply.

    It applies when ``plan`` reads ``k >= 2`` times the tile size (``resize_patch``'s whole-factor case), the
    slide reads ``plan.level`` directly, its downsample is a whole number, the stored tiles' sides are multiples
    of ``k``, and every region starts on a multiple of ``k`` level pixels and lies wholly inside the level.
    """
    if plan.read_size % plan.tile_size or plan.read_size == plan.tile_size:
        return None
    if plan.level not in slide.direct_levels:
        return None
    ds = _whole_downsample(slide, plan.level)
    level_xy = None if ds is None else _level_coords(coords, ds)
    if level_xy is None:
        return None
    k = plan.read_size // plan.tile_size
    reader = _direct_reader(slide)
    if reader is None:
        return None
    with reader:
        level = reader.levels.get(plan.level)
        if level is None or level.tile_size[0] % k or level.tile_size[1] % k:
            return None
        lw, lh = level.size
        jpeg = _plain_jpeg(level)
        colorspace = _jpeg_colorspace(slide, level) if jpeg else None
        dct = jpeg and k in (2, 4, 8) and _dct_decodable(reader, plan.level, colorspace)
    if (level_xy % k).any() or (level_xy < 0).any():
        return None
    if (level_xy[:, 0] + plan.read_size > lw).any() or (level_xy[:, 1] + plan.read_size > lh).any():
        return None
    return ReducedRead(level=plan.level, downsample=ds, factor=k, read_size=plan.read_size,
                       tile_size=plan.tile_size, jpeg=jpeg, colorspace=_json_value(colorspace), dct=dct)


_JCS_YCBCR = 3  # libjpeg's J_COLOR_SPACE value, as tifffile's jpeg_decode_colorspace gives it


def _plain_jpeg(level) -> bool:
    """Whether a direct level's tiles are 3-sample JPEG streams (with the level's shared tables, if any)."""
    return level.compression == "jpeg" and level.samples == 3 and not level.alpha and level.jpegheader is None


def _jpeg_colorspace(slide: Slide, level) -> int | str | None:
    """The JPEG colour space of a direct level's tiles, as its TIFF tags say (tifffile's reading of them)."""
    with tifffile.TiffFile(slide.path) as tf:
        page = tf.pages[level.page]
        colorspace, _ = jpeg_decode_colorspace(page.photometric, page.planarconfig, page.extrasamples, page.is_jfif)
    return colorspace


def _dct_decodable(reader: DirectTiffReader, level: int, colorspace) -> bool:
    """Whether simplejpeg, which takes no colour-space argument, decodes the level's tiles right: YCbCr by the
    TIFF tags and by the decoder's own reading of a stored tile."""
    return colorspace in (None, _JCS_YCBCR) and _decodes_as_ycbcr(reader, level)


def dct_reduced_level(slide: Slide, level: int, max_size: int) -> np.ndarray | None:
    """A whole pyramid level reduced by the JPEG decoder to ``M/8`` of its size, the largest ``M`` (1–7) that
    makes its longer side at most ``max_size``; None where that does not apply.

    libjpeg's DCT scaling decodes only the low-frequency coefficients of each tile, an antialiased reduction for
    less than the cost of a full decode: the overview of a 60000 x 45000 slide (its 3750 px level reduced to
    1875 px) takes a fraction of decoding the level and resizing it with PIL (``bench/tile.py``).

    It applies where the slide reads ``level`` directly from YCbCr JPEG tiles whose sides are multiples of 8, and
    where the result is at least two thirds of ``max_size`` (a level more than 4x larger than ``max_size``
    would come out smaller: the caller resizes exactly instead).

    Returns
    -------
    (h, w, 3) uint8 array, ``(w, h) = (level w * M // 8, level h * M // 8)``; tiles missing from the file are
    white, as when read through the slide.
    """
    if level not in slide.direct_levels:
        return None
    reader = _direct_reader(slide)
    if reader is None:
        return None
    with reader:
        lv = reader.levels.get(level)
        if lv is None or not _plain_jpeg(lv):
            return None
        (lw, lh), (tw, th), (cols, rows) = lv.size, lv.tile_size, lv.grid
        m = min(7, 8 * max_size // max(lw, lh))
        if m < 1 or max(lw, lh) * m // 8 < 2 * max_size / 3 or tw % 8 or th % 8:
            return None
        if not _dct_decodable(reader, level, _jpeg_colorspace(slide, lv)):
            return None
        sw, sh = tw * m // 8, th * m // 8
        out = np.full((rows * sh, cols * sw, 3), 255, np.uint8)
        for index in np.flatnonzero(lv.counts):
            row, col = divmod(int(index), cols)
            data = merge_jpeg_tables(reader.raw_tile(level, col, row), lv.jpegtables)
            try:
                tile = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=sh, min_width=sw)
            except ValueError:
                return None  # a damaged tile: the caller's exact path reads the level and says what is wrong
            if tile.shape[:2] != (sh, sw):
                return None  # a decoder without this scale: the caller's exact path
            out[row * sh:(row + 1) * sh, col * sw:(col + 1) * sw] = tile
    return out[:lh * m // 8, :lw * m // 8]


def _decodes_as_ycbcr(reader: DirectTiffReader, level: int) -> bool:
    """Whether a decoder left to itself reads the level's first stored tile as YCbCr (as the TIFF says): only
    then may a decoder without a colour-space argument (simplejpeg) decode the tiles."""
    lv = reader.levels[level]
    cols = -(-lv.size[0] // lv.tile_size[0])
    rows = -(-lv.size[1] // lv.tile_size[1])
    for index in range(cols * rows):
        data = reader.raw_tile(level, index % cols, index // cols)
        if data:
            try:
                return simplejpeg.decode_jpeg_header(merge_jpeg_tables(data, lv.jpegtables))[2] == "YCbCr"
            except ValueError:
                return False
    return False


class ReducedTileReader:
    """Patches of a :class:`ReducedRead` plan, assembled from reduced stored tiles. Thread-safe.

    Parameters
    ----------
    path : str or os.PathLike
        The slide file.
    level_dimensions : sequence of (int, int)
        The slide's levels (as :attr:`Slide.level_dimensions`), to find the stored tiles of ``spec.level``.
    spec : ReducedRead
    cache_bytes : int
        Bound of the reduced-tile cache.
    """

    def __init__(self, path: str | os.PathLike, level_dimensions, spec: ReducedRead, *,
                 cache_bytes: int = REDUCED_CACHE_BYTES):
        self.spec = spec
        self.reader = DirectTiffReader(path, level_dimensions, cache_bytes=0)
        self.cache = TileCache(cache_bytes)
        self._level = self.reader.levels[spec.level]

    def close(self) -> None:
        self.reader.close()
        self.cache.clear()

    def reduced_tile(self, column: int, row: int) -> np.ndarray:
        """Stored tile ``(column, row)`` of the level, decoded and reduced ``factor`` times (shared, read-only)."""
        key = (column, row)
        tile = self.cache.get(key)
        if tile is None:
            spec, level = self.spec, self._level
            data = self.reader.raw_tile(spec.level, column, row) if spec.jpeg else b""
            tw, th = level.tile_size
            if data and spec.dct:
                tile = simplejpeg.decode_jpeg(merge_jpeg_tables(data, level.jpegtables), colorspace="RGB",
                                              min_height=th // spec.factor, min_width=tw // spec.factor,
                                              min_factor=spec.factor)
                if tile.shape[:2] != (th // spec.factor, tw // spec.factor):
                    raise DirectUnsupported(f"{self.reader.path}: the decoder reduced a tile to {tile.shape[:2]}")
                self.cache.put(key, tile)
                return tile
            if data:
                rgbx = imagecodecs.jpeg8_decode(data, tables=level.jpegtables, colorspace=spec.colorspace,
                                                outcolorspace=imagecodecs.JPEG8.CS.EXT_RGBX)
                image = Image.frombuffer("RGBX", level.tile_size, rgbx, "raw", "RGBX", 0, 1)  # no copy
            else:  # other compressions, and tiles missing from the file (white): the direct reader's decoding
                image = Image.fromarray(self.reader.decode_tile(spec.level, column, row))
            # Image.reduce is resize_patch's own reduction: the same arithmetic per k x k block. PIL packs the
            # result to (h, w, 3) in C: patches then assemble from contiguous rows, much faster than copying the
            # RGB of strided RGBX pixels.
            small = image.reduce(spec.factor)
            tile = np.frombuffer(small.tobytes("raw", "RGB"), np.uint8).reshape(small.height, small.width, 3)
            self.cache.put(key, tile)
        return tile

    def read(self, location: tuple[int, int]) -> np.ndarray:
        """The patch whose region starts at level-0 ``location``: ``(tile_size, tile_size, 3)`` uint8, new array.

        Equal to ``read_tile(slide, location, plan)`` for the plan this reader was made for when the tiles are
        box-reduced; within rounding of it when the decoder reduces them (``spec.dct``, see the module docstring).
        """
        spec, k = self.spec, self.spec.factor
        x, y = int(location[0]) // spec.downsample, int(location[1]) // spec.downsample
        tw, th = self._level.tile_size
        rs = spec.read_size
        out = np.empty((spec.tile_size, spec.tile_size, 3), np.uint8)
        for row in range(y // th, (y + rs - 1) // th + 1):
            ty = row * th
            y0, y1 = max(y, ty), min(y + rs, ty + th)
            for col in range(x // tw, (x + rs - 1) // tw + 1):
                tx = col * tw
                x0, x1 = max(x, tx), min(x + rs, tx + tw)
                tile = self.reduced_tile(col, row)
                out[(y0 - y) // k:(y1 - y) // k, (x0 - x) // k:(x1 - x) // k] = \
                    tile[(y0 - ty) // k:(y1 - ty) // k, (x0 - tx) // k:(x1 - tx) // k]
        return out
