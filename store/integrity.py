"""Damage becomes an error: missing chunks are never read as fill values, checksums are verified, stores are checked.

Three parts:

- :class:`CheckedLocalStore`, the Zarr store every :class:`~slidestream.store.SlideStore` reads through: a chunk
  file that is not there raises :class:`~slidestream.errors.StoreError` naming the store, the array and the
  chunk (damaged, or not written yet when its ``done`` marker is unset), instead of reading as the array's fill
  value. Only chunks of ``done/<array>`` may be missing: an unset marker is "not written yet". (Stores older
  than schema 3 let Zarr skip chunks holding only the fill value in arrays it wrote; for those arrays, real
  tiles and features, such a chunk is as good as impossible, and the error names the command that rewrites it.)
- :func:`chunk_problem`, which checks one chunk (shard) file: present, its CRC32C checksums right (the ``crc32c``
  codec at the end of the chain, or the sharding index's and each tile's), or, for arrays without a checksum,
  decodable.
- :func:`verify_store`, which checks every chunk of every array of a store (``slidestream status --verify``).

Every array of a schema-3 store ends its codec chain with Zarr's ``crc32c`` codec (see
:func:`slidestream.store.slide_store.checked_array`), so a flipped bit is found before a chunk is decoded.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
from zarr.storage import LocalStore

from ..errors import StoreError

__all__ = ["CheckedArray", "CheckedLocalStore", "Damage", "StoreCheck", "chunk_problem", "crc32c_bytes",
           "damaged_message", "locate_damage", "repair_hint", "rows_of", "verify_store"]

_CHUNK_KEY = re.compile(r"^(?P<array>.+)/c(?P<coords>(?:/\d+)*)$")
_EMPTY = 2**64 - 1
Progress = Callable[[int, int], None]


def crc32c_bytes(data: bytes | np.ndarray) -> bytes:
    """The 4 bytes Zarr's ``crc32c`` codec appends to ``data``: its CRC32C, little-endian."""
    return int(google_crc32c.value(data)).to_bytes(4, "little")


def _fully_checked(codecs: list) -> bool:
    """Whether every byte of an array's chunk files is under a checksum (metadata JSON ``codecs``): the chain ends
    in ``crc32c``, or it is one sharding codec whose inner chunks and index both end in ``crc32c``."""
    last = codecs[-1] if codecs else {}
    if last.get("name") == "crc32c":
        return True
    conf = last.get("configuration", {}) if last.get("name") == "sharding_indexed" and len(codecs) == 1 else {}
    return bool(conf) and all((conf.get(k) or [{}])[-1].get("name") == "crc32c" for k in ("codecs", "index_codecs"))


def _array_meta(root: Path, array: str) -> dict:
    try:
        return json.loads((root / array / "zarr.json").read_text())
    except (OSError, ValueError):
        return {}


def _marker_array(array: str) -> str | None:
    """The ``done/...`` array whose markers say which chunks of ``array`` are written."""
    if array == "patches" or array.startswith("qc/"):
        return "done/patches"
    if array.startswith(("features/", "scores/")):
        return f"done/{array}"
    return None


def repair_hint(root: str | os.PathLike, array: str) -> str:
    """What rewrites ``array`` of the store at ``root``: the command, with this store's names filled in."""
    root = Path(root)
    name = array.removeprefix("done/")
    if name.startswith("features/"):
        return (f"recompute them with `slidestream embed {root} --encoder {name.removeprefix('features/')} "
                "--overwrite`")
    if name.startswith("scores/"):
        return (f"rewrite them with `slidestream predict` (or `slidestream heatmap {root} --checkpoint ...`), "
                f"which rewrites {name} whole")
    attrs = _array_meta(root, "").get("attributes", {})
    slide = (attrs.get("slide") or {}).get("path", "<its slide>")
    t = attrs.get("tiling") or {}
    opts = "".join(f" --{flag} {t[key]}" for flag, key in (("target-mpp", "mpp"), ("tile-size", "tile_size"),
                                                           ("overlap", "overlap"), ("min-tissue", "min_tissue"))
                   if key in t)
    return (f"rebuild the store with `slidestream tile {slide} --out {root.parent}{opts} --overwrite` (and the "
            "other options it was tiled with), then embed it again")


def damaged_message(root: str | os.PathLike, array: str, chunk: int | None, problem: str) -> str:
    """The error text for a damaged chunk (or array, ``chunk`` None): store, array, chunk, what to do."""
    where = f"chunk {chunk} of {array}" if chunk is not None else array
    return f"{root}: {where} is damaged ({problem}); {repair_hint(root, array)}"


