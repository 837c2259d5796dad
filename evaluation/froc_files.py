"""CAMELYON16 FROC from files: detection CSVs, ground-truth annotations or official masks, folder against folder.

The maths (evaluation masks, hits, the curve and the score) is in :mod:`slidestream.evaluation.froc`; this module
reads the files the official evaluation reads and hands their contents to it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from shapely.geometry.base import BaseGeometry

from ..annotations import read_annotations, tumor_geometry
from ..errors import ConfigError
from ..wsi import open_slide
from .froc import (EVALUATION_LEVEL, L0_MPP, _check_mpp_level, _summarise, dilation_threshold_px, evaluation_mask,
                   lesion_hits)

__all__ = ["evaluate_froc_dirs", "format_froc", "read_detections_csv", "read_mask_image", "read_truth"]

_ANNOTATION_SUFFIXES = (".xml", ".json", ".geojson", ".json.gz", ".geojson.gz", ".xml.gz")
_MASK_SUFFIXES = (".tif", ".tiff")




_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def read_detections_csv(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a CAMELYON16 detection file: one ``confidence,X,Y`` line per detection, no header.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    points : ndarray, shape (K, 2), float64
        Level-0 ``x, y`` (integers in the official format; decimals are accepted).
    confidences : ndarray, shape (K,), float64

    Raises
    ------
    ConfigError
        On a line that is not three numbers. Blank lines are skipped, and so is a first line that is the header
        ``confidence,X,Y`` (any case; ``probability`` / ``p`` also accepted) — the official reader has none.
    FileNotFoundError
        If ``path`` does not exist.
    """
    path = Path(path)
    conf: list[float] = []
    xy: list[tuple[float, float]] = []
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            fields = [v.strip() for v in line.strip().split(",")]
            if fields == [""]:
                continue
            if lineno == 1 and not _NUMBER.match(fields[0]):
                names = [v.lower() for v in fields[:3]]
                if len(fields) == 3 and names[0] in ("confidence", "probability", "p") and names[1:] == ["x", "y"]:
                    continue
                raise ConfigError(
                    f"{path}:1: expected 'confidence,X,Y' numbers (no header), got {line.strip()!r}"
                )
            if len(fields) != 3 or not all(_NUMBER.match(v) for v in fields):
                raise ConfigError(
                    f"{path}:{lineno}: expected three numbers 'confidence,X,Y', got {line.strip()!r}"
                )
            conf.append(float(fields[0]))
            xy.append((float(fields[1]), float(fields[2])))
    points = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    return points, np.asarray(conf, dtype=np.float64)


def read_mask_image(
    path: str | os.PathLike, *, level: int = EVALUATION_LEVEL, tumor_value: int | None = 255
) -> np.ndarray:
    """Tumour mask of an official-style ground-truth image (pyramidal TIFF), read at ``level``.

    Parameters
    ----------
    path : str or os.PathLike
        Mask image whose level 0 matches the slide; it must hold a level with downsample ``2**level``.
    level : int, default 5
    tumor_value : int or None, default 255
        Value of the first channel that marks tumour (the official script uses 255); None: any non-zero value.

    Returns
    -------
    ndarray, shape (H, W), bool
        Pass to :func:`evaluation_mask`.

    Raises
    ------
    ConfigError
        When the image has no level with that downsample.
    SlideError
        When the image cannot be opened.
    """
    _, level = _check_mpp_level(1.0, level)
    want = float(2**level)
    # A pixel size is irrelevant for a mask; the override keeps files without one from failing.
    with open_slide(path, mpp=1.0) as mask:
        found = [i for i, d in enumerate(mask.level_downsamples) if abs(d / want - 1.0) < 0.01]
        if not found:
            raise ConfigError(
                f"{path}: mask has no level with downsample {want:g} (has "
                f"{', '.join(f'{d:.4g}' for d in mask.level_downsamples)}); write it as a pyramid, or pass "
                "its level-0 pixels downsampled to evaluation_mask as an array"
            )
        lv = found[0]
        pixels = mask.read_region((0, 0), lv, mask.level_dimensions[lv])[..., 0]
    return pixels != 0 if tumor_value is None else pixels == tumor_value


def read_truth(path: str | os.PathLike) -> BaseGeometry:
    """Tumour regions of a ground-truth annotation file (ASAP XML, QuPath GeoJSON, NCRF JSON), exclusions as holes.

    Returns
    -------
    shapely geometry
        In level-0 pixels; pass it to :func:`~slidestream.evaluation.froc.evaluation_mask`.
    """
    return tumor_geometry(read_annotations(path))


def _find_truth(annotations_dir: Path) -> dict[str, Path]:
    """Ground-truth files by lower-case slide name: ``<slide>.xml|json|geojson[.gz]`` or ``<slide>[_mask].tif``."""
    found: dict[str, Path] = {}
    for p in sorted(annotations_dir.iterdir()):
        if not p.is_file():
            continue
        low = p.name.lower()
        stem = None
        for suffix in _ANNOTATION_SUFFIXES + _MASK_SUFFIXES:
            if low.endswith(suffix):
                stem = low[: -len(suffix)]
                if suffix in _MASK_SUFFIXES and stem.endswith("_mask"):
                    stem = stem[: -len("_mask")]
                break
        if stem is None:
            continue
        if stem in found:
            raise ConfigError(
                f"{annotations_dir}: two ground-truth files for slide {stem!r} ({found[stem].name}, {p.name}); "
                "keep one"
            )
        found[stem] = p
    return found


