"""Commands that train and apply MIL models: ``train``, ``predict``, ``run``, ``heatmap``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ._common import (COUNT, DEVICE, DEVICE_OR_AUTO, FINITE, FRACTION, HEAD, MPP, OVERWRITE_HELP, POSITIVE, SEED,
                      TEXT, WEIGHTS, Number, classes_option, err, exit_for, max_pixels_option, out_folder,
                      overwrite_option, precision_option, print_predictions, reporter, scheduler_option, summary_table)

__all__ = ["heatmap", "predict", "run", "train"]


@click.command()
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--stores", required=True, type=click.Path(exists=True, path_type=Path),
              help="Folder of embedded slide stores.")
@click.option("--encoder", required=True, type=TEXT, help="Which features/<encoder> to train on.")
@out_folder("Checkpoint folder to write (model.safetensors + config.json).")
@click.option("--head", default="abmil", show_default=True, type=HEAD, help="MIL head (abmil, clam_sb, clam_mb, "
              "transmil, dsmil, mean_pool, max_pool).")
@click.option("--folds", default=5, show_default=True, type=Number(integer=True, minimum=2, maximum=100),
              help="Stratified cross-validation folds (slides of one manifest 'patient' share a fold).")
@click.option("--balance", type=click.Choice(["loss", "sampler", "none"]), default="loss", show_default=True,
              help="How class imbalance is countered. 'loss': each slide's whole training loss is weighted by "
                   "N / (K * N_class), normalised to mean 1 over the training slides. 'sampler': each epoch draws "
                   "slides with replacement, class-balanced (CLAM's weighted sampling). 'none': no balancing.")
@click.option("--epochs", default=30, show_default=True, type=COUNT, help="Training epochs per fold.")
@click.option("--lr", default=2e-4, show_default=True, type=POSITIVE, help="Learning rate (AdamW).")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Same seed, same folds and weights.")
@click.option("--device", default="auto", show_default=True, type=DEVICE_OR_AUTO,
              help="cpu, cuda, cuda:1 …, mps, or auto (CUDA when there is one).")
@precision_option(["auto", "float32", "bfloat16"], "the training")
@classes_option
@overwrite_option("Replace a checkpoint already in --out (by default any checkpoint there, even one slidestream "
                  "wrote, is left as it is and nothing is trained), and files there that slidestream did not write.")
def train(manifest, stores, encoder, out, head, folds, balance, epochs, lr, seed, device, precision, classes,
          overwrite):
    """Train a MIL head on labelled slides (MANIFEST: slide,label[,split,patient] CSV); save the fold ensemble.

    Labels are class indices (0, 1, 2 …) or class names (LUAD, LUSC …; see --classes); two or more classes. Slides
    with split 'test' are left out. The checkpoint (safetensors + JSON) records the classes, the encoder and the
    tiling, so `slidestream run --model` can process new slides the same way.
    """
    from ..pipeline.inputs import collect_inputs
    from ..mil import TrainConfig
    from ..pipeline.train import train_from_stores

    cfg = TrainConfig(head=head, epochs=epochs, lr=lr, seed=seed, device=device, patience=None, balance=balance,
                      precision=precision)
    summary = train_from_stores(collect_inputs([manifest]), stores, encoder, out, cfg, folds=folds,
                                reporter=reporter(), classes=classes, overwrite=overwrite)
    m, cs = summary.cv_metrics, summary.classes
    nan = float("nan")
    if cs is not None and not cs.binary:
        click.echo(f"{summary.folds}-fold CV on {summary.n_slides} slides, {cs.n} classes ({', '.join(cs.names)}): "
                   f"out-of-fold macro AUC {m.get('macro_auc_ovr', nan):.3f} (95% CI "
                   f"{m.get('macro_auc_ci_low', nan):.3f}–{m.get('macro_auc_ci_high', nan):.3f}), balanced accuracy "
                   f"{m.get('balanced_accuracy', nan):.3f}; temperature {summary.temperature:.3f}")
    else:
        click.echo(f"{summary.folds}-fold CV on {summary.n_slides} slides: out-of-fold AUC {m.get('auc', nan):.3f} "
                   f"(95% CI {m.get('auc_ci_low', nan):.3f}–{m.get('auc_ci_high', nan):.3f}); "
                   f"temperature {summary.temperature:.3f}")
        if cs is not None and not cs.is_index:
            click.echo(f"positive class: {cs.positive} ('probability' is P({cs.positive}); classes in order: "
                       f"{', '.join(cs.names)}; change the order with --classes)")
    click.echo(f"checkpoint: {summary.checkpoint}")
    for o in summary.failed:
        err.print(f"[red]✗[/red] {o.slide_id} (left out): {o.error}")
    if summary.failed:
        sys.exit(1)


@click.command()
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--stores", required=True, type=click.Path(exists=True, path_type=Path),
              help="Folder of slide stores embedded with the checkpoint's encoder.")
@click.option("--model", "checkpoint", required=True, type=click.Path(exists=True, path_type=Path),
              help="Checkpoint folder written by `slidestream train`.")
@out_folder("Folder for predictions.csv and, with labels, metrics.json and plots (roc.png, reliability.png; "
            "confusion.png for models of more than two classes).")
@click.option("--threshold", default=0.5, show_default=True, type=FRACTION,
              help="Decision threshold (0-1) on the calibrated probability of the positive class (two-class "
                   "models); models of more classes predict the most probable class.")
@click.option("--by", "stratify", default=None, type=TEXT, help="Also report metrics per value of this manifest "
              "column (site, scanner, split …).")
@overwrite_option(OVERWRITE_HELP)
def predict(manifest, stores, checkpoint, out, threshold, stratify, overwrite):
    """Predict the slides of MANIFEST from their stores' features: predictions.csv, per-tile scores in the stores
    and, with labels, metrics.json and plots.

    \b
    Two classes: AUC + 95 % CI, balanced accuracy, sensitivity, specificity, Brier, class-1 and top-label ECE;
    roc.png, reliability.png. More classes (checkpoint trained on named or 0/1/2… labels): columns prediction,
    confidence, prob_<class>, calibrated_prob_<class>; metrics macro and per-class one-vs-rest AUC + 95 % CI,
    accuracy, balanced accuracy, confusion matrix, Brier, top-label ECE; roc.png (one curve per class),
    confusion.png, reliability.png (top label). Labels must be classes of the checkpoint."""
    from ..pipeline.inputs import collect_inputs
    from ..pipeline.predict import predict_batch

    res = predict_batch(collect_inputs([manifest]), stores, checkpoint, out, threshold=threshold,
                        stratify=stratify, reporter=reporter(), overwrite=overwrite)
    print_predictions(res.rows, res.classes)
    m = res.metrics
    if m and "macro_auc_ovr" in m:
        click.echo(f"macro AUC {m['macro_auc_ovr']:.3f} (95% CI {m['macro_auc_ci_low']:.3f}–"
                   f"{m['macro_auc_ci_high']:.3f}), balanced accuracy {m['balanced_accuracy']:.3f}, accuracy "
                   f"{m['accuracy']:.3f}, Brier {m['brier']:.3f}, ECE top-label {m['ece_top_label']:.3f}")
        click.echo("per-class AUC: " + ", ".join(f"{k} {v['auc']:.3f}" for k, v in m["per_class"].items()))
        for g, gm in (res.by_group or {}).items():
            click.echo(f"  {stratify}={g}: n {gm['n']}, macro AUC {gm['macro_auc_ovr']:.3f}, balanced accuracy "
                       f"{gm['balanced_accuracy']:.3f}")
    elif m:
        click.echo(f"AUC {m['auc']:.3f} (95% CI {m['auc_ci_low']:.3f}–{m['auc_ci_high']:.3f}), balanced accuracy "
                   f"{m['balanced_accuracy']:.3f}, sensitivity {m['sensitivity']:.3f}, specificity "
                   f"{m['specificity']:.3f}, Brier {m['brier']:.3f}, ECE class 1 {m['ece_class1']:.3f}, ECE top-label "
                   f"{m['ece_top_label']:.3f}")
        for g, gm in (res.by_group or {}).items():
            click.echo(f"  {stratify}={g}: n {gm['n']}, AUC {gm['auc']:.3f}, balanced accuracy "
                       f"{gm['balanced_accuracy']:.3f}")
    click.echo(f"predictions: {res.predictions_csv}")
    exit_for(res.outcomes)


@click.command()
@click.argument("slides", nargs=-1, required=True)
@click.option("--model", "checkpoint", required=True, type=click.Path(exists=True, path_type=Path),
              help="Checkpoint folder written by `slidestream train` or `slidestream demo`.")
@out_folder("Output folder: <slide_id>.geojson, <slide_id>.heatmap.png, predictions.csv, stores/.")
@click.option("--weights", default="hub", show_default=True, type=WEIGHTS,
              help="Encoder weights: 'hub', a local file, or 'none'.")
@click.option("--device", default="cpu", show_default=True, type=DEVICE, help="cpu, cuda, cuda:1 … or mps.")
@click.option("--mpp", type=MPP, default=None, help="Level-0 µm/px for slides that carry none.")
@click.option("--threshold", type=FRACTION, default=0.5, show_default=True,
              help="Normalised attention (0-1) above which tiles are merged into 'High attention' regions (class "
                   "Tumor for 0/1 models, else the positive or predicted class).")
@scheduler_option()
@max_pixels_option
@overwrite_option(OVERWRITE_HELP + " Stores in OUT/stores are not rebuilt (that is `slidestream tile --overwrite`).")
def run(slides, checkpoint, out, weights, device, mpp, threshold, scheduler, max_pixels, overwrite):
    """The whole inference path for new SLIDES: tile, embed with the checkpoint's encoder, predict, and write
    QuPath GeoJSON, PNG heatmaps and predictions.csv (per-class columns and tile measurements for models of more
    than two classes, as `predict` and `heatmap` describe)."""
    from ..pipeline.inputs import collect_inputs
    from ..pipeline.run import run_inference

    summary = run_inference(collect_inputs(slides, mpp=mpp), checkpoint, out, weights=weights, device=device,
                            threshold=threshold, scheduler=scheduler, reporter=reporter(), max_pixels=max_pixels,
                            overwrite=overwrite)
    print_predictions(summary.rows, summary.classes)
    click.echo(f"predictions: {summary.predictions_csv}")
    for o in summary.failed:
        err.print(f"[red]✗[/red] {o.slide_id}: {o.error}")
    if summary.failed:
        sys.exit(1)


@click.command()
@click.argument("stores", nargs=-1, required=True)
@out_folder("Output folder: <slide_id>.geojson and <slide_id>.heatmap.png.")
@click.option("--model", "model_name", default=None, type=TEXT,
              help="Which scores/<NAME> of the stores to draw (written by `run`/`predict`).")
@click.option("--checkpoint", type=click.Path(exists=True, path_type=Path), default=None,
              help="Compute the scores first from the stores' features with this checkpoint.")
@click.option("--format", "fmt", type=click.Choice(["geojson", "png", "both"]), default="both", show_default=True,
              help="Which files to write.")
@click.option("--threshold", type=FINITE, default=None,
              help="Also write merged regions where the drawn score reaches this value (QuPath class Tumor for 0/1 "
                   "models; otherwise the class the column describes, or the positive/predicted class).")
@click.option("--column", default=None, type=TEXT,
              help="Score column to draw in the PNG and threshold for regions (default: attention_normalized). "
                   "Every column is a measurement of each tile in the GeoJSON. Models of more than two classes add "
                   "one column per class when the head has per-class tile scores: attention_<class> (clam_mb; "
                   "dsmil for every class but the first) or probability_<class> (mean, max); abmil, clam_sb and "
                   "transmil have one attention map for all classes.")
@overwrite_option(OVERWRITE_HELP)
def heatmap(stores, out, model_name, checkpoint, fmt, threshold, column, overwrite):
    """QuPath GeoJSON (tiles with score measurements, tissue outline, regions) and PNG heatmaps for STORES.

    In QuPath, Measure › Show measurement maps shows each measurement (attention, attention_normalized and, for
    multi-class models, one per class) over the tiles."""
    from ..pipeline.inputs import collect_stores
    from ..pipeline.outputs import heatmap_batch

    formats = ("geojson", "png") if fmt == "both" else (fmt,)
    outcomes = heatmap_batch(collect_stores(stores), out, model_name=model_name, checkpoint=checkpoint,
                             formats=formats, threshold=threshold, column=column, reporter=reporter(),
                             overwrite=overwrite)
    summary_table("heatmaps", outcomes, list(formats if fmt != "both" else ("geojson", "heatmap")))
    exit_for(outcomes)
