"""The pixel budget: refuse decompression bombs before a decoder sees them.

A decompression bomb is a small file whose header claims a huge image: a 2 KB TIFF claiming 10^6 x 10^6 pixels
in 65536 x 65536 tiles makes OpenSlide allocate 16 GiB for its first tile and abort the whole process; a 200-byte
Deflate strip makes tifffile allocate the whole image at once. :func:`check_pixel_budget` reads what the file
claims without decoding anything and raises :class:`~slidestream.errors.SlideTooLargeError` when

- one piece a decoder produces at once (a stored tile or strip of any image of a TIFF-family file, or a whole
  plain PNG/JPEG/BMP image, which the PIL reader holds decoded) has more than ``max_pixels`` pixels, or
- an image claims more than ``max(MAX_SLIDE_PIXELS, max_pixels)`` pixels in all (the largest slides scanned
  today have a few times 10^10 pixels at level 0).

Hamamatsu NDPI stores each JPEG level as one strip with restart markers, which OpenSlide and tifffile decode in
pieces: its JPEG strips are not counted as one piece.

Formats this module cannot read without a decoder (DICOM, MIRAX, VMS …) are opened by OpenSlide only; for them,
and for files that pass only because the budget was raised above the default, :func:`probe_in_child` opens the
file and decodes the first tile of every level in a separate process with a memory limit, so that a native abort
(OpenSlide's allocator aborts instead of failing) ends that process and becomes a
:class:`~slidestream.errors.CorruptSlideError` for one slide instead of ending the batch
(:func:`needs_probe` decides). Validating is the first line because it costs microseconds and says exactly what
the file claims; the child process (a fresh interpreter) only covers what validation cannot, once per file and
process.

Readers are further held to the budget after opening: :meth:`Slide.thumbnail` and the tiler's tissue overview
refuse to read a level larger than ``max_pixels`` (a slide without a pyramid), and so does any single
:meth:`Slide.read_region`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path

from ..errors import CorruptSlideError, SlideTooLargeError
from .tiffdir import TIFF_MAGICS, TiffStructureError, read_tiff_layout

__all__ = ["DEFAULT_MAX_PIXELS", "MAX_SLIDE_PIXELS", "check_max_pixels", "check_pixel_budget", "level_budget_error",
           "needs_probe", "probe_in_child", "probe_memory", "slide_pixel_limit"]

#: Default pixel budget: the most pixels decoded as one piece (a 16384 x 16384 tile or strip, 768 MiB as RGB),
#: and the largest level read whole for a thumbnail or tissue overview.
DEFAULT_MAX_PIXELS = 1 << 28

#: The largest image (all of level 0) accepted whatever ``max_pixels`` is below it: 2^38 pixels, e.g.
#: 524288 x 524288, four times a whole-mount slide scanned at 0.25 µm/px.
MAX_SLIDE_PIXELS = 1 << 38

_NDPI_JPEG = 7
# Memory the probing process may map (its interpreter and OpenSlide need a few hundred MiB).
_PROBE_MEMORY = 4 << 30
_PROBE_TIMEOUT_S = 120.0

_PROBE_CODE = """\
import resource, sys
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import openslide
try:
    slide = openslide.OpenSlide(sys.argv[1])
except openslide.OpenSlideError:
    sys.exit(0)  # refused cleanly: the readers of the parent process say why
for level in range(slide.level_count):
    slide.read_region((0, 0), level, (1, 1))
