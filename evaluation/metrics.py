"""Slide-level evaluation metrics for binary tasks, as plain JSON-able dicts (multi-class ones are in
:mod:`slidestream.evaluation.multiclass`).

Every function takes ``y_true`` ``(n,)`` with labels in ``{0, 1}`` and ``y_prob`` ``(n,)`` probabilities of
class 1 in ``[0, 1]``. Quantities that are undefined for the data (AUC with one class, sensitivity without
positives) are ``float("nan")`` with a boolean flag saying so; nothing raises for one-class input.
:func:`slidestream.fileio.strict_json` turns NaN into ``None`` for strict JSON. Plots of these metrics are in
:mod:`slidestream.evaluation.plots`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

from ..errors import ConfigError

__all__ = [
    "roc_auc",
    "threshold_metrics",
    "brier_score",
    "expected_calibration_error",
    "top_label_calibration_error",
    "binary_metrics",
    "metrics_by_group",
]


def _inputs(y_true: Sequence[int], y_prob: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(y_prob, dtype=np.float64)
    if y.ndim != 1 or p.shape != y.shape:
        raise ConfigError(f"y_true and y_prob must be 1-D of equal length, got {y.shape} and {p.shape}")
    if y.size and not np.all(np.isin(y, (0, 1))):
        raise ConfigError("y_true must contain only 0 and 1 (binary metrics); use "
                          "slidestream.evaluation.multiclass_metrics otherwise")
    if not np.all(np.isfinite(p)) or (p.size and (p.min() < 0 or p.max() > 1)):
        raise ConfigError("y_prob must be finite probabilities in [0, 1]")
    return y.astype(np.int64), p


def _auc_rows(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC of each row of ``y``/``p`` ``(B, n)``; NaN where a row has one class. Ties count 1/2."""
    n_pos = y.sum(axis=1)
    n_neg = y.shape[1] - n_pos
    ranks = rankdata(p, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * y).sum(axis=1) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def roc_auc(y_true: Sequence[int], y_prob: Sequence[float], *, n_bootstrap: int = 1000, ci: float = 0.95,
            seed: int = 0) -> dict[str, Any]:
    """ROC AUC with a percentile bootstrap confidence interval.

    Parameters
    ----------
    y_true : array_like
        ``(n,)`` labels in {0, 1}.
    y_prob : array_like
        ``(n,)`` scores for class 1 (any monotone score works for the AUC).
    n_bootstrap : int, default 1000
        Resamples (with replacement, of all ``n`` cases); 0 skips the interval. Resamples that hold one class
        are left out and counted in ``auc_bootstrap_used``.
    ci : float, default 0.95
        Coverage of the interval.
    seed : int, default 0
        Seed of the resampling: the same inputs and seed give the same interval.

    Returns
    -------
    dict
        ``auc``, ``auc_ci_low``, ``auc_ci_high`` (float, NaN when undefined), ``auc_defined`` (bool: both
        classes present), ``auc_bootstrap_used`` (int).
    """
    y, p = _inputs(y_true, y_prob)
    if not 0 < ci < 1:
        raise ConfigError(f"ci must be in (0, 1), got {ci}")
    out: dict[str, Any] = {"auc": math.nan, "auc_ci_low": math.nan, "auc_ci_high": math.nan,
                           "auc_defined": False, "auc_bootstrap_used": 0}
    if y.size == 0 or y.min() == y.max():
        return out
    out["auc"] = float(_auc_rows(y[None], p[None])[0])
    out["auc_defined"] = True
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        aucs = []
        # Chunks bound the memory of the (B, n) resample matrices for large n.
        chunk = max(1, 2_000_000 // max(1, y.size))
        for start in range(0, n_bootstrap, chunk):
            idx = rng.integers(0, y.size, size=(min(chunk, n_bootstrap - start), y.size))
            aucs.append(_auc_rows(y[idx], p[idx]))
        aucs = np.concatenate(aucs)
        aucs = aucs[np.isfinite(aucs)]
        out["auc_bootstrap_used"] = int(aucs.size)
        if aucs.size:
            alpha = (1 - ci) / 2
            out["auc_ci_low"] = float(np.quantile(aucs, alpha))
            out["auc_ci_high"] = float(np.quantile(aucs, 1 - alpha))
    return out


def threshold_metrics(y_true: Sequence[int], y_prob: Sequence[float], threshold: float = 0.5) -> dict[str, Any]:
    """Sensitivity, specificity, balanced accuracy and accuracy when ``y_prob >= threshold`` is called positive.

    Returns
    -------
    dict
        ``threshold``, ``accuracy``, ``sensitivity`` (NaN without positives), ``specificity`` (NaN without
        negatives), ``balanced_accuracy`` (mean of those defined), ``tp``, ``fp``, ``tn``, ``fn`` (int).
    """
    y, p = _inputs(y_true, y_prob)
    pred = p >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fn = int(np.sum(~pred & (y == 1)))
    tn = int(np.sum(~pred & (y == 0)))
    fp = int(np.sum(pred & (y == 0)))
    sens = tp / (tp + fn) if tp + fn else math.nan
    spec = tn / (tn + fp) if tn + fp else math.nan
    defined = [v for v in (sens, spec) if not math.isnan(v)]
    return {
        "threshold": float(threshold),
        "accuracy": (tp + tn) / y.size if y.size else math.nan,
        "sensitivity": float(sens),
        "specificity": float(spec),
        "balanced_accuracy": float(np.mean(defined)) if defined else math.nan,
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }


def brier_score(y_true: Sequence[int], y_prob: Sequence[float]) -> float:
    """Mean squared difference between ``y_prob`` and the 0/1 label (lower is better; NaN when empty)."""
    y, p = _inputs(y_true, y_prob)
    return float(np.mean((p - y) ** 2)) if y.size else math.nan


def _calibration_bins(y: np.ndarray, p: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of ``p``: count, mean predicted probability, observed positive fraction."""
    if n_bins < 1:
        raise ConfigError(f"n_bins must be >= 1, got {n_bins}")
    # Right-closed last bin so p == 1 lands in it.
    which = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(which, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(which, weights=p, minlength=n_bins) / count
        freq = np.bincount(which, weights=y.astype(np.float64), minlength=n_bins) / count
    return count, conf, freq


def expected_calibration_error(y_true: Sequence[int], y_prob: Sequence[float], n_bins: int = 10) -> dict[str, Any]:
    """Expected and maximum calibration error of the class-1 probability over equal-width bins.

    ``ece_class1 = sum_b (n_b / n) |mean(y_b) - mean(p_b)|`` over bins of ``p``; ``mce`` is the largest bin gap.
    ``ece`` is the same number under its former name. For the top-label ECE of Guo et al. see
    :func:`top_label_calibration_error`.

    Returns
    -------
    dict
        ``ece_class1``, ``ece`` (alias), ``mce`` (float, NaN when empty), ``n_bins`` (int).
    """
    y, p = _inputs(y_true, y_prob)
    if y.size == 0:
        return {"ece_class1": math.nan, "ece": math.nan, "mce": math.nan, "n_bins": int(n_bins)}
    count, conf, freq = _calibration_bins(y, p, n_bins)
    used = count > 0
    gap = np.abs(freq[used] - conf[used])
    ece = float(np.sum(count[used] / y.size * gap))
    return {"ece_class1": ece, "ece": ece, "mce": float(gap.max()), "n_bins": int(n_bins)}


def top_label_calibration_error(y_true: Sequence[int], probs: Sequence[float] | np.ndarray,
                                n_bins: int = 10) -> dict[str, Any]:
    """Top-label expected calibration error (Guo et al., ICML 2017).

    Each case's confidence is its largest class probability and it is correct when that class is its label;
    ``ece_top_label = sum_b (n_b / n) |accuracy_b - mean confidence_b|`` over equal-width confidence bins of
    ``[0, 1]``; ``mce_top_label`` is the largest bin gap.

    Parameters
    ----------
    y_true : array_like
        ``(n,)`` integer labels.
    probs : array_like
        ``(n,)`` probabilities of class 1 for a binary task (the predicted class is 1 when ``p >= 0.5``, as in
        :func:`threshold_metrics`), or ``(n, K)`` class probabilities (predicted class: the arg-max).
    n_bins : int, default 10

    Returns
    -------
    dict
        ``ece_top_label``, ``mce_top_label`` (float, NaN when empty).
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 1:
        y, p1 = _inputs(y_true, p)
        pred = (p1 >= 0.5).astype(np.int64)
        conf = np.where(pred == 1, p1, 1.0 - p1)
    else:
        y = np.asarray(y_true).astype(np.int64)
        if p.ndim != 2 or p.shape[0] != y.size:
            raise ConfigError(f"probs must be (n,) or (n, K) with n = len(y_true), got {p.shape}")
        pred, conf = p.argmax(axis=1), p.max(axis=1)
    if y.size == 0:
        return {"ece_top_label": math.nan, "mce_top_label": math.nan}
    count, mean_conf, acc = _calibration_bins((pred == y).astype(np.int64), conf, n_bins)
    used = count > 0
    gap = np.abs(acc[used] - mean_conf[used])
    return {"ece_top_label": float(np.sum(count[used] / y.size * gap)), "mce_top_label": float(gap.max())}


def binary_metrics(y_true: Sequence[int], y_prob: Sequence[float], *, threshold: float = 0.5,
                   n_bootstrap: int = 1000, ci: float = 0.95, seed: int = 0, n_bins: int = 10) -> dict[str, Any]:
    """All binary metrics in one flat dict: counts, AUC + CI, threshold metrics, Brier score, ECE/MCE.

    Keys: ``n``, ``n_pos``, ``n_neg``, those of :func:`roc_auc`, :func:`threshold_metrics`,
    :func:`expected_calibration_error` (class-1 ECE) and :func:`top_label_calibration_error`, and ``brier``.
    """
    y, p = _inputs(y_true, y_prob)
    out: dict[str, Any] = {"n": int(y.size), "n_pos": int(y.sum()), "n_neg": int(y.size - y.sum())}
    out.update(roc_auc(y, p, n_bootstrap=n_bootstrap, ci=ci, seed=seed))
    out.update(threshold_metrics(y, p, threshold))
    out["brier"] = brier_score(y, p)
    out.update(expected_calibration_error(y, p, n_bins))
    out.update(top_label_calibration_error(y, p, n_bins))
    return out


def metrics_by_group(y_true: Sequence[int], y_prob: Sequence[float], groups: Sequence[Any],
                     **kwargs: Any) -> dict[str, dict[str, Any]]:
    """:func:`binary_metrics` within each value of a metadata column (site, scanner, sex ...).

    Parameters
    ----------
    y_true, y_prob : array_like
        ``(n,)`` as in :func:`binary_metrics`.
    groups : sequence
        ``(n,)`` group of each case; keys of the result are ``str(group)``.
    **kwargs
        Passed to :func:`binary_metrics` (threshold, n_bootstrap, seed ...).

    Returns
    -------
    dict of str to dict
        One metrics dict per group, in sorted key order; one-class groups get NaN AUC with
        ``auc_defined=False``.
    """
    y, p = _inputs(y_true, y_prob)
    keys = np.asarray([str(g) for g in groups], dtype=object)
    if keys.shape != y.shape:
        raise ConfigError(f"groups must have one entry per case ({y.size}), got {keys.size}")
    return {k: binary_metrics(y[keys == k], p[keys == k], **kwargs) for k in sorted(set(keys.tolist()))}
