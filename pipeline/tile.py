"""The tiling stage over a batch: every slide into ``<out>/<slide_id>.zarr``, locally or on a cluster."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..fileio import OutputGuard, output_folder, protect_inputs, remove_stale_temps
from ..tiling.grid import TilingParams
from ..tiling.tissue import TissueConfig
from .cluster import where_am_i
from .inputs import SlideInput, adopt_existing_stores
from .records import SlideOutcome, slide_lock
from .reporting import QuietReporter, Reporter
from .runner import run_stage

__all__ = ["make_normalizer", "tile_batch", "tile_slide_job"]


def make_normalizer(method: str | None, reference: str | os.PathLike | None = None):
    """A stain normaliser fitted to ``reference`` (an RGB image file; None or "default": the built-in H&E
    reference), or None when ``method`` is None or "none"."""
    if method is None or method.lower() == "none":
        return None
    from PIL import Image

    from ..stain import get_normalizer  # torch: only when a stain is asked for

    norm = get_normalizer(method)
    if reference not in (None, "default"):
        try:
            with Image.open(reference) as im:
                norm.fit(np.asarray(im.convert("RGB")))
        except OSError as exc:
            raise ConfigError(f"{reference}: cannot read the stain reference image ({exc})") from exc
    return norm


def tile_batch(
    inputs: list[SlideInput],
    out_dir: str | os.PathLike,
    params: TilingParams,
    *,
    save_patches: bool = True,
    overwrite: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    stain: str | None = None,
    stain_reference: str | None = None,
    roi: str | os.PathLike | None = None,
    export_tissue: bool = False,
    reporter: Reporter | None = None,
    tissue: TissueConfig | None = None,
    tissue_overrides: str | os.PathLike | None = None,
    qc_images: bool = True,
    dump_patches: str | os.PathLike | None = None,
    dump_format: str = "png",
    max_pixels: int | None = None,
) -> list[SlideOutcome]:
    """Tile every slide into ``<out_dir>/<slide_id>.zarr``; writes ``run-tile.json``.

    ``tissue`` sets how tissue is segmented; ``tissue_overrides`` (a CSV, see
    :mod:`slidestream.pipeline.tissue_overrides`) changes it, the keep rule or ``min_tissue`` for single slides.
    ``qc_images`` writes ``<out_dir>/qc/<slide_id>.jpg`` (thumbnail, tissue outline, holes, kept tiles) for every
    slide tiled, or missing; ``dump_patches`` writes the kept tiles as
    ``<dump_patches>/<slide_id>/<slide_id>_x<X>_y<Y>`` images in ``dump_format`` ("png" or "jpg"), skipping files
    already there.

    ``roi`` restricts tiling to annotated regions: one annotation file for every slide, or a folder holding
    ``<slide_id>.geojson``/``.xml``/``.json`` per slide (slides without one are tiled whole). ``export_tissue``
    writes each slide's tissue outline as ``<slide_id>.tissue.geojson`` for QuPath.

    ``stain`` ("macenko", "reinhard", "vahadane" or None) normalises the stored patches, fitted per slide;
    ``scheduler`` (an address, or "local") runs the batch on a ``dask.distributed`` cluster, one task per slide.
    ``max_pixels`` is the pixel budget slides are opened with (:func:`slidestream.wsi.open_slide`; None: the
    default): files claiming more are refused, each alone.

    Slides whose store exists under an id of an earlier version keep that id (:func:`adopt_existing_stores`;
    ``inputs`` are updated in place), and temporary files left in ``out_dir`` by an interrupted run are removed.

    ``overwrite`` rebuilds stores made from another slide or with other parameters, and lets the QC images, tissue
    GeoJSON and run record replace files of those names that slidestream did not write (refused otherwise, per
    slide). The slides, ROI and override files are never written.
    """
    reporter = reporter or QuietReporter()
    out_dir = output_folder(out_dir)
    protect_inputs([*(p for it in inputs for p in (it.path, it.annotation)), tissue_overrides,
                    *([roi] if roi is not None and Path(roi).is_file() else [])])
    adopt_existing_stores(inputs, out_dir)
    remove_stale_temps(out_dir)

    def roi_for(it: SlideInput):
        if roi is None:
            return None
        from ..tiling.regions import roi_from_file

        path = Path(roi)
        if path.is_dir():
            found = [path / f"{it.slide_id}{ext}" for ext in (".geojson", ".geojson.gz", ".xml", ".json")]
            found = [f for f in found if f.is_file()]
            return roi_from_file(found[0]) if found else None
        return roi_from_file(path)

    tissue = tissue or TissueConfig()
    overrides = {}
    if tissue_overrides is not None:
        from .tissue_overrides import read_tissue_overrides

        overrides = read_tissue_overrides(tissue_overrides, params, tissue)
        names = {it.slide_id for it in inputs} | {Path(it.path).name for it in inputs}
        used = {id(row) for key, row in overrides.items() if key in names}
        unused = sorted({key for key, row in overrides.items() if id(row) not in used})
        if unused:
            # a table for a whole cohort may be used on part of it: say so, but go on
            reporter.log(f"[yellow]{tissue_overrides}: {len({id(overrides[k]) for k in unused})} row(s) name no "
                         f"slide of this batch ({', '.join(unused[:5])}{' ...' if len(unused) > 5 else ''})"
                         "[/yellow]")

    def settings(it: SlideInput):
        """(params, per-slide options) of a slide: the run's, changed by its override row."""
        row = overrides.get(it.slide_id) or overrides.get(Path(it.path).name)
        if row is None:
            return params, {**options, "tissue_config": tissue}
        return row.params, {**options, "tissue_config": row.tissue, "tissue_overrides": row.overrides}

    options = {"save_patches": save_patches, "overwrite": overwrite, "stain": stain,
               "stain_reference": stain_reference, "export_tissue": export_tissue, "qc_images": qc_images,
               "dump_patches": str(Path(dump_patches).resolve()) if dump_patches is not None else None,
               "dump_format": dump_format, "max_pixels": max_pixels}
    record_params = {**params.to_dict(), "save_patches": save_patches, "stain": stain,
                     "stain_reference": stain_reference, "scheduler": scheduler, "roi": str(roi) if roi else None,
                     "tissue": tissue.to_dict(),
                     "tissue_overrides": str(tissue_overrides) if tissue_overrides else None,
                     "qc_images": qc_images, "dump_patches": options["dump_patches"], "dump_format": dump_format}
    if scheduler:
        out_dir = out_dir.resolve()
    # The first slide's tissue is segmented by a forked helper while this process imports the store and the tiler
    # (Zarr, Dask), which is why those are imported where they are used: with several workers, start-up is shorter.
    early = None
    if not scheduler and inputs and (overwrite or not (out_dir / f"{inputs[0].slide_id}.zarr").exists()):
        from ..tiling.overview import start_tissue_mask

        first_params, first_options = settings(inputs[0])
        early = start_tissue_mask(inputs[0].path, first_params, mpp=inputs[0].mpp,
                                  config=first_options["tissue_config"], workers=workers, max_pixels=max_pixels)

    def one(it: SlideInput) -> dict:
        it_params, it_options = settings(it)
        with reporter.task(f"tile {it.slide_id}", None) as t:
            return tile_slide_job(it.path, out_dir, it_params, it.slide_id, it.mpp, roi_for(it), workers, it_options,
                                  progress=lambda d, n: t.update(d, n), tissue=early if it is inputs[0] else None)

    try:
        return run_stage(inputs, "tile", one, reporter=reporter, scheduler=scheduler, cluster_job=tile_slide_job,
                         cluster_args=lambda it: (str(Path(it.path).resolve()), str(out_dir), settings(it)[0],
                                                  it.slide_id, it.mpp, roi_for(it), workers or 1, settings(it)[1]),
                         record_dir=out_dir, params=record_params, guard=OutputGuard(overwrite))
    finally:
        if early is not None:
            early.close()


