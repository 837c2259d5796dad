"""Prediction from stores: slide probabilities with a checkpoint, per-tile scores written back, predictions CSV
and, with labels, metrics and plots.

The prediction columns and store score columns depend on the checkpoint's classes
(:mod:`slidestream.pipeline.classes`): two classes give ``probability``/``calibrated_probability`` of the positive
class and the score columns ``attention``, ``attention_normalized``, as for 0/1 labels; more classes give
``prediction``, ``confidence``, ``prob_<class>``, ``calibrated_prob_<class>`` and, besides ``attention`` (of the
predicted class where the head has per-class scores) and ``attention_normalized``, one tile score column per class
for heads that have them: ``attention_<class>`` (CLAM-MB, DSMIL: classes 1 … K-1) or ``probability_<class>``
(mean and max pooling). ABMIL, CLAM-SB and TransMIL have one attention map for every class.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..fileio import atomic_open, write_json
from ..mil import load_checkpoint, predict_classes
from ..mil.checkpoint import checkpoint_classes
from ..mil.standardize import FeatureNorm
from ..store import SlideStore
from .bags import load_bag
from .class_metrics import evaluate_predictions
from .classes import ClassSet, probability_columns
from .inputs import SlideInput, adopt_existing_stores, store_paths
from .records import SlideOutcome
from .reporting import QuietReporter, Reporter
from .runner import run_per_slide

__all__ = ["PredictSummary", "describe_rows", "predict_batch", "predict_stores", "write_predictions_csv"]


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(x)), float(np.max(x))
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def predict_stores(stores: list[Path], checkpoint: str | os.PathLike, *, model_name: str | None = None,
                   reporter: Reporter | None = None) -> tuple[list[dict], list[SlideOutcome]]:
    """Slide probabilities and per-tile scores for stores already embedded with the checkpoint's encoder.

    Writes ``scores/<model_name>`` into every store and returns one prediction row per slide (module docstring):
    for two classes probability, calibrated probability and fold-ensemble spread of the positive class; for more,
    the predicted class and every class's probability.
    """
    reporter = reporter or QuietReporter()
    model, _config, meta = load_checkpoint(checkpoint)
    encoder_name = meta["encoder"]
    model_name = model_name or Path(checkpoint).name
    temperature = float(getattr(model, "temperature", 1.0))
    classes = ClassSet.from_checkpoint(getattr(model, "classes", None), model.n_classes)
    rows: list[dict] = []

    norms = _feature_norms(meta, len(getattr(model, "members", [model])), checkpoint)

    def one(path: Path) -> dict:
        bag = load_bag(path, encoder_name)
        # One thread: small MIL forwards are much slower with torch's default thread pool on small machines.
        pred = predict_classes(model, [bag.features], temperature=temperature, num_threads=1, feature_norms=norms)
        row = {"slide_id": bag.slide_id, **probability_columns(classes, pred.probability[0], pred.calibrated[0],
                                                               pred.spread[0]), "tiles": len(bag.features)}
        columns, attrs = _score_columns(pred, classes, getattr(model, "class_score_kind", None))
        store = SlideStore.open(path, mode="r+")
        store.write_scores(model_name, np.column_stack(list(columns.values())),
                           attrs={"columns": list(columns), "checkpoint": str(checkpoint), **attrs})
        rows.append(row)
        return {k: v for k, v in row.items() if k != "slide_id"}

    outcomes = run_per_slide(stores, "predict", one, reporter, label=lambda p: p.name.removesuffix(".zarr"),
                             path=str)
    return rows, outcomes


def _score_columns(pred, classes: ClassSet, kind: str | None) -> tuple[dict[str, np.ndarray], dict]:
    """The tile score columns of one slide (module docstring) and the extra store attributes naming them:
    ``classes``, ``evidence_class`` (the class ``attention`` describes: the positive one of two named classes, the
    predicted one of more), ``prediction`` and ``class_columns`` (per-class column → class)."""
    att = np.asarray(pred.instance_scores[0], np.float32)
    if classes.binary:
        named = {} if classes.is_index else {"classes": list(classes.names), "evidence_class": str(classes.positive)}
        return {"attention": att, "attention_normalized": _minmax(att)}, named
    predicted = int(np.argmax(pred.calibrated[0]))
    per_class: dict[str, np.ndarray] = {}
    class_of: dict[str, str] = {}
    if pred.class_scores is not None and kind is not None:
        scores = np.asarray(pred.class_scores[0], np.float32)
        for k, name in enumerate(classes.names):
            if np.isfinite(scores[:, k]).all():  # DSMIL has no attention for class 0
                per_class[f"{kind}_{name}"] = scores[:, k]
                class_of[f"{kind}_{name}"] = name
        if kind == "attention" and np.isfinite(scores[:, predicted]).all():
            # The fold members may each report another class: draw the predicted class's map of every member.
            att = scores[:, predicted]
    columns = {"attention": att, "attention_normalized": _minmax(att), **per_class}
    return columns, {"classes": list(classes.names), "evidence_class": classes.names[predicted],
                     "prediction": classes.names[predicted], "class_columns": class_of}


def _feature_norms(meta: dict, n_members: int, checkpoint) -> list[FeatureNorm] | None:
    """Each member's feature normaliser: ``feature_norms`` (one per member), or the single ``feature_norm`` of
    checkpoints written before normalisers were fitted per fold (shared by all members), or None."""
    if "feature_norms" in meta:
        norms = [FeatureNorm.from_dict(d) for d in meta["feature_norms"]]
        if len(norms) != n_members:
            raise ConfigError(f"{checkpoint}: {len(norms)} feature normalisers for {n_members} ensemble members; "
                              "re-save the checkpoint")
        return norms
    if "feature_norm" in meta:
        return [FeatureNorm.from_dict(meta["feature_norm"])] * n_members
    return None


def describe_rows(rows: list[dict], inputs: list[SlideInput]) -> list[dict]:
    """Add to each prediction row what the batch's inputs say of its slide: ``slide`` (path), ``label`` and the
    manifest's metadata columns. ``label`` is a column as soon as one input of the batch has a label (empty for the
    others), and absent from a batch without labels. Returns ``rows``, updated in place."""
    by_id = {it.slide_id: it for it in inputs}
    labelled = any(it.label is not None for it in inputs)
    for r in rows:
        it = by_id[r["slide_id"]]
        r.update({"slide": str(it.path), **({"label": it.label} if labelled else {}), **it.meta})
    return rows


def write_predictions_csv(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Predictions table (one row per slide), written atomically."""
    path = Path(path)
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    with atomic_open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    return path


