"""Regions in and out of the tiler: a user's region of interest from an annotation file, the tissue outline to QuPath.

``slidestream tile --roi FILE`` restricts tiling to :func:`roi_from_file`; ``--export-tissue`` writes
:func:`write_tissue_geojson` next to each store. A store tiled with a region records :func:`roi_summary` in its
``tiling`` attribute (a hash, the bounds and the size: ``zarr.json`` stays small whatever the region) and the
geometry itself as WKB bytes in its ``roi`` array (:func:`store_roi` reads it back). Coordinates are level-0
pixels of the slide as OpenSlide numbers them; QuPath's origin is the slide's bounds origin (non-zero only for some formats, e.g. MIRAX), which the
``offset`` arguments account for.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import MultiPolygon

from ..annotations import make_valid_polygonal, polygonal_parts, read_annotations, region_features, write_geojson
from ..errors import ConfigError
from ..store import SlideStore
from .tissue import mask_to_polygons

#: QuPath class of the exported tissue outline, and its colour (QuPath's own colour for "Tissue" is not fixed).
TISSUE_CLASS = "Tissue"
TISSUE_COLOR = (80, 180, 80)


def roi_from_file(path: str | os.PathLike, *, classes: Sequence[str] | None = None,
                  offset: Sequence[float] = (0, 0), **limits: int) -> MultiPolygon:
    """Region of interest: the union of the area annotations of an ASAP XML, QuPath GeoJSON or NCRF JSON file.

    Parameters
    ----------
    path : str or os.PathLike
        The annotation file (format recognised by content, ``.gz`` too).
    classes : sequence of str, optional
        Keep only annotations of these classes; default: every class (and unclassified objects).
    offset : (x, y)
        Added to every coordinate: ``(bounds-x, bounds-y)`` of the slide for QuPath files of slides with
        OpenSlide bounds (MIRAX); ASAP and NCRF files are already in OpenSlide coordinates.
    **limits : int
        ``max_bytes``, ``max_vertices``, ``max_crossings`` of :func:`~slidestream.annotations.read_annotations`.

    Returns
    -------
    MultiPolygon
        Valid, in level-0 pixels; points and lines are ignored.

    Raises
    ------
    ConfigError
        When the file holds no area (polygon) annotation of the wanted classes.
    slidestream.annotations.AnnotationError
        When the file cannot be read.
    """
    anns = read_annotations(path, offset=offset, **limits)
    if classes is not None:
        wanted = set(classes)
        anns = [a for a in anns if a.class_name in wanted]
    parts = [make_valid_polygonal(p) for a in anns for p in polygonal_parts(a.geometry)]
    if not parts:
        which = f" of class {', '.join(classes)}" if classes is not None else ""
        raise ConfigError(f"{path}: no area annotation{which} to use as region of interest "
                          "(points and lines are ignored); draw the region as a polygon or rectangle")
    return MultiPolygon(polygonal_parts(shapely.union_all(parts)))


#: Chunk of the store's ``roi`` array (bytes).
_ROI_CHUNK = 1 << 20


def roi_summary(roi) -> dict:
    """What a store's ``tiling`` attribute records of a region of interest: small whatever the region's size.

    Parameters
    ----------
    roi : shapely geometry
        In level-0 pixels.

    Returns
    -------
    dict
        ``sha256`` of the normalised geometry's WKT at 6 decimals (the same region gives the same hash however
        its parts and rings are ordered), ``bounds`` ``[x0, y0, x1, y1]``, ``area`` (px²), ``polygons`` and
        ``vertices`` (counts).
    """
    normal = shapely.normalize(roi)
    digest = hashlib.sha256(shapely.to_wkt(normal, rounding_precision=6, trim=True).encode()).hexdigest()
    return {"sha256": digest, "bounds": [round(float(v), 3) for v in roi.bounds] if not roi.is_empty else None,
            "area": round(float(roi.area), 3), "polygons": len(polygonal_parts(roi)),
            "vertices": int(shapely.get_num_coordinates(roi))}


def write_roi_array(group, roi) -> None:
    """Store a region of interest as the uint8 array ``roi`` of a store's Zarr group (WKB bytes, 1 MiB chunks)."""
    data = np.frombuffer(shapely.to_wkb(roi), dtype=np.uint8)
    group.create_array("roi", data=data, chunks=(min(_ROI_CHUNK, max(1, len(data))),),
                       attributes={"encoding": "wkb", "sha256": roi_summary(roi)["sha256"]})


def store_roi(store: SlideStore | str | os.PathLike):
    """The region of interest a store was tiled with, as a shapely geometry in level-0 pixels; None without one."""
    if not isinstance(store, SlideStore):
        store = SlideStore.open(store)
    if "roi" in store.group:
        return shapely.from_wkb(store.group["roi"][...].tobytes())
    recorded = store.tiling.get("roi")
    return shapely.from_wkt(recorded) if isinstance(recorded, str) else None  # stores from before the array


def write_tissue_geojson(store: SlideStore | str | os.PathLike, path: str | os.PathLike, *,
                         offset: Sequence[float] | None = None) -> Path:
    """Export a store's tissue outline as a QuPath annotation (class ``"Tissue"``), one Feature per slide.

    Parameters
    ----------
    store : SlideStore or path
        A tiled store (it keeps the tissue mask it was tiled with).
    path : str or os.PathLike
        Output ``.geojson`` (or ``.geojson.gz``); written atomically.
    offset : (x, y), optional
        Subtracted from every coordinate; default the slide's bounds origin as recorded in the store, which is
        where QuPath puts its (0, 0).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ConfigError
        When the store has no tissue mask, or the mask is empty.
    """
    if not isinstance(store, SlideStore):
        store = SlideStore.open(store)
    if "tissue_mask" not in store.group:
        raise ConfigError(f"{store.path}: no tissue mask in this store; tile the slide again to make one")
    tissue = tissue_polygons(store)
    if tissue.is_empty:
        raise ConfigError(f"{store.path}: the tissue mask is empty, there is no outline to export")
    slide = store.slide
    bounds = slide.get("bounds") or [0, 0, *slide.get("dimensions", [None, None])]
    origin = tuple(offset) if offset is not None else (bounds[0], bounds[1])
    size = bounds[2:4] if bounds[2] is not None else None
    area_um2 = tissue.area * float(slide.get("mpp") or 0) ** 2
    measurements = {"Area µm^2": area_um2} if area_um2 > 0 else None
    features = region_features(tissue, TISSUE_CLASS, TISSUE_COLOR, name=f"Tissue ({store.slide_id})",
                               measurements=measurements, offset=origin, slide_size=size)
    return write_geojson(path, features)


def tissue_polygons(store: SlideStore):
    """Tissue outline of a store's slide as a shapely MultiPolygon in level-0 pixels."""
    downsample = tuple(store.group["tissue_mask"].attrs["downsample"])
    return mask_to_polygons(store.read("tissue_mask").astype(bool), downsample)
