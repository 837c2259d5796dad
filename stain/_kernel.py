"""The per-pixel work of every stain-matrix method: log, one 3x3 matrix, exp.

Macenko and Vahadane with fixed stain parameters, and HED augmentation, all map a pixel's optical density
through an affine map. Written in the log-intensity domain ``L = ln(I + 1)`` this is

    ``out + 1 = exp(L @ A + b)``

with one ``(3, 3)`` matrix ``A`` (row-vector convention) and offset ``b`` per image. The identity (``A = I``,
``b = 0``) returns the input exactly. Two implementations share these semantics: a chunked numpy one (cache-sized
blocks, no large temporaries, no broadcasting over the length-3 axis, which numpy executes slowly) and a torch one
that runs on the tensor's device. Both work in float32; they agree to within one grey level (rounding ties).
"""

from __future__ import annotations

import math

import numpy as np
import torch

# exp(_Y_MAX) - 1 = 255: clamping in the log domain keeps exp finite and the result in [0, 255].
_Y_MAX = math.log(256.0)
# Pixels per block for CPU work: 3 float32 buffers of this many pixels stay inside a 1-2 MiB L2 cache.
_CHUNK = 16384
# Pixels per row of the block-diagonal matmul in the numpy kernel.
_PACK = 4


def _runs(matrices: np.ndarray, offsets: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive images sharing one map, as ``(start, stop)``: a fixed source makes the whole batch one run."""
    n = matrices.shape[0]
    changed = np.any(matrices[1:] != matrices[:-1], axis=(1, 2)) | np.any(offsets[1:] != offsets[:-1], axis=1)
    bounds = [0, *(np.flatnonzero(changed) + 1).tolist(), n]
    return list(zip(bounds[:-1], bounds[1:]))


def _fill_rows(buffer: np.ndarray, row: np.ndarray) -> None:
    """Set every row of a C-contiguous ``(m, 3)`` buffer to ``row`` by doubling contiguous copies.

    Plain broadcasting assignment runs numpy's inner loop over the length-3 axis and is ~20x slower.
    """
    buffer[0] = row
    filled = 1
    while filled < buffer.shape[0]:
        step = min(filled, buffer.shape[0] - filled)
        buffer[filled : filled + step] = buffer[:step]
        filled += step


def apply_log_affine_numpy(batch: np.ndarray, matrices: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply ``out + 1 = exp(ln(in + 1) @ A + b)`` per image, on numpy arrays.

    Parameters
    ----------
    batch : np.ndarray, shape (N, H, W, 3), uint8, C-contiguous
    matrices : np.ndarray, shape (N, 3, 3), float
        ``A`` per image (row-vector convention: output channel ``c`` is ``sum_k L[k] * A[k, c]``).
    offsets : np.ndarray, shape (N, 3), float
        ``b`` per image.

    Returns
    -------
    np.ndarray, shape (N, H, W, 3), uint8
        Rounded to the nearest grey level, saturated to ``[0, 255]``.
    """
    per_image = batch.shape[1] * batch.shape[2]
    flat = batch.reshape(-1, 3)
    out = np.empty_like(flat)
    size = min(_CHUNK, flat.shape[0])
    logs = np.empty((size, 3), np.float32)
    y = np.empty((size, 3), np.float32)
    bias = np.empty((size, 3), np.float32)
    for first, last in _runs(matrices, offsets):
        a = np.ascontiguousarray(matrices[first], dtype=np.float32)
        # (m, 3) @ (3, 3) is a poor shape for matmul; viewing 4 pixels as one row of 12 against the
        # block-diagonal (12, 12) matrix gives the same numbers ~2x faster.
        a4 = np.kron(np.eye(_PACK, dtype=np.float32), a)
        # A tiled bias turns "+ b" into a plain elementwise add (broadcasting over 3 columns is ~15x slower).
        _fill_rows(bias, np.asarray(offsets[first], dtype=np.float32))
        for start in range(first * per_image, last * per_image, size):
            stop = min(start + size, last * per_image)
            m = stop - start
            lg, yy = logs[:m], y[:m]
            np.copyto(lg, flat[start:stop], casting="unsafe")
            lg += 1.0
            np.log(lg, out=lg)
            packed = m - m % _PACK
            np.matmul(lg[:packed].reshape(-1, 3 * _PACK), a4, out=yy[:packed].reshape(-1, 3 * _PACK))
            if packed < m:
                np.matmul(lg[packed:], a, out=yy[packed:])
            yy += bias[:m]
            np.minimum(yy, _Y_MAX, out=yy)
            np.exp(yy, out=yy)
            # exp(y) - 1 rounded to nearest == floor(exp(y) - 0.5): the cast truncates toward zero, and values in
            # (-0.5, 0) (y < 0: darker than black) truncate to 0, so no lower clamp is needed.
            yy -= 0.5
            np.copyto(out[start:stop], yy, casting="unsafe")
    return out.reshape(batch.shape)


def apply_log_affine_torch(batch: torch.Tensor, matrices: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Torch twin of :func:`apply_log_affine_numpy`, on the device of ``batch``.

    Parameters
    ----------
    batch : torch.Tensor, shape (N, H, W, 3), uint8
    matrices : torch.Tensor, shape (N, 3, 3), float
    offsets : torch.Tensor, shape (N, 3), float

    Returns
    -------
    torch.Tensor, shape (N, H, W, 3), uint8, same device as ``batch``
    """
    n = batch.shape[0]
    a = matrices.to(device=batch.device, dtype=torch.float32)
    b = offsets.to(device=batch.device, dtype=torch.float32)
    flat = batch.reshape(n, -1, 3)
    if batch.device.type != "cpu":
        # On an accelerator the whole batch is one batched matmul; memory is (N*H*W*3) float32 for a moment.
        y = torch.baddbmm(b[:, None, :], torch.log1p(flat.float()), a)
        return y.clamp_(0.0, _Y_MAX).exp_().sub_(0.5).to(torch.uint8).reshape(batch.shape)
    per_image = flat.shape[1]
    pixels = flat.reshape(-1, 3)
    out = torch.empty_like(pixels)
    size = min(_CHUNK, pixels.shape[0])
    logs = torch.empty((size, 3), dtype=torch.float32)
    y = torch.empty((size, 3), dtype=torch.float32)
    for first, last in _runs(a.numpy(), b.numpy()):
        bias = b[first].expand(size, 3).contiguous()
        for start in range(first * per_image, last * per_image, size):
            stop = min(start + size, last * per_image)
            m = stop - start
            lg, yy = logs[:m], y[:m]
            lg.copy_(pixels[start:stop]).add_(1.0).log_()
            torch.mm(lg, a[first], out=yy)
            yy.add_(bias[:m]).clamp_(0.0, _Y_MAX).exp_().sub_(0.5)
            out[start:stop] = yy
    return out.reshape(batch.shape)
