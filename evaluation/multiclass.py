"""Slide-level metrics for tasks of ``K >= 2`` classes (subtyping: LUAD / LUSC / …), as plain JSON-able dicts.

Inputs are ``y_true`` ``(n,)`` integer class indices in ``[0, K)`` and ``probs`` ``(n, K)`` class probabilities
(rows summing to 1); the predicted class is the arg-max. The one-vs-rest AUC of class ``k`` is the ROC AUC of
``probs[:, k]`` for "class k" against every other class; the macro AUC is their mean over the classes for which
it is defined (the class and some other class present), as ``sklearn.metrics.roc_auc_score(multi_class="ovr",
average="macro")`` computes it when every class is present. Undefined quantities are NaN, never an exception.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError
from .metrics import _auc_rows, top_label_calibration_error

__all__ = ["confusion_matrix", "multiclass_metrics"]


def _inputs(y_true: Sequence[int], probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or y.ndim != 1 or p.shape[0] != y.size or p.shape[1] < 2:
        raise ConfigError(f"probs must be (n, K>=2) with n = len(y_true), got {p.shape} for {y.shape} labels")
    if y.size and (y.dtype.kind == "f" and not np.all(y == np.round(y))):
        raise ConfigError("y_true must be integer class indices")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ConfigError(f"y_true must be class indices in [0, {p.shape[1]})")
    if not np.all(np.isfinite(p)) or (p.size and (p.min() < 0 or p.max() > 1)):
        raise ConfigError("probs must be finite probabilities in [0, 1]")
    return y, p


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """``(K, K)`` int64 counts: row = true class, column = predicted class."""
    y = np.asarray(y_true, dtype=np.int64)
    pred = np.asarray(y_pred, dtype=np.int64)
    if y.shape != pred.shape:
        raise ConfigError(f"y_true and y_pred must have one entry each per case, got {y.shape} and {pred.shape}")
    out = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(out, (y, pred), 1)
    return out


def _ovr_aucs(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``(B, K)`` one-vs-rest AUC of each class for each row of ``y`` ``(B, n)`` / ``p`` ``(B, n, K)``."""
    k = p.shape[-1]
    return np.stack([_auc_rows((y == c).astype(np.int64), p[..., c]) for c in range(k)], axis=-1)


