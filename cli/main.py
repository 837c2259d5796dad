"""The ``slidestream`` command: parse arguments, call the library, show progress and summaries."""

from __future__ import annotations

import atexit
import json
import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from .. import __version__
from ..errors import SlidestreamError
from .progress import RichReporter

# Wide consoles when piped or logged, so a table row or an error stays on one line.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


def _fail(message: str, code: int = 1):
    err.print(f"[red]error:[/red] {message}")
    sys.exit(code)


class _Group(click.Group):
    """Turns our own errors into one clear line instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SlidestreamError as exc:
            _fail(str(exc))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="slidestream")
def main():
    """slidestream: whole-slide images → tiles → foundation-model features → MIL diagnosis → QuPath heatmaps.

    \b
    Typical session:
      slidestream info slides/*.svs                        what the slides are (size, µm/px, levels)
      slidestream tile slides/ --out stores/               tissue tiles at 0.5 µm/px, 224 px, into Zarr stores
      slidestream embed stores/ --encoder uni              features/<encoder> in every store
      slidestream train manifest.csv --stores stores/ --encoder uni --out model/
      slidestream run new_slides/ --model model/ --out results/   GeoJSON for QuPath, heatmaps, predictions.csv
      slidestream demo                                     all of the above, offline, on synthetic slides
    """


# ---------------------------------------------------------------------------------------------------- info
@main.command()
@click.argument("slides", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (a list of slide descriptions).")
@click.option("--mpp", type=float, default=None, help="Level-0 µm/px for slides that carry none.")
@click.option("--backend", type=click.Choice(["auto", "openslide", "tiffslide", "pil"]), default="auto",
              show_default=True, help="Reader to use.")
def info(slides, as_json, mpp, backend):
    """Show the properties of SLIDES (files, folders or globs).

    One row per slide; a file that cannot be opened gets one line saying why, and the exit status is 1.
    """
    from ..batch import collect_inputs
    from ..wsi.slide import open_slide

    items = collect_inputs(slides)
    described, failed = [], []
    for it in items:
        try:
            with open_slide(it.path, backend=backend, mpp=mpp) as slide:
                described.append(slide.describe())
        except SlidestreamError as exc:
            failed.append({"path": str(it.path), "error": str(exc), "type": type(exc).__name__})
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


# ---------------------------------------------------------------------------------------------------- synth
@main.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--dataset", is_flag=True, help="Write a CAMELYON16-like set (normal_001.svs, tumor_001.svs …, "
              "labels.csv, annotations/) into the folder OUT instead of one slide.")
@click.option("--normal", "n_normal", default=10, show_default=True, help="Dataset mode: slides without tumour.")
@click.option("--tumor", "n_tumor", default=10, show_default=True, help="Dataset mode: slides with tumour.")
@click.option("--width", default=8192, show_default=True, help="Level-0 width in pixels.")
@click.option("--height", default=8192, show_default=True, help="Level-0 height in pixels.")
@click.option("--mpp", default=0.25, show_default=True, help="Level-0 µm/px (0.25 = 40x, 0.5 = 20x).")
@click.option("--with-tumor/--no-tumor", default=False, help="Single slide: paint tumour regions.")
@click.option("--pen/--no-pen", default=False, help="Draw blue/green/black pen marks.")
@click.option("--seed", default=0, show_default=True, help="Same seed, same slide.")
def synth(out, dataset, n_normal, n_tumor, width, height, mpp, with_tumor, pen, seed):
    """Write synthetic H&E-like slides (Aperio SVS that OpenSlide and tiffslide read), with ground truth.

    Tumour outlines are written as ASAP XML and QuPath GeoJSON next to the slide.
    """
    from ..wsi.synth import SynthConfig, write_synthetic_dataset, write_synthetic_slide

    cfg = SynthConfig(width=width, height=height, mpp=mpp, tumor=with_tumor, pen_marks=pen, seed=seed)
    reporter = RichReporter(err)
    if dataset:
        n = n_normal + n_tumor
        with reporter.task(f"synthesise {n} slides", n) as t:
            labels = write_synthetic_dataset(out, n_normal, n_tumor, config=cfg, seed=seed,
                                             progress=lambda i, n_, name: t.update(i, n_))
        click.echo(f"wrote {n} slides and {labels}")
    else:
        if out.suffix.lower() not in (".svs", ".tif", ".tiff"):
            _fail(f"{out}: a single synthetic slide needs a .svs or .tif name (or pass --dataset for a folder)")
        res = write_synthetic_slide(out, cfg)
        click.echo(f"wrote {res.path} ({res.width}×{res.height} px at {res.mpp} µm/px)")
        for extra in (res.xml_path, res.geojson_path):
            if extra:
                click.echo(f"  ground truth: {extra}")


# ---------------------------------------------------------------------------------------------------- tile
def _tiling_options(f):
    opts = [
        click.option("--target-mpp", default=0.5, show_default=True,
                     help="µm/px of the tiles (0.5 ≈ 20x, 0.25 ≈ 40x); read from the best level, never upsampled."),
        click.option("--tile-size", default=224, show_default=True, help="Tile side in pixels."),
        click.option("--overlap", default=0, show_default=True, help="Overlap between tiles in pixels."),
        click.option("--min-tissue", default=0.5, show_default=True, help="Minimum tissue fraction of a kept tile."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _summary_table(title: str, outcomes, columns: list[str]) -> None:
    t = Table(title=title)
    t.add_column("slide")
    t.add_column("status")
    for c in columns:
        t.add_column(c, justify="right")
    t.add_column("time", justify="right")
    t.add_column("error", overflow="fold")
    colours = {"ok": "green", "skipped": "cyan", "failed": "red"}
    for o in outcomes:
        t.add_row(o.slide_id, f"[{colours[o.status]}]{o.status}[/]", *[str(o.details.get(c, "")) for c in columns],
                  f"{o.seconds:.1f}s", o.error or "")
    out.print(t)


def _exit_for(outcomes) -> None:
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        err.print(f"[red]{len(failed)} of {len(outcomes)} slide(s) failed[/red] (listed above)")
        sys.exit(1)


@main.command()
@click.argument("slides", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder of slide stores.")
@_tiling_options
@click.option("--mpp", type=float, default=None, help="Level-0 µm/px for slides that carry none.")
@click.option("--save-patches/--no-save-patches", default=True, show_default=True,
              help="Store RGB patches (otherwise only coordinates; embedding then reads the slide).")
@click.option("--workers", type=int, default=None,
              help="Local workers per slide: processes on Linux, threads elsewhere (default: CPU cores).")
@click.option("--stain", type=click.Choice(["none", "macenko", "reinhard", "vahadane"]), default="none",
              show_default=True, help="Normalise the stored patches (stain estimated once per slide).")
@click.option("--stain-reference", default="default", show_default=True,
              help="Target stain: an RGB image file, or 'default' (a standard H&E reference).")
@click.option("--scheduler", envvar="SLIDESTREAM_SCHEDULER", default=None,
              help="Address of a dask.distributed scheduler (tcp://host:8786) to run the batch on, one task per "
                   "slide, or 'local' for a local cluster on 127.0.0.1; the slides and --out must be on a file "
                   "system the workers share. Default: local workers.")
@click.option("--roi", type=click.Path(exists=True, path_type=Path), default=None,
              help="Only tile inside these regions: a QuPath GeoJSON / ASAP XML file for every slide, or a folder "
                   "of <slide_id>.geojson/.xml files.")
@click.option("--export-tissue", is_flag=True, help="Also write <slide_id>.tissue.geojson (QuPath class Tissue).")
@click.option("--overwrite", is_flag=True, help="Rebuild stores made from another slide or other parameters.")
def tile(slides, out, target_mpp, tile_size, overlap, min_tissue, mpp, save_patches, workers, stain,
         stain_reference, scheduler, roi, export_tissue, overwrite):
    """Segment tissue and cut SLIDES (files, folders, globs or a manifest CSV) into tiles in Zarr stores.

    Re-running finishes interrupted stores and skips complete ones.
    """
    # Before numpy loads: OpenBLAS would start a thread per core that spins ~0.1 s of CPU each, taken from the
    # tiler's own workers, and tiling makes no BLAS call worth a thread (an explicit user setting is kept).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from ..batch import collect_inputs
    from ..pipeline import tile_batch
    from ..tiling.grid import TilingParams

    params = TilingParams(mpp=target_mpp, tile_size=tile_size, overlap=overlap, min_tissue=min_tissue)
    outcomes = tile_batch(collect_inputs(slides, mpp=mpp), out, params, save_patches=save_patches,
                          overwrite=overwrite, workers=workers, scheduler=scheduler,
                          stain=None if stain == "none" else stain, stain_reference=stain_reference,
                          roi=roi, export_tissue=export_tissue, reporter=RichReporter(err))
    _summary_table("tiling", outcomes, ["tiles", "tissue_mm2", "action"])
    click.echo(f"run record: {out / 'run-tile.json'}")
    _exit_for(outcomes)


# ---------------------------------------------------------------------------------------------------- embed
def _stores_from(args) -> list[Path]:
    from ..pipeline import store_paths

    paths: list[Path] = []
    for a in args:
        p = Path(a)
        paths.extend([p] if p.suffix == ".zarr" else store_paths(p))
    if not paths:
        _fail(f"no slide stores (*.zarr) found in {' '.join(args)}")
    return paths


@main.command()
@click.argument("stores", nargs=-1, required=True)
@click.option("--encoder", default="handcrafted", show_default=True,
              help="Preset name (see `slidestream encoders`) or any timm model name.")
@click.option("--weights", default="hub", show_default=True,
              help="'hub' (download, gated models need a token), a local .safetensors/.pth file, or 'none' "
                   "(random init, marked in the store).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1 …")
@click.option("--batch-size", type=int, default=None, help="Forward batch (default: one store chunk).")
@click.option("--stain", type=click.Choice(["none", "macenko", "reinhard", "vahadane"]), default="none",
              show_default=True, help="Normalise tiles on the device before the encoder (stain estimated once per "
                                      "slide); for stores whose patches were not normalised at tiling.")
@click.option("--stain-reference", default="default", show_default=True,
              help="Target stain: an RGB image file, or 'default' (a standard H&E reference).")
@click.option("--overwrite", is_flag=True, help="Recompute existing features.")
@click.option("--scheduler", envvar="SLIDESTREAM_SCHEDULER", default=None,
              help="Address of a dask.distributed scheduler (tcp://host:8786), or 'local' for a local cluster on "
                   "127.0.0.1: one task per store/slide on the workers (shared file system). Default: this process.")
def embed(stores, encoder, weights, device, batch_size, stain, stain_reference, overwrite, scheduler):
    """Embed the tiles of STORES (store paths or folders of stores) into features/<encoder>."""
    from ..pipeline import embed_batch

    outcomes = embed_batch(_stores_from(stores), encoder, weights=weights, device=device, batch_size=batch_size,
                           overwrite=overwrite, stain=None if stain == "none" else stain,
                           stain_reference=stain_reference, scheduler=scheduler, reporter=RichReporter(err))
    _summary_table(f"embedding ({encoder})", outcomes, ["tiles", "patches_per_s"])
    _exit_for(outcomes)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable list.")
def encoders(as_json):
    """List the encoder presets: hub id, embedding dimension, input size, normalisation, licence."""
    from ..models import list_encoders_table

    rows = list_encoders_table()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    t = Table(title="encoder presets (any timm model name works too)")
    for c in ("name", "hub_id", "embed_dim", "input_size", "pooling", "dtype", "license"):
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*(str(r.get(c) if r.get(c) is not None else "-") for c in
                    ("name", "hub_id", "embed_dim", "input_size", "pooling", "dtype", "license")))
    out.print(t)


@main.command("export-features")
@click.argument("stores", nargs=-1, required=True)
@click.option("--encoder", required=True, help="Which features/<encoder> to export.")
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", default="h5,pt", show_default=True,
              help="Comma-separated: h5 (TRIDENT/CLAM-style features + coords + attrs), pt (a plain (N, D) tensor).")
@click.option("--layout", type=click.Choice(["flat", "clam"]), default="flat", show_default=True,
              help="flat: <out>/<slide>.h5 and .pt; clam: <out>/h5_files/ and <out>/pt_files/ as CLAM expects.")
def export_features(stores, encoder, out, fmt, layout):
    """Write the features of STORES as HDF5 and .pt bags, so other MIL code can use them."""
    from ..models.export import export_features as export_one
    from ..pipeline import run_per_slide

    formats = tuple(f.strip() for f in fmt.split(",") if f.strip())
    outcomes = run_per_slide(_stores_from(stores), "export", lambda p: {
        k: str(v) for k, v in export_one(p, encoder, out, formats, layout=layout).items()},
        RichReporter(err), label=lambda p: p.name.removesuffix(".zarr"), path=str)
    _summary_table("export", outcomes, list(formats))
    _exit_for(outcomes)


# ---------------------------------------------------------------------------------------------------- train
@main.command()
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--stores", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of embedded slide stores.")
@click.option("--encoder", required=True, help="Which features/<encoder> to train on.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Checkpoint folder to write.")
@click.option("--head", default="abmil", show_default=True, help="MIL head (abmil, clam_sb, clam_mb, transmil, "
              "dsmil, mean, max).")
@click.option("--folds", default=5, show_default=True, help="Stratified cross-validation folds.")
@click.option("--epochs", default=30, show_default=True)
@click.option("--lr", default=2e-4, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
def train(manifest, stores, encoder, out, head, folds, epochs, lr, seed, device):
    """Train a MIL head on labelled slides (MANIFEST: slide,label[,split] CSV); save the fold ensemble.

    Slides with split 'test' are left out. The checkpoint (safetensors + JSON) records the encoder and tiling,
    so `slidestream run --model` can process new slides the same way.
    """
    from ..batch import collect_inputs
    from ..mil import TrainConfig
    from ..pipeline import train_from_stores

    cfg = TrainConfig(head=head, epochs=epochs, lr=lr, seed=seed, device=device, patience=None)
    summary = train_from_stores(collect_inputs([manifest]), stores, encoder, out, cfg, folds=folds,
                                reporter=RichReporter(err))
    m = summary.cv_metrics
    click.echo(f"{summary.folds}-fold CV on {summary.n_slides} slides: out-of-fold AUC {m.get('auc', float('nan')):.3f} "
               f"(95% CI {m.get('auc_ci_low', float('nan')):.3f}–{m.get('auc_ci_high', float('nan')):.3f}); "
               f"temperature {summary.temperature:.3f}")
    click.echo(f"checkpoint: {summary.checkpoint}")


# ---------------------------------------------------------------------------------------------------- predict
@main.command()
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--stores", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of slide stores embedded with the checkpoint's encoder.")
@click.option("--model", "checkpoint", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--threshold", default=0.5, show_default=True, help="Decision threshold on calibrated probability.")
@click.option("--by", "stratify", default=None, help="Also report metrics per value of this manifest column "
              "(site, scanner …).")
def predict(manifest, stores, checkpoint, out, threshold, stratify):
    """Predict the slides of MANIFEST from their stores' features: predictions.csv, per-tile scores in the stores
    and, with labels, metrics.json (AUC + 95 % CI, balanced accuracy, sensitivity, specificity, Brier, ECE),
    roc.png and reliability.png."""
    from ..batch import collect_inputs
    from ..pipeline import predict_batch

    res = predict_batch(collect_inputs([manifest]), stores, checkpoint, out, threshold=threshold,
                        stratify=stratify, reporter=RichReporter(err))
    _print_predictions(res.rows)
    m = res.metrics
    if m:
        click.echo(f"AUC {m['auc']:.3f} (95% CI {m['auc_ci_low']:.3f}–{m['auc_ci_high']:.3f}), balanced accuracy "
                   f"{m['balanced_accuracy']:.3f}, sensitivity {m['sensitivity']:.3f}, specificity "
                   f"{m['specificity']:.3f}, Brier {m['brier']:.3f}, ECE {m['ece']:.3f}")
        for g, gm in (res.by_group or {}).items():
            click.echo(f"  {stratify}={g}: n {gm['n']}, AUC {gm['auc']:.3f}, balanced accuracy "
                       f"{gm['balanced_accuracy']:.3f}")
    click.echo(f"predictions: {res.predictions_csv}")
    _exit_for(res.outcomes)


# ---------------------------------------------------------------------------------------------------- run
@main.command()
@click.argument("slides", nargs=-1, required=True)
@click.option("--model", "checkpoint", required=True, type=click.Path(exists=True, path_type=Path),
              help="Checkpoint folder written by `slidestream train` or `slidestream demo`.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--weights", default="hub", show_default=True, help="Encoder weights: 'hub', a local file, or 'none'.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--mpp", type=float, default=None, help="Level-0 µm/px for slides that carry none.")
@click.option("--threshold", type=float, default=0.5, show_default=True,
              help="Normalised attention above which tiles are merged into 'High attention' regions.")
@click.option("--scheduler", envvar="SLIDESTREAM_SCHEDULER", default=None,
              help="Address of a dask.distributed scheduler (tcp://host:8786), or 'local' for a local cluster on "
                   "127.0.0.1: one task per store/slide on the workers (shared file system). Default: this process.")
def run(slides, checkpoint, out, weights, device, mpp, threshold, scheduler):
    """The whole inference path for new SLIDES: tile, embed with the checkpoint's encoder, predict, and write
    QuPath GeoJSON, PNG heatmaps and predictions.csv."""
    from ..batch import collect_inputs
    from ..pipeline import run_inference

    summary = run_inference(collect_inputs(slides, mpp=mpp), checkpoint, out, weights=weights, device=device,
                            threshold=threshold, scheduler=scheduler, reporter=RichReporter(err))
    _print_predictions(summary.rows)
    click.echo(f"predictions: {summary.predictions_csv}")
    for o in summary.failed:
        err.print(f"[red]✗[/red] {o.slide_id}: {o.error}")
    if summary.failed:
        sys.exit(1)


def _print_predictions(rows) -> None:
    t = Table(title="predictions")
    for c in ("slide", "P(tumour)", "calibrated", "spread", "tiles", "label"):
        t.add_column(c, justify="right" if c != "slide" else "left")
    for r in rows:
        t.add_row(r["slide_id"], f"{r['probability']:.3f}", f"{r['calibrated_probability']:.3f}",
                  f"{r['uncertainty']:.3f}", str(r["tiles"]), str(r.get("label", "")))
    out.print(t)


# ---------------------------------------------------------------------------------------------------- heatmap
@main.command()
@click.argument("stores", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--model", "model_name", default=None,
              help="Which scores/<NAME> of the stores to draw (written by `run`/`predict`).")
@click.option("--checkpoint", type=click.Path(exists=True, path_type=Path), default=None,
              help="Compute the scores first from the stores' features with this checkpoint.")
@click.option("--format", "fmt", type=click.Choice(["geojson", "png", "both"]), default="both", show_default=True)
@click.option("--threshold", type=float, default=None,
              help="Also write merged regions where the drawn score reaches this value (QuPath class Tumor).")
@click.option("--column", default=None, help="Score column to draw (default: normalised attention).")
def heatmap(stores, out, model_name, checkpoint, fmt, threshold, column):
    """QuPath GeoJSON (tiles with score measurements, tissue outline, regions) and PNG heatmaps for STORES."""
    from ..pipeline import heatmap_batch

    formats = ("geojson", "png") if fmt == "both" else (fmt,)
    outcomes = heatmap_batch(_stores_from(stores), out, model_name=model_name, checkpoint=checkpoint,
                             formats=formats, threshold=threshold, column=column, reporter=RichReporter(err))
    _summary_table("heatmaps", outcomes, list(formats if fmt != "both" else ("geojson", "heatmap")))
    _exit_for(outcomes)


# ---------------------------------------------------------------------------------------------------- status
@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def status(folder, as_json):
    """What FOLDER (a folder of stores) holds per slide, and what its run records say (counts, failures)."""
    from ..pipeline import folder_status

    st = folder_status(folder)
    if as_json:
        click.echo(json.dumps(st, indent=2, default=str))
        return
    t = Table(title=f"{len(st['stores'])} store(s) in {folder}")
    for c in ("slide", "tiles", "patches", "features", "scores", "status"):
        t.add_column(c, overflow="fold")
    for s in st["stores"]:
        if "error" in s:
            t.add_row(s["slide_id"], "", "", "", "", f"[red]{s['error']}[/red]")
            continue
        t.add_row(s["slide_id"], str(s["tiles"]), "yes" if s["patches"] else "no", ", ".join(s["features"]) or "-",
                  ", ".join(s["scores"]) or "-", ", ".join(f"{k}: {v}" for k, v in s["status"].items()))
    out.print(t)
    for stage, r in st["runs"].items():
        counts = ", ".join(f"{k} {v}" for k, v in r.get("counts", {}).items())
        out.print(f"run {stage}: {counts} (finished {r.get('finished')})")
        for f in r.get("failed", []):
            err.print(f"  [red]✗[/red] {f['slide_id']}: {f['error']}")


# ---------------------------------------------------------------------------------------------------- evaluate
@main.group()
def evaluate():
    """Benchmark metrics on prediction files (CAMELYON16 lesion FROC)."""


@evaluate.command("froc")
@click.option("--detections", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of <slide>.csv files with the official 'confidence,X,Y' rows (level-0 pixels).")
@click.option("--annotations", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of ground truth per tumour slide: ASAP XML, GeoJSON, NCRF JSON or <slide>_mask.tif. "
                   "A slide without a file is a normal slide.")
@click.option("--mpp", default=0.243, show_default=True, help="Level-0 µm/px of the slides (CAMELYON16: 0.243).")
@click.option("--json", "as_json", is_flag=True, help='Print {"sensitivity": {"0.25": …}, "froc": …} as JSON.')
def evaluate_froc(detections, annotations, mpp, as_json):
    """Lesion-level FROC exactly as the official CAMELYON16 evaluation computes it: the sensitivities at
    0.25, 0.5, 1, 2, 4 and 8 average false positives per slide, and their mean (the FROC score)."""
    from ..batch import strict_json
    from ..mil.froc import evaluate_froc_dirs, format_froc

    result = evaluate_froc_dirs(detections, annotations, mpp=mpp)
    if as_json:
        keep = {k: result[k] for k in ("sensitivity", "froc", "defined") if k in result}
        click.echo(json.dumps(strict_json(keep), indent=2))
    else:
        click.echo(format_froc(result))


# ---------------------------------------------------------------------------------------------------- demo
@main.command()
@click.option("--out", default="demo-output", show_default=True, type=click.Path(path_type=Path))
@click.option("--slides", "n_slides", default=40, show_default=True, help="Synthetic slides (half with tumour).")
@click.option("--encoder", default="handcrafted", show_default=True,
              help="Encoder; any timm name runs with random weights offline (and learns little).")
@click.option("--seed", default=0, show_default=True)
def demo(out, n_slides, encoder, seed):
    """Offline end-to-end demo on a synthetic CAMELYON-like set: tile, embed, train ABMIL, predict held-out
    slides, write GeoJSON, heatmaps, predictions and a report with the held-out slide AUC."""
    from ..demo import DemoConfig, run_demo

    cfg = DemoConfig(n_normal=n_slides // 2, n_tumor=n_slides - n_slides // 2, encoder=encoder, seed=seed)
    res = run_demo(out, cfg, reporter=RichReporter(err))
    _print_predictions(res.rows)
    _print_scores(res.test_auc, res.froc, len(res.rows))
    click.echo(f"total {res.seconds:.0f} s")
    click.echo("outputs:")
    for p in res.listed_outputs:
        click.echo(f"  {p}")
    click.echo(f"report: {res.report}")


def _print_scores(auc: dict, froc: dict | None, n: int) -> None:
    click.echo(f"held-out slide AUC: {auc['auc']:.3f} (95% CI {auc['auc_ci_low']:.3f}–{auc['auc_ci_high']:.3f}) "
               f"on {n} slides")
    if froc is not None:
        sens = "  ".join(f"{k} FP/slide: {v:.3f}" for k, v in froc["sensitivity"].items())
        click.echo(f"lesion FROC: {froc['froc']:.3f}  ({sens})")


# ---------------------------------------------------------------------------------------------------- bench
@main.command()
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Benchmark folder (resumable).")
@click.option("--encoder", default="handcrafted", show_default=True)
@click.option("--weights", default="hub", show_default=True, help="Encoder weights: 'hub', a local file, or 'none'.")
@click.option("--head", default="abmil", show_default=True)
@click.option("--folds", default=5, show_default=True)
@click.option("--epochs", default=30, show_default=True)
@click.option("--seed", default=0, show_default=True)
@_tiling_options
@click.option("--stain", type=click.Choice(["none", "macenko", "reinhard", "vahadane"]), default="none",
              show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--scheduler", envvar="SLIDESTREAM_SCHEDULER", default=None,
              help="Address of a dask.distributed scheduler (tcp://host:8786), or 'local' for a local cluster on "
                   "127.0.0.1, for the tiling and embedding stages.")
def bench(source, out, encoder, weights, head, folds, epochs, seed, target_mpp, tile_size, overlap, min_tissue,
          stain, device, scheduler):
    """CAMELYON16-style benchmark of SOURCE (a CAMELYON16 folder, a folder with manifest.csv/labels.csv, or a
    manifest): tile → embed → cross-validated MIL on the training slides → test-slide AUC with bootstrap CI and
    the official lesion FROC, ROC/FROC plots, bench.json and report.md. Rerunning after an interruption skips
    finished stages."""
    from ..benchmark import BenchConfig, run_benchmark
    from ..tiling.grid import TilingParams

    cfg = BenchConfig(encoder=encoder, weights=weights, head=head, folds=folds, epochs=epochs, seed=seed,
                      stain=None if stain == "none" else stain, device=device, scheduler=scheduler,
                      tiling=TilingParams(mpp=target_mpp, tile_size=tile_size, overlap=overlap,
                                          min_tissue=min_tissue))
    res = run_benchmark(source, out, cfg, reporter=RichReporter(err))
    _print_scores(res.auc, res.froc, res.metrics["n"])
    click.echo(f"report: {res.report}\nrecord: {res.record}")


def console() -> None:
    """The ``slidestream`` console command: :func:`main`, then an exit without the interpreter's teardown.

    Once a command has returned, every file it wrote is complete and closed, and what the interpreter does next,
    deallocating every module and object (zarr, dask, numpy, torch ...), costs ~70-100 ms of CPU for nothing:
    a twentieth of tiling a slide's worth of tiles. So, as mypy does, the process ends with ``os._exit`` once the
    parts of a normal exit that matter are done: the ``atexit`` handlers (logging, multiprocessing, temporary
    directories) and flushing stdout and stderr. An exception that escapes the command exits the normal way.
    """
    try:
        main()  # click's standalone mode: always ends in SystemExit
        code = 0
    except SystemExit as exc:
        code = exc.code
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing left to save
            pass
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    console()
