"""Run records and slide locks: what happened to each slide of a batch, and who is working on it.

``<out>/run-<stage>.json`` lists every slide of the last run of a stage with its status (``ok``, ``skipped``,
``failed``), time, error and details, so a 1,000-slide batch is legible afterwards. ``<out>/.locks/<slide_id>.lock``
keeps two runs on one output folder from working on the same slide at once.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import SlidestreamError
from ..fileio import OutputGuard, pid_alive, write_json

__all__ = ["SlideLockedError", "SlideOutcome", "error_text", "is_run_record", "slide_lock", "write_run_record"]


@dataclass
class SlideOutcome:
    """What a stage did with one slide."""

    slide_id: str
    path: str
    status: str  # "ok", "skipped", "failed"
    seconds: float = 0.0
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def error_text(exc: BaseException | None) -> str:
    """One line saying why a slide failed: our own errors carry their advice; disk and permission errors get one;
    an unexpected error keeps its last frame, so a bug report has a place to look."""
    if exc is None:
        return "unknown error"
    if isinstance(exc, SlidestreamError):
        return str(exc)
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or exc} — make the output folder writable for this user"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"no space left on device ({exc.filename or ''}) — free space or choose another --out; rerun resumes"
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"


def is_run_record(path: Path) -> bool:
    """Whether ``path`` is a run record slidestream wrote (recognised by content: records written before output
    ledgers existed are not in one)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(doc, dict) and f"run-{doc.get('stage')}.json" == path.name
            and isinstance(doc.get("software"), dict) and "slidestream" in doc["software"])


def write_run_record(out_dir: str | os.PathLike, stage: str, outcomes: list[SlideOutcome],
                     params: dict[str, Any], *, guard: OutputGuard | None = None) -> Path:
    """``<out_dir>/run-<stage>.json``: inputs, parameters, version, and per-slide status, time and error.

    ``guard`` (default: no ``overwrite``) refuses to replace a file of that name slidestream did not write.
    """
    payload = {
        "stage": stage,
        "software": {"slidestream": __version__},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "parameters": params,
        "counts": {s: sum(o.status == s for o in outcomes) for s in ("ok", "skipped", "failed")},
        "slides": [asdict(o) for o in outcomes],
    }
    with (guard or OutputGuard()).writing(Path(out_dir) / f"run-{stage}.json", recognise=is_run_record) as path:
        return write_json(path, payload)


class SlideLockedError(SlidestreamError):
    """Another live process holds a slide's lock for longer than we were willing to wait."""


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
                     and not pid_alive(holder["pid"])) or time.time() - holder.get("since", time.time()) > stale_after
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
