"""Reinhard's per-pixel work on the CPU: sRGB -> L*a*b* -> per-channel affine -> sRGB, compiled (numba).

The numpy form (:func:`slidestream.stain._color.rgb_to_lab` / ``lab_to_rgb``) spends most of its time in ``pow``
and ``cbrt`` over float temporaries. Here one loop over pixels does without either:

- sRGB decoding of a uint8 channel is a 256-entry table (exact);
- the cube root of the normalised XYZ values starts from a 1024-entry table and takes two Newton steps (to
  float32 precision over the range of sRGB colours);
- sRGB encoding plus rounding to uint8 is a search among the 255 linear-light thresholds where the rounded
  grey level changes, started from a 4096-entry bucket table (two comparisons): ``rint(255 * encode(linear))``
  up to float32 rounding near a threshold.

Everything runs in float32 with fast-math flags, so the tables hold no infinities.

Results agree with the numpy/torch formulas within one grey level (float rounding near the thresholds).
"""

from __future__ import annotations

import numpy as np

from ._color import (
    D65_WHITE,
    LAB_EPSILON,
    LAB_F_EPSILON,
    LAB_KAPPA,
    LAB_T0,
    RGB_FROM_XYZ,
    XYZ_FROM_RGB,
    srgb_to_linear,
)

_CBRT_STEPS = 1024
_CBRT_MAX = 1.25  # normalised X, Y, Z of sRGB colours stay below ~1.09; the table index is clamped beyond
_BUCKETS = 4096


def _tables() -> tuple[np.ndarray, ...]:
    decode = srgb_to_linear(np.arange(256) / 255.0)
    # thresholds[v] = the linear value from which rint(255 * encode(linear)) is at least v (v = 1..255);
    # thresholds[0] and thresholds[256] (far below and above any value) bound the search.
    thresholds = np.empty(257)
    thresholds[0], thresholds[256] = -1e30, 1e30  # finite: the compiled loop runs with fast-math flags
    thresholds[1:256] = srgb_to_linear((np.arange(1, 256) - 0.5) / 255.0)
    # bucket[k]: the grey level of linear value k / (_BUCKETS - 1), the search's start
    grid = np.arange(_BUCKETS) / (_BUCKETS - 1)
    bucket = (np.searchsorted(thresholds[1:256], grid, side="right")).astype(np.int32)
    cbrt = np.cbrt(np.arange(_CBRT_STEPS + 1) * (_CBRT_MAX / _CBRT_STEPS))
    cbrt[0] = cbrt[1]  # a start for Newton's steps must not be 0 (inputs that low take the linear branch anyway)
    to_xyz = XYZ_FROM_RGB / D65_WHITE[:, None]  # rows: X/Xn, Y/Yn, Z/Zn from linear RGB
    to_rgb = RGB_FROM_XYZ * D65_WHITE[None, :]
    f32 = np.float32
    return decode.astype(f32), thresholds.astype(f32), bucket, cbrt.astype(f32), to_xyz.astype(f32), to_rgb.astype(f32)


_TABLES = None
_compiled = None


def _kernel():
    global _compiled, _TABLES
    if _compiled is None:
        import numba

        f32 = np.float32
        eps, kappa, t0, f_eps = f32(LAB_EPSILON), f32(LAB_KAPPA), f32(LAB_T0), f32(LAB_F_EPSILON)
        inv_kappa, third, cbrt_scale, bucket_scale = f32(1 / LAB_KAPPA), f32(1 / 3), f32(_CBRT_STEPS / _CBRT_MAX), \
            f32(_BUCKETS - 1)
        c116, c16, c500, c200 = f32(116.0), f32(16.0), f32(500.0), f32(200.0)
        inv116, inv500, inv200, two, half, zero = f32(1 / 116), f32(1 / 500), f32(1 / 200), f32(2.0), f32(0.5), f32(0)

        @numba.njit(cache=True, nogil=True, fastmath=True, error_model="numpy", inline="always")
        def f(t, cbrt_table):  # pragma: no cover - compiled
            k = min(max(int(t * cbrt_scale + half), 0), _CBRT_STEPS)
            y = cbrt_table[k]
            y = (two * y + t / (y * y)) * third
            y = (two * y + t / (y * y)) * third
            return y if t > eps else kappa * t + t0

        @numba.njit(cache=True, nogil=True, fastmath=True, error_model="numpy", inline="always")
        def finv(t):  # pragma: no cover - compiled
            return t * t * t if t > f_eps else (t - t0) * inv_kappa

        @numba.njit(cache=True, nogil=True, fastmath=True, error_model="numpy", inline="always")
        def encode(lin, thresholds, bucket):  # pragma: no cover - compiled
            k = min(max(int(lin * bucket_scale), 0), _BUCKETS - 1)
            v = bucket[k]
            # a bucket is narrower than the gap between two thresholds: at most one step up (and one down for
            # the rounding of the bucket index)
            v += np.int32(lin >= thresholds[v + 1])
            v -= np.int32(lin < thresholds[v])
            return v

        @numba.njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
        def reinhard(pixels, out, scale, offset, decode, thresholds, bucket, cbrt_table, m1, m2):  # pragma: no cover
            for i in range(pixels.shape[0]):
                r, g, b = decode[pixels[i, 0]], decode[pixels[i, 1]], decode[pixels[i, 2]]
                fx = f(m1[0, 0] * r + m1[0, 1] * g + m1[0, 2] * b, cbrt_table)
                fy = f(m1[1, 0] * r + m1[1, 1] * g + m1[1, 2] * b, cbrt_table)
                fz = f(m1[2, 0] * r + m1[2, 1] * g + m1[2, 2] * b, cbrt_table)
                lum = (c116 * fy - c16) * scale[0] + offset[0]
                a = c500 * (fx - fy) * scale[1] + offset[1]
                bb = c200 * (fy - fz) * scale[2] + offset[2]
                fy2 = (lum + c16) * inv116
                x = finv(fy2 + a * inv500)
                y = finv(fy2)
                z = finv(max(fy2 - bb * inv200, zero))
                out[i, 0] = encode(m2[0, 0] * x + m2[0, 1] * y + m2[0, 2] * z, thresholds, bucket)
                out[i, 1] = encode(m2[1, 0] * x + m2[1, 1] * y + m2[1, 2] * z, thresholds, bucket)
                out[i, 2] = encode(m2[2, 0] * x + m2[2, 1] * y + m2[2, 2] * z, thresholds, bucket)

        _TABLES = _tables()
        _compiled = reinhard
    return _compiled


def reinhard_numpy(image: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Reinhard's map of one image: ``lab_out = lab * scale + offset`` in CIE L*a*b*, back to sRGB uint8.

    Parameters
    ----------
    image : np.ndarray, shape (..., 3), uint8
    scale, offset : np.ndarray, shape (3,), float
        Per-channel affine map of L*, a*, b*.

    Returns
    -------
    np.ndarray, same shape, uint8
        Rounded to the nearest grey level, out-of-gamut colours clipped (as ``lab_to_rgb``).
    """
    kernel = _kernel()
    pixels = np.ascontiguousarray(image, dtype=np.uint8).reshape(-1, 3)
    out = np.empty_like(pixels)
    if pixels.shape[0]:
        kernel(pixels, out, np.asarray(scale, np.float32), np.asarray(offset, np.float32), *_TABLES)
    return out.reshape(image.shape)
