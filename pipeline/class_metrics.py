"""Metrics and plots of a predictions table against the manifest's labels, for two classes or more.

Two classes: :func:`~slidestream.evaluation.binary_metrics` of the calibrated probability of the positive class,
``roc.png`` and (optionally) ``reliability.png``, as before classes had names. More classes:
:func:`~slidestream.evaluation.multiclass_metrics` of the calibrated class probabilities (accuracy, balanced
accuracy, macro and per-class one-vs-rest AUC with bootstrap CIs, confusion matrix, Brier, top-label ECE),
``roc.png`` (one curve per class), ``confusion.png`` and (optionally) a top-label ``reliability.png``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..evaluation import (binary_metrics, metrics_by_group, multiclass_metrics, plot_confusion_matrix,
                          plot_reliability, plot_roc, plot_roc_ovr)
from .classes import ClassSet
from .inputs import SlideInput

__all__ = ["Evaluation", "class_probabilities", "evaluate_predictions", "multiclass_report_lines", "row_caption"]


@dataclass
class Evaluation:
    """What :func:`evaluate_predictions` computed and wrote."""

    metrics: dict
    groups: dict | None = None
    plots: dict[str, Path] = field(default_factory=dict)


def class_probabilities(rows: list[dict], classes: ClassSet) -> np.ndarray:
    """``(n, K)`` calibrated class probabilities of prediction rows (binary rows: ``[1 - p, p]``)."""
    if classes.binary:
        p = np.array([float(r["calibrated_probability"]) for r in rows], dtype=np.float64)
        return np.stack([1.0 - p, p], axis=1) if len(rows) else np.zeros((0, 2))
    return np.array([[float(r[f"calibrated_prob_{n}"]) for n in classes.names] for r in rows],
                    dtype=np.float64).reshape(len(rows), classes.n)


def evaluate_predictions(rows: list[dict], inputs: list[SlideInput], classes: ClassSet, out_dir: Path, *,
                         threshold: float = 0.5, seed: int = 0, n_bootstrap: int = 1000, stratify: str | None = None,
                         reliability: bool = True, title: str | None = None) -> Evaluation | None:
    """Metrics of the rows whose slide has a label, and their plots in ``out_dir`` (module docstring).

    Parameters
    ----------
    rows : list of dict
        Prediction rows (:func:`slidestream.pipeline.predict.predict_stores`), with ``slide_id``.
    inputs : list of SlideInput
        The batch's slides: their labels, mapped to the model's classes here (a label the model does not know is
        an error naming the manifest row).
    classes : ClassSet
        The checkpoint's classes.
    out_dir : pathlib.Path
    threshold : float, default 0.5
        Decision threshold on the positive class's calibrated probability (two classes only).
    seed, n_bootstrap : int
        Bootstrap of the AUC intervals.
    stratify : str, optional
        Also compute the metrics per value of this manifest column (a metadata column, or ``split``).
    reliability : bool, default True
        Also draw ``reliability.png``.
    title : str, optional
        Title of ``roc.png``.

    Returns
    -------
    Evaluation or None
        None when no row has a labelled slide.
    """
    by_id = {it.slide_id: it for it in inputs}
    labelled = [r for r in rows if by_id.get(r["slide_id"]) is not None and by_id[r["slide_id"]].label is not None]
    if not labelled:
        return None
    y = np.array([classes.index(by_id[r["slide_id"]].label, by_id[r["slide_id"]].origin or str(
        by_id[r["slide_id"]].path)) for r in labelled], dtype=np.int64)
    probs = class_probabilities(labelled, classes)
    keys = None
    if stratify:
        def value(r: dict) -> str:
            if stratify in r:
                return str(r[stratify])
            if stratify == "split":
                return by_id[r["slide_id"]].split or ""
            raise ConfigError(f"--by {stratify}: not a column of the manifest")

        keys = [value(r) for r in labelled]
    out_dir = Path(out_dir)
    plots: dict[str, Path] = {}
    if classes.binary:
        p = probs[:, 1]
        metrics = binary_metrics(y, p, threshold=threshold, n_bootstrap=n_bootstrap, seed=seed)
        plots["roc"] = plot_roc(y, p, out_dir / "roc.png", title=title, seed=seed)
        if reliability:
            plots["reliability"] = plot_reliability(y, p, out_dir / "reliability.png")
        groups = None if keys is None else metrics_by_group(y, p, keys, threshold=threshold, seed=seed)
        return Evaluation(metrics, groups, plots)
    names = list(classes.names)
    metrics = multiclass_metrics(y, probs, class_names=names, n_bootstrap=n_bootstrap, seed=seed)
    plots["roc"] = plot_roc_ovr(y, probs, out_dir / "roc.png", class_names=names, title=title)
    plots["confusion"] = plot_confusion_matrix(y, probs.argmax(axis=1), out_dir / "confusion.png", class_names=names)
    if reliability:
        # Top-label reliability: is the predicted class right as often as its probability says?
        plots["reliability"] = plot_reliability((probs.argmax(axis=1) == y).astype(np.int64), probs.max(axis=1),
                                                out_dir / "reliability.png", title="Top-label reliability")
    groups = None
    if keys is not None:
        arr = np.asarray(keys, dtype=object)
        groups = {g: multiclass_metrics(y[arr == g], probs[arr == g], class_names=names, n_bootstrap=n_bootstrap,
                                        seed=seed) for g in sorted(set(keys))}
    return Evaluation(metrics, groups, plots)


def row_caption(row: dict, classes: ClassSet) -> str | None:
    """Heatmap title text of a prediction row: ``P(Tumor) = 0.91`` or ``LUSC (0.78)``; None for 0/1 tasks,
    whose heatmaps keep their ``P(tumour)`` title."""
    if classes.binary:
        if classes.is_index or "calibrated_probability" not in row:
            return None
        return f"P({classes.positive}) = {float(row['calibrated_probability']):.3f}"
    if "prediction" not in row:
        return None
    return f"{row['prediction']} ({float(row['confidence']):.3f})"


def multiclass_report_lines(metrics: dict, rows: list[dict], classes: ClassSet) -> tuple[list[str], list[str]]:
    """Markdown of a multi-class benchmark: the headline bullets, and the per-class and per-slide tables."""
    f = lambda v: "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"  # noqa: E731
    head = [f"- **macro one-vs-rest AUC {f(metrics['macro_auc_ovr'])}** (95 % bootstrap CI "
            f"{f(metrics['macro_auc_ci_low'])}–{f(metrics['macro_auc_ci_high'])}), balanced accuracy "
            f"{f(metrics['balanced_accuracy'])}, accuracy {f(metrics['accuracy'])}, {metrics['n']} test slides, "
            f"{classes.n} classes ({', '.join(classes.names)}); confusion matrix: `confusion.png`"]
    tables = ["| class | slides | AUC (one vs rest) | 95 % CI | recall | precision |", "|---|---|---|---|---|---|"]
    for name in classes.names:
        c = metrics["per_class"][name]
        tables.append(f"| {name} | {c['n']} | {f(c['auc'])} | {f(c['auc_ci_low'])}–{f(c['auc_ci_high'])} | "
                      f"{f(c['recall'])} | {f(c['precision'])} |")
    tables += ["", "| true \\ predicted | " + " | ".join(classes.names) + " |",
               "|---|" + "---|" * classes.n]
    for name, counts in zip(classes.names, metrics["confusion_matrix"]):
        tables.append(f"| {name} | " + " | ".join(str(v) for v in counts) + " |")
    tables += ["", "| slide | label | prediction | confidence | spread | "
               + " | ".join(f"P({n})" for n in classes.names) + " |",
               "|---|---|---|---|---|" + "---|" * classes.n]
    for r in rows:
        tables.append(f"| {r['slide_id']} | {r.get('label', '')} | {r['prediction']} | {r['confidence']:.3f} | "
                      f"{r['uncertainty']:.3f} | "
                      + " | ".join(f"{r[f'calibrated_prob_{n}']:.3f}" for n in classes.names) + " |")
    return head, tables
