"""Labelled sets of synthetic slides laid out like a CAMELYON16 download, with annotations and a labels CSV."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..fileio import atomic_write
from .scene import SynthConfig
from .slide import write_synthetic_slide

__all__ = ["write_synthetic_dataset"]


def _child_seed(seed: int, label: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed), label, index]).generate_state(1)[0])


def write_synthetic_dataset(
    out_dir: str | os.PathLike,
    n_normal: int = 10,
    n_tumor: int = 10,
    *,
    config: SynthConfig | None = None,
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
    pen_fraction: float | None = None,
) -> Path:
    """Write a CAMELYON16-like set of synthetic slides with labels and tumour annotations.

    Files: ``normal_001.svs ...``, ``tumor_001.svs ...``, ``annotations/tumor_001.xml`` and
    ``.geojson`` per tumour slide, and ``labels.csv`` with columns ``slide,label,annotation``
    where ``slide`` and ``annotation`` are paths relative to ``out_dir`` (the CSV's folder) and
    ``annotation`` is empty for normal slides.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Output folder, created when missing.
    n_normal, n_tumor : int
        Number of slides without / with tumour.
    config : SynthConfig, optional
        Template for every slide; ``seed`` and ``tumor`` are replaced per slide.
    seed : int
        Dataset seed; each slide's seed is derived from it, its label and its index.
    progress : callable, optional
        Called as ``progress(i, n, name)`` after each slide, ``i`` from 1 to ``n``.
    pen_fraction : float, optional
        When given, each slide gets pen marks with this probability (drawn from its seed),
        overriding ``config.pen_marks``.

    Returns
    -------
    Path
        The ``labels.csv`` file.
    """
    if n_normal < 0 or n_tumor < 0 or n_normal + n_tumor == 0:
        raise ConfigError(f"need at least one slide, got n_normal={n_normal}, n_tumor={n_tumor}")
    if pen_fraction is not None and not 0 <= pen_fraction <= 1:
        raise ConfigError(f"pen_fraction must be in [0, 1], got {pen_fraction}")
    base = config if config is not None else SynthConfig()
    base.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    digits = max(3, len(str(max(n_normal, n_tumor))))
    jobs = [("normal", 0, i) for i in range(n_normal)] + [("tumor", 1, i) for i in range(n_tumor)]
    rows = []
    for done, (prefix, label, i) in enumerate(jobs, start=1):
        name = f"{prefix}_{i + 1:0{digits}d}"
        slide_seed = _child_seed(seed, label, i)
        cfg = replace(base, seed=slide_seed, tumor=bool(label))
        if pen_fraction is not None:
            cfg = replace(cfg, pen_marks=bool(np.random.default_rng([slide_seed, 4]).random() < pen_fraction))
        s = write_synthetic_slide(out / f"{name}.svs", cfg, annotation_dir=out / "annotations")
        ann = s.xml_path.relative_to(out).as_posix() if s.xml_path is not None else ""
        rows.append({"slide": f"{name}.svs", "label": label, "annotation": ann})
        if progress is not None:
            progress(done, len(jobs), name)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["slide", "label", "annotation"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = out / "labels.csv"
    atomic_write(csv_path, buf.getvalue())
    return csv_path