def evaluate_froc_dirs(
    detections_dir: str | os.PathLike,
    annotations_dir: str | os.PathLike,
    *,
    mpp: float = L0_MPP,
    slide_sizes: Mapping[str, Sequence[float]] | None = None,
    level: int = EVALUATION_LEVEL,
    official_float32: bool = True,
) -> dict[str, Any]:
    """FROC of a folder of detection CSVs against a folder of ground truth, as the official script runs it.

    Parameters
    ----------
    detections_dir : str or os.PathLike
        Every ``<slide>.csv`` in it is one evaluated slide (:func:`read_detections_csv`); an empty CSV is a
        slide without detections.
    annotations_dir : str or os.PathLike
        Ground truth, matched to slides by name (case-insensitive): ``<slide>.xml`` (ASAP), ``.json`` (NCRF or
        GeoJSON), ``.geojson`` (optionally ``.gz``), or a mask image ``<slide>.tif`` / ``<slide>_mask.tif``
        (:func:`read_mask_image`). A slide without one is a normal slide.
    mpp : float, default 0.243
        Level-0 µm/px of the evaluation rules.
    slide_sizes : mapping of slide name to (w, h), optional
        Level-0 slide sizes for rasterising annotations. A slide not in it gets the smallest size that holds
        every annotation vertex plus the growth margin and every detection; the result is the same as with the
        real size unless a lesion touches the real slide border.
    level : int, default 5
    official_float32 : bool, default True
        See :func:`compute_froc`.

    Returns
    -------
    dict
        As :func:`compute_froc`, plus ``detections_dir``, ``annotations_dir`` and
        ``truth_without_detections``: ground-truth slides with no CSV (not evaluated, as in the official
        script; their lesions do not count).

    Raises
    ------
    ConfigError
        A folder is missing, no CSV is found, two ground-truth files match one slide, or a file is malformed.
    """
    mpp, level = _check_mpp_level(mpp, level)
    det_dir, ann_dir = Path(detections_dir), Path(annotations_dir)
    for d, what in ((det_dir, "detections"), (ann_dir, "annotations")):
        if not d.is_dir():
            raise ConfigError(f"{d}: {what} folder not found")
    csvs = sorted(p for p in det_dir.iterdir() if p.is_file() and p.suffix.lower() == ".csv")
    if not csvs:
        raise ConfigError(f"{det_dir}: no <slide>.csv detection files; write them with write_detections_csv")
    truth = _find_truth(ann_dir)
    sizes = {str(k).lower(): v for k, v in (slide_sizes or {}).items()}
    ds = 2**level
    margin0 = ds * (math.ceil(dilation_threshold_px(mpp, level)) + 2)
    hits = []
    for csv_path in csvs:
        name = csv_path.stem
        points, conf = read_detections_csv(csv_path)
        gt = truth.get(name.lower())
        if gt is None:
            hits.append(lesion_hits(points, conf, None, mpp=mpp, level=level, name=name))
            continue
        if gt.name.lower().endswith(_MASK_SUFFIXES):
            tumor: Any = read_mask_image(gt, level=level)
            size = sizes.get(name.lower())
        else:
            tumor = read_truth(gt)
            size = sizes.get(name.lower())
            if size is None:
                w = h = 1.0
                if not tumor.is_empty:
                    _, _, maxx, maxy = tumor.bounds
                    w, h = maxx + margin0, maxy + margin0
                if points.size:
                    w = max(w, float(points[:, 0].max()) + 1)
                    h = max(h, float(points[:, 1].max()) + 1)
                size = (w, h)
        mask = evaluation_mask(tumor, size, mpp=mpp, level=level)
        hits.append(lesion_hits(points, conf, mask, mpp=mpp, level=level, name=name))
    result = _summarise(hits, mpp=mpp, level=level, official_float32=official_float32)
    evaluated = {p.stem.lower() for p in csvs}
    result["truth_without_detections"] = sorted(p.name for s, p in truth.items() if s not in evaluated)
    result["detections_dir"] = str(det_dir)
    result["annotations_dir"] = str(ann_dir)
    return result


def format_froc(result: Mapping[str, Any]) -> str:
    """Plain-text summary of a :func:`compute_froc` / :func:`evaluate_froc_dirs` result.

    Returns
    -------
    str
        A header line with the slide, lesion and detection counts, the six sensitivities, and the FROC score.
    """
    header = (
        f"CAMELYON16 FROC ({result.get('mpp', L0_MPP):g} µm/px, level {result.get('level', EVALUATION_LEVEL)}): "
        f"{result['n_slides']} slides ({result['n_tumor_slides']} tumour, {result['n_normal_slides']} normal), "
        f"{result['n_lesions']} lesions (+{result['n_itc']} ITC), {result['n_detections']} detections"
    )
    lines = [header, f"  {'avg FPs/slide':>13}  sensitivity"]
    for key, s in result["sensitivity"].items():
        lines.append(f"  {key:>13}  {s:.4f}" if math.isfinite(s) else f"  {key:>13}  n/a")
    if result.get("defined", True):
        lines.append(f"FROC score: {result['froc']:.4f}")
    else:
        lines.append("FROC score: undefined (no non-ITC lesion in any evaluated slide)")
    missing = result.get("truth_without_detections") or []
    if missing:
        lines.append(
            f"warning: {len(missing)} ground-truth slide(s) have no detection CSV and were not evaluated: "
            + ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
        )
    return "\n".join(lines)
