"""Fast region reading from tiled TIFF-family slides: decode the stored tiles directly and assemble regions.

OpenSlide spends about four times longer per 256 px tile on bookkeeping (cairo surfaces, its tile cache, RGBA
conversion) than on JPEG decoding. For files whose pyramid levels are plain tile grids of a TIFF container
(Aperio SVS, generic tiled TIFF), :class:`DirectTiffReader` reads each tile's compressed bytes with
:func:`os.pread` (no shared file position, so any number of threads can read at once), decodes them with
tifffile's decoder for the page (imagecodecs underneath: JPEG with shared ``JPEGTables`` and the page's colour
space, LZW, Deflate, Zstandard, WebP, JPEG 2000, uncompressed, with predictors) and copies the wanted pixels into the region. Decoded tiles
are kept in a bounded LRU cache, so overlapping or neighbouring reads (448 px reads on a 256 px tile grid)
decode each stored tile once.

:func:`with_direct_reader` puts the reader in front of a :class:`~slidestream.wsi._backends.SlideBackend`
(what ``open_slide(..., direct="auto")`` does): levels the reader covers are served by it, every other level,
and all metadata, by the backend. Regions agree with the backend's: with OpenSlide behind it, a level-0 location
that falls between pixels of a reduced level is positioned with OpenSlide's bilinear sub-pixel shift; with
tiffslide it starts at ``floor(location / downsample)``.

Not read directly (the backend serves them): formats whose tiles are not the image grid (Ventana BIF overlaps,
Leica SCN and MIRAX offsets, Hamamatsu NDPI strips), stripped pages, planar or non-8-bit samples, grey images
and compressions outside :data:`SUPPORTED_COMPRESSIONS`.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np

from ._backends import NativeMPP, SlideBackend, composite_on_white, is_tiff

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "SUPPORTED_COMPRESSIONS",
    "DirectBackend",
    "DirectLevel",
    "DirectTiffReader",
    "DirectUnsupported",
    "TileCache",
    "jpeg_frame_size",
    "with_direct_reader",
]

#: Decoded tiles kept per open slide. A 448 px read on a 256 px grid touches 9 tiles; reuse across a row of
#: reads needs a few tiles, reuse between rows needs ~3 tile rows of the tissue's width (a 40k px wide tissue
#: area: ~470 tiles of 192 KiB = 90 MiB), hence 128 MiB.
DEFAULT_CACHE_BYTES = 128 << 20

#: TIFF Compression tag values decoded directly. Not Aperio's JPEG 2000 (33003/33005, YCbCr handling unverified)
#: nor old-style JPEG (6): OpenSlide reads those.
SUPPORTED_COMPRESSIONS = {
    1: "none", 5: "lzw", 7: "jpeg", 8: "deflate", 32946: "deflate", 34712: "jpeg2000", 50000: "zstd", 50001: "webp",
}

# Vendors whose pyramid levels are plain TIFF tile grids, per backend (see the module docstring for the rest).
_DIRECT_VENDORS = {
    "openslide": frozenset({"aperio", "generic-tiff"}),
    "tiffslide": frozenset({"aperio", "generic-tiff"}),
}

# TIFF tag values used below.
_PHOTOMETRIC_RGB, _PHOTOMETRIC_YCBCR = 2, 6
_EXTRASAMPLE_ASSOCIATED, _EXTRASAMPLE_UNASSOCIATED = 1, 2
_COMPRESSION_JPEG = 7

# pixman (behind OpenSlide's cairo) quantises bilinear weights to 7 bits of a 16.16 fixed-point coordinate.
_BILINEAR_STEPS = 128


class DirectUnsupported(Exception):
    """A file or level cannot be read directly; ``reason`` says why. Internal: callers fall back."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------------------------------- tile cache


