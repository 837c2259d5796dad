"""Open a whole-slide image and read RGB regions, pixel size and metadata from it.

:func:`open_slide` picks a reader by the file's content and returns a :class:`Slide`. Every coordinate is a
level-0 pixel ``location = (x, y)``; every ``size = (w, h)`` is in pixels of the level read. Pixels come back as
``(h, w, 3)`` ``uint8`` RGB numpy arrays, transparent areas composited on white.

Reader choice (``backend="auto"``), first that opens the file and decodes a pixel wins:

1. ``openslide`` — SVS, NDPI, MRXS, SCN, DICOM WSI, Philips/Ventana TIFF, tiled generic TIFF.
2. ``tiffslide`` — what OpenSlide refuses: stripped or OME-TIFF, 8-bit grey/RGB/RGBA only.
3. ``pil`` — plain PNG/JPEG/BMP … images as a one-level slide. They have no microscope pixel size, so
   ``mpp`` must be given to :func:`open_slide` before anything that needs one (tiling) can use them.

Files with channels that are not colours (e.g. a 2-channel fluorescence OME-TIFF) are refused with
:class:`~slidestream.errors.UnsupportedSlideError`: no conversion to RGB is guessed.

Pixel size (MPP, µm/px) — the first source that gives a finite positive value wins, and
:attr:`Slide.mpp_source` names it:

1. ``"override"`` — ``open_slide(..., mpp=…)`` (``--mpp`` on the command line), for files with wrong or no
   metadata;
2. ``"openslide"`` — OpenSlide's ``openslide.mpp-x``/``-y`` (vendor metadata, or resolution tags OpenSlide
   interpreted itself);
3. ``"vendor"`` — vendor metadata parsed by tiffslide (e.g. Aperio ``MPP = 0.499``);
4. ``"ome"`` — OME-XML ``PhysicalSizeX``/``Y`` with their units;
5. ``"tiff-resolution"`` — TIFF ``XResolution``/``YResolution`` with ``ResolutionUnit`` inch or centimetre
   (no unit means no pixel size);
6. none — :attr:`Slide.mpp` raises :class:`~slidestream.errors.MissingMPPError` telling the user to pass
   ``--mpp``.
"""

from __future__ import annotations

import math
import operator
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from ..errors import ConfigError, CorruptSlideError, MissingMPPError, SlideError, UnsupportedSlideError
from ._backends import BACKENDS, BackendRefused, SlideBackend
from .budget import check_max_pixels, level_budget_error, needs_probe, probe_in_child, probe_memory
from .direct import DirectUnsupported, with_direct_reader
from .identity import file_fingerprint, slide_id_from_path
from .pixels import check_pixel_format
from .properties import (DEFAULT_MPP_TOLERANCE, _check_mpp_value, check_target_mpp, objective_from_mpp,
                         parse_positive_float)

__all__ = ["BACKEND_NAMES", "Slide", "open_slide"]

#: Accepted values of ``open_slide(backend=...)``.
BACKEND_NAMES = ("auto", *BACKENDS)

# Upper bound of decoded pixels held at once while a thumbnail is built band by band.
_THUMBNAIL_BAND_BYTES = 64 << 20


# --------------------------------------------------------------------------------------------------- Slide


class _AssociatedImages(Mapping[str, np.ndarray]):
    """Label, macro, thumbnail … decoded on first access and cached (read-only arrays)."""

    def __init__(self, slide: Slide, names: tuple[str, ...]):
        self._slide = slide
        self._names = names
        self._cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._names:
            raise KeyError(name)
        with self._lock:
            if name not in self._cache:
                image = self._slide._call_backend(
                    lambda: self._slide._backend.read_associated(name), f"associated image {name!r}"
                )
                image.flags.writeable = False
                self._cache[name] = image
            return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"<associated images {list(self._names)} of {self._slide.path.name}>"


