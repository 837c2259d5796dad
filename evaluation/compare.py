"""Comparing models on the same test cases: AUC averaged over training seeds, and paired AUC differences, each
with a percentile bootstrap confidence interval over the cases.

Every resample draws the cases once and scores every model (and every seed) on that same draw, so the interval of
a difference accounts for the correlation between two models judged on the same slides (a paired bootstrap). With
one seed and the same ``seed`` of the resampling, :func:`auc_over_seeds` gives exactly the interval of
:func:`slidestream.evaluation.metrics.roc_auc`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError
from .metrics import _auc_rows, _inputs

__all__ = ["auc_over_seeds", "paired_auc_difference"]


def _prepare(y_true: Sequence[int], probs: Sequence | np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 1:
        p = p[None]
    y = np.asarray(y_true)
    if p.ndim != 2 or p.shape[1] != y.shape[0]:
        raise ConfigError(f"{what} must be (n,) or (seeds, n) with n = len(y_true) = {y.shape[0]}, got {p.shape}")
    for row in p:
        _inputs(y, row)
    return y.astype(np.int64), p


def _resampled(y: np.ndarray, score, n_bootstrap: int, seed: int) -> np.ndarray:
    """``score(y[idx], idx)`` for every resample ``idx`` ``(B, n)``, drawn in chunks as :func:`roc_auc` draws them;
    resamples where it is undefined (NaN) are dropped."""
    rng = np.random.default_rng(seed)
    out = []
    chunk = max(1, 2_000_000 // max(1, y.size))
    for start in range(0, n_bootstrap, chunk):
        idx = rng.integers(0, y.size, size=(min(chunk, n_bootstrap - start), y.size))
        out.append(score(y[idx], idx))
    values = np.concatenate(out) if out else np.zeros(0)
    return values[np.isfinite(values)]


def _check(ci: float, n_bootstrap: int) -> None:
    if not 0 < ci < 1:
        raise ConfigError(f"ci must be in (0, 1), got {ci}")
    if n_bootstrap < 0:
        raise ConfigError(f"n_bootstrap must be >= 0, got {n_bootstrap}")


def auc_over_seeds(y_true: Sequence[int], probs: Sequence | np.ndarray, *, n_bootstrap: int = 1000,
                   ci: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """ROC AUC of one model trained with several seeds: the mean over seeds, its spread, and a bootstrap CI.

    Parameters
    ----------
    y_true : array_like
        ``(n,)`` labels in {0, 1}.
    probs : array_like
        ``(n,)`` or ``(S, n)``: each seed's class-1 probabilities for the same ``n`` cases.
    n_bootstrap : int, default 1000
        Resamples of the cases; each one scores every seed and averages. 0 skips the interval.
    ci : float, default 0.95
    seed : int, default 0
        Seed of the resampling.

    Returns
    -------
    dict
        ``auc`` (mean over seeds), ``auc_sd`` (sample standard deviation over seeds, 0 with one seed),
        ``auc_seeds`` (list), ``auc_ci_low``, ``auc_ci_high`` (NaN when undefined), ``auc_defined``, ``n``,
        ``n_pos``, ``n_neg``.
    """
    _check(ci, n_bootstrap)
    y, p = _prepare(y_true, probs, "probs")
    out: dict[str, Any] = {"auc": math.nan, "auc_sd": math.nan, "auc_seeds": [], "auc_ci_low": math.nan,
                           "auc_ci_high": math.nan, "auc_defined": False, "n": int(y.size), "n_pos": int(y.sum()),
                           "n_neg": int(y.size - y.sum())}
    if y.size == 0 or y.min() == y.max():
        return out
    per_seed = _auc_rows(np.broadcast_to(y, p.shape), p)
    out.update(auc=float(per_seed.mean()), auc_sd=float(per_seed.std(ddof=1)) if len(per_seed) > 1 else 0.0,
               auc_seeds=[float(v) for v in per_seed], auc_defined=True)
    if n_bootstrap:
        aucs = _resampled(y, lambda yb, idx: np.mean([_auc_rows(yb, row[idx]) for row in p], axis=0),
                          n_bootstrap, seed)
        if aucs.size:
            alpha = (1 - ci) / 2
            out["auc_ci_low"] = float(np.quantile(aucs, alpha))
            out["auc_ci_high"] = float(np.quantile(aucs, 1 - alpha))
    return out


def paired_auc_difference(y_true: Sequence[int], probs_a: Sequence | np.ndarray, probs_b: Sequence | np.ndarray, *,
                          n_bootstrap: int = 1000, ci: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """AUC of model A minus AUC of model B on the same cases, with a paired bootstrap CI.

    Parameters
    ----------
    y_true : array_like
        ``(n,)`` labels in {0, 1}.
    probs_a, probs_b : array_like
        ``(n,)`` or ``(S, n)`` class-1 probabilities of each model (``S`` seeds each, not necessarily the same
        number); each model's AUC is its mean over seeds.
    n_bootstrap : int, default 1000
    ci : float, default 0.95
    seed : int, default 0

    Returns
    -------
    dict
        ``delta`` (A - B), ``ci_low``, ``ci_high``, ``p_not_better`` (share of resamples where A does not beat B,
        ``delta <= 0``: a one-sided bootstrap p-value for "A is better"), ``defined``, ``n``, ``n_pos``.
        The gap is real at the CI's level when the interval excludes 0.
    """
    _check(ci, n_bootstrap)
    y, a = _prepare(y_true, probs_a, "probs_a")
    _, b = _prepare(y_true, probs_b, "probs_b")
    out: dict[str, Any] = {"delta": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_not_better": math.nan,
                           "defined": False, "n": int(y.size), "n_pos": int(y.sum())}
    if y.size == 0 or y.min() == y.max():
        return out

    def delta(yb: np.ndarray, idx: np.ndarray) -> np.ndarray:
        def mean_auc(p: np.ndarray) -> np.ndarray:
            return np.mean([_auc_rows(yb, row[idx]) for row in p], axis=0)

        return mean_auc(a) - mean_auc(b)

    everyone = np.arange(y.size)[None]
    out["delta"] = float(delta(y[everyone], everyone)[0])
    out["defined"] = True
    if n_bootstrap:
        deltas = _resampled(y, delta, n_bootstrap, seed)
        if deltas.size:
            alpha = (1 - ci) / 2
            out["ci_low"] = float(np.quantile(deltas, alpha))
            out["ci_high"] = float(np.quantile(deltas, 1 - alpha))
            out["p_not_better"] = float(np.mean(deltas <= 0))
    return out
