"""What the commands share: consoles, the options several commands take, and the tables they print."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from .progress import RichReporter

# Wide consoles when piped or logged, so a table row or an error stays on one line.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

STAIN_METHODS = ("none", "macenko", "reinhard", "vahadane")


# ------------------------------------------------------------------------------------------------ value types
# Every option value is checked here, at the door, so a bad one ends in click's usage error naming the option
# (exit status 2) before any work; the library checks again for its own callers.


class Number(click.ParamType):
    """A finite number (NaN and infinities refused), optionally a whole one, within bounds.

    Parameters
    ----------
    integer : bool
        Whole numbers only (``1_000`` accepted; ``2.5`` refused).
    minimum, maximum : float, optional
        Bounds, inclusive unless ``open_min``.
    open_min : bool
        The minimum itself is refused (``> 0`` rather than ``>= 0``).
    """

    def __init__(self, *, integer: bool = False, minimum: float | None = None, maximum: float | None = None,
                 open_min: bool = False):
        self.integer = integer
        self.minimum, self.maximum, self.open_min = minimum, maximum, open_min
        self.name = "integer" if integer else "number"

    def _bounds(self) -> str:
        fmt = (lambda v: f"{int(v):,}") if self.integer else (lambda v: f"{v:g}")  # noqa: E731
        lo = None if self.minimum is None else (f"> {fmt(self.minimum)}" if self.open_min else f">= {fmt(self.minimum)}")
        hi = None if self.maximum is None else f"<= {fmt(self.maximum)}"
        return " and ".join(b for b in (lo, hi) if b)

    def convert(self, value, param, ctx):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            self.fail(f"{value!r} is not a number", param, ctx)
        text = str(value).strip().replace("_", "")
        try:
            number = int(text) if self.integer else float(text)
        except ValueError:
            self.fail(f"{value!r} is not {'a whole number' if self.integer else 'a number'}", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        below = self.minimum is not None and (number <= self.minimum if self.open_min else number < self.minimum)
        above = self.maximum is not None and number > self.maximum
        if below or above:
            self.fail(f"{value!r} is out of range: it must be {self._bounds()}", param, ctx)
        return number

    def __repr__(self) -> str:
        return f"Number({self.name}, {self._bounds() or 'any'})"


POSITIVE = Number(minimum=0, open_min=True)
NON_NEGATIVE = Number(minimum=0)
FRACTION = Number(minimum=0, maximum=1)
FINITE = Number()
MPP = Number(minimum=0.01, maximum=100)  # µm/px: from 1000x to 0.1x, far beyond any scanner
COUNT = Number(integer=True, minimum=1, maximum=1_000_000)
SEED = Number(integer=True, minimum=0, maximum=2**32 - 1)


class Name(click.ParamType):
    """A short text (a name, a column, an encoder key): non-empty, printable, no control characters.

    Parameters
    ----------
    what : str
        What the text names, for messages.
    choices : callable, optional
        Returns the accepted names (checked case-insensitively, ``-`` and ``_`` alike) or raises
        :class:`ValueError` with the reason; called only when the value is given.
    """

    name = "text"

    def __init__(self, what: str = "name", check=None):
        self.what = what
        self.check = check

    def convert(self, value, param, ctx):
        text = str(value)
        if not text.strip():
            self.fail(f"an empty {self.what} is not allowed", param, ctx)
        if len(text) > 256:
            self.fail(f"a {self.what} of {len(text)} characters is too long (at most 256)", param, ctx)
        if any(not ch.isprintable() for ch in text):
            self.fail(f"{text!r}: a {self.what} cannot hold control characters or line breaks", param, ctx)
        if self.check is not None:
            try:
                text = self.check(text)
            except (ValueError, LookupError) as exc:
                self.fail(str(exc), param, ctx)
        return text


def _head_name(text: str) -> str:
    from ..mil.heads import list_heads

    key = text.strip().lower().replace("-", "_")
    if key not in list_heads():
        raise ValueError(f"unknown MIL head {text!r}; choose one of {', '.join(list_heads())}")
    return key


def _encoder_name(text: str) -> str:
    from ..errors import ConfigError
    from ..models.registry import get_preset

    try:
        get_preset(text)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return text


_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def _device(text: str, auto: bool = False) -> str:
    if auto and text == "auto":
        return text
    if not _DEVICE.match(text):
        also = ", or auto (CUDA when there is one)" if auto else ""
        raise ValueError(f"{text!r} is not a device: use cpu, cuda, cuda:1 … or mps{also}")
    if text.startswith(("cuda", "mps")):
        import torch

        from ..errors import ConfigError
        from ..models.encoder import check_device_available

        try:
            check_device_available(torch.device(text))
        except ConfigError as exc:
            raise ValueError(str(exc).split(": ", 1)[-1]) from None
    return text


_ADDRESS = re.compile(r"^(tcp|tls|ucx|inproc|ws|wss)://[^\s/:]+(:\d{1,5})?/?$")


def _scheduler(text: str) -> str:
    if text != "local" and not _ADDRESS.match(text):
        raise ValueError(f"{text!r} is not a dask scheduler address: give tcp://host:8786 (tls://, ucx:// …), or "
                         "'local' for a local cluster on 127.0.0.1 (from --scheduler or SLIDESTREAM_SCHEDULER)")
    return text


def _hub_none_or_file(text: str) -> str:
    if text in ("hub", "none") or Path(text).is_file():
        return text
    raise ValueError(f"{text!r}: give 'hub', 'none', or an existing weights file")


def _default_or_image(text: str) -> str:
    if text == "default" or Path(text).is_file():
        return text
    raise ValueError(f"{text!r}: give 'default' or an existing RGB image file")


def _class_list(text: str) -> str:
    names = [n.strip() for n in text.split(",")]
    if len(names) < 2 or not all(names):
        raise ValueError(f"{text!r}: give two or more class names separated by commas (e.g. Normal,Tumor)")
    if len(set(names)) != len(names):
        raise ValueError(f"{text!r}: a class is named twice")
    return text


def _comma_list(text: str, check=None, *, what: str = "name") -> list[str]:
    items = [v.strip() for v in text.split(",") if v.strip()]
    if not items:
        raise ValueError(f"{text!r}: give at least one {what} (a comma list)")
    return [check(v) if check is not None else v for v in items]


#: Short names of the pooling heads, as the issue trackers and papers write them.
_HEAD_ALIASES = {"mean": "mean_pool", "max": "max_pool"}


def _head_list(text: str) -> list[str]:
    if text.strip().lower() == "all":
        return ["all"]
    return _comma_list(text, lambda v: _head_name(_HEAD_ALIASES.get(v.lower(), v)), what="MIL head")


def _seed_list(text: str) -> list[int]:
    def seed(v: str) -> int:
        if not v.isdigit() or int(v) > 2**32 - 1:
            raise ValueError(f"{text!r}: seeds are whole numbers from 0 to 2^32-1, e.g. 0,1,2")
        return int(v)

    return _comma_list(text, seed, what="seed")


TEXT = Name("name")
CLASS_LIST = Name("class list", _class_list)
HEAD_LIST = Name("MIL head list", _head_list)
ENCODER_LIST = Name("encoder list", lambda text: _comma_list(text, _encoder_name, what="encoder"))
SEED_LIST = Name("seed list", _seed_list)
BASELINE = Name("baseline head", lambda text: "none" if text.strip().lower() == "none"
                else _head_name(_HEAD_ALIASES.get(text.strip().lower(), text)))
DEVICE = Name("device", _device)
DEVICE_OR_AUTO = Name("device", lambda text: _device(text, auto=True))
HEAD = Name("MIL head", _head_name)
ENCODER = Name("encoder", _encoder_name)
WEIGHTS = Name("weights", _hub_none_or_file)
STAIN_REFERENCE = Name("stain reference", _default_or_image)
SCHEDULER = Name("scheduler address", _scheduler)


def out_folder(help: str, required: bool = True, **kwargs):
    """``--out DIR``: an output folder (a file there is refused at the door)."""
    return click.option("--out", required=required, type=click.Path(file_okay=False, path_type=Path), help=help,
                        **kwargs)


def overwrite_option(help: str):
    """``--overwrite``: replace files in the output folder that slidestream did not write."""
    return click.option("--overwrite", is_flag=True, help=help)


OVERWRITE_HELP = ("Replace files in --out that slidestream did not write, or that were changed since it wrote "
                  "them (without it they are named and left as they are, and nothing is done). Outputs of an "
                  "earlier run are replaced either way; the command's inputs never are.")


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


def precision_option(choices: list[str], what: str):
    """``--precision``: the compute dtype of ``what`` ("auto": reduced precision on CUDA only, float32 on CPU)."""
    return click.option("--precision", type=click.Choice(choices), default="auto", show_default=True,
                        help=f"Compute precision of {what}. 'auto': bfloat16 on CUDA (the presets' float16 for a few "
                             "encoders), float32 on CPU. 'bfloat16' on a CPU with AMX-BF16 (Intel Xeon 4th generation "
                             "and later) runs a ResNet-50 trunk and TransMIL about 2.5 times faster, with results "
                             "within about 1 % of float32; on other CPUs it is slower. Recorded with the outputs.")


def stain_reference_option(f):
    return click.option("--stain-reference", default="default", show_default=True, type=STAIN_REFERENCE,
                        help="Target stain: an RGB image file, or 'default' (a standard H&E reference).")(f)


def scheduler_option(help: str = "Address of a dask.distributed scheduler (tcp://host:8786), or 'local' for a "
                                 "local cluster on 127.0.0.1: one task per store/slide on the workers (shared file "
                                 "system). Default: this process."):
    return click.option("--scheduler", envvar="SLIDESTREAM_SCHEDULER", default=None, type=SCHEDULER,
                        help=help + " Also read from SLIDESTREAM_SCHEDULER.")


def _pixel_count(ctx, param, value):
    if value is None:
        return None
    try:
        number = float(str(value).replace("_", ""))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number of pixels (e.g. 5e8 or 500000000)") from None
    if not math.isfinite(number) or not number >= 1 or number != int(number):
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
        click.option("--target-mpp", default=0.5, show_default=True, type=MPP,
                     help="µm/px of the tiles (0.5 ≈ 20x, 0.25 ≈ 40x); read from the best level, never upsampled."),
        click.option("--tile-size", default=224, show_default=True, type=Number(integer=True, minimum=8,
                                                                                 maximum=16384),
                     help="Tile side in pixels (8 to 16384)."),
        click.option("--overlap", default=0, show_default=True, type=Number(integer=True, minimum=0, maximum=16383),
                     help="Overlap between tiles in pixels (less than --tile-size)."),
        click.option("--min-tissue", default=0.5, show_default=True, type=FRACTION,
                     help="Minimum tissue fraction (0-1) of a kept tile."),
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
        "--classes", default=None, metavar="A,B,…", type=CLASS_LIST,
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
