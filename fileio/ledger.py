"""Which files of a folder slidestream wrote, so that outputs never replace anything else.

Every output file a command writes is recorded, once complete, in a hidden ledger in its folder,
``.slidestream-outputs.jsonl``: one JSON line per file written, ``{"name", "size", "sha256"}``. Before writing a
file, a command asks :meth:`OutputGuard.check` what is there:

- nothing: the file is written;
- a file the ledger lists with the same size and SHA-256 (slidestream wrote it and nobody changed it since): it is
  replaced, so reruns and resumed runs work as before;
- anything else (a file of the user's with the same name, an output edited since it was written, a link, a
  folder): refused with :class:`~slidestream.errors.OutputExistsError` naming it, unless the command was given
  ``--overwrite`` (``OutputGuard(overwrite=True)``; a folder in the way is refused even then);
- an input of this process (a slide, manifest or annotation file registered with :func:`protect_inputs`): refused
  even with ``--overwrite``: slidestream never writes over what it reads.

Why a ledger rather than a mark inside each file: it covers every format alike (CSV, PNG, JPEG, HDF5, ``.pt``,
JSON, GeoJSON), it tells an output edited since it was written from an untouched one, and it leaves the files'
contents as the tools that read them expect. A format that identifies its writer itself (a checkpoint's
``config.json``, a run record) can also be recognised by content (``recognise=`` of :meth:`OutputGuard.check`), so
such files written before the ledger existed are still known as slidestream's; and an output folder written
before ledgers existed, recognised by slidestream's own record in it, has its files adopted once
(:func:`adopt_legacy`), so reruns into it keep working.

The ledger is append-only JSON Lines: an append takes an exclusive ``flock`` on the ledger, so processes writing
into one folder (cluster workers writing QC images) do not interleave, and it starts on a new line, so a line cut
short by a crash costs only its own entry. A ledger holding many superseded lines is rewritten atomically, keeping
the entries whose files are still there unchanged in size. Ledgers are hidden files: folder scans skip them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, OutputExistsError
from .atomic import atomic_write

try:  # POSIX; elsewhere appends are only serialised within this process
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["LEDGER_NAME", "OutputGuard", "adopt_legacy", "file_sha256", "is_protected_input", "output_folder",
           "protect_inputs"]

LEDGER_NAME = ".slidestream-outputs.jsonl"
# A ledger is compacted when it holds this many more lines than live entries (reruns append a line per file).
_COMPACT_SLACK = 1000
_LISTED = 5  # files named in one refusal; the others are counted

_protected: set[str] = set()
_ledgers: dict[str, _Ledger] = {}
_lock = threading.Lock()


def _key(path: str | os.PathLike) -> str:
    try:
        return str(Path(path).resolve())
    except (OSError, RuntimeError):
        return str(Path(path).absolute())


def protect_inputs(paths: Iterable[str | os.PathLike | None]) -> None:
    """Register files this process reads as inputs (slides, manifests, annotation files): no
    :class:`OutputGuard` lets anything be written over them, ``overwrite`` or not. ``None`` entries are ignored."""
    for p in paths:
        if p is not None:
            _protected.add(_key(p))


def is_protected_input(path: str | os.PathLike) -> bool:
    """Whether ``path`` was registered with :func:`protect_inputs`."""
    return _key(path) in _protected


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def adopt_legacy(folder: str | os.PathLike, record: Callable[[Path], bool]) -> Callable[[Path], bool] | None:
    """A recogniser adopting the files of an output folder slidestream wrote into before output ledgers existed.

    Such a folder has no ledger but holds slidestream's own record (``record(folder)`` says so, from its content):
    its files, and those of its sub-folders, are taken as slidestream's, so a rerun replaces them as it always
    did; the next writes start the ledger. Returns None for any other folder.
    """
    folder = Path(folder)
    if (folder / LEDGER_NAME).exists() or not folder.is_dir() or not record(folder):
        return None
    root = _key(folder)
    return lambda path: _key(path).startswith(root + os.sep)


def output_folder(path: str | os.PathLike, option: str = "--out", *, create: bool = True) -> Path:
    """Create the output folder ``path`` (and its parents) and return it; with ``create=False`` only check that it
    could be one (a command that may still refuse to run creates it later).

    Raises
    ------
    ConfigError
        ``path`` is a file, lies under a file, or cannot be created (the message names ``option``).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path}: this is a file, not a folder; give a folder for the outputs")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"{option} {path}: {parent} is a file, not a folder; give a folder for the outputs")
    if not create:
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"{option} {path}: cannot create the folder ({reason}); choose another {option}") from exc
    return path


