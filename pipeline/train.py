"""Training from stores: cross-validate a MIL head on labelled slides, calibrate, save the fold ensemble."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..mil import cross_validate, fit_temperature, save_checkpoint
from ..mil.splits import group_keys
from ..store import SlideStore
from .bags import labelled_bags
from .classes import ClassSet, class_set_for
from .inputs import SlideInput, adopt_existing_stores
from .records import SlideOutcome
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
    failed: list[SlideOutcome] = field(default_factory=list)  # slides left out: no, incomplete or damaged features
    classes: ClassSet | None = None


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
    classes: Sequence[int | str] | str | None = None,
) -> TrainSummary:
    """Cross-validate a MIL head on the labelled slides, calibrate on out-of-fold logits, save the fold ensemble.

    Slides whose manifest ``split`` is "test" are left out. Slides of one ``patient`` share a fold. Each fold's
    model gets a feature normaliser fitted on its own training slides (so no held-out slide's statistics reach it);
    the checkpoint's meta holds them as ``feature_norms`` (one per member), with the encoder and the tiling
    parameters, so :func:`run_inference` can process new slides the same way.

    ``classes`` (``--classes``) orders the class names; by default names are sorted and integer labels are their
    own indices (:func:`slidestream.pipeline.classes.class_set_for`). The head gets one output per class, the
    temperature is fitted on the ``K`` out-of-fold logits, and the order is saved in the checkpoint. Every class
    needs labelled training slides.
    """
    reporter = reporter or QuietReporter()
    t0 = time.perf_counter()
    stores_dir = Path(stores_dir)
    adopt_existing_stores(inputs, stores_dir)  # stores made under the ids of an earlier version
    train = [it for it in inputs if it.label is not None and (it.split or "train").lower() != "test"]
    if not train:
        raise ConfigError("no labelled training slides: the manifest needs a 'label' column (class indices 0, 1 … "
                          "or class names)")
    class_set = class_set_for(((it.label, it.origin or str(it.path)) for it in train), classes)
    index = {it.slide_id: class_set.index(it.label, it.origin or str(it.path)) for it in train}
    if config.n_classes not in (None, class_set.n):
        raise ConfigError(f"the training configuration says {config.n_classes} classes but the labels give "
                          f"{class_set.n} ({', '.join(class_set.names)})")
    config = dataclasses.replace(config, n_classes=class_set.n)
    bags, outcomes = labelled_bags(train, stores_dir, encoder_name, reporter)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        reporter.log(f"[yellow]{len(failed)} slide(s) left out of training (features missing or damaged)[/yellow]")
    for b in bags:
        b.label = index[b.slide_id]
    labels = np.array([b.label for b in bags], dtype=np.int64)
    empty = [name for k, name in enumerate(class_set.names) if not np.any(labels == k)]
    if empty:
        raise ConfigError(f"class {empty[0]!r} has no labelled training slide with features (classes: "
                          f"{', '.join(class_set.names)}); training needs slides of every class")
    patient = {it.slide_id: it.patient for it in train}
    groups = [patient.get(b.slide_id) for b in bags]  # None: a patient of its own
    keys = group_keys(groups, len(groups))
    n_groups = min(len({g for g, y in zip(keys, labels) if y == c}) for c in set(labels.tolist()))
    k = int(min(folds, n_groups))
    if k < 2:
        raise ConfigError("too few slides (patients) of the minority class for cross-validation (need at least 2)")
    # Encoders' feature scales differ by orders of magnitude (handcrafted statistics especially); standardising
    # with each fold's training instances' statistics, saved in the checkpoint, makes one learning rate fit all.
    with reporter.task(f"train {config.head} ({k}-fold CV, folds done)", k) as t:
        cv = cross_validate([b.features for b in bags], labels, config, k=k, groups=groups, standardize=True,
                            progress=lambda done, total, info: t.update(done, total))
    temperature = float(fit_temperature(cv.oof_logits, labels))
    if "per_class" in cv.metrics:  # name the classes of the multi-class CV metrics
        cv.metrics["classes"] = list(class_set.names)
        cv.metrics["per_class"] = dict(zip(class_set.names, cv.metrics["per_class"].values()))
    store0 = SlideStore.open(bags[0].store)
    meta = {
        "encoder": encoder_name,
        # what `slidestream run` needs to tile new slides the same way (keep rule and tissue settings included)
        "tiling": {k_: store0.tiling[k_] for k_ in ("mpp", "tile_size", "overlap", "min_tissue", "keep_rule", "tissue")
                   if k_ in store0.tiling},
        "feature_attrs": dict(store0.group[f"features/{encoder_name}"].attrs),
        "cv_metrics": cv.metrics,
        "train_slides": [b.slide_id for b in bags],
        "folds": k,
        "patients": groups,
        "cv_fold": cv.splits.fold.tolist(),
        "feature_norms": [norm.to_dict() for norm in cv.feature_norms],
        **(meta or {}),
    }
    path = save_checkpoint(checkpoint, cv.models, config, meta, temperature=temperature,
                           classes=class_set.to_json())
    return TrainSummary(checkpoint=Path(path), n_slides=len(bags), folds=k, cv_metrics=cv.metrics,
                        temperature=temperature, seconds=time.perf_counter() - t0, failed=failed, classes=class_set)
