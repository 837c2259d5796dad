"""Per-slide outputs from stored scores: QuPath GeoJSON (tiles with measurements, tissue, high-score regions) and
PNG heatmaps, for one store or a batch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..annotations import region_features, tile_features, tumor_regions, write_geojson
from ..errors import ConfigError
from ..fileio import remove_stale_temps
from ..store import SlideStore
from ..tiling.regions import tissue_polygons
from ..viz.heatmap import render_heatmap
from ..wsi import open_slide
from ..mil.checkpoint import checkpoint_classes
from .class_metrics import row_caption
from .classes import ClassSet
from .predict import predict_stores
from .records import SlideOutcome
from .reporting import QuietReporter, Reporter
from .runner import run_per_slide

__all__ = ["TISSUE_COLOR", "grid_geometry", "heatmap_batch", "write_slide_outputs"]

TISSUE_COLOR = (80, 200, 120)


def grid_geometry(tiling: dict, slide_mpp: float) -> tuple[float, float]:
    """Nominal tile side and grid stride, in level-0 pixels, of a store's tiles, as
    :func:`slidestream.tiling.grid.plan_reads` computed them for the tiler's grid.

    The stored ``extent0`` is the rounded read size times the level's downsample; the side here is the unrounded
    one (``tile_size`` target pixels), equal to the stride when tiles do not overlap, so that
    :func:`~slidestream.annotations.tumor_regions` can tell abutting tiles from overlapping ones exactly.

    Returns
    -------
    side0, stride0 : float
        ``tile_size * scale0`` and ``(tile_size - overlap) * scale0``, with ``scale0`` the level-0 pixels per
        target pixel.
    """
    size, overlap = int(tiling["tile_size"]), int(tiling.get("overlap", 0))
    if int(tiling["read_size"]) == size:
        scale0 = float(tiling["extent0"]) / size  # read unresized: one target pixel is one level pixel
    else:
        scale0 = float(tiling["mpp"]) / float(slide_mpp)
    return size * scale0, (size - overlap) * scale0


def write_slide_outputs(store_path: Path, model_name: str, out_dir: str | os.PathLike, *,
                        slide_path: str | os.PathLike | None = None, probability: float | None = None,
                        threshold: float | None = None, mpp: float | None = None,
                        formats: tuple[str, ...] = ("geojson", "png"), column: str | None = None,
                        caption: str | None = None) -> dict[str, Path]:
    """QuPath GeoJSON and/or a PNG heatmap of the per-tile scores ``scores/<model_name>`` of one store.

    The GeoJSON holds one ``tile`` per tile with every score column as a measurement (for multi-class models one
    per class, ``attention_<class>`` or ``probability_<class>``, for QuPath's Measurement Maps), the tissue
    outline (class ``Tissue``) and, with ``threshold``, the merged regions where ``column`` reaches it, name
    "High attention" (or "High probability"), class ``Tumor`` for 0/1 models, otherwise the class the column
    describes (``attention``: the positive class of two named ones, the predicted class of more). Coordinates are level-0 pixels of the slide as
    QuPath opens it: OpenSlide bounds offsets (MRXS) are subtracted and everything is clipped to the slide. The
    PNG draws ``column`` (default: the normalised attention when present, else the first column) over the
    thumbnail, titled with ``caption`` (e.g. ``LUSC (0.78)``) or else ``P(tumour) = probability``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir)  # left by an interrupted run
    store = SlideStore.open(store_path)
    scores = store.read_scores(model_name)
    names = list(store.group[f"scores/{model_name}"].attrs.get("columns", []))
    if len(names) != scores.shape[1]:
        names = [f"score_{i}" for i in range(scores.shape[1])]
    column = column or ("attention_normalized" if "attention_normalized" in names else names[0])
    if column not in names:
        raise ConfigError(f"{store.path}: scores/{model_name} has no column {column!r} (have: {', '.join(names)})")
    values = scores[:, names.index(column)]
    attrs = store.group[f"scores/{model_name}"].attrs
    region_class = dict(attrs.get("class_columns") or {}).get(column) or attrs.get("evidence_class") or "Tumor"
    coords = store.coords
    extent0 = float(store.tiling["extent0"])
    bx, by, bw, bh = store.slide["bounds"]
    tile0 = int(round(extent0))
    tissue = tissue_polygons(store)
    paths: dict[str, Path] = {}
    if "geojson" in formats:
        features = tile_features(coords, tile0, {n: scores[:, i] for i, n in enumerate(names)},
                                 offset=(bx, by), slide_size=(bw, bh))
        features += region_features(tissue, "Tissue", TISSUE_COLOR, name="Tissue", offset=(bx, by),
                                    slide_size=(bw, bh), locked=True)
        if threshold is not None:
            side0, stride0 = grid_geometry(store.tiling, store.slide["mpp"])
            colour = _class_colour(region_class, list(attrs.get("classes") or []))
            what = "High probability" if column.startswith("probability") else "High attention"
            for poly, stats in tumor_regions(coords, side0, values, threshold, stride=stride0,
                                             mpp=store.slide["mpp"]):
                features += region_features(poly, region_class, colour, name=what,
                                            measurements=stats, offset=(bx, by), slide_size=(bw, bh))
        paths["geojson"] = write_geojson(out_dir / f"{store.slide_id}.geojson", features, check=True,
                                         slide_size=(bw, bh))
    if "png" in formats:
        src = slide_path or store.slide["path"]
        override = mpp if mpp is not None else (
            store.slide["mpp"] if store.slide.get("mpp_source") == "override" else None)
        with open_slide(src, mpp=override, max_pixels=store.slide.get("max_pixels")) as slide:
            thumb = slide.thumbnail(1024)
            w0, h0 = slide.dimensions
        ds = (w0 / thumb.shape[1], h0 / thumb.shape[0])
        if caption is None and probability is not None:
            caption = f"P(tumour) = {probability:.3f}"
        elif caption is None and attrs.get("prediction"):  # multi-class scores drawn without their checkpoint
            caption = f"predicted {attrs['prediction']}"
        title = store.slide_id + (f" — {caption}" if caption else "")
        outlines = [np.asarray(r.coords) for p in tissue.geoms for r in [p.exterior, *p.interiors]]
        unit = (0.0, 1.0) if (column.endswith("normalized") or column.endswith("probability")
                              or column.startswith("probability_")) else (None, None)
        paths["heatmap"] = render_heatmap(thumb, ds, coords, extent0, values,
                                          out_dir / f"{store.slide_id}.heatmap.png", title=title,
                                          label=column.replace("_", " "), outlines=outlines,
                                          vmin=unit[0], vmax=unit[1])
    return paths


