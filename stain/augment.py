"""Stain augmentation for training: random jitter of hematoxylin, eosin and DAB amounts (Tellez et al., "Whole-slide
mitosis detection in H&E breast histology using PHH3 as a reference to train distilled stain-invariant
convolutional networks", IEEE TMI 2018, "HED" augmentation).

Each image's pixels are unmixed into H, E and DAB concentrations with Ruifrok & Johnston's stain vectors, each
concentration ``c`` becomes ``c * alpha + beta`` with ``alpha ~ U(1 - sigma, 1 + sigma)`` and
``beta ~ U(-bias, bias)`` drawn per image and stain, and the pixels are remixed. In optical density this is one
affine 3x3 map per image, applied by the same kernel as Macenko normalisation.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ._kernel import apply_log_affine_numpy, apply_log_affine_torch
from .base import ImageBatch, as_batch

#: Ruifrok & Johnston ("Quantification of histochemical staining by color deconvolution", 2001) OD vectors of
#: hematoxylin, eosin and DAB (rows; columns R, G, B), as published; normalised to unit length below.
RUIFROK_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))

# OD reference: white (255) has OD 0, so a bias of 0 leaves the background white.
_IO = 256.0


def hed_jitter_maps(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's ``(A, b)`` for given per-image scales and shifts of the H, E, DAB concentrations.

    Parameters
    ----------
    alpha : np.ndarray, shape (N, 3), float
        Multiplicative factor per image for H, E, DAB.
    beta : np.ndarray, shape (N, 3), float
        Additive shift per image, in optical density along each unit stain vector.

    Returns
    -------
    a : np.ndarray, shape (N, 3, 3), float64
    b : np.ndarray, shape (N, 3), float64
        ``ln(out + 1) = ln(in + 1) @ a[i] + b[i]``; ``alpha = 1, beta = 0`` is the identity.
    """
    r = np.asarray(RUIFROK_HED, dtype=np.float64)
    r = r / np.linalg.norm(r, axis=1, keepdims=True)  # rows: OD = conc @ r
    r_inv = np.linalg.inv(r)
    k = r_inv[None] @ (alpha[:, :, None] * r[None])  # OD_out = OD_in @ k + beta @ r
    log_io = math.log(_IO)
    # ln(out + 1) = ln(io) - OD_out with OD_in = ln(io) - ln(in + 1)
    b = log_io * (1.0 - k.sum(axis=1)) - beta @ r
    return k, b


def augment_hed(
    images: Any,
    *,
    sigma: float = 0.05,
    bias: float = 0.05,
    rng: np.random.Generator | int | None = None,
) -> ImageBatch:
    """Randomly perturb the amount of each stain, independently per image.

    Parameters
    ----------
    images : np.ndarray or torch.Tensor, shape (N, H, W, 3) or (H, W, 3), uint8
        Channels last; tensors are processed on their device.
    sigma : float
        Concentrations are scaled by a factor drawn from ``U(1 - sigma, 1 + sigma)``; in ``[0, 1)``.
    bias : float
        and shifted by ``U(-bias, bias)`` optical-density units; in ``[0, 1)``. A non-zero shift also tints white
        background slightly (as in Tellez et al.).
    rng : numpy.random.Generator or int, optional
        Source of the random factors (drawn with numpy for numpy and torch input alike, so the same seed gives
        the same augmentation on either); None uses fresh OS entropy.

    Returns
    -------
    np.ndarray or torch.Tensor
        Same type, shape, dtype (uint8) and device as ``images``. ``sigma = bias = 0`` returns the input values.
    """
    if not 0.0 <= float(sigma) < 1.0:
        raise ConfigError(f"sigma must be in [0, 1), got {sigma}; 0.05 is a mild, 0.2 a strong augmentation")
    if not 0.0 <= float(bias) < 1.0:
        raise ConfigError(f"bias must be in [0, 1), got {bias}; 0.05 is a mild, 0.2 a strong augmentation")
    batch, single = as_batch(images)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    n = batch.shape[0]
    alpha = gen.uniform(1.0 - sigma, 1.0 + sigma, size=(n, 3))
    beta = gen.uniform(-bias, bias, size=(n, 3))
    if n == 0 or batch.shape[1] == 0 or batch.shape[2] == 0:
        return images.clone() if isinstance(images, torch.Tensor) else np.array(images, copy=True)
    a, b = hed_jitter_maps(alpha, beta)
    if isinstance(batch, torch.Tensor):
        out = apply_log_affine_torch(batch, torch.from_numpy(a), torch.from_numpy(b))
    else:
        out = apply_log_affine_numpy(batch, a, b)
    return out[0] if single else out
