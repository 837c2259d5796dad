"""Atomic file writes: a temporary file next to the target, renamed onto it only once it is complete.

Every writer in slidestream (stores' chunk files, checkpoints, GeoJSON, PNG plots, CSV and JSON records, synthetic
slides) goes through this module, so that

- an interrupted run leaves the previous file, or nothing, never a truncated one;
- outputs get the permissions the user's umask gives (the temporary file is created with mode 0666 and the umask
  applied by the kernel, as ``open()`` does; :func:`tempfile.mkstemp` would give 0600);
- temporary files have one recognisable name, ``.<name>.<pid>-<random>.tmp``, so a later run can tell its own
  leftovers from the user's files (:func:`remove_stale_temps`) and a folder scan can skip them
  (:func:`is_temp_name`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from ..errors import ConfigError

TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")


def _temp_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of this module's temporary files."""
    return _TEMP_NAME.match(name) is not None


def _create_empty(tmp: Path) -> None:
    # 0o666 & ~umask, exactly as a plain open() would create the final file
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))


def _prepare(path: str | os.PathLike, mkdir: bool) -> Path:
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.parent.is_dir():
        raise ConfigError(f"{path}: folder {path.parent} does not exist; create it first")
    return path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, path: Path, fsync: bool) -> None:
    """Move a complete temporary file onto ``path`` (first onto the disk, file and folder, with ``fsync``)."""
    if fsync:
        _fsync(tmp)
    os.replace(tmp, path)
    if fsync:
        with contextlib.suppress(OSError):  # some file systems cannot sync a folder
            _fsync(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, mkdir: bool = True, fsync: bool = False) -> Iterator[Path]:
    """A temporary path for a writer that wants a file name (PIL, matplotlib, h5py, tifffile, torch.save).

    The temporary file exists (empty, with the umask's permissions) when the block starts; whatever the block
    writes there replaces ``path`` when the block ends without an exception. On an exception (Ctrl-C included) the
    temporary file is removed and ``path`` is left as it was.

    Parameters
    ----------
    path : str or os.PathLike
        The final file.
    mkdir : bool
        Create the parent folder when missing; when False, a missing folder is a :class:`ConfigError`.
    fsync : bool
        Flush the file and its folder to disk before returning (for files that must survive a power cut, such as
        checkpoints); chunk files of a store skip it, their completion marks come after them.

    Yields
    ------
    pathlib.Path
        The temporary file, in the same folder as ``path``.
    """
    path = _prepare(path, mkdir)
    tmp = _temp_for(path)
    _create_empty(tmp)
    try:
        yield tmp
        _publish(tmp, path, fsync)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None,
                newline: str | None = None, mkdir: bool = True, fsync: bool = False) -> Iterator[IO[Any]]:
    """A file object on a temporary file that replaces ``path`` when the block succeeds.

    ``mode`` is ``"wb"`` or ``"w"`` (text, with ``encoding``, default UTF-8, and ``newline``); see
    :func:`atomic_path` for ``mkdir`` and ``fsync``.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open: mode must be 'wb' or 'w', not {mode!r}")
    with atomic_path(path, mkdir=mkdir, fsync=fsync) as tmp:
        if mode == "w":
            f = open(tmp, "w", encoding=encoding or "utf-8", newline=newline)
        else:
            f = open(tmp, "wb")
        with f:
            yield f


def atomic_write(path: str | os.PathLike, data: bytes | str | Sequence[bytes], *, mkdir: bool = True,
                 fsync: bool = False) -> Path:
    """Write ``data`` (bytes, text as UTF-8, or a sequence of byte strings written in order without joining them
    first) to ``path`` atomically; returns the path.

    The fast path of every store chunk: one ``open``, the writes, one ``rename``.
    """
    path = _prepare(path, mkdir)
    if isinstance(data, str):
        data = data.encode("utf-8")
    parts = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
    tmp = _temp_for(path)
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        try:
            for part in parts:
                view = memoryview(part)
                while view:
                    view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        _publish(tmp, path, fsync)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def strict_json(obj: Any) -> Any:
    """Nested copy with NaN/inf as None and numpy scalars as Python numbers, so the JSON is strict (other tools
    reject NaN literals)."""
    if isinstance(obj, dict):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike, payload: Any, *, indent: int | None = 2, fsync: bool = False) -> Path:
    """Write strict JSON (NaN → null, other objects through ``str``) atomically; returns the path."""
    text = json.dumps(strict_json(payload), indent=indent, allow_nan=False, default=str)
    return atomic_write(path, text + "\n", fsync=fsync)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike, *, min_age: float = 60.0, max_age: float = 24 * 3600.0) -> int:
    """Remove this module's temporary files left in ``folder`` by writers that died; returns how many.

    A temporary file is stale when its writer's process no longer runs on this host and it is older than
    ``min_age`` seconds, or when it is older than ``max_age`` (a writer on another host of a shared file system).
    Files of live writers and every file not named as this module names its temporaries are left alone.
    """
    folder = Path(folder)
    removed = 0
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for entry in entries:
        m = _TEMP_NAME.match(entry.name)
        if m is None or not entry.is_file(follow_symlinks=False):
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except FileNotFoundError:
            continue
        if age > max_age or (age > min_age and not pid_alive(int(m["pid"]))):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
    return removed