@dataclass
class PredictSummary:
    predictions_csv: Path
    rows: list[dict]
    metrics: dict | None
    by_group: dict | None
    metrics_json: Path | None
    outcomes: list[SlideOutcome]
    classes: ClassSet | None = None


def predict_batch(inputs: list[SlideInput], stores_dir: str | os.PathLike, checkpoint: str | os.PathLike,
                  out_dir: str | os.PathLike, *, threshold: float = 0.5, stratify: str | None = None,
                  seed: int = 0, reporter: Reporter | None = None) -> PredictSummary:
    """Predict embedded slides with a checkpoint: predictions CSV, per-tile scores in the stores and, when the
    inputs carry labels, metrics and plots, optionally per value of a metadata column.

    Two classes: AUC with bootstrap CI, balanced accuracy, sensitivity/specificity at ``threshold``, Brier, ECE,
    ``roc.png`` and ``reliability.png``; ``prediction`` is the positive class when its calibrated probability
    reaches ``threshold``. More classes (``threshold`` unused: the prediction is the most probable class): macro
    and per-class one-vs-rest AUC with CIs, accuracy, balanced accuracy, confusion matrix, Brier, top-label ECE,
    ``roc.png`` (one curve per class), ``confusion.png`` and ``reliability.png`` (top label). Labels the
    checkpoint's classes do not include are refused, naming the manifest row.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    adopt_existing_stores(inputs, stores_dir)  # stores made under the ids of an earlier version
    classes = ClassSet(tuple(checkpoint_classes(checkpoint)))
    for it in inputs:  # before any work: a label the model cannot score is a mistake in the manifest
        if it.label is not None:
            classes.index(it.label, it.origin or str(it.path))
    paths = store_paths(stores_dir, [it.slide_id for it in inputs])
    rows, outcomes = predict_stores(paths, checkpoint, model_name=Path(checkpoint).name, reporter=reporter)
    describe_rows(rows, inputs)
    if classes.binary:
        for r in rows:
            r["prediction"] = classes.label(int(r["calibrated_probability"] >= threshold))
    csv_path = write_predictions_csv(out_dir / "predictions.csv", rows)
    metrics = groups = json_path = None
    ev = evaluate_predictions(rows, inputs, classes, out_dir, threshold=threshold, seed=seed, stratify=stratify)
    if ev is not None:
        metrics, groups = ev.metrics, ev.groups
        json_path = write_json(out_dir / "metrics.json", {"overall": metrics, "by": stratify,
                                                          "groups": groups})
    return PredictSummary(csv_path, rows, metrics, groups, json_path, outcomes, classes)