class TileCache:
    """Thread-safe LRU cache of decoded tiles, bounded by the bytes it holds.

    Parameters
    ----------
    max_bytes : int
        Upper bound of ``sum(tile.nbytes)`` kept; 0 disables caching.
    """

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._tiles: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[int, int]) -> np.ndarray | None:
        with self._lock:
            tile = self._tiles.get(key)
            if tile is None:
                self.misses += 1
                return None
            self._tiles.move_to_end(key)
            self.hits += 1
            return tile

    def put(self, key: tuple[int, int], tile: np.ndarray) -> None:
        if tile.nbytes > self.max_bytes:
            return
        with self._lock:
            if key in self._tiles:  # another thread decoded it meanwhile
                return
            self._tiles[key] = tile
            self._bytes += tile.nbytes
            while self._bytes > self.max_bytes:
                _, old = self._tiles.popitem(last=False)
                self._bytes -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._tiles.clear()
            self._bytes = 0

    def info(self) -> dict[str, int]:
        """``hits``, ``misses``, ``tiles`` (held now), ``bytes`` (held now), ``max_bytes``."""
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "tiles": len(self._tiles), "bytes": self._bytes,
                    "max_bytes": self.max_bytes}


# --------------------------------------------------------------------------------------------------- levels


@dataclass(frozen=True)
class DirectLevel:
    """One pyramid level as a grid of stored tiles.

    Attributes
    ----------
    page : int
        Index of the TIFF page (IFD) in the file.
    size : (int, int)
        ``(w, h)`` of the level in pixels.
    tile_size : (int, int)
        ``(w, h)`` of a stored tile in pixels; tiles on the right and bottom edges are stored padded to it.
    grid : (int, int)
        Tiles across and down.
    compression : str
        A value of :data:`SUPPORTED_COMPRESSIONS` (``"jpeg"``, ``"lzw"``, ``"deflate"`` …).
    samples : int
        3 (RGB) or 4 (RGB + alpha).
    alpha : int
        0 without alpha, 1 associated (premultiplied) alpha, 2 unassociated alpha (TIFF ExtraSamples values).
    offsets, counts : ndarray, shape (grid[1] * grid[0],), int64
        Byte offset and length of each tile in the file, row-major; length 0 marks a tile that is not stored
        (read as white, like OpenSlide's transparent).
    decode : callable
        tifffile's decoder for the page: ``decode(data, index, jpegtables=, jpegheader=)`` returns the tile as
        ``(1, tile_h, tile_w, samples)`` uint8 first.
    jpegtables, jpegheader : bytes or None
        Shared JPEG tables (TIFF tag 347) and header, passed to `decode`.
    """

    page: int
    size: tuple[int, int]
    tile_size: tuple[int, int]
    grid: tuple[int, int]
    compression: str
    samples: int
    alpha: int
    offsets: np.ndarray
    counts: np.ndarray
    decode: Callable[..., Any]
    jpegtables: bytes | None
    jpegheader: bytes | None


