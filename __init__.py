"""slidestream: whole-slide-image analysis for computational pathology.

Stages (each a subpackage, dependencies point one way)::

    wsi -> tiling -> stain -> models -> mil -> cli

The per-slide Zarr store written by :mod:`slidestream.tiling` is the one data contract between them.
"""

# The one place the version is written (pyproject.toml reads it from here). A literal rather than an
# importlib.metadata lookup, whose import every `slidestream` command would pay at start-up.
__version__ = "0.1.0"

__all__ = ["__version__"]
