"""Readers behind :class:`slidestream.wsi.slide.Slide`: OpenSlide, tiffslide and PIL, one adapter each.

An adapter only reads: level geometry, raw properties, the pixel size its library knows about, RGB regions and
associated images. Choosing an adapter, the MPP fallback chain and error messages for users are the job of
:mod:`slidestream.wsi.slide`. Adapters refuse a file by raising :class:`BackendRefused`; read errors from the
libraries propagate unchanged and are translated by the caller (who knows the file name and the request).
"""

from __future__ import annotations

import math
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .properties import mpp_from_ome_xml, mpp_from_properties, mpp_from_resolution, parse_positive_float
from .tiffdir import TIFF_MAGICS, TiffStructureError, read_tiff_layout

__all__ = [
    "BackendRefused",
    "SlideBackend",
    "OpenSlideBackend",
    "TiffSlideBackend",
    "PILBackend",
    "BACKENDS",
    "composite_on_white",
    "to_rgb",
    "check_tiff_structure",
    "is_tiff",
]

Bounds = tuple[int, int, int, int]
NativeMPP = tuple[float, float, str]


class BackendRefused(Exception):
    """An adapter cannot read a file. Internal: :func:`open_slide` turns it into a :class:`SlideError`.

    Parameters
    ----------
    reason : str
        What the library said, in a few words.
    corrupt : bool
        True when the file is of a kind the adapter reads but its contents are damaged (truncated, undecodable),
        False when the adapter does not read this kind of file at all.
    generic : bool
        True when the refusal only says "not my kind of file" (e.g. "not a TIFF file"); when several adapters
        refuse, the first refusal that is not generic explains the failure best.
    """

    def __init__(self, reason: str, *, corrupt: bool = False, generic: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.corrupt = corrupt
        self.generic = generic


# --------------------------------------------------------------------------------------------------- pixel helpers


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite straight (non-premultiplied) RGBA over a white background.

    Parameters
    ----------
    rgba : ndarray, shape (H, W, 4), uint8
        Colour and alpha; alpha 0 is fully transparent (OpenSlide uses it outside the scanned area).

    Returns
    -------
    ndarray, shape (H, W, 3), uint8
        ``round(rgb * a/255 + 255 * (1 - a/255))``; opaque pixels are returned unchanged.
    """
    alpha = rgba[..., 3:4]
    rgb = rgba[..., :3]
    if alpha.size and alpha.min() == 255:  # the common case inside tissue: skip the arithmetic
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint32)
    out = (rgb.astype(np.uint32) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def to_rgb(pixels: np.ndarray) -> np.ndarray:
    """Turn a decoded (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 array into (H, W, 3) uint8 RGB.

    Grey is replicated into three channels; alpha is composited on white.
    """
    if pixels.ndim == 2:
        pixels = pixels[..., np.newaxis]
    channels = pixels.shape[-1]
    if channels == 3:
        return np.ascontiguousarray(pixels)
    if channels == 4:
        return composite_on_white(pixels)
    if channels == 1:
        return np.repeat(pixels, 3, axis=-1)
    raise ValueError(f"{channels} channels cannot be shown as RGB")


def read_clipped(
    reader: Callable[[int, int, int, int], np.ndarray],
    level_size: tuple[int, int],
    x: int,
    y: int,
    w: int,
    h: int,
) -> np.ndarray:
    """Read a level-pixel rectangle that may reach outside the level; outside is white.

    Parameters
    ----------
    reader : callable
        ``reader(x0, y0, x1, y1)`` returns the in-bounds level pixels ``[y0:y1, x0:x1]`` as (h, w, C) uint8.
    level_size : (int, int)
        Width and height of the level.
    x, y : int
        Top-left corner in level pixels (may be negative).
    w, h : int
        Size in level pixels.

    Returns
    -------
    ndarray, shape (h, w, 3), uint8
    """
    level_w, level_h = level_size
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, level_w), min(y + h, level_h)
    if x0 == x and y0 == y and x1 == x + w and y1 == y + h:
        return to_rgb(reader(x0, y0, x1, y1))
    out = np.full((h, w, 3), 255, dtype=np.uint8)
    if x1 > x0 and y1 > y0:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = to_rgb(reader(x0, y0, x1, y1))
    return out


# --------------------------------------------------------------------------------------------------- TIFF structure


def is_tiff(path: str | os.PathLike) -> bool:
    """True when the file starts with a classic or BigTIFF header."""
    with open(path, "rb") as fh:
        return fh.read(4) in TIFF_MAGICS


def check_tiff_structure(path: str | os.PathLike) -> int:
    """Walk the chain of TIFF directories (IFDs) and check that it lies inside the file.

    A copy cut short usually keeps a readable first image but loses later directories; tifffile then only logs a
    warning and carries on with what it found, so truncation must be detected here.

    Parameters
    ----------
    path : str or os.PathLike
        A file with a TIFF or BigTIFF header.

    Returns
    -------
    int
        The number of top-level IFDs.

    Raises
    ------
    BackendRefused
        ``corrupt=True`` when a directory or its entries lie beyond the end of the file or the chain loops.
    """
    try:
        return read_tiff_layout(path).ifd_count
    except TiffStructureError as exc:
        raise BackendRefused(exc.reason, corrupt=exc.corrupt) from exc


# --------------------------------------------------------------------------------------------------- adapters


class SlideBackend(ABC):
    """What :class:`Slide` needs from a reader. Coordinates follow OpenSlide: level-0 ``location``, level ``size``."""

    name: str
    vendor: str | None
    properties: dict[str, str]
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    associated_names: tuple[str, ...]

    @abstractmethod
    def native_mpp(self) -> NativeMPP | None:
        """``(mpp_x, mpp_y, source)`` from the file's own metadata, or None."""

    def objective_power(self) -> float | None:
        """Objective magnification stated by the file, or None."""
        return None

    def bounds(self) -> Bounds | None:
        """Level-0 ``(x, y, w, h)`` of the scanned area when the file states one, else None."""
        return None

    @abstractmethod
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """(h, w, 3) uint8 RGB; outside the level is white. Library errors propagate."""

    @abstractmethod
    def read_associated(self, name: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB of a label/macro/thumbnail image."""

    @abstractmethod
    def close(self) -> None:
        """Release file handles; idempotent."""

    def probe(self) -> None:
        """Decode one pixel of the coarsest level so that undecodable files fail at open, not mid-run."""
        self.read_region((0, 0), len(self.level_dimensions) - 1, (1, 1))


def _bounds_from(properties: dict[str, object], prefix: str, dimensions: tuple[int, int]) -> Bounds | None:
    values = [properties.get(f"{prefix}.bounds-{key}") for key in ("x", "y", "width", "height")]
    if all(v in (None, "", "None") for v in values):
        return None
    defaults = (0, 0, dimensions[0], dimensions[1])
    out = []
    for value, default in zip(values, defaults):
        try:
            out.append(int(float(value)) if value not in (None, "", "None") else default)  # type: ignore[arg-type]
        except ValueError:
            out.append(default)
    return out[0], out[1], out[2], out[3]


class OpenSlideBackend(SlideBackend):
    """OpenSlide: SVS, NDPI, MRXS, SCN, BIF, VMS, DICOM WSI, Philips/Ventana TIFF and tiled generic TIFF."""

    name = "openslide"

    def __init__(self, path: Path):
        import openslide  # imported here so that a broken OpenSlide install only disables this backend

        try:
            self._osr = openslide.OpenSlide(os.fspath(path))
        except openslide.OpenSlideUnsupportedFormatError as exc:
            raise BackendRefused("openslide: not a format OpenSlide reads", generic=True) from exc
        except openslide.OpenSlideError as exc:
            # OpenSlide recognised the format but failed to parse it; "Unsupported TIFF compression" and the like
            # are unsupported variants rather than damage.
            raise BackendRefused(f"openslide: {exc}", corrupt="unsupported" not in str(exc).lower()) from exc
        self.properties = dict(self._osr.properties)
        self.vendor = self.properties.get("openslide.vendor")
        self.level_dimensions = tuple((int(w), int(h)) for w, h in self._osr.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._osr.level_downsamples)
        self.associated_names = tuple(self._osr.associated_images.keys())

    def native_mpp(self) -> NativeMPP | None:
        mpp = mpp_from_properties(self.properties, "openslide")
        if mpp is not None:
            return mpp[0], mpp[1], "openslide"
        mpp = mpp_from_resolution(
            self.properties.get("tiff.XResolution"),
            self.properties.get("tiff.YResolution"),
            self.properties.get("tiff.ResolutionUnit"),
        )
        return None if mpp is None else (mpp[0], mpp[1], "tiff-resolution")

    def objective_power(self) -> float | None:
        return parse_positive_float(self.properties.get("openslide.objective-power"))

    def bounds(self) -> Bounds | None:
        return _bounds_from(self.properties, "openslide", self.level_dimensions[0])  # type: ignore[arg-type]

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        # OpenSlide returns straight RGBA (openslide-python un-premultiplies) with alpha 0 outside the slide.
        image = self._osr.read_region(location, level, size)
        lowest_alpha, _ = image.getchannel("A").getextrema()
        if lowest_alpha == 255:  # fully opaque, the usual tile inside tissue: PIL's C conversion is faster
            return np.array(image.convert("RGB"))  # a copy: callers may write into regions
        return composite_on_white(np.asarray(image))

    def read_associated(self, name: str) -> np.ndarray:
        image = self._osr.associated_images[name]
        return to_rgb(np.asarray(image.convert("RGBA") if image.mode != "RGBA" else image))

    def close(self) -> None:
        self._osr.close()


class TiffSlideBackend(SlideBackend):
    """tiffslide (tifffile + imagecodecs): SVS, generic and OME-TIFF including stripped, non-pyramidal files."""

    name = "tiffslide"

    def __init__(self, path: Path):
        import tiffslide

        if not is_tiff(path):
            raise BackendRefused("tiffslide: not a TIFF file", generic=True)
        check_tiff_structure(path)
        self._ts = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tiffslide warns about metadata it skips; not the user's concern
                self._ts = tiffslide.TiffSlide(os.fspath(path))
                raw = dict(self._ts.properties)
                level_dimensions = self._ts.level_dimensions
                level_downsamples = self._ts.level_downsamples
            self._check_pixels(raw)
            self._check_data_inside_file(path)
        except BaseException as exc:
            if self._ts is not None:
                self._ts.close()
            if isinstance(exc, BackendRefused) or not isinstance(exc, Exception):
                raise
            if isinstance(exc, NotImplementedError):  # e.g. "series with axes='SYX' not supported yet"
                raise BackendRefused(f"tiffslide cannot read this pixel layout ({exc})") from exc
            # tifffile raises TiffFileError, ValueError, IndexError … on damaged files
            raise BackendRefused(f"tiffslide: {type(exc).__name__}: {exc}", corrupt=True) from exc
        self.properties = {k: str(v) for k, v in raw.items() if v is not None}
        tf = self._ts.ts_tifffile
        if raw.get("tiffslide.vendor"):
            self.vendor = str(raw["tiffslide.vendor"])
        elif tf.is_ome:
            self.vendor = "ome-tiff"
        else:
            self.vendor = "generic-tiff"
        self._raw = raw
        self.level_dimensions = tuple((int(w), int(h)) for w, h in level_dimensions)
        self.level_downsamples = tuple(float(d) for d in level_downsamples)
        self.associated_names = tuple(self._ts.associated_images.keys())

    def _series(self):  # noqa: ANN202 - tifffile.TiffPageSeries
        return self._ts.ts_tifffile.series[int(self._ts.properties["tiffslide.series-index"])]

    def _check_pixels(self, raw: dict) -> None:
        # Slidestream works on 8-bit brightfield RGB; fluorescence/multiplex channels are not colours.
        series = self._series()
        axes = str(raw.get("tiffslide.series-axes"))
        shape = dict(zip(series.axes, series.shape))
        if axes == "YXS":
            channels = shape.get("S", 1)
        elif axes == "YX":
            channels = 1
        else:
            channels = shape.get("C", shape.get("S", 0))
            raise BackendRefused(f"{channels} channels (axes {axes}), not RGB")
        if channels not in (1, 3, 4):
            raise BackendRefused(f"{channels} channels (axes {axes}), not RGB")
        if series.dtype != np.uint8:
            raise BackendRefused(f"{series.dtype} samples, not 8-bit RGB")

    def _check_data_inside_file(self, path: Path) -> None:
        size = os.path.getsize(path)
        for level in self._series().levels:
            for page in level.pages:
                offsets = getattr(page, "dataoffsets", None)
                counts = getattr(page, "databytecounts", None)
                if not offsets or not counts or len(offsets) != len(counts):
                    continue
                end = int((np.asarray(offsets, dtype=np.uint64) + np.asarray(counts, dtype=np.uint64)).max())
                if end > size:
                    raise BackendRefused(
                        f"truncated: image data ends at byte {end} but the file has {size} bytes", corrupt=True
                    )

    def native_mpp(self) -> NativeMPP | None:
        if self._raw.get("tiffslide.vendor"):
            mpp = mpp_from_properties(self._raw, "tiffslide")
            if mpp is not None:
                return mpp[0], mpp[1], "vendor"
        tf = self._ts.ts_tifffile
        if tf.is_ome:
            mpp = mpp_from_ome_xml(tf.ome_metadata)
            if mpp is not None:
                return mpp[0], mpp[1], "ome"
        tags = self._series().levels[0].keyframe.tags

        def tag(name: str) -> object:
            entry = tags.get(name)
            return None if entry is None else entry.value

        mpp = mpp_from_resolution(tag("XResolution"), tag("YResolution"), tag("ResolutionUnit"))
        return None if mpp is None else (mpp[0], mpp[1], "tiff-resolution")

    def objective_power(self) -> float | None:
        return parse_positive_float(self._raw.get("tiffslide.objective-power"))

    def bounds(self) -> Bounds | None:
        return _bounds_from(self._raw, "tiffslide", self.level_dimensions[0])

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        downsample = self.level_downsamples[level]
        # floor, not tiffslide's int(): int() rounds -0.5 up to 0 and would shift regions left of the slide.
        x = math.floor(location[0] / downsample)
        y = math.floor(location[1] / downsample)

        def reader(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
            # tiffslide maps level-0 to level pixels with int(v / downsample); ceil(x0 * d) lands exactly on x0.
            base = (math.ceil(x0 * downsample), math.ceil(y0 * downsample))
            arr = self._ts.read_region(base, level, (x1 - x0, y1 - y0), as_array=True, padding=False)
            if arr.shape[:2] != (y1 - y0, x1 - x0):
                raise ValueError(f"tiffslide returned {arr.shape[:2]} for a {(y1 - y0, x1 - x0)} region")
            return arr

        return read_clipped(reader, self.level_dimensions[level], x, y, size[0], size[1])

    def read_associated(self, name: str) -> np.ndarray:
        return to_rgb(np.asarray(self._ts.associated_images[name]))

    def close(self) -> None:
        self._ts.close()


class PILBackend(SlideBackend):
    """Plain raster images (PNG, JPEG, BMP, WebP …) as a one-level slide; they carry no microscope pixel size."""

    name = "pil"

    def __init__(self, path: Path):
        from PIL import Image, UnidentifiedImageError

        if is_tiff(path):
            raise BackendRefused("pil: TIFF files are read by openslide or tiffslide", generic=True)
        try:
            with Image.open(path) as image:
                self.vendor = (image.format or "image").lower()
                image.load()
                mode = image.mode
                self.properties = {
                    "pil.format": str(image.format),
                    "pil.mode": mode,
                    "pil.width": str(image.width),
                    "pil.height": str(image.height),
                }
                if mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                    raise BackendRefused(f"{mode} samples, not 8-bit RGB")
                has_alpha = "A" in mode or "transparency" in image.info
                pixels = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
        except BackendRefused:
            raise
        except UnidentifiedImageError as exc:
            raise BackendRefused("pil: not an image format PIL knows", generic=True) from exc
        except Image.DecompressionBombError as exc:
            raise BackendRefused(
                f"pil: {exc}; plain images this large should be converted to a pyramidal TIFF"
            ) from exc
        except (OSError, SyntaxError, ValueError) as exc:  # PIL reports truncated/damaged data as OSError
            raise BackendRefused(f"pil: {exc}", corrupt=True) from exc
        self._pixels = to_rgb(pixels)
        self._pixels.flags.writeable = False
        height, width = self._pixels.shape[:2]
        self.level_dimensions = ((width, height),)
        self.level_downsamples = (1.0,)
        self.associated_names = ()

    def native_mpp(self) -> NativeMPP | None:
        # PNG pHYs / JPEG DPI describe print or screen resolution, never the microscope's: do not use them.
        return None

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        pixels = self._pixels

        def reader(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
            return pixels[y0:y1, x0:x1]

        out = read_clipped(reader, self.level_dimensions[0], location[0], location[1], size[0], size[1])
        # read_clipped returns a view of the cached image when the region is fully inside: hand out a copy.
        return out.copy() if np.shares_memory(out, pixels) else out

    def read_associated(self, name: str) -> np.ndarray:
        raise KeyError(name)

    def close(self) -> None:
        self._pixels = np.zeros((0, 0, 3), np.uint8)


#: Backend name -> adapter class, in the order ``backend="auto"`` tries them.
BACKENDS: dict[str, type[SlideBackend]] = {
    "openslide": OpenSlideBackend,
    "tiffslide": TiffSlideBackend,
    "pil": PILBackend,
}