def _page_level(page: Any, index: int) -> DirectLevel:
    """Describe a tifffile page as a :class:`DirectLevel`, or raise :class:`DirectUnsupported`."""
    if not page.is_tiled:
        raise DirectUnsupported(f"page {index} is stored in strips, not tiles")
    if getattr(page, "tiledepth", 1) != 1 or getattr(page, "imagedepth", 1) != 1:
        raise DirectUnsupported(f"page {index} is a volume")
    compression = int(page.compression)
    if compression not in SUPPORTED_COMPRESSIONS:
        raise DirectUnsupported(f"page {index} uses compression {compression}")
    if page.bitspersample != 8 or int(page.sampleformat) != 1:
        raise DirectUnsupported(f"page {index} has {page.bitspersample}-bit samples, not 8-bit unsigned")
    if int(page.planarconfig) != 1:
        raise DirectUnsupported(f"page {index} stores colour planes separately")
    photometric = int(page.photometric)
    samples = int(page.samplesperpixel)
    extrasamples = tuple(int(e) for e in page.extrasamples)
    if photometric == _PHOTOMETRIC_YCBCR and compression != _COMPRESSION_JPEG:
        raise DirectUnsupported(f"page {index} stores raw YCbCr")
    if photometric not in (_PHOTOMETRIC_RGB, _PHOTOMETRIC_YCBCR):
        raise DirectUnsupported(f"page {index} has photometric interpretation {photometric}, not RGB")
    alpha = 0
    if samples == 4 and extrasamples in ((_EXTRASAMPLE_ASSOCIATED,), (_EXTRASAMPLE_UNASSOCIATED,)):
        alpha = extrasamples[0]
    elif samples != 3 or extrasamples:
        raise DirectUnsupported(f"page {index} has {samples} samples (extra {extrasamples}), not RGB or RGBA")
    width, height = int(page.imagewidth), int(page.imagelength)
    tile_w, tile_h = int(page.tilewidth), int(page.tilelength)
    grid = (-(-width // tile_w), -(-height // tile_h))
    offsets = np.asarray(page.dataoffsets, dtype=np.int64)
    counts = np.asarray(page.databytecounts, dtype=np.int64)
    if offsets.shape != (grid[0] * grid[1],) or counts.shape != offsets.shape:
        raise DirectUnsupported(f"page {index} lists {len(offsets)} tiles for a {grid[0]}x{grid[1]} grid")
    try:
        decode = page.decode  # tifffile builds the decoder: tables, colour space, predictor, byte order
    except Exception as exc:  # e.g. imagecodecs built without the codec
        raise DirectUnsupported(f"page {index}: no decoder ({exc})") from exc
    return DirectLevel(
        page=index, size=(width, height), tile_size=(tile_w, tile_h), grid=grid,
        compression=SUPPORTED_COMPRESSIONS[compression], samples=samples, alpha=alpha, offsets=offsets,
        counts=counts, decode=decode, jpegtables=page.jpegtables, jpegheader=getattr(page, "jpegheader", None),
    )


# --------------------------------------------------------------------------------------------------- reader


class DirectTiffReader:
    """Read regions of a tiled TIFF-family file by decoding its stored tiles. Thread-safe.

    Parameters
    ----------
    path : str or os.PathLike
        A TIFF or BigTIFF file (SVS, generic pyramidal TIFF).
    level_dimensions : iterable of (int, int)
        ``(w, h)`` of each level as the slide's backend numbers them. Each is matched to the first unused tiled
        page of that size; levels without a readable page are left out of :attr:`levels`.
    cache_bytes : int
        Bound of the decoded-tile cache (:data:`DEFAULT_CACHE_BYTES`); 0 disables it.

    Raises
    ------
    DirectUnsupported
        When the file is not a TIFF or no level can be read directly (``reason`` says why).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        level_dimensions: Iterable[tuple[int, int]],
        *,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ):
        import tifffile

        self.path = Path(path)
        if not is_tiff(self.path):
            raise DirectUnsupported("not a TIFF file")
        wanted = [(int(w), int(h)) for w, h in level_dimensions]
        levels: dict[int, DirectLevel] = {}
        reasons: dict[int, str] = {}
        # tifffile's decoders keep no reference to its file handle: the TiffFile is closed after this, and tiles
        # are read through one descriptor of our own.
        with tifffile.TiffFile(self.path) as tf:
            pages = list(tf.pages)
            used: set[int] = set()
            for level, size in enumerate(wanted):
                same_size = [i for i, page in enumerate(pages)
                             if i not in used and (int(page.imagewidth), int(page.imagelength)) == size]
                # a tiled page first: a stripped thumbnail or label may have the size of a small level
                same_size.sort(key=lambda i: not pages[i].is_tiled)
                if not same_size:
                    reasons[level] = f"no TIFF page of {size[0]}x{size[1]} px"
                    continue
                used.add(same_size[0])
                try:
                    levels[level] = _page_level(pages[same_size[0]], same_size[0])
                except DirectUnsupported as exc:
                    reasons[level] = exc.reason
        if not levels:
            raise DirectUnsupported("; ".join(f"level {k}: {v}" for k, v in reasons.items()) or "no levels")
        #: Level number -> how it is stored, for the levels read directly.
        self.levels: dict[int, DirectLevel] = levels
        #: Level number -> why it is not read directly, for the others.
        self.unsupported: dict[int, str] = reasons
        self.cache = TileCache(cache_bytes)
        self._fd: int | None = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._file_size = os.fstat(self._fd).st_size
        for level in levels.values():
            stored = level.counts > 0
            if stored.any() and int((level.offsets + level.counts)[stored].max()) > self._file_size:
                self.close()
                raise DirectUnsupported(f"page {level.page}: tile data lies beyond the end of the file")

    # ---------------------------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Release the file descriptor and the cache; idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        self.cache.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------------- tiles

    def raw_tile(self, level: int, column: int, row: int) -> bytes:
        """Compressed bytes of one stored tile as they are in the file (``b""`` when not stored).

        Parameters
        ----------
        level : int
            A level in :attr:`levels`.
        column, row : int
            Tile position in the level's grid, ``0 <= column < grid[0]``, ``0 <= row < grid[1]``.
        """
        lv = self.levels[level]
        index = row * lv.grid[0] + column
        count = int(lv.counts[index])
        if count == 0:
            return b""
        fd = self._fd
        if fd is None:
            raise ValueError(f"{self.path}: the reader is closed")
        data = os.pread(fd, count, int(lv.offsets[index]))
        if len(data) != count:
            raise ValueError(f"tile {column},{row} of page {lv.page}: read {len(data)} of {count} bytes")
        if lv.compression == "jpeg":
            # A JPEG stream states its own size, and decoders allocate what it states: a tile claiming more than
            # the TIFF tile would be a decompression bomb (OpenSlide refuses such tiles too).
            frame = jpeg_frame_size(data)
            if frame is not None and (frame[0] > lv.tile_size[0] or frame[1] > lv.tile_size[1]):
                raise ValueError(f"tile {column},{row} of page {lv.page} is a {frame[0]}x{frame[1]} JPEG image in a "
                                 f"{lv.tile_size[0]}x{lv.tile_size[1]} tile")
        return data

    def decode_tile(self, level: int, column: int, row: int) -> np.ndarray:
        """Decode one stored tile, without the cache.

        Returns
        -------
        ndarray, shape (tile_h, tile_w, 3), uint8
            RGB of the whole stored tile including the padding of edge tiles; alpha composited on white,
            a tile that is not stored is white.
        """
        lv = self.levels[level]
        data = self.raw_tile(level, column, row)
        tile_w, tile_h = lv.tile_size
        if not data:
            return np.full((tile_h, tile_w, 3), 255, dtype=np.uint8)
        index = row * lv.grid[0] + column
        segment, _, _ = lv.decode(data, index, jpegtables=lv.jpegtables, jpegheader=lv.jpegheader)
        pixels = segment.reshape(tile_h, tile_w, lv.samples)
        if lv.alpha == _EXTRASAMPLE_UNASSOCIATED:
            return composite_on_white(pixels)
        if lv.alpha == _EXTRASAMPLE_ASSOCIATED:
            # premultiplied colour over white: rgb + (255 - a), never above 255 in a valid file
            rgb = pixels[..., :3].astype(np.uint16) + (255 - pixels[..., 3:4])
            return np.minimum(rgb, 255).astype(np.uint8)
        if not pixels.flags.writeable:  # uncompressed tiles may come back as views of the read-only bytes
            pixels = pixels.copy()
        return pixels

    def tile(self, level: int, column: int, row: int) -> np.ndarray:
        """Decoded tile through the cache; the result is shared and must not be written to."""
        key = (level, row * self.levels[level].grid[0] + column)
        tile = self.cache.get(key)
        if tile is None:
            tile = self.decode_tile(level, column, row)
            tile.flags.writeable = False
            self.cache.put(key, tile)
        return tile

    # ---------------------------------------------------------------------------------------------- regions

    def read_level_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Pixels ``[y:y+h, x:x+w]`` of a level; parts outside the level are white.

        Parameters
        ----------
        level : int
            A level in :attr:`levels`.
        x, y : int
            Top-left corner in pixels of that level (may be negative or beyond the level).
        w, h : int
            Size in pixels of that level, >= 0.

        Returns
        -------
        ndarray, shape (h, w, 3), uint8
            A new array the caller may write to.
        """
        lv = self.levels[level]
        level_w, level_h = lv.size
        tile_w, tile_h = lv.tile_size
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, level_w), min(y + h, level_h)
        if x1 <= x0 or y1 <= y0:
            return np.full((h, w, 3), 255, dtype=np.uint8)
        col0, col1 = x0 // tile_w, (x1 - 1) // tile_w
        row0, row1 = y0 // tile_h, (y1 - 1) // tile_h
        inside = (x0, y0, x1, y1) == (x, y, x + w, y + h)
        if inside and (x, y, w, h) == (col0 * tile_w, row0 * tile_h, tile_w, tile_h):
            # The region is exactly one stored tile (the native-level tiler's case): hand out a fresh decode
            # instead of copying out of the cache, and keep the cache for tiles that are read more than once.
            cached = self.cache.get((level, row0 * lv.grid[0] + col0))
            return cached.copy() if cached is not None else self.decode_tile(level, col0, row0)
        out = np.empty((h, w, 3), np.uint8) if inside else np.full((h, w, 3), 255, dtype=np.uint8)
        for row in range(row0, row1 + 1):
            ty = row * tile_h
            sy0, sy1 = max(y0, ty), min(y1, ty + tile_h)
            for col in range(col0, col1 + 1):
                tx = col * tile_w
                sx0, sx1 = max(x0, tx), min(x1, tx + tile_w)
                out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = self.tile(level, col, row)[
                    sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx
                ]
        return out

    def read_region(
        self,
        location: tuple[int, int],
        level: int,
        size: tuple[int, int],
        downsample: float,
        *,
        subpixel: bool = True,
    ) -> np.ndarray:
        """A region given like :meth:`Slide.read_region`: level-0 ``location``, ``size`` in level pixels.

        Parameters
        ----------
        location : (int, int)
            ``(x, y)`` in level-0 pixels.
        level : int
            A level in :attr:`levels`.
        size : (int, int)
            ``(w, h)`` in pixels of `level`.
        downsample : float
            Level-0 pixels per pixel of `level`.
        subpixel : bool
            True: position the region at ``location / downsample`` with bilinear interpolation when that falls
            between pixels, as OpenSlide does (the result differs from OpenSlide's by its rounding of the
            weights, < 1 grey level on average). False: start at ``floor(location / downsample)``, as tiffslide
            does.

        Returns
        -------
        ndarray, shape (h, w, 3), uint8
        """
        w, h = size
        fx, fy = location[0] / downsample, location[1] / downsample
        if not subpixel:
            return self.read_level_region(level, math.floor(fx), math.floor(fy), w, h)
        ix, ax = _subpixel_start(fx)
        iy, ay = _subpixel_start(fy)
        if ax == 0 and ay == 0:
            return self.read_level_region(level, ix, iy, w, h)
        src = self.read_level_region(level, ix, iy, w + (ax > 0), h + (ay > 0)).astype(np.float32)
        if ax:
            src = src[:, :-1] * (1 - ax) + src[:, 1:] * ax
        if ay:
            src = src[:-1] * (1 - ay) + src[1:] * ay
        return np.rint(src).astype(np.uint8)


def _subpixel_start(position: float) -> tuple[int, float]:
    """First level pixel and bilinear weight of the next one where OpenSlide starts a region at `position`.

    Weights are quantised as pixman (behind OpenSlide's cairo) does: 16.16 fixed point, top 7 bits of the
    fraction. Left of or above the level OpenSlide moves by whole pixels, towards zero (measured on
    OpenSlide 4.0: ``-2.49`` starts at pixel ``-2`` without interpolation).
    """
    if position < 0:
        return math.ceil(position), 0.0
    start = math.floor(position)
    return start, (round((position - start) * 65536) >> 9) / _BILINEAR_STEPS


# --------------------------------------------------------------------------------------------------- backend


class DirectBackend(SlideBackend):
    """A backend whose covered levels are read by a :class:`DirectTiffReader`; everything else by `inner`.

    ``name``, metadata, geometry and associated images are those of `inner`, so a :class:`Slide` over it
    describes the file exactly as `inner` alone would.
    """

    def __init__(self, inner: SlideBackend, reader: DirectTiffReader):
        self.inner = inner
        self.reader = reader
        self.name = inner.name
        self.vendor = inner.vendor
        self.properties = inner.properties
        self.level_dimensions = inner.level_dimensions
        self.level_downsamples = inner.level_downsamples
        self.associated_names = inner.associated_names
        # OpenSlide places regions with sub-pixel precision at reduced levels; tiffslide floors.
        self._subpixel = inner.name == "openslide"

    @property
    def direct_levels(self) -> tuple[int, ...]:
        """Levels read by the direct reader."""
        return tuple(sorted(self.reader.levels))

    def native_mpp(self) -> NativeMPP | None:
        return self.inner.native_mpp()

    def objective_power(self) -> float | None:
        return self.inner.objective_power()

    def bounds(self):
        return self.inner.bounds()

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        if level not in self.reader.levels:
            return self.inner.read_region(location, level, size)
        return self.reader.read_region(
            location, level, size, self.level_downsamples[level], subpixel=self._subpixel
        )

    def read_associated(self, name: str) -> np.ndarray:
        return self.inner.read_associated(name)

    def probe(self) -> None:
        # One tile of the coarsest direct level, so that an undecodable file fails at open.
        level = max(self.reader.levels)
        self.reader.read_level_region(level, 0, 0, 1, 1)

    def close(self) -> None:
        self.reader.close()
        self.inner.close()


def with_direct_reader(
    backend: SlideBackend,
    path: str | os.PathLike,
    direct: bool | str = "auto",
    *,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> SlideBackend:
    """Put a :class:`DirectTiffReader` in front of `backend` where the file allows it.

    Parameters
    ----------
    backend : SlideBackend
        The opened (and probed) reader of the file.
    path : str or os.PathLike
        The slide file.
    direct : {"auto", True, False}
        ``"auto"``: read directly when the file is a TIFF-family slide whose levels are plain tile grids with a
        supported layout (see the module docstring), else return `backend` unchanged. ``True``: the same, but
        refuse files of which any level cannot be read directly. ``False``: return `backend` unchanged.
    cache_bytes : int
        Bound of the decoded-tile cache.

    Returns
    -------
    SlideBackend
        A :class:`DirectBackend` over `backend`, or `backend` itself. On success the direct reader has decoded
        one tile of its coarsest level.

    Raises
    ------
    DirectUnsupported
        With ``direct=True`` when the file cannot be read directly, or its probe tile fails to decode.
    """
    if direct is False:
        return backend
    try:
        allowed = _DIRECT_VENDORS.get(backend.name, frozenset())
        if backend.vendor not in allowed:
            raise DirectUnsupported(
                f"{backend.name} reads this file as {backend.vendor!r}; tiles are read directly only for "
                f"{', '.join(sorted(allowed)) or 'no format of this reader'}"
            )
        try:
            reader = DirectTiffReader(path, backend.level_dimensions, cache_bytes=cache_bytes)
        except DirectUnsupported:
            raise
        except Exception as exc:  # tifffile's view of a file another reader accepted: not worth failing over
            raise DirectUnsupported(f"tifffile cannot parse the file: {type(exc).__name__}: {exc}") from exc
        if direct is True and reader.unsupported:
            reader.close()
            raise DirectUnsupported("; ".join(f"level {k}: {v}" for k, v in reader.unsupported.items()))
        wrapped = DirectBackend(backend, reader)
        try:
            wrapped.probe()
        except Exception as exc:
            reader.close()
            raise DirectUnsupported(f"the direct decoder fails on this file: {type(exc).__name__}: {exc}") from exc
        return wrapped
    except DirectUnsupported:
        if direct is True:
            raise
        return backend


_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic …): they carry the image size.
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def jpeg_frame_size(data: bytes) -> tuple[int, int] | None:
    """``(w, h)`` a JPEG stream declares in its start-of-frame segment, read without decoding; None when the
    stream has no frame header before its scan (or is not JPEG)."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _SOF_MARKERS:
            if i + 9 > n:
                return None
            return (data[i + 7] << 8) | data[i + 8], (data[i + 5] << 8) | data[i + 6]
        elif marker in (0xDA, 0xD9):  # start of scan, end of image: no frame header before them
            return None
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            i += 2
        else:
            i += 2 + ((data[i + 2] << 8) | data[i + 3])
    return None


def merge_jpeg_tables(tile: bytes, tables: bytes | None) -> bytes:
    """One self-contained JPEG stream from a TIFF tile and the page's shared ``JPEGTables``.

    TIFF JPEG tiles may be "abbreviated" streams whose quantisation and Huffman tables live once in the page's
    JPEGTables tag (itself a stream of only tables: SOI, DQT/DHT, EOI). Putting the tables' segments right after
    the tile's SOI gives a stream any JPEG decoder reads.

    Parameters
    ----------
    tile : bytes
        The tile's bytes as stored, starting with SOI.
    tables : bytes or None
        The JPEGTables tag, or None when the tiles carry their own tables.

    Returns
    -------
    bytes
    """
    if not tables:
        return tile
    if tile[:2] != _SOI or tables[:2] != _SOI or tables[-2:] != _EOI:
        raise ValueError("not a JPEG tile / JPEGTables pair (missing SOI or EOI markers)")
    return tables[:-2] + tile[2:]
