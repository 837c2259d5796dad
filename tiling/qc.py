"""Per-tile quality control: how much of a tile is blank glass, and how sharp it is."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

FLAG_BLANK = 1
FLAG_BLURRED = 2
QC_FLAG_DOC = {"1": "blank (mostly white glass)", "2": "blurred (low Laplacian variance)"}
#: What the QC values measure, recorded with a store's tiling parameters: a store whose chunks were measured
#: otherwise (stores before luma QC measured the green channel) is not resumed into, so values are never mixed.
QC_MEASURE = "luma: white on every 4th pixel, Laplacian variance on every 2nd"


@dataclass(frozen=True)
class QCConfig:
    """Thresholds of :func:`tile_qc`.

    Parameters
    ----------
    white_level : int
        A pixel whose luma (see :func:`luma`) is above this is counted as white (glass).
    max_white : float
        Tiles with a larger white fraction get the blank flag.
    min_sharpness : float
        Tiles with a smaller variance of the luma Laplacian get the blurred flag (in-focus H&E at 0.5 µm/px
        is typically several hundred; out-of-focus regions fall below ~50).
    """

    white_level: int = 220
    max_white: float = 0.9
    min_sharpness: float = 40.0

    def to_dict(self) -> dict:
        return asdict(self)


def luma(rgb: np.ndarray) -> np.ndarray:
    """Luma ``Y = 0.299 R + 0.587 G + 0.114 B`` of RGB pixels, rounded, with libjpeg's fixed-point weights.

    These are the weights (and the rounding) JPEG decoders use to produce the Y plane, so the luma of a decoded
    JPEG tile equals, up to the chroma's rounding, what decoding that tile straight to grey gives: the pass-through
    path measures QC on a grey decode at about half the cost of an RGB one (:func:`luma_stats`).

    Parameters
    ----------
    rgb : (..., 3) uint8 array

    Returns
    -------
    (...) int16 array, values 0-255
    """
    y = rgb[..., 0].astype(np.int32)
    y *= 19595
    part = rgb[..., 1].astype(np.int32)
    part *= 38470
    y += part
    np.multiply(rgb[..., 2], 7471, out=part, dtype=np.int32)
    y += part
    y += 32768
    y >>= 16
    return y.astype(np.int16)


def tile_stats(tile: np.ndarray, config: QCConfig | None = None) -> tuple[float, float]:
    """Blank fraction and sharpness of one tile.

    Parameters
    ----------
    tile : (H, W, 3) uint8 array

    Returns
    -------
    white : float
        Fraction of white pixels (luma above ``config.white_level``), on every 4th pixel.
    sharpness : float
        Variance of the 4-neighbour Laplacian of the luma at every 2nd pixel, in grey levels² (on H&E within a
        few per cent of the same on the green channel, which carries most of the haematoxylin contrast).

    Notes
    -----
    QC runs on every tile of every slide, so it works on subsamples, and the tiler calls it on each tile right
    after decoding it, while the tile is still in the CPU cache: that makes it much cheaper than the same
    arithmetic over a stacked batch. The variance comes from exact integer sums.
    """
    return luma_stats(luma(tile[::2, ::2]), config)


def luma_stats(luma_2: np.ndarray, config: QCConfig | None = None) -> tuple[float, float]:
    """:func:`tile_stats` from the tile's luma at every 2nd pixel, ``(ceil(H/2), ceil(W/2))`` int16 or uint8.

    The pass-through path passes ``grey[::2, ::2]`` of the tile decoded straight to grey.
    """
    config = config or QCConfig()
    sub = luma_2[::2, ::2]
    white = np.count_nonzero(sub > config.white_level) / max(sub.size, 1)
    h, w = luma_2.shape
    if min(h, w) < 3:
        return float(white), 0.0
    # The Laplacian over the flattened image (rows 1..h-2, every column), so that each numpy call is one
    # contiguous pass rather than a loop over strided rows (these are 128 x 128 arrays: per-row overhead is most
    # of the cost); the two border columns, where the flat neighbours wrap to the next row, are zeroed out.
    g = luma_2.astype(np.int16).ravel()
    lap = g[w - 1:-w - 1] + g[w + 1:g.size - w + 1]
    lap += g[:-2 * w]
    lap += g[2 * w:]
    lap -= np.left_shift(g[w:-w], 2)
    rows = lap.reshape(h - 2, w)
    rows[:, 0] = 0
    rows[:, -1] = 0
    n = (h - 2) * (w - 2)
    # Sums of integers below 2**53 are exact in float64 (|lap| <= 1020), and float64 sums run in SIMD where int64
    # ones do not; no np.dot: BLAS would start threads that spin against the tiler's.
    lap = lap.astype(np.float64)
    s1 = lap.sum()
    s2 = np.square(lap, out=lap).sum()
    return float(white), float((s2 - s1 * s1 / n) / n)


def qc_flags(white: np.ndarray, sharpness: np.ndarray, config: QCConfig | None = None) -> np.ndarray:
    """Flags from :func:`tile_stats` values: bit 1 blank, bit 2 blurred (only on tiles that are not blank).

    Returns
    -------
    (N,) uint8 array
    """
    config = config or QCConfig()
    blank = np.asarray(white) > config.max_white
    blurred = ~blank & (np.asarray(sharpness) < config.min_sharpness)
    return (blank * FLAG_BLANK + blurred * FLAG_BLURRED).astype(np.uint8)


def tile_qc(batch: np.ndarray, config: QCConfig | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blank fraction, sharpness and flags of a batch of tiles (:func:`tile_stats` of each).

    Parameters
    ----------
    batch : (N, H, W, 3) uint8 array

    Returns
    -------
    white : (N,) float32
        Fraction of white pixels.
    sharpness : (N,) float32
        Variance of the 4-neighbour Laplacian of the luma at every 2nd pixel (grey levels²).
    flags : (N,) uint8
        Bit 1: blank; bit 2: blurred (only set on tiles that are not blank).
    """
    config = config or QCConfig()
    stats = np.array([tile_stats(tile, config) for tile in batch], dtype=np.float64).reshape(-1, 2)
    white, sharpness = stats[:, 0].astype(np.float32), stats[:, 1].astype(np.float32)
    return white, sharpness, qc_flags(white, sharpness, config)
