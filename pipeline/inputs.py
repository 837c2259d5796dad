"""Batch inputs: which slides a command works on, from folders, globs, single files or a manifest CSV.

A manifest has a ``slide`` column (path, relative to the CSV) and optionally ``label``, ``split``/``fold``,
``annotation``, ``mpp``, ``slide_id``, ``patient`` and any metadata columns (site, scanner ...). Slides with the
same ``patient`` are kept together in one cross-validation fold and on one side of a train/test split; a slide
without one is a patient of its own. ``label`` is a class index (0, 1, 2 …) or a class name (LUAD, Tumor …), read
by :func:`slidestream.pipeline.classes.parse_label` for every command; a manifest without slide rows, one mixing
names and indices, and rows listing one slide twice with different labels (or splits, patients …) are refused.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..errors import ConfigError
from ..wsi import slide_id_from_path
from .classes import check_duplicate_rows, check_manifest_labels, parse_label

SLIDE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm",
                  ".png", ".jpg", ".jpeg"}
MANIFEST_COLUMNS = {"slide", "label", "split", "fold", "annotation", "mpp", "slide_id", "patient"}


@dataclass
class SlideInput:
    """One slide of a batch, with what a manifest says about it."""

    path: Path
    slide_id: str
    label: int | str | None = None  # a class index or a class name (pipeline.classes)
    split: str | None = None
    annotation: Path | None = None
    mpp: float | None = None
    meta: dict[str, str] = field(default_factory=dict)
    patient: str | None = None
    origin: str | None = None  # "manifest.csv, line 4": where the slide was listed, for messages


def _from_manifest(path: Path) -> list[SlideInput]:
    base = path.parent
    out = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "slide" not in reader.fieldnames:
            raise ConfigError(f"{path}: a manifest needs a 'slide' column (have: {reader.fieldnames})")
        for i, row in enumerate(reader, start=2):
            raw = (row.get("slide") or "").strip()
            if not raw:
                raise ConfigError(f"{path}, line {i}: empty 'slide'")
            p = Path(raw) if Path(raw).is_absolute() else base / raw
            label = parse_label(row.get("label"), f"{path}, line {i}")
            ann = (row.get("annotation") or "").strip()
            mpp = (row.get("mpp") or "").strip()
            given_id = (row.get("slide_id") or "").strip()
            if given_id and slide_id_from_path(f"{given_id}.id") != given_id:
                # Ids name files in the output folder: nothing that could climb out of it or hide there.
                raise ConfigError(f"{path}, line {i}: slide_id {given_id!r} is not a safe file name; use letters, "
                                  "digits, '.', '_' and '-' (not starting with '.')")
            try:
                out.append(SlideInput(
                    path=p,
                    slide_id=given_id or slide_id_from_path(p),
                    label=label,
                    split=(row.get("split") or row.get("fold") or "").strip() or None,
                    annotation=(Path(ann) if Path(ann).is_absolute() else base / ann) if ann else None,
                    mpp=float(mpp) if mpp else None,
                    meta={k: v for k, v in row.items() if k not in MANIFEST_COLUMNS and k is not None},
                    patient=(row.get("patient") or "").strip() or None,
                    origin=f"{path}, line {i}",
                ))
            except ValueError as exc:
                raise ConfigError(f"{path}, line {i}: {exc}") from exc
    if not out:
        raise ConfigError(f"{path}: no slide rows (only a header, or an empty file); list one slide per row under "
                          "the header 'slide,label,…'")
    check_manifest_labels(out, path)
    check_duplicate_rows(out, str(path))
    return out


def _slide_files_in(folder: Path) -> list[Path]:
    found, dicom_dirs = [], set()
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in SLIDE_SUFFIXES:
            continue
        if p.suffix.lower() == ".dcm":
            # A DICOM slide is a series of files in one folder; OpenSlide opens it from any one of them.
            if p.parent in dicom_dirs:
                continue
            dicom_dirs.add(p.parent)
        found.append(p)
    return found


def collect_inputs(inputs: Iterable[str | os.PathLike], *, mpp: float | None = None) -> list[SlideInput]:
    """Expand folders, globs, files and manifest CSVs into a list of slides with unique ids.

    Two different files whose names would give the same slide id get ids disambiguated with a short hash of their
    path (never silently merged).
    """
    items: list[SlideInput] = []
    for raw in inputs:
        p = Path(raw)
        if p.suffix.lower() == ".csv" and p.is_file():
            items.extend(_from_manifest(p))
        elif p.is_dir():
            items.extend(SlideInput(path=f, slide_id=slide_id_from_path(f)) for f in _slide_files_in(p))
        elif any(ch in str(raw) for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(str(raw), recursive=True))
            if not matches:
                raise ConfigError(f"no file matches {raw!r}")
            items.extend(SlideInput(path=m, slide_id=slide_id_from_path(m)) for m in matches if m.is_file())
        else:
            # Missing files are kept: they fail per slide with a clear message instead of aborting the batch.
            items.append(SlideInput(path=p, slide_id=slide_id_from_path(p)))
    # Manifests given together must agree on each slide and on the kind of label.
    check_manifest_labels(items, "the manifests")
    check_duplicate_rows(items, "the manifests", fields=("label", "split", "patient", "annotation", "mpp"))
    if mpp is not None:
        for it in items:
            it.mpp = it.mpp or mpp
    # The same file given twice (a folder and a glob, say) is one slide; two files with one name are two.
    by_path: dict[str, SlideInput] = {}
    for it in items:
        by_path.setdefault(str(it.path.resolve()) if it.path.exists() else str(it.path), it)
    taken: set[str] = set()
    unique: list[SlideInput] = []
    for key, it in by_path.items():
        if it.slide_id in taken:
            it.slide_id = f"{it.slide_id}-{hashlib.blake2b(key.encode(), digest_size=3).hexdigest()}"
        taken.add(it.slide_id)
        unique.append(it)
    return unique


def store_paths(out_dir: str | os.PathLike, slide_ids: list[str] | None = None) -> list[Path]:
    """Stores in ``out_dir`` (all, or those of ``slide_ids`` in that order)."""
    out_dir = Path(out_dir)
    if slide_ids is not None:
        return [out_dir / f"{s}.zarr" for s in slide_ids]
    return sorted(p for p in out_dir.glob("*.zarr") if (p / "zarr.json").is_file())


def collect_stores(args: Iterable[str | os.PathLike]) -> list[Path]:
    """Store paths from arguments that are stores (``*.zarr``) or folders of stores, in the order given.

    Raises
    ------
    ConfigError
        When the arguments hold no store.
    """
    args = list(args)
    paths: list[Path] = []
    for a in args:
        p = Path(a)
        paths.extend([p] if p.suffix == ".zarr" else store_paths(p))
    if not paths:
        raise ConfigError(f"no slide stores (*.zarr) found in {' '.join(map(str, args))}")
    return paths

