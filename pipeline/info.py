"""What the slides of a batch are (``slidestream info``): size, levels, pixel size, vendor; bad files named."""

from __future__ import annotations

from ..errors import SlidestreamError
from ..wsi import open_slide
from .inputs import SlideInput

__all__ = ["describe_slides"]


def describe_slides(inputs: list[SlideInput], *, mpp: float | None = None, backend: str = "auto",
                    max_pixels: int | None = None) -> tuple[list[dict], list[dict]]:
    """Open every slide and describe it (``max_pixels``: the pixel budget of :func:`slidestream.wsi.open_slide`).

    Returns
    -------
    described : list of dict
        :meth:`slidestream.wsi.Slide.describe` of each slide that opened, in input order.
    failed : list of dict
        ``{"path", "error", "type"}`` of each slide that did not, with the reason.
    """
    described, failed = [], []
    for it in inputs:
        try:
            with open_slide(it.path, backend=backend, mpp=mpp, max_pixels=max_pixels) as slide:
                described.append(slide.describe())
        except SlidestreamError as exc:
            failed.append({"path": str(it.path), "error": str(exc), "type": type(exc).__name__})
        except MemoryError:  # a reader that still overreached: one slide's failure, not the listing's
            failed.append({"path": str(it.path), "error": f"{it.path}: ran out of memory reading the file",
                           "type": "MemoryError"})
    return described, failed
