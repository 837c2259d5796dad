"""Commands that measure and look: ``status``, ``evaluate froc``, ``bench``, ``demo``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.table import Table

from ._common import (BASELINE, COUNT, DEVICE, ENCODER, ENCODER_LIST, HEAD, HEAD_LIST, MPP, OVERWRITE_HELP, SEED,
                      SEED_LIST, TEXT, WEIGHTS, Number, classes_option, err, max_pixels_option, out, out_folder,
                      overwrite_option, precision_option, print_predictions, print_scores, reporter, scheduler_option,
                      stain_option, tiling_options)

__all__ = ["bench", "demo", "evaluate", "status"]


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@click.option("--verify", is_flag=True,
              help="Also read every chunk of every array of every store and check it (checksums, missing files); "
                   "names each damaged store, array and chunk with the command that repairs it, and exits with "
                   "status 1 when anything is damaged.")
def status(folder, as_json, verify):
    """What FOLDER (a folder of stores) holds per slide, and what its run records say (counts, failures)."""
    from ..pipeline.status import folder_status

    st = folder_status(folder, verify=verify, reporter=reporter() if verify else None)
    if as_json:
        click.echo(json.dumps(st, indent=2, default=str))
    else:
        _print_status(folder, st)
    if st.get("damaged"):
        err.print(f"[red]{len(st['damaged'])} of {len(st['stores'])} store(s) damaged[/red]: "
                  f"{', '.join(st['damaged'])}")
        sys.exit(1)


def _print_status(folder: Path, st: dict) -> None:
    t = Table(title=f"{len(st['stores'])} store(s) in {folder}")
    columns = ["slide", "tiles", "patches", "features", "scores", "status"] + (["verified"] if "damaged" in st else [])
    for c in columns:
        t.add_column(c, overflow="fold")
    for s in st["stores"]:
        check = s.get("verify")
        verified = []
        if check is not None:
            verified = [f"[green]ok[/green] ({check['chunks']} chunks)" if check["ok"]
                        else f"[red]damaged[/red] ({len(check['damage'])})"]
        if "error" in s:
            t.add_row(s["slide_id"], "", "", "", "", f"[red]{s['error']}[/red]", *verified)
            continue
        t.add_row(s["slide_id"], str(s["tiles"]), "yes" if s["patches"] else "no", ", ".join(s["features"]) or "-",
                  ", ".join(s["scores"]) or "-", ", ".join(f"{k}: {v}" for k, v in s["status"].items()), *verified)
    out.print(t)
    for s in st["stores"]:
        check = s.get("verify")
        if check is None:
            continue
        for d in check["damage"]:
            where = d["array"] + (f" chunk {d['chunk']}" if d["chunk"] is not None else "")
            err.print(f"  [red]✗[/red] {check['path']}: {where}: {d['problem']}")
        if check["damage"]:
            err.print(f"    to repair: {check['hint']}")
        if check["unprotected"]:
            err.print(f"  [yellow]![/yellow] {s['slide_id']}: no checksums in {', '.join(check['unprotected'])} "
                      "(a store from before schema 3): only missing and undecodable chunks can be found there; "
                      "`tile --overwrite` / `embed --overwrite` rewrite them with checksums")
    for stage, r in st["runs"].items():
        counts = ", ".join(f"{k} {v}" for k, v in r.get("counts", {}).items())
        out.print(f"run {stage}: {counts} (finished {r.get('finished')})")
        for f in r.get("failed", []):
            err.print(f"  [red]✗[/red] {f['slide_id']}: {f['error']}")


@click.group()
def evaluate():
    """Benchmark metrics on prediction files (CAMELYON16 lesion FROC)."""


@evaluate.command("froc")
@click.option("--detections", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of <slide>.csv files with the official 'confidence,X,Y' rows (level-0 pixels).")
@click.option("--annotations", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of ground truth per tumour slide: ASAP XML, GeoJSON, NCRF JSON or <slide>_mask.tif. "
                   "A slide without a file is a normal slide.")
@click.option("--mpp", default=0.243, show_default=True, type=MPP,
              help="Level-0 µm/px of the slides (CAMELYON16: 0.243).")
@click.option("--json", "as_json", is_flag=True, help='Print {"sensitivity": {"0.25": …}, "froc": …} as JSON.')
def evaluate_froc(detections, annotations, mpp, as_json):
    """Lesion-level FROC exactly as the official CAMELYON16 evaluation computes it: the sensitivities at
    0.25, 0.5, 1, 2, 4 and 8 average false positives per slide, and their mean (the FROC score)."""
    from ..fileio import strict_json
    from ..evaluation.froc_files import evaluate_froc_dirs, format_froc

    result = evaluate_froc_dirs(detections, annotations, mpp=mpp)
    if as_json:
        keep = {k: result[k] for k in ("sensitivity", "froc", "defined") if k in result}
        click.echo(json.dumps(strict_json(keep), indent=2))
    else:
        click.echo(format_froc(result))


@click.command()
@out_folder("Demo folder (resumable).", required=False, default="demo-output", show_default=True)
@click.option("--slides", "n_slides", type=Number(integer=True, minimum=8, maximum=10_000), default=None,
              help="Synthetic slides in all, split as the default set is (default: 46 CAMELYON16-like slides, 28 "
                   "for training and 18 for testing; 40 with --simple).")
@click.option("--encoder", default="handcrafted", show_default=True, type=ENCODER,
              help="Encoder; any timm name runs with random weights offline (and learns little).")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Same seed, same slides and numbers.")
@click.option("--simple", is_flag=True,
              help="The former demo: simple synthetic slides whose tumours are all large, one ABMIL head (its AUC "
                   "saturates: it only shows that the path works).")
@overwrite_option(OVERWRITE_HELP)
def demo(out, n_slides, encoder, seed, simple, overwrite):
    """Offline end-to-end demo on a small synthetic CAMELYON16-like set (macro- and micro-metastases, isolated
    tumour cells, tumour look-alikes, two scanners): tile, embed, train gated ABMIL and mean pooling on the same
    splits, predict the test slides, and write the leaderboard (slide AUC with CIs, AUC on micro-metastasis
    slides, lesion FROC), GeoJSON, heatmaps and report.html, with a one-line reading of the result."""
    from ..pipeline.demo import DemoConfig, run_demo

    if simple:
        n = n_slides or 40
        cfg = DemoConfig(preset=None, n_normal=n // 2, n_tumor=n - n // 2, encoder=encoder, seed=seed)
    else:
        cfg = DemoConfig(encoder=encoder, seed=seed)
        if n_slides is not None:
            counts = (cfg.n_normal, cfg.n_tumor, cfg.n_test_normal, cfg.n_test_tumor)
            scaled = [max(2, round(c * n_slides / sum(counts))) for c in counts]
            cfg.n_normal, cfg.n_tumor, cfg.n_test_normal, cfg.n_test_tumor = scaled
    res = run_demo(out, cfg, reporter=reporter(), overwrite=overwrite)
    if res.leaderboard:
        _print_leaderboard(res.leaderboard)
    print_predictions(res.rows)
    print_scores(res.test_auc, res.froc, len(res.rows))
    click.echo(f"total {res.seconds:.0f} s")
    click.echo("outputs:")
    for p in res.listed_outputs:
        click.echo(f"  {p}")
    click.echo(f"report: {res.report_html or res.report}")
    click.echo(click.style(res.reading, bold=True))


@click.command()
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@out_folder("Benchmark folder (resumable).")
@click.option("--encoder", default="handcrafted", show_default=True, type=ENCODER,
              help="Preset name (see `slidestream encoders`) or any timm model name.")
@click.option("--weights", default="hub", show_default=True, type=WEIGHTS,
              help="Encoder weights: 'hub', a local file, or 'none'.")
@click.option("--head", default="abmil", show_default=True, type=HEAD,
              help="MIL head (abmil, clam_sb, clam_mb, transmil, dsmil, mean_pool, max_pool).")
@click.option("--balance", type=click.Choice(["loss", "sampler", "none"]), default="loss", show_default=True,
              help="How class imbalance is countered. 'loss': each slide's whole training loss is weighted by "
                   "N / (K * N_class), normalised to mean 1 over the training slides. 'sampler': each epoch draws "
                   "slides with replacement, class-balanced (CLAM's weighted sampling). 'none': no balancing.")
@click.option("--folds", default=None, type=Number(integer=True, minimum=2, maximum=100),
              help="Cross-validation folds on the training slides; their models are the ensemble that predicts the "
                   "test slides. [default: 5; 3 for a leaderboard]")
@click.option("--epochs", default=None, type=COUNT,
              help="Training epochs per fold. [default: 30; 20 for a leaderboard]")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Same seed, same numbers.")
@tiling_options
@stain_option("Normalise the stored patches (stain estimated once per slide).")
@click.option("--device", default="cpu", show_default=True, type=DEVICE, help="cpu, cuda, cuda:1 … or mps.")
@precision_option(["auto", "float32", "bfloat16"], "the encoders and the MIL training")
@click.option("--froc-mpp", type=MPP, default=None,
              help="Level-0 µm/px at which the lesion FROC is evaluated (sets the 75 µm lesion growth and the 275 µm "
                   "ITC size in pixels). Default 0.243, the official CAMELYON16 value used for every slide whatever "
                   "its scanner; other values give FROCs not comparable with published ones. Recorded in "
                   "bench.json (froc.mpp).")
@scheduler_option(
              help="Address of a dask.distributed scheduler (tcp://host:8786), or 'local' for a local cluster on "
                   "127.0.0.1, for the tiling and embedding stages.")
@max_pixels_option
@click.option("--exclude", multiple=True, metavar="SLIDES", type=TEXT,
              help="Leave these slides out (slide ids or file names without extension; repeat the option or give a "
                   "comma list), e.g. --exclude test_114, the CAMELYON16 test slide with a known labelling problem. "
                   "Recorded in bench.json; leaving out test slides re-evaluates without retraining.")
@click.option("--heads", type=HEAD_LIST, default=None, metavar="LIST",
              help="Leaderboard: comma list of MIL heads, e.g. abmil,clam_sb,clam_mb,transmil,dsmil,mean_pool,max_pool "
                   "(or 'all'; mean and max for mean_pool and max_pool). Tiles once, embeds once per encoder, trains and evaluates every head on the same "
                   "splits and seeds and writes leaderboard.csv, bench.json, report.md and report.html; each "
                   "(encoder, head, seed) is kept under OUT/runs/ and reused when a rerun finds it finished.")
@click.option("--encoders", type=ENCODER_LIST, default=None, metavar="LIST",
              help="Leaderboard: comma list of encoders, e.g. handcrafted,resnet50-trunc. --weights applies to all "
                   "of them ('none': deep encoders with random weights).")
@click.option("--seeds", type=SEED_LIST, default=None, metavar="LIST",
              help="Leaderboard: comma list of training seeds, e.g. 0,1,2: every number is the mean over seeds, "
                   "with its standard deviation.")
@click.option("--baseline", default="mean_pool", show_default=True, type=BASELINE,
              help="Leaderboard: the head the others are compared with (paired bootstrap CI of the AUC difference, "
                   "overall and on micro-metastasis slides); 'none' for no comparison.")
@click.option("--heatmaps/--no-heatmaps", default=True, show_default=True,
              help="Leaderboard: GeoJSON and PNG heatmaps of the test slides for the best row, shown in report.html.")
@click.option("--jobs", type=Number(integer=True, minimum=1, maximum=1024), default=None,
              help="Leaderboard: heads trained at the same time, each in its own process on one thread (default: "
                   "the CPU cores; 1 trains in this process). The numbers do not depend on it.")
@click.option("--transmil-attention", type=click.Choice(["auto", "nystrom", "exact"]), default="nystrom",
              show_default=True,
              help="Leaderboard: attention of the transmil head, 'nystrom' (the reference's) by default. 'auto' "
                   "uses exact softmax attention when every bag (padded to TransMIL's square grid, plus its class "
                   "token) fits in the 256 Nyström landmarks, where Nyström only approximates that same attention at "
                   "about a hundred times the CPU cost. Recorded per run.")
@classes_option
@overwrite_option(OVERWRITE_HELP)
def bench(source, out, encoder, weights, head, balance, folds, epochs, seed, target_mpp, tile_size, overlap,
          min_tissue, stain, device, precision, froc_mpp, scheduler, max_pixels, exclude, heads, encoders, seeds,
          baseline, heatmaps, jobs, transmil_attention, classes, overwrite):
    """CAMELYON16-style benchmark of SOURCE (a CAMELYON16 folder, a folder with manifest.csv/labels.csv, or a
    manifest): tile → embed → cross-validated MIL on the training slides → test-slide AUC with bootstrap CI and
    the official lesion FROC, ROC/FROC plots, bench.json and report.md. Rerunning after an interruption skips
    finished stages. With --heads, --encoders or --seeds: a leaderboard of every (encoder, head) on the same
    slides (see --heads).

    Manifests with more than two classes (class names or 0/1/2… labels) get the macro and per-class one-vs-rest
    AUC, balanced accuracy and confusion.png instead; the lesion FROC, defined for tumour-vs-normal tasks, is then
    skipped (the report says so)."""
    from ..pipeline.bench import BenchConfig, run_benchmark
    from ..pipeline.classes import parse_classes_option
    from ..tiling.grid import TilingParams

    board = bool(heads or encoders or seeds)
    if board:
        from ..pipeline.leaderboard import LEADERBOARD_EPOCHS, LEADERBOARD_FOLDS
    cfg = BenchConfig(encoder=encoder, weights=weights, head=head, balance=balance,
                      folds=folds or (LEADERBOARD_FOLDS if board else 5),
                      epochs=epochs or (LEADERBOARD_EPOCHS if board else 30),
                      seed=seed, stain=stain, device=device, scheduler=scheduler, precision=precision,
                      classes=None if classes is None else tuple(map(str, parse_classes_option(classes))),
                      **({} if froc_mpp is None else {"froc_mpp": froc_mpp}),
                      exclude=tuple(n for value in exclude for n in value.split(",") if n.strip()),
                      tiling=TilingParams(mpp=target_mpp, tile_size=tile_size, overlap=overlap,
                                          min_tissue=min_tissue))
    if board:
        from ..pipeline.leaderboard import DEFAULT_HEADS, LeaderboardConfig, run_leaderboard

        lb = LeaderboardConfig(bench=cfg, encoders=tuple(encoders or [encoder]),
                               heads=DEFAULT_HEADS if heads == ["all"] else tuple(heads or [head]),
                               seeds=tuple(seeds or [seed]), baseline=None if baseline == "none" else baseline,
                               heatmaps=heatmaps, workers=jobs, transmil_attention=transmil_attention)
        res = run_leaderboard(source, out, lb, reporter=reporter(), max_pixels=max_pixels, overwrite=overwrite)
        _print_leaderboard(res.rows)
        click.echo(res.summary)
        click.echo(f"table: {res.leaderboard_csv}\nreport: {res.report_html}\nrecord: {res.record}")
        click.echo(f"total {res.seconds:.0f} s ({len(res.trained)} run(s) trained, {len(res.computed)} evaluated, "
                   f"{len(res.reused)} reused)")
        return
    res = run_benchmark(source, out, cfg, reporter=reporter(), max_pixels=max_pixels, overwrite=overwrite)
    print_scores(res.auc, res.froc, res.metrics["n"], res.classes, res.metrics)
    if res.froc_skipped:
        click.echo(f"lesion FROC not computed: {res.froc_skipped}")
    click.echo(f"report: {res.report}\nrecord: {res.record}")


def _print_leaderboard(rows: list[dict]) -> None:
    def f(v, d=3):
        return "n/a" if v is None or v != v else f"{v:.{d}f}"

    t = Table(title="leaderboard (test slides)")
    for c in ("#", "encoder", "head", "AUC [95% CI]", "FROC", "bal. acc.", "ECE", "AUC micro [95% CI]",
              "Δ micro vs base", "train s"):
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(str(r["rank"]), r["encoder"], r["head"], f"{f(r['auc'])} [{f(r['auc_ci_low'])}–{f(r['auc_ci_high'])}]",
                  f(r["froc"]), f(r["balanced_accuracy"]), f(r["ece_class1"]),
                  f"{f(r['auc_micro'])} [{f(r['auc_micro_ci_low'])}–{f(r['auc_micro_ci_high'])}]",
                  f(r["delta_auc_micro_vs_baseline"]), f(r["train_seconds"], 1))
    out.print(t)
