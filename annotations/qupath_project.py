"""QuPath projects: write ``project.qpproj`` with slides as images, and a Groovy script that imports GeoJSON.

QuPath (0.4 – 0.7) reads a project folder holding ``project.qpproj``; everything else in it (``data/<id>/``,
thumbnails, classes) is optional and created by QuPath when needed. The format, as QuPath's
``DefaultProject`` reads and writes it:

- top level: ``version`` (any string; QuPath writes its own on the next save), ``createTimestamp`` and
  ``modifyTimestamp`` (epoch milliseconds, **required**: a missing one fails the load), ``uri`` (the
  ``.qpproj`` file's own URI: QuPath uses it to repair image paths when the project moves), ``lastID`` (the
  largest entry ID handed out) and ``images``;
- an image entry: ``serverBuilder``, ``entryID`` (unique, from 1; QuPath keeps its data in ``data/<entryID>/``),
  ``randomizedName`` (a UUID; QuPath makes a new one on load), ``imageName``, optional ``description``,
  ``metadata`` (string → string; **always a map**: a missing one breaks QuPath 0.4/0.5 with a
  NullPointerException) and ``tags`` (0.6+; ignored by older versions);
- ``serverBuilder``: ``builderType`` ``"uri"`` (**required**), ``providerClassName`` (the reader; omitted =
  QuPath picks one), ``uri`` (an absolute, percent-encoded ``file:`` URI: one unencoded space fails the whole
  project) and ``args`` (**always an array**: a null one breaks both readers). No ``metadata``: QuPath then reads
  pixel sizes and channels from the file itself.

Coordinates: slidestream's GeoJSON is written in QuPath's default frame for each slide, i.e. OpenSlide level-0
pixels minus the slide's bounds origin (MIRAX and other formats with ``openslide.bounds-*``). That is the frame of
QuPath's OpenSlide reader *without* ``--no-crop``, so no reader argument is written.

The import script is our own Groovy, using only QuPath API present in 0.4 – 0.7 (``PathIO.readObjects``,
``hierarchy.addObjects``, ``entry.readImageData`` / ``saveImageData``, ``get/putMetadataValue``); it goes to
``scripts/`` so that QuPath lists it under Automate › Project scripts.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import ConfigError
from ..fileio import atomic_write

__all__ = [
    "BIOFORMATS_PROVIDER", "OPENSLIDE_PROVIDER", "PROJECT_FILE", "SCRIPT_FILE", "ProjectImage", "build_project",
    "file_uri", "groovy_string", "import_script", "read_project", "write_project",
]

#: QuPath's reader classes (unchanged from 0.4 to 0.7).
OPENSLIDE_PROVIDER = "qupath.lib.images.servers.openslide.OpenslideServerBuilder"
BIOFORMATS_PROVIDER = "qupath.lib.images.servers.bioformats.BioFormatsServerBuilder"
PROJECT_FILE = "project.qpproj"
SCRIPT_FILE = "scripts/import_slidestream_geojson.groovy"
#: Written as the project's ``version``; QuPath does not compare it with its own and replaces it on save.
FORMAT_VERSION = "0.5.0"
#: Entry metadata key under which the script records what it imported.
IMPORT_MARK = "slidestream.imported"


@dataclass
class ProjectImage:
    """One slide as a QuPath project image.

    Attributes
    ----------
    path : pathlib.Path
        The slide file (must exist: QuPath opens it by its absolute URI).
    name : str
        ``imageName`` shown in QuPath's project browser (QuPath's own default is the file name).
    provider : str or None
        QuPath reader class (:data:`OPENSLIDE_PROVIDER`, :data:`BIOFORMATS_PROVIDER`), or None to let QuPath
        choose.
    args : tuple of str
        Reader arguments (``("--series", "0")`` for Bio-Formats); empty for OpenSlide.
    metadata : dict of str to str
        Shown (and sortable) in the project browser.
    description : str or None
        Free text shown in the project browser.
    """

    path: Path
    name: str
    provider: str | None = None
    args: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    description: str | None = None


def file_uri(path: str | os.PathLike) -> str:
    """Absolute ``file:`` URI of ``path``, percent-encoded as UTF-8 (spaces, ``#``, ``%``, non-ASCII ...).

    ``file:///data/slide%20a.svs`` (``file:///C:/...`` on Windows): what Java's ``new URI(s)`` accepts and
    ``Paths.get(uri)`` turns back into the path.
    """
    return Path(path).expanduser().resolve().as_uri()


def read_project(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``project.qpproj`` (or the folder holding one) as JSON.

    Raises
    ------
    ConfigError
        The file is not JSON, or not a QuPath project (no ``images`` list / timestamps).
    """
    p = Path(path)
    if p.is_dir():
        p = p / PROJECT_FILE
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read it as a QuPath project ({exc}); pick another --out folder or "
                          "remove the file") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images", []), list):
        raise ConfigError(f"{p}: not a QuPath project (no 'images' list); pick another --out folder")
    return data


