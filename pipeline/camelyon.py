"""CAMELYON16 folders as benchmark inputs, with the real data set's quirks.

The official release is laid out as::

    training/normal/normal_001.tif …   training/tumor/tumor_001.tif …   training/lesion_annotations.zip
    testing/images/test_001.tif …      testing/reference.csv             testing/lesion_annotations.zip
    testing/evaluation/…               (the official evaluation masks, ``Test_001_Mask.tif`` …)

What this module handles that a plain folder scan would get wrong:

- lesion annotations as loose ASAP XML files (``lesion_annotations/`` folders, as the synthetic preset writes
  them) or inside ``lesion_annotations.zip``: zip members are read in place, never extracted into the data
  folder, each at most :data:`~slidestream.annotations.limits.DEFAULT_MAX_BYTES` after decompression;
- the official evaluation masks (``<slide>_Mask.tif``, loose or zipped, anywhere under ``testing/evaluation``,
  ``testing/masks`` or ``masks``): when a test slide has one, the lesion FROC is computed from it, as the official
  script does (it reads the mask's level 5, downsample 32);
- ``reference.csv`` rows with more columns than name and class: the third is the type of the largest lesion
  (``Macro``, ``Micro``, ``ITC``; recorded as the slide's ``lesion_type``), a fourth that is a number is its size in
  µm (``largest_lesion_um``, written by the synthetic preset); a header row, any letter case and a BOM are accepted;
- slides with known label problems (``test_114``) left out by name (:func:`exclude_inputs`);
- tumour test slides without any ground truth are named and left out of the FROC instead of counting as normal
  slides, whose every detection is a false positive (:func:`prepare_froc_truth`).
"""

from __future__ import annotations

import csv
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..annotations.limits import DEFAULT_MAX_BYTES, LimitExceeded, read_bounded
from ..errors import ConfigError
from ..fileio import OutputGuard, atomic_open, atomic_write, output_folder
from ..wsi import slide_id_from_path
from .inputs import SlideInput

__all__ = ["LESION_TYPES", "FrocTruth", "ReferenceRow", "camelyon_inputs", "exclude_inputs", "is_camelyon_folder",
           "lesion_type", "prepare_froc_truth", "read_reference", "read_truth_bytes"]

#: Largest-lesion classes of a tumour slide, from the largest to the smallest (CAMELYON's pN categories).
LESION_TYPES = ("macro", "micro", "itc")

#: Largest evaluation mask copied out of a zip (level-0 masks are big but compress well).
MAX_MASK_BYTES = 8 << 30

SLIDE_SUFFIXES = (".tif", ".tiff", ".svs")
_ANNOTATION_SUFFIXES = (".xml", ".geojson", ".json")
_MASK_SUFFIXES = (".tif", ".tiff")
_MASK_DIRS = ("testing/evaluation", "testing/masks", "testing/ground_truth", "evaluation", "masks")
_TYPES = {"macro": "macro", "macro-metastasis": "macro", "macrometastasis": "macro", "micro": "micro",
          "micro-metastasis": "micro", "micrometastasis": "micro", "itc": "itc", "itcs": "itc",
          "isolated tumor cells": "itc", "isolated tumour cells": "itc"}
_MAX_ZIP_MEMBERS = 100_000


def lesion_type(value: str | None) -> str:
    """``"macro"``, ``"micro"``, ``"itc"`` or ``""`` for a largest-lesion class as written in a reference file or a
    manifest column (``Macro``, ``micro-metastasis``, ``ITC`` …); anything else is ``""``."""
    return _TYPES.get((value or "").strip().lower(), "")


@dataclass
class ReferenceRow:
    """One row of ``testing/reference.csv``: the slide's class and, for a tumour slide, its largest lesion."""

    name: str
    label: int
    lesion_type: str = ""
    largest_lesion_um: float | None = None


