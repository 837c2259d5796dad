"""A synthetic data set laid out like CAMELYON16 and built to be hard in the ways CAMELYON16 is hard.

:func:`write_camelyon16` writes the official folder layout::

    training/normal/normal_001.tif …   training/tumor/tumor_001.tif …
    training/lesion_annotations/tumor_001.xml …
    testing/images/test_001.tif …      testing/lesion_annotations/test_005.xml …
    testing/reference.csv              truth.csv   preset.json

Slides are plain tiled pyramidal JPEG TIFF (512 px tiles, levels halving, the pixel size only in the resolution
tags), which OpenSlide opens as ``generic-tiff`` like the real files. Lesion outlines are ASAP XML with tumour in
groups ``_0``/``_1`` and non-tumour islands inside a metastasis in ``_2``. ``testing/reference.csv`` has no
header and one row per test slide, ``test_001,Tumor,Macro,2134`` or ``test_002,Normal,,``: name, class, type of
the largest lesion (``Macro``, ``Micro``, ``ITC``) and, in a fourth column that is ours, its largest dimension in
µm. ``truth.csv`` (with a header) holds every slide's ground truth: split, label, largest lesion class and size,
lesion counts, tumour fraction of the tissue, tumour grade (0 lobular-like to 1 high-grade ductal), centre, pixel
size, JPEG quality, follicles and germinal centres (the look-alikes) and artefacts.

What makes it hard, as in the real set (Bejnordi et al., JAMA 2017):

- about half the tumour slides hold only micro-metastases (0.2-2 mm) or isolated tumour cells (< 0.2 mm), so
  tumour is often a few per cent of the tissue, and under 1 % (down to about 0.05 %) on the ITC slides and the
  smallest micro-metastases;
- normal slides and tumour slides share the same anatomy, including germinal centres and sinus histiocytes that
  look like metastases to simple colour and texture statistics, and some metastases are low-grade, lobular-like
  carcinomas made of small cells that look like them in turn (``difficulty`` makes those more frequent);
- two centres with different scanners: 0.243 and 0.226 µm/px, different stain and JPEG quality;
- artefacts on any slide (folds, out-of-focus regions, air bubbles, pen marks);
- class imbalance as in the training set (160 normal : 110 tumour) and test set (80 : 49).

Scaled to a few minutes of work on two CPU cores, the slides are small sections of about 2.7 x 1.6 mm (about
11 000 x 6 600 px). Sizes are real: a micro-metastasis is 0.2-2 mm at either pixel size. Macro-metastases are
just over 2 mm (2.05-2.4 mm) and elongated along the node, because larger ones would not fit such a section;
real macro-metastases are often much larger. Stain vectors, scanner colours and JPEG qualities of the two centres
are plausible values, not measurements of the real scanners.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import shapely

from ..annotations.formats import Annotation, write_asap_xml
from ..errors import ConfigError
from ..fileio import atomic_write, write_json
from .lesions import (
    LESION_CLASSES,
    Artefacts,
    Lesion,
    NodeAnatomy,
    make_anatomy,
    make_artefacts,
    place_lesions,
)
from .node import NodeLook, NodeScene, _lerp
from .scene import SynthConfig
from .slide import write_scene_tiff

__all__ = ["CENTRES", "Camelyon16Preset", "Centre", "SlideSpec", "camelyon16_scene", "plan_camelyon16",
           "slide_geometry", "write_camelyon16", "write_camelyon16_slide"]

_ANNOTATION_COLOR = (0xF4, 0xFA, 0x58)  # the yellow of the CAMELYON16 lesion annotations
_TYPE_NAMES = {"macro": "Macro", "micro": "Micro", "itc": "ITC"}


@dataclass(frozen=True)
class Centre:
    """A scanning centre: pixel size, JPEG quality and the look of its stain and glass."""

    name: str
    mpp: float
    jpeg_quality: int
    hematoxylin: tuple[float, float, float]
    eosin: tuple[float, float, float]
    glass: tuple[float, float, float]
    h_gain: float
    e_gain: float


#: The two CAMELYON16 centres: Radboud UMC (0.243 µm/px) and UMC Utrecht (0.226 µm/px).
CENTRES = (
    Centre("radboud", 0.243, 80, (0.58, 0.72, 0.38), (0.22, 0.80, 0.56), (238.0, 237.0, 242.0), 1.05, 1.0),
    Centre("utrecht", 0.226, 70, (0.52, 0.73, 0.44), (0.17, 0.82, 0.55), (245.0, 242.0, 244.0), 0.86, 1.15),
)


@dataclass
class Camelyon16Preset:
    """Size and difficulty of a CAMELYON16-like set.

    Parameters
    ----------
    n_train_normal, n_train_tumor, n_test_normal, n_test_tumor : int
        Slides per split and class (CAMELYON16: 160, 110, 80, 49; the defaults keep the ratios).
    slide_mm : (float, float)
        Slide width and height, mm; pixels follow from each centre's pixel size.
    difficulty : float
        0-1. Leans the tumour grade towards low-grade, lobular-like carcinomas that look like germinal centres and
        sinus histiocytes, adds follicles, germinal centres and sinuses, widens the stain variation between
        slides, makes micro-metastases smaller and artefacts more frequent. Lesion classes, labels and counts do
        not change with it.
    seed : int
        Same seed, same files, byte for byte.
    lesion_mix : (float, float, float)
        Shares of tumour slides whose largest lesion is a macro-metastasis, a micro-metastasis, isolated tumour
        cells.
    centre_share : float
        Share of slides from the first centre of :data:`CENTRES` (CAMELYON16: about 0.6 from Radboud).
    tile_size : int
        TIFF tile side, pixels (CAMELYON16 files use 512).
    """

    n_train_normal: int = 28
    n_train_tumor: int = 20
    n_test_normal: int = 22
    n_test_tumor: int = 14
    slide_mm: tuple[float, float] = (2.7, 1.6)
    difficulty: float = 0.5
    seed: int = 0
    lesion_mix: tuple[float, float, float] = (0.5, 0.4, 0.1)
    centre_share: float = 0.6
    tile_size: int = 512

    def validate(self) -> None:
        """Raise :class:`~slidestream.errors.ConfigError` naming the first bad value."""
        counts = (self.n_train_normal, self.n_train_tumor, self.n_test_normal, self.n_test_tumor)
        if min(counts) < 0 or self.n_train_normal + self.n_train_tumor == 0:
            raise ConfigError(f"slide counts must be >= 0 with at least one training slide, got {counts}")
        if not 0 <= self.difficulty <= 1:
            raise ConfigError(f"difficulty must be in [0, 1], got {self.difficulty}")
        if len(self.lesion_mix) != 3 or min(self.lesion_mix) < 0 or not sum(self.lesion_mix) > 0:
            raise ConfigError(f"lesion_mix must be three shares >= 0 (macro, micro, itc), got {self.lesion_mix}")
        if not 0 <= self.centre_share <= 1:
            raise ConfigError(f"centre_share must be in [0, 1], got {self.centre_share}")
        if min(self.slide_mm) < 0.6:
            raise ConfigError(f"slide_mm must be at least 0.6 mm a side, got {self.slide_mm}")
        if self.tile_size < 16 or self.tile_size % 16:
            raise ConfigError(f"tile_size must be a positive multiple of 16, got {self.tile_size}")


@dataclass
class SlideSpec:
    """Everything that decides one slide (its file follows from it and nothing else)."""

    name: str
    split: str
    label: int
    largest: str
    lesion_kinds: list[str]
    centre: Centre
    seed: int
    width: int
    height: int
    difficulty: float
    fat: bool = False
    artefacts: dict[str, bool] = field(default_factory=dict)

    @property
    def folder(self) -> str:
        """Folder of the slide relative to the data set root."""
        if self.split == "test":
            return "testing/images"
        return "training/tumor" if self.label else "training/normal"

    @property
    def annotation_folder(self) -> str:
        return "testing/lesion_annotations" if self.split == "test" else "training/lesion_annotations"


def _counts(n: int, shares: tuple[float, ...]) -> list[int]:
    """Split ``n`` by ``shares`` with the largest-remainder rule (exact total)."""
    p = np.asarray(shares, float) / float(sum(shares))
    raw = p * n
    out = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - out), kind="stable")[: n - out.sum()]:
        out[i] += 1
    return out.tolist()


def _extra_lesions(rng: np.random.Generator, largest: str) -> list[str]:
    # satellites smaller than the largest lesion, as often seen around real metastases
    extra: list[str] = []
    if largest == "macro" and rng.random() < 0.3:
        extra.append("micro")
    if largest == "micro" and rng.random() < 0.2:
        extra.append("micro")
    extra += ["itc"] * int(min(rng.poisson(0.6 if largest == "itc" else 0.4), 3))
    return extra


def plan_camelyon16(preset: Camelyon16Preset) -> list[SlideSpec]:
    """Decide every slide of the set: names, splits, labels, lesion classes, centres, artefacts, seeds.

    Class shares are exact per split (largest remainder), then shuffled, so a small set still holds every class
    it can. Test slides are numbered in a shuffled order of normal and tumour slides, as in CAMELYON16.

    Returns
    -------
    list of SlideSpec
        Training normals, training tumours, then test slides in name order.
    """
    preset.validate()
    d = float(preset.difficulty)
    rng = np.random.default_rng([int(preset.seed), 17])
    groups = [("train", 0, preset.n_train_normal), ("train", 1, preset.n_train_tumor),
              ("test", 0, preset.n_test_normal), ("test", 1, preset.n_test_tumor)]
    specs: list[SlideSpec] = []
    p_art = _lerp(0.12, 0.4, d)
    for split, label, n in groups:
        if label:
            largest = [k for k, c in zip(("macro", "micro", "itc"), _counts(n, preset.lesion_mix), strict=True)
                       for _ in range(c)]
            largest = [largest[i] for i in rng.permutation(n)]
        else:
            largest = ["none"] * n
        n_first = _counts(n, (preset.centre_share, 1 - preset.centre_share))[0]
        centres = [CENTRES[0] if i < n_first else CENTRES[1] for i in rng.permutation(n)]
        for i in range(n):
            seed = int(np.random.SeedSequence([int(preset.seed), split == "test", label, i]).generate_state(1)[0])
            r = np.random.default_rng([seed, 7])
            kinds = [] if not label else [largest[i]] + _extra_lesions(r, largest[i])
            c = centres[i]
            w, h = (int(round(mm * 1000 / c.mpp)) for mm in preset.slide_mm)
            arts = {"fold": r.random() < p_art, "blur": r.random() < p_art, "bubble": r.random() < p_art * 0.7,
                    "pen": r.random() < 0.2}
            specs.append(SlideSpec(name="", split=split, label=label, largest=largest[i], lesion_kinds=kinds,
                                   centre=c, seed=seed, width=w, height=h, difficulty=d, fat=bool(r.random() < 0.4),
                                   artefacts=arts))
    train = [s for s in specs if s.split == "train"]
    test = [s for s in specs if s.split == "test"]
    digits = max(3, len(str(max(len(test), preset.n_train_normal, preset.n_train_tumor))))
    for prefix, label in (("normal", 0), ("tumor", 1)):
        for i, s in enumerate(x for x in train if x.label == label):
            s.name = f"{prefix}_{i + 1:0{digits}d}"
    test = [test[i] for i in rng.permutation(len(test))]
    for i, s in enumerate(test):
        s.name = f"test_{i + 1:0{digits}d}"
    return train + test


def _look(spec: SlideSpec) -> NodeLook:
    r = np.random.default_rng([spec.seed, 5])
    d, c = spec.difficulty, spec.centre
    jit = _lerp(0.03, 0.12, d)
    hv = np.abs(np.asarray(c.hematoxylin) + jit * r.normal(0, 0.5, 3))
    ev = np.abs(np.asarray(c.eosin) + jit * r.normal(0, 0.5, 3))
    spread = _lerp(0.05, 0.16, d)
    glass = np.asarray(c.glass) + r.uniform(-3, 3) + r.uniform(-1.5, 1.5, 3)
    # carcinomas range from low-grade lobular-like to high-grade ductal; harder sets lean to low grade
    lo = 0.6 * (1.0 - d)
    grade = lo + (1.0 - lo) * (1.0 - r.random() ** (1.0 / (0.5 + d)))
    return NodeLook(tumor_grade=grade, hematoxylin=tuple(hv), eosin=tuple(ev), glass=tuple(glass),
                    h_gain=c.h_gain * math.exp(r.normal(0, spread)), e_gain=c.e_gain * math.exp(r.normal(0, spread)))


def _config(spec: SlideSpec, preset: Camelyon16Preset) -> SynthConfig:
    return SynthConfig(width=spec.width, height=spec.height, mpp=spec.centre.mpp, tile_size=preset.tile_size,
                       jpeg_quality=spec.centre.jpeg_quality, seed=spec.seed, level_downsample=2,
                       min_level_size=512, layout="generic")


def slide_geometry(spec: SlideSpec) -> tuple[NodeAnatomy, list[Lesion], Artefacts]:
    """Anatomy, metastases and artefacts of one planned slide, level-0 pixels (no painting).

    Parameters
    ----------
    spec : SlideSpec
        From :func:`plan_camelyon16`.

    Returns
    -------
    (NodeAnatomy, list of Lesion, Artefacts)
        Follicles and germinal centres are cut where a metastasis grows over them.

    Raises
    ------
    ConfigError
        When a planned lesion does not fit the slide.
    """
    d, mpp = spec.difficulty, spec.centre.mpp
    anatomy = make_anatomy(np.random.default_rng([spec.seed, 1]), spec.width, spec.height, mpp,
                           follicles_per_mm2=_lerp(2.0, 5.0, d), germinal_fraction=_lerp(0.35, 0.8, d),
                           sinus_amount=_lerp(0.6, 1.5, d), fat=spec.fat)
    artefacts = make_artefacts(np.random.default_rng([spec.seed, 6]), anatomy.tissue, spec.width, spec.height,
                               mpp, **spec.artefacts)
    lesions = place_lesions(np.random.default_rng([spec.seed, 4]), anatomy, mpp, spec.lesion_kinds,
                            small_bias=d) if spec.lesion_kinds else []
    if lesions:
        # tumour replaces what it grows over, follicles and germinal centres included
        cut = shapely.union_all([les.outline for les in lesions])
        anatomy.follicles = [f for f in (f.difference(cut) for f in anatomy.follicles) if not f.is_empty]
        anatomy.germinal_centres = [g for g in (g.difference(cut) for g in anatomy.germinal_centres)
                                    if not g.is_empty]
    return anatomy, lesions, artefacts


def camelyon16_scene(spec: SlideSpec, preset: Camelyon16Preset | None = None) -> NodeScene:
    """The painter of one planned slide (geometry, lesions, artefacts and look drawn from its seed).

    Parameters
    ----------
    spec : SlideSpec
        From :func:`plan_camelyon16`.
    preset : Camelyon16Preset, optional
        File parameters (tile size); default ``Camelyon16Preset()``.

    Returns
    -------
    NodeScene
        ``scene.lesions``, ``scene.anatomy`` and ``scene.artefacts`` hold the ground truth in level-0 pixels.
    """
    anatomy, lesions, artefacts = slide_geometry(spec)
    return NodeScene(_config(spec, preset or Camelyon16Preset()), anatomy, lesions, artefacts, _look(spec))


def _lesion_annotations(lesions: list[Lesion], rng: np.random.Generator) -> list[Annotation]:
    anns = []
    for les in lesions:
        for part in getattr(les.outline, "geoms", [les.outline]):
            # CAMELYON16 files spread their tumour outlines over groups _0 and _1; holes can only go with _0
            cls = "_1" if not part.interiors and rng.random() < 0.25 else "Tumor"
            anns.append(Annotation(geometry=part, class_name=cls, color=_ANNOTATION_COLOR))
    return anns


def _truth_row(spec: SlideSpec, scene: NodeScene, path: str) -> dict:
    mpp = spec.centre.mpp
    mm2 = (mpp / 1000) ** 2
    tissue = scene.tissue.area * mm2
    tumour = sum(les.geometry.area for les in scene.lesions) * mm2
    counts = {k: sum(les.kind == k for les in scene.lesions) for k in LESION_CLASSES}
    largest = max(scene.lesions, key=lambda les: les.largest_um, default=None)
    return {
        "slide": spec.name, "split": spec.split, "path": path, "label": spec.label,
        "largest_lesion": largest.kind if largest else "none",
        "largest_lesion_um": f"{largest.largest_um:.1f}" if largest else "0",
        "n_macro": counts["macro"], "n_micro": counts["micro"], "n_itc": counts["itc"],
        "tumor_fraction": f"{tumour / tissue:.6f}", "tumor_mm2": f"{tumour:.5f}", "tissue_mm2": f"{tissue:.4f}",
        "centre": spec.centre.name, "mpp": mpp, "jpeg_quality": spec.centre.jpeg_quality,
        "width": spec.width, "height": spec.height,
        "tumor_grade": f"{scene.look.tumor_grade:.3f}" if scene.lesions else "",
        "follicles": len(scene.anatomy.follicles), "germinal_centres": len(scene.anatomy.germinal_centres),
        "artefacts": ";".join(scene.artefacts.names), "difficulty": spec.difficulty, "seed": spec.seed,
    }


def write_camelyon16_slide(out_dir: Path, spec: SlideSpec, preset: Camelyon16Preset) -> dict:
    """Write one planned slide (and its lesion XML); returns its ``truth.csv`` row."""
    scene = camelyon16_scene(spec, preset)
    if scene.lesions and spec.largest != max(scene.lesions, key=lambda les: les.largest_um).kind:
        raise ConfigError(f"{spec.name}: planned a {spec.largest} lesion but drew a smaller one; make slide_mm "
                          "larger")
    rel = f"{spec.folder}/{spec.name}.tif"
    (out_dir / spec.folder).mkdir(parents=True, exist_ok=True)
    write_scene_tiff(out_dir / rel, scene, scene.cfg)
    if scene.lesions:
        ann_dir = out_dir / spec.annotation_folder
        ann_dir.mkdir(parents=True, exist_ok=True)
        write_asap_xml(ann_dir / f"{spec.name}.xml",
                       _lesion_annotations(scene.lesions, np.random.default_rng([spec.seed, 8])), group="_0")
    return _truth_row(spec, scene, rel)


def _csv(rows: list[dict] | list[list], header: list[str] | None) -> str:
    buf = io.StringIO()
    if header is None:
        csv.writer(buf, lineterminator="\n").writerows(rows)
    else:
        w = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()


def write_camelyon16(out_dir: str | os.PathLike, preset: Camelyon16Preset | None = None, *,
                     progress: Callable[[int, int, str], None] | None = None, workers: int | None = None) -> Path:
    """Write a CAMELYON16-like data set (layout in the module docstring).

    Parameters
    ----------
    out_dir : str or os.PathLike
        Root folder, created when missing. Files of the same names are replaced (a rerun writes the same bytes);
        slides or lesion files that this set would not write are refused, as they would join the set.
    preset : Camelyon16Preset, optional
        Counts, sizes, difficulty and seed; default ``Camelyon16Preset()``.
    progress : callable, optional
        Called as ``progress(i, n, name)`` after each slide, ``i`` from 1 to ``n``.
    workers : int, optional
        Slides written in parallel processes; default the number of CPU cores. The files do not depend on it.

    Returns
    -------
    Path
        ``truth.csv``.

    Raises
    ------
    ConfigError
        For a bad preset, a planned lesion that does not fit the slide, or stray slides in ``out_dir``.
    """
    preset = preset or Camelyon16Preset()
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    specs = plan_camelyon16(preset)
    out = Path(out_dir)
    planned = {f"{s.folder}/{s.name}.tif" for s in specs} | {f"{s.annotation_folder}/{s.name}.xml" for s in specs}
    folders = {s.folder for s in specs} | {s.annotation_folder for s in specs} | {
        "training/normal", "training/tumor", "testing/images"}
    # slides of another run would silently join this set (the bench takes every file it finds)
    stale = sorted(p.relative_to(out).as_posix() for f in folders if (out / f).is_dir() for p in (out / f).iterdir()
                   if p.suffix.lower() in (".tif", ".tiff", ".svs", ".xml")
                   and p.relative_to(out).as_posix() not in planned)
    if stale:
        raise ConfigError(f"{out} holds {len(stale)} slide or annotation file(s) that are not part of this set "
                          f"({', '.join(stale[:3])}{' …' if len(stale) > 3 else ''}): write into an empty folder")
    for s in specs:
        if s.label:
            # lesions that do not fit are found before any file is written
            slide_geometry(s)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    workers = min(workers if workers is not None else os.cpu_count() or 1, len(specs))
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(write_camelyon16_slide, out, s, preset): s.name for s in specs}
            try:
                for i, fut in enumerate(as_completed(futures), start=1):
                    rows[futures[fut]] = fut.result()
                    if progress is not None:
                        progress(i, len(specs), futures[fut])
            except BaseException:
                for fut in futures:  # do not paint the rest of a set that will not be complete
                    fut.cancel()
                raise
    else:
        for i, s in enumerate(specs, start=1):
            rows[s.name] = write_camelyon16_slide(out, s, preset)
            if progress is not None:
                progress(i, len(specs), s.name)
    ordered = [rows[s.name] for s in specs]
    reference = [[r["slide"], "Tumor" if r["label"] else "Normal",
                  _TYPE_NAMES.get(r["largest_lesion"], ""),
                  str(int(round(float(r["largest_lesion_um"])))) if r["label"] else ""]
                 for r in sorted((r for r in ordered if r["split"] == "test"), key=lambda r: r["slide"])]
    if reference:
        atomic_write(out / "testing" / "reference.csv", _csv(reference, None))
    write_json(out / "preset.json", asdict(preset))
    return atomic_write(out / "truth.csv", _csv(ordered, list(ordered[0])))
