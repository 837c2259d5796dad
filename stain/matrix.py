"""Stain-matrix normalisation shared by Macenko and Vahadane.

Both methods describe an H&E appearance by two optical-density unit vectors (hematoxylin, eosin) and a robust
maximum concentration per stain (:class:`~slidestream.stain.params.StainMatrixParams`); they differ only in how
the vectors are found. Normalising a pixel is then linear in optical density:

    ``OD_out = M_t diag(c_t / c_s) pinv(M_s) OD_in``

(source ``s``, target ``t``, ``c`` the maximum concentrations), i.e. one combined 3x3 matrix per source, applied
by :mod:`slidestream.stain._kernel` as ``log -> 3x3 matmul -> exp``.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import ClassVar, Sequence

import numpy as np
import torch

from ._color import rgb_to_od, stained_masks
from ._kernel import apply_log_affine_numpy, apply_log_affine_torch
from .base import BaseConfig, ImageBatch, StainEstimationError, StainNormalizer, thin
from .params import MAX_MAX_CONC, MIN_MAX_CONC, MIN_STAIN_ANGLE_DEG, StainMatrixParams, stain_angle_deg

#: Reference H&E stain vectors (columns H, E; rows R, G, B) and 99th-percentile concentrations published with
#: Macenko et al.'s normalisation code and used as torchstain's default target.
DEFAULT_HE_REFERENCE = StainMatrixParams(
    stain_matrix=[[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]],
    max_conc=[1.9705, 1.0308],
)



# Most negative OD component accepted in an estimated (unit) stain vector; noise makes near-zero components
# slightly negative, real dyes never are.
MIN_STAIN_COMPONENT = -0.1


def tissue_od(pixels: np.ndarray, cfg: BaseConfig, *, dense: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Optical densities of the pixels an estimate uses.

    Parameters
    ----------
    pixels : np.ndarray, shape (n, 3), uint8
    cfg : BaseConfig
        ``io``, ``beta``, ``min_tissue_pixels`` and ``max_pixels`` are used.
    dense : bool
        Which pixels the stain vectors come from: True, those with every channel's OD >= ``beta`` (Macenko's
        rule); False, those with any channel's OD >= ``beta`` (all but white background, so faint eosin counts).

    Returns
    -------
    for_vectors : np.ndarray, shape (m, 3), float64
        Pixels selected by ``dense``, thinned to ``max_pixels``.
    stained : np.ndarray, shape (k, 3), float64
        Pixels with any channel's OD >= ``beta``, thinned to ``max_pixels`` (for the maximum concentrations, so
        that faint eosin counts and white background does not).

    Raises
    ------
    StainEstimationError
        Fewer than ``min_tissue_pixels`` pixels for the vectors.
    """
    all_dense, stained = stained_masks(pixels, cfg.io, cfg.beta)
    chosen = all_dense if dense else stained
    count = int(chosen.sum())
    if count < cfg.min_tissue_pixels:
        rule = "every" if dense else "some"
        raise StainEstimationError(
            f"only {count} of {pixels.shape[0]} pixels are tissue (OD >= {cfg.beta} in {rule} channel), "
            f"at least {cfg.min_tissue_pixels} are needed: give tissue-rich tiles, or lower beta / min_tissue_pixels"
        )
    # Select and thin on uint8 first: the float64 OD of a large tile set would not fit in memory.
    return (
        rgb_to_od(thin(pixels[chosen], cfg.max_pixels), cfg.io),
        rgb_to_od(thin(pixels[stained], cfg.max_pixels), cfg.io),
    )


def order_he(stains: np.ndarray) -> np.ndarray:
    """Put hematoxylin first: of two OD vectors (columns), H is the one absorbing more red light (larger row 0)."""
    return stains[:, [1, 0]] if stains[0, 0] < stains[0, 1] else stains


def finish_estimate(od: np.ndarray, stains: np.ndarray, conc_percentile: float) -> StainMatrixParams:
    """Check a stain-vector estimate and add the robust maximum concentrations.

    Parameters
    ----------
    od : np.ndarray, shape (n, 3), float64
        Optical densities of the stained (non-background) pixels.
    stains : np.ndarray, shape (3, 2), float64
        Stain OD vectors as columns, H first.
    conc_percentile : float
        Percentile of each stain's concentration over ``od`` taken as its maximum.

    Returns
    -------
    StainMatrixParams

    Raises
    ------
    StainEstimationError
        Non-finite vectors, vectors with an OD component below ``MIN_STAIN_COMPONENT``, vectors closer than
        ``MIN_STAIN_ANGLE_DEG``, or a stain with maximum concentration outside ``[MIN_MAX_CONC, MAX_MAX_CONC]``.
    """
    if not np.all(np.isfinite(stains)):
        raise StainEstimationError("stain vector estimate is not finite: the tissue colours are degenerate")
    norms = np.linalg.norm(stains, axis=0)
    if np.any(norms <= 1e-12):
        raise StainEstimationError("a stain vector is zero: the tissue colours are degenerate")
    stains = stains / norms
    if np.any(stains < MIN_STAIN_COMPONENT):
        # A dye absorbs, it cannot emit: a clearly negative OD component means the "stains" are noise, ink or
        # a colour cast rather than H&E.
        raise StainEstimationError(
            f"estimated stain vectors {stains.T.round(3).tolist()} have negative optical density: the image does "
            "not look like H&E (pen ink, noise or a single hue?); use tiles with nuclei and stroma"
        )
    angle = stain_angle_deg(stains)
    if angle < MIN_STAIN_ANGLE_DEG:
        raise StainEstimationError(
            f"the two stain vectors are only {angle:.2f}° apart (< {MIN_STAIN_ANGLE_DEG}°): the tissue pixels are "
            "(nearly) one colour, so two stains cannot be separated; use tiles showing both nuclei and stroma"
        )
    conc = od @ np.linalg.pinv(stains).T
    max_conc = np.percentile(conc, conc_percentile, axis=0)
    if not np.all(max_conc >= MIN_MAX_CONC):
        raise StainEstimationError(
            f"maximum stain concentrations {max_conc.round(4).tolist()} (H, E): a stain is (almost) absent, "
            f"below {MIN_MAX_CONC}; use tiles where both stains are visible"
        )
    if not np.all(max_conc <= MAX_MAX_CONC):  # only reachable with absurd vectors; keeps params constructible
        raise StainEstimationError(f"maximum stain concentrations {max_conc.round(2).tolist()} are implausible")
    return StainMatrixParams(stains, max_conc)


