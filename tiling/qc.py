"""Per-tile quality control: how much of a tile is blank glass, and how sharp it is."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

FLAG_BLANK = 1
FLAG_BLURRED = 2
QC_FLAG_DOC = {"1": "blank (mostly white glass)", "2": "blurred (low Laplacian variance)"}


@dataclass(frozen=True)
class QCConfig:
    """Thresholds of :func:`tile_qc`.

    Parameters
    ----------
    white_level : int
        A pixel whose darkest channel is above this is counted as white (glass).
    max_white : float
        Tiles with a larger white fraction get the blank flag.
    min_sharpness : float
        Tiles with a smaller variance of the grey-level Laplacian get the blurred flag (in-focus H&E at 0.5 µm/px
        is typically several hundred; out-of-focus regions fall below ~50).
    """

    white_level: int = 220
    max_white: float = 0.9
    min_sharpness: float = 40.0

    def to_dict(self) -> dict:
        return asdict(self)


def tile_qc(batch: np.ndarray, config: QCConfig | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blank fraction, sharpness and flags of a batch of tiles.

    Parameters
    ----------
    batch : (N, H, W, 3) uint8 array

    Returns
    -------
    white : (N,) float32
        Fraction of white pixels.
    sharpness : (N,) float32
        Variance of the 4-neighbour Laplacian of the green channel at half resolution (grey levels²).
    flags : (N,) uint8
        Bit 1: blank; bit 2: blurred (only set on tiles that are not blank).
    """
    config = config or QCConfig()
    if batch.shape[0] == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, np.uint8)
    # QC runs on every tile of every slide, so it works on subsamples: the white fraction on every 4th pixel,
    # sharpness on the green channel (where haematoxylin contrast is strongest) at every 2nd pixel.
    white = (batch[:, ::4, ::4].min(axis=-1) > config.white_level).mean(axis=(1, 2)).astype(np.float32)
    grey = batch[:, ::2, ::2, 1].astype(np.int16)
    lap = (grey[:, 1:-1, :-2] + grey[:, 1:-1, 2:] + grey[:, :-2, 1:-1] + grey[:, 2:, 1:-1]
           - 4 * grey[:, 1:-1, 1:-1])
    sharpness = lap.reshape(len(batch), -1).astype(np.float32).var(axis=1)
    blank = white > config.max_white
    blurred = ~blank & (sharpness < config.min_sharpness)
    flags = (blank * FLAG_BLANK + blurred * FLAG_BLURRED).astype(np.uint8)
    return white, sharpness, flags