class Slide:
    """An open whole-slide image. Create it with :func:`open_slide`; use it as a context manager or ``close()``.

    Geometry follows OpenSlide: ``level_dimensions[i] = (w, h)`` of level ``i``; ``level_downsamples[i]`` is
    the (possibly non-integer) factor between level 0 and level ``i``. Reading is thread-safe.
    """

    def __init__(self, path: Path, backend: SlideBackend, *, mpp: float | None = None, max_pixels: int | None = None):
        self._path = path
        self._backend = backend
        self._closed = False
        self._max_pixels = check_max_pixels(max_pixels)
        self._properties = MappingProxyType(dict(backend.properties))
        self._level_dimensions = tuple(backend.level_dimensions)
        self._level_downsamples = tuple(backend.level_downsamples)
        if mpp is not None:
            self._mpp_xy: tuple[float, float] | None = (mpp, mpp)
            self._mpp_source: str | None = "override"
        else:
            native = backend.native_mpp()
            self._mpp_xy = None if native is None else (native[0], native[1])
            self._mpp_source = None if native is None else native[2]
        self._associated = _AssociatedImages(self, tuple(backend.associated_names))
        bounds = backend.bounds()
        width, height = self._level_dimensions[0]
        self._bounds = bounds if bounds is not None else (0, 0, width, height)

    # ---------------------------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Release the file. Further reads raise :class:`SlideError`; closing twice is allowed."""
        if not self._closed:
            self._closed = True
            self._backend.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Pickling reopens the file by path in the receiving process (dask workers), with the same reader and
        # override; file handles themselves cannot travel.
        override = self._mpp_xy[0] if self._mpp_source == "override" and self._mpp_xy else None
        return open_slide, (self._path, self._backend.name, override, "auto" if self.direct_levels else False,
                            self._max_pixels)

    def __repr__(self) -> str:
        w, h = self.dimensions
        mpp = f"{self.mpp:g}" if self.has_mpp else "unknown"
        state = ", closed" if self._closed else ""
        return (
            f"Slide({str(self._path)!r}, backend={self.backend!r}, vendor={self.vendor!r}, {w}x{h}, "
            f"levels={self.level_count}, mpp={mpp}{state})"
        )

    # ---------------------------------------------------------------------------------------------- facts

    @property
    def path(self) -> Path:
        """Absolute path of the slide file."""
        return self._path

    @property
    def backend(self) -> str:
        """The reader actually used: ``"openslide"``, ``"tiffslide"`` or ``"pil"``."""
        return self._backend.name

    @property
    def max_pixels(self) -> int:
        """The pixel budget this slide was opened with (:mod:`slidestream.wsi.budget`): the most pixels one
        :meth:`read_region` returns, and the largest level :meth:`thumbnail` reads."""
        return self._max_pixels

    def check_level_budget(self, level: int, what: str = "read whole") -> None:
        """Raise :class:`SlideTooLargeError` when `level` has more pixels than :attr:`max_pixels` (it would be
        `what`, e.g. read whole for an overview, which a slide without a pyramid cannot afford)."""
        w, h = self._level_dimensions[self._check_level(level)]
        if w * h > self._max_pixels:
            raise level_budget_error(self._path, level, self._level_dimensions, self._max_pixels, what)

    @property
    def direct_levels(self) -> tuple[int, ...]:
        """Levels whose regions are decoded straight from the file's stored tiles (see
        :mod:`slidestream.wsi.direct`); the others are read by :attr:`backend`. Empty when nothing is."""
        return tuple(getattr(self._backend, "direct_levels", ()))

    @property
    def vendor(self) -> str | None:
        """Format family, e.g. ``"aperio"``, ``"generic-tiff"``, ``"dicom"``, ``"ome-tiff"``, ``"png"``."""
        return self._backend.vendor

    @property
    def properties(self) -> Mapping[str, str]:
        """Read-only metadata of the reader (``openslide.*``, ``tiffslide.*``, ``tiff.*``, ``aperio.*`` …)."""
        return self._properties

    @property
    def level_count(self) -> int:
        return len(self._level_dimensions)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """``(w, h)`` in pixels of each level, level 0 first."""
        return self._level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Level-0 pixels per level pixel, per level (1.0 first; often non-integer, e.g. 4.016)."""
        return self._level_downsamples

    @property
    def dimensions(self) -> tuple[int, int]:
        """``(w, h)`` of level 0 in pixels."""
        return self._level_dimensions[0]

    @property
    def has_mpp(self) -> bool:
        """True when a pixel size is known (from metadata or the override)."""
        return self._mpp_xy is not None

    @property
    def mpp_source(self) -> str | None:
        """Where :attr:`mpp` comes from: ``"override"``, ``"openslide"``, ``"vendor"``, ``"ome"``,
        ``"tiff-resolution"``, or ``None`` when unknown (see the module docstring for the order)."""
        return self._mpp_source

    @property
    def mpp_xy(self) -> tuple[float, float]:
        """Level-0 pixel size ``(x, y)`` in µm/px.

        Raises
        ------
        MissingMPPError
            When the file carries no pixel size and none was given to :func:`open_slide`.
        """
        if self._mpp_xy is None:
            raise MissingMPPError(self._path, "the file states no pixel size (microns per pixel)")
        return self._mpp_xy

    @property
    def mpp(self) -> float:
        """Level-0 pixel size in µm/px, the mean of x and y.

        Raises
        ------
        MissingMPPError
            When the file carries no pixel size and none was given to :func:`open_slide`.
        """
        mpp_x, mpp_y = self.mpp_xy
        return (mpp_x + mpp_y) / 2.0

    @property
    def objective_power(self) -> float | None:
        """Objective magnification: as stated by the file, else derived from :attr:`mpp` (0.499 → 20.0),
        else ``None``."""
        stated = self._backend.objective_power()
        if stated is not None:
            return stated
        return objective_from_mpp(self.mpp) if self.has_mpp else None

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """Level-0 ``(x, y, w, h)`` of the scanned area (MRXS and some others state it), else the whole level 0."""
        return self._bounds

    @property
    def bounds_offset(self) -> tuple[int, int]:
        """Level-0 ``(x, y)`` of the scanned area's top-left corner."""
        return self._bounds[0], self._bounds[1]

    @property
    def associated_images(self) -> Mapping[str, np.ndarray]:
        """Name (``"label"``, ``"macro"``, ``"thumbnail"`` …) → ``(H, W, 3)`` ``uint8`` RGB, decoded lazily."""
        return self._associated

    def level_mpp(self, level: int) -> float:
        """Pixel size of `level` in µm/px (level-0 :attr:`mpp` times its downsample).

        Raises
        ------
        ConfigError
            When `level` does not exist.
        MissingMPPError
            When the pixel size is unknown.
        """
        level = self._check_level(level)
        return self.mpp * self._level_downsamples[level]

    def level_for_downsample(self, downsample: float, *, tolerance: float = DEFAULT_MPP_TOLERANCE) -> int:
        """Coarsest level whose downsample is at most `downsample` (times ``1 + tolerance``); 0 if none is.

        Parameters
        ----------
        downsample : float
            Wanted level-0 pixels per output pixel, > 0.
        tolerance : float
            Relative slack, so a level at 4.016 serves a request for 4.

        Returns
        -------
        int
            A level that needs no upsampling to reach `downsample` (except level 0 for ``downsample < 1``).
        """
        wanted = parse_positive_float(downsample)
        if wanted is None:
            raise ConfigError(f"downsample must be a positive number, got {downsample!r}")
        limit = wanted * (1.0 + tolerance)
        best = 0
        for level, level_downsample in enumerate(self._level_downsamples):
            if level_downsample <= limit and level_downsample >= self._level_downsamples[best]:
                best = level
        return best

    def level_for_mpp(self, mpp: float, *, tolerance: float = DEFAULT_MPP_TOLERANCE) -> int:
        """Coarsest level whose pixel size is at most `mpp` (with `tolerance`), so reading never upsamples.

        A target finer than level 0 returns 0; callers that must not upsample check it first with
        :meth:`check_target_mpp`.

        Parameters
        ----------
        mpp : float
            Target pixel size, µm/px.
        tolerance : float
            Relative slack (0.01: a level at 0.505 µm/px serves a 0.5 µm/px target).

        Raises
        ------
        ConfigError
            When `mpp` is not a positive number.
        MissingMPPError
            When the slide's pixel size is unknown.
        """
        target = _check_mpp_value(mpp, "the target mpp")
        return self.level_for_downsample(target / self.mpp, tolerance=tolerance)

    def check_target_mpp(self, mpp: float, *, tolerance: float = DEFAULT_MPP_TOLERANCE) -> None:
        """Raise :class:`ConfigError` when `mpp` is finer than level 0; see :func:`check_target_mpp`."""
        check_target_mpp(mpp, self.mpp, tolerance=tolerance, name=self._path)

    # ---------------------------------------------------------------------------------------------- pixels

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Read a rectangle of a level as RGB.

        Parameters
        ----------
        location : (int, int)
            ``(x, y)`` of the top-left corner in level-0 pixels; may be negative or beyond the slide.
        level : int
            Level to read, ``0 <= level < level_count``.
        size : (int, int)
            ``(w, h)`` in pixels of `level`, each >= 0.

        Returns
        -------
        ndarray, shape (h, w, 3), uint8
            RGB; areas outside the slide or transparent in the file are white. At levels with a non-integer
            downsample OpenSlide positions the region with sub-pixel precision (``location / downsample``)
            while tiffslide and PIL start at ``floor(location / downsample)``.

        Raises
        ------
        ConfigError
            For a bad `location`, `level` or `size`.
        CorruptSlideError
            When the pixels cannot be decoded.
        SlideError
            When the slide is closed.
        """
        x, y = self._check_pair(location, "location")
        w, h = self._check_pair(size, "size")
        if w < 0 or h < 0:
            raise ConfigError(f"size must be (w, h) with w, h >= 0, got {size!r}")
        level = self._check_level(level)
        if w == 0 or h == 0:
            self._check_open()
            return np.zeros((h, w, 3), dtype=np.uint8)
        if w * h > self._max_pixels:
            raise ConfigError(f"{self._path}: a region of {w} x {h} pixels is over the pixel budget of "
                              f"{self._max_pixels:,} (max_pixels): read it in pieces")
        what = f"region location=({x}, {y}) level={level} size=({w}, {h})"
        region = self._call_backend(lambda: self._backend.read_region((x, y), level, (w, h)), what)
        if region.shape != (h, w, 3) or region.dtype != np.uint8:
            raise CorruptSlideError(self._path, f"{what}: the reader returned {region.shape} {region.dtype}")
        return region

    def overview_level(self, max_size: int) -> tuple[int, tuple[int, int]]:
        """Size of an overview no larger than `max_size` on its longer side, and the coarsest level at least
        that large (the one to read it from without upsampling).

        Returns
        -------
        level : int
        size : (w, h)
            ``max(w, h) == min(max_size, max(level-0 w, h))``, aspect ratio kept.
        """
        width, height = self.dimensions
        scale = min(1.0, max_size / max(width, height))
        out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
        level = 0
        for candidate, (level_w, level_h) in enumerate(self._level_dimensions):
            if level_w >= out_w and level_h >= out_h and level_w <= self._level_dimensions[level][0]:
                level = candidate
        return level, (out_w, out_h)

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """Whole-slide overview no larger than `max_size` on its longer side, aspect ratio kept.

        Reads the coarsest level that is still at least as large as the thumbnail (never upsamples; a slide
        smaller than `max_size` comes back at level-0 size), band by band so memory stays bounded on slides
        without a pyramid, and area-averages it down.

        Parameters
        ----------
        max_size : int
            Longest side of the result in pixels, >= 1.

        Returns
        -------
        ndarray, shape (h, w, 3), uint8
            ``max(h, w) == min(max_size, max(level-0 w, h))``. Raises :class:`SlideTooLargeError` when that level
            has more than :attr:`max_pixels` pixels (no pyramid level small enough).
        """
        try:
            max_side = operator.index(max_size)
        except TypeError:
            raise ConfigError(f"max_size must be a positive integer, got {max_size!r}") from None
        if max_side < 1:
            raise ConfigError(f"max_size must be a positive integer, got {max_size!r}")
        level, (out_w, out_h) = self.overview_level(max_side)
        self.check_level_budget(level, f"read for a {out_w} x {out_h} thumbnail")
        level_w, level_h = self._level_dimensions[level]
        downsample = self._level_downsamples[level]
        if (level_w, level_h) == (out_w, out_h):
            return self.read_region((0, 0), level, (level_w, level_h))
        # Output pixel (i, j) averages level rows [i*H//h, (i+1)*H//h) and columns [j*W//w, (j+1)*W//w): integer
        # bin edges, so the result does not depend on how the level is cut into bands.
        row_edges = np.arange(out_h + 1, dtype=np.int64) * level_h // out_h
        col_edges = np.arange(out_w + 1, dtype=np.int64) * level_w // out_w
        col_counts = np.diff(col_edges)
        out_rows_per_band = max(1, int(_THUMBNAIL_BAND_BYTES / (3 * level_w * level_h / out_h)))
        out = np.empty((out_h, out_w, 3), dtype=np.uint8)
        for out_y0 in range(0, out_h, out_rows_per_band):
            out_y1 = min(out_h, out_y0 + out_rows_per_band)
            src_y0, src_y1 = int(row_edges[out_y0]), int(row_edges[out_y1])
            # ceil keeps tiffslide's int(y / downsample) on src_y0; OpenSlide sees at most a sub-pixel shift.
            band = self.read_region((0, math.ceil(src_y0 * downsample)), level, (level_w, src_y1 - src_y0))
            sums = np.add.reduceat(band, row_edges[out_y0:out_y1] - src_y0, axis=0, dtype=np.uint32)
            sums = np.add.reduceat(sums, col_edges[:-1], axis=1, dtype=np.uint32)
            counts = np.diff(row_edges[out_y0 : out_y1 + 1])[:, None, None] * col_counts[None, :, None]
            out[out_y0:out_y1] = (sums + counts // 2) // counts
        return out

    # ---------------------------------------------------------------------------------------------- identity

    def fingerprint(self) -> str:
        """Cheap content fingerprint of the slide file (see :func:`file_fingerprint`)."""
        try:
            return file_fingerprint(self._path)
        except OSError as exc:
            raise SlideError(self._path, f"cannot read the file for its fingerprint: {exc.strerror or exc}") from exc

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable facts about the slide, for ``slidestream info`` and store attributes.

        Returns
        -------
        dict
            ``path``, ``slide_id``, ``file_size`` (bytes), ``backend``, ``vendor``, ``dimensions`` [w, h],
            ``level_count``, ``levels`` (list of ``{level, dimensions, downsample, mpp}``), ``mpp`` (µm/px or
            None), ``mpp_xy``, ``mpp_source``, ``objective_power``, ``bounds`` [x, y, w, h],
            ``associated_images`` (names).
        """
        mpp = self.mpp if self.has_mpp else None
        try:
            file_size: int | None = self._path.stat().st_size
        except OSError:
            file_size = None
        return {
            "path": str(self._path),
            "slide_id": slide_id_from_path(self._path),
            "file_size": file_size,
            "backend": self.backend,
            "vendor": self.vendor,
            "dimensions": list(self.dimensions),
            "level_count": self.level_count,
            "levels": [
                {
                    "level": level,
                    "dimensions": list(dims),
                    "downsample": downsample,
                    "mpp": None if mpp is None else mpp * downsample,
                }
                for level, (dims, downsample) in enumerate(zip(self._level_dimensions, self._level_downsamples))
            ],
            "mpp": mpp,
            "mpp_xy": None if self._mpp_xy is None else list(self._mpp_xy),
            "mpp_source": self.mpp_source,
            "objective_power": self.objective_power,
            "bounds": list(self.bounds),
            "associated_images": list(self._associated),
        }

    # ---------------------------------------------------------------------------------------------- helpers

    def _check_open(self) -> None:
        if self._closed:
            raise SlideError(self._path, "the slide is closed", hint="open it again with open_slide()")

    def _check_level(self, level: int) -> int:
        try:
            index = operator.index(level)
        except TypeError:
            raise ConfigError(f"level must be an integer, got {level!r}") from None
        if not 0 <= index < self.level_count:
            raise ConfigError(
                f"{self._path}: level {index} does not exist; this slide has levels 0..{self.level_count - 1}"
            )
        return index

    @staticmethod
    def _check_pair(pair: tuple[int, int], what: str) -> tuple[int, int]:
        try:
            first, second = pair
            return operator.index(first), operator.index(second)
        except (TypeError, ValueError):
            raise ConfigError(f"{what} must be a pair of integers, got {pair!r}") from None

    def _call_backend(self, read: Any, what: str) -> Any:
        self._check_open()
        try:
            return read()
        except MemoryError:
            raise
        except Exception as exc:
            if self._closed:  # closed by another thread while reading
                raise SlideError(self._path, "the slide was closed while reading") from exc
            raise CorruptSlideError(self._path, f"cannot decode {what}: {type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------------------------------- open_slide


def _check_path(path: str | os.PathLike) -> Path:
    try:
        resolved = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    except TypeError:
        raise ConfigError(f"a slide path must be a str or os.PathLike, got {type(path).__name__}") from None
    if not resolved.exists():
        raise SlideError(resolved, "no such file", hint="check the path, its spelling and that the drive is mounted")
    if resolved.is_dir():
        raise UnsupportedSlideError(
            resolved,
            "is a directory, not a slide file",
            hint="pass the slide file itself: for DICOM one .dcm file of the series, for MIRAX the .mrxs file",
        )
    if not resolved.is_file():
        raise UnsupportedSlideError(resolved, "is not a regular file")
    try:
        with open(resolved, "rb") as fh:
            empty = fh.read(1) == b""
    except OSError as exc:
        reason = f"cannot read the file: {exc.strerror or exc}"
        raise SlideError(resolved, reason, hint="check its permissions") from exc
    if empty:
        raise CorruptSlideError(resolved, "empty file (0 bytes)")
    return resolved


def _refusal_error(path: Path, refusals: list[BackendRefused], backend: str) -> SlideError:
    specific = [r for r in refusals if not r.generic]
    if not specific:
        if backend == "auto":
            reason = "unknown format: not a slide OpenSlide or tiffslide reads, nor a plain image"
        else:
            reason = refusals[0].reason
        hint = None if backend == "auto" else "try backend='auto'"
        return UnsupportedSlideError(path, reason, hint=hint)
    # The first reader that recognised the file (in the auto order) explains the failure best.
    primary = specific[0]
    if primary.corrupt:
        return CorruptSlideError(path, primary.reason)
    return UnsupportedSlideError(path, primary.reason)


def open_slide(
    path: str | os.PathLike, backend: str = "auto", mpp: float | None = None, direct: bool | str = "auto",
    max_pixels: int | None = None,
) -> Slide:
    """Open a whole-slide image (or a plain image) for reading.

    Parameters
    ----------
    path : str or os.PathLike
        The slide file (for DICOM any ``.dcm`` of the series; for MIRAX the ``.mrxs``).
    backend : {"auto", "openslide", "tiffslide", "pil"}
        Reader. ``"auto"`` tries them in that order and keeps the first that opens the file and decodes one
        pixel of its coarsest level, so undecodable files fail here rather than in the middle of a run.
    mpp : float, optional
        Level-0 pixel size in µm/px. When given it wins over any metadata (``mpp_source == "override"``); use it
        for files with no or wrong pixel size.
    direct : {"auto", True, False}
        Decode the stored tiles of TIFF-family slides (SVS, generic tiled TIFF; JPEG, LZW, Deflate, Zstandard,
        WebP, JPEG 2000 or raw RGB(A)) directly instead of going through `backend` for pixels
        (:mod:`slidestream.wsi.direct`, several times faster);
        regions are the same within decoder rounding. ``"auto"`` does so where the file allows it,
        ``True`` refuses files of which a level cannot be read directly, ``False`` never does.
        :attr:`Slide.direct_levels` tells which levels are.
    max_pixels : int, optional
        Pixel budget (default :data:`~slidestream.wsi.budget.DEFAULT_MAX_PIXELS`, 2^28): files that claim a tile,
        strip or plain image of more pixels (or an image of more than ``max(2^38, max_pixels)``) are refused
        before anything is decoded, and thumbnails refuse levels larger than it (:mod:`slidestream.wsi.budget`).
        Formats whose headers are not read here (DICOM, MIRAX …), and files that pass only a raised budget, are
        first probed in a separate process.

    Returns
    -------
    Slide
        Open slide; close it or use ``with open_slide(...) as slide:``.

    Raises
    ------
    SlideError
        The path does not exist or cannot be read.
    UnsupportedSlideError
        A directory, or a format/pixel layout no reader supports (e.g. a 2-channel OME-TIFF: "2 channels …,
        not RGB"; a TIFF of floating-point samples: "32-bit floating-point samples …").
    CorruptSlideError
        An empty, truncated or undecodable file, or one that crashed OpenSlide in the probing process.
    SlideTooLargeError
        The file claims more pixels than `max_pixels` allows.
    ConfigError
        An unknown `backend` or `direct`, a non-positive `mpp` or `max_pixels`.

    Examples
    --------
    >>> with open_slide("CMU-1-Small-Region.svs") as slide:  # doctest: +SKIP
    ...     tile = slide.read_region((1000, 1000), 0, (224, 224))
    ...     slide.mpp, slide.objective_power
    (0.499, 20.0)
    """
    if backend not in BACKEND_NAMES:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKEND_NAMES)}")
    if direct != "auto" and not isinstance(direct, bool):
        raise ConfigError(f"direct must be 'auto', True or False, got {direct!r}")
    override = None if mpp is None else _check_mpp_value(mpp, "mpp")
    budget = check_max_pixels(max_pixels)
    resolved = _check_path(path)
    check_pixel_format(resolved)  # float / signed / >16-bit samples: named, where a reader would call them damaged
    names = list(BACKENDS) if backend == "auto" else [backend]
    if "openslide" in names and needs_probe(resolved, budget):
        probe_in_child(resolved, memory=probe_memory(budget))
    refusals: list[BackendRefused] = []
    for name in names:
        try:
            adapter = BACKENDS[name](resolved)
        except BackendRefused as refusal:
            refusals.append(refusal)
            continue
        except MemoryError:
            raise
        except Exception as exc:  # a library failing in a way its adapter did not foresee: still the file's fault
            refusals.append(BackendRefused(f"{name}: {type(exc).__name__}: {exc}", corrupt=True))
            continue
        try:
            adapter.probe()
        except MemoryError:
            adapter.close()
            raise
        except Exception as exc:
            adapter.close()
            refusals.append(BackendRefused(f"{name} cannot decode pixels: {type(exc).__name__}: {exc}", corrupt=True))
            continue
        # Fast path (wsi/direct.py): decode the file's stored tiles ourselves where its layout allows.
        try:
            adapter = with_direct_reader(adapter, resolved, direct)
        except DirectUnsupported as exc:
            adapter.close()
            raise UnsupportedSlideError(
                resolved, f"its tiles cannot be read directly: {exc.reason}", hint="open it with direct='auto'"
            ) from exc
        except MemoryError:
            adapter.close()
            raise
        try:
            return Slide(resolved, adapter, mpp=override, max_pixels=budget)
        except MemoryError:
            adapter.close()
            raise
        except Exception as exc:  # metadata the reader exposes but cannot interpret
            adapter.close()
            reason = f"{name} cannot read the metadata: {type(exc).__name__}: {exc}"
            refusals.append(BackendRefused(reason, corrupt=True))
    raise _refusal_error(resolved, refusals, backend)