def combined_matrix(source: StainMatrixParams, target: StainMatrixParams, io: float) -> tuple[np.ndarray, np.ndarray]:
    """The per-pixel map from source to target appearance in the kernel's log-intensity form.

    Parameters
    ----------
    source, target : StainMatrixParams
    io : float
        Transmitted light intensity.

    Returns
    -------
    a : np.ndarray, shape (3, 3), float64
        Row-vector matrix: ``ln(out + 1) = ln(in + 1) @ a + b``.
    b : np.ndarray, shape (3,), float64
    """
    scale = target.max_conc / source.max_conc
    k = target.stain_matrix @ np.diag(scale) @ np.linalg.pinv(source.stain_matrix)  # OD_out = k @ OD_in
    log_io = math.log(io)
    # out = io*exp(-k @ OD), OD = ln(io) - ln(in + 1)  =>  ln(out) = ln(in + 1) @ k.T + ln(io) * (1 - k.sum(1)).
    # The kernel returns exp(.) - 1, so "out + 1" there is torchstain's "out": identical stains map I to I.
    return k.T, log_io * (1.0 - k.sum(axis=1))


class StainMatrixNormalizer(StainNormalizer):
    """Common part of :class:`MacenkoNormalizer` and :class:`VahadaneNormalizer`; subclasses find the vectors."""

    params_type = StainMatrixParams
    #: Whether the stain vectors are fitted on dense pixels only (every channel's OD >= beta) or on all stained
    #: (non-background) pixels.
    dense_pixels_only: ClassVar[bool] = True

    def default_target(self) -> StainMatrixParams:
        """Macenko's published H&E reference (``DEFAULT_HE_REFERENCE``)."""
        return DEFAULT_HE_REFERENCE

    @abstractmethod
    def _stain_vectors(self, od: np.ndarray) -> np.ndarray:
        """``(3, 2)`` float64 OD vectors (H first) from ``(n, 3)`` tissue optical densities (see
        ``dense_pixels_only``)."""

    def _estimate(self, pixels: np.ndarray) -> StainMatrixParams:
        for_vectors, stained = tissue_od(pixels, self.config, dense=self.dense_pixels_only)
        try:
            stains = self._stain_vectors(for_vectors)
        except np.linalg.LinAlgError as exc:
            raise StainEstimationError(f"stain separation failed on degenerate colours ({exc})") from exc
        return finish_estimate(stained, stains, self.config.max_conc_percentile)

    def _apply(self, batch: ImageBatch, sources: Sequence[StainMatrixParams | None]) -> ImageBatch:
        n = len(sources)
        a = np.broadcast_to(np.eye(3), (n, 3, 3)).copy()
        b = np.zeros((n, 3))
        maps: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # a fixed source is the same object N times
        for i, src in enumerate(sources):
            if src is not None:  # None: estimation failed, keep the image (identity map)
                if id(src) not in maps:
                    maps[id(src)] = combined_matrix(src, self.target, self.config.io)
                a[i], b[i] = maps[id(src)]
        if isinstance(batch, torch.Tensor):
            return apply_log_affine_torch(batch, torch.from_numpy(a), torch.from_numpy(b))
        return apply_log_affine_numpy(batch, a, b)


def stain_concentrations(images: np.ndarray, params: StainMatrixParams, io: float = 240.0) -> np.ndarray:
    """Unmix RGB pixels into hematoxylin and eosin concentrations (least squares in optical density).

    Parameters
    ----------
    images : np.ndarray, shape (..., 3), uint8
    params : StainMatrixParams
        Stain vectors of the images (e.g. from ``fit_source``).
    io : float
        Transmitted light intensity, as in the normaliser's config.

    Returns
    -------
    np.ndarray, shape (..., 2), float32
        Concentrations in OD units (H, E); may be slightly negative for pixels off the stain plane.
    """
    od = math.log(io) - np.log(np.asarray(images, dtype=np.float64) + 1.0)
    return (od @ np.linalg.pinv(params.stain_matrix).T).astype(np.float32)


def render_stains(concentrations: np.ndarray, params: StainMatrixParams, io: float = 240.0) -> np.ndarray:
    """Compose RGB pixels from stain concentrations (the inverse of :func:`stain_concentrations`).

    Useful to show one stain alone (zero the other's concentration) or to synthesise H&E-like test images.

    Parameters
    ----------
    concentrations : np.ndarray, shape (..., 2), float
        H and E concentrations in OD units.
    params : StainMatrixParams
    io : float
        Transmitted light intensity.

    Returns
    -------
    np.ndarray, shape (..., 3), uint8
        ``round(io * exp(-C @ M.T) - 1)`` saturated to ``[0, 255]``, the OD convention of the normalisers.
    """
    od = np.asarray(concentrations, dtype=np.float64) @ params.stain_matrix.T
    rgb = io * np.exp(-od) - 1.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
