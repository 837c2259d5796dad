"""PNG heatmaps: per-tile scores drawn over the slide thumbnail, with a colour bar."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .figure import new_figure, save_png

__all__ = ["render_heatmap", "score_grid"]


def score_grid(coords: np.ndarray, extent0: float, scores: np.ndarray, shape: tuple[int, int],
               downsample: tuple[float, float]) -> np.ndarray:
    """Paint per-tile scores onto a low-resolution canvas.

    Parameters
    ----------
    coords : (N, 2) int array
        Level-0 top-left x, y of each tile.
    extent0 : float
        Tile side in level-0 pixels.
    scores : (N,) float array
    shape : (h, w)
        Canvas size (the thumbnail's).
    downsample : (float, float)
        Level-0 pixels per canvas pixel along x and y.

    Returns
    -------
    (h, w) float32 array, NaN where no tile lies. Overlapping tiles average.
    """
    h, w = shape
    acc = np.zeros((h, w), np.float64)
    cnt = np.zeros((h, w), np.float64)
    sx, sy = downsample
    for (x, y), s in zip(coords, scores):
        if not np.isfinite(s):
            continue
        x0, y0 = int(x / sx), int(y / sy)
        x1, y1 = max(int(np.ceil((x + extent0) / sx)), x0 + 1), max(int(np.ceil((y + extent0) / sy)), y0 + 1)
        acc[y0:y1, x0:x1] += s
        cnt[y0:y1, x0:x1] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(cnt > 0, acc / cnt, np.nan)
    return out.astype(np.float32)


def render_heatmap(
    thumbnail: np.ndarray,
    downsample: tuple[float, float],
    coords: np.ndarray,
    extent0: float,
    scores: np.ndarray,
    path: str | os.PathLike,
    *,
    title: str = "",
    label: str = "score",
    vmin: float | None = 0.0,
    vmax: float | None = 1.0,
    cmap: str = "jet",
    alpha: float = 0.45,
    outlines: list[np.ndarray] | None = None,
) -> Path:
    """Write a PNG: the thumbnail, the tile scores over it (semi-transparent), a colour bar, optional outlines.

    Parameters
    ----------
    thumbnail : (h, w, 3) uint8 array
    downsample : (float, float)
        Level-0 pixels per thumbnail pixel.
    coords, extent0, scores
        As in :func:`score_grid`.
    outlines : list of (M, 2) arrays, optional
        Polylines in level-0 pixels (e.g. tissue or tumour outlines) drawn in black.
    vmin, vmax : float or None
        Colour range; None takes the range of the finite scores.

    Returns
    -------
    Path of the PNG (written atomically).
    """
    grid = score_grid(coords, extent0, np.asarray(scores, float), thumbnail.shape[:2], downsample)
    finite = np.asarray(scores, float)[np.isfinite(scores)]
    lo = vmin if vmin is not None else (finite.min() if finite.size else 0.0)
    hi = vmax if vmax is not None else (finite.max() if finite.size else 1.0)
    if hi <= lo:
        hi = lo + 1e-6
    h, w = thumbnail.shape[:2]
    fig_w = 8.0
    fig = new_figure((fig_w, fig_w * h / w * 0.9 + 0.8), dpi=110)
    ax = fig.add_subplot()
    ax.imshow(thumbnail)
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=lo, vmax=hi, alpha=alpha, interpolation="nearest")
    for line in outlines or []:
        ax.plot(line[:, 0] / downsample[0], line[:, 1] / downsample[1], color="black", linewidth=0.8)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.035, pad=0.02, label=label)
    fig.tight_layout()
    return save_png(fig, path)
