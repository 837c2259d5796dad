"""Vahadane stain normalisation (Vahadane et al., "Structure-preserving color normalization and sparse stain
separation for histological images", IEEE TMI 2016).

Solver
------
Sparse non-negative matrix factorisation (dictionary learning with non-negative dictionary and codes, the
formulation of the paper) of the tissue optical densities ``V`` (3 x n) into stain vectors ``W`` (3 x 2) and
concentrations ``H`` (2 x n):

    ``minimise 1/2 ||V - W H||_F^2 + lambda * sum(H)   subject to W >= 0, H >= 0, ||W[:, j]|| <= 1``

by alternating minimisation: the ``H`` step is solved exactly per pixel (a two-variable non-negative lasso has a
closed form, :func:`nonnegative_lasso_2`), the ``W`` step is one block-coordinate pass over the two columns with
projection onto the constraints (as scikit-learn's ``DictionaryLearning(positive_dict=True, positive_code=True)``
does). ``lambda = 0.1`` is the paper's regulariser. The iteration starts from the Macenko estimate of the same
pixels (or the default H&E reference when that fails), which makes it deterministic, and typically converges in
tens of iterations. It runs in numpy float64.

Differences from the paper: the factorisation uses all non-background pixels (any channel's OD >= ``beta``)
where the paper thresholds luminosity; and only the stain vectors come from the sparse factorisation, while the
maximum concentrations and the per-pixel transform use least-squares concentrations as Macenko does (the paper
sparse-codes every pixel), so a fixed source keeps the transform one 3x3 matrix per pixel.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import ConfigError
from .base import BaseConfig
from .macenko import macenko_stain_vectors
from .matrix import DEFAULT_HE_REFERENCE, StainMatrixNormalizer, order_he
from .registry import register_method

_EPS = 1e-10


@dataclasses.dataclass(frozen=True)
class VahadaneConfig(BaseConfig):
    """Vahadane settings (plus ``io``, ``beta``, ``min_tissue_pixels`` of :class:`BaseConfig`).

    Parameters
    ----------
    sparsity : float
        ``lambda``, weight of the L1 penalty on concentrations (0.1 in the paper).
    max_iter : int
        Upper bound on alternating iterations.
    tol : float
        Stop when no stain-vector component moves by more than this in one iteration.
    max_pixels : int
        Tissue pixels used for the factorisation (thinned evenly); 20,000 keeps one estimate fast on a CPU.
    max_conc_percentile : float
        Percentile of each stain's (least-squares) concentration taken as its maximum.
    """

    sparsity: float = 0.1
    max_iter: int = 100
    tol: float = 1e-5
    max_pixels: int = 20_000
    max_conc_percentile: float = 99.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= float(self.sparsity) < 10.0:
            raise ConfigError(f"sparsity must be in [0, 10), got {self.sparsity}; 0.1 is the paper's value")
        if int(self.max_iter) < 1:
            raise ConfigError(f"max_iter must be at least 1, got {self.max_iter}")
        if not float(self.tol) > 0.0:
            raise ConfigError(f"tol must be positive, got {self.tol}")
        if not 50.0 < float(self.max_conc_percentile) <= 100.0:
            raise ConfigError(f"max_conc_percentile must be in (50, 100], got {self.max_conc_percentile}")


def nonnegative_lasso_2(w: np.ndarray, v: np.ndarray, sparsity: float) -> np.ndarray:
    """Exact per-pixel solution of ``min_h 1/2 ||v - w h||^2 + sparsity * sum(h)`` subject to ``h >= 0``, two stains.

    With two unknowns the non-negative lasso has three candidate supports ({0, 1}, {0}, {1}); each has a closed
    form, and the solution is the feasible candidate with the lowest objective (the problem is convex).

    Parameters
    ----------
    w : np.ndarray, shape (3, 2), float64
        Stain vectors as columns, linearly independent.
    v : np.ndarray, shape (3, n), float64
        Optical densities.
    sparsity : float
        L1 weight ``lambda`` >= 0.

    Returns
    -------
    np.ndarray, shape (2, n), float64, non-negative
    """
    g = w.T @ w  # (2, 2) Gram matrix
    c = w.T @ v - sparsity  # (2, n): linear term of the objective 1/2 h'Gh - c'h
    both = np.linalg.solve(g, c)
    zeros = np.zeros_like(c[0])
    only0 = np.stack((np.maximum(c[0] / g[0, 0], 0.0), zeros))
    only1 = np.stack((zeros, np.maximum(c[1] / g[1, 1], 0.0)))

    def objective(h: np.ndarray) -> np.ndarray:
        return 0.5 * (h * (g @ h)).sum(axis=0) - (c * h).sum(axis=0)

    best = np.where(objective(only1) < objective(only0), only1, only0)
    feasible = (both >= 0.0).all(axis=0)
    return np.where(feasible & (objective(both) <= objective(best)), both, best)


def sparse_nmf_stain_vectors(
    od: np.ndarray,
    init: np.ndarray,
    *,
    sparsity: float = 0.1,
    max_iter: int = 100,
    tol: float = 1e-5,
) -> np.ndarray:
    """Stain vectors by sparse non-negative matrix factorisation (the solver in the module docstring).

    Parameters
    ----------
    od : np.ndarray, shape (n, 3), float64
        Tissue optical densities (negative values are clipped to 0: the factorisation is non-negative).
    init : np.ndarray, shape (3, 2), float64
        Starting stain vectors; negative entries are raised to a small positive value.
    sparsity, max_iter, tol
        See :class:`VahadaneConfig`.

    Returns
    -------
    np.ndarray, shape (3, 2), float64
        Non-negative unit vectors as columns, hematoxylin first.
    """
    v = np.ascontiguousarray(np.maximum(od.T, 0.0))  # (3, n)
    w = np.maximum(np.asarray(init, dtype=np.float64), 1e-3)
    w = w / np.linalg.norm(w, axis=0)
    for _ in range(int(max_iter)):
        h = nonnegative_lasso_2(w, v, sparsity)
        hh = h @ h.T  # (2, 2)
        vh = v @ h.T  # (3, 2)
        w_new = w.copy()
        for k in range(2):
            if hh[k, k] <= _EPS:
                continue  # stain unused by every pixel: keep its vector
            # Block coordinate step on column k (exact minimiser over that column), then projection onto
            # {w >= 0, ||w|| <= 1}: the update of scikit-learn's dictionary learning with positive_dict=True.
            col = np.maximum(w_new[:, k] + (vh[:, k] - w_new @ hh[:, k]) / hh[k, k], 0.0)
            w_new[:, k] = col / max(float(np.linalg.norm(col)), 1.0)
        moved = float(np.abs(w_new - w).max())
        w = w_new
        if moved < tol:
            break
    return order_he(w / np.maximum(np.linalg.norm(w, axis=0), _EPS))


@register_method
class VahadaneNormalizer(StainMatrixNormalizer):
    """Vahadane stain normalisation; see :class:`~slidestream.stain.base.StainNormalizer` for the API.

    The default target is the same published H&E reference as Macenko's.
    """

    method = "vahadane"
    config_type = VahadaneConfig
    # The factorisation needs the pure-eosin stroma, whose blue channel often stays brighter than Macenko's dense
    # threshold: fit on all non-background pixels (the paper uses a luminosity threshold to the same end).
    dense_pixels_only = False

    def _stain_vectors(self, od: np.ndarray) -> np.ndarray:
        try:
            init = macenko_stain_vectors(od)
        except np.linalg.LinAlgError:  # eigh can fail to converge on degenerate colours
            init = None
        if init is None or not np.all(np.isfinite(init)):
            init = DEFAULT_HE_REFERENCE.stain_matrix
        cfg = self.config
        return sparse_nmf_stain_vectors(od, init, sparsity=cfg.sparsity, max_iter=cfg.max_iter, tol=cfg.tol)