def _entry(image: ProjectImage, entry_id: int) -> dict[str, Any]:
    builder: dict[str, Any] = {"builderType": "uri"}
    if image.provider is not None:
        builder["providerClassName"] = image.provider
    builder["uri"] = file_uri(image.path)
    builder["args"] = list(image.args)
    entry: dict[str, Any] = {"serverBuilder": builder, "entryID": entry_id, "randomizedName": str(uuid.uuid4()),
                             "imageName": image.name}
    if image.description:
        entry["description"] = image.description
    entry["metadata"] = {str(k): str(v) for k, v in image.metadata.items()}
    entry["tags"] = []
    return entry


def _entry_uri(entry: Mapping[str, Any]) -> str | None:
    builder = entry.get("serverBuilder")
    if isinstance(builder, Mapping) and builder.get("builderType") == "uri" and isinstance(builder.get("uri"), str):
        return builder["uri"]
    return None


def build_project(images: Sequence[ProjectImage], project_file: str | os.PathLike,
                  existing: Mapping[str, Any] | None = None, *,
                  now_ms: int | None = None) -> tuple[dict[str, Any], list[str]]:
    """The JSON of a QuPath project holding ``images``, merged into an existing project if given.

    Entries of ``existing`` are kept as they are (QuPath's data for them lives in ``data/<entryID>/``); a slide
    already in it (same file URI) keeps its entry and ID, with slidestream's metadata keys updated; new slides get
    new IDs after the largest one used.

    Parameters
    ----------
    images : sequence of ProjectImage
    project_file : str or os.PathLike
        Where the ``.qpproj`` will be written (its URI is stored as ``uri``).
    existing : mapping, optional
        The project read from that file (:func:`read_project`).
    now_ms : int, optional
        Timestamp in epoch milliseconds (default: now).

    Returns
    -------
    project : dict
        JSON-serialisable project.
    entry_ids : list of str
        The entry ID of each image, in the order of ``images``.

    Raises
    ------
    ConfigError
        A slide file does not exist, or two images are the same file.
    """
    now = int(time.time() * 1000) if now_ms is None else int(now_ms)
    old = dict(existing) if existing else {}
    entries: list[dict[str, Any]] = [dict(e) for e in old.get("images", []) if isinstance(e, Mapping)]
    by_uri = {u: e for e in entries if (u := _entry_uri(e)) is not None}
    used = [int(e["entryID"]) for e in entries if isinstance(e.get("entryID"), int)]
    last = max([int(old.get("lastID") or 0), *used, 0])
    ids: list[str] = []
    seen: set[str] = set()
    for image in images:
        if not Path(image.path).is_file():
            raise ConfigError(f"{image.path}: slide file not found; a QuPath project can only point at existing "
                              "files")
        uri = file_uri(image.path)
        if uri in seen:
            raise ConfigError(f"{image.path} is given twice; each slide can be one project image only")
        seen.add(uri)
        current = by_uri.get(uri)
        if current is not None:
            meta = current.get("metadata") if isinstance(current.get("metadata"), dict) else {}
            current["metadata"] = {**meta, **{str(k): str(v) for k, v in image.metadata.items()}}
            current.setdefault("tags", [])
            ids.append(str(current["entryID"]))
            continue
        last += 1
        entries.append(_entry(image, last))
        ids.append(str(last))
    project = {"version": str(old.get("version") or FORMAT_VERSION),
               "createTimestamp": int(old.get("createTimestamp") or now), "modifyTimestamp": now,
               "uri": file_uri(project_file), "lastID": last, "images": entries}
    return project, ids