def read_reference(path: str | os.PathLike) -> dict[str, ReferenceRow]:
    """Slide-level truth of the test slides, by lower-case slide name.

    Parameters
    ----------
    path : str or os.PathLike
        ``reference.csv``: rows ``name,class[,type[,size_um,…]]`` with class ``Tumor`` or ``Normal``.

    Returns
    -------
    dict of str to ReferenceRow

    Raises
    ------
    ConfigError
        A row whose class is neither Tumor nor Normal (except a header on the first line), or a name given twice.
    """
    path = Path(path)
    out: dict[str, ReferenceRow] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            cells = [c.strip() for c in row]
            if not any(cells):
                continue
            cls = cells[1].lower() if len(cells) > 1 else ""
            if cls not in ("tumor", "tumour", "normal"):
                if lineno == 1:
                    continue  # a header row
                raise ConfigError(f"{path}, line {lineno}: expected 'name,Tumor|Normal[,Macro|Micro|ITC,…]', got "
                                  f"{','.join(row)!r}")
            name = cells[0]
            if name.lower() in out:
                raise ConfigError(f"{path}, line {lineno}: slide {name!r} is listed twice; keep one row")
            size = None
            if len(cells) > 3 and cells[3]:
                try:
                    size = float(cells[3])
                except ValueError:
                    size = None  # another tool's extra column: not a size
            label = 0 if cls == "normal" else 1
            out[name.lower()] = ReferenceRow(name, label, lesion_type(cells[2]) if label and len(cells) > 2 else "",
                                             size if label else None)
    return out


# ---------------------------------------------------------------------------------------------------- zip members
def _zip_parts(path: Path) -> tuple[Path, str] | None:
    """``(zip file, member)`` when ``path`` names a member inside a zip file (``…/x.zip/member``), else None."""
    for parent in path.parents:
        if parent.suffix.lower() == ".zip" and parent.is_file():
            return parent, path.relative_to(parent).as_posix()
    return None