@dataclass
class _Ledger:
    """What one folder's ledger says, read incrementally (appends are read from where the last read stopped)."""

    path: Path
    inode: int = -1
    offset: int = 0
    lines: int = 0
    entries: dict[str, tuple[int, str]] = field(default_factory=dict)

    def refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.inode, self.offset, self.lines, self.entries = -1, 0, 0, {}
            return
        if st.st_ino != self.inode or st.st_size < self.offset:  # rewritten (compacted) or replaced
            self.inode, self.offset, self.lines, self.entries = st.st_ino, 0, 0, {}
        if st.st_size == self.offset:
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line being appended right now is read next time
        for line in data[:end].splitlines():
            try:
                rec = json.loads(line)
                self.entries[str(rec["name"])] = (int(rec["size"]), str(rec["sha256"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash, or not ours: that file is simply not known
            self.lines += 1
        self.offset += end

    def knows(self, path: Path, size: int) -> bool:
        entry = self.entries.get(path.name)
        return entry is not None and entry[0] == size and file_sha256(path) == entry[1]


def _ledger(folder: Path) -> _Ledger:
    key = _key(folder)
    led = _ledgers.get(key)
    if led is None:
        led = _ledgers[key] = _Ledger(Path(folder) / LEDGER_NAME)
    led.refresh()
    return led


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[int]:
    """An ``O_RDWR | O_APPEND`` descriptor of the ledger holding its exclusive lock (the current file: one
    replaced by a compaction while we waited is reopened)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                yield fd
                return
        finally:
            os.close(fd)  # also releases the lock


def _append(folder: Path, records: list[dict]) -> None:
    payload = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records).encode()
    with _lock, _locked(folder / LEDGER_NAME) as fd:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            payload = b"\n" + payload  # after a line cut short by a crash
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
        led = _ledger(folder)
        if led.lines > 2 * len(led.entries) + _COMPACT_SLACK:
            _compact(folder, led)


def _compact(folder: Path, led: _Ledger) -> None:
    """Rewrite the ledger (its lock held by the caller) with one line per file still there at its recorded size."""
    lines = []
    for name, (size, digest) in sorted(led.entries.items()):
        try:
            if (folder / name).stat().st_size != size:
                continue
        except OSError:
            continue
        lines.append(json.dumps({"name": name, "size": size, "sha256": digest}, ensure_ascii=False,
                                separators=(",", ":")))
    atomic_write(led.path, "".join(line + "\n" for line in lines))
    led.refresh()


class OutputGuard:
    """Checks and records the output files of one command (see the module docstring).

    Parameters
    ----------
    overwrite : bool
        Replace files slidestream did not write, or that were changed since (the command's ``--overwrite``).
        Inputs and folders are never replaced.
    option : str
        How the user asks for ``overwrite``, named in refusals.
    adopt : callable(Path) -> bool, optional
        Recognises slidestream's files that no ledger lists (see :func:`adopt_legacy`); used by every check that
        passes no ``recognise`` of its own.
    """

    def __init__(self, overwrite: bool = False, *, option: str = "--overwrite",
                 adopt: Callable[[Path], bool] | None = None):
        self.overwrite = bool(overwrite)
        self.option = option
        self.adopt = adopt
        # files this guard found to be slidestream's, by their stat: checking one again (at the door, then when
        # it is written) does not hash it twice
        self._known: dict[str, tuple[int, int, int]] = {}

    def is_own(self, path: str | os.PathLike, recognise: Callable[[Path], bool] | None = None) -> bool:
        """Whether ``path`` is a regular file slidestream wrote and nobody changed since (per its folder's
        ledger, or ``recognise(path)`` when the ledger does not know it)."""
        path = Path(path)
        recognise = recognise or self.adopt
        try:
            st = os.lstat(path)
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode):
            return False
        key, sig = _key(path), (st.st_ino, st.st_size, st.st_mtime_ns)
        if self._known.get(key) == sig:
            return True
        with _lock:
            led = _ledger(path.parent)
        own = led.knows(path, st.st_size) or (recognise is not None and path.name not in led.entries
                                              and bool(recognise(path)))
        if own:
            self._known[key] = sig
        return own

    def problem(self, path: str | os.PathLike, *, replace_own: bool = True,
                recognise: Callable[[Path], bool] | None = None) -> str | None:
        """Why writing ``path`` is refused, or None when it may be written."""
        path = Path(path)
        if is_protected_input(path):
            return f"{path}: this is an input of the command; slidestream never writes over its inputs"
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return f"{path}: cannot be checked ({exc.strerror})"
        if stat.S_ISDIR(st.st_mode):
            return f"{path}: a folder is in the way of an output file; move it away"
        if self.overwrite:
            return None
        if self.is_own(path, recognise):
            if replace_own:
                return None
            return f"{path}: an earlier run's output is there"
        return f"{path}: exists and was not written by slidestream (or was changed since it was)"

    def check(self, path: str | os.PathLike, *, replace_own: bool = True,
              recognise: Callable[[Path], bool] | None = None) -> Path:
        """Raise :class:`OutputExistsError` unless ``path`` may be written; returns it as a Path.

        ``replace_own=False`` refuses even an unchanged output of an earlier run (a trained checkpoint).
        """
        return self.check_all([path], replace_own=replace_own, recognise=recognise)[0]

    def check_all(self, paths: Iterable[str | os.PathLike], *, replace_own: bool = True,
                  recognise: Callable[[Path], bool] | None = None) -> list[Path]:
        """:meth:`check` for many files at once: one error naming the first few refused and counting the rest."""
        paths = [Path(p) for p in paths]
        problems = [m for m in (self.problem(p, replace_own=replace_own, recognise=recognise) for p in paths) if m]
        if problems:
            more = f" (and {len(problems) - _LISTED} more)" if len(problems) > _LISTED else ""
            inputs = any("input of the command" in m or "folder is in the way" in m for m in problems)
            them = "them" if len(problems) > 1 else "it"
            advice = ("choose another --out" if inputs else
                      f"nothing was replaced: move {them} away, pass {self.option} to replace {them}, or choose "
                      "another --out")
            raise OutputExistsError("; ".join(problems[:_LISTED]) + more + f" — {advice}")
        return paths

    def record(self, *paths: str | os.PathLike) -> None:
        """Enter files just written (complete, in place) in their folders' ledgers."""
        by_folder: dict[Path, list[dict]] = {}
        for p in paths:
            p = Path(p)
            by_folder.setdefault(p.parent, []).append({"name": p.name, "size": p.stat().st_size,
                                                        "sha256": file_sha256(p)})
        for folder, records in by_folder.items():
            _append(folder, records)

    @contextlib.contextmanager
    def writing(self, path: str | os.PathLike, *, replace_own: bool = True,
                recognise: Callable[[Path], bool] | None = None) -> Iterator[Path]:
        """Check ``path``, let the block write it, and record it when the block succeeds."""
        path = self.check(path, replace_own=replace_own, recognise=recognise)
        yield path
        self.record(path)
