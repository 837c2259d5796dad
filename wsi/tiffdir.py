"""TIFF directories read with :mod:`struct`: what each image of a TIFF, BigTIFF or NDPI file claims.

Nothing here decodes pixels or asks a library to: the header and the image file directories (IFDs) are read
field by field, every offset checked against the file's size first, so a crafted file cannot make this code
allocate more than a few bytes per directory entry. :mod:`slidestream.wsi.budget` uses it to refuse
decompression bombs before OpenSlide or tifffile see them; :func:`slidestream.wsi._backends.check_tiff_structure`
uses it to detect truncated files.

Layouts read: classic TIFF (``II*\\0``/``MM\\0*``, 32-bit offsets), BigTIFF (64-bit offsets) and Hamamatsu NDPI
(classic TIFF whose next-directory offsets are 64-bit; recognised, like OpenSlide does, by tag 65420 in the first
directory). SubIFDs (tag 330, where OME-TIFF keeps its pyramid levels) are read one level deep.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

__all__ = ["TiffImage", "TiffLayout", "TiffStructureError", "TIFF_MAGICS", "read_tiff_layout"]

TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

# No real slide has this many directories; the limit stops a crafted chain that visits fresh offsets forever.
_MAX_IFDS = 100_000
# Classic TIFF cannot hold more entries in one directory; a BigTIFF claiming more is damaged, not a slide.
_MAX_ENTRIES = 65_535
# SubIFDs listed by one directory (OME-TIFF: one per pyramid level).
_MAX_SUBIFDS = 1_024

_TAG_WIDTH, _TAG_LENGTH, _TAG_COMPRESSION = 256, 257, 259
_TAG_SAMPLES, _TAG_ROWS_PER_STRIP = 277, 278
_TAG_BITS, _TAG_PHOTOMETRIC, _TAG_SAMPLE_FORMAT = 258, 262, 339
_TAG_TILE_WIDTH, _TAG_TILE_LENGTH, _TAG_SUBIFDS = 322, 323, 330
_TAG_IMAGE_DEPTH, _TAG_TILE_DEPTH = 32997, 32998
_TAG_NDPI = 65420
_WANTED = {_TAG_WIDTH, _TAG_LENGTH, _TAG_COMPRESSION, _TAG_SAMPLES, _TAG_ROWS_PER_STRIP, _TAG_TILE_WIDTH,
           _TAG_TILE_LENGTH, _TAG_IMAGE_DEPTH, _TAG_TILE_DEPTH, _TAG_NDPI, _TAG_BITS, _TAG_PHOTOMETRIC,
           _TAG_SAMPLE_FORMAT}

# TIFF field type -> struct code of one unsigned integer value (BYTE, SHORT, LONG, IFD, LONG8, IFD8).
_INT_TYPES = {1: "B", 3: "H", 4: "I", 13: "I", 16: "Q", 18: "Q"}


class TiffStructureError(Exception):
    """The file is not a TIFF, or its directories do not fit in it.

    Parameters
    ----------
    reason : str
        What is wrong, in a few words.
    corrupt : bool
        True when the file starts like a TIFF but its structure is damaged (truncated, looping, absurd counts).
    """

    def __init__(self, reason: str, *, corrupt: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.corrupt = corrupt


@dataclass(frozen=True)
class TiffImage:
    """What one image file directory claims.

    Attributes
    ----------
    where : str
        ``"IFD 3"`` or ``"SubIFD 1 of IFD 0"``, for messages.
    width, height : int
        Image size in pixels as claimed.
    tile : (int, int) or None
        ``(w, h)`` of a stored tile; None for images stored in strips.
    rows_per_strip : int
        Rows of one strip (the image height when the tag is absent, as TIFF specifies).
    depth, tile_depth : int
        Planes of a volume (SGI ImageDepth / TileDepth; 1 for every slide).
    samples : int
        Samples per pixel.
    compression : int
        TIFF Compression tag (1 none, 7 JPEG, 8 Deflate …).
    bits : int
        Bits of the first sample (BitsPerSample; 1 when absent, as TIFF specifies).
    sample_format : int
        SampleFormat of the first sample: 1 unsigned integer (the default), 2 signed integer, 3 floating point.
    photometric : int
        PhotometricInterpretation (0/1 grey, 2 RGB, 3 palette, 6 YCbCr …; -1 when absent).
    """

    where: str
    width: int
    height: int
    tile: tuple[int, int] | None
    rows_per_strip: int
    depth: int
    tile_depth: int
    samples: int
    compression: int
    bits: int = 1
    sample_format: int = 1
    photometric: int = -1

    @property
    def pixels(self) -> int:
        """Pixels of the whole image (all planes)."""
        return self.width * self.height * self.depth

    @property
    def unit(self) -> tuple[int, int, int]:
        """``(w, h, planes)`` of the piece a decoder produces at once: one tile or one strip."""
        if self.tile is not None:
            return self.tile[0], self.tile[1], self.tile_depth
        return self.width, min(self.rows_per_strip, self.height), self.depth

    @property
    def unit_pixels(self) -> int:
        w, h, d = self.unit
        return w * h * d


@dataclass(frozen=True)
class TiffLayout:
    """The images of a TIFF-family file, in directory order (SubIFDs right after their parent)."""

    images: tuple[TiffImage, ...]
    bigtiff: bool
    ndpi: bool
    ifd_count: int


def read_tiff_layout(path: str | os.PathLike) -> TiffLayout:
    """Walk the directories of a TIFF, BigTIFF or NDPI file and read what each image claims.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    TiffLayout
        ``ifd_count`` counts the top-level chain; ``images`` holds every directory with a width and height.

    Raises
    ------
    TiffStructureError
        ``corrupt=False`` when the file is not a TIFF; ``corrupt=True`` when a directory or its entries lie beyond
        the end of the file, the chain loops, or a count is absurd.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        return _Walker(fh, size).walk()


