"""Prediction from stores: slide probabilities with a checkpoint, per-tile scores written back, predictions CSV
and, with labels, metrics and plots."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, ConfigError
from ..evaluation import binary_metrics, metrics_by_group, plot_reliability, plot_roc
from ..fileio import OutputGuard, atomic_open, output_folder, protect_inputs, write_json
from ..mil import load_checkpoint, predict_ensemble
from ..mil.standardize import FeatureNorm
from ..store import SlideStore
from .bags import load_bag
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

    Writes ``scores/<model_name>`` (columns: attention, normalised attention) into every store and returns one
    prediction row per slide: probability, calibrated probability, fold-ensemble spread.
    """
    reporter = reporter or QuietReporter()
    model, _config, meta = load_checkpoint(checkpoint)
    encoder_name = checkpoint_encoder(meta, checkpoint)
    model_name = model_name or Path(checkpoint).name
    temperature = float(getattr(model, "temperature", 1.0))
    rows: list[dict] = []

    norms = _feature_norms(meta, len(getattr(model, "members", [model])), checkpoint)

    def one(path: Path) -> dict:
        bag = load_bag(path, encoder_name)
        x = bag.features
        # One thread: small MIL forwards are much slower with torch's default thread pool on small machines.
        raw, _, _ = predict_ensemble(model, [x], temperature=1.0, num_threads=1, feature_norms=norms)
        cal, spread, scores = predict_ensemble(model, [x], temperature=temperature, num_threads=1,
                                               feature_norms=norms)
        att = np.asarray(scores[0], np.float32)
        store = SlideStore.open(path, mode="r+")
        store.write_scores(model_name, np.column_stack([att, _minmax(att)]),
                           attrs={"columns": ["attention", "attention_normalized"], "checkpoint": str(checkpoint)})
        row = {"slide_id": bag.slide_id, "probability": float(raw[0]), "calibrated_probability": float(cal[0]),
               "uncertainty": float(spread[0]), "tiles": len(bag.features)}
        rows.append(row)
        return {k: v for k, v in row.items() if k != "slide_id"}

    outcomes = run_per_slide(stores, "predict", one, reporter, label=lambda p: p.name.removesuffix(".zarr"),
                             path=str)
    return rows, outcomes


def checkpoint_encoder(meta: dict, checkpoint: str | os.PathLike) -> str:
    """The encoder a checkpoint's head was trained on (``meta["encoder"]``), which prediction needs."""
    if not meta.get("encoder"):
        from ..mil.checkpoint import checkpoint_files

        raise CheckpointError(f"{checkpoint_files(checkpoint)[1]}: meta.encoder: missing (the encoder whose features "
                              "the head was trained on); re-save the checkpoint with meta={'encoder': NAME, ...}")
    return str(meta["encoder"])


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


def predict_batch(inputs: list[SlideInput], stores_dir: str | os.PathLike, checkpoint: str | os.PathLike,
                  out_dir: str | os.PathLike, *, threshold: float = 0.5, stratify: str | None = None,
                  seed: int = 0, reporter: Reporter | None = None, overwrite: bool = False) -> PredictSummary:
    """Predict embedded slides with a checkpoint: predictions CSV, per-tile scores in the stores and, when the
    inputs carry labels, metrics (AUC with bootstrap CI, balanced accuracy, sensitivity/specificity at
    ``threshold``, Brier, ECE) with ROC and reliability plots, optionally per value of a metadata column.

    Files in ``out_dir`` that slidestream did not write (or that were changed since) are not replaced unless
    ``overwrite``: they are named in an :class:`~slidestream.errors.OutputExistsError` before any work."""
    guard = OutputGuard(overwrite)
    out_dir = output_folder(out_dir, create=False)
    protect_inputs(p for it in inputs for p in (it.path, it.annotation))
    names = ["predictions.csv"] + (["metrics.json", "roc.png", "reliability.png"]
                                   if any(it.label is not None for it in inputs) else [])
    guard.check_all(out_dir / n for n in names)
    adopt_existing_stores(inputs, stores_dir)  # stores made under the ids of an earlier version
    paths = store_paths(stores_dir, [it.slide_id for it in inputs])
    rows, outcomes = predict_stores(paths, checkpoint, model_name=Path(checkpoint).name, reporter=reporter)
    describe_rows(rows, inputs)
    for r in rows:
        r["prediction"] = int(r["calibrated_probability"] >= threshold)
    output_folder(out_dir)
    with guard.writing(out_dir / "predictions.csv") as target:
        csv_path = write_predictions_csv(target, rows)
    labelled = [r for r in rows if r.get("label") is not None]
    metrics = groups = json_path = None
    if labelled:
        y = np.array([r["label"] for r in labelled])
        p = np.array([r["calibrated_probability"] for r in labelled])
        metrics = binary_metrics(y, p, threshold=threshold, seed=seed)
        with guard.writing(out_dir / "roc.png") as target:
            plot_roc(y, p, target, seed=seed)
        with guard.writing(out_dir / "reliability.png") as target:
            plot_reliability(y, p, target)
        if stratify:
            if any(stratify not in r for r in labelled):
                raise ConfigError(f"--by {stratify}: not a column of the manifest")
            groups = metrics_by_group(y, p, [r[stratify] for r in labelled], threshold=threshold, seed=seed)
        with guard.writing(out_dir / "metrics.json") as target:
            json_path = write_json(target, {"overall": metrics, "by": stratify, "groups": groups})
    return PredictSummary(csv_path, rows, metrics, groups, json_path, outcomes)
