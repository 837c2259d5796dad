"""Slide access: open whole-slide images by content, read RGB regions, pixel size and metadata.

Everything here works in level-0 pixel coordinates and returns ``(h, w, 3)`` ``uint8`` RGB numpy arrays.
"""

from .properties import mpp_from_ome_xml, mpp_from_resolution, objective_from_mpp
from .slide import (
    BACKEND_NAMES,
    DEFAULT_MPP_TOLERANCE,
    Slide,
    check_target_mpp,
    file_fingerprint,
    open_slide,
    slide_id_from_path,
)

__all__ = [
    "BACKEND_NAMES",
    "DEFAULT_MPP_TOLERANCE",
    "Slide",
    "check_target_mpp",
    "file_fingerprint",
    "mpp_from_ome_xml",
    "mpp_from_resolution",
    "objective_from_mpp",
    "open_slide",
    "slide_id_from_path",
]