def _missing_message(root: Path, array: str, coords: tuple[int, ...]) -> str:
    index = coords[0] if coords else 0
    marker = _marker_array(array)
    if (marker is not None and (root / marker / "zarr.json").is_file()
            and not (root / marker / "c" / str(index)).exists()):
        command = {"features": "embed", "scores": "predict"}.get(array.split("/")[0], "tile")
        return (f"{root}: chunk {index} of {array} is not written yet (the run writing {array} did not finish); "
                f"rerun `slidestream {command}` with the same options to resume")
    key = "/".join([array, "c", *map(str, coords)])
    return damaged_message(root, array, index, f"its file {key} is missing")


class CheckedLocalStore(LocalStore):
    """A Zarr :class:`~zarr.storage.LocalStore` that raises :class:`StoreError` for a missing chunk that should exist.

    Zarr reads a missing chunk as the array's fill value; for a slide store that turns a deleted file into white
    tiles or zero features. Only chunks of ``done/...`` arrays may be missing (an unset marker).
    """

    def with_read_only(self, read_only: bool = False) -> CheckedLocalStore:
        return type(self)(self.root, read_only=read_only)

    async def get(self, key: str, prototype=None, byte_range=None):
        buf = await super().get(key, prototype, byte_range)
        if buf is None:
            m = _CHUNK_KEY.match(key)
            if m is not None and not m["array"].startswith("done/"):
                coords = tuple(int(c) for c in m["coords"].split("/")[1:])
                raise StoreError(_missing_message(Path(self.root), m["array"], coords))
        return buf


def _chunk_path(root: Path, arr: zarr.Array, coords: tuple[int, ...]) -> Path:
    return root / arr.path / arr.metadata.encode_chunk_key(coords)


def _region(arr: zarr.Array, coords: tuple[int, ...]) -> tuple[slice, ...]:
    unit = arr.shards or arr.chunks
    return tuple(slice(c * u, min((c + 1) * u, s)) for c, u, s in zip(coords, unit, arr.shape))


def _crc_ok(data: np.ndarray) -> bool:
    return len(data) >= 4 and crc32c_bytes(data[:-4]) == bytes(data[-4:])


def _shard_problem(data: np.ndarray, codec: ShardingCodec, shard: tuple[int, ...], chunk: tuple[int, ...],
                   first_row: int) -> str | None:
    """What is wrong with a shard whose index ends in a checksum; None when its index (and each chunk's checksum,
    where the inner codecs have one) is right. ``first_row``: the array row the shard starts at."""
    n = math.prod(s // c for s, c in zip(shard, chunk))
    along_rows = n == shard[0] // chunk[0]  # inner chunks stacked along axis 0 only (one tile each in patches)

    def inner(i: int) -> str:
        return f"inner chunk {i}" + (f" (row {first_row + i * chunk[0]})" if along_rows else "")

    size = n * 16 + 4
    if len(data) < size:
        return f"truncated: {len(data)} bytes, shorter than its index"
    index_bytes = data[len(data) - size:]
    if not _crc_ok(index_bytes):
        return "checksum mismatch in the shard index"
    index = index_bytes[:-4].view("<u8").reshape(n, 2)
    inner_crc = isinstance(codec.codecs[-1], Crc32cCodec)
    for i, (offset, nbytes) in enumerate(index.tolist()):
        if offset == _EMPTY and nbytes == _EMPTY:
            continue
        if offset + nbytes > len(data) - size:
            return f"{inner(i)} lies outside the shard"
        if inner_crc and not _crc_ok(data[offset:offset + nbytes]):
            return f"checksum mismatch in {inner(i)}"
    return None


def _checked_by_bytes(arr: zarr.Array) -> str | None:
    """How the chunk files of ``arr`` carry checksums: "crc" (the chain ends in crc32c), "shard" (a sharding index
    ending in crc32c, at the end of the file), or None (decode to check)."""
    codecs = arr.metadata.codecs
    if isinstance(codecs[-1], Crc32cCodec):
        return "crc"
    if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec):
        c = codecs[0]
        idx = c.index_codecs
        if (c.index_location.value == "end" and len(idx) == 2 and isinstance(idx[0], BytesCodec)
                and (idx[0].endian is None or idx[0].endian.value == "little") and isinstance(idx[1], Crc32cCodec)):
            return "shard"
    return None