def tile_slide_job(slide_path: str | os.PathLike, out_dir: str | os.PathLike, params: TilingParams, slide_id: str,
                   mpp: float | None, roi, workers: int | None, options: dict, progress=None, tissue=None) -> dict:
    """Tile one slide under its lock: the unit of work of :func:`tile_batch`, locally or on a cluster worker.

    Parameters
    ----------
    slide_path, out_dir : path
        As seen by the process running the job (on a cluster: the worker's file system).
    params : TilingParams
    slide_id : str
    mpp : float or None
        Level-0 µm/px override.
    roi : shapely geometry or None
        Region of interest in level-0 pixels.
    workers : int or None
        Local workers inside this job (processes on Linux, else threads).
    options : dict
        ``save_patches``, ``overwrite``, ``stain``, ``stain_reference``, ``export_tissue``, ``qc_images``,
        ``dump_patches``, ``dump_format``, ``max_pixels`` of :func:`tile_batch`; ``tissue_config`` (TissueConfig,
        optional) and ``tissue_overrides`` (the override row applied, for the record).
    tissue : EarlyTissue, optional
        The slide's tissue mask being computed by a helper process (see :func:`tile_slide`).

    Returns
    -------
    dict
        Outcome details: ``tiles``, ``tissue_mm2``, ``action``, ``chunks_written``, ``store``, ``worker``,
        ``qc_image`` (its path, when written or already there), ``tissue_overrides`` (when the slide had a row),
        ``patch_images`` and ``patch_images_written`` (with ``dump_patches``), and the private
        ``_status``/``_seconds`` keys read by the batch runners.
    """
    from ..tiling.tiler import tile_slide  # Zarr and Dask: see tile_batch

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    # built here, on the machine running the job: a cluster worker records what it writes in the same ledgers
    guard = OutputGuard(options["overwrite"])
    with slide_lock(out_dir, slide_id):
        res = tile_slide(slide_path, out_dir, params, mpp=mpp, save_patches=options["save_patches"],
                                     overwrite=options["overwrite"], workers=workers,
                                     stain=make_normalizer(options["stain"], options["stain_reference"]), roi=roi,
                                     slide_id=slide_id, progress=progress, tissue=tissue,
                                     tissue_config=options.get("tissue_config"),
                                     max_pixels=options.get("max_pixels"))
        if options["export_tissue"]:
            from ..tiling.regions import write_tissue_geojson

            tissue_path = out_dir / f"{slide_id}.tissue.geojson"
            if res.action != "up-to-date" or not tissue_path.is_file():
                with guard.writing(tissue_path) as target:
                    write_tissue_geojson(res.store, target)
        extras = {}
        if options.get("tissue_overrides"):
            extras["tissue_overrides"] = options["tissue_overrides"]
        if options.get("qc_images", False):
            from .tile_qc import qc_image_path, write_qc_image

            qc_path = qc_image_path(out_dir, slide_id)
            if res.action != "up-to-date" or not qc_path.is_file():
                with guard.writing(qc_path) as target:
                    write_qc_image(res.store, slide_path, target, mpp=mpp)
            extras["qc_image"] = str(qc_path)
        if options.get("dump_patches"):
            from ..tiling.dump import dump_patches

            dumped = dump_patches(res.store, options["dump_patches"], slide_path=slide_path, mpp=mpp,
                                  fmt=options.get("dump_format", "png"), workers=workers)
            extras.update(patch_images=str(dumped.folder), patch_images_written=dumped.written)
    return {"tiles": res.n_tiles, "tissue_mm2": round(res.tissue_area_mm2, 3), "action": res.action,
            "chunks_written": res.chunks_written, "store": str(res.store), "worker": where_am_i(), **extras,
            "_status": "skipped" if res.action == "up-to-date" else "ok", "_seconds": time.perf_counter() - t0}
