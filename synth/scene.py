"""What a synthetic H&E slide shows: its configuration, its geometry and the painter of any region of it.

A slide is described procedurally (tissue blobs, tumour regions, pen strokes as shapely polygons in level-0 pixels;
nuclei drawn per horizontal band from a seed derived from the band index; periodic stroma textures), so any region
can be painted on its own and level 0 is never held in memory (:mod:`slidestream.synth.slide` writes the file).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import LineString, MultiPolygon, Polygon, box

from ..errors import ConfigError
from . import texture as tx

__all__ = ["SynthConfig", "render_synthetic_region"]

_BAND = 256  # rows of level 0 whose nuclei come from one seed; fixed so results don't depend on tiling
_TEX_PERIOD = 1024  # stroma texture period, pixels
_LOW_PERIOD = 1000  # second, coprime-ish period so the sum of both textures hardly repeats
_PEN_INKS = {  # transmission of marker ink per RGB channel
    "blue": (0.22, 0.36, 0.80),
    "green": (0.22, 0.55, 0.33),
    "black": (0.13, 0.13, 0.15),
}


def draw_band(seed: int, band: int, d_max: float, width: int):
    """Candidate nuclei of one band of ``_BAND`` level-0 rows, from their own seed (so results do not depend on
    tiling): ``(rng, n, x, y, accept, pick)``; ``x``, ``y`` are level-0 px, ``accept`` uniform in ``[0, d_max)``
    for thinning to a density, ``pick`` uniform in ``[0, 1)`` for choosing a kind; ``rng`` goes on drawing."""
    rng = np.random.default_rng([int(seed), 3, band])
    n = rng.poisson(d_max * _BAND * width)
    x = rng.random(n) * width
    y = (band + rng.random(n)) * _BAND
    accept = rng.random(n) * d_max
    pick = rng.random(n)
    return rng, n, x, y, accept, pick


@dataclass
class SynthConfig:
    """What to paint. Sizes in level-0 pixels unless the name says µm.

    Parameters
    ----------
    width, height : int
        Level-0 size, pixels.
    mpp : float
        Level-0 pixel size, µm per pixel (0.25 is 40x, 0.5 is 20x).
    tile_size : int
        TIFF tile side, pixels; a multiple of 16 (JPEG 4:2:0 blocks).
    jpeg_quality : int
        JPEG quality, 1-100.
    n_tissue : int
        Number of tissue blobs (they may touch and merge).
    tumor : bool
        Paint tumour regions inside the tissue.
    n_tumors : int
        Number of tumour regions when ``tumor`` is set (fewer when the tissue is too small).
    pen_marks : bool
        Draw marker strokes partly over tissue and glass.
    n_pen : int
        Number of marker strokes when ``pen_marks`` is set.
    seed : int
        Everything (shapes, nuclei, colours) follows from it; same seed, same file bytes.
    tumor_diameter_um : tuple of float
        Range of tumour diameters, µm; capped to fit the tissue blob.
    nuclei_per_mm2 : float
        Mean nucleus density in normal tissue (varies ±60 % with a smooth cellularity field).
    tumor_nuclei_per_mm2 : float
        Nucleus density in tumour regions.
    holes : bool
        Punch small empty lumina/fat vacuoles into the tissue (they are holes of the tissue polygon).
    stain_jitter : float
        Random per-slide change of stain vectors and intensities (0 = the reference stain).
    objective_power : float, optional
        ``AppMag`` to record; default ``10 / mpp`` (40 at 0.25 µm/px).
    level_downsample : int
        Factor between pyramid levels, 2 or 4 (Aperio uses 4).
    min_level_size : int
        Reduced levels are added while their longer side is at least this many pixels.
    thumbnail_size : int
        Longer side of the thumbnail page, pixels (the page is always written: tifffile and
        tiffslide take the second page of an SVS as the thumbnail).
    bigtiff : bool, optional
        Force BigTIFF on or off; default: on when the raw level 0 exceeds 2 GiB.
    layout : {"aperio", "generic"}
        File layout: an Aperio SVS (ImageDescription with ``AppMag`` and ``MPP``, a thumbnail page),
        or a plain tiled pyramidal TIFF whose pixel size is only in the resolution tags, as the
        CAMELYON16 files (OpenSlide reports vendor ``generic-tiff``).
    """

    width: int = 8192
    height: int = 8192
    mpp: float = 0.25
    tile_size: int = 256
    jpeg_quality: int = 80
    n_tissue: int = 2
    tumor: bool = False
    n_tumors: int = 2
    pen_marks: bool = False
    n_pen: int = 2
    seed: int = 0
    tumor_diameter_um: tuple[float, float] = (250.0, 600.0)
    nuclei_per_mm2: float = 2500.0
    tumor_nuclei_per_mm2: float = 7000.0
    holes: bool = True
    stain_jitter: float = 0.05
    objective_power: float | None = None
    level_downsample: int = 4
    min_level_size: int = 512
    thumbnail_size: int = 1024
    bigtiff: bool | None = None
    layout: str = "aperio"

    def validate(self) -> None:
        """Raise :class:`~slidestream.errors.ConfigError` naming the first bad value."""
        if self.width < 1 or self.height < 1:
            raise ConfigError(f"width and height must be positive, got {self.width}x{self.height}")
        if self.tile_size < 16 or self.tile_size % 16:
            raise ConfigError(f"tile_size must be a positive multiple of 16 (JPEG blocks), got {self.tile_size}")
        if not self.mpp > 0:
            raise ConfigError(f"mpp must be > 0 µm/px, got {self.mpp} (0.25 is 40x, 0.5 is 20x)")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be 1-100, got {self.jpeg_quality}")
        if self.level_downsample not in (2, 4):
            raise ConfigError(f"level_downsample must be 2 or 4, got {self.level_downsample}")
        if self.n_tissue < 1:
            raise ConfigError(f"n_tissue must be >= 1, got {self.n_tissue}")
        if self.tumor and self.n_tumors < 1:
            raise ConfigError(f"n_tumors must be >= 1 when tumor=True, got {self.n_tumors}")
        if self.pen_marks and self.n_pen < 1:
            raise ConfigError(f"n_pen must be >= 1 when pen_marks=True, got {self.n_pen}")
        lo, hi = self.tumor_diameter_um
        if not 0 < lo <= hi:
            raise ConfigError(f"tumor_diameter_um must be (min, max) with 0 < min <= max, got {self.tumor_diameter_um}")
        if self.nuclei_per_mm2 < 0 or self.tumor_nuclei_per_mm2 < 0:
            raise ConfigError("nuclei_per_mm2 and tumor_nuclei_per_mm2 must be >= 0")
        if self.thumbnail_size < 16 or self.min_level_size < 1:
            raise ConfigError("thumbnail_size must be >= 16 and min_level_size >= 1")
        if self.layout not in ("aperio", "generic"):
            raise ConfigError(f"layout must be 'aperio' or 'generic', got {self.layout!r}")

    @property
    def magnification(self) -> float:
        """Objective power recorded as ``AppMag``."""
        return self.objective_power if self.objective_power is not None else round(10.0 / self.mpp, 3)



def _blob(
    rng: np.random.Generator,
    cx: float,
    cy: float,
    radius: float,
    *,
    aspect: float = 1.0,
    angle: float = 0.0,
    roughness: float = 0.12,
    n_vertices: int = 192,
) -> Polygon:
    """Smooth random star-shaped polygon (radius a sum of angular harmonics), valid by construction."""
    theta = np.linspace(0, 2 * np.pi, n_vertices, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 10):
        r += roughness * rng.standard_normal() / k**1.2 * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    r = radius * np.clip(r, 0.35, None)
    x, y = r * np.cos(theta) * aspect, r * np.sin(theta)
    c, s = np.cos(angle), np.sin(angle)
    return Polygon(np.column_stack([cx + x * c - y * s, cy + x * s + y * c]))


def _largest(geom) -> Polygon | None:
    """Largest polygon of a geometry (None when it has no area)."""
    if geom is None or geom.is_empty:
        return None
    parts = [g for g in getattr(geom, "geoms", [geom]) if isinstance(g, Polygon) and g.area > 0]
    return max(parts, key=lambda g: g.area) if parts else None


def _snap(poly: Polygon) -> Polygon:
    """Round vertices to 1/100 pixel so that the files and the returned geometry agree exactly."""
    out = _largest(shapely.set_precision(poly, 0.01))
    return out if out is not None else poly


def _point_in(rng: np.random.Generator, region, tries: int = 200) -> tuple[float, float] | None:
    """Uniform random point inside ``region`` by rejection, None when it is (nearly) empty."""
    if region is None or region.is_empty:
        return None
    x0, y0, x1, y1 = region.bounds
    shapely.prepare(region)
    for _ in range(max(1, tries // 50)):
        xs = rng.uniform(x0, x1, 50)
        ys = rng.uniform(y0, y1, 50)
        hit = np.nonzero(shapely.contains_xy(region, xs, ys))[0]
        if hit.size:
            return float(xs[hit[0]]), float(ys[hit[0]])
    return None


def _pen_strokes(rng: np.random.Generator, blobs: list[Polygon], w: int, h: int,
                 n: int) -> tuple[list[Polygon], list[str]]:
    """``n`` marker strokes (cubic Bezier bands) that cross the outline of one of ``blobs``, and their inks."""
    pens: list[Polygon] = []
    pen_colors: list[str] = []
    slide = box(0, 0, w, h)
    side = min(w, h)
    for _ in range(n):
        blob = blobs[rng.integers(len(blobs))]
        anchor = blob.exterior.interpolate(rng.uniform(), normalized=True)
        ang = rng.uniform(0, 2 * np.pi)
        d = np.array([math.cos(ang), math.sin(ang)])
        perp = np.array([-d[1], d[0]])
        length = rng.uniform(0.25, 0.45) * side
        start = np.array([anchor.x, anchor.y]) - d * length * rng.uniform(0.3, 0.7)
        ctrl = [start, start + d * length / 3 + perp * rng.normal(0, 0.12) * length,
                start + 2 * d * length / 3 + perp * rng.normal(0, 0.12) * length, start + d * length]
        t = np.linspace(0, 1, 64)[:, None]
        curve = ((1 - t) ** 3 * ctrl[0] + 3 * (1 - t) ** 2 * t * ctrl[1]
                 + 3 * (1 - t) * t**2 * ctrl[2] + t**3 * ctrl[3])
        width = max(8.0, rng.uniform(0.012, 0.025) * side)
        stroke = _largest(LineString(curve).buffer(width / 2, quad_segs=8).intersection(slide))
        if stroke is not None:
            pens.append(_snap(stroke))
            pen_colors.append(str(rng.choice(list(_PEN_INKS))))
    return pens, pen_colors


def _make_geometry(cfg: SynthConfig, rng: np.random.Generator):
    """Tissue blobs, tumours, holes and pen strokes of one slide, in level-0 pixels."""
    w, h = cfg.width, cfg.height
    frame = box(0.02 * w, 0.02 * h, 0.98 * w, 0.98 * h)
    n = cfg.n_tissue
    cols = max(1, min(n, round(math.sqrt(n * w / h))))
    rows = math.ceil(n / cols)
    cw, ch = w / cols, h / rows
    cells = rng.permutation(rows * cols)[:n]
    blobs: list[Polygon] = []
    for cell in cells:
        r_, c_ = divmod(int(cell), cols)
        cx = (c_ + 0.5 + rng.uniform(-0.1, 0.1)) * cw
        cy = (r_ + 0.5 + rng.uniform(-0.1, 0.1)) * ch
        aspect = rng.uniform(1.0, 1.5)
        radius = 0.45 * min(cw, ch) * rng.uniform(0.8, 1.0) / math.sqrt(aspect)
        blob = _blob(rng, cx, cy, radius, aspect=aspect, angle=rng.uniform(0, np.pi))
        blob = _largest(blob.intersection(frame))
        if blob is not None:
            blobs.append(blob)

    um = 1.0 / cfg.mpp  # pixels per µm
    tumors: list[Polygon] = []
    if cfg.tumor:
        areas = np.array([b.area for b in blobs])
        for _ in range(cfg.n_tumors):
            for attempt in range(30):
                bi = rng.choice(len(blobs), p=areas / areas.sum())
                blob = blobs[bi]
                inradius = math.sqrt(blob.area / math.pi)
                radius = min(rng.uniform(*cfg.tumor_diameter_um) / 2 * um, 0.45 * inradius)
                # crowded or small tissue: shrink the tumour rather than give up on it
                radius *= 0.85 ** max(0, attempt - 10)
                centre = _point_in(rng, blob.buffer(-0.7 * radius))
                if centre is None:
                    continue
                shape = _blob(rng, *centre, radius, aspect=rng.uniform(1.0, 1.4),
                              angle=rng.uniform(0, np.pi), roughness=0.25, n_vertices=160)
                shape = shape.intersection(blob.buffer(-2.0))
                for other in tumors:
                    shape = shape.difference(other.buffer(8 * um))
                shape = _largest(shape)
                # a tumour around another one would get a hole, which ASAP XML cannot express
                if shape is not None and not shape.interiors and shape.area > 0.25 * math.pi * radius**2:
                    tumors.append(_snap(shape))
                    break

        if not tumors:
            raise ConfigError(
                f"no room for a tumour in {w}x{h} px of tissue at {cfg.mpp} µm/px: "
                "make the slide larger or lower tumor_diameter_um"
            )

    holes: list[Polygon] = []
    if cfg.holes:
        keep_out = shapely.union_all([t.buffer(20 * um) for t in tumors]) if tumors else None
        for blob in blobs:
            for _ in range(rng.poisson(4)):
                radius = rng.uniform(8, 30) * um
                centre = _point_in(rng, blob.buffer(-2 * radius))
                if centre is None:
                    continue
                hole = _blob(rng, *centre, radius, aspect=rng.uniform(1.0, 1.6),
                             angle=rng.uniform(0, np.pi), roughness=0.08, n_vertices=48)
                if keep_out is not None and hole.intersects(keep_out):
                    continue
                if any(hole.distance(o) < 5 * um for o in holes):
                    continue
                holes.append(hole)
    tissue = shapely.union_all(blobs)
    if holes:
        tissue = tissue.difference(shapely.union_all(holes))
    tissue = shapely.set_precision(tissue, 0.01)

    pens: list[Polygon] = []
    pen_colors: list[str] = []
    if cfg.pen_marks:
        pens, pen_colors = _pen_strokes(rng, blobs, w, h, cfg.n_pen)
    return tissue, tumors, pens, pen_colors


def _apply_pens(rgba: np.ndarray, x0: int, y0: int, rasters: list[tx.PolygonRaster], colors: list[str],
                ink: np.ndarray) -> None:
    """Darken a painted ``(h, w, 3+)`` uint8 block under marker strokes, in place.

    ``ink`` is a periodic ``(P, P)`` float texture: ink density varies slowly along a stroke, as with a real marker.
    """
    h, w = rgba.shape[:2]
    for raster, color in zip(rasters, colors, strict=True):
        if not raster.intersects(x0, y0, w, h):
            continue
        mask = raster.mask(x0, y0, w, h)
        if not mask.any():
            continue
        dens = 0.85 + 0.15 * tx.periodic_take(ink, x0, y0, w, h)[mask]
        trans = np.exp(np.log(np.array(_PEN_INKS[color], np.float32)) * dens[:, None])
        rgba[mask, :3] = np.rint(rgba[mask, :3] * trans).astype(np.uint8)


# --------------------------------------------------------------------------- the scene


class _Scene:
    """Procedural description of one slide; paints any level-0 block on demand."""

    def __init__(self, cfg: SynthConfig):
        self.cfg = cfg
        seed = int(cfg.seed)
        self.tissue, self.tumors, self.pens, self.pen_colors = _make_geometry(
            cfg, np.random.default_rng([seed, 1])
        )
        self._tissue_r = tx.PolygonRaster(self.tissue)
        self._tumor_geom = MultiPolygon(self.tumors) if self.tumors else None
        self._tumor_r = tx.PolygonRaster(self._tumor_geom) if self.tumors else None
        self._pen_r = [tx.PolygonRaster(p) for p in self.pens]
        shapely.prepare(self.tissue)
        if self._tumor_geom is not None:
            shapely.prepare(self._tumor_geom)

        rng = np.random.default_rng([seed, 2])
        um = 1.0 / cfg.mpp
        jit = cfg.stain_jitter
        # stroma: two crossing fibre orientations plus blotchy uneven staining, one transform
        ang = rng.uniform(0, np.pi)
        stroma = tx.periodic_noise(
            rng, _TEX_PERIOD, 5 * um, anisotropy=5, angle=ang,
            extra=((0.8, 4 * um, 4, ang + rng.uniform(0.6, 1.2), 0.6), (0.6, 25 * um, 1, 0, 0.8)),
        )
        e_level = 0.42 * (1 + jit * rng.uniform(-2, 2))
        self._etex = np.clip(np.rint(e_level * (0.95 + 0.16 * stroma) / tx.E_STEP), 5, 100).astype(np.uint8)
        # slow variation with another period: staining gradients, and cellularity of normal tissue
        low = tx.periodic_noise(rng, _LOW_PERIOD, 60 * um, bandwidth=0.7)
        self._cellularity = np.clip(0.6 + 0.45 * low, 0.15, 1.6).astype(np.float32)
        self._ltex = np.clip(np.rint((0.5 + 0.3 * low) * 27), 0, 27).astype(np.uint8)
        self._ink = np.roll(low, (_LOW_PERIOD // 3, _LOW_PERIOD // 2), (0, 1))

        # chromatin: fine granular texture inside nuclei, one patch picked per nucleus
        self._kinds = [k for k, _ in tx.NORMAL_KINDS] + [tx.TUMOR_KIND]
        self._normal_p = np.array([p for _, p in tx.NORMAL_KINDS])
        kmax = max(tx._window(k, cfg.mpp) for k in self._kinds)
        self.margin = kmax
        grain = tx.periodic_noise(rng, 2 ** math.ceil(math.log2(kmax)) * 2, 1.5 * um, bandwidth=0.9)
        bank = [np.roll(grain, (rng.integers(grain.shape[0]), rng.integers(grain.shape[1])), (0, 1))[:kmax, :kmax]
                for _ in range(16)]
        self._chromatin = np.clip(0.85 + 0.3 * np.stack(bank), 0.3, 1.5).astype(np.float32)

        hv = tx.HEMATOXYLIN + jit * rng.normal(0, 0.5, 3)
        ev = tx.EOSIN + jit * rng.normal(0, 0.5, 3)
        hv, ev = np.abs(hv) / np.linalg.norm(hv), np.abs(ev) / np.linalg.norm(ev)
        glass = rng.uniform(236, 246) + rng.uniform(-2, 2, 3)
        self.background = np.clip(np.rint(glass), 0, 255).astype(np.uint8)
        # regions: 0 glass, 1 tissue, 2 tumour (basophilic cytoplasm, less eosin)
        self._lut = tx.stain_lut(glass, hv, ev, region_h=(0.0, 0.05, 0.22), region_e=(0.0, 1.0, 0.6))

        px2_per_mm2 = (1000.0 * um) ** 2
        self._d_normal = cfg.nuclei_per_mm2 / px2_per_mm2
        self._d_tumor = cfg.tumor_nuclei_per_mm2 / px2_per_mm2 if self.tumors else 0.0
        self._d_max = max(self._d_normal * float(self._cellularity.max()), self._d_tumor)
        self._bands: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()

        # what is not glass: tiles outside it are plain background
        content = [self.tissue.buffer(self.margin)] + list(self.pens)
        self.content = shapely.union_all(content)
        shapely.prepare(self.content)

    # -- nuclei -------------------------------------------------------------------------------

    def _band_nuclei(self, band: int) -> dict[str, np.ndarray]:
        """Nuclei whose centres fall in level-0 rows ``[band * 256, (band + 1) * 256)``."""
        hit = self._bands.get(band)
        if hit is not None:
            self._bands.move_to_end(band)
            return hit
        cfg = self.cfg
        rng, n, x, y, accept, pick = draw_band(cfg.seed, band, self._d_max, cfg.width)
        in_t = shapely.contains_xy(self.tissue, x, y) if n else np.zeros(0, bool)
        in_tu = (shapely.contains_xy(self._tumor_geom, x, y) if (n and self._tumor_geom is not None)
                 else np.zeros(n, bool))
        cell = self._cellularity[y.astype(np.int64) % _LOW_PERIOD, x.astype(np.int64) % _LOW_PERIOD]
        density = np.where(in_tu, self._d_tumor, np.where(in_t, self._d_normal * cell, 0.0))
        # tumour regions keep a few lymphocytes among the tumour cells
        kind = np.searchsorted(np.cumsum(self._normal_p)[:-1], pick * self._normal_p.sum(), side="right")
        kind = np.where(in_tu, np.where(pick < 0.1, 1, len(self._kinds) - 1), kind)
        nuclei = tx.sample_nuclei(rng, self._kinds, kind, x, y, cfg.mpp)
        keep = accept < density
        nuclei = tx.with_nucleoli({k: v[keep] for k, v in nuclei.items()}, cfg.mpp)
        self._bands[band] = nuclei
        if len(self._bands) > 8:
            self._bands.popitem(last=False)
        return nuclei

    def _nuclei_near(self, x0: int, y0: int, w: int, h: int) -> dict[str, np.ndarray]:
        m = self.margin
        b0 = max(0, (y0 - m) // _BAND)
        b1 = (y0 + h + m) // _BAND
        parts = [self._band_nuclei(b) for b in range(b0, b1 + 1)]
        nuc = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        x, y = nuc["x"], nuc["y"]
        sel = (x > x0 - m) & (x < x0 + w + m) & (y > y0 - m) & (y < y0 + h + m)
        return {k: v[sel] for k, v in nuc.items()}

    # -- painting ------------------------------------------------------------------------------

    def paint(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Paint a level-0 block.

        Returns
        -------
        numpy.ndarray
            ``(h, w, 4)`` uint8 RGBA (alpha 255), a view of packed uint32 pixels.
        """
        region = self._tissue_r.mask(x0, y0, w, h).view(np.uint8).astype(np.uint16)
        if self._tumor_r is not None and self._tumor_r.intersects(x0, y0, w, h):
            region += self._tumor_r.mask(x0, y0, w, h)
        index = region << 14
        eosin = tx.periodic_take(self._etex, x0, y0, w, h) + tx.periodic_take(self._ltex, x0, y0, w, h)
        index |= eosin
        hema = np.zeros((h, w), np.float32)
        nuclei = self._nuclei_near(x0, y0, w, h)
        if nuclei["x"].size:
            tx.render_nuclei(hema, x0, y0, nuclei, self._chromatin)
            hema *= 1.0 / tx.H_STEP
            hema += 0.5
            np.minimum(hema, tx.N_H - 1, out=hema)
            index |= hema.astype(np.uint16) << 7
        rgba = np.take(self._lut, index).view(np.uint8).reshape(h, w, 4)
        _apply_pens(rgba, x0, y0, self._pen_r, self.pen_colors, self._ink)
        return rgba

    def is_glass(self, x0: np.ndarray, y0: np.ndarray, w: int, h: int) -> np.ndarray:
        """Which blocks (vectorised over top-left corners) hold nothing but glass."""
        boxes = shapely.box(x0, y0, x0 + w, y0 + h)
        return ~shapely.intersects(self.content, boxes)


def render_synthetic_region(
    config: SynthConfig, location: tuple[int, int], size: tuple[int, int]
) -> np.ndarray:
    """Level-0 pixels of a synthetic slide as painted, before JPEG compression.

    Parameters
    ----------
    config : SynthConfig
        The slide's configuration (seed included).
    location : (int, int)
        Level-0 ``(x, y)`` of the top-left corner, pixels.
    size : (int, int)
        ``(w, h)``, pixels.

    Returns
    -------
    numpy.ndarray
        ``(h, w, 3)`` uint8 RGB; identical to what :func:`write_synthetic_slide` encodes.
    """
    config.validate()
    x, y = (int(v) for v in location)
    w, h = (int(v) for v in size)
    if w < 1 or h < 1:
        raise ConfigError(f"size must be positive, got {size}")
    return np.ascontiguousarray(_Scene(config).paint(x, y, w, h)[..., :3])


# --------------------------------------------------------------------------- pyramid


