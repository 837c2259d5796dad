"""Colour-space helpers shared by the stain normalisers.

Stain *estimation* runs in numpy float64 on the CPU for every input (a CUDA tensor's uint8 pixels are copied to
the host first, which is cheap): one implementation, so numpy and torch inputs get identical parameters, and no
torch intra-op thread pool fighting other workers over small arrays. Per-pixel *transforms* exist in numpy and
in torch (on the tensor's device); the L*a*b* conversions below are written for both.

Conventions
-----------
* RGB pixels are ``uint8`` in ``[0, 255]``, channels last.
* Optical density (OD) follows Macenko et al. (ISBI 2009) as implemented by torchstain:
  ``OD = -ln((I + 1) / io)`` with the transmitted light intensity ``io`` (240 by default), natural log, per channel.
* CIE L*a*b* follows scikit-image (sRGB, D65, 2° observer): ``L`` in ``[0, 100]``, ``a``/``b`` roughly
  ``[-128, 127]``; the constants below are the published sRGB/XYZ matrix and D65 white point.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# sRGB (linear) -> CIE XYZ, the matrix scikit-image uses (rows X, Y, Z).
XYZ_FROM_RGB = np.array(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ]
)
RGB_FROM_XYZ = np.linalg.inv(XYZ_FROM_RGB)
# CIE standard illuminant D65, 2° observer, as (X, Y, Z) of the white point.
D65_WHITE = np.array([0.95047, 1.0, 1.08883])

LAB_EPSILON = 0.008856  # (6/29)**3: below it the L*a*b* curve is linear
LAB_KAPPA = 7.787  # slope of that linear part
LAB_T0 = 16.0 / 116.0
LAB_F_EPSILON = 0.2068966  # 6/29, the same threshold on the cube-root side


def od_table(io: float) -> np.ndarray:
    """Optical density of each grey level.

    Parameters
    ----------
    io : float
        Transmitted light intensity (the brightness of empty glass), in grey levels.

    Returns
    -------
    np.ndarray, shape (256,), float64
        ``-ln((v + 1) / io)`` for ``v = 0 .. 255``; ``v = io - 1`` gives 0, white (255) gives a small negative
        value when ``io < 256``.
    """
    return math.log(io) - np.log(np.arange(1, 257, dtype=np.float64))


def rgb_to_od(rgb: np.ndarray, io: float) -> np.ndarray:
    """Optical density of uint8 RGB pixels, ``(..., 3)`` uint8 -> ``(..., 3)`` float64 (see :func:`od_table`)."""
    return od_table(io)[rgb]


def stained_masks(rgb: np.ndarray, io: float, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Which pixels carry stain, by Macenko's optical-density threshold.

    Parameters
    ----------
    rgb : np.ndarray, shape (..., 3), uint8
    io : float
        Transmitted light intensity, see :func:`od_table`.
    beta : float
        OD threshold. With ``io=240`` and ``beta=0.15`` a channel reaches it when its value is at most 205.

    Returns
    -------
    dense : np.ndarray, shape (...), bool
        Every channel reaches ``beta`` (Macenko's rule for the stain-vector fit: drops background and pale or
        transparent pixels, and also faint eosin whose blue channel stays bright).
    stained : np.ndarray, shape (...), bool
        At least one channel reaches ``beta``: everything except white background.
    """
    per_channel = (od_table(io) >= beta)[rgb]
    return per_channel.all(axis=-1), per_channel.any(axis=-1)


# -- CIE L*a*b*, numpy ----------------------------------------------------------------------------------------


def srgb_to_linear(rgb: np.ndarray) -> np.ndarray:
    """Linear-light values of sRGB values in ``[0, 1]`` (the sRGB transfer curve), same dtype."""
    return np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE L*a*b* of sRGB values (scikit-image's ``rgb2lab`` with its defaults).

    Parameters
    ----------
    rgb : np.ndarray, shape (..., 3), float32 or float64
        sRGB values in ``[0, 1]``.

    Returns
    -------
    np.ndarray, shape (..., 3), same dtype
        ``L`` in ``[0, 100]``, ``a`` and ``b`` in about ``[-128, 127]``.
    """
    dtype = rgb.dtype
    linear = srgb_to_linear(rgb)
    xyz = linear @ (XYZ_FROM_RGB / D65_WHITE[:, None]).T.astype(dtype)
    f = np.where(xyz > LAB_EPSILON, np.cbrt(xyz), LAB_KAPPA * xyz + LAB_T0)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return np.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), axis=-1).astype(dtype, copy=False)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """sRGB values of CIE L*a*b* colours (scikit-image's ``lab2rgb``), clipped to ``[0, 1]``.

    Parameters
    ----------
    lab : np.ndarray, shape (..., 3), float32 or float64

    Returns
    -------
    np.ndarray, shape (..., 3), same dtype
        As in scikit-image, a negative Z (a colour outside the gamut) is clipped to 0 first.
    """
    dtype = lab.dtype
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack((fy + lab[..., 1] / 500.0, fy, np.maximum(fy - lab[..., 2] / 200.0, 0.0)), axis=-1)
    xyz = np.where(f > LAB_F_EPSILON, f**3, (f - LAB_T0) / LAB_KAPPA)
    linear = xyz @ (RGB_FROM_XYZ * D65_WHITE[None, :]).T.astype(dtype)
    # np.maximum inside the power only: those values take the linear branch, and a negative base would give NaN
    rgb = np.where(linear > 0.0031308, 1.055 * np.maximum(linear, 0.0031308) ** (1 / 2.4) - 0.055, 12.92 * linear)
    return np.clip(rgb, 0.0, 1.0).astype(dtype, copy=False)


# -- CIE L*a*b*, torch (same formulas, on the tensor's device) -------------------------------------------------


def rgb_to_lab_torch(rgb: torch.Tensor) -> torch.Tensor:
    """Torch twin of :func:`rgb_to_lab`."""
    m = torch.as_tensor((XYZ_FROM_RGB / D65_WHITE[:, None]).T, dtype=rgb.dtype, device=rgb.device)
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = linear @ m
    f = torch.where(xyz > LAB_EPSILON, xyz.clamp(min=LAB_EPSILON) ** (1 / 3), LAB_KAPPA * xyz + LAB_T0)
    fx, fy, fz = f.unbind(-1)
    return torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), dim=-1)


def lab_to_rgb_torch(lab: torch.Tensor) -> torch.Tensor:
    """Torch twin of :func:`lab_to_rgb`."""
    m = torch.as_tensor((RGB_FROM_XYZ * D65_WHITE[None, :]).T, dtype=lab.dtype, device=lab.device)
    fy = (lab[..., 0] + 16.0) / 116.0
    f = torch.stack((fy + lab[..., 1] / 500.0, fy, (fy - lab[..., 2] / 200.0).clamp(min=0.0)), dim=-1)
    xyz = torch.where(f > LAB_F_EPSILON, f**3, (f - LAB_T0) / LAB_KAPPA)
    linear = xyz @ m
    rgb = torch.where(linear > 0.0031308, 1.055 * linear.clamp(min=0.0031308) ** (1 / 2.4) - 0.055, 12.92 * linear)
    return rgb.clamp(0.0, 1.0)
