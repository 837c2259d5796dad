"""Features of many stores written for other MIL code: HDF5 and ``.pt`` bags (``slidestream export-features``)."""

from __future__ import annotations

import os
from pathlib import Path

from ..models.export import export_features
from .records import SlideOutcome
from .reporting import QuietReporter, Reporter
from .runner import run_per_slide

__all__ = ["export_batch"]


def export_batch(stores: list[Path], encoder_name: str, out_dir: str | os.PathLike, formats: tuple[str, ...], *,
                 layout: str = "flat", reporter: Reporter | None = None) -> list[SlideOutcome]:
    """Export ``features/<encoder_name>`` of every store (see :func:`slidestream.models.export.export_features`);
    each outcome's details name the files written per format."""
    return run_per_slide(
        stores, "export",
        lambda p: {k: str(v) for k, v in export_features(p, encoder_name, out_dir, formats, layout=layout).items()},
        reporter or QuietReporter(), label=lambda p: Path(p).name.removesuffix(".zarr"), path=str)
