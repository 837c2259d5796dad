"""Temperature scaling (Guo et al., ICML 2017): one scalar ``T`` dividing the logits, fitted on validation data.

Fit ``T`` on logits the model did not train on (a validation split, or the out-of-fold logits of a
cross-validation, :attr:`slidestream.mil.train.CVResult.oof_logits`), store it in the checkpoint and divide by it
at prediction time. Scaling does not change the arg-max or the ROC AUC, only how confident the probabilities are.

What is calibrated: the probability slidestream outputs
--------------------------------------------------------
A cross-validated checkpoint is a fold ensemble whose output is ``p = mean_m softmax(z_m)``. The temperature is
applied to that output, after averaging: ``p_T = softmax(log(p) / T)`` (:class:`slidestream.mil.heads.MILEnsemble`).
It is fitted on the out-of-fold logits, the only held-out scores a cross-validation has: bag ``i`` scored by the
one member that did not train on it, which is this same formula with one member (``log softmax(z)`` differs from
``z`` by a constant per bag, which the softmax ignores). Dividing after averaging keeps the ensemble's ranking and
arg-max, so the calibrated AUC is the uncalibrated one. Dividing each member's logits before averaging (the
former behaviour) would calibrate members rather than the reported probability and can reorder slides.

What remains approximate: where members disagree, their mean probability is less extreme than a single
member's, so a ``T`` fitted on single members may soften the ensemble slightly more than an ensemble-level fit
would; an exact ensemble-level fit would need nested cross-validation.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from ..errors import ConfigError

__all__ = ["fit_temperature", "apply_temperature", "negative_log_likelihood"]


def _as_logits(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 1:
        # A single column is the binary log-odds of class 1: the logits [0, z] give the same probabilities.
        z = np.stack([np.zeros_like(z), z], axis=1)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] < 2:
        raise ConfigError(f"logits must be (n,) binary log-odds or (n, K>=2) class logits, got shape {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ConfigError("logits contain NaN or infinite values")
    return z


def _as_labels(labels: np.ndarray, n: int, k: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ConfigError(f"labels must have shape ({n},), got {y.shape}")
    if y.dtype.kind == "f" and not np.all(y == np.round(y)):
        raise ConfigError("labels must be integer class indices")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= k:
        raise ConfigError(f"labels must be class indices in [0, {k})")
    return y


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (nats) of ``labels`` under ``softmax(logits / temperature)``.

    Parameters
    ----------
    logits : array_like
        ``(n,)`` binary log-odds or ``(n, K)`` logits.
    labels : array_like
        ``(n,)`` integer class indices.
    temperature : float, default 1.0
    """
    z = _as_logits(logits)
    y = _as_labels(labels, z.shape[0], z.shape[1])
    return float(-log_softmax(z / temperature, axis=1)[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Temperature minimising the validation negative log-likelihood.

    Parameters
    ----------
    logits : array_like
        ``(n,)`` binary log-odds of class 1 or ``(n, K)`` class logits, float.
    labels : array_like
        ``(n,)`` integer class indices.
    bounds : (float, float), default (0.05, 20)
        Search interval for ``T``; a result at a bound means the data cannot pin ``T`` down (e.g. a
        perfectly separated or one-class validation set), so prefer more validation data over trusting it.

    Returns
    -------
    float
        ``T > 0``; probabilities are ``softmax(logits / T)``. ``T > 1`` softens an over-confident model.
    """
    z = _as_logits(logits)
    y = _as_labels(labels, z.shape[0], z.shape[1])
    lo, hi = bounds
    if not 0 < lo < hi:
        raise ConfigError(f"bounds must satisfy 0 < low < high, got {bounds}")
    rows = np.arange(len(y))

    # Searching log T makes the objective well scaled on both sides of T = 1.
    def nll(log_t: float) -> float:
        return float(-log_softmax(z / np.exp(log_t), axis=1)[rows, y].mean())

    res = minimize_scalar(nll, bounds=(np.log(lo), np.log(hi)), method="bounded", options={"xatol": 1e-7})
    return float(np.exp(res.x))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Class probabilities ``softmax(logits / temperature)``.

    Parameters
    ----------
    logits : array_like
        ``(n,)`` binary log-odds or ``(n, K)`` logits.
    temperature : float
        ``> 0``, e.g. from :func:`fit_temperature`.

    Returns
    -------
    numpy.ndarray
        ``(n, K)`` float64 probabilities (``K = 2`` for binary log-odds input).
    """
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    return softmax(_as_logits(logits) / float(temperature), axis=1)
