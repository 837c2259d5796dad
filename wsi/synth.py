"""Synthetic H&E whole-slide images written as Aperio SVS, with ground truth.

A slide is described procedurally (tissue blobs, tumour regions, pen strokes as shapely polygons in
level-0 pixels; nuclei drawn per horizontal band from a seed derived from the band index; periodic
stroma textures) and painted block by block, so that level 0 is never held in memory. Tiles are JPEG
encoded here and streamed to :class:`tifffile.TiffWriter`; lower pyramid levels are box-filtered from
the painted blocks on the way and spooled (to RAM when small, else to a temporary file) until their
TIFF page is written. The page layout follows Aperio: level 0, a stripped thumbnail, then the
reduced levels, each described by an ``Aperio Image Library`` ImageDescription that carries
``AppMag`` and ``MPP``; openslide reports vendor ``aperio`` and tiffslide reads it too.

Ground truth is returned as shapely geometries and, for tumour slides, written as ASAP XML
(CAMELYON16 style, group ``Tumor``) and as a QuPath GeoJSON FeatureCollection.

Examples
--------
>>> from slidestream.wsi.synth import SynthConfig, write_synthetic_slide
>>> s = write_synthetic_slide("tumor.svs", SynthConfig(width=4096, height=4096, tumor=True))
>>> s.tumors[0].area > 0
True
"""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import imagecodecs
import numpy as np
import shapely
import tifffile
from PIL import Image
from shapely.geometry import LineString, MultiPolygon, Polygon, box

from ..errors import ConfigError
from . import _texture as tx
from .annotations import Annotation, write_asap_xml
from .qupath import region_features, write_geojson

__all__ = [
    "SynthConfig",
    "SynthSlide",
    "render_synthetic_region",
    "write_synthetic_dataset",
    "write_synthetic_slide",
]

_APERIO_HEADER = "Aperio Image Library v12.0.15"
_BAND = 256  # rows of level 0 whose nuclei come from one seed; fixed so results don't depend on tiling
_TEX_PERIOD = 1024  # stroma texture period, pixels
_LOW_PERIOD = 1000  # second, coprime-ish period so the sum of both textures hardly repeats
_SPOOL_RAM_BYTES = 64 << 20  # reduced levels larger than this are spooled to a temporary file
_PEN_INKS = {  # transmission of marker ink per RGB channel
    "blue": (0.22, 0.36, 0.80),
    "green": (0.22, 0.55, 0.33),
    "black": (0.13, 0.13, 0.15),
}


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

    @property
    def magnification(self) -> float:
        """Objective power recorded as ``AppMag``."""
        return self.objective_power if self.objective_power is not None else round(10.0 / self.mpp, 3)


@dataclass
class SynthSlide:
    """What :func:`write_synthetic_slide` wrote; geometries in level-0 pixels.

    Attributes
    ----------
    path : Path
        The SVS file.
    width, height : int
        Level-0 size, pixels.
    mpp : float
        Level-0 pixel size, µm per pixel.
    tissue : shapely Polygon or MultiPolygon
        Tissue (holes excluded).
    tumors : list of shapely Polygon
        Tumour regions, inside the tissue.
    pen : list of shapely Polygon
        Marker strokes, clipped to the slide.
    xml_path, geojson_path : Path or None
        Tumour annotations (ASAP XML, QuPath GeoJSON); None for slides without tumour.
    pen_colors : list of str
        Ink of each stroke in ``pen`` ("blue", "green", "black").
    level_dimensions : list of (int, int)
        ``(width, height)`` of each pyramid level.
    objective_power : float
        Recorded ``AppMag``.
    seed : int
        Seed that produced the slide.
    """

    path: Path
    width: int
    height: int
    mpp: float
    tissue: Polygon | MultiPolygon
    tumors: list[Polygon]
    pen: list[Polygon]
    xml_path: Path | None = None
    geojson_path: Path | None = None
    pen_colors: list[str] = field(default_factory=list)
    level_dimensions: list[tuple[int, int]] = field(default_factory=list)
    objective_power: float = 40.0
    seed: int = 0

    @property
    def label(self) -> int:
        """1 when the slide has tumour, else 0."""
        return int(bool(self.tumors))


