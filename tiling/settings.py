"""How tissue is found and which tiles are kept: plain settings, importable without numpy, so that the command line
can show their defaults and choices in ``--help`` without loading the tiler."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..errors import ConfigError

__all__ = ["KEEP_RULES", "TISSUE_METHODS", "TissueConfig"]

#: Threshold methods of :class:`TissueConfig`: name -> what it does.
TISSUE_METHODS = {
    "otsu": "Otsu's threshold on the blurred saturation, never below min_saturation",
    "fixed": "blurred saturation above min_saturation (CLAM's rule, sthresh 8 = 0.031)",
}

#: Tile keep rules of :class:`TilingParams` (``slidestream tile --keep-rule``): name -> the rule, on the tissue mask.
KEEP_RULES = {
    "fraction": "tissue covers at least min_tissue of the tile (any tissue at all when min_tissue is 0)",
    "clam-four-pt": "CLAM's four_pt: one of the 4 points a quarter of the tile in from its corners lies in the "
                    "tissue outline (holes filled), and the tile's centre is not in a hole",
    "any-tissue": "the tile touches tissue at all (TRIDENT's default, min_tissue_proportion 0)",
}


@dataclass(frozen=True)
class TissueConfig:
    """Parameters of :func:`~slidestream.tiling.tissue.segment_tissue` (``slidestream tile --tissue-*``).

    Areas are in µm² and lengths in µm, so the same settings work whatever the thumbnail resolution; ``mpp`` of
    the image is passed to ``segment_tissue``. Invalid values raise :class:`~slidestream.errors.ConfigError`.
    """

    method: str = "otsu"
    """How saturation is thresholded (:data:`TISSUE_METHODS`): ``"otsu"`` per slide, or ``"fixed"``."""
    min_saturation: float = 0.05
    """Saturation threshold (0–1): the floor under Otsu's threshold (so a slide of almost only glass finds no
    tissue), or the threshold itself with ``method="fixed"``."""
    blur_sigma_um: float = 16.0
    """Gaussian blur on saturation before thresholding, in µm."""
    close_um: float = 32.0
    """Radius of the morphological closing, in µm."""
    min_tissue_area_um2: float = 20_000.0
    """Connected tissue components smaller than this are dropped (dust, debris)."""
    min_hole_area_um2: float = 10_000.0
    """Holes smaller than this are filled."""
    keep_holes: bool = True
    """Holes (glass inside the tissue's outline) of at least ``min_hole_area_um2`` stay out of the mask; False
    fills every hole, so holes count as tissue (TRIDENT's default)."""
    pen_filter: bool = True
    """Exclude blue, green and black pen marks."""
    max_brightness: float = 0.92
    """Pixels brighter than this (0–1 value channel) and unsaturated are glass."""
    min_pen_area_um2: float = 2_000.0
    """Ink blobs smaller than this are ignored: single dark nuclei or dye specks are not pen strokes."""
    working_mpp: float = 4.0
    """Resolution (µm/px) at which callers should segment: fine enough for 112 µm tiles, cheap on any slide."""

    def __post_init__(self):
        if self.method not in TISSUE_METHODS:
            raise ConfigError(f"tissue method must be one of {', '.join(TISSUE_METHODS)}, got {self.method!r}")
        for name in ("min_saturation", "max_brightness"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value <= 1):
                raise ConfigError(f"tissue {name} must be in [0, 1], got {value!r}")
        for name in ("blur_sigma_um", "close_um", "min_tissue_area_um2", "min_hole_area_um2", "min_pen_area_um2"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"tissue {name} must be a finite number >= 0, got {value!r}")
        if not (isinstance(self.working_mpp, (int, float)) and math.isfinite(self.working_mpp)
                and self.working_mpp > 0):
            raise ConfigError(f"tissue working_mpp must be positive, got {self.working_mpp!r}")
        for name in ("keep_holes", "pen_filter"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"tissue {name} must be True or False, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return asdict(self)
