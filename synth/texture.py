"""Painting primitives for synthetic H&E slides: periodic noise, polygon fill, nuclei, stain colours.

Everything here works on small numpy blocks in level-0 pixel coordinates, so that a slide of any size
can be painted block by block with bounded memory. Pixel ``(row, col)`` covers ``[col, col + 1) x
[row, row + 1)``; it belongs to a polygon when its centre ``(col + 0.5, row + 0.5)`` does.

Used by :mod:`slidestream.synth`; private, the API may change without notice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely

__all__ = [
    "NucleusKind",
    "PolygonRaster",
    "periodic_noise",
    "periodic_take",
    "render_nuclei",
    "sample_nuclei",
    "stain_lut",
    "with_nucleoli",
]


# --------------------------------------------------------------------------- noise textures


def periodic_noise(
    rng: np.random.Generator,
    size: int,
    wavelength: float,
    *,
    anisotropy: float = 1.0,
    angle: float = 0.0,
    bandwidth: float = 0.6,
    extra: tuple[tuple[float, float, float, float, float], ...] = (),
) -> np.ndarray:
    """Band-pass filtered white noise that tiles seamlessly.

    Filtering in the Fourier domain makes the texture exactly periodic, so it can be sampled at any
    level-0 position with a modulo and the result does not depend on how the slide is cut into blocks.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the white noise.
    size : int
        Period (side of the square texture) in pixels.
    wavelength : float
        Dominant wavelength in pixels.
    anisotropy : float, optional
        > 1 stretches the features along ``angle`` (fibres); 1 gives isotropic blobs.
    angle : float, optional
        Orientation of the stretched features, radians.
    bandwidth : float, optional
        Relative width of the pass band (sigma of a Gaussian on ``log(f / f0)``).
    extra : tuple of (weight, wavelength, anisotropy, angle, bandwidth), optional
        Further pass bands added to the first (weight 1) in the same transform; every band alone
        would have unit variance, so weights are relative amplitudes.

    Returns
    -------
    numpy.ndarray
        ``(size, size)`` float32, zero mean; unit standard deviation when ``extra`` is empty.
    """
    noise = rng.standard_normal((size, size), dtype=np.float32)
    fy = np.fft.fftfreq(size).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(size).astype(np.float32)[None, :]
    # columns of the half spectrum stand for two (conjugate) frequencies, except 0 and Nyquist
    mult = np.full(fx.shape, 2.0, np.float32)
    mult[0, 0] = 1.0
    if size % 2 == 0:
        mult[0, -1] = 1.0
    total = np.zeros((size, fx.shape[1]), np.float32)
    for weight, wl, aniso, ang, bw in ((1.0, wavelength, anisotropy, angle, bandwidth), *extra):
        c, s = np.float32(np.cos(ang)), np.float32(np.sin(ang))
        # frequencies across the fibre direction pass, those along it are damped by the anisotropy
        f2 = (fx * c + fy * s) ** 2 * np.float32(aniso**2) + (fy * c - fx * s) ** 2
        f2[0, 0] = 1e-12
        logf = np.log(f2) * np.float32(0.5) - np.float32(np.log(1.0 / max(wl, 2.0)))
        gain = np.exp(logf * logf * np.float32(-0.5 / bw**2))
        gain[0, 0] = 0.0
        # white noise of unit variance filtered by ``gain`` has variance sum(|gain|^2) / size^2
        power = float((gain * gain * mult).sum()) / size**2
        if power > 0:
            total += gain * np.float32(weight / np.sqrt(power))
    out = np.fft.irfft2(np.fft.rfft2(noise) * total, s=(size, size)).astype(np.float32)
    out -= out.mean()
    if not extra:
        out /= max(float(out.std()), 1e-12)
    return out


def periodic_take(texture: np.ndarray, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Sample a periodic texture on the level-0 block ``[x0, x0 + w) x [y0, y0 + h)``.

    Parameters
    ----------
    texture : numpy.ndarray
        ``(P, Q)`` texture of any dtype, repeated with periods ``P`` rows and ``Q`` columns.
    x0, y0 : int
        Level-0 top-left corner of the block, pixels.
    w, h : int
        Block size, pixels.

    Returns
    -------
    numpy.ndarray
        ``(h, w)`` array of ``texture.dtype``.
    """
    p, q = texture.shape[:2]
    rows = np.take(texture, np.arange(y0, y0 + h) % p, axis=0)
    start = x0 % q
    reps = -(-(start + w) // q)
    if reps > 1:
        rows = np.tile(rows, (1, reps))
    return rows[:, start : start + w]


# --------------------------------------------------------------------------- polygon fill


class PolygonRaster:
    """Even-odd scanline fill of a shapely (multi)polygon, evaluated block by block.

    Holes and several parts are handled by the even-odd rule, so the geometry must not overlap
    itself (a valid Polygon or MultiPolygon).

    Parameters
    ----------
    geometry : shapely.Geometry
        Polygon or MultiPolygon in level-0 pixels; an empty geometry fills nothing.
    """

    def __init__(self, geometry: shapely.Geometry):
        rings = []
        if geometry is not None and not geometry.is_empty:
            for poly in getattr(geometry, "geoms", [geometry]):
                rings.append(np.asarray(poly.exterior.coords))
                rings.extend(np.asarray(r.coords) for r in poly.interiors)
        if rings:
            a = np.concatenate([r[:-1] for r in rings])
            b = np.concatenate([r[1:] for r in rings])
        else:
            a = b = np.zeros((0, 2))
        keep = a[:, 1] != b[:, 1]  # horizontal edges never cross a scanline
        a, b = a[keep], b[keep]
        self._ymin = np.minimum(a[:, 1], b[:, 1])
        self._ymax = np.maximum(a[:, 1], b[:, 1])
        self._x1, self._y1 = a[:, 0], a[:, 1]
        self._slope = (b[:, 0] - a[:, 0]) / (b[:, 1] - a[:, 1])
        self.bounds = geometry.bounds if rings else (0.0, 0.0, 0.0, 0.0)
        self.empty = not rings

    def intersects(self, x0: int, y0: int, w: int, h: int) -> bool:
        """Whether the bounding box of the geometry touches the block."""
        if self.empty:
            return False
        bx0, by0, bx1, by1 = self.bounds
        return bx0 < x0 + w and bx1 > x0 and by0 < y0 + h and by1 > y0

    def mask(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Pixels of the block whose centres lie inside the geometry.

        Parameters
        ----------
        x0, y0 : int
            Level-0 top-left corner of the block, pixels.
        w, h : int
            Block size, pixels.

        Returns
        -------
        numpy.ndarray
            ``(h, w)`` bool.
        """
        out = np.zeros((h, w), dtype=bool)
        if not self.intersects(x0, y0, w, h):
            return out
        # only the part of the block under the bounding box needs filling
        bx0, by0, bx1, by1 = self.bounds
        cx0 = max(0, int(np.floor(bx0)) - x0)
        cy0 = max(0, int(np.floor(by0)) - y0)
        cw = min(w, int(np.ceil(bx1)) - x0 + 1) - cx0
        ch = min(h, int(np.ceil(by1)) - y0 + 1) - cy0
        if cw <= 0 or ch <= 0:
            return out
        sx0, sy0 = x0 + cx0, y0 + cy0
        # row r is crossed by an edge when ymin <= sy0 + r + 0.5 < ymax
        r0 = np.clip(np.ceil(self._ymin - 0.5 - sy0), 0, ch).astype(np.int64)
        r1 = np.clip(np.ceil(self._ymax - 0.5 - sy0), 0, ch).astype(np.int64)
        n = r1 - r0
        sel = np.nonzero(n)[0]
        if sel.size == 0:
            return out
        n = n[sel]
        edge = np.repeat(sel, n)
        offs = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        rows = r0[edge] + offs
        yc = rows + (sy0 + 0.5)
        xc = self._x1[edge] + (yc - self._y1[edge]) * self._slope[edge]
        # the fill toggles at the first pixel whose centre is right of the crossing; crossings
        # right of the block go to a spare column so every row holds an even number of toggles
        cols = np.clip(np.ceil(xc - 0.5 - sx0), 0, cw).astype(np.int64)
        toggles = np.zeros((ch, cw + 1), dtype=np.uint8)
        np.add.at(toggles, (rows, cols), 1)
        toggles &= 1
        # even toggles per row: the running parity over the flattened rows restarts at 0 each row
        inside = np.logical_xor.accumulate(toggles.view(bool).ravel()).reshape(ch, cw + 1)
        out[cy0 : cy0 + ch, cx0 : cx0 + cw] = inside[:, :cw]
        return out


# --------------------------------------------------------------------------- nuclei


@dataclass(frozen=True)
class NucleusKind:
    """Morphology of one kind of nucleus; lengths are semi-axes in micrometres.

    ``hematoxylin`` is the stain concentration (optical density units along the hematoxylin vector);
    ``irregularity`` the amplitude of the 2nd/3rd angular harmonics of the outline; ``vesicular``
    how much paler the centre is than the rim; ``nucleolus`` the probability of a dark nucleolus.
    """

    name: str
    major_um: tuple[float, float]
    aspect: tuple[float, float]
    hematoxylin: tuple[float, float]
    irregularity: float = 0.03
    vesicular: tuple[float, float] = (0.0, 0.0)
    nucleolus: float = 0.0


#: Kinds of nuclei in normal tissue, with their relative frequencies.
NORMAL_KINDS: tuple[tuple[NucleusKind, float], ...] = (
    (NucleusKind("fibroblast", (4.0, 6.5), (0.22, 0.35), (0.85, 1.2)), 0.45),
    (NucleusKind("lymphocyte", (2.4, 3.2), (0.85, 1.0), (1.45, 1.85)), 0.30),
    (NucleusKind("epithelial", (3.4, 4.6), (0.6, 0.85), (0.85, 1.15), 0.05, (0.0, 0.2)), 0.25),
)

#: Tumour nuclei: larger, darker, pleomorphic, with vesicular chromatin and nucleoli.
TUMOR_KIND = NucleusKind("tumor", (4.8, 7.6), (0.6, 0.95), (1.35, 2.0), 0.2, (0.15, 0.4), 0.6)

_NUCLEOLUS_UM = 0.9  # radius
_NUCLEOLUS_H = 0.8  # hematoxylin added on top of the nucleus
_WINDOW_STEP = 8  # window sides are rounded up to this, fewer sizes mean fewer numpy calls


def _window(kind: NucleusKind, mpp: float) -> int:
    """Side of the square window (pixels) that holds any nucleus of ``kind``."""
    grow = 1 / np.sqrt(1 - 2 * kind.irregularity)
    return int(np.ceil((2 * kind.major_um[1] * grow / mpp + 4) / _WINDOW_STEP) * _WINDOW_STEP)


def _windows(half_x: np.ndarray, half_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    step = _WINDOW_STEP
    kx = (np.ceil((2 * half_x + 4) / step) * step).astype(np.int64)
    ky = (np.ceil((2 * half_y + 4) / step) * step).astype(np.int64)
    return kx, ky


def sample_nuclei(
    rng: np.random.Generator,
    kinds: list[NucleusKind],
    kind_index: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    mpp: float,
) -> dict[str, np.ndarray]:
    """Draw the shape parameters of nuclei at given centres.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness; the draws depend only on its state and the number of nuclei.
    kinds : list of NucleusKind
        Morphologies indexed by ``kind_index``.
    kind_index : numpy.ndarray
        ``(N,)`` int, kind of each nucleus.
    x, y : numpy.ndarray
        ``(N,)`` float, level-0 centre of each nucleus, pixels.
    mpp : float
        Level-0 pixel size, micrometres per pixel.

    Returns
    -------
    dict of str to numpy.ndarray
        ``(N,)`` arrays: ``x, y, kind, a, b, cos, sin, c2, c3, hema, ves, bank, kx, ky, nucleolus``
        (semi-axes ``a, b`` and window size ``kx, ky`` in pixels; ``nucleolus`` a bool).
    """
    n = x.size
    u = rng.random((11, n))
    lo = np.array([[k.major_um[0], k.aspect[0], k.hematoxylin[0], k.vesicular[0]] for k in kinds])
    hi = np.array([[k.major_um[1], k.aspect[1], k.hematoxylin[1], k.vesicular[1]] for k in kinds])
    irr = np.array([k.irregularity for k in kinds])[kind_index]
    p_nucleolus = np.array([k.nucleolus for k in kinds])[kind_index]
    lo, hi = lo[kind_index], hi[kind_index]
    a = (lo[:, 0] + u[0] * (hi[:, 0] - lo[:, 0])) / mpp
    b = a * (lo[:, 1] + u[1] * (hi[:, 1] - lo[:, 1]))
    theta = u[2] * np.pi
    c, s = np.cos(theta), np.sin(theta)
    c2 = (2 * u[3] - 1) * irr
    c3 = (2 * u[4] - 1) * irr
    # half extent of the rotated ellipse, grown by what the harmonics can add to the radius:
    # the outline is where r^2 (1 + c2 cos 2phi + c3 cos 3phi) = 1
    grow = 1 / np.sqrt(1 - np.abs(c2) - np.abs(c3))
    kx, ky = _windows(np.hypot(a * c, b * s) * grow, np.hypot(a * s, b * c) * grow)
    return {
        "x": x,
        "y": y,
        "kind": kind_index.astype(np.int8),
        "a": a,
        "b": b,
        "cos": c,
        "sin": s,
        "c2": c2,
        "c3": c3,
        "hema": lo[:, 2] + u[5] * (hi[:, 2] - lo[:, 2]),
        "ves": lo[:, 3] + u[7] * (hi[:, 3] - lo[:, 3]),
        "bank": (u[10] * 2**20).astype(np.int64),
        "kx": kx,
        "ky": ky,
        # a nucleolus sits off centre, at (nu, nv) in units of the semi-axes
        "nucleolus": u[6] < p_nucleolus,
        "nu": (u[8] - 0.5) * 0.6,
        "nv": (u[9] - 0.5) * 0.6,
    }


def with_nucleoli(nuclei: dict[str, np.ndarray], mpp: float) -> dict[str, np.ndarray]:
    """Append each nucleus' nucleolus as a small round extra entry (kind -1).

    A nucleolus covers a few pixels: painting it in its own tiny window costs far less than
    evaluating it over the whole window of its nucleus.
    """
    sel = np.nonzero(nuclei["nucleolus"])[0]
    n = sel.size
    if n == 0:
        return nuclei
    g = {k: v[sel] for k, v in nuclei.items()}
    du, dv = g["nu"] * g["a"], g["nv"] * g["b"]
    r = np.full(n, _NUCLEOLUS_UM / mpp)
    kx, ky = _windows(r, r)
    extra = {
        "x": g["x"] + du * g["cos"] - dv * g["sin"],
        "y": g["y"] + du * g["sin"] + dv * g["cos"],
        "kind": np.full(n, -1, np.int8),
        "a": r,
        "b": r,
        "cos": np.ones(n),
        "sin": np.zeros(n),
        "c2": np.zeros(n),
        "c3": np.zeros(n),
        "hema": np.full(n, _NUCLEOLUS_H),
        "ves": np.zeros(n),
        "bank": g["bank"] + 1,
        "kx": kx,
        "ky": ky,
        "nucleolus": np.zeros(n, bool),
        "nu": np.zeros(n),
        "nv": np.zeros(n),
    }
    return {k: np.concatenate([nuclei[k], extra[k]]) for k in nuclei}


def render_nuclei(
    out: np.ndarray,
    x0: int,
    y0: int,
    nuclei: dict[str, np.ndarray],
    chromatin: np.ndarray,
) -> None:
    """Add the hematoxylin density of nuclei into a block, in place.

    Each nucleus is an ellipse whose squared radius is perturbed by the 2nd and 3rd angular
    harmonics (irregular outlines), with an anti-aliased edge about one pixel wide, a rim darker
    than the centre when vesicular, and a granular chromatin texture.

    Parameters
    ----------
    out : numpy.ndarray
        ``(h, w)`` float32 hematoxylin concentration of the block at level-0 ``(x0, y0)``.
    x0, y0 : int
        Level-0 top-left corner of ``out``, pixels.
    nuclei : dict of str to numpy.ndarray
        As returned by :func:`sample_nuclei` (or :func:`with_nucleoli`), restricted to nuclei
        near the block.
    chromatin : numpy.ndarray
        ``(B, K, K)`` float32 bank of chromatin textures, ``K`` at least the largest window side.
    """
    h, w = out.shape
    f32 = np.float32
    # windows of equal size are computed together, one numpy expression per group
    groups = nuclei["ky"] * 100003 + nuclei["kx"]
    for key in np.unique(groups):
        sel = np.nonzero(groups == key)[0]
        g = {k: v[sel] for k, v in nuclei.items()}
        ky, kx = int(g["ky"][0]), int(g["kx"][0])
        wx = np.floor(g["x"]).astype(np.int64) - kx // 2
        wy = np.floor(g["y"]).astype(np.int64) - ky // 2

        def col(name: str) -> np.ndarray:
            return g[name].astype(f32)[:, None, None]

        dx = (np.arange(kx, dtype=f32) + f32(0.5))[None, None, :] - (g["x"] - wx).astype(f32)[:, None, None]
        dy = (np.arange(ky, dtype=f32) + f32(0.5))[None, :, None] - (g["y"] - wy).astype(f32)[:, None, None]
        ia, ib = 1 / col("a"), 1 / col("b")
        c, s = col("cos"), col("sin")
        u = dx * (c * ia) + dy * (s * ia)
        v = dy * (c * ib) - dx * (s * ib)
        uu = u * u
        vv = v * v
        # inside = 1 - r^2 (1 + c2 cos 2phi + c3 r cos 3phi), written without angles
        inside = uu + vv
        if np.any(g["c2"] != 0) or np.any(g["c3"] != 0):
            inside += col("c2") * (uu - vv)
            vv *= 3
            np.subtract(uu, vv, out=uu)
            uu *= u
            uu *= col("c3")
            inside += uu
        np.subtract(1, inside, out=inside)
        # 1 - r^2 ~ 2 (1 - r) near the edge: scale to about one pixel of ramp
        dens = inside * (f32(0.5) * np.sqrt(col("a") * col("b")))
        dens += f32(0.5)
        np.clip(dens, 0, 1, out=dens)
        if np.any(g["ves"] > 0):
            # vesicular: paler centre, darker rim (outside the nucleus dens is 0 anyway)
            inside *= col("ves")
            np.subtract(1, inside, out=inside)
            dens *= inside
        dens *= col("hema")
        dens *= chromatin[g["bank"] % chromatin.shape[0], :ky, :kx]
        # windows rarely overlap the block edge; clip them with plain slices
        ox = (wx - x0).tolist()
        oy = (wy - y0).tolist()
        for i in range(sel.size):
            ax, ay = ox[i], oy[i]
            sx0, sy0 = max(0, -ax), max(0, -ay)
            sx1, sy1 = min(kx, w - ax), min(ky, h - ay)
            if sx1 <= sx0 or sy1 <= sy0:
                continue
            out[ay + sy0 : ay + sy1, ax + sx0 : ax + sx1] += dens[i, sy0:sy1, sx0:sx1]


# --------------------------------------------------------------------------- colour

#: Stain optical-density vectors (R, G, B), natural log, unit length (Macenko et al. reference).
HEMATOXYLIN = np.array([0.5626, 0.7201, 0.4062])
EOSIN = np.array([0.2159, 0.8012, 0.5581])

H_STEP = 0.02  # hematoxylin concentration per LUT index
E_STEP = 0.01  # eosin concentration per LUT index
N_H = 128
N_E = 128


def stain_lut(
    background: np.ndarray,
    hematoxylin: np.ndarray,
    eosin: np.ndarray,
    region_h: tuple[float, ...],
    region_e: tuple[float, ...],
    region_scale: tuple[float, ...] | None = None,
) -> np.ndarray:
    """Colour look-up table from (region, hematoxylin, eosin) indices to packed RGBA.

    Colours follow Beer-Lambert: ``rgb = background * exp(-(h * H + e * E))``. Nuclei push eosin
    aside, so eosin fades where hematoxylin from nuclei is high.

    Parameters
    ----------
    background : numpy.ndarray
        ``(3,)`` float, RGB of bare glass (0-255).
    hematoxylin, eosin : numpy.ndarray
        ``(3,)`` float, stain optical-density vectors.
    region_h : tuple of float
        Per region (0 glass, 1 tissue, 2 tumour ...) hematoxylin added to every pixel.
    region_e : tuple of float
        Per region factor on the eosin texture (0 on glass).
    region_scale : tuple of float, optional
        Per region factor on the whole optical density (1 by default; about 2 for a tissue fold,
        where two layers of the section lie on top of each other).

    Returns
    -------
    numpy.ndarray
        ``(R * N_H * N_E,)`` uint32; index ``(region << 14) | (h << 7) | e``, bytes R, G, B, 255.
    """
    h = np.arange(N_H) * H_STEP
    e = np.arange(N_E) * E_STEP
    tables = []
    scales = region_scale if region_scale is not None else (1.0,) * len(region_h)
    for rh, re, sc in zip(region_h, region_e, scales, strict=True):
        hh = (h + rh)[:, None, None]
        ee = (e * re)[None, :, None] * (1 - 0.7 * np.clip(h / 1.2, 0, 1))[:, None, None]
        od = (hh * hematoxylin + ee * eosin) * sc
        rgb = np.clip(np.rint(background * np.exp(-od)), 0, 255).astype(np.uint8)
        rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=-1)
        tables.append(rgba.reshape(-1, 4))
    return np.ascontiguousarray(np.concatenate(tables)).view(np.uint32).ravel()