# --------------------------------------------------------------------------- geometry


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
        slide = box(0, 0, w, h)
        side = min(w, h)
        for _ in range(cfg.n_pen):
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
    return tissue, tumors, pens, pen_colors


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
        rng = np.random.default_rng([int(cfg.seed), 3, band])
        n = rng.poisson(self._d_max * _BAND * cfg.width)
        x = rng.random(n) * cfg.width
        y = (band + rng.random(n)) * _BAND
        accept = rng.random(n) * self._d_max
        pick = rng.random(n)
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
        for raster, color in zip(self._pen_r, self.pen_colors, strict=True):
            if not raster.intersects(x0, y0, w, h):
                continue
            mask = raster.mask(x0, y0, w, h)
            if not mask.any():
                continue
            # ink density varies slowly along the stroke, as with a real marker
            dens = 0.85 + 0.15 * tx.periodic_take(self._ink, x0, y0, w, h)[mask]
            trans = np.exp(np.log(np.array(_PEN_INKS[color], np.float32)) * dens[:, None])
            rgba[mask, :3] = np.rint(rgba[mask, :3] * trans).astype(np.uint8)
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


def _level_dimensions(cfg: SynthConfig) -> list[tuple[int, int]]:
    dims = [(cfg.width, cfg.height)]
    while True:
        w, h = dims[-1]
        nw, nh = -(-w // cfg.level_downsample), -(-h // cfg.level_downsample)
        if max(nw, nh) < cfg.min_level_size:
            return dims
        dims.append((nw, nh))


def _box_down(rows: np.ndarray, d: int) -> np.ndarray:
    """``d x d`` mean of ``(h, w, C)`` uint8 rows (``h`` a multiple of ``d``); edge columns replicated."""
    h, w, c = rows.shape
    if w % d:
        rows = np.concatenate([rows, np.repeat(rows[:, -1:], d - w % d, axis=1)], axis=1)
    acc = rows[0::d].astype(np.uint16)
    for i in range(1, d):
        acc += rows[i::d]
    out = acc[:, 0::d].copy()
    for i in range(1, d):
        out += acc[:, i::d]
    out += d * d // 2
    out //= d * d
    return out.astype(np.uint8)


class _Spool:
    """Rows of one reduced level, appended top to bottom, read back in strips; RAM or temp file."""

    def __init__(self, width: int, height: int, tmp_dir: Path):
        self.width, self.height = width, height
        self.rows = 0
        self._row_bytes = width * 3
        if width * height * 3 <= _SPOOL_RAM_BYTES:
            self._ram = np.empty((height, width, 3), np.uint8)
            self._file = None
        else:
            self._ram = None
            self._file = tempfile.TemporaryFile(dir=tmp_dir, prefix=".synth-level-")

    def write(self, rows: np.ndarray) -> None:
        n = min(rows.shape[0], self.height - self.rows)
        if n <= 0:
            return
        rows = rows[:n, : self.width, :3]
        if self._ram is not None:
            self._ram[self.rows : self.rows + n] = rows
        else:
            self._file.write(np.ascontiguousarray(rows).tobytes())
        self.rows += n

    def read(self, y0: int, y1: int) -> np.ndarray:
        y1 = min(y1, self.rows)
        if self._ram is not None:
            return self._ram[y0:y1]
        self._file.seek(y0 * self._row_bytes)
        buf = self._file.read((y1 - y0) * self._row_bytes)
        return np.frombuffer(buf, np.uint8).reshape(y1 - y0, self.width, 3)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class _Pyramid:
    """Cascade of reduced levels fed with level-0 strips already reduced once."""

    def __init__(self, dims: list[tuple[int, int]], d: int, tmp_dir: Path):
        self.d = d
        self.spools = [_Spool(w, h, tmp_dir) for w, h in dims]
        self._pending: list[np.ndarray | None] = [None] * len(dims)

    def push(self, k: int, rows: np.ndarray) -> None:
        """Append rows to level ``k`` (0 = first reduced level) and cascade to the next ones."""
        self.spools[k].write(rows)
        if k + 1 >= len(self.spools):
            return
        buf = rows if self._pending[k] is None else np.concatenate([self._pending[k], rows])
        usable = buf.shape[0] - buf.shape[0] % self.d
        if usable:
            self.push(k + 1, _box_down(buf[:usable], self.d))
        self._pending[k] = buf[usable:] if usable < buf.shape[0] else None

    def flush(self) -> None:
        """Reduce rows left over at the bottom (edge-replicated to a full block)."""
        for k in range(len(self.spools) - 1):
            buf = self._pending[k]
            if buf is not None and buf.shape[0]:
                pad = np.repeat(buf[-1:], self.d - buf.shape[0], axis=0)
                self._pending[k] = None
                self.push(k + 1, _box_down(np.concatenate([buf, pad]), self.d))

    def close(self) -> None:
        for s in self.spools:
            s.close()


# --------------------------------------------------------------------------- TIFF writing


def _encode(tile: np.ndarray, quality: int) -> bytes:
    # YCbCr 4:2:0 like Aperio; tifffile writes the matching Photometric/YCbCrSubSampling tags
    colorspace = "RGBA" if tile.shape[-1] == 4 else "RGB"  # libjpeg skips the alpha byte itself
    return imagecodecs.jpeg8_encode(
        tile, level=quality, colorspace=colorspace, outcolorspace="YCBCR", subsampling=(2, 2)
    )


def _level0_tiles(scene: _Scene, pyramid: _Pyramid, stats: dict) -> Iterator[bytes]:
    """JPEG tiles of level 0 in row-major order; feeds the first reduced level on the way.

    ``stats`` counts ``painted_tiles`` and ``glass_tiles`` (tiles outside the tissue, its nuclei
    margin and the pen strokes are one cached JPEG of plain glass).
    """
    cfg = scene.cfg
    ts, q, d = cfg.tile_size, cfg.jpeg_quality, cfg.level_downsample
    nx, ny = -(-cfg.width // ts), -(-cfg.height // ts)
    bg_bytes = _encode(np.ascontiguousarray(np.broadcast_to(scene.background, (ts, ts, 3))), q)
    max_run = max(1, 4096 // ts)  # painted blocks stay within a few MiB whatever the slide width
    xs = np.arange(nx) * ts
    for ty in range(ny):
        y0 = ty * ts
        glass = scene.is_glass(xs, np.full(nx, y0), ts, ts)
        reduced = np.empty((ts // d, nx * ts // d, 3), np.uint8)
        reduced[:] = scene.background
        # a whole tile row is encoded before it is yielded: tifffile stops pulling after the last
        # tile, so work placed after the final ``yield`` would never run
        encoded: list[bytes] = []
        tx_ = 0
        while tx_ < nx:
            if glass[tx_]:
                stats["glass_tiles"] += 1
                encoded.append(bg_bytes)
                tx_ += 1
                continue
            run = 1
            while tx_ + run < nx and run < max_run and not glass[tx_ + run]:
                run += 1
            x0 = tx_ * ts
            block = scene.paint(x0, y0, run * ts, ts)
            encoded.extend(_encode(block[:, i * ts : (i + 1) * ts], q) for i in range(run))
            # four-byte pixels reduce faster than three-byte ones; alpha is dropped after
            reduced[:, x0 // d : (x0 + run * ts) // d] = _box_down(block, d)[..., :3]
            stats["painted_tiles"] += run
            tx_ += run
        pyramid.push(0, reduced)
        if ty == ny - 1:
            pyramid.flush()
        yield from encoded


def _spool_tiles(spool: _Spool, ts: int, q: int, background: np.ndarray) -> Iterator[bytes]:
    """JPEG tiles of a reduced level read back from its spool, row-major, padded with glass."""
    nx, ny = -(-spool.width // ts), -(-spool.height // ts)
    for ty in range(ny):
        strip = np.empty((ts, nx * ts, 3), np.uint8)
        strip[:] = background
        rows = spool.read(ty * ts, (ty + 1) * ts)
        strip[: rows.shape[0], : rows.shape[1]] = rows
        for tx_ in range(nx):
            yield _encode(strip[:, tx_ * ts : (tx_ + 1) * ts], q)


def _description(cfg: SynthConfig, name: str, size: tuple[int, int] | None, thumbnail: bool = False) -> str:
    w, h = cfg.width, cfg.height
    ts = cfg.tile_size
    head = f"{_APERIO_HEADER}\r\n{w}x{h} [0,0 {w}x{h}]"
    if thumbnail:
        head = f"{_APERIO_HEADER}\r\n{w}x{h} -> {size[0]}x{size[1]} -"
    elif size is not None:
        head += f" ({ts}x{ts}) -> {size[0]}x{size[1]} JPEG/RGB Q={cfg.jpeg_quality}"
    else:
        head += f" ({ts}x{ts}) JPEG/RGB Q={cfg.jpeg_quality}"
    mag = cfg.magnification
    mag_s = f"{int(mag)}" if float(mag).is_integer() else f"{mag:g}"
    return (
        f"{head}|AppMag = {mag_s}|MPP = {cfg.mpp:g}|ScanScope ID = SLIDESTREAM-SYNTH"
        f"|Filename = {name}|Title = synthetic H&E (slidestream)|Seed = {cfg.seed}"
    )


def _thumbnail(pyramid: _Pyramid, dims: list[tuple[int, int]], size: int) -> np.ndarray:
    """Thumbnail from the smallest spooled level that is still at least ``size`` px, box-resized."""
    pick = len(pyramid.spools) - 1
    for k in range(len(pyramid.spools) - 1, -1, -1):
        if max(dims[k]) >= size:
            pick = k
            break
    spool = pyramid.spools[pick]
    img = Image.fromarray(np.ascontiguousarray(spool.read(0, spool.height)))
    scale = min(1.0, size / max(img.size))
    tw, th = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    if (tw, th) != img.size:
        img = img.resize((tw, th), Image.Resampling.BOX)
    return np.asarray(img)


def _atomic_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = _atomic_path(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_synthetic_slide(
    path: str | os.PathLike,
    config: SynthConfig | None = None,
    *,
    annotation_dir: str | os.PathLike | None = None,
) -> SynthSlide:
    """Write one synthetic H&E slide as a pyramidal JPEG Aperio SVS, streaming, with ground truth.

    Memory stays bounded whatever the slide size: level 0 is painted in blocks of one tile row by
    at most 4096 columns, reduced levels larger than 64 MiB go to a temporary file next to ``path``.
    The file appears atomically (written under a temporary name, then renamed).

    Parameters
    ----------
    path : str or os.PathLike
        Output ``.svs`` file; its folder must exist.
    config : SynthConfig, optional
        What to paint; default ``SynthConfig()`` (8192 px square, 0.25 µm/px, normal tissue).
    annotation_dir : str or os.PathLike, optional
        Folder for ``<stem>.xml`` and ``<stem>.geojson`` when the slide has tumours; default the
        slide's folder. Created when missing.

    Returns
    -------
    SynthSlide
        Paths and the ground-truth geometries in level-0 pixels.

    Raises
    ------
    ConfigError
        When a configuration value is invalid.
    """
    cfg = config if config is not None else SynthConfig()
    cfg.validate()
    path = Path(path)
    if not path.parent.is_dir():
        raise ConfigError(f"{path.parent}: output folder does not exist (create it first)")
    scene = _Scene(cfg)
    dims = _level_dimensions(cfg)
    # with a single level a reduced copy is still spooled, for the thumbnail
    spool_dims = dims[1:] or [(-(-cfg.width // cfg.level_downsample), -(-cfg.height // cfg.level_downsample))]
    bigtiff = cfg.bigtiff if cfg.bigtiff is not None else cfg.width * cfg.height * 3 > 2**31
    ts, q = cfg.tile_size, cfg.jpeg_quality
    res = 1e4 / cfg.mpp  # pixels per cm
    common = dict(
        dtype=np.uint8, photometric="rgb", compression="jpeg", metadata=None,
        resolution=(res, res), resolutionunit="CENTIMETER", subfiletype=0,
    )
    tmp = _atomic_path(path)
    pyramid = _Pyramid(spool_dims, cfg.level_downsample, path.parent)
    stats = {"glass_tiles": 0, "painted_tiles": 0}
    try:
        with tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tw:
            tw.write(_level0_tiles(scene, pyramid, stats), shape=(cfg.height, cfg.width, 3), tile=(ts, ts),
                     description=_description(cfg, path.name, None), **common)
            thumb = _thumbnail(pyramid, spool_dims, cfg.thumbnail_size)
            tw.write(thumb, rowsperstrip=16, compressionargs={"level": 90},
                     description=_description(cfg, path.name, thumb.shape[1::-1], thumbnail=True), **common)
            for k in range(1, len(dims)):
                spool = pyramid.spools[k - 1]
                tw.write(_spool_tiles(spool, ts, q, scene.background), shape=(dims[k][1], dims[k][0], 3),
                         tile=(ts, ts), description=_description(cfg, path.name, dims[k]), **common)
        os.replace(tmp, path)
    finally:
        pyramid.close()
        tmp.unlink(missing_ok=True)

    xml_path = geojson_path = None
    if scene.tumors:
        ann = Path(annotation_dir) if annotation_dir is not None else path.parent
        ann.mkdir(parents=True, exist_ok=True)
        xml_path = ann / f"{path.stem}.xml"
        geojson_path = ann / f"{path.stem}.geojson"
        tumours = [Annotation(geometry=p, class_name="Tumor", name=f"Tumor {i + 1}") for i, p in enumerate(scene.tumors)]
        write_asap_xml(xml_path, tumours, group="Tumor")
        features = [f for i, p in enumerate(scene.tumors)
                    for f in region_features(p, "Tumor", (200, 0, 0), name=f"Tumor {i + 1}")]
        for i, f in enumerate(features):
            # Stable ids instead of random ones: the same seed gives the same annotation file, byte for byte.
            f["id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"slidestream-synth/{path.stem}/{cfg.seed}/{i}"))
        write_geojson(geojson_path, features)
    return SynthSlide(
        path=path, width=cfg.width, height=cfg.height, mpp=cfg.mpp, tissue=scene.tissue,
        tumors=list(scene.tumors), pen=list(scene.pens), xml_path=xml_path, geojson_path=geojson_path,
        pen_colors=list(scene.pen_colors), level_dimensions=dims, objective_power=cfg.magnification,
        seed=cfg.seed,
    )


# --------------------------------------------------------------------------- datasets


def _child_seed(seed: int, label: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed), label, index]).generate_state(1)[0])


def write_synthetic_dataset(
    out_dir: str | os.PathLike,
    n_normal: int = 10,
    n_tumor: int = 10,
    *,
    config: SynthConfig | None = None,
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
    pen_fraction: float | None = None,
) -> Path:
    """Write a CAMELYON16-like set of synthetic slides with labels and tumour annotations.

    Files: ``normal_001.svs ...``, ``tumor_001.svs ...``, ``annotations/tumor_001.xml`` and
    ``.geojson`` per tumour slide, and ``labels.csv`` with columns ``slide,label,annotation``
    where ``slide`` and ``annotation`` are paths relative to ``out_dir`` (the CSV's folder) and
    ``annotation`` is empty for normal slides.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Output folder, created when missing.
    n_normal, n_tumor : int
        Number of slides without / with tumour.
    config : SynthConfig, optional
        Template for every slide; ``seed`` and ``tumor`` are replaced per slide.
    seed : int
        Dataset seed; each slide's seed is derived from it, its label and its index.
    progress : callable, optional
        Called as ``progress(i, n, name)`` after each slide, ``i`` from 1 to ``n``.
    pen_fraction : float, optional
        When given, each slide gets pen marks with this probability (drawn from its seed),
        overriding ``config.pen_marks``.

    Returns
    -------
    Path
        The ``labels.csv`` file.
    """
    if n_normal < 0 or n_tumor < 0 or n_normal + n_tumor == 0:
        raise ConfigError(f"need at least one slide, got n_normal={n_normal}, n_tumor={n_tumor}")
    if pen_fraction is not None and not 0 <= pen_fraction <= 1:
        raise ConfigError(f"pen_fraction must be in [0, 1], got {pen_fraction}")
    base = config if config is not None else SynthConfig()
    base.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    digits = max(3, len(str(max(n_normal, n_tumor))))
    jobs = [("normal", 0, i) for i in range(n_normal)] + [("tumor", 1, i) for i in range(n_tumor)]
    rows = []
    for done, (prefix, label, i) in enumerate(jobs, start=1):
        name = f"{prefix}_{i + 1:0{digits}d}"
        slide_seed = _child_seed(seed, label, i)
        cfg = replace(base, seed=slide_seed, tumor=bool(label))
        if pen_fraction is not None:
            cfg = replace(cfg, pen_marks=bool(np.random.default_rng([slide_seed, 4]).random() < pen_fraction))
        s = write_synthetic_slide(out / f"{name}.svs", cfg, annotation_dir=out / "annotations")
        ann = s.xml_path.relative_to(out).as_posix() if s.xml_path is not None else ""
        rows.append({"slide": f"{name}.svs", "label": label, "annotation": ann})
        if progress is not None:
            progress(done, len(jobs), name)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["slide", "label", "annotation"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = out / "labels.csv"
    _write_text_atomic(csv_path, buf.getvalue())
    return csv_path
