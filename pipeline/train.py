"""Training from stores: cross-validate a MIL head on labelled slides, calibrate, save the fold ensemble."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..mil import cross_validate, fit_temperature, save_checkpoint
from ..mil.standardize import fit_feature_norm
from ..store import SlideStore
from .bags import labelled_bags
from .inputs import SlideInput, adopt_existing_stores
from .reporting import QuietReporter, Reporter

__all__ = ["TrainSummary", "train_from_stores"]


@dataclass
class TrainSummary:
    checkpoint: Path
    n_slides: int
    folds: int
    cv_metrics: dict
    temperature: float
    seconds: float


def train_from_stores(
    inputs: list[SlideInput],
    stores_dir: str | os.PathLike,
    encoder_name: str,
    checkpoint: str | os.PathLike,
    config,
    *,
    folds: int = 5,
    meta: dict | None = None,
    reporter: Reporter | None = None,
) -> TrainSummary:
    """Cross-validate a MIL head on the labelled slides, calibrate on out-of-fold logits, save the fold ensemble.

    Slides whose manifest ``split`` is "test" are left out. The checkpoint's meta records the encoder and the
    tiling parameters, so :func:`run_inference` can process new slides the same way.
    """
    reporter = reporter or QuietReporter()
    t0 = time.perf_counter()
    stores_dir = Path(stores_dir)
    adopt_existing_stores(inputs, stores_dir)  # stores made under the ids of an earlier version
    train = [it for it in inputs if it.label is not None and (it.split or "train").lower() != "test"]
    if not train:
        raise ConfigError("no labelled training slides: the manifest needs a 'label' column (0/1)")
    bags, outcomes = labelled_bags(train, stores_dir, encoder_name, reporter)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        reporter.log(f"[yellow]{len(failed)} slide(s) left out of training (no features)[/yellow]")
    labels = np.array([b.label for b in bags])
    if len(set(labels.tolist())) < 2:
        raise ConfigError("training needs slides of both classes (labels 0 and 1)")
    k = int(min(folds, np.bincount(labels).min()))
    if k < 2:
        raise ConfigError("too few slides of the minority class for cross-validation (need at least 2)")
    # Encoders' feature scales differ by orders of magnitude (handcrafted statistics especially); standardising
    # with the training instances' statistics, saved in the checkpoint, makes one learning rate fit all.
    norm = fit_feature_norm([b.features for b in bags])
    with reporter.task(f"train {config.head} ({k}-fold CV, folds done)", k) as t:
        cv = cross_validate([norm.apply(b.features) for b in bags], labels, config, k=k,
                            progress=lambda done, total, info: t.update(done, total))
    temperature = float(fit_temperature(cv.oof_logits, labels))
    store0 = SlideStore.open(bags[0].store)
    meta = {
        "encoder": encoder_name,
        "tiling": {k_: store0.tiling[k_] for k_ in ("mpp", "tile_size", "overlap", "min_tissue")},
        "feature_attrs": dict(store0.group[f"features/{encoder_name}"].attrs),
        "cv_metrics": cv.metrics,
        "train_slides": [b.slide_id for b in bags],
        "folds": k,
        "feature_norm": norm.to_dict(),
        **(meta or {}),
    }
    path = save_checkpoint(checkpoint, cv.models, config, meta, temperature=temperature)
    return TrainSummary(checkpoint=Path(path), n_slides=len(bags), folds=k, cv_metrics=cv.metrics,
                        temperature=temperature, seconds=time.perf_counter() - t0)