def _class_colour(name: str, classes: list[str]) -> tuple[int, int, int]:
    """Region colour: red for two-class (and unnamed) tumour regions, else the class's tab10 colour."""
    if len(classes) <= 2 or name not in classes:
        return (200, 0, 0)
    palette = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
    return palette[classes.index(name) % len(palette)]


def heatmap_batch(stores: list[Path], out_dir: str | os.PathLike, *, model_name: str | None = None,
                  checkpoint: str | os.PathLike | None = None, formats: tuple[str, ...] = ("geojson", "png"),
                  threshold: float | None = None, column: str | None = None,
                  reporter: Reporter | None = None) -> list[SlideOutcome]:
    """GeoJSON/PNG heatmaps for many stores, from stored ``scores/<model_name>``, or computed first from the
    stores' features with ``checkpoint`` (heatmaps from already-extracted features). Slides whose scores cannot
    be computed (features missing or damaged) come first among the outcomes, failed."""
    reporter = reporter or QuietReporter()
    remove_stale_temps(out_dir)  # left by an interrupted run
    probs: dict[str, float] = {}
    captions: dict[str, str | None] = {}
    failed: list[SlideOutcome] = []  # slides whose scores could not be computed: reported with the heatmaps'
    if checkpoint is not None:
        model_name = model_name or Path(checkpoint).name
        rows, outcomes = predict_stores(stores, checkpoint, model_name=model_name, reporter=reporter)
        classes = ClassSet(tuple(checkpoint_classes(checkpoint)))
        probs = {r["slide_id"]: r["calibrated_probability"] for r in rows if "calibrated_probability" in r}
        captions = {r["slide_id"]: row_caption(r, classes) for r in rows}
        failed = [o for o in outcomes if o.status == "failed"]
        stores = [p for p, o in zip(stores, outcomes) if o.status != "failed"]
    if not model_name:
        raise ConfigError("name the scores to draw with --model NAME (see scores/ in the stores), or pass "
                          "--checkpoint to compute them from the stores' features")

    def one(path: Path) -> dict:
        sid = path.name.removesuffix(".zarr")
        paths = write_slide_outputs(path, model_name, out_dir, probability=probs.get(sid), threshold=threshold,
                                    formats=formats, column=column, caption=captions.get(sid))
        return {k: str(v) for k, v in paths.items()}

    return failed + run_per_slide(stores, "heatmap", one, reporter, label=lambda p: p.name.removesuffix(".zarr"),
                                  path=str)
