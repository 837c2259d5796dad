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
>>> from slidestream.synth import SynthConfig, write_synthetic_slide
>>> s = write_synthetic_slide("tumor.svs", SynthConfig(width=4096, height=4096, tumor=True))
>>> s.tumors[0].area > 0
True
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile
from PIL import Image
from shapely.geometry import MultiPolygon, Polygon

from ..annotations.formats import Annotation, write_asap_xml
from ..annotations.qupath import region_features, write_geojson
from ..errors import ConfigError
from ..fileio import atomic_path
from .scene import SynthConfig, _Scene

__all__ = ["SynthSlide", "write_scene_tiff", "write_synthetic_slide"]

_APERIO_HEADER = "Aperio Image Library v12.0.15"
_SPOOL_RAM_BYTES = 64 << 20  # reduced levels larger than this are spooled to a temporary file


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



def write_scene_tiff(path: Path, scene, cfg: SynthConfig) -> list[tuple[int, int]]:
    """Stream a painted scene into a pyramidal JPEG TIFF laid out as ``cfg.layout`` says; atomic.

    Parameters
    ----------
    path : Path
        Output file; its folder must exist.
    scene : object
        Painter with ``paint(x0, y0, w, h)`` (``(h, w, 4)`` uint8), ``is_glass(xs, ys, w, h)`` and
        ``background`` (``(3,)`` uint8), as :class:`slidestream.synth.scene._Scene`.
    cfg : SynthConfig
        Size, pixel size, tiles, JPEG quality, pyramid and ``layout`` (``"aperio"``: SVS pages with an
        Aperio ImageDescription and a thumbnail page; ``"generic"``: plain tiled TIFF pages, the pixel
        size only in the resolution tags and reduced levels flagged ``NewSubfileType`` 1, as the
        CAMELYON16 files).

    Returns
    -------
    list of (int, int)
        ``(width, height)`` of each pyramid level.
    """
    dims = _level_dimensions(cfg)
    # with a single level a reduced copy is still spooled, for the thumbnail
    spool_dims = dims[1:] or [(-(-cfg.width // cfg.level_downsample), -(-cfg.height // cfg.level_downsample))]
    bigtiff = cfg.bigtiff if cfg.bigtiff is not None else cfg.width * cfg.height * 3 > 2**31
    ts, q = cfg.tile_size, cfg.jpeg_quality
    res = 1e4 / cfg.mpp  # pixels per cm
    aperio = cfg.layout == "aperio"
    common = dict(dtype=np.uint8, photometric="rgb", compression="jpeg", metadata=None, resolutionunit="CENTIMETER")
    pyramid = _Pyramid(spool_dims, cfg.level_downsample, path.parent)
    stats = {"glass_tiles": 0, "painted_tiles": 0}

    def describe(size, thumbnail=False) -> dict:
        return {"description": _description(cfg, path.name, size, thumbnail=thumbnail)} if aperio else {}

    try:
        with atomic_path(path, mkdir=False) as tmp, tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tw:
            tw.write(_level0_tiles(scene, pyramid, stats), shape=(cfg.height, cfg.width, 3), tile=(ts, ts),
                     resolution=(res, res), subfiletype=0, **describe(None), **common)
            if aperio:
                thumb = _thumbnail(pyramid, spool_dims, cfg.thumbnail_size)
                tw.write(thumb, rowsperstrip=16, compressionargs={"level": 90}, resolution=(res, res), subfiletype=0,
                         **describe(thumb.shape[1::-1], thumbnail=True), **common)
            for k in range(1, len(dims)):
                spool = pyramid.spools[k - 1]
                # Aperio flags no page as reduced; generic readers (OpenSlide 4) take only flagged pages as levels
                r = res if aperio else res * dims[k][0] / cfg.width
                tw.write(_spool_tiles(spool, ts, q, scene.background), shape=(dims[k][1], dims[k][0], 3),
                         tile=(ts, ts), resolution=(r, r), subfiletype=0 if aperio else 1, **describe(dims[k]),
                         **common)
    finally:
        pyramid.close()
    return dims


def write_synthetic_slide(
    path: str | os.PathLike,
    config: SynthConfig | None = None,
    *,
    annotation_dir: str | os.PathLike | None = None,
) -> SynthSlide:
    """Write one synthetic H&E slide as a pyramidal JPEG Aperio SVS, streaming, with ground truth.

    Memory stays bounded whatever the slide size: level 0 is painted in blocks of one tile row by
    at most 4096 columns, reduced levels larger than 64 MiB go to a temporary file next to ``path``.
    The file appears atomically (written under a temporary name, then renamed). With
    ``config.layout = "generic"`` the file is a plain tiled pyramidal TIFF instead (see
    :func:`write_scene_tiff`).

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
    dims = write_scene_tiff(path, scene, cfg)

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


