"""Plots of evaluation results, written as PNG: ROC curves (binary, and one-vs-rest per class), reliability
diagrams, confusion matrices and FROC curves.

They use matplotlib's object API with the Agg canvas, so they need no display, do not touch pyplot's global state,
and are written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..viz.figure import new_figure, save_png
from .froc import FROC_RATES
from .metrics import _calibration_bins, _inputs, expected_calibration_error, roc_auc
from .multiclass import confusion_matrix
from .multiclass import _inputs as _class_inputs

__all__ = ["plot_confusion_matrix", "plot_froc", "plot_reliability", "plot_roc", "plot_roc_ovr"]

#: The official FROC rates as the keys of a FROC result's ``sensitivity`` mapping.
FROC_KEYS = tuple(f"{r:g}" for r in FROC_RATES)


def plot_roc(y_true: Sequence[int], y_prob: Sequence[float], path: str | os.PathLike, *,
             title: str | None = None, n_bootstrap: int = 1000, seed: int = 0) -> Path:
    """Write a ROC curve PNG (AUC and its CI in the legend); a one-class input gives a labelled empty plot.

    Returns the path written.
    """
    from sklearn.metrics import roc_curve

    y, p = _inputs(y_true, y_prob)
    fig = new_figure((4.5, 4.5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1)
    stats = roc_auc(y, p, n_bootstrap=n_bootstrap, seed=seed)
    if stats["auc_defined"]:
        fpr, tpr, _ = roc_curve(y, p)
        label = f"AUC {stats['auc']:.3f}"
        if np.isfinite(stats["auc_ci_low"]):
            label += f" ({stats['auc_ci_low']:.3f}-{stats['auc_ci_high']:.3f})"
        ax.plot(fpr, tpr, lw=2, label=label)
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "ROC undefined:\nonly one class present", ha="center", va="center")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity", title=title or "ROC")
    fig.tight_layout()
    return save_png(fig, path, dpi=120)


def plot_reliability(y_true: Sequence[int], y_prob: Sequence[float], path: str | os.PathLike, *,
                     n_bins: int = 10, title: str | None = None) -> Path:
    """Write a reliability diagram PNG: observed positive fraction against mean probability per bin.

    Bars show bin occupancy on a second axis; the title carries the ECE. Returns the path written.
    """

    y, p = _inputs(y_true, y_prob)
    fig = new_figure((4.5, 4.5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1)
    if y.size:
        count, conf, freq = _calibration_bins(y, p, n_bins)
        used = count > 0
        ax.plot(conf[used], freq[used], marker="o", lw=2, label="model")
        occ = ax.twinx()
        centres = (np.arange(n_bins) + 0.5) / n_bins
        occ.bar(centres, count / y.size, width=1.0 / n_bins, alpha=0.2, color="0.4")
        occ.set_ylabel("fraction of cases")
        ece = expected_calibration_error(y, p, n_bins)["ece"]
        heading = f"{title or 'Reliability'} (ECE {ece:.3f})"
    else:
        heading = f"{title or 'Reliability'} (no cases)"
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted probability", ylabel="observed positive fraction",
           title=heading)
    fig.tight_layout()
    return save_png(fig, path, dpi=120)


def plot_froc(result: dict, path: Path) -> Path:
    """FROC curve PNG: sensitivity against average false positives per slide, the six official points marked."""

    fig = new_figure((5, 4))
    ax = fig.add_subplot()
    fps, sens = np.asarray(result.get("fps", []), float), np.asarray(result.get("sensitivities", []), float)
    if fps.size:
        ax.step(fps, sens, where="post", lw=1.5)
    xs = [float(k) for k in FROC_KEYS]
    ys = [result["sensitivity"].get(k, np.nan) for k in FROC_KEYS]
    ax.plot(xs, ys, "o", color="C3", label=f"FROC {result.get('froc', float('nan')):.3f}")
    ax.set(xscale="log", xlim=(0.125, 16), ylim=(0, 1.02), xlabel="average false positives per slide",
           ylabel="lesion sensitivity", title="Lesion FROC (CAMELYON16 rules)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return save_png(fig, path, dpi=120)


def plot_roc_ovr(y_true: Sequence[int], probs: np.ndarray, path: str | os.PathLike, *,
                 class_names: Sequence[str] | None = None, title: str | None = None) -> Path:
    """Write one-vs-rest ROC curves of a multi-class task to a PNG, one curve per class (its AUC in the legend).

    Parameters
    ----------
    y_true : array_like
        ``(n,)`` class indices in ``[0, K)``.
    probs : array_like
        ``(n, K)`` class probabilities.
    path : str or os.PathLike
    class_names : sequence of str, optional
        Legend names of the ``K`` classes.
    title : str, optional

    Returns the path written; a class whose curve is undefined (absent, or the only class) is listed as such.
    """
    from sklearn.metrics import roc_curve

    y, p = _class_inputs(y_true, probs)
    names = [str(c) for c in (class_names if class_names is not None else range(p.shape[1]))]
    fig = new_figure((5, 4.5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1)
    for c, name in enumerate(names):
        yc = (y == c).astype(np.int64)
        if 0 < yc.sum() < yc.size:
            fpr, tpr, _ = roc_curve(yc, p[:, c])
            auc = roc_auc(yc, p[:, c], n_bootstrap=0)["auc"]
            ax.plot(fpr, tpr, lw=2, label=f"{name} vs rest: AUC {auc:.3f}")
        else:
            ax.plot([], [], lw=0, label=f"{name}: undefined (n={int(yc.sum())})")
    ax.legend(loc="lower right", fontsize=8)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity",
           title=title or "ROC, one class vs the rest")
    fig.tight_layout()
    return save_png(fig, path, dpi=120)


def plot_confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], path: str | os.PathLike, *,
                          class_names: Sequence[str], title: str | None = None) -> Path:
    """Write a confusion matrix PNG: rows are true classes, columns predicted ones.

    Each cell shows its count and its share of the row (the recall on the diagonal); the colour is that share,
    so classes of different sizes read alike.

    Parameters
    ----------
    y_true, y_pred : array_like
        ``(n,)`` class indices in ``[0, K)``, ``K = len(class_names)``.
    path : str or os.PathLike
    class_names : sequence of str
    title : str, optional

    Returns the path written.
    """
    names = [str(c) for c in class_names]
    cm = confusion_matrix(y_true, y_pred, len(names))
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(rows > 0, cm / np.maximum(rows, 1), 0.0)
    side = 2.2 + 0.7 * len(names)
    fig = new_figure((side + 0.8, side))
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{cm[i, j]}\n{share[i, j]:.0%}" if rows[i, 0] else "0", ha="center", va="center",
                    color="white" if share[i, j] > 0.6 else "black", fontsize=9)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    accuracy = np.trace(cm) / cm.sum() if cm.sum() else float("nan")
    ax.set(xlabel="predicted class", ylabel="true class",
           title=f"{title or 'Confusion matrix'} (accuracy {accuracy:.3f}, n={int(cm.sum())})")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    return save_png(fig, path, dpi=120)
