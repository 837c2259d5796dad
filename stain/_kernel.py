"""The per-pixel work of every stain-matrix method: one affine map in the log-intensity domain.

Macenko and Vahadane with fixed stain parameters, and HED augmentation, all map a pixel's optical density
through an affine map. Written in the log-intensity domain ``L = ln(I + 1)`` this is

    ``out + 1 = exp(L @ A + b)``

with one ``(3, 3)`` matrix ``A`` (row-vector convention) and offset ``b`` per image, the result rounded to the
nearest grey level and saturated to ``[0, 255]``. The identity (``A = I``, ``b = 0``) returns the input exactly.

Two implementations share these semantics and agree within one grey level (float32 rounding ties):

- on the CPU (numpy arrays and CPU tensors), a compiled (numba) loop over pixels. Because the exponential of a sum
  is a product of exponentials, ``out_c + 1 = prod_k T[k, I_k, c]`` with ``T[k, v, c] = (v + 1) ** A[k, c]`` (and
  ``exp(b_c)`` folded into ``k = 0``): three ``(256, 3)`` tables replace every log and exp, so a pixel costs nine
  L1-resident loads and six multiplies: about twice the best pure-numpy version (log, 3x3 matmul, exp in
  cache-sized blocks); ``bench/stain.py`` measures it.
- on an accelerator, torch's ``log1p -> baddbmm -> exp`` over the whole batch, on the tensor's device.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# exp(_Y_MAX) - 1 = 255: the torch path clamps in the log domain, which keeps exp finite and the result in [0, 255].
_Y_MAX = math.log(256.0)
# Each table entry's exponent is bounded to +-29 so that a product of three stays inside float32 (e^87 < e^88.7):
# no inf or NaN can arise, which the compiled loop's fast-math flags rely on. A bound only changes a result when
# one channel alone scales its factor beyond e^29 (~4e12) and the others pull the product back under 256, which
# no plausible stain map does.
_LOG_FACTOR_BOUND = 29.0
_LOG_LEVELS = np.log(np.arange(256, dtype=np.float64) + 1.0)

_compiled = None


def _kernel():
    """The compiled pixel loop, built on first use (the numba import and compile are paid once; cached on disk)."""
    global _compiled
    if _compiled is None:
        import numba

        @numba.njit(cache=True, fastmath=True, nogil=True)
        def power_product(pixels, out, tables):  # pragma: no cover - compiled; covered through its callers
            for i in range(pixels.shape[0]):
                r, g, b = pixels[i, 0], pixels[i, 1], pixels[i, 2]
                for c in range(3):
                    # out + 1 = product; round(out) = trunc(product - 0.5) for product >= 0.5, else 0
                    v = min(tables[0, r, c] * tables[1, g, c] * tables[2, b, c], np.float32(256.0))
                    v -= np.float32(0.5)
                    out[i, c] = np.uint8(v) if v > np.float32(0.0) else np.uint8(0)

        _compiled = power_product
    return _compiled


def power_tables(matrix: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """``T[k, v, c] = exp(ln(v + 1) * A[k, c] + [k == 0] * b[c])`` as float32, shape ``(3, 256, 3)``."""
    exponent = _LOG_LEVELS[None, :, None] * np.asarray(matrix, np.float64)[:, None, :]
    exponent[0] += np.asarray(offset, np.float64)[None, :]
    return np.exp(np.clip(exponent, -_LOG_FACTOR_BOUND, _LOG_FACTOR_BOUND)).astype(np.float32)


def _runs(matrices: np.ndarray, offsets: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive images sharing one map, as ``(start, stop)``: a fixed source makes the whole batch one run."""
    n = matrices.shape[0]
    changed = np.any(matrices[1:] != matrices[:-1], axis=(1, 2)) | np.any(offsets[1:] != offsets[:-1], axis=1)
    bounds = [0, *(np.flatnonzero(changed) + 1).tolist(), n]
    return list(zip(bounds[:-1], bounds[1:]))


def apply_log_affine_numpy(batch: np.ndarray, matrices: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply ``out + 1 = exp(ln(in + 1) @ A + b)`` per image, on the CPU.

    Parameters
    ----------
    batch : np.ndarray, shape (N, H, W, 3), uint8
    matrices : np.ndarray, shape (N, 3, 3), float
        ``A`` per image (row-vector convention: output channel ``c`` is ``sum_k L[k] * A[k, c]``).
    offsets : np.ndarray, shape (N, 3), float
        ``b`` per image.

    Returns
    -------
    np.ndarray, shape (N, H, W, 3), uint8
        Rounded to the nearest grey level, saturated to ``[0, 255]``.
    """
    matrices = np.asarray(matrices, np.float64)
    offsets = np.asarray(offsets, np.float64)
    pixels = np.ascontiguousarray(batch, dtype=np.uint8).reshape(-1, 3)
    out = np.empty_like(pixels)
    if pixels.shape[0] == 0:
        return out.reshape(batch.shape)
    kernel = _kernel()
    per_image = batch.shape[1] * batch.shape[2]
    for first, last in _runs(matrices, offsets):
        span = slice(first * per_image, last * per_image)
        kernel(pixels[span], out[span], power_tables(matrices[first], offsets[first]))
    return out.reshape(batch.shape)


def log_affine_torch_math(batch: torch.Tensor, matrices: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """The accelerator form: ``log1p -> baddbmm -> exp`` over the whole batch on ``batch.device``.

    Memory is ``N*H*W*3`` float32 for a moment. Shapes as in :func:`apply_log_affine_numpy`, tensors instead of
    arrays; runs on any device (tests run it on the CPU against the compiled kernel).
    """
    a = matrices.to(device=batch.device, dtype=torch.float32)
    b = offsets.to(device=batch.device, dtype=torch.float32)
    flat = batch.reshape(batch.shape[0], -1, 3)
    y = torch.baddbmm(b[:, None, :], torch.log1p(flat.float()), a)
    return y.clamp_(0.0, _Y_MAX).exp_().sub_(0.5).to(torch.uint8).reshape(batch.shape)


def apply_log_affine_torch(batch: torch.Tensor, matrices: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """:func:`apply_log_affine_numpy` for tensors: on their device, a CPU tensor through the compiled kernel.

    Parameters
    ----------
    batch : torch.Tensor, shape (N, H, W, 3), uint8
    matrices : torch.Tensor, shape (N, 3, 3), float
    offsets : torch.Tensor, shape (N, 3), float

    Returns
    -------
    torch.Tensor, shape (N, H, W, 3), uint8, same device as ``batch``
    """
    if batch.device.type == "cpu":
        out = apply_log_affine_numpy(batch.numpy(), matrices.cpu().numpy(), offsets.cpu().numpy())
        return torch.from_numpy(out)
    return log_affine_torch_math(batch, matrices, offsets)