"""

_probed: dict[tuple, None] = {}
_probed_lock = threading.Lock()


def check_max_pixels(max_pixels: int | None) -> int:
    """``max_pixels`` as an int (None: :data:`DEFAULT_MAX_PIXELS`).

    Raises
    ------
    ConfigError
        When it is not a positive integer.
    """
    from ..errors import ConfigError

    if max_pixels is None:
        return DEFAULT_MAX_PIXELS
    if isinstance(max_pixels, bool):
        raise ConfigError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    try:
        value = int(max_pixels)
    except (TypeError, ValueError):
        raise ConfigError(f"max_pixels must be a positive integer, got {max_pixels!r}") from None
    if value != max_pixels or value < 1:
        raise ConfigError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    return value


def slide_pixel_limit(max_pixels: int) -> int:
    """The most pixels one whole image may claim under the budget ``max_pixels``."""
    return max(MAX_SLIDE_PIXELS, max_pixels)


def _size(w: int, h: int, d: int = 1) -> str:
    return f"{w:,} x {h:,}" + (f" x {d:,}" if d > 1 else "")


def check_pixel_budget(path: str | os.PathLike, max_pixels: int | None = None) -> str:
    """Refuse a file whose headers claim more pixels than the budget allows, decoding nothing.

    Parameters
    ----------
    path : str or os.PathLike
        An existing, readable file.
    max_pixels : int, optional
        The most pixels decoded as one piece (default :data:`DEFAULT_MAX_PIXELS`); images may claim up to
        ``max(MAX_SLIDE_PIXELS, max_pixels)`` in all.

    Returns
    -------
    str
        ``"tiff"`` (every directory read and within budget), ``"image"`` (a plain image PIL identifies, within
        budget), or ``"other"``: not validated here (DICOM, MIRAX, …; see :func:`probe_in_child`), or a TIFF
        whose directories are damaged (the readers report that themselves).

    Raises
    ------
    SlideTooLargeError
        Naming the image, its claimed size and the budget.
    """
    budget = check_max_pixels(max_pixels)
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic in TIFF_MAGICS:
        try:
            layout = read_tiff_layout(path)
        except TiffStructureError:
            return "other"
        limit = slide_pixel_limit(budget)
        for image in layout.images:
            if image.pixels > limit:
                raise SlideTooLargeError(
                    path, f"TIFF image {image.where} claims {_size(image.width, image.height, image.depth)} = "
                          f"{image.pixels:,} pixels, over the limit of {limit:,} pixels",
                    claimed=image.pixels, budget=limit)
            if layout.ndpi and image.tile is None and image.compression == _NDPI_JPEG:
                continue  # decoded restart interval by restart interval, never as one piece
            if image.unit_pixels > budget:
                piece = "tile" if image.tile is not None else "strip"
                raise SlideTooLargeError(
                    path, f"TIFF image {image.where} ({_size(image.width, image.height, image.depth)} px) is stored "
                          f"in {piece}s of {_size(*image.unit)} = {image.unit_pixels:,} pixels, each decoded at "
                          f"once: over the budget of {budget:,} pixels",
                    claimed=image.unit_pixels, budget=budget)
        return "tiff"
    return _check_plain_image(Path(path), budget)


def _check_plain_image(path: Path, budget: int) -> str:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: the budget below decides
            with Image.open(path) as image:  # reads the header only
                width, height = image.size
    except Image.DecompressionBombError as exc:
        raise SlideTooLargeError(
            path, f"PIL refuses to decode the image: {exc}", claimed=0, budget=budget,
            hint="plain images this large cannot be read safely: convert it to a pyramidal TIFF "
                 "(e.g. vips tiffsave in.png out.tif --tile --pyramid --compression jpeg)") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        return "other"
    if width * height > budget:
        raise SlideTooLargeError(
            path, f"the image claims {_size(width, height)} = {width * height:,} pixels, decoded at once: over the "
                  f"budget of {budget:,} pixels", claimed=width * height, budget=budget)
    return "image"


def needs_probe(path: str | os.PathLike, max_pixels: int) -> bool:
    """Check ``path`` against the budget (:func:`check_pixel_budget`) and say whether OpenSlide should first be
    tried on it in a separate process (:func:`probe_in_child`): when its headers could not be validated, or when
    it passes only because ``max_pixels`` was raised above :data:`DEFAULT_MAX_PIXELS` (the user accepts large
    decodes; a native abort must still end only that slide)."""
    if check_pixel_budget(path, max_pixels) == "other":
        return True
    if max_pixels > DEFAULT_MAX_PIXELS:
        try:
            check_pixel_budget(path, DEFAULT_MAX_PIXELS)
        except SlideTooLargeError:
            return True
    return False


def probe_memory(max_pixels: int) -> int:
    """Address space allowed to the probing process: room for a few pieces of ``max_pixels`` RGBA pixels."""
    return max(_PROBE_MEMORY, 4 * max_pixels + (1 << 30))


def level_budget_error(path: str | os.PathLike, level: int, level_dimensions, budget: int,
                       what: str) -> SlideTooLargeError:
    """The error for a level of more than ``budget`` pixels that would be read whole (``what``: what for)."""
    w, h = level_dimensions[level]
    smallest = min(lw * lh for lw, lh in level_dimensions)
    return SlideTooLargeError(
        path, f"level {level} ({_size(w, h)} = {w * h:,} pixels) would be {what}, over the budget of {budget:,} "
              f"pixels (the smallest level has {smallest:,} pixels)",
        hint="the file has no pyramid level small enough: add one (e.g. vips tiffsave in.tif out.tif --tile "
             "--pyramid), or raise --max-pixels (max_pixels=) if this much can be read",
        claimed=w * h, budget=budget)


def probe_in_child(path: str | os.PathLike, *, memory: int = _PROBE_MEMORY, timeout: float = _PROBE_TIMEOUT_S,
                   code: str = _PROBE_CODE) -> None:
    """Open a file with OpenSlide and decode the first tile of each level in a separate Python process.

    A native abort there (OpenSlide's allocator aborts on a failed allocation, e.g. for a tile whose header claims
    gigapixels) ends only that process. Results are remembered per file (path, size, modification time) for the
    life of this process, so a slide is probed once however often it is opened.

    Parameters
    ----------
    path : str or os.PathLike
    memory : int
        Address-space limit of the probing process in bytes: an allocation beyond it fails at once instead of
        swapping.
    timeout : float
        Seconds before the probe counts as hung.
    code : str
        The probe's Python source, run as ``python -c code path memory``.

    Raises
    ------
    CorruptSlideError
        When the probing process crashes, fails or hangs.
    """
    path = Path(path)
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, code)
    with _probed_lock:
        if key in _probed:
            return
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(path), str(int(memory))], capture_output=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise CorruptSlideError(path, f"OpenSlide did not finish decoding the first tile of each level within "
                                      f"{timeout:g} s (tested in a separate process)") from None
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        detail = _last_line(proc.stderr)
        raise CorruptSlideError(
            path, f"OpenSlide crashed ({name}) decoding the first tile of a level, in a separate process limited to "
                  f"{memory / 2**30:g} GiB" + (f": {detail}" if detail else ""),
            hint="the file is damaged, or claims an image too large to decode; this slide is skipped")
    if proc.returncode != 0:
        raise CorruptSlideError(path, "OpenSlide failed decoding the first tile of a level (tested in a separate "
                                      f"process): {_last_line(proc.stderr) or f'exit status {proc.returncode}'}")
    with _probed_lock:
        _probed[key] = None


def _last_line(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""
