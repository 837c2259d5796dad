"""Painter of a synthetic sentinel lymph node: cells, stain and artefacts of any level-0 block.

The geometry comes from :mod:`slidestream.synth.lesions`; this module decides what each compartment looks like
and paints it block by block with the primitives of :mod:`slidestream.synth.texture`, like
:class:`slidestream.synth.scene._Scene` (whose interface it shares, so :func:`slidestream.synth.slide.write_scene_tiff`
streams it into a file). Nuclei come per band of 256 rows from a seed derived from the band index, so a pixel's
value never depends on how the slide is cut into blocks; the blur of out-of-focus regions is computed on a block
grown by the blur's reach, for the same reason.

Compartments and their cells (densities in nuclei per mm², before the per-slide stain):

========================  =========================================================  ===========
compartment               cells                                                      density
========================  =========================================================  ===========
capsule, fat septa        fibroblasts, a few lymphocytes                             1 800
cortex and medulla        small lymphocytes (a smooth cellularity field varies it)   ~22 000
follicle mantle           small lymphocytes, packed                                  28 000
germinal centre           centroblasts, centrocytes, tingible-body macrophages       8 000
sinus                     histiocytes (large pale nuclei), lymphocytes               3 000
metastasis                tumour cells by grade (see NodeLook), some lymphocytes     5 200-6 500
========================  =========================================================  ===========

Germinal centres and metastases are both pale nodules of larger cells in the dark cortex; a low-grade (lobular-like)
metastasis is hard to tell from a germinal centre or from sinus histiocytes (:attr:`NodeLook.tumor_grade`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import shapely
from PIL import Image, ImageFilter

from . import texture as tx
from .lesions import Artefacts, Lesion, NodeAnatomy
from .scene import SynthConfig, _apply_pens, draw_band

__all__ = ["NodeLook", "NodeScene"]

_BAND = 256
_TEX_PERIOD = 1024
_LOW_PERIOD = 1000
_N_REGIONS = 6  # glass, stroma, lymphoid, germinal centre, sinus, tumour; folds add a second set
STROMA, LYMPHOID, GERMINAL, SINUS, TUMOR, MANTLE = 1, 2, 3, 4, 5, 6  # MANTLE is painted as LYMPHOID


def _lerp(a, b, t: float):
    return tuple(x + (y - x) * t for x, y in zip(a, b, strict=True)) if isinstance(a, tuple) else a + (b - a) * t


@dataclass
class NodeLook:
    """Stain and cell appearance of one slide.

    Parameters
    ----------
    tumor_grade : float
        0-1: 0 paints a low-grade, lobular-like carcinoma (small, fairly uniform, discohesive cells mixed with
        lymphocytes, pale: it looks like germinal-centre cells and sinus histiocytes), 1 a high-grade ductal one
        (large pleomorphic vesicular nuclei with nucleoli, cohesive, amphophilic cytoplasm).
    hematoxylin, eosin : tuple of float
        Stain optical-density vectors (R, G, B), any length (normalised).
    glass : tuple of float
        RGB of bare glass, 0-255.
    h_gain, e_gain : float
        Stain intensity factors (section thickness, staining time).
    """

    tumor_grade: float = 0.7
    hematoxylin: tuple[float, float, float] = tuple(tx.HEMATOXYLIN)
    eosin: tuple[float, float, float] = tuple(tx.EOSIN)
    glass: tuple[float, float, float] = (240.0, 240.0, 242.0)
    h_gain: float = 1.0
    e_gain: float = 1.0

    def kinds(self) -> tuple[list[tx.NucleusKind], dict[int, list[tuple[int, float]]]]:
        """Nucleus kinds and, per compartment, ``(kind index, weight)`` pairs."""
        g = float(self.tumor_grade)
        fibro = tx.NORMAL_KINDS[0][0]
        lympho = tx.NucleusKind("lymphocyte", (2.8, 3.5), (0.85, 1.0), (1.45, 1.85))
        histio = tx.NucleusKind("histiocyte", (3.8, 5.4), (0.55, 0.85), (0.55, 0.85), 0.08, (0.2, 0.45), 0.15)
        centrocyte = tx.NucleusKind("centrocyte", (3.0, 4.0), (0.6, 0.85), (1.15, 1.55), 0.15, (0.0, 0.1), 0.0)
        centroblast = tx.NucleusKind("centroblast", (4.2, 5.6), (0.75, 0.95), (1.0, 1.4), 0.05, (0.2, 0.4), 0.5)
        macrophage = tx.NucleusKind("tingible-body macrophage", (4.5, 6.0), (0.6, 0.9), (0.45, 0.7), 0.05,
                                    (0.3, 0.5), 0.2)
        tumour = tx.NucleusKind("tumor", _lerp((3.5, 4.6), (5.0, 8.0), g), (0.6, 0.95), _lerp((1.05, 1.45), (1.35, 2.0), g),
                                _lerp(0.06, 0.22, g), _lerp((0.05, 0.2), (0.15, 0.4), g), _lerp(0.2, 0.7, g))
        kinds = [fibro, lympho, histio, centrocyte, centroblast, macrophage, tumour]
        tils = _lerp(0.3, 0.06, g)  # lymphocytes among the tumour cells
        mix = {
            STROMA: [(0, 0.8), (1, 0.2)],
            LYMPHOID: [(1, 0.9), (0, 0.03), (2, 0.07)],
            MANTLE: [(1, 0.97), (0, 0.03)],
            GERMINAL: [(4, 0.45), (3, 0.33), (1, 0.15), (5, 0.07)],
            SINUS: [(2, 0.55), (1, 0.45)],
            TUMOR: [(6, 1 - tils), (1, tils)],
        }
        return kinds, mix

    def densities(self) -> dict[int, float]:
        """Nuclei per mm² of each compartment (lymphoid before its cellularity field)."""
        return {STROMA: 1800.0, LYMPHOID: 22000.0, MANTLE: 28000.0, GERMINAL: 8000.0, SINUS: 3000.0,
                TUMOR: _lerp(6500.0, 5200.0, float(self.tumor_grade))}

    def regions(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Hematoxylin added to every pixel and eosin factor, per region code 0-5."""
        g = float(self.tumor_grade)
        h = (0.0, 0.04, 0.15, 0.07, 0.03, _lerp(0.07, 0.14, g))
        e = (0.0, 1.0, 0.28, 0.62, 0.6, _lerp(0.6, 0.8, g))
        return tuple(v * self.h_gain for v in h), tuple(v * self.e_gain for v in e)