def multiclass_metrics(y_true: Sequence[int], probs: np.ndarray, *, class_names: Sequence[str] | None = None,
                       n_bootstrap: int = 0, ci: float = 0.95, seed: int = 0, n_bins: int = 10) -> dict[str, Any]:
    """All multi-class metrics in one dict.

    Parameters
    ----------
    y_true : array_like
        ``(n,)`` class indices in ``[0, K)``.
    probs : array_like
        ``(n, K)`` class probabilities.
    class_names : sequence of str, optional
        Names of the ``K`` classes (keys of ``per_class``); default ``"0" … "K-1"``.
    n_bootstrap : int, default 0
        Bootstrap resamples (of all ``n`` cases) for percentile intervals of the macro and per-class AUCs; 0
        skips them (the intervals are NaN). A resample where a class's AUC is undefined leaves that class out
        of that resample's macro mean, as for the point estimate.
    ci : float, default 0.95
    seed : int, default 0
    n_bins : int, default 10
        Confidence bins of the top-label ECE.

    Returns
    -------
    dict
        ``n``, ``n_classes``, ``classes`` (names), ``accuracy``, ``balanced_accuracy`` (mean recall over the
        classes present), ``macro_auc_ovr`` with ``macro_auc_ci_low``/``macro_auc_ci_high``, ``auc_defined``,
        ``brier`` (mean over cases of ``sum_k (p_k - [y = k])^2``), ``log_loss`` (nats), ``ece_top_label``,
        ``mce_top_label``, ``confusion_matrix`` (``K x K`` list, rows true, columns predicted) and ``per_class``:
        per name ``n``, ``auc`` (one-vs-rest) with ``auc_ci_low``/``auc_ci_high``, ``recall`` (sensitivity),
        ``precision``, ``specificity``, ``f1`` (NaN where undefined).
    """
    y, p = _inputs(y_true, probs)
    k = p.shape[1]
    names = [str(c) for c in (class_names if class_names is not None else range(k))]
    if len(names) != k:
        raise ConfigError(f"class_names has {len(names)} names for {k} classes")
    if not 0 < ci < 1:
        raise ConfigError(f"ci must be in (0, 1), got {ci}")
    pred = p.argmax(axis=1) if y.size else np.zeros(0, np.int64)
    cm = confusion_matrix(y, pred, k)
    aucs = _ovr_aucs(y[None], p[None])[0] if y.size else np.full(k, np.nan)
    defined = np.isfinite(aucs)
    macro = float(aucs[defined].mean()) if defined.any() else math.nan
    lo = hi = math.nan
    class_lo, class_hi = np.full(k, np.nan), np.full(k, np.nan)
    if n_bootstrap > 0 and defined.any():
        rng = np.random.default_rng(seed)
        boot = []
        chunk = max(1, 2_000_000 // max(1, y.size * k))
        for start in range(0, n_bootstrap, chunk):
            idx = rng.integers(0, y.size, size=(min(chunk, n_bootstrap - start), y.size))
            boot.append(_ovr_aucs(y[idx], p[idx]))
        boot = np.concatenate(boot)  # (B, K), NaN where undefined
        alpha = (1 - ci) / 2
        with np.errstate(invalid="ignore"):
            usable = np.isfinite(boot).any(axis=1)
            means = np.nanmean(boot[usable], axis=1) if usable.any() else np.zeros(0)
        if means.size:
            lo, hi = float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))
        for c in range(k):
            col = boot[:, c][np.isfinite(boot[:, c])]
            if col.size:
                class_lo[c], class_hi[c] = np.quantile(col, alpha), np.quantile(col, 1 - alpha)
    per_class: dict[str, dict[str, Any]] = {}
    recalls = []
    for c, name in enumerate(names):
        tp = int(cm[c, c])
        n_c = int(cm[c].sum())
        called = int(cm[:, c].sum())
        negatives = int(y.size - n_c)
        recall = tp / n_c if n_c else math.nan
        precision = tp / called if called else math.nan
        specificity = (negatives - (called - tp)) / negatives if negatives else math.nan
        f1 = 2 * tp / (n_c + called) if n_c + called else math.nan
        if n_c:
            recalls.append(recall)
        per_class[name] = {"n": n_c, "auc": float(aucs[c]), "auc_ci_low": float(class_lo[c]),
                           "auc_ci_high": float(class_hi[c]), "recall": float(recall),
                           "precision": float(precision), "specificity": float(specificity), "f1": float(f1)}
    onehot = np.eye(k)[y] if y.size else np.zeros((0, k))
    out: dict[str, Any] = {
        "n": int(y.size),
        "n_classes": k,
        "classes": names,
        "accuracy": float(np.mean(pred == y)) if y.size else math.nan,
        "balanced_accuracy": float(np.mean(recalls)) if recalls else math.nan,
        "macro_auc_ovr": macro,
        "macro_auc_ci_low": lo,
        "macro_auc_ci_high": hi,
        "auc_defined": bool(defined.any()),
        "brier": float(np.mean(np.sum((p - onehot) ** 2, axis=1))) if y.size else math.nan,
        "log_loss": float(-np.mean(np.log(np.clip(p[np.arange(y.size), y], 1e-15, 1.0)))) if y.size else math.nan,
        "confusion_matrix": cm.tolist(),
        "per_class": per_class,
    }
    out.update(top_label_calibration_error(y, p, n_bins) if y.size else
               {"ece_top_label": math.nan, "mce_top_label": math.nan})
    return out