def chunk_problem(root: str | os.PathLike, arr: zarr.Array, coords: tuple[int, ...]) -> str | None:
    """What is wrong with the chunk (shard) file at ``coords`` of ``arr``; None when it is intact.

    Checksums are checked on the file's bytes, without decoding. Arrays without a checksum are decoded (a
    damaged JPEG or Blosc frame often fails to decode; many flipped bits do not). A missing file is reported
    whatever the array: callers decide which chunks must exist.
    """
    root = Path(root)
    path = _chunk_path(root, arr, coords)
    try:
        data = np.frombuffer(path.read_bytes(), np.uint8)
    except FileNotFoundError:
        return f"its file {path.relative_to(root)} is missing"
    except OSError as exc:
        return f"unreadable: {exc}"
    how = _checked_by_bytes(arr)
    if how == "crc":
        return None if _crc_ok(data) else "checksum mismatch"
    if how == "shard":
        codec = arr.metadata.codecs[0]
        problem = _shard_problem(data, codec, arr.shards, codec.chunk_shape, coords[0] * arr.shards[0])
        if problem is not None or isinstance(codec.codecs[-1], Crc32cCodec):
            return problem
    try:
        arr[_region(arr, coords)]
    except Exception as exc:  # noqa: BLE001 - any decoding failure is damage to report
        return f"cannot be decoded: {type(exc).__name__}: {exc}"
    return None


def locate_damage(root: str | os.PathLike, arr: zarr.Array, array: str,
                  chunks: Sequence[int] | None = None) -> str | None:
    """The error text for the first damaged chunk (shard) of ``arr`` (path ``array`` in the store at ``root``)
    among row chunks ``chunks`` (default all), or None when their files are intact."""
    unit = arr.shards or arr.chunks
    grid = [math.ceil(s / u) for s, u in zip(arr.shape, unit)]
    if not grid:
        problem = chunk_problem(root, arr, ())
        return None if problem is None else damaged_message(root, array, None, problem)
    for i in (range(grid[0]) if chunks is None else chunks):
        for tail in np.ndindex(*grid[1:]):
            problem = chunk_problem(root, arr, (i, *tail))
            if problem is not None:
                return damaged_message(root, array, i, problem)
    return None


class CheckedArray:
    """An array of a :class:`~slidestream.store.SlideStore` whose reads check their chunks (its ``read``).

    Indexing (``a[sel]``, ``a.get_orthogonal_selection(sel)``) raises :class:`StoreError` naming the store, the
    array and the chunk when a chunk is missing or damaged; everything else (``shape``, ``chunks``, ``attrs``,
    writes ...) is the Zarr array's own.
    """

    def __init__(self, store: Any, name: str):
        self._store = store
        self._name = name
        self._arr = store._array(name)

    def __getitem__(self, selection: Any) -> np.ndarray:
        return self._store.read(self._name, selection)

    def get_orthogonal_selection(self, selection: Any, **kwargs: Any) -> np.ndarray:
        try:
            return self._arr.get_orthogonal_selection(selection, **kwargs)
        except StoreError:
            raise
        except Exception as exc:
            damage = self._store.locate_damage(self._name, rows_of(selection, self._arr))
            if damage is None:
                raise
            raise StoreError(damage) from exc

    def __setitem__(self, selection: Any, value: Any) -> None:
        self._store._writer(self._name)[selection] = value

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        data = self[...]
        return data if dtype is None else data.astype(dtype)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._arr, name)

    def __repr__(self) -> str:
        return f"<checked {self._arr!r}>"