class NodeScene:
    """Procedural lymph node slide; paints any level-0 block on demand (interface of ``_Scene``).

    Parameters
    ----------
    cfg : SynthConfig
        Size, pixel size, seed and file parameters (its tissue and tumour fields are not used).
    anatomy : NodeAnatomy
    lesions : list of Lesion
    artefacts : Artefacts
    look : NodeLook
    """

    def __init__(self, cfg: SynthConfig, anatomy: NodeAnatomy, lesions: list[Lesion], artefacts: Artefacts,
                 look: NodeLook):
        self.cfg = cfg
        seed = int(cfg.seed)
        um = 1.0 / cfg.mpp
        self.anatomy, self.lesions, self.artefacts, self.look = anatomy, lesions, artefacts, look
        self.tissue = anatomy.tissue
        self.tumors = [les.geometry for les in lesions]
        self.pens, self.pen_colors = list(artefacts.pens), list(artefacts.pen_colors)
        tumour = shapely.union_all(self.tumors) if self.tumors else None
        inner = anatomy.node.difference(anatomy.capsule)
        follicles = shapely.union_all(anatomy.follicles) if anatomy.follicles else None
        gcs = shapely.union_all(anatomy.germinal_centres) if anatomy.germinal_centres else None
        # compartments in the order they win where they overlap
        self._zones = [(c, g) for c, g in ((TUMOR, tumour), (GERMINAL, gcs), (SINUS, anatomy.sinus),
                                          (MANTLE, follicles), (LYMPHOID, inner), (STROMA, self.tissue))
                       if g is not None and not g.is_empty]
        for _, g in self._zones:
            shapely.prepare(g)
        self._rasters = [(LYMPHOID if c == MANTLE else c, tx.PolygonRaster(_polygonal(g)))
                         for c, g in reversed(self._zones)]
        folds = shapely.union_all(artefacts.folds) if artefacts.folds else None
        self._fold_r = tx.PolygonRaster(_polygonal(folds)) if folds is not None else None
        self._blur = [(tx.PolygonRaster(z), s * um) for z, s in zip(artefacts.blurs, artefacts.blur_sigma_um,
                                                                    strict=True)]
        self._bubbles = [(tx.PolygonRaster(b.difference(b.buffer(-6 * um))), tx.PolygonRaster(b.buffer(-6 * um)))
                         for b in artefacts.bubbles]
        self._pen_r = [tx.PolygonRaster(p) for p in self.pens]

        rng = np.random.default_rng([seed, 2])
        ang = rng.uniform(0, np.pi)
        stroma = tx.periodic_noise(
            rng, _TEX_PERIOD, 5 * um, anisotropy=5, angle=ang,
            extra=((0.8, 4 * um, 4, ang + rng.uniform(0.6, 1.2), 0.6), (0.6, 25 * um, 1, 0, 0.8)),
        )
        self._etex = np.clip(np.rint(0.42 * (0.95 + 0.16 * stroma) / tx.E_STEP), 5, 100).astype(np.uint32)
        low = tx.periodic_noise(rng, _LOW_PERIOD, 60 * um, bandwidth=0.7)
        self._cellularity = np.clip(1.0 + 0.3 * low, 0.55, 1.5).astype(np.float32)
        self._ltex = np.clip(np.rint((0.5 + 0.3 * low) * 27), 0, 27).astype(np.uint32)
        self._ink = np.roll(low, (_LOW_PERIOD // 3, _LOW_PERIOD // 2), (0, 1))

        self._kinds, mix = look.kinds()
        self._mix = {c: (np.array([k for k, _ in m]), np.cumsum([w for _, w in m]) / sum(w for _, w in m))
                     for c, m in mix.items()}
        kmax = max(tx._window(k, cfg.mpp) for k in self._kinds)
        self.margin = kmax
        grain = tx.periodic_noise(rng, 2 ** math.ceil(math.log2(kmax)) * 2, 1.5 * um, bandwidth=0.9)
        bank = [np.roll(grain, (rng.integers(grain.shape[0]), rng.integers(grain.shape[1])), (0, 1))[:kmax, :kmax]
                for _ in range(16)]
        self._chromatin = np.clip(0.85 + 0.3 * np.stack(bank), 0.3, 1.5).astype(np.float32)

        hv = np.abs(np.asarray(look.hematoxylin, float))
        ev = np.abs(np.asarray(look.eosin, float))
        hv, ev = hv / np.linalg.norm(hv), ev / np.linalg.norm(ev)
        self.background = np.clip(np.rint(np.asarray(look.glass, float)), 0, 255).astype(np.uint8)
        rh, re = look.regions()
        self._lut = tx.stain_lut(self.background.astype(float), hv, ev, region_h=rh + rh, region_e=re + re,
                                 region_scale=(1.0,) * _N_REGIONS + (1.9,) * _N_REGIONS)

        px2_per_mm2 = (1000.0 * um) ** 2
        dens = look.densities()
        self._density = {c: v / px2_per_mm2 for c, v in dens.items()}
        self._d_max = max(self._density[c] * (float(self._cellularity.max()) if c == LYMPHOID else 1.0)
                          for c in self._density)
        self._bands: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        # PIL's Gaussian is three box blurs: its reach is well under 4 sigma
        self._reach = max((int(math.ceil(4 * s)) + 2 for _, s in self._blur), default=0)
        content = [self.tissue.buffer(self.margin + self._reach)] + list(self.pens) + list(artefacts.bubbles)
        self.content = shapely.union_all(content)
        shapely.prepare(self.content)

    # -- nuclei -------------------------------------------------------------------------------

    def _band_nuclei(self, band: int) -> dict[str, np.ndarray]:
        hit = self._bands.get(band)
        if hit is not None:
            self._bands.move_to_end(band)
            return hit
        cfg = self.cfg
        rng, n, x, y, accept, pick = draw_band(cfg.seed, band, self._d_max, cfg.width)
        comp = np.zeros(n, np.int8)
        for c, g in reversed(self._zones):  # the first zone listed wins
            if n:
                comp[shapely.contains_xy(g, x, y)] = c
        cell = self._cellularity[y.astype(np.int64) % _LOW_PERIOD, x.astype(np.int64) % _LOW_PERIOD]
        density = np.zeros(n)
        kind = np.zeros(n, np.int64)
        for c, (idx, cum) in self._mix.items():
            sel = comp == c
            if not sel.any():
                continue
            density[sel] = self._density[c] * (cell[sel] if c == LYMPHOID else 1.0)
            kind[sel] = idx[np.minimum(np.searchsorted(cum, pick[sel], side="right"), idx.size - 1)]
        nuclei = tx.sample_nuclei(rng, self._kinds, kind, x, y, cfg.mpp)
        keep = accept < density
        nuclei = {k: v[keep] for k, v in nuclei.items()}
        nuclei["hema"] = nuclei["hema"] * self.look.h_gain
        nuclei = tx.with_nucleoli(nuclei, cfg.mpp)
        self._bands[band] = nuclei
        if len(self._bands) > 8:
            self._bands.popitem(last=False)
        return nuclei

    def _nuclei_near(self, x0: int, y0: int, w: int, h: int) -> dict[str, np.ndarray]:
        m = self.margin
        b0 = max(0, (y0 - m) // _BAND)
        b1 = max(b0, (y0 + h + m) // _BAND)
        parts = [self._band_nuclei(b) for b in range(b0, b1 + 1)]
        nuc = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        x, y = nuc["x"], nuc["y"]
        sel = (x > x0 - m) & (x < x0 + w + m) & (y > y0 - m) & (y < y0 + h + m)
        return {k: v[sel] for k, v in nuc.items()}

    # -- painting ------------------------------------------------------------------------------

    def _paint_base(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        region = np.zeros((h, w), np.uint32)
        for code, raster in self._rasters:  # later rasters overwrite earlier ones
            if raster.intersects(x0, y0, w, h):
                region[raster.mask(x0, y0, w, h)] = code
        if self._fold_r is not None and self._fold_r.intersects(x0, y0, w, h):
            fold = self._fold_r.mask(x0, y0, w, h) & (region > 0)
            region[fold] += _N_REGIONS
        eosin = tx.periodic_take(self._etex, x0, y0, w, h) + tx.periodic_take(self._ltex, x0, y0, w, h)
        index = (region << 14) | eosin
        nuclei = self._nuclei_near(x0, y0, w, h)
        if nuclei["x"].size:
            hema = np.zeros((h, w), np.float32)
            tx.render_nuclei(hema, x0, y0, nuclei, self._chromatin)
            hema *= 1.0 / tx.H_STEP
            hema += 0.5
            np.minimum(hema, tx.N_H - 1, out=hema)
            index |= hema.astype(np.uint32) << 7
        return np.take(self._lut, index).view(np.uint8).reshape(h, w, 4)

    def paint(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Paint a level-0 block.

        Returns
        -------
        numpy.ndarray
            ``(h, w, 4)`` uint8 RGBA (alpha 255).
        """
        blurs = [(r, s) for r, s in self._blur if r.intersects(x0 - self._reach, y0 - self._reach,
                                                                 w + 2 * self._reach, h + 2 * self._reach)]
        if not blurs:
            rgba = self._paint_base(x0, y0, w, h)
        else:
            # one block grown by the blur's reach, so that a pixel never depends on where the block starts
            m = self._reach
            big = self._paint_base(x0 - m, y0 - m, w + 2 * m, h + 2 * m)
            rgba = big[m:-m, m:-m].copy()
            for raster, sigma in blurs:
                # only the zone's bounding box (grown by the reach) can change
                bx0, by0, bx1, by1 = raster.bounds
                ox0, ox1 = max(0, int(bx0) - m - x0), min(w, int(math.ceil(bx1)) + m - x0)
                oy0, oy1 = max(0, int(by0) - m - y0), min(h, int(math.ceil(by1)) + m - y0)
                if ox1 <= ox0 or oy1 <= oy0:
                    continue
                sw, sh = ox1 - ox0 + 2 * m, oy1 - oy0 + 2 * m
                mask = raster.mask(x0 + ox0 - m, y0 + oy0 - m, sw, sh)
                if not mask.any():
                    continue
                blur = ImageFilter.GaussianBlur(sigma)
                alpha = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).filter(blur), np.float32)
                alpha = alpha[m:-m, m:-m, None] * np.float32(1 / 255)
                sub = np.ascontiguousarray(big[oy0 : oy0 + sh, ox0 : ox0 + sw, :3])
                soft = np.asarray(Image.fromarray(sub).filter(blur), np.float32)[m:-m, m:-m]
                out = rgba[oy0:oy1, ox0:ox1, :3]
                out[:] = np.rint(out * (1 - alpha) + soft * alpha).astype(np.uint8)
        for rim, inside in self._bubbles:
            if inside.intersects(x0, y0, w, h):
                mask = inside.mask(x0, y0, w, h)
                px = rgba[mask, :3].astype(np.float32)
                rgba[mask, :3] = np.rint(px * 0.8 + self.background * 0.2 + 4).clip(0, 255).astype(np.uint8)
            if rim.intersects(x0, y0, w, h):
                mask = rim.mask(x0, y0, w, h)
                rgba[mask, :3] = np.rint(rgba[mask, :3] * 0.45 + 20).astype(np.uint8)
        _apply_pens(rgba, x0, y0, self._pen_r, self.pen_colors, self._ink)
        return rgba

    def is_glass(self, x0: np.ndarray, y0: np.ndarray, w: int, h: int) -> np.ndarray:
        """Which blocks (vectorised over top-left corners) hold nothing but glass."""
        return ~shapely.intersects(self.content, shapely.box(x0, y0, x0 + w, y0 + h))


def _polygonal(geom):
    """Polygon parts of a geometry as one (Multi)Polygon, what :class:`texture.PolygonRaster` fills."""
    parts = [p for p in shapely.get_parts(geom) if p.geom_type in ("Polygon", "MultiPolygon") and not p.is_empty]
    return shapely.union_all(parts) if parts else shapely.Polygon()
