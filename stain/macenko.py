"""Macenko stain normalisation (Macenko et al., "A method for normalizing histology slides for quantitative
analysis", ISBI 2009), numerically following torchstain's implementation.

Stain vectors: project tissue optical densities onto the plane of their two main principal axes, take the
``alpha`` and ``100 - alpha`` percentiles of the angle in that plane; the two extreme directions are the stains.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..errors import ConfigError
from .base import BaseConfig
from .matrix import StainMatrixNormalizer, order_he
from .registry import register_method


@dataclasses.dataclass(frozen=True)
class MacenkoConfig(BaseConfig):
    """Macenko settings (plus ``io``, ``beta``, ``min_tissue_pixels``, ``max_pixels`` of :class:`BaseConfig`).

    Parameters
    ----------
    alpha : float
        Percentile (of the angle distribution) taken as each extreme stain direction; 1 ignores the 1 % most
        extreme pixels on either side.
    max_conc_percentile : float
        Percentile of each stain's concentration taken as its maximum (99 in the paper).
    """

    alpha: float = 1.0
    max_conc_percentile: float = 99.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= float(self.alpha) < 50.0:
            raise ConfigError(f"alpha must be a percentile in [0, 50), got {self.alpha}; 1 is the usual value")
        if not 50.0 < float(self.max_conc_percentile) <= 100.0:
            raise ConfigError(f"max_conc_percentile must be in (50, 100], got {self.max_conc_percentile}")


def macenko_stain_vectors(od: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """Hematoxylin and eosin OD vectors by Macenko's angle-percentile method.

    Parameters
    ----------
    od : np.ndarray, shape (n, 3), float64, n >= 2
        Optical densities of tissue pixels.
    alpha : float
        Angle percentile, see :class:`MacenkoConfig`.

    Returns
    -------
    np.ndarray, shape (3, 2), float64
        Unit OD vectors as columns, hematoxylin first (not yet checked for degeneracy).
    """
    _, eigvecs = np.linalg.eigh(np.cov(od.T))
    plane = eigvecs[:, 1:3].copy()  # second and first principal axes
    # Orient both axes into positive OD so every angle lies in (-pi/2, pi): no wrap-around at +-pi when the
    # eigen-solver happens to return a negated principal axis.
    plane *= np.where(plane.sum(axis=0) < 0, -1.0, 1.0)
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100.0 - alpha])
    directions = np.array([[math.cos(lo), math.cos(hi)], [math.sin(lo), math.sin(hi)]])  # columns: the two angles
    return order_he(plane @ directions)


@register_method
class MacenkoNormalizer(StainMatrixNormalizer):
    """Macenko stain normalisation; see :class:`~slidestream.stain.base.StainNormalizer` for the API.

    Per-image mode reproduces torchstain's ``MacenkoNormalizer``: the same stain vectors; the maximum
    concentrations are taken over non-background pixels rather than all pixels (so white background does not
    lower them), and the output is rounded rather than truncated. On torchstain's example pair the mean absolute
    difference to torchstain's numpy output is 0.98 grey levels.
    """

    method = "macenko"
    config_type = MacenkoConfig

    def _stain_vectors(self, od: np.ndarray) -> np.ndarray:
        return macenko_stain_vectors(od, float(self.config.alpha))
