"""Features of many stores written for other MIL code: HDF5 and ``.pt`` bags (``slidestream export-features``)."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from ..fileio import atomic_write
from ..models.export import export_features
from .records import SlideOutcome
from .reporting import QuietReporter, Reporter
from .runner import run_per_slide

__all__ = ["export_batch", "write_slide_ids_csv"]


def write_slide_ids_csv(path: str | os.PathLike, slide_ids: list[str]) -> Path:
    """``slide_id`` CSV for CLAM's ``extract_features_fp.py --csv_path``: the ids already listed there plus these.

    Ids are kept in first-seen order, so exporting a cohort in several runs into one folder lists every slide.
    """
    path = Path(path)
    ids: list[str] = []
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            ids = [row["slide_id"] for row in csv.DictReader(f) if row.get("slide_id")]
    ids = list(dict.fromkeys([*ids, *slide_ids]))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["slide_id"])
    w.writerows([i] for i in ids)
    return atomic_write(path, buf.getvalue())


def export_batch(stores: list[Path], encoder_name: str, out_dir: str | os.PathLike, formats: tuple[str, ...], *,
                 layout: str = "flat", reporter: Reporter | None = None) -> list[SlideOutcome]:
    """Export ``features/<encoder_name>`` of every store (see :func:`slidestream.models.export.export_features`);
    each outcome's details name the files written per format. With ``layout="clam"`` the exported slides are also
    listed in ``<out_dir>/slide_ids.csv``, the ``--csv_path`` of CLAM's ``extract_features_fp.py``."""
    outcomes = run_per_slide(
        stores, "export",
        lambda p: {k: str(v) for k, v in export_features(p, encoder_name, out_dir, formats, layout=layout).items()},
        reporter or QuietReporter(), label=lambda p: Path(p).name.removesuffix(".zarr"), path=str)
    done = [o.slide_id for o in outcomes if o.status != "failed"]
    if layout == "clam" and done:
        write_slide_ids_csv(Path(out_dir) / "slide_ids.csv", done)
    return outcomes