def write_project(project_dir: str | os.PathLike, images: Sequence[ProjectImage]) -> tuple[Path, list[str]]:
    """Write (or update) ``<project_dir>/project.qpproj`` atomically; see :func:`build_project`.

    An existing project file is first copied to ``project.qpproj.backup`` (as QuPath does when it saves).

    Returns
    -------
    path : pathlib.Path
        The project file.
    entry_ids : list of str
        The entry ID of each image.
    """
    folder = Path(project_dir).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder}: exists and is not a folder; give a folder for the QuPath project")
    path = folder / PROJECT_FILE
    existing = read_project(path) if path.is_file() else None
    project, ids = build_project(images, path, existing)
    if existing is not None:
        atomic_write(folder / f"{PROJECT_FILE}.backup", path.read_bytes())
    # UTF-8 text as QuPath writes it (Gson reads \u escapes too, but names stay legible this way)
    atomic_write(path, json.dumps(project, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return path, ids


def groovy_string(text: str) -> str:
    """``text`` as a single-quoted Groovy string literal (no ``$`` interpolation; escapes ``\\``, ``'`` and
    control characters)."""
    out = []
    for ch in text:
        if ch in ("\\", "'"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ch in ("\u2028", "\u2029"):
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "'" + "".join(out) + "'"


_SCRIPT = """\
// Import slidestream's GeoJSON (tiles, regions, tissue, detections) into the images of this QuPath project.
// Written by slidestream for QuPath 0.4 - 0.7. Open the project, close the images in the viewer (an open image
// would later be saved over), then run this script once: script editor > Run, or Automate > Project scripts.
// Use Run, not "Run for project": the script visits every image itself.
// Running it again skips images whose files are unchanged; objects whose IDs are in the files are replaced.
import java.nio.file.Files
import java.nio.file.Path
import java.nio.file.Paths
import qupath.lib.images.ImageData
import qupath.lib.io.PathIO

// ---- written by slidestream: entry ID -> image name and its GeoJSON files (relative to the project folder
// ---- or absolute), in import order
@IMPORTS@
// ----
boolean REPLACE = true
String MARK = @MARK@

def project = getProject()
if (project == null) { println 'ERROR: open the project (project.qpproj) in QuPath first'; return }
Path base = project.getPath().getParent()

// Images open in a viewer (or being processed by "Run for project") would be saved over later: skip them.
def openIDs = [] as Set
def gui = null
try { gui = getQuPath() } catch (Throwable ignored) {}
if (gui != null) {
    def viewers = gui.metaClass.respondsTo(gui, 'getAllViewers') ? gui.getAllViewers() : gui.getViewers()
    viewers.each { v ->
        def d = v.getImageData()
        def e = d == null ? null : project.getEntry(d)
        if (e != null) openIDs << e.getID()
    }
}
try { def current = getProjectEntry(); if (current != null) openIDs << current.getID() } catch (Throwable ignored) {}

int nDone = 0, nSkipped = 0, nFailed = 0
for (entry in project.getImageList()) {
    def spec = IMPORTS[entry.getID()]
    if (spec == null) {
        def byName = IMPORTS.values().findAll { it.name == entry.getImageName() }
        spec = byName.size() == 1 ? byName[0] : null
    }
    if (spec == null) continue
    String name = entry.getImageName()
    if (entry.getID() in openIDs) { println "SKIP ${name}: close it in the viewer, then run again"; nSkipped++; continue }
    def paths = []
    for (f in spec.files) {
        Path p = Paths.get(f as String)
        if (!p.isAbsolute()) p = base.resolve(p)
        if (Files.isRegularFile(p)) paths << p
        else println "WARN ${name}: ${p} is missing"
    }
    if (paths.isEmpty()) { nSkipped++; continue }
    String signature = paths.collect { it.getFileName().toString() + ':' + Files.size(it) }.join(';')
    if (entry.getMetadataValue(MARK) == signature) { println "SKIP ${name}: already imported"; nSkipped++; continue }
    def objects = []
    boolean ok = true
    for (p in paths) {
        try { objects.addAll(PathIO.readObjects(p)) }
        catch (Exception e) { println "ERROR ${name}: cannot read ${p}: ${e.getMessage()}"; ok = false }
    }
    if (!ok) { nFailed++; continue }
    def imageData = entry.readImageData()
    try {
        def hierarchy = imageData.getHierarchy()
        if (REPLACE) {
            def ids = objects.collect { it.getID() } as Set
            def old = hierarchy.getAllObjects(false).findAll { it.getID() in ids }
            if (old) hierarchy.removeObjects(old, false)
        }
        hierarchy.addObjects(objects)
        if (imageData.getImageType() == ImageData.ImageType.UNSET) {
            try { imageData.setImageType(ImageData.ImageType.BRIGHTFIELD_H_E) } catch (Exception ignored) {}
        }
        entry.saveImageData(imageData)
        entry.putMetadataValue(MARK, signature)
        println "OK ${name}: ${objects.size()} objects from ${paths.size()} file(s)"
        nDone++
    } catch (Exception e) {
        println "ERROR ${name}: ${e.getMessage()}"
        nFailed++
    } finally {
        if (imageData.metaClass.respondsTo(imageData, 'close')) imageData.close()
        else imageData.getServer()?.close()
    }
}
project.syncChanges()
if (gui != null) javafx.application.Platform.runLater { gui.refreshProject() }
println "Done: ${nDone} imported, ${nSkipped} skipped, ${nFailed} failed"
"""


def import_script(imports: Sequence[tuple[str, str, Sequence[str]]]) -> str:
    """Groovy source of the import script for ``imports``.

    Parameters
    ----------
    imports : sequence of (entry_id, image_name, files)
        For each project image: its entry ID, its ``imageName`` (used when the ID is not found, e.g. after the
        images were added to another project) and its GeoJSON files, relative to the project folder (with
        ``/``) or absolute, in import order.

    Returns
    -------
    str
        The script; one ``IMPORTS`` line per image: ``'<id>': [name: '<name>', files: ['<file>', ...]],``.
    """
    lines = []
    for entry_id, name, files in imports:
        listed = ", ".join(groovy_string(str(f)) for f in files)
        lines.append(f"    {groovy_string(str(entry_id))}: [name: {groovy_string(name)}, files: [{listed}]],")
    # "[:]" is Groovy's empty map ("[]" would be a list)
    block = "def IMPORTS = [\n" + "\n".join(lines) + "\n]" if lines else "def IMPORTS = [:]"
    return _SCRIPT.replace("@IMPORTS@", block).replace("@MARK@", groovy_string(IMPORT_MARK))
