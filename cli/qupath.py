"""``slidestream qupath-project``: slides and their GeoJSON outputs as a QuPath project."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import err, exit_for, out, reporter, summary_table

__all__ = ["qupath_project"]


@click.command("qupath-project")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Project folder (created). An existing project there is updated: its images stay, new slides "
                   "are added; close it in QuPath first.")
@click.option("--overwrite", is_flag=True,
              help="Replace files where the import script and the --copy copies go that slidestream did not write "
                   "(without it they are named and nothing is done). project.qpproj itself is always updated, not "
                   "replaced: its images stay, and its previous version is kept as project.qpproj.backup.")
@click.option("--copy", "copy", is_flag=True,
              help="Copy the GeoJSON files into the project folder (<out>/slidestream/<slide_id>/), so that the "
                   "folder can be moved or shared as a whole; by default the script reads them where they are.")
def qupath_project(inputs, out_dir: Path, overwrite: bool, copy: bool):
    """Make a QuPath project (0.4 – 0.7) of the slides in INPUTS, with a script importing their GeoJSON.

    INPUTS are slides, folders, globs, manifest CSVs and stores (*.zarr, which bring the slide they were tiled
    from), mixed with the output folders of `slidestream run`, `heatmap`, `tile --export-tissue` or `bench`.
    Folders are searched for slides and for <slide_id>.geojson (tiles, regions), <slide_id>.tissue.geojson,
    <slide_id>.points.geojson (detections) and other <slide_id>.<kind>.geojson files (also .gz).

    \b
    Then, in QuPath: File › Open project… › OUT/project.qpproj, close any open image, and run
    Automate › Project scripts › import_slidestream_geojson once: every image gets its objects.
    """
    from ..pipeline.qupath_project import make_qupath_project

    result = make_qupath_project(inputs, out_dir, copy=copy, reporter=reporter(), overwrite=overwrite)
    summary_table(f"QuPath project ({result.project})", result.outcomes, ["entry_id", "geojson"])
    for path in result.unmatched:
        err.print(f"[yellow]not imported[/yellow]: {path} (its name matches none of the slides' ids)")
    out.print(f"project: {result.project}\nimport script: {result.script}")
    exit_for(result.outcomes)
