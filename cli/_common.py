"""What the commands share: consoles, the options several commands take, and the tables they print."""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.table import Table

from .progress import RichReporter

# Wide consoles when piped or logged, so a table row or an error stays on one line.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

STAIN_METHODS = ("none", "macenko", "reinhard", "vahadane")


def reporter() -> RichReporter:
    """Progress bars on stderr."""
    return RichReporter(err)


def fail(message: str, code: int = 1):
    """Print one red error line and exit with ``code``."""
    err.print(f"[red]error:[/red] {message}")
    sys.exit(code)


def _none_for_none(ctx, param, value):
    return None if value == "none" else value


def stain_option(help: str):
    """``--stain METHOD``; "none" reaches the library as None."""
    return click.option("--stain", type=click.Choice(STAIN_METHODS), default="none", show_default=True,
                        callback=_none_for_none, help=help)


def stain_reference_option(f):
    return click.option("--stain-reference", default="default", show_default=True,
                        help="Target stain: an RGB image file, or 'default' (a standard H&E reference).")(f)


def scheduler_option(help: str = "Address of a dask.distributed scheduler (tcp://host:8786), or 'local' for a "
                                 "local cluster on 127.0.0.1: one task per store/slide on the workers (shared file "
                                 "system). Default: this process."):
    return click.option("--scheduler", envvar="SLIDESTREAM_SCHEDULER", default=None, help=help)


def _pixel_count(ctx, param, value):
    if value is None:
        return None
    try:
        number = float(str(value).replace("_", ""))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number of pixels (e.g. 5e8 or 500000000)") from None
    if not number >= 1 or number != int(number):
        raise click.BadParameter(f"{value!r} is not a positive whole number of pixels")
    return int(number)


def max_pixels_option(f):
    """``--max-pixels N``: the pixel budget slides are opened with (None: the library default)."""
    return click.option(
        "--max-pixels", default=None, callback=_pixel_count, metavar="N",
        help="Pixel budget per slide (default 268435456 = 2^28): refuse, before decoding anything, files that claim "
             "a stored tile, strip or plain image of more pixels (decompression bombs), images larger than "
             "max(N, 2^38) pixels, or that have no pyramid level of at most N pixels for overviews. Raise it for a "
             "genuine slide refused as too large (e.g. --max-pixels 2e9); 5e8 or 500_000_000 are accepted.")(f)


def tiling_options(f):
    """``--target-mpp``, ``--tile-size``, ``--overlap``, ``--min-tissue``."""
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


def summary_table(title: str, outcomes, columns: list[str]) -> None:
    """One row per slide: status, the given detail columns, time and error."""
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


def exit_for(outcomes) -> None:
    """Exit with status 1 when a slide failed."""
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        err.print(f"[red]{len(failed)} of {len(outcomes)} slide(s) failed[/red] (listed above)")
        sys.exit(1)


def print_predictions(rows, classes=None) -> None:
    """One row per slide: the positive class's probability for two classes (``P(tumour)`` for 0/1 labels), or
    the predicted class, its calibrated probability and every class's for more (``classes``: a ClassSet)."""
    t = Table(title="predictions")
    multi = classes is not None and not classes.binary
    if multi:
        heads = ["slide", "prediction", "confidence", "spread", *[f"P({n})" for n in classes.names], "tiles", "label"]
    else:
        positive = "tumour" if classes is None or classes.is_index else classes.positive
        heads = ["slide", f"P({positive})", "calibrated", "spread", "tiles", "label"]
    for c in heads:
        t.add_column(c, justify="right" if c not in ("slide", "prediction") else "left")
    for r in rows:
        if multi:
            t.add_row(r["slide_id"], str(r["prediction"]), f"{r['confidence']:.3f}", f"{r['uncertainty']:.3f}",
                      *[f"{r[f'calibrated_prob_{n}']:.3f}" for n in classes.names], str(r["tiles"]),
                      str(r.get("label", "")))
        else:
            t.add_row(r["slide_id"], f"{r['probability']:.3f}", f"{r['calibrated_probability']:.3f}",
                      f"{r['uncertainty']:.3f}", str(r["tiles"]), str(r.get("label", "")))
    out.print(t)


def classes_option(f):
    """``--classes A,B,C``: the order of named classes."""
    return click.option(
        "--classes", default=None, metavar="A,B,…",
        help="Order of the class names of the manifest's 'label' column, comma-separated (e.g. LUAD,LUSC,MESO). "
             "Default: the names sorted; integer labels (0, 1, 2 …) are their own order. With two classes the "
             "second is the positive one: 'probability' is P(second class). Sorted, Metastasis,Normal would make "
             "Normal positive, so give --classes Normal,Metastasis. Every label must be one of them; the order "
             "is saved in the checkpoint and names the prediction columns (prob_<class> for more than two).")(f)


def print_scores(auc: dict, froc: dict | None, n: int, classes=None, metrics: dict | None = None) -> None:
    if classes is not None and not classes.binary:
        m = metrics or {}
        click.echo(f"held-out macro one-vs-rest AUC: {auc['auc']:.3f} (95% CI {auc['auc_ci_low']:.3f}–"
                   f"{auc['auc_ci_high']:.3f}) on {n} slides, {classes.n} classes; balanced accuracy "
                   f"{m.get('balanced_accuracy', float('nan')):.3f}")
        per = m.get("per_class", {})
        if per:
            click.echo("per-class AUC: " + ", ".join(f"{k} {v['auc']:.3f}" for k, v in per.items()))
    else:
        click.echo(f"held-out slide AUC: {auc['auc']:.3f} (95% CI {auc['auc_ci_low']:.3f}–{auc['auc_ci_high']:.3f}) "
                   f"on {n} slides")
    if froc is not None:
        sens = "  ".join(f"{k} FP/slide: {v:.3f}" for k, v in froc["sensitivity"].items())
        click.echo(f"lesion FROC: {froc['froc']:.3f}  ({sens})")