class _Walker:
    def __init__(self, fh, size: int):
        self.fh = fh
        self.size = size
        self.images: list[TiffImage] = []
        self.visited = 0

    def _read(self, offset: int, n: int, what: str) -> bytes:
        if offset < 0 or offset + n > self.size:
            raise TiffStructureError(
                f"truncated: {what} at byte {offset} needs {n} bytes but the file has {self.size} bytes", corrupt=True
            )
        self.fh.seek(offset)
        data = self.fh.read(n)
        if len(data) != n:
            raise TiffStructureError(f"truncated: {what} at byte {offset} could not be read", corrupt=True)
        return data

    def walk(self) -> TiffLayout:
        head = self.fh.read(16)
        order = {b"II": "<", b"MM": ">"}.get(head[:2])
        if order is None or len(head) < 8:
            raise TiffStructureError("not a TIFF file")
        self.order = order
        version = struct.unpack(order + "H", head[2:4])[0]
        if version == 42:
            offset = struct.unpack(order + "I", head[4:8])[0]
            self.count_fmt, self.entry_size, self.next_fmt, self.inline = "H", 12, "I", 4
        elif version == 43 and len(head) >= 16:
            offset = struct.unpack(order + "Q", head[8:16])[0]
            self.count_fmt, self.entry_size, self.next_fmt, self.inline = "Q", 20, "Q", 8
        else:
            raise TiffStructureError(f"not a TIFF file (version {version})")
        self.bigtiff = version == 43
        self.ndpi = False
        seen: set[int] = set()
        while offset:
            if offset in seen or len(seen) >= _MAX_IFDS:
                raise TiffStructureError(f"TIFF directory chain loops back to byte {offset}", corrupt=True)
            seen.add(offset)
            offset = self._directory(offset, f"IFD {len(seen) - 1}", top=True)
        if not seen:
            raise TiffStructureError("TIFF file without any image directory", corrupt=True)
        return TiffLayout(images=tuple(self.images), bigtiff=self.bigtiff, ndpi=self.ndpi, ifd_count=len(seen))

    def _directory(self, offset: int, where: str, *, top: bool) -> int:
        """Read one directory; returns the offset of the next one in the chain (0 at the end)."""
        self.visited += 1
        if self.visited > _MAX_IFDS:
            raise TiffStructureError(f"more than {_MAX_IFDS} TIFF directories", corrupt=True)
        count_size = struct.calcsize(self.count_fmt)
        (count,) = struct.unpack(self.order + self.count_fmt, self._read(offset, count_size, f"TIFF directory {where}"))
        if count > _MAX_ENTRIES:
            raise TiffStructureError(f"TIFF directory {where} claims {count} entries", corrupt=True)
        entries = self._read(offset + count_size, count * self.entry_size, f"the entries of TIFF directory {where}")
        values: dict[int, int] = {}
        subifds: list[int] = []
        for i in range(count):
            entry = entries[i * self.entry_size:(i + 1) * self.entry_size]
            if self.bigtiff:
                tag, kind, n = struct.unpack(self.order + "HHQ", entry[:12])
                raw = entry[12:20]
            else:
                tag, kind, n = struct.unpack(self.order + "HHI", entry[:8])
                raw = entry[8:12]
            code = _INT_TYPES.get(kind)
            if tag == _TAG_SUBIFDS and code is not None and top:
                subifds = self._offsets(raw, code, n, where)
            elif tag in _WANTED and code is not None and n >= 1:
                item = struct.calcsize(code)
                if n * item <= self.inline:  # the values sit in the entry itself: the first one is read
                    values[tag] = struct.unpack(self.order + code, raw[:item])[0]
                else:  # stored elsewhere (several values, or a 64-bit value in a classic TIFF): the first one
                    (at,) = struct.unpack(self.order + ("Q" if self.bigtiff else "I"), raw[:self.inline])
                    values[tag] = struct.unpack(self.order + code, self._read(at, item, f"tag {tag} of {where}"))[0]
        if top and where == "IFD 0" and _TAG_NDPI in values and not self.bigtiff:
            # NDPI: classic TIFF entries, but 64-bit offsets to the next directory (low half first, as libtiff
            # reads files under 4 GiB)
            self.ndpi, self.next_fmt = True, "Q"
        next_size = struct.calcsize(self.next_fmt)
        end = offset + count_size + count * self.entry_size
        (nxt,) = struct.unpack(self.order + self.next_fmt, self._read(end, next_size, f"the end of {where}"))
        if _TAG_WIDTH in values and _TAG_LENGTH in values:
            tile = None
            if _TAG_TILE_WIDTH in values or _TAG_TILE_LENGTH in values:
                tile = (values.get(_TAG_TILE_WIDTH, 0), values.get(_TAG_TILE_LENGTH, 0))
            height = values[_TAG_LENGTH]
            self.images.append(TiffImage(
                where=where, width=values[_TAG_WIDTH], height=height, tile=tile,
                rows_per_strip=values.get(_TAG_ROWS_PER_STRIP, height) or height,
                depth=max(1, values.get(_TAG_IMAGE_DEPTH, 1)), tile_depth=max(1, values.get(_TAG_TILE_DEPTH, 1)),
                samples=values.get(_TAG_SAMPLES, 1), compression=values.get(_TAG_COMPRESSION, 1),
                bits=values.get(_TAG_BITS, 1), sample_format=values.get(_TAG_SAMPLE_FORMAT, 1),
                photometric=values.get(_TAG_PHOTOMETRIC, -1),
            ))
        for k, sub in enumerate(subifds):
            if sub:
                self._directory(sub, f"SubIFD {k} of {where}", top=False)
        return nxt

    def _offsets(self, raw: bytes, code: str, n: int, where: str) -> list[int]:
        if n > _MAX_SUBIFDS:
            raise TiffStructureError(f"TIFF directory {where} lists {n} SubIFDs", corrupt=True)
        item = struct.calcsize(code)
        if n * item <= self.inline:
            data = raw[: n * item]
        else:
            at = struct.unpack(self.order + ("Q" if self.bigtiff else "I"), raw[: self.inline])[0]
            data = self._read(at, n * item, f"the SubIFD offsets of {where}")
        return list(struct.unpack(self.order + code * n, data))
