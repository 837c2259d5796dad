"""Reinhard colour transfer (Reinhard et al., "Color transfer between images", IEEE CG&A 2001), in CIE L*a*b*.

Each L*a*b* channel is standardised with the source's mean and standard deviation and rescaled to the target's:
``lab_out = (lab - mean_s) / std_s * std_t + mean_t``. This uses CIE L*a*b* as scikit-image defines it (sRGB,
D65) rather than Reinhard's original l-alpha-beta space, as do torchstain and StainTools.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch

from ._color import lab_to_rgb_torch, rgb_to_lab, rgb_to_lab_torch, stained_masks
from ._lab_kernel import reinhard_numpy
from .base import BaseConfig, ImageBatch, StainEstimationError, StainNormalizer, thin
from .params import MIN_LAB_STD, LabStats
from .registry import register_method

#: L*a*b* statistics of the non-background pixels of torchstain's example H&E target patch (MIT licence),
#: a typical well-stained H&E appearance.
DEFAULT_LAB_REFERENCE = LabStats(mean=[68.7941, 12.7084, -20.9846], std=[13.7254, 6.9369, 9.9646])

@dataclasses.dataclass(frozen=True)
class ReinhardConfig(BaseConfig):
    """Reinhard settings (plus ``io``, ``beta``, ``min_tissue_pixels``, ``max_pixels`` of :class:`BaseConfig`).

    Parameters
    ----------
    ignore_background : bool
        Compute statistics over stained pixels only (any channel's OD >= ``beta``), so that the amount of white
        background in a tile does not shift them. False gives textbook Reinhard over all pixels.
    """

    ignore_background: bool = True


def lab_statistics(lab: np.ndarray) -> LabStats:
    """Mean and population standard deviation per channel of ``(n, 3)`` L*a*b* values (n >= 1).

    Raises
    ------
    StainEstimationError
        A channel's standard deviation is below ``MIN_LAB_STD`` (one colour).
    """
    std = lab.std(axis=0)
    if not np.all(std >= MIN_LAB_STD):
        raise StainEstimationError(
            f"L*a*b* standard deviations {std.round(4).tolist()} are (near) zero: the pixels are one colour, "
            "so there is no contrast to match; use tiles with tissue structure"
        )
    return LabStats(lab.mean(axis=0), std)


def _scale_offset(source: LabStats, target: LabStats) -> tuple[np.ndarray, np.ndarray]:
    """``lab_out = lab * scale + offset``, both ``(3,)`` float64."""
    scale = target.std / source.std
    return scale, target.mean - source.mean * scale


@register_method
class ReinhardNormalizer(StainNormalizer):
    """Reinhard colour normalisation; see :class:`~slidestream.stain.base.StainNormalizer` for the API."""

    method = "reinhard"
    config_type = ReinhardConfig
    params_type = LabStats

    def default_target(self) -> LabStats:
        """``DEFAULT_LAB_REFERENCE``."""
        return DEFAULT_LAB_REFERENCE

    def _estimate(self, pixels: np.ndarray) -> LabStats:
        cfg = self.config
        if cfg.ignore_background:
            pixels = pixels[stained_masks(pixels, cfg.io, cfg.beta)[1]]
        if pixels.shape[0] < cfg.min_tissue_pixels:
            raise StainEstimationError(
                f"only {pixels.shape[0]} non-background pixels, at least {cfg.min_tissue_pixels} are needed: give "
                "tissue-rich tiles, or lower min_tissue_pixels"
            )
        return lab_statistics(rgb_to_lab(thin(pixels, cfg.max_pixels) / 255.0))

    def _apply(self, batch: ImageBatch, sources: Sequence[LabStats | None]) -> ImageBatch:
        flat = batch.reshape(batch.shape[0], -1, 3)
        out = flat.clone() if isinstance(flat, torch.Tensor) else flat.copy()  # no source: image unchanged
        for i, src in enumerate(sources):
            if src is None:
                continue
            scale, offset = _scale_offset(src, self.target)
            if isinstance(flat, torch.Tensor) and flat.device.type != "cpu":
                out[i] = reinhard_torch_math(flat[i], scale, offset)
            elif isinstance(flat, torch.Tensor):  # CPU tensors share memory with numpy: the compiled kernel
                out[i] = torch.from_numpy(reinhard_numpy(flat[i].numpy(), scale, offset))
            else:
                out[i] = reinhard_numpy(flat[i], scale, offset)
        return out.reshape(batch.shape)


def reinhard_torch_math(pixels: torch.Tensor, scale: np.ndarray, offset: np.ndarray) -> torch.Tensor:
    """Reinhard's map of ``(n, 3)`` uint8 pixels with torch's L*a*b* formulas, on their device (the accelerator
    path; tests run it on the CPU against the compiled kernel of :mod:`slidestream.stain._lab_kernel`)."""
    s = torch.tensor(scale, dtype=torch.float32, device=pixels.device)
    o = torch.tensor(offset, dtype=torch.float32, device=pixels.device)
    lab = rgb_to_lab_torch(pixels.float() / 255.0)
    return torch.round(lab_to_rgb_torch(lab * s + o) * 255.0).to(torch.uint8)