def _zip_members(zpath: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Members of a zip whose names end with one of ``suffixes``, as ``…/x.zip/member`` paths by lower-case stem."""
    try:
        with zipfile.ZipFile(zpath) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ConfigError(f"{zpath}: not a readable zip file ({exc}); re-download it or unpack it next to it")
    if len(infos) > _MAX_ZIP_MEMBERS:
        raise ConfigError(f"{zpath}: more than {_MAX_ZIP_MEMBERS:,} entries; unpack the files you need instead")
    found: dict[str, Path] = {}
    for info in infos:
        name = PurePosixPath(info.filename)
        if info.is_dir() or name.name.startswith((".", "_")) or name.suffix.lower() not in suffixes:
            continue  # folders, macOS '__MACOSX/._x.xml' forks, other files
        found.setdefault(name.stem.lower(), zpath / info.filename)
    return found


def read_truth_bytes(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of a ground-truth file or of a zip member (``…/lesion_annotations.zip/tumor_001.xml``), never
    more than ``max_bytes`` after decompression.

    Raises
    ------
    ConfigError
        When the content is larger than ``max_bytes`` or the zip member cannot be read.
    """
    path = Path(path)
    parts = _zip_parts(path)
    if parts is None:
        try:
            return read_bounded(path, max_bytes)
        except LimitExceeded as exc:
            raise ConfigError(f"{path}: {exc.reason}; simplify the annotations") from None
    zpath, member = parts
    try:
        with zipfile.ZipFile(zpath) as z, z.open(member) as f:
            data = f.read(max_bytes + 1)
    except (zipfile.BadZipFile, KeyError, OSError, RuntimeError) as exc:
        raise ConfigError(f"{zpath}: cannot read {member!r} ({exc}); re-download the zip or unpack it") from None
    if len(data) > max_bytes:
        raise ConfigError(f"{zpath}: {member!r} decompresses to more than {max_bytes:,} bytes; unpack and simplify it")
    return data


def _copy_zip_member(src: Path, target: Path, max_bytes: int) -> None:
    zpath, member = _zip_parts(src)  # type: ignore[misc]
    size = 0
    try:
        with zipfile.ZipFile(zpath) as z, z.open(member) as f, atomic_open(target) as out:
            while chunk := f.read(1 << 20):
                size += len(chunk)
                if size > max_bytes:
                    raise ConfigError(f"{zpath}: {member!r} decompresses to more than {max_bytes:,} bytes")
                out.write(chunk)
    except (zipfile.BadZipFile, KeyError, OSError, RuntimeError) as exc:
        raise ConfigError(f"{zpath}: cannot read {member!r} ({exc}); re-download the zip or unpack it") from None


# ---------------------------------------------------------------------------------------------------- inputs
def is_camelyon_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder in the CAMELYON16 layout (it has ``training/``)."""
    return (Path(path) / "training").is_dir()


def _annotations(root: Path) -> dict[str, Path]:
    """Lesion annotations by lower-case slide name: loose files first, then members of ``lesion_annotations.zip``."""
    found: dict[str, Path] = {}
    for d in (root / "lesion_annotations", root / "training" / "lesion_annotations",
              root / "testing" / "lesion_annotations"):
        if d.is_dir():
            for p in sorted(d.iterdir()):
                if p.is_file() and p.suffix.lower() in _ANNOTATION_SUFFIXES and not p.name.startswith("."):
                    found.setdefault(p.stem.lower(), p)
    for z in (root / "lesion_annotations.zip", root / "training" / "lesion_annotations.zip",
              root / "testing" / "lesion_annotations.zip"):
        if z.is_file():
            for stem, p in _zip_members(z, _ANNOTATION_SUFFIXES).items():
                found.setdefault(stem, p)
    return found


def _masks(root: Path) -> dict[str, Path]:
    """Official evaluation masks (``<slide>_Mask.tif``, loose or zipped) by lower-case slide name."""
    found: dict[str, Path] = {}
    for sub in _MASK_DIRS:
        d = root / sub
        if not d.is_dir():
            continue
        loose = {}
        for p in sorted(d.rglob("*")):
            if p.is_file() and p.suffix.lower() in _MASK_SUFFIXES and p.stem.lower().endswith("_mask"):
                loose[p.stem.lower()[: -len("_mask")]] = p
            elif p.is_file() and p.suffix.lower() == ".zip":
                for stem, m in _zip_members(p, _MASK_SUFFIXES).items():
                    if stem.endswith("_mask"):
                        found.setdefault(stem[: -len("_mask")], m)
        for stem, p in loose.items():
            found[stem] = p  # an unpacked mask wins over the zipped copy
    return found


def camelyon_inputs(root: str | os.PathLike) -> list[SlideInput]:
    """The slides of a CAMELYON16 folder with their labels, splits and ground truth.

    Training slides are labelled by folder (``normal`` 0, ``tumor`` 1); test slides by ``testing/reference.csv``
    (a test slide it does not list stays unlabelled). A slide's ``annotation`` is its official evaluation mask when
    there is one, else its lesion annotation file (loose or a zip member, see :func:`read_truth_bytes`). Test slides
    carry ``lesion_type`` (``macro``/``micro``/``itc``, empty for normal slides or when unknown) and, when the
    reference gives it, ``largest_lesion_um`` in their metadata.
    """
    root = Path(root)
    annotations = _annotations(root)
    masks = _masks(root)

    def truth(stem: str) -> Path | None:
        return masks.get(stem.lower()) or annotations.get(stem.lower())

    items: list[SlideInput] = []
    for sub, label in (("normal", 0), ("tumor", 1)):
        folder = root / "training" / sub
        for p in sorted(folder.iterdir()) if folder.is_dir() else []:
            if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES:
                items.append(SlideInput(p, slide_id_from_path(p), label, "train", truth(p.stem)))
    ref_path = root / "testing" / "reference.csv"
    reference = read_reference(ref_path) if ref_path.is_file() else {}
    folder = root / "testing" / "images"
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not (p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES):
            continue
        ref = reference.get(p.stem.lower())
        meta = {}
        if ref is not None:
            meta["lesion_type"] = ref.lesion_type
            if ref.largest_lesion_um is not None:
                meta["largest_lesion_um"] = f"{ref.largest_lesion_um:g}"
        items.append(SlideInput(p, slide_id_from_path(p), None if ref is None else ref.label, "test", truth(p.stem),
                                meta=meta))
    return items


def exclude_inputs(inputs: list[SlideInput], names: list[str] | tuple[str, ...],
                   ) -> tuple[list[SlideInput], list[str], list[str]]:
    """Leave out slides by name (slide id or file name without extension, any letter case).

    Returns
    -------
    kept : list of SlideInput
    excluded : list of str
        Slide ids left out, in input order.
    unknown : list of str
        Names that matched no slide.
    """
    wanted = {n.strip().lower(): n.strip() for n in names if n.strip()}
    kept, excluded, hit = [], [], set()
    for it in inputs:
        keys = {it.slide_id.lower(), it.path.stem.lower(), it.path.name.lower()}
        match = keys & set(wanted)
        if match:
            excluded.append(it.slide_id)
            hit |= match
        else:
            kept.append(it)
    return kept, excluded, [wanted[k] for k in wanted if k not in hit]


# ---------------------------------------------------------------------------------------------------- FROC truth
@dataclass
class FrocTruth:
    """Which test slides the lesion FROC can evaluate, and why the others are left out.

    Attributes
    ----------
    evaluable : list of str
        Slide ids to evaluate: labelled normal slides, and tumour slides with ground truth.
    truth : dict of str to Path
        The ground-truth file of each evaluable tumour slide in the ground-truth folder.
    sources : dict of str to str
        ``"mask"`` (official evaluation mask) or ``"annotation"`` for each slide of ``truth``.
    missing : list of str
        Tumour test slides without ground truth (left out).
    unlabelled : list of str
        Test slides without a slide label (left out).
    warnings : list of str
        What the user must hear about (also for the record).
    """

    evaluable: list[str] = field(default_factory=list)
    truth: dict[str, Path] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unlabelled: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def defined(self) -> bool:
        """Whether there is anything to evaluate: at least one tumour slide with ground truth."""
        return bool(self.truth)

    def to_dict(self) -> dict:
        return {"evaluable": len(self.evaluable), "truth_sources": self.sources, "missing_truth": self.missing,
                "unlabelled": self.unlabelled}


def _suffix(path: Path) -> str:
    low = path.name.lower()
    for s in (".geojson.gz", ".json.gz", ".xml.gz", *_ANNOTATION_SUFFIXES, *_MASK_SUFFIXES):
        if low.endswith(s):
            return s
    return path.suffix.lower()


def _is_mask(path: Path) -> bool:
    return path.suffix.lower() in _MASK_SUFFIXES


def _place_truth(src: Path, gt_dir: Path, slide_id: str, guard: OutputGuard) -> Path:
    """Put ``src`` into ``gt_dir`` as ``<slide_id><suffix>``: annotations copied (bounded), loose masks linked,
    zipped masks copied out; nothing is rewritten when already in place. A regular file there that slidestream
    did not write is refused through ``guard`` (a link only ever replaces the link, never what it points at)."""
    target = gt_dir / f"{slide_id}{_suffix(src)}"
    if not target.is_symlink():
        guard.check(target)
    zipped = _zip_parts(src) is not None
    if _is_mask(src) and not zipped:
        want = os.path.abspath(src)
        if target.is_symlink() and os.readlink(target) == want:
            return target
        tmp = gt_dir / f".{slide_id}.link"
        tmp.unlink(missing_ok=True)
        try:
            os.symlink(want, tmp)
            os.replace(tmp, target)
        except OSError:  # no symlinks here (some Windows set-ups): a copy
            tmp.unlink(missing_ok=True)
            with open(src, "rb") as f, atomic_open(target) as out:
                while chunk := f.read(1 << 20):
                    out.write(chunk)
        return target
    if _is_mask(src):
        stamp = gt_dir / f".{slide_id}.source"
        if target.is_file() and stamp.is_file() and stamp.read_text() == str(src):
            return target
        _copy_zip_member(src, target, MAX_MASK_BYTES)
        guard.record(target)
        atomic_write(stamp, str(src))
        return target
    data = read_truth_bytes(src)
    if not (target.is_file() and not target.is_symlink() and target.read_bytes() == data):
        if target.is_symlink():
            target.unlink()
        atomic_write(target, data)
        guard.record(target)
    elif not guard.is_own(target):
        guard.record(target)  # the annotation's own bytes: a copy made before the ledgers
    return target


def prepare_froc_truth(test: list[SlideInput], gt_dir: str | os.PathLike, *, expect_truth: bool = True,
                       guard: OutputGuard | None = None) -> FrocTruth:
    """Gather the ground truth of the test slides into ``gt_dir`` (one file per tumour slide, named by slide id;
    files of slides no longer in the set are removed) and decide which slides the FROC evaluates.

    A tumour slide without ground truth would count as a normal slide, all its detections false positives, and
    lower the FROC silently: it is left out and named in :attr:`FrocTruth.warnings`. Unlabelled test slides are
    left out too.

    Parameters
    ----------
    test : list of SlideInput
        The test slides (``label`` and ``annotation`` as from :func:`camelyon_inputs` or a manifest).
    gt_dir : str or os.PathLike
        The benchmark's ground-truth folder (inside its output folder).
    expect_truth : bool, default True
        Whether ground truth is expected (a CAMELYON16 folder). When False and no test slide has any, the FROC is
        skipped with a note rather than a warning (a manifest without an ``annotation`` column).
    guard : OutputGuard, optional
        Refuses to replace or remove files in ``gt_dir`` that slidestream did not write (default: no
        ``overwrite``).
    """
    guard = guard or OutputGuard()
    gt_dir = output_folder(gt_dir)
    out = FrocTruth()
    for it in test:
        if it.label is None:
            out.unlabelled.append(it.slide_id)
        elif it.annotation is not None:
            out.truth[it.slide_id] = _place_truth(Path(it.annotation), gt_dir, it.slide_id, guard)
            out.sources[it.slide_id] = "mask" if _is_mask(Path(it.annotation)) else "annotation"
            out.evaluable.append(it.slide_id)
        elif it.label == 1:
            out.missing.append(it.slide_id)
        else:
            out.evaluable.append(it.slide_id)
    keep = {p.name for p in out.truth.values()}
    stale = [p for p in gt_dir.iterdir()
             if p.name not in keep and (p.is_file() or p.is_symlink()) and not p.name.startswith(".")]
    guard.check_all(p for p in stale if not p.is_symlink())
    for p in stale:
        p.unlink()  # an earlier run's truth of a slide now excluded or relabelled
    n_tumour = sum(1 for it in test if it.label == 1)
    if out.unlabelled:
        out.warnings.append(f"{len(out.unlabelled)} test slide(s) have no label (not in reference.csv / the "
                            f"manifest): left out of every metric: {', '.join(out.unlabelled)}")
    if out.missing and (expect_truth or out.truth):
        if out.truth:
            out.warnings.append(f"{len(out.missing)} of {n_tumour} tumour test slide(s) have no lesion annotation "
                                f"or evaluation mask and are left out of the lesion FROC: {', '.join(out.missing)}")
        else:
            out.warnings.append(f"none of the {n_tumour} tumour test slide(s) has a lesion annotation or evaluation "
                                f"mask: the lesion FROC is not computed (missing: {', '.join(out.missing)}); put "
                                "lesion_annotations.zip or the XML files into testing/")
    return out