def rows_of(selection: Any, arr: zarr.Array) -> list[int] | None:
    """Row chunks (shards) a selection reads along axis 0, where it is easy to tell; None for all."""
    if arr.ndim == 0:
        return None
    first = selection[0] if isinstance(selection, tuple) and selection else selection
    unit, n = (arr.shards or arr.chunks)[0], arr.shape[0]
    if isinstance(first, slice):
        start, stop, _ = first.indices(n)
        return list(range(start // unit, (max(stop, start + 1) - 1) // unit + 1)) if stop > start else []
    if isinstance(first, (int, np.integer)):
        return [(int(first) % n) // unit] if n else []
    try:
        idx = np.asarray(first)
    except Exception:  # noqa: BLE001 - anything else: check every chunk
        return None
    if idx.dtype.kind in "iu":
        return sorted({int(i) // unit for i in np.mod(idx.ravel(), max(n, 1))})
    return None


@dataclass
class Damage:
    """One damaged array or chunk of a store."""

    array: str
    chunk: int | None
    problem: str

    def __str__(self) -> str:
        return f"{self.array}" + (f" chunk {self.chunk}" if self.chunk is not None else "") + f": {self.problem}"


@dataclass
class StoreCheck:
    """What :func:`verify_store` found in one store.

    Attributes
    ----------
    path : Path
    arrays, chunks : int
        Arrays and chunk (shard) files checked.
    nbytes : int
        Bytes of chunk files read.
    damage : list of Damage
        Empty for an intact store.
    unprotected : list of str
        Arrays whose chunk files are not all under a checksum (stores older than schema 3): there only missing
        and undecodable chunks are found, not every flipped bit.
    seconds : float
    """

    path: Path
    arrays: int = 0
    chunks: int = 0
    nbytes: int = 0
    damage: list[Damage] = field(default_factory=list)
    unprotected: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.damage

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        d["ok"] = self.ok
        d["damage"] = [asdict(x) for x in self.damage]
        return d

    def hint(self) -> str:
        """What to run to repair this store (one line per array family that is damaged)."""
        arrays = sorted({d.array.removeprefix("done/") for d in self.damage})
        hints = dict.fromkeys(repair_hint(self.path, a) for a in arrays)
        return "; ".join(hints)


def _list_arrays(root: Path) -> tuple[list[str], list[Damage]]:
    """Paths of the arrays under ``root`` (from their ``zarr.json``), and the nodes whose metadata is unreadable."""
    arrays, damage = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = Path(dirpath).relative_to(root).as_posix()
        if "zarr.json" not in filenames:
            if "c" in dirnames:  # chunks without the metadata that says how to read them
                damage.append(Damage(rel, None, "its zarr.json is missing (chunk files without array metadata)"))
                dirnames[:] = []
            continue
        try:
            meta = json.loads((Path(dirpath) / "zarr.json").read_text())
        except (OSError, ValueError) as exc:
            damage.append(Damage(rel if rel != "." else "(root)", None, f"unreadable zarr.json: {exc}"))
            dirnames[:] = []
            continue
        if meta.get("node_type") == "array":
            arrays.append(rel)
            dirnames[:] = []
    return arrays, damage


def _markers(root: Path, marker: str, n: int) -> np.ndarray:
    """Which of ``n`` chunks the ``done`` array ``marker`` marks written (all, when it is unreadable)."""
    try:
        done = np.asarray(zarr.open_array(LocalStore(root, read_only=True), path=marker, mode="r")[...]).astype(bool)
    except Exception:  # noqa: BLE001 - the marker array's own damage is reported when it is checked
        return np.ones(n, bool)
    return done if len(done) == n else np.ones(n, bool)


def verify_store(path: str | os.PathLike, progress: Progress | None = None) -> StoreCheck:
    """Read every chunk file of every array of the store at ``path`` and check it.

    A chunk that should exist must: every chunk of arrays without ``done`` markers, the chunks marked done of
    ``patches``, ``qc/...``, ``features/...`` and ``scores/...`` (an interrupted run leaves the others for its
    resume). Each file present is checked by :func:`chunk_problem`.

    Parameters
    ----------
    path : path
        A store (``<slide_id>.zarr``).
    progress : callable(done_chunks, total_chunks), optional

    Returns
    -------
    StoreCheck
    """
    t0 = time.perf_counter()
    root = Path(path)
    check = StoreCheck(path=root)
    if not (root / "zarr.json").is_file():
        check.damage.append(Damage("(root)", None, "no zarr.json: not a store, or its metadata is gone"))
        return check
    names, check.damage = _list_arrays(root)
    store = LocalStore(root, read_only=True)
    plan = []
    for name in names:
        try:
            arr = zarr.open_array(store, path=name, mode="r")
        except Exception as exc:  # noqa: BLE001 - unreadable metadata is damage
            check.damage.append(Damage(name, None, f"unreadable metadata: {exc}"))
            continue
        grid = tuple(math.ceil(s / u) for s, u in zip(arr.shape, arr.shards or arr.chunks))
        coords = list(np.ndindex(*grid)) if all(grid) else []
        marker = _marker_array(name)
        expected = np.ones(grid[0] if grid else 1, bool)
        if marker is not None and marker in names and grid:
            expected = _markers(root, marker, grid[0])
        if not _fully_checked(_array_meta(root, name).get("codecs", [])):
            check.unprotected.append(name)
        plan.append((name, arr, coords, expected, not name.startswith("done/")))
    total = sum(len(p[2]) for p in plan)
    done = 0
    if progress:
        progress(0, total)
    for name, arr, coords, expected, must in plan:
        check.arrays += 1
        for c in coords:
            first = c[0] if c else 0
            f = _chunk_path(root, arr, c)
            if f.exists() or (must and expected[first]):
                check.chunks += 1
                check.nbytes += f.stat().st_size if f.exists() else 0
                problem = chunk_problem(root, arr, c)
                if problem is not None:
                    check.damage.append(Damage(name, first, problem))
            done += 1
            if progress and (done % 16 == 0 or done == total):
                progress(done, total)
    check.seconds = time.perf_counter() - t0
    return check
