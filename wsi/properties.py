"""Pixel size (MPP) and objective power from slide metadata.

Pure functions over strings and numbers, so every rule of the MPP fallback chain can be tested without a file.
The chain itself (which source wins) lives in :func:`slidestream.wsi.slide.open_slide`; this module only says
what each source means.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping

from ..errors import ConfigError

__all__ = [
    "DEFAULT_MPP_TOLERANCE",
    "check_target_mpp",
    "mpp_from_resolution",
    "mpp_from_ome_xml",
    "mpp_from_properties",
    "objective_from_mpp",
    "parse_positive_float",
]

#: Relative slack when matching a target pixel size to a level: 0.499 µm/px serves a 0.5 µm/px request, and a
#: level 1 % coarser than asked still counts as "not coarser".
DEFAULT_MPP_TOLERANCE = 0.01

# Microns per unit of a TIFF ResolutionUnit. "none" (1) is deliberately absent: a resolution without a unit is an
# aspect ratio, not a pixel size, and guessing (ImageJ writes unit=micron in its description, others write 72 dpi)
# would silently feed a wrong scale into tiling.
_MICRONS_PER_RESOLUTION_UNIT = {"inch": 25_400.0, "centimeter": 10_000.0, "cm": 10_000.0}

# OME-XML PhysicalSize units (ome.xsd UnitsLength) we accept, in microns.
_MICRONS_PER_OME_UNIT = {
    "µm": 1.0, "um": 1.0, "micron": 1.0, "\u03bcm": 1.0,  # micro sign and Greek mu are both seen in the wild
    "nm": 1e-3, "Å": 1e-4, "mm": 1e3, "cm": 1e4, "m": 1e6,
}

# Nominal objective magnifications; a magnification derived from the MPP is snapped to one of these.
_STANDARD_MAGNIFICATIONS = (1.0, 1.25, 2.0, 2.5, 4.0, 5.0, 10.0, 20.0, 40.0, 60.0, 63.0, 80.0, 100.0)

# 10x objectives image at about 1 um/px on most scanners (0.5 um/px at 20x, 0.25 at 40x).
_MICRONS_AT_1X = 10.0


def parse_positive_float(value: object) -> float | None:
    """Read a finite positive float from a metadata value, or ``None``.

    Parameters
    ----------
    value : object
        A string such as ``"0.499"``, a number, or ``None``.

    Returns
    -------
    float or None
        ``None`` for missing, unparsable, zero, negative, NaN or infinite values.
    """
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or number <= 0:
        return None
    return number


def _resolution_to_float(value: object) -> float | None:
    # tifffile gives rationals as (numerator, denominator) tuples in some versions, floats in others.
    if isinstance(value, tuple) and len(value) == 2:
        num, den = (parse_positive_float(v) for v in value)
        return None if num is None or den is None else num / den
    return parse_positive_float(value)


def mpp_from_resolution(x_resolution: object, y_resolution: object, unit: object) -> tuple[float, float] | None:
    """Pixel size from TIFF XResolution/YResolution tags.

    Parameters
    ----------
    x_resolution, y_resolution : float, str or (int, int)
        Pixels per `unit`, as stored in the tags (a rational may be given as a ``(numerator, denominator)`` tuple).
    unit : str or int
        The ResolutionUnit tag: ``"inch"``/2, ``"centimeter"``/3 (case-insensitive). ``"none"``/1 or a missing
        unit gives ``None``: a unitless resolution is not a physical pixel size.

    Returns
    -------
    (mpp_x, mpp_y) : tuple of float or None
        Microns per pixel along x and y, or ``None`` when the tags do not define a pixel size.
    """
    if isinstance(unit, int) and not isinstance(unit, bool):
        unit = {2: "inch", 3: "centimeter"}.get(unit)
    if not isinstance(unit, str):
        return None
    microns_per_unit = _MICRONS_PER_RESOLUTION_UNIT.get(unit.strip().lower())
    if microns_per_unit is None:
        return None
    xres, yres = _resolution_to_float(x_resolution), _resolution_to_float(y_resolution)
    if xres is None or yres is None:
        return None
    return microns_per_unit / xres, microns_per_unit / yres


def mpp_from_ome_xml(ome_xml: str | None) -> tuple[float, float] | None:
    """Pixel size of the first image in an OME-XML document.

    Parameters
    ----------
    ome_xml : str or None
        The OME-XML text (``tifffile.TiffFile.ome_metadata``).

    Returns
    -------
    (mpp_x, mpp_y) : tuple of float or None
        Microns per pixel from ``Pixels/@PhysicalSizeX``/``Y`` with their units (default micron), or ``None``
        when absent, unparsable or in an unknown unit.
    """
    if not ome_xml:
        return None
    try:
        root = ET.fromstring(ome_xml)
    except ET.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    sizes = []
    for axis in ("X", "Y"):
        size = parse_positive_float(pixels.get(f"PhysicalSize{axis}"))
        factor = _MICRONS_PER_OME_UNIT.get(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        if size is None or factor is None:
            return None
        sizes.append(size * factor)
    return sizes[0], sizes[1]


def mpp_from_properties(properties: Mapping[str, object], prefix: str) -> tuple[float, float] | None:
    """Pixel size from OpenSlide-style ``<prefix>.mpp-x``/``<prefix>.mpp-y`` properties.

    Parameters
    ----------
    properties : Mapping
        Slide properties (values may be strings or numbers).
    prefix : str
        ``"openslide"`` or ``"tiffslide"``.

    Returns
    -------
    (mpp_x, mpp_y) : tuple of float or None
        When only one axis is given it is used for both (square pixels); ``None`` when neither is usable.
    """
    mpp_x = parse_positive_float(properties.get(f"{prefix}.mpp-x"))
    mpp_y = parse_positive_float(properties.get(f"{prefix}.mpp-y"))
    if mpp_x is None and mpp_y is None:
        return None
    return (mpp_x or mpp_y, mpp_y or mpp_x)  # type: ignore[return-value]


def objective_from_mpp(mpp: float, *, tolerance: float = 0.15) -> float | None:
    """Nominal objective magnification for a pixel size.

    ``10 / mpp`` snapped to the nearest standard magnification (1.25x … 100x) when within `tolerance`, so
    0.499 µm/px gives 20.0, and 0.2456 and 0.226 (the 40x scanners of CAMELYON16) give 40.0; otherwise rounded to
    two significant digits.

    Parameters
    ----------
    mpp : float
        Microns per pixel, > 0.
    tolerance : float
        Largest relative distance to a standard magnification that still snaps to it.

    Returns
    -------
    float or None
        ``None`` when `mpp` is not a finite positive number.
    """
    mpp_value = parse_positive_float(mpp)
    if mpp_value is None:
        return None
    power = _MICRONS_AT_1X / mpp_value
    nearest = min(_STANDARD_MAGNIFICATIONS, key=lambda mag: abs(math.log(power / mag)))
    if abs(power / nearest - 1.0) <= tolerance:
        return nearest
    return float(f"{power:.2g}")


def _check_mpp_value(mpp: object, what: str) -> float:
    value = parse_positive_float(mpp)
    if value is None or isinstance(mpp, str):
        raise ConfigError(f"{what} must be a positive number of microns per pixel (e.g. 0.5), got {mpp!r}")
    return value


def check_target_mpp(
    target_mpp: float,
    slide_mpp: float,
    *,
    tolerance: float = DEFAULT_MPP_TOLERANCE,
    name: str | os.PathLike | None = None,
) -> None:
    """Refuse a target pixel size finer than the slide's level 0: slidestream never upsamples.

    Parameters
    ----------
    target_mpp : float
        Requested pixel size, µm/px.
    slide_mpp : float
        The slide's level-0 pixel size, µm/px.
    tolerance : float
        Relative slack: level 0 is accepted while ``slide_mpp <= target_mpp * (1 + tolerance)``.
    name : str or os.PathLike, optional
        The slide, for the message.

    Raises
    ------
    ConfigError
        When the target is finer than level 0 (beyond the tolerance) or not a positive number.
    """
    target = _check_mpp_value(target_mpp, "the target mpp")
    native = _check_mpp_value(slide_mpp, "the slide mpp")
    if native > target * (1.0 + tolerance):
        where = f"{os.fspath(name)}: " if name is not None else ""
        raise ConfigError(
            f"{where}target pixel size {target:g} µm/px is finer than the slide's level 0 ({native:g} µm/px) and "
            f"slidestream does not upsample: ask for {native / (1.0 + tolerance):.4g} µm/px or coarser, or correct "
            "the slide's pixel size with --mpp if its metadata is wrong"
        )
