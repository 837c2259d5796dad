"""``slidestream qupath-project``: slides and slidestream's GeoJSON outputs → one QuPath project, in one step.

The arguments are slides, folders, globs, manifests and stores, in any mix: slides are collected as for
``slidestream tile`` (a store, ``<slide_id>.zarr``, brings the slide it was tiled from, under the same id), and
every folder is searched for the GeoJSON slidestream writes, ``<slide_id>.geojson`` (tiles and regions),
``<slide_id>.tissue.geojson``, ``<slide_id>.points.geojson`` and any other ``<slide_id>.<kind>.geojson`` (also
``.gz``). The project gets one image per slide (QuPath's reader chosen as slidestream read the slide: OpenSlide
when OpenSlide opens it, else QuPath's choice), and ``scripts/import_slidestream_geojson.groovy`` imports each
slide's files into its image when run once from QuPath (see :mod:`slidestream.annotations.qupath_project`).

Rules that keep the mapping right:

- a GeoJSON file belongs to the slide whose id is its name without ``.geojson[.gz]``, or without one more
  ``.<kind>`` (the longer id wins); files that match no slide are reported, not imported;
- PNG/JPEG files found by searching a folder are slides only when GeoJSON for them was found (heatmaps and plots
  sit next to the outputs); name them explicitly to add them anyway;
- ``*.zarr`` stores and QuPath project folders (the one being written included) are not searched; hidden
  folders and slidestream's temporary files are skipped.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..annotations.qupath_project import (OPENSLIDE_PROVIDER, PROJECT_FILE, SCRIPT_FILE, ProjectImage,
                                          import_script, write_project)
from ..errors import ConfigError, SlidestreamError
from ..fileio import OutputGuard, atomic_path, atomic_write, is_temp_name
from .inputs import SLIDE_SUFFIXES, collect_inputs, is_own_output
from .records import SlideOutcome, error_text
from .reporting import QuietReporter, Reporter

__all__ = ["GEOJSON_SUFFIXES", "QuPathProject", "make_qupath_project"]

GEOJSON_SUFFIXES = (".geojson", ".geojson.gz")
_RASTER = {".png", ".jpg", ".jpeg"}
_KIND = re.compile(r"^(?P<id>.+)\.(?P<kind>[A-Za-z0-9_-]+)$")
# import order: the outline first, then the tiles and regions, then any other kind (detections ...)
_KIND_RANK = {"tissue": 0, "": 1}


@dataclass
class QuPathProject:
    """What :func:`make_qupath_project` wrote.

    Attributes
    ----------
    project : pathlib.Path
        ``<out>/project.qpproj``.
    script : pathlib.Path
        ``<out>/scripts/import_slidestream_geojson.groovy``.
    outcomes : list of SlideOutcome
        One per slide: ``ok`` (in the project; ``details``: ``entry_id``, ``geojson`` count, ``files``),
        ``failed`` (not added: slide missing or given twice).
    unmatched : list of pathlib.Path
        GeoJSON files that belong to none of the slides.
    """

    project: Path
    script: Path
    outcomes: list[SlideOutcome] = field(default_factory=list)
    unmatched: list[Path] = field(default_factory=list)


@dataclass
class _Found:
    slides: list[tuple[Path, bool]] = field(default_factory=list)   # (path, found by searching a folder)
    manifests: list[Path] = field(default_factory=list)
    stores: list[Path] = field(default_factory=list)
    geojson: list[Path] = field(default_factory=list)


def _is_geojson(name: str) -> bool:
    return name.lower().endswith(GEOJSON_SUFFIXES)


def _is_store(path: Path) -> bool:
    return path.suffix == ".zarr" and (path / "zarr.json").is_file()


def _search(folder: Path, found: _Found, skip: Path) -> None:
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        keep = []
        for d in sorted(dirs):
            # the project being written, and any other QuPath project: their GeoJSON are copies, not outputs
            if d.startswith(".") or (here / d).resolve() == skip or (here / d / PROJECT_FILE).is_file():
                continue
            if d.endswith(".zarr"):
                if _is_store(here / d):
                    found.stores.append(here / d)
                continue
            keep.append(d)
        dirs[:] = keep
        dicom_seen = False
        for name in sorted(files):
            if name.startswith(".") or is_temp_name(name):
                continue
            path = here / name
            if _is_geojson(name):
                found.geojson.append(path)
            elif path.suffix.lower() in SLIDE_SUFFIXES and not is_own_output(path):
                if path.suffix.lower() == ".dcm":  # one file stands for the folder's DICOM series
                    if dicom_seen:
                        continue
                    dicom_seen = True
                found.slides.append((path, True))


def _gather(args: Iterable[str | os.PathLike], skip: Path) -> _Found:
    """Slides, manifests, stores and GeoJSON named by ``args``; folders are searched, except ``skip`` (the project
    folder: its copies of the GeoJSON must not count twice)."""
    found = _Found()
    for raw in args:
        text = os.fspath(raw)
        paths = [Path(text)]
        if not paths[0].exists() and any(ch in text for ch in "*?["):
            paths = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            if not paths:
                raise ConfigError(f"no file matches {text!r}")
        for p in paths:
            if _is_store(p):
                found.stores.append(p)
            elif p.is_dir():
                _search(p, found, skip)
            elif not p.exists():
                raise ConfigError(f"{p}: no such file or folder; give slides, folders of slides or outputs, "
                                  "stores or a manifest CSV")
            elif _is_geojson(p.name):
                found.geojson.append(p)
            elif p.suffix.lower() == ".csv":
                found.manifests.append(p)
            else:
                found.slides.append((p, False))
    return found


def _slide_ids(found: _Found, drop: set[Path]) -> tuple[dict[Path, str], dict[Path, str], list[SlideOutcome]]:
    """Resolved slide path → slide id, resolved slide path → the backend a store read it with, and the stores
    that cannot give their slide. Slides in ``drop`` are left out."""
    failures: list[SlideOutcome] = []
    backends: dict[Path, str] = {}
    explicit = [str(p) for p, _ in found.slides if p.resolve() not in drop]
    inputs = collect_inputs([*explicit, *map(str, found.manifests)]) if explicit or found.manifests else []
    ids = {it.path.resolve(): it.slide_id for it in inputs}
    if found.stores:
        from ..store import SlideStore  # imports zarr: only when stores were given

        for store_path in found.stores:
            try:
                store = SlideStore.open(store_path)
                slide = Path(store.slide["path"])
            except (SlidestreamError, KeyError, OSError) as exc:
                failures.append(SlideOutcome(store_path.name.removesuffix(".zarr"), str(store_path), "failed",
                                             error=f"cannot read the store: {error_text(exc)}"))
                continue
            if not slide.is_file():
                failures.append(SlideOutcome(store.slide_id, str(slide), "failed",
                                             error=f"{store_path} was tiled from {slide}, which is not there any "
                                                   "more; pass the slide (or its folder) too"))
                continue
            ids[slide.resolve()] = store.slide_id  # the id the store's outputs are named after
            if store.slide.get("backend"):
                backends[slide.resolve()] = str(store.slide["backend"])
    return ids, backends, failures


def _match(geojson: list[Path], ids: Iterable[str]) -> tuple[dict[str, list[Path]], list[Path]]:
    known = set(ids)
    by_slide: dict[str, list[tuple[int, str, Path]]] = {}
    unmatched: list[Path] = []
    seen: set[Path] = set()
    for path in geojson:
        real = path.resolve()
        if real in seen:
            continue
        seen.add(real)
        stem = path.name[: -len(".gz")] if path.name.lower().endswith(".gz") else path.name
        stem = stem[: -len(".geojson")]
        slide_id, kind = stem, ""
        if stem not in known:
            m = _KIND.match(stem)
            if m is None or m.group("id") not in known:
                unmatched.append(path)
                continue
            slide_id, kind = m.group("id"), m.group("kind").lower()
        by_slide.setdefault(slide_id, []).append((_KIND_RANK.get(kind, 2), path.name, path))
    return {s: [p for *_, p in sorted(v)] for s, v in by_slide.items()}, unmatched


def _reader(path: Path, backend: str | None) -> tuple[str | None, str | None]:
    """QuPath reader class for a slide, and a note when slidestream could not open it."""
    if backend is None:
        from ..wsi import open_slide

        try:
            with open_slide(path) as slide:
                backend = slide.backend
        except SlidestreamError as exc:
            return None, f"slidestream cannot open it ({exc}); QuPath will choose a reader"
    return (OPENSLIDE_PROVIDER if backend == "openslide" else None), None


def _copy_into(project_dir: Path, slide_id: str, files: list[Path], guard: OutputGuard) -> list[Path]:
    out: list[Path] = []
    for f in files:
        target = project_dir / "slidestream" / slide_id / f.name
        n = 1
        while target in out:  # one name found in two output folders (say, run/ and heatmap/): keep both
            n += 1
            target = target.with_name(f"{n}-{f.name}")
        with guard.writing(target), atomic_path(target) as tmp:
            shutil.copyfile(f, tmp)
        out.append(target)
    return out


def _script_path(f: Path, project_dir: Path) -> str:
    try:
        return f.resolve().relative_to(project_dir).as_posix()
    except ValueError:
        return str(f.resolve())


def make_qupath_project(inputs: Iterable[str | os.PathLike], out: str | os.PathLike, *, copy: bool = False,
                        reporter: Reporter | None = None, overwrite: bool = False) -> QuPathProject:
    """Write a QuPath project of the slides in ``inputs`` and a script importing their GeoJSON.

    Parameters
    ----------
    inputs : iterable of str or os.PathLike
        Slides, folders (searched for slides, stores and GeoJSON), globs, manifest CSVs, stores, GeoJSON files.
    out : str or os.PathLike
        Project folder (created). An existing ``project.qpproj`` there is updated: its images are kept, slides
        already in it keep their entry, new slides are added (close the project in QuPath first).
    copy : bool
        Copy the GeoJSON files into ``<out>/slidestream/<slide_id>/`` (the project folder then moves as a whole);
        by default the script reads them where they are (paths relative to the project when inside it).
    reporter : Reporter, optional
        Progress display.
    overwrite : bool
        Replace files slidestream did not write (or that were changed since) where the import script and the
        copies go; without it they are refused, before any work (:class:`~slidestream.fileio.OutputGuard`).
        ``project.qpproj`` is never replaced but updated, its previous version kept as ``project.qpproj.backup``
        (as QuPath does when it saves).

    Returns
    -------
    QuPathProject

    Raises
    ------
    ConfigError
        An argument does not exist, or no slide was found.
    """
    reporter = reporter or QuietReporter()
    guard = OutputGuard(overwrite)
    project_dir = Path(out).expanduser().resolve()
    if project_dir.exists() and not project_dir.is_dir():
        raise ConfigError(f"--out {project_dir}: this is a file, not a folder; give a folder for the project")
    guard.check(project_dir / SCRIPT_FILE)
    found = _gather(inputs, project_dir)
    if not found.slides and not found.stores and not found.manifests:
        raise ConfigError("no slide found in the arguments: give the slides (files or folders), or the stores "
                          "(*.zarr) they were tiled into, next to the output folders")
    ids, backends, failures = _slide_ids(found, set())
    by_slide, unmatched = _match(found.geojson, ids.values())
    # PNG/JPEG found by searching a folder count only when GeoJSON was made for them (else: heatmaps, plots);
    # ids are then given again without them, as a run on the remaining slides would have named them
    searched = {p.resolve() for p, by_search in found.slides if by_search}
    drop = {p for p, sid in ids.items() if p in searched and p.suffix.lower() in _RASTER and sid not in by_slide}
    if drop:
        ids, backends, failures = _slide_ids(found, drop)
        by_slide, unmatched = _match(found.geojson, ids.values())
    if not ids:
        detail = "; ".join(f"{o.slide_id}: {o.error}" for o in failures)
        raise ConfigError(f"none of the slides can be added to a project ({detail})" if failures else
                          "no slide found in the arguments")
    images: list[ProjectImage] = []
    plan: list[tuple[str, Path, list[Path], str | None, float]] = []
    with reporter.task("QuPath project", total=len(ids)) as task:
        for path, slide_id in sorted(ids.items(), key=lambda kv: (kv[1], str(kv[0]))):
            t0 = time.perf_counter()
            provider, note = _reader(path, backends.get(path))
            files = by_slide.get(slide_id, [])
            if copy and files:
                files = _copy_into(project_dir, slide_id, files, guard)
            meta = {"slidestream.slide_id": slide_id}
            if files:
                meta["slidestream.geojson"] = ", ".join(f.name for f in files)
            images.append(ProjectImage(path=path, name=path.name, provider=provider, metadata=meta))
            plan.append((slide_id, path, files, note, time.perf_counter() - t0))
            task.update(1)
    project_file, entry_ids = write_project(project_dir, images)
    imports = [(eid, img.name, [_script_path(f, project_dir) for f in files])
               for eid, img, (_, _, files, _, _) in zip(entry_ids, images, plan) if files]
    with guard.writing(project_dir / SCRIPT_FILE) as target:
        script = atomic_write(target, import_script(imports))
    outcomes = [SlideOutcome(slide_id, str(path), "ok", seconds=round(sec, 3), error=note,
                             details={"entry_id": eid, "geojson": len(files),
                                      "files": [_script_path(f, project_dir) for f in files]})
                for eid, (slide_id, path, files, note, sec) in zip(entry_ids, plan)]
    return QuPathProject(project=project_file, script=script, outcomes=outcomes + failures, unmatched=unmatched)
