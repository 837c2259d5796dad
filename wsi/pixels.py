"""What the samples of a slide file are: formats slidestream cannot analyse are named, not called damaged.

slidestream analyses bright-field slides (H&E, IHC): 8-bit RGB, or 16-bit RGB that OpenSlide scales to 8 bits.
Two kinds of TIFF pass for slides but are not:

- floating-point or signed samples, or more than 16 bits per sample (fluorescence, multiplex, computed maps):
  no reader turns them into colours, and OpenSlide's failure reads like a damaged file. They are refused when the
  slide is opened (:func:`check_pixel_format`, from the TIFF headers alone);
- greyscale images (one sample per pixel, or grey with alpha): they open and read (grey repeated in R, G and B;
  CAMELYON16's tumour masks are such files), but the tissue detector finds tissue by its colour saturation, which a
  grey image has none of, so tiling would keep no tile. :func:`is_greyscale` tells the tiler to refuse them.
"""

from __future__ import annotations

import os

from ..errors import UnsupportedSlideError
from .tiffdir import TIFF_MAGICS, TiffImage, TiffStructureError, read_tiff_layout

__all__ = ["check_pixel_format", "is_greyscale"]

_HINT = ("slidestream analyses bright-field slides with 8-bit (or 16-bit) RGB samples; export the image as an 8-bit "
         "RGB pyramidal TIFF (vips, QuPath, bfconvert) if it is one, otherwise analyse it with another tool")
_GREY_PHOTOMETRIC = (0, 1)  # WhiteIsZero, BlackIsZero


def _level0(path: str | os.PathLike) -> TiffImage | None:
    """The largest image of a TIFF-family file, or None for other files and TIFFs whose headers are damaged
    (the readers report those themselves)."""
    try:
        with open(path, "rb") as fh:
            if fh.read(4) not in TIFF_MAGICS:
                return None
        images = read_tiff_layout(path).images
    except (OSError, TiffStructureError):
        return None
    return max(images, key=lambda im: im.pixels, default=None)


def check_pixel_format(path: str | os.PathLike) -> None:
    """Refuse a TIFF whose level 0 holds floating-point or signed samples, or more than 16 bits per sample.

    Raises
    ------
    UnsupportedSlideError
        Naming the sample format, the image and what slidestream reads.
    """
    image = _level0(path)
    if image is None:
        return
    kind = {2: "signed-integer", 3: "floating-point"}.get(image.sample_format)
    if kind is None and image.bits <= 16:
        return
    what = f"{image.bits}-bit {kind + ' ' if kind else ''}samples"
    raise UnsupportedSlideError(path, f"{what} ({image.samples} per pixel, {image.where}): not a bright-field "
                                      "colour image", hint=_HINT)


def is_greyscale(path: str | os.PathLike, properties: dict | None = None) -> bool:
    """Whether a slide file holds a greyscale image: a TIFF whose level 0 is grey (one sample, or grey with alpha),
    or a plain image PIL reads in a grey mode (``properties``: the slide's, holding ``pil.mode``)."""
    image = _level0(path)
    if image is not None:
        return image.photometric in _GREY_PHOTOMETRIC and image.samples <= 2
    mode = str((properties or {}).get("pil.mode", ""))
    return mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
