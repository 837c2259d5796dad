"""Batch inputs and run records: which slides a command works on, and what happened to each.

Inputs are folders, globs, single files or a manifest CSV (columns: ``slide`` (path), optional ``label``,
``split``/``fold``, ``annotation``, ``mpp``, and any metadata columns). A failing slide never stops a batch: it is
recorded with its reason and reported at the end.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import json
import math
import os
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from . import __version__
from .errors import ConfigError, SlidestreamError
from .wsi.slide import slide_id_from_path

SLIDE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm",
                  ".png", ".jpg", ".jpeg"}
MANIFEST_COLUMNS = {"slide", "label", "split", "fold", "annotation", "mpp", "slide_id"}


@dataclass
class SlideInput:
    """One slide of a batch, with what a manifest says about it."""

    path: Path
    slide_id: str
    label: int | None = None
    split: str | None = None
    annotation: Path | None = None
    mpp: float | None = None
    meta: dict[str, str] = field(default_factory=dict)


def _from_manifest(path: Path) -> list[SlideInput]:
    base = path.parent
    out = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "slide" not in reader.fieldnames:
            raise ConfigError(f"{path}: a manifest needs a 'slide' column (have: {reader.fieldnames})")
        for i, row in enumerate(reader, start=2):
            raw = (row.get("slide") or "").strip()
            if not raw:
                raise ConfigError(f"{path}, line {i}: empty 'slide'")
            p = Path(raw) if Path(raw).is_absolute() else base / raw
            label = row.get("label")
            ann = (row.get("annotation") or "").strip()
            mpp = (row.get("mpp") or "").strip()
            given_id = (row.get("slide_id") or "").strip()
            if given_id and slide_id_from_path(f"{given_id}.id") != given_id:
                # Ids name files in the output folder: nothing that could climb out of it or hide there.
                raise ConfigError(f"{path}, line {i}: slide_id {given_id!r} is not a safe file name; use letters, "
                                  "digits, '.', '_' and '-' (not starting with '.')")
            try:
                out.append(SlideInput(
                    path=p,
                    slide_id=given_id or slide_id_from_path(p),
                    label=int(float(label)) if label not in (None, "") else None,
                    split=(row.get("split") or row.get("fold") or "").strip() or None,
                    annotation=(Path(ann) if Path(ann).is_absolute() else base / ann) if ann else None,
                    mpp=float(mpp) if mpp else None,
                    meta={k: v for k, v in row.items() if k not in MANIFEST_COLUMNS and k is not None},
                ))
            except ValueError as exc:
                raise ConfigError(f"{path}, line {i}: {exc}") from exc
    return out


def _slide_files_in(folder: Path) -> list[Path]:
    found, dicom_dirs = [], set()
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in SLIDE_SUFFIXES:
            continue
        if p.suffix.lower() == ".dcm":
            # A DICOM slide is a series of files in one folder; OpenSlide opens it from any one of them.
            if p.parent in dicom_dirs:
                continue
            dicom_dirs.add(p.parent)
        found.append(p)
    return found


def collect_inputs(inputs: Iterable[str | os.PathLike], *, mpp: float | None = None) -> list[SlideInput]:
    """Expand folders, globs, files and manifest CSVs into a list of slides with unique ids.

    Two different files whose names would give the same slide id get ids disambiguated with a short hash of their
    path (never silently merged).
    """
    items: list[SlideInput] = []
    for raw in inputs:
        p = Path(raw)
        if p.suffix.lower() == ".csv" and p.is_file():
            items.extend(_from_manifest(p))
        elif p.is_dir():
            items.extend(SlideInput(path=f, slide_id=slide_id_from_path(f)) for f in _slide_files_in(p))
        elif any(ch in str(raw) for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(str(raw), recursive=True))
            if not matches:
                raise ConfigError(f"no file matches {raw!r}")
            items.extend(SlideInput(path=m, slide_id=slide_id_from_path(m)) for m in matches if m.is_file())
        else:
            # Missing files are kept: they fail per slide with a clear message instead of aborting the batch.
            items.append(SlideInput(path=p, slide_id=slide_id_from_path(p)))
    if mpp is not None:
        for it in items:
            it.mpp = it.mpp or mpp
    # The same file given twice (a folder and a glob, say) is one slide; two files with one name are two.
    by_path: dict[str, SlideInput] = {}
    for it in items:
        by_path.setdefault(str(it.path.resolve()) if it.path.exists() else str(it.path), it)
    taken: set[str] = set()
    unique: list[SlideInput] = []
    for key, it in by_path.items():
        if it.slide_id in taken:
            it.slide_id = f"{it.slide_id}-{hashlib.blake2b(key.encode(), digest_size=3).hexdigest()}"
        taken.add(it.slide_id)
        unique.append(it)
    return unique


@dataclass
class SlideOutcome:
    """What a stage did with one slide."""

    slide_id: str
    path: str
    status: str  # "ok", "skipped", "failed"
    seconds: float = 0.0
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def strict_json(obj: Any) -> Any:
    """Nested copy with NaN/inf as None, so the JSON is strict (other tools reject NaN literals)."""
    if isinstance(obj, dict):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json_atomic(path: str | os.PathLike, payload: Any) -> Path:
    """Write strict JSON (NaN → null) through a temporary file in the same folder and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(strict_json(payload), f, indent=2, allow_nan=False, default=str)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_run_record(out_dir: str | os.PathLike, stage: str, outcomes: list[SlideOutcome],
                     params: dict[str, Any]) -> Path:
    """``<out_dir>/run-<stage>.json``: inputs, parameters, version, and per-slide status, time and error."""
    payload = {
        "stage": stage,
        "software": {"slidestream": __version__},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "parameters": params,
        "counts": {s: sum(o.status == s for o in outcomes) for s in ("ok", "skipped", "failed")},
        "slides": [asdict(o) for o in outcomes],
    }
    return write_json_atomic(Path(out_dir) / f"run-{stage}.json", payload)


class SlideLockedError(SlidestreamError):
    """Another live process holds a slide's lock for longer than we were willing to wait."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def slide_lock(out_dir: str | os.PathLike, slide_id: str, *, wait: float = 3600.0, poll: float = 0.2,
               stale_after: float = 24 * 3600.0):
    """Hold ``<out_dir>/.locks/<slide_id>.lock`` while working on one slide's store.

    The lock file is created with O_EXCL, so of two runs on one output folder only one works on a slide at a time;
    the other waits (up to ``wait`` seconds) and then finds the work done. A lock left by a process that died is
    recognised (same host and its pid is gone, or older than ``stale_after``) and taken over. The lock is released
    in ``finally``, also on errors and Ctrl-C.
    """
    lock_dir = Path(out_dir) / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / f"{slide_id}.lock"
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            stale = (holder.get("host") == me["host"] and isinstance(holder.get("pid"), int)
                     and not _pid_alive(holder["pid"])) or time.time() - holder.get("since", time.time()) > stale_after
            if stale:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            if time.monotonic() > deadline:
                raise SlideLockedError(
                    f"{slide_id}: in use by pid {holder.get('pid')} on {holder.get('host')} (lock {path}); if no "
                    "other run is active, delete the lock file") from None
            time.sleep(poll)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
