"""Per-dimension standardisation of bag features, fitted on training bags and saved with the checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["FeatureNorm", "fit_feature_norm"]


@dataclass
class FeatureNorm:
    """Per-dimension standardisation of features: ``(x - mean) / std``."""

    mean: np.ndarray
    std: np.ndarray

    def apply(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureNorm":
        return cls(np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32))


def fit_feature_norm(bags: Sequence[np.ndarray]) -> FeatureNorm:
    """Mean and standard deviation over all instances of ``bags`` (``(N_i, D)`` arrays; each slide weighted by its
    tile count)."""
    x = np.concatenate([np.asarray(b) for b in bags]).astype(np.float64)
    std = x.std(axis=0)
    # Constant dimensions (e.g. a statistic that is always 0) keep scale 1 instead of dividing by zero.
    return FeatureNorm(x.mean(axis=0).astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32))
