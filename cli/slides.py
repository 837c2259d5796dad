"""Commands on slide files: ``info``, ``synth``, ``tile``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
from rich.table import Table

from ..tiling.settings import KEEP_RULES, TISSUE_METHODS, TissueConfig
from ._common import (err, exit_for, fail, max_pixels_option, out, reporter, scheduler_option, stain_option,
                      stain_reference_option, summary_table, tiling_options)

__all__ = ["info", "synth", "tile"]


@click.command()
@click.argument("slides", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (a list of slide descriptions).")
@click.option("--mpp", type=float, default=None, help="Level-0 µm/px for slides that carry none.")
@click.option("--backend", type=click.Choice(["auto", "openslide", "tiffslide", "pil"]), default="auto",
              show_default=True, help="Reader to use.")
@max_pixels_option
def info(slides, as_json, mpp, backend, max_pixels):
    """Show the properties of SLIDES (files, folders or globs).

    One row per slide; a file that cannot be opened gets one line saying why, and the exit status is 1.
    """
    from ..pipeline.info import describe_slides
    from ..pipeline.inputs import collect_inputs

    described, failed = describe_slides(collect_inputs(slides), mpp=mpp, backend=backend, max_pixels=max_pixels)
    if as_json:
        click.echo(json.dumps({"slides": described, "failed": failed}, indent=2, default=str))
    else:
        if described:
            t = Table(title=f"{len(described)} slide(s)")
            for col in ("slide", "vendor", "backend", "size (w×h)", "levels", "downsamples", "µm/px", "objective",
                        "associated"):
                t.add_column(col, overflow="fold")
            for d in described:
                mpp_txt = (f"{d['mpp']:.4g} ({d['mpp_source']})" if d["mpp"] is not None
                           else "[yellow]unknown (pass --mpp)[/yellow]")
                t.add_row(Path(d["path"]).name, str(d["vendor"] or "-"), d["backend"],
                          "×".join(map(str, d["dimensions"])), str(d["level_count"]),
                          ", ".join(f"{lv['downsample']:.4g}" for lv in d["levels"]), mpp_txt,
                          f"{d['objective_power']:g}x" if d["objective_power"] else "-",
                          ", ".join(d["associated_images"]) or "-")
            out.print(t)
        for f in failed:
            err.print(f"[red]✗[/red] {f['error']}")
    if failed:
        sys.exit(1)


@click.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--dataset", is_flag=True, help="Write a labelled set into the folder OUT instead of one slide: "
              "normal_001.svs, tumor_001.svs …, labels.csv and annotations/, or with --preset camelyon16 the "
              "CAMELYON16 layout.")
@click.option("--preset", type=click.Choice(["camelyon16"]), default=None,
              help="Dataset mode: camelyon16 writes training/normal, training/tumor, training/lesion_annotations, "
                   "testing/images, testing/lesion_annotations, testing/reference.csv and truth.csv: lymph node "
                   "sections as generic tiled TIFF from two centres (0.243 and 0.226 µm/px), with macro-, "
                   "micro-metastases and isolated tumour cells in CAMELYON16 proportions, germinal centres and "
                   "sinus histiocytes that look like tumour, and artefacts.")
@click.option("--normal", "n_normal", type=int, default=None,
              help="Dataset mode: slides without tumour (training slides with --preset) [default: 10; 28 with "
                   "--preset camelyon16].")
@click.option("--tumor", "n_tumor", type=int, default=None,
              help="Dataset mode: slides with tumour (training slides with --preset) [default: 10; 20 with "
                   "--preset camelyon16].")
@click.option("--test-normal", type=int, default=None, help="--preset camelyon16: normal test slides [default: 22].")
@click.option("--test-tumor", type=int, default=None, help="--preset camelyon16: tumour test slides [default: 14].")
@click.option("--difficulty", type=click.FloatRange(0, 1), default=None,
              help="--preset camelyon16: 0-1, how often metastases are low-grade and look like germinal centres "
                   "and sinus histiocytes, how many of those look-alikes there are, how much stain varies, how small "
                   "micro-metastases are and how often artefacts occur [default: 0.5].")
@click.option("--slide-mm", type=(float, float), default=None, metavar="W H",
              help="--preset camelyon16: slide size in mm; pixels follow from each centre's pixel size "
                   "[default: 2.7 1.6; macro-metastases need more than 2 mm].")
@click.option("--lesion-mix", type=(float, float, float), default=None, metavar="MACRO MICRO ITC",
              help="--preset camelyon16: shares of tumour slides whose largest lesion is a macro-metastasis, a "
                   "micro-metastasis, isolated tumour cells [default: 0.5 0.4 0.1].")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="--preset camelyon16: slides written in parallel processes; default: CPU cores (the files do "
                   "not depend on it).")
@click.option("--width", default=8192, show_default=True, help="Level-0 width in pixels.")
@click.option("--height", default=8192, show_default=True, help="Level-0 height in pixels.")
@click.option("--mpp", default=0.25, show_default=True, help="Level-0 µm/px (0.25 = 40x, 0.5 = 20x).")
@click.option("--with-tumor/--no-tumor", default=False, help="Single slide: paint tumour regions.")
@click.option("--pen/--no-pen", default=False, help="Draw blue/green/black pen marks.")
@click.option("--seed", default=0, show_default=True, help="Same seed, same slide (same files, byte for byte).")
def synth(out, dataset, preset, n_normal, n_tumor, test_normal, test_tumor, difficulty, slide_mm, lesion_mix,
          workers, width, height, mpp, with_tumor, pen, seed):
    """Write synthetic H&E-like slides (Aperio SVS that OpenSlide and tiffslide read), with ground truth.

    Tumour outlines are written as ASAP XML and QuPath GeoJSON next to the slide. With --dataset --preset
    camelyon16, a benchmark set that is hard in the ways CAMELYON16 is (see --preset); truth.csv holds each slide's
    largest lesion class, tumour fraction, centre and artefacts.
    """
    from ..synth import SynthConfig, write_synthetic_dataset, write_synthetic_slide

    progress = reporter()
    if preset is not None:
        if not dataset:
            fail("--preset writes a data set: add --dataset")
        from ..synth.camelyon16 import Camelyon16Preset, write_camelyon16

        given = dict(n_train_normal=n_normal, n_train_tumor=n_tumor, n_test_normal=test_normal,
                     n_test_tumor=test_tumor, difficulty=difficulty, slide_mm=slide_mm, lesion_mix=lesion_mix)
        recipe = Camelyon16Preset(seed=seed, **{k: v for k, v in given.items() if v is not None})
        n = recipe.n_train_normal + recipe.n_train_tumor + recipe.n_test_normal + recipe.n_test_tumor
        with progress.task(f"synthesise {n} CAMELYON16-like slides", n) as t:
            truth = write_camelyon16(out, recipe, workers=workers, progress=lambda i, n_, name: t.update(i, n_))
        click.echo(f"wrote {n} slides, {out / 'testing' / 'reference.csv'} and {truth}")
        return
    cfg = SynthConfig(width=width, height=height, mpp=mpp, tumor=with_tumor, pen_marks=pen, seed=seed)
    if dataset:
        n_normal = 10 if n_normal is None else n_normal
        n_tumor = 10 if n_tumor is None else n_tumor
        n = n_normal + n_tumor
        with progress.task(f"synthesise {n} slides", n) as t:
            labels = write_synthetic_dataset(out, n_normal, n_tumor, config=cfg, seed=seed,
                                             progress=lambda i, n_, name: t.update(i, n_))
        click.echo(f"wrote {n} slides and {labels}")
    else:
        if out.suffix.lower() not in (".svs", ".tif", ".tiff"):
            fail(f"{out}: a single synthetic slide needs a .svs or .tif name (or pass --dataset for a folder)")
        res = write_synthetic_slide(out, cfg)
        click.echo(f"wrote {res.path} ({res.width}×{res.height} px at {res.mpp} µm/px)")
        for extra in (res.xml_path, res.geojson_path):
            if extra:
                click.echo(f"  ground truth: {extra}")


_TISSUE = TissueConfig()


def _tissue_options(f):
    """The tissue-detection options of ``tile`` (:class:`~slidestream.tiling.settings.TissueConfig`), the keep rule
    and the per-slide override table."""
    opts = [
        click.option("--keep-rule", type=click.Choice(list(KEEP_RULES)), default="fraction", show_default=True,
                     help="Which tiles are kept. fraction: tissue covers at least --min-tissue of the tile (TRIDENT's "
                     "--min_tissue_proportion; LazySlide's default is --min-tissue 0.7). clam-four-pt: CLAM's "
                     "default: one of 4 points a quarter in from the tile's corners lies in the tissue outline, and "
                     "the centre is not in a hole. any-tissue: the tile touches tissue at all (TRIDENT's default). "
                     "--min-tissue applies to fraction only."),
        click.option("--tissue-method", type=click.Choice(list(TISSUE_METHODS)), default=_TISSUE.method,
                     show_default=True, help="Tissue threshold on the blurred HSV saturation: 'otsu' per slide "
                     "(never below --tissue-threshold), or 'fixed' at --tissue-threshold."),
        click.option("--tissue-threshold", type=click.FloatRange(0, 1), default=_TISSUE.min_saturation,
                     show_default=True, help="Saturation (0-1) separating tissue from glass: the lowest threshold "
                     "Otsu may choose, or the threshold of --tissue-method fixed (CLAM's sthresh 8 is 0.031)."),
        click.option("--tissue-blur", type=click.FloatRange(0), default=_TISSUE.blur_sigma_um, show_default=True,
                     help="Gaussian blur of the saturation before thresholding, sigma in µm."),
        click.option("--tissue-closing", type=click.FloatRange(0), default=_TISSUE.close_um, show_default=True,
                     help="Morphological closing radius in µm: gaps and bays in the tissue narrower than about "
                     "twice this are filled (0: none)."),
        click.option("--tissue-min-area", type=click.FloatRange(0), default=_TISSUE.min_tissue_area_um2,
                     show_default=True, help="Tissue pieces smaller than this many µm² are dropped as debris "
                     "(1 mm² = 1,000,000 µm²)."),
        click.option("--tissue-min-hole-area", type=click.FloatRange(0), default=_TISSUE.min_hole_area_um2,
                     show_default=True, help="Holes in the tissue smaller than this many µm² are filled."),
        click.option("--tissue-holes/--no-tissue-holes", default=_TISSUE.keep_holes, show_default=True,
                     help="Keep holes (glass enclosed by tissue) out of the tissue; --no-tissue-holes fills them "
                     "all, so they count as tissue (TRIDENT's default)."),
        click.option("--pen-filter/--no-pen-filter", default=_TISSUE.pen_filter, show_default=True,
                     help="Remove blue, green and black marker ink from the tissue."),
        click.option("--tissue-overrides", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     default=None, help="CSV of per-slide settings for the slides where the defaults fail (like "
                     "CLAM's process list): a slide_id column, and any of the columns tissue-method, "
                     "tissue-threshold, tissue-blur, tissue-closing, tissue-min-area, tissue-min-hole-area, "
                     "tissue-holes, pen-filter, min-tissue, keep-rule; an empty cell keeps this run's value."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@click.command()
@click.argument("slides", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder of slide stores.")
@tiling_options
@_tissue_options
@click.option("--mpp", type=float, default=None, help="Level-0 µm/px for slides that carry none.")
@click.option("--save-patches/--no-save-patches", default=True, show_default=True,
              help="Store RGB patches (otherwise only coordinates; embedding then reads the slide).")
@click.option("--workers", type=int, default=None,
              help="Local workers per slide: processes on Linux, threads elsewhere (default: CPU cores).")
@stain_option("Normalise the stored patches (stain estimated once per slide).")
@stain_reference_option
@scheduler_option(
              help="Address of a dask.distributed scheduler (tcp://host:8786) to run the batch on, one task per "
                   "slide, or 'local' for a local cluster on 127.0.0.1; the slides and --out must be on a file "
                   "system the workers share. Default: local workers.")
@click.option("--roi", type=click.Path(exists=True, path_type=Path), default=None,
              help="Only tile inside these regions: a QuPath GeoJSON / ASAP XML file for every slide, or a folder "
                   "of <slide_id>.geojson/.xml files.")
@click.option("--export-tissue", is_flag=True, help="Also write <slide_id>.tissue.geojson (QuPath class Tissue).")
@click.option("--qc-images/--no-qc-images", default=True, show_default=True,
              help="Write OUT/qc/<slide_id>.jpg per slide: the thumbnail with the tissue outline (green), holes "
                   "(blue) and the kept tiles (red), as CLAM and TRIDENT do.")
@click.option("--dump-patches", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Also write the kept tiles as image files DIR/<slide_id>/<slide_id>_x<X>_y<Y>.png (X, Y: the "
                   "tile's level-0 top-left corner), like TRIDENT's --dump_patches; files already there are kept.")
@click.option("--dump-format", type=click.Choice(["png", "jpg"]), default="png", show_default=True,
              help="Format of --dump-patches files: png (lossless) or jpg (quality 90, faster, smaller).")
@click.option("--overwrite", is_flag=True, help="Rebuild stores made from another slide or other parameters.")
@max_pixels_option
def tile(slides, out, target_mpp, tile_size, overlap, min_tissue, keep_rule, tissue_method, tissue_threshold,
         tissue_blur, tissue_closing, tissue_min_area, tissue_min_hole_area, tissue_holes, pen_filter,
         tissue_overrides, mpp, save_patches, workers, stain, stain_reference, scheduler, roi, export_tissue,
         qc_images, dump_patches, dump_format, overwrite, max_pixels):
    """Segment tissue and cut SLIDES (files, folders, globs or a manifest CSV) into tiles in Zarr stores.

    Re-running finishes interrupted stores and skips complete ones.
    """
    # Before numpy loads: OpenBLAS would start a thread per core that spins for a while, taken from the
    # tiler's own workers, and tiling makes no BLAS call worth a thread (an explicit user setting is kept).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from ..pipeline.inputs import collect_inputs
    from ..pipeline.tile import tile_batch
    from ..tiling.grid import TilingParams

    params = TilingParams(mpp=target_mpp, tile_size=tile_size, overlap=overlap, min_tissue=min_tissue,
                          keep_rule=keep_rule)
    tissue = TissueConfig(method=tissue_method, min_saturation=tissue_threshold, blur_sigma_um=tissue_blur,
                          close_um=tissue_closing, min_tissue_area_um2=tissue_min_area,
                          min_hole_area_um2=tissue_min_hole_area, keep_holes=tissue_holes, pen_filter=pen_filter)
    outcomes = tile_batch(collect_inputs(slides, mpp=mpp), out, params, save_patches=save_patches,
                          overwrite=overwrite, workers=workers, scheduler=scheduler,
                          stain=stain, stain_reference=stain_reference,
                          roi=roi, export_tissue=export_tissue, reporter=reporter(), tissue=tissue,
                          tissue_overrides=tissue_overrides, qc_images=qc_images, dump_patches=dump_patches,
                          dump_format=dump_format, max_pixels=max_pixels)
    summary_table("tiling", outcomes, ["tiles", "tissue_mm2", "action"])
    click.echo(f"run record: {out / 'run-tile.json'}")
    exit_for(outcomes)
