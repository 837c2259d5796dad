"""slidestream: whole-slide-image analysis for computational pathology.

Stages (each a subpackage, dependencies point one way)::

    wsi -> tiling -> stain -> models -> mil -> cli

The per-slide Zarr store written by :mod:`slidestream.tiling` is the one data contract between them.
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("slidestream")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
