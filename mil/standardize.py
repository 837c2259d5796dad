"""Per-dimension standardisation of bag features, fitted on training bags and saved with the checkpoint.

In cross-validation each fold's model gets a normaliser fitted on that fold's training bags only
(:func:`slidestream.mil.train.cross_validate` with ``standardize=True``), so the held-out fold's statistics never
reach its model; the checkpoint stores one normaliser per ensemble member.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

__all__ = ["FeatureNorm", "fit_feature_norm"]


@dataclass
class FeatureNorm:
    """Per-dimension standardisation of features: ``(x - mean) / std``.

    Attributes
    ----------
    mean, std : numpy.ndarray
        ``(D,)`` float32; ``std`` is 1 for constant dimensions.
    """

    mean: np.ndarray
    std: np.ndarray

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``(N, D)`` features → ``(N, D)`` float32 standardised features."""
        return ((np.asarray(x, dtype=np.float32) - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> FeatureNorm:
        return cls(np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32))


def fit_feature_norm(bags: Sequence[np.ndarray]) -> FeatureNorm:
    """Mean and standard deviation over all instances of ``bags`` (each slide weighted by its tile count).

    Bags are read one at a time (a lazy, store-backed sequence stays lazy) and merged with Chan et al.'s pairwise
    update of counts, means and sums of squared deviations, which stays accurate when the mean is large compared
    with the spread.

    Parameters
    ----------
    bags : sequence of array_like
        ``(N_i, D)`` feature matrices (any float dtype).

    Returns
    -------
    FeatureNorm
    """
    count, mean, m2 = 0, None, None
    for i in range(len(bags)):
        x = np.asarray(bags[i], dtype=np.float64)
        if x.ndim != 2 or x.shape[0] == 0:
            continue
        n_b, mean_b = x.shape[0], x.mean(axis=0)
        m2_b = ((x - mean_b) ** 2).sum(axis=0)
        if mean is None:
            count, mean, m2 = n_b, mean_b, m2_b
            continue
        if mean_b.shape != mean.shape:
            raise ConfigError(f"bags have different feature sizes ({mean_b.shape[0]} vs {mean.shape[0]}); "
                              "use one encoder")
        total = count + n_b
        delta = mean_b - mean
        mean = mean + delta * (n_b / total)
        m2 = m2 + m2_b + delta**2 * (count * n_b / total)
        count = total
    if mean is None:
        raise ConfigError("cannot fit a feature normaliser: no non-empty (N, D) bag")
    std = np.sqrt(m2 / count)
    # Constant dimensions (e.g. a statistic that is always 0) keep scale 1 instead of dividing by zero.
    return FeatureNorm(mean.astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32))
