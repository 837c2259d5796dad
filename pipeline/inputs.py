"""Batch inputs: which slides a command works on, from folders, globs, single files or a manifest CSV.

A manifest has a ``slide`` column (path, relative to the CSV) and optionally ``label``, ``split``/``fold``,
``annotation``, ``mpp``, ``slide_id``, ``patient`` and any metadata columns (site, scanner ...). Slides with the
same ``patient`` are kept together in one cross-validation fold and on one side of a train/test split; a slide
without one is a patient of its own. ``label`` is a class index (0, 1, 2 …) or a class name (LUAD, Tumor …), read
by :func:`slidestream.pipeline.classes.parse_label` for every command; a manifest without slide rows, one mixing
names and indices, and rows listing one slide twice with different labels (or splits, patients …) are refused.

Slide ids name each slide's files (``<slide_id>.zarr``). They come from the file name alone
(:func:`slidestream.wsi.slide_id_from_path`), so a slide keeps its id whatever else is in the batch; only files
that would share one (the same name in two folders, or names differing only in extension or letter case, which
macOS and Windows file systems do not tell apart) get a hash of their path appended, all of them, in any order.
Stores made under the ids of earlier versions are found again by :func:`adopt_existing_stores`.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..errors import ConfigError
from ..wsi import file_fingerprint, slide_id_from_path
from ..wsi.identity import legacy_slide_id
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


def _path_hash(key: str) -> str:
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=3).hexdigest()


def _from_manifest(path: Path, given: set[int] | None = None) -> list[SlideInput]:
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
            if given_id and given is not None:
                given.add(len(out))
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


_DUMPED_TILE = re.compile(r"_x\d+_y\d+\.(png|jpg)$")


def is_own_output(path: Path) -> bool:
    """Whether a file found by a folder scan is one slidestream wrote (a heatmap, a QC image, a dumped tile ...),
    so that rerunning a command on a folder that also holds its outputs never takes them for slides."""
    name = path.name
    if name.endswith(".heatmap.png") or name.startswith("."):
        return True
    if path.parent.name == "qc" and (path.parent.parent / "run-tile.json").is_file():
        return True  # tiling QC images (<stores>/qc/<slide_id>.jpg)
    return bool(_DUMPED_TILE.search(name)) and name.startswith(f"{path.parent.name}_")  # <dir>/<id>/<id>_x.._y..


def _slide_files_in(folder: Path) -> list[Path]:
    found, dicom_dirs = [], set()
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in SLIDE_SUFFIXES or is_own_output(p):
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

    Different files whose names give the same slide id (ignoring letter case) all get ``-`` and a short hash of
    their resolved path appended: never merged, and the same ids in any order of the inputs. Ids given in a
    manifest's ``slide_id`` column are kept as they are; two files given the same one are refused.

    Raises
    ------
    ConfigError
        For a malformed manifest, a glob matching nothing, or one ``slide_id`` given to two files.
    """
    items: list[SlideInput] = []
    given: set[int] = set()  # positions in `items` of ids given by a manifest
    for raw in inputs:
        p = Path(raw)
        if p.suffix.lower() == ".csv" and p.is_file():
            marked: set[int] = set()
            rows = _from_manifest(p, marked)
            given.update(len(items) + k for k in marked)
            items.extend(rows)
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
    fixed: set[int] = set()  # id() of the inputs whose id was given
    for k, it in enumerate(items):
        key = str(it.path.resolve()) if it.path.exists() else str(it.path)
        if key not in by_path:
            by_path[key] = it
            if k in given:
                fixed.add(id(it))
    _separate(by_path, fixed)
    return list(by_path.values())


def _separate(by_path: dict[str, SlideInput], fixed: set[int]) -> None:
    """Append a hash of the path to every id shared (ignoring case) by several files, except ids in ``fixed``."""
    groups: dict[str, list[tuple[str, SlideInput]]] = {}
    for key, it in by_path.items():
        groups.setdefault(it.slide_id.casefold(), []).append((key, it))
    for members in groups.values():
        if len(members) < 2:
            continue
        kept = [it for _, it in members if id(it) in fixed]
        if len(kept) > 1:
            raise ConfigError(f"slide_id {kept[0].slide_id!r} is given to several files ("
                              f"{', '.join(str(it.path) for it in kept)}); give each its own")
        for key, it in members:
            if id(it) not in fixed:
                it.slide_id = f"{it.slide_id}-{_path_hash(key)}"


def adopt_existing_stores(inputs: list[SlideInput], out_dir: str | os.PathLike) -> None:
    """Give each slide the id of a store it already has in ``out_dir`` under an id of an earlier version.

    Before ids kept Unicode letters, ``slide ä.svs`` was ``slide__``, and the second of two colliding files got a
    path hash that the first did not. When ``<out_dir>/<slide_id>.zarr`` does not exist but a store under such an
    old id does, and it records this file's content (size and fingerprint), the slide takes that id (in place),
    so work already done is resumed rather than repeated. Another slide of the batch that would then share the
    id gets a hash of its path appended.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return
    adopted: set[int] = set()
    taken: set[str] = set()
    for it in inputs:
        if (out_dir / f"{it.slide_id}.zarr").exists() or not it.path.is_file():
            continue
        old = legacy_slide_id(it.path)
        key = str(it.path.resolve())
        for candidate in (old, f"{old}-{_path_hash(key)}"):
            if (candidate != it.slide_id and candidate not in taken
                    and _store_records(out_dir / f"{candidate}.zarr", it.path)):
                it.slide_id = candidate
                adopted.add(id(it))
                taken.add(candidate)
                break
    if adopted:
        _separate({str(it.path.resolve()) if it.path.exists() else str(it.path): it for it in inputs}, adopted)


def _store_records(store: Path, slide: Path) -> bool:
    """Whether ``store`` is a slide store made from this file's current content."""
    if not (store / "zarr.json").is_file():
        return False
    from ..store import SlideStore  # Zarr: only when an old store is there to look at

    try:
        recorded = SlideStore.open(store).slide
        return recorded.get("size") == slide.stat().st_size and recorded.get("fingerprint") == file_fingerprint(slide)
    except Exception:  # noqa: BLE001 - an unreadable store is simply not this slide's
        return False


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

