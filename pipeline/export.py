"""Features of many stores written for other MIL code: HDF5 and ``.pt`` bags (``slidestream export-features``)."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from ..fileio import OutputGuard, atomic_write, output_folder
from ..models.export import export_features, export_paths
from .records import SlideOutcome
from .reporting import QuietReporter, Reporter
from .runner import run_per_slide

__all__ = ["export_batch", "write_slide_ids_csv"]


def write_slide_ids_csv(path: str | os.PathLike, slide_ids: list[str], *, guard: OutputGuard | None = None) -> Path:
    """``slide_id`` CSV for CLAM's ``extract_features_fp.py --csv_path``: the ids already listed there plus these.

    Ids are kept in first-seen order, so exporting a cohort in several runs into one folder lists every slide.
    ``guard`` (default: no ``overwrite``) refuses to replace such a file slidestream did not write.
    """
    path = (guard or OutputGuard()).check(path)
    ids: list[str] = []
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            ids = [row["slide_id"] for row in csv.DictReader(f) if row.get("slide_id")]
    ids = list(dict.fromkeys([*ids, *slide_ids]))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["slide_id"])
    w.writerows([i] for i in ids)
    atomic_write(path, buf.getvalue())
    (guard or OutputGuard()).record(path)
    return path


def export_batch(stores: list[Path], encoder_name: str, out_dir: str | os.PathLike, formats: tuple[str, ...], *,
                 layout: str = "flat", reporter: Reporter | None = None, overwrite: bool = False
                 ) -> list[SlideOutcome]:
    """Export ``features/<encoder_name>`` of every store (see :func:`slidestream.models.export.export_features`);
    each outcome's details name the files written per format. With ``layout="clam"`` the exported slides are also
    listed in ``<out_dir>/slide_ids.csv``, the ``--csv_path`` of CLAM's ``extract_features_fp.py``.

    Files in ``out_dir`` that slidestream did not write (or that were changed since) are not replaced unless
    ``overwrite``: they are named in an :class:`~slidestream.errors.OutputExistsError` before any work."""
    guard = OutputGuard(overwrite)
    out_dir = output_folder(out_dir, create=False)

    def planned(p: Path) -> list[Path]:
        return list(export_paths(Path(p).name.removesuffix(".zarr"), encoder_name, out_dir, formats,
                                 layout=layout).values())

    guard.check_all([*(f for p in stores for f in planned(p)),
                     *([out_dir / "slide_ids.csv"] if layout == "clam" else [])])
    output_folder(out_dir)

    def one(p: Path) -> dict:
        from ..store import SlideStore  # zarr: only when there is a store to export

        store = SlideStore.open(p)
        guard.check_all(export_paths(store.slide_id, encoder_name, out_dir, formats, layout=layout).values())
        written = export_features(store, encoder_name, out_dir, formats, layout=layout)
        guard.record(*written.values())
        return {k: str(v) for k, v in written.items()}

    outcomes = run_per_slide(stores, "export", one, reporter or QuietReporter(),
                             label=lambda p: Path(p).name.removesuffix(".zarr"), path=str)
    done = [o.slide_id for o in outcomes if o.status != "failed"]
    if layout == "clam" and done:
        write_slide_ids_csv(out_dir / "slide_ids.csv", done, guard=guard)
    return outcomes
