"""The ``slidestream`` command: parse arguments, call the library, show progress and summaries.

Each command lives in a module of this package (:mod:`.slides`, :mod:`.features`, :mod:`.classify`,
:mod:`.evaluate`) and calls :mod:`slidestream.pipeline`; this module assembles them into one group and turns our
own errors into one clear line.
"""

from __future__ import annotations

import atexit
import os
import sys

import click

from .. import __version__
from ..errors import SlidestreamError
from ._common import fail
from .classify import heatmap, predict, run, train
from .evaluate import bench, demo, evaluate, status
from .features import embed, encoders, export_features
from .qupath import qupath_project
from .slides import info, synth, tile


class _Group(click.Group):
    """Turns our own errors into one clear line instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SlidestreamError as exc:
            fail(str(exc))


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


for _command in (info, synth, tile, embed, encoders, export_features, train, predict, run, heatmap, status, evaluate,
                 demo, bench):
    main.add_command(_command)
main.add_command(qupath_project)


def console() -> None:
    """The ``slidestream`` console command: :func:`main`, then an exit without the interpreter's teardown.

    Once a command has returned, every file it wrote is complete and closed, and what the interpreter does next,
    deallocating every module and object (zarr, dask, numpy, torch ...), costs CPU time for nothing:
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
