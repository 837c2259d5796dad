"""Slide access: open whole-slide images by content, read RGB regions, pixel size and metadata.

Everything here works in level-0 pixel coordinates and returns ``(h, w, 3)`` ``uint8`` RGB numpy arrays.
"""

from .identity import file_fingerprint, slide_id_from_path
from .properties import (DEFAULT_MPP_TOLERANCE, check_target_mpp, mpp_from_ome_xml, mpp_from_resolution,
                         objective_from_mpp)
from .slide import BACKEND_NAMES, Slide, open_slide

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
