"""The per-slide Zarr v3 store: the one data contract between stages.

Layout of ``<out>/<slide_id>.zarr`` (a Zarr v3 group)::

    attrs["slidestream"]   software version, store schema version
    attrs["slide"]         identity of the source slide (path, size, mtime, fingerprint), vendor, mpp, size, bounds
    attrs["tiling"]        the parameters the grid was made with
    attrs["stain"]         stain normalisation parameters applied to ``patches`` (or absent)
    attrs["status"]        per-stage status: {"tiling": "complete", "features/handcrafted": "complete", ...}
    coords                 int64 (N, 2)   level-0 x, y of each tile's top-left corner
    tissue                 float32 (N,)   fraction of the tile covered by tissue
    patches                uint8 (N, S, S, 3), chunked by tiles (optional); attrs["encoding"] says how
    features/<encoder>     float16/float32 (N, D), attrs: preset, weights, normalisation
    scores/<model>         float32 (N, K) per-tile attention / instance scores
    done/<array path>      uint8 (n_chunks,): 1 where a chunk of that array is completely written

Integrity (schema 3): every array ends its codec chain with Zarr's ``crc32c`` codec (:func:`checked_array`;
``"jpeg"`` patches carry one per tile and one on the shard index), and every chunk is written, even one holding
only the fill value. Stores are read through :class:`~slidestream.store.integrity.CheckedLocalStore`, so a
chunk file that should exist and does not is a :class:`StoreError`, never the fill value, and a chunk whose
checksum does not match is one too (naming the store, the array, the chunk and the command that rewrites it).
Schema 2 stores (no checksums) still open, resume and take new arrays, which get checksums.

``patches`` comes in one of two encodings, both read as uint8 ``(S, S, 3)`` tiles:

- ``"pixels"``: chunks of ``chunk_tiles`` tiles, Blosc lz4 (lossless). Used whenever tiles are resized, cut
  across the slide's stored tiles, or stain-normalised.
- ``"jpeg"``: the slide's own JPEG tiles, not re-encoded, one Zarr chunk per tile inside shards of ``chunk_tiles``
  tiles (:mod:`slidestream.store.codecs`). Used when the grid is a pyramid level's own tile grid; the pixels
  are exactly what reading the slide gives, and storing costs no decode-encode round trip.

Chunks (shards) are written whole and marked done only afterwards, so an interrupted run resumes from the first
chunk not marked and never trusts a half-written one. Every chunk file is written atomically (temp + rename).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
from zarr.storage import LocalStore

from .. import __version__
from ..errors import ConfigError, StoreError
from ..fileio import atomic_write
from .codecs import JpegTileCodec
from .integrity import CheckedArray, CheckedLocalStore, crc32c_bytes, locate_damage, rows_of

#: 3: every array carries a crc32c checksum and every chunk is written (2: no checksums; still read and resumed).
SCHEMA_VERSION = 3
DEFAULT_CHUNK_TILES = 64
#: Tiles per shard where patches are the slide's own JPEG tiles (the tiler's default; see ``tile_slide``).
JPEG_CHUNK_TILES = 256
# Lossless patches: lz4 at a low level, chosen with ``bench/tile.py --codecs`` on real H&E: it saves a fifth of
# the disk for about the cost of the write itself, where zstd saves little more for several times the time. The
# "chosen_by" text is recorded in every store (its patches' encoding), so it stays as stores have it.
PATCH_COMPRESSOR = {"name": "blosc", "cname": "lz4", "clevel": 1, "shuffle": "noshuffle"}
PIXEL_ENCODING = {
    "name": "pixels",
    "compressor": PATCH_COMPRESSOR,
    "chosen_by": "bench/tile.py --codecs (real H&E, 224 px): lz4 1.26x smaller at ~0.06 ms/tile; zstd-1 1.32x "
                 "at ~0.33 ms/tile; JPEG would be lossy",
}
_MAX_UINT64 = 2**64 - 1


def _patch_codec() -> BloscCodec:
    return BloscCodec(cname=PATCH_COMPRESSOR["cname"], clevel=PATCH_COMPRESSOR["clevel"],
                      shuffle=PATCH_COMPRESSOR["shuffle"])


def checked_array(group: zarr.Group, name: str, *, compressors: Any = "default", **kwargs: Any) -> zarr.Array:
    """Create array ``name`` of a store as schema 3 has every array: a ``crc32c`` checksum after its compressors
    (inside the shards of a sharded array), and every chunk written, even one holding only the fill value (a
    missing chunk is then always damage).

    Parameters
    ----------
    group : zarr.Group
    name : str
    compressors : "default", None or list of codecs
        The compression before the checksum: "default" is Zarr's own (zstd level 0), None none.
    **kwargs
        Passed to :meth:`zarr.Group.create_array` (shape, dtype, chunks, data, attributes ...).
    """
    if compressors == "default":
        compressors = [ZstdCodec(level=0, checksum=False)]
    compressors = [] if compressors is None else list(compressors if isinstance(compressors, (list, tuple))
                                                      else [compressors])
    config = {"write_empty_chunks": True, **kwargs.pop("config", {})}
    return group.create_array(name, compressors=[*compressors, Crc32cCodec()], config=config, **kwargs)


@dataclass(frozen=True)
class JpegTiles:
    """How the slide's own JPEG tiles are kept in ``patches`` (the ``"jpeg"`` encoding).

    Attributes
    ----------
    level : int
        Pyramid level the tiles are copied from.
    colorspace, outcolorspace : int, str or None
        JPEG colour space of the slide's tiles and the one to decode to (see
        :class:`~slidestream.store.codecs.JpegTileCodec`), as the slide's TIFF tags say.
    """

    level: int
    colorspace: int | str | None
    outcolorspace: int | str | None

    def encoding(self) -> dict[str, Any]:
        return {
            "name": "jpeg",
            "level": self.level,
            "colorspace": self.colorspace,
            "outcolorspace": self.outcolorspace,
            "source": "the slide's own JPEG tiles of this level, copied without decoding or re-encoding",
            "chosen_by": "bench/tile.py: storing decoded tiles cost more than decoding them; kept bytes cost "
                         "only their copy and read back pixel-identical",
        }


@dataclass(frozen=True)
class SlideIdentity:
    """What identifies the source slide of a store; a change in any field means the store is stale."""

    path: str
    size: int
    mtime: float
    fingerprint: str


class SlideStore:
    """A per-slide Zarr v3 store. Open with :meth:`create` or :meth:`open`."""

    def __init__(self, path: Path, group: zarr.Group):
        self.path = Path(path)
        self.group = group
        self._arrays: dict[str, zarr.Array] = {}
        self._writers: dict[str, zarr.Array] = {}
        self._dirs: set[Path] = set()  # chunk folders known to exist

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        coords: np.ndarray,
        tissue: np.ndarray,
        slide: dict[str, Any],
        tiling: dict[str, Any],
        tile_size: int | None,
        chunk_tiles: int = DEFAULT_CHUNK_TILES,
        stain: dict[str, Any] | None = None,
        overwrite: bool = False,
        extra: Callable[[zarr.Group], None] | None = None,
        jpeg_tiles: JpegTiles | None = None,
    ) -> SlideStore:
        """Create a store with its tile grid; ``patches`` is created when ``tile_size`` is given.

        Parameters
        ----------
        coords : (N, 2) int array
            Level-0 x, y of each tile's top-left corner.
        tissue : (N,) float array
            Tissue fraction of each tile.
        slide, tiling, stain : dict
            JSON-able descriptions stored as attributes (see the module docstring).
        tile_size : int or None
            Side of the stored patches in pixels; None stores no patches.
        chunk_tiles : int
            Tiles per chunk of ``patches`` (per shard with ``jpeg_tiles``), of its QC arrays and of features.
        overwrite : bool
            Replace an existing store; otherwise an existing store raises :class:`StoreError`.
        extra : callable(group), optional
            Adds more arrays or attributes before the store gets its final name, so they are part of the
            all-or-nothing creation.
        jpeg_tiles : JpegTiles, optional
            Make ``patches`` hold the slide's own JPEG tiles (the ``"jpeg"`` encoding, written with
            :meth:`write_jpeg_shard`); default: lossless pixels.
        """
        path = Path(path)
        if path.exists():
            if not overwrite:
                raise StoreError(f"{path}: a store already exists (open it to resume, or pass overwrite=True)")
            shutil.rmtree(path)
        coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        tissue = np.asarray(tissue, dtype=np.float32).reshape(-1)
        if len(coords) != len(tissue):
            raise StoreError(f"{path}: {len(coords)} coords but {len(tissue)} tissue fractions")
        n = len(coords)
        tmp = path.with_name(path.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        root = zarr.open_group(tmp, mode="w", zarr_format=3)
        root.attrs.update({
            "slidestream": {"version": __version__, "schema": SCHEMA_VERSION},
            "slide": slide,
            "tiling": tiling,
            "stain": stain,
            "chunk_tiles": int(chunk_tiles),
            "status": {},
        })
        rows = max(1, min(chunk_tiles, n)) if n else 1
        checked_array(root, "coords", data=coords, chunks=(max(n, 1), 2))
        checked_array(root, "tissue", data=tissue, chunks=(max(n, 1),))
        if tile_size is not None:
            shape = (n, tile_size, tile_size, 3)
            if jpeg_tiles is not None:
                # the checksum goes inside the shards, one per tile (the shard index has its own)
                checked_array(
                    root, "patches", shape=shape, dtype="uint8", shards=(rows, tile_size, tile_size, 3),
                    chunks=(1, tile_size, tile_size, 3), compressors=None, fill_value=255,
                    serializer=JpegTileCodec(colorspace=jpeg_tiles.colorspace, outcolorspace=jpeg_tiles.outcolorspace),
                    attributes={"encoding": jpeg_tiles.encoding()},
                )
            else:
                checked_array(
                    root, "patches", shape=shape, dtype="uint8", chunks=(rows, tile_size, tile_size, 3),
                    compressors=_patch_codec(), fill_value=255, attributes={"encoding": PIXEL_ENCODING},
                )
            checked_array(root, "done/patches", shape=(_n_chunks(n, rows),), dtype="uint8", chunks=(1,),
                          fill_value=0, compressors=None)
        if extra is not None:
            extra(root)
        # Only a complete skeleton gets the final name: a crash above leaves a ".partial" that the next run removes.
        os.replace(tmp, path)
        return cls.open(path, mode="r+")

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> SlideStore:
        """Open an existing store (``mode`` "r" or "r+")."""
        path = Path(path)
        if not (path / "zarr.json").is_file():
            raise StoreError(f"{path}: not a slidestream store (no zarr.json); run `slidestream tile` first")
        # Read through the checked store: a chunk file that should exist and does not raises, never reads as fill.
        group = zarr.open_group(CheckedLocalStore(path, read_only=mode == "r"), mode=mode, zarr_format=3)
        if "slidestream" not in group.attrs:
            raise StoreError(f"{path}: a Zarr group, but not written by slidestream")
        return cls(path, group)

    # ------------------------------------------------------------------ metadata
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def slide_id(self) -> str:
        return self.path.name.removesuffix(".zarr")

    @property
    def slide(self) -> dict[str, Any]:
        return self.group.attrs["slide"]

    @property
    def tiling(self) -> dict[str, Any]:
        return self.group.attrs["tiling"]

    @property
    def chunk_tiles(self) -> int:
        return int(self.group.attrs["chunk_tiles"])

    @property
    def status(self) -> dict[str, str]:
        return dict(self.group.attrs.get("status", {}))

    def set_status(self, stage: str, value: str) -> None:
        status = self.status
        status[stage] = value
        self.group.attrs["status"] = status

    def update_attrs(self, **values: Any) -> None:
        self.group.attrs.update(values)

    # ------------------------------------------------------------------ tile grid
    @property
    def n_tiles(self) -> int:
        return int(self.group["coords"].shape[0])

    @property
    def coords(self) -> np.ndarray:
        return self.read("coords")

    @property
    def tissue(self) -> np.ndarray:
        return self.read("tissue")

    @property
    def has_patches(self) -> bool:
        return "patches" in self.group

    @property
    def patches(self) -> CheckedArray:
        """``patches`` as a Zarr array whose reads raise :class:`StoreError` for a missing or damaged chunk."""
        if not self.has_patches:
            raise StoreError(f"{self.path}: this store holds no patches (it was tiled without --save-patches)")
        return CheckedArray(self, "patches")

    def read_qc(self) -> dict[str, np.ndarray]:
        """The tiler's QC values, ``{"white", "sharpness": float32 (N,), "flags": uint8 (N,)}`` (empty without
        patches); a missing or damaged chunk raises :class:`StoreError`."""
        if "qc" not in self.group:
            return {}
        return {name: self.read(f"qc/{name}") for name in ("white", "sharpness", "flags") if f"qc/{name}" in self.group}

    # ------------------------------------------------------------------ checked reads
    def read(self, array: str, selection: Any = Ellipsis) -> np.ndarray:
        """``selection`` of ``array``, read through Zarr with every chunk checked.

        Raises
        ------
        StoreError
            A chunk that should exist is missing, or its checksum does not match: the message names the store,
            the array and the chunk, and the command that rewrites it.
        """
        arr = self._array(array)
        try:
            return arr[selection]
        except StoreError:
            raise
        except Exception as exc:
            damage = self.locate_damage(array, rows_of(selection, arr))
            if damage is None:
                raise
            raise StoreError(damage) from exc

    def locate_damage(self, array: str, chunks: Sequence[int] | None = None) -> str | None:
        """The error text for the first damaged chunk (shard) of ``array`` among row chunks ``chunks`` (default
        all), or None when their files are intact. Reads their files; used once a read has failed."""
        return locate_damage(self.path, self._array(array), array, chunks)

    # ------------------------------------------------------------------ chunk bookkeeping
    def _array(self, name: str) -> zarr.Array:
        # Group lookups read metadata from disk each time; a tiling task asks for the same arrays per chunk.
        arr = self._arrays.get(name)
        if arr is None:
            arr = self._arrays[name] = self.group[name]
        return arr

    def chunk_slices(self, array: str = "patches") -> list[slice]:
        """Row slices of the chunks of ``array`` (of its shards when sharded; all arrays share the tile chunking)."""
        arr = self._array(array)
        rows = _rows(arr)
        n = arr.shape[0]
        return [slice(i, min(i + rows, n)) for i in range(0, n, rows)]

    def done_chunks(self, array: str = "patches") -> np.ndarray:
        """Bool mask over chunks of ``array``: True where the chunk is completely written."""
        key = f"done/{array}"
        if key not in self.group:
            return np.zeros(len(self.chunk_slices(array)), bool)
        return self.read(key).astype(bool)

    def mark_done(self, array: str, chunk_index: int) -> None:
        key = f"done/{array}"
        if _is_raw_1d(self._array(key)):
            self.write_raw_chunk(key, chunk_index, np.ones(1, np.uint8))
        else:  # done arrays of stores from before raw chunk writes
            self._writer(key)[chunk_index] = 1

    def is_complete(self, array: str) -> bool:
        return array in self.group and bool(self.done_chunks(array).all())

    def write_chunk(self, array: str, chunk_index: int, data: np.ndarray) -> None:
        """Write one whole chunk of ``array`` and mark it done (data first, marker second)."""
        sl = self.chunk_slices(array)[chunk_index]
        self._writer(array)[sl] = data
        self.mark_done(array, chunk_index)

    def _writer(self, name: str) -> zarr.Array:
        """``name`` opened for Zarr's writes: through a plain store (a write that merges into an existing chunk
        reads it first, and a new chunk is not there yet) and writing every chunk, fill value or not."""
        arr = self._writers.get(name)
        if arr is None:
            read_only = self.group.store.read_only  # a store opened with mode "r" stays read-only
            arr = self._writers[name] = zarr.open_array(
                LocalStore(self.path, read_only=read_only), path=name, mode="r" if read_only else "r+",
            ).with_config({"write_empty_chunks": True})
        return arr

    @property
    def patch_encoding(self) -> dict[str, Any]:
        """How ``patches`` is stored: ``{"name": "pixels" | "jpeg", ...}`` (see the module docstring)."""
        return dict(self.patches.attrs.get("encoding", {"name": "pixels"}))

    def write_raw_chunk(self, array: str, chunk_index: int, values: np.ndarray) -> None:
        """Write chunk ``chunk_index`` of a 1-D, uncompressed array straight to its file (atomically).

        For the small per-chunk arrays the tiler fills (QC values, done markers): Zarr's own write path costs
        as much per call as tiling several tiles. The bytes are exactly what Zarr would write: the
        whole chunk, little-endian, padded with the fill value, then its CRC32C where the array has the
        ``crc32c`` codec.
        """
        arr = self._array(array)
        if not _is_raw_1d(arr):
            raise StoreError(f"{self.path}: {array} is not an uncompressed 1-D array; write it through zarr")
        rows = arr.chunks[0]
        values = np.asarray(values)
        if len(values) > rows:
            raise StoreError(f"{self.path}: {len(values)} values for a chunk of {rows} in {array}")
        chunk = np.full(rows, arr.fill_value, dtype=arr.dtype.newbyteorder("<"))
        chunk[: len(values)] = values
        data = [chunk.tobytes()]
        if isinstance(arr.metadata.codecs[-1], Crc32cCodec):
            data.append(crc32c_bytes(data[0]))
        self._write_file(arr, (chunk_index,), data)

    def write_pixel_chunk(self, chunk_index: int, batch: np.ndarray) -> None:
        """Write chunk ``chunk_index`` of ``"pixels"``-encoded ``patches`` (atomically; :meth:`mark_done` after).

        Compresses the chunk with the array's own Blosc settings, appends its CRC32C where the array has the
        ``crc32c`` codec after Blosc, and writes the file directly: through Zarr the same write costs several
        times the compression (chunk assembly copies, event-loop round trips). Arrays with other codecs are
        written through Zarr.

        Parameters
        ----------
        chunk_index : int
        batch : (n, S, S, 3) uint8 array
            The chunk's tiles, ``n`` = the length of ``chunk_slices()[chunk_index]``.
        """
        arr = self._array("patches")
        sl = self.chunk_slices("patches")[chunk_index]
        if len(batch) != sl.stop - sl.start:
            raise StoreError(f"{self.path}: chunk {chunk_index} holds {sl.stop - sl.start} tiles, got {len(batch)}")
        blosc = _blosc_of(arr)
        if blosc is None or arr.shards is not None:
            self._writer("patches")[sl] = batch
            return
        rows = arr.chunks[0]
        if len(batch) < rows:  # Zarr stores whole chunks: the last one is padded with the fill value
            pad = np.full((rows - len(batch), *batch.shape[1:]), arr.fill_value, dtype=np.uint8)
            batch = np.concatenate([batch, pad])
        data = [blosc.encode(np.ascontiguousarray(batch, dtype=np.uint8))]
        if isinstance(arr.metadata.codecs[-1], Crc32cCodec):
            data.append(crc32c_bytes(data[0]))
        self._write_file(arr, (chunk_index, 0, 0, 0), data)

    def write_jpeg_shard(self, chunk_index: int, tiles: Sequence[bytes]) -> None:
        """Write shard ``chunk_index`` of ``"jpeg"``-encoded ``patches`` from complete JPEG streams, one per tile.

        The shard file is laid out as Zarr's sharding codec reads it: the tiles' bytes back to back (each followed
        by its CRC32C where the inner codecs end with ``crc32c``), then the index (offset, length) of each tile as
        little-endian uint64 and its CRC32C (unused slots of a last, partial shard are marked empty). It is
        written atomically; :meth:`mark_done` comes after.

        Parameters
        ----------
        chunk_index : int
            Shard number (tiles ``chunk_slices()[chunk_index]``).
        tiles : sequence of bytes
            One full JPEG stream per tile of the shard (``merge_jpeg_tables`` of the stored tile).
        """
        arr = self._array("patches")
        _check_jpeg_shards(arr, self.path)
        sl = self.chunk_slices("patches")[chunk_index]
        if len(tiles) != sl.stop - sl.start:
            raise StoreError(f"{self.path}: shard {chunk_index} holds {sl.stop - sl.start} tiles, got {len(tiles)}")
        rows = _rows(arr)
        parts: list[bytes] = list(tiles)
        lengths = np.fromiter((len(t) for t in tiles), dtype=np.uint64, count=len(tiles))
        if isinstance(arr.metadata.codecs[0].codecs[-1], Crc32cCodec):  # each tile followed by its checksum
            parts = [p for t in tiles for p in (t, crc32c_bytes(t))]
            lengths += 4
        index = np.full((rows, 2), _MAX_UINT64, dtype="<u8")
        index[: len(tiles), 1] = lengths
        index[: len(tiles), 0] = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.uint64)
        index_bytes = index.tobytes()
        self._write_file(arr, (chunk_index, 0, 0, 0), [*parts, index_bytes, crc32c_bytes(index_bytes)])

    def _write_file(self, arr: zarr.Array, chunk_coords: tuple[int, ...], data: Sequence[bytes]) -> None:
        """Write a chunk file from ``data``, its parts in order (not joined first: no copy of the chunk)."""
        target = self.path / arr.path / arr.metadata.encode_chunk_key(chunk_coords)
        # the folder is made once per handle; it can still go away with an array rewritten through another handle
        known = target.parent in self._dirs
        try:
            atomic_write(target, data, mkdir=not known)
        except ConfigError:
            atomic_write(target, data, mkdir=True)
        self._dirs.add(target.parent)

    # ------------------------------------------------------------------ features and scores
    def create_feature_array(self, name: str, dim: int, *, dtype: str = "float16", attrs: dict | None = None,
                             kind: str = "features", overwrite: bool = False,
                             replace_changed: bool = False) -> zarr.Array:
        """Create ``features/<name>`` (or ``scores/<name>``) chunked like the tiles, with a done marker array.

        An existing array with the same dim, dtype and attrs is returned as is (resume); a different one raises
        :class:`StoreError` unless ``overwrite`` (always start afresh) or ``replace_changed`` (start afresh only
        when the settings differ).
        """
        key = f"{kind}/{name}"
        attrs = json.loads(json.dumps(attrs or {}))
        n = self.n_tiles
        rows = max(1, min(self.chunk_tiles, n)) if n else 1
        if key in self.group and not overwrite:
            arr = self.group[key]
            same = arr.shape == (n, dim) and str(arr.dtype) == dtype and dict(arr.attrs) == attrs
            if same:
                return arr
            if replace_changed:
                return self.create_feature_array(name, dim, dtype=dtype, attrs=attrs, kind=kind, overwrite=True)
            raise StoreError(
                f"{self.path}: {key} exists with different settings ({arr.shape}, {arr.dtype}); "
                "pass --overwrite to recompute it"
            )
        arr = checked_array(self.group, key, shape=(n, dim), dtype=dtype, chunks=(rows, dim), fill_value=0,
                            attributes=attrs, overwrite=True)
        checked_array(self.group, f"done/{key}", shape=(_n_chunks(n, rows),), dtype="uint8", chunks=(1,),
                      fill_value=0, compressors=None, overwrite=True)
        # handles and chunk folders cached for the arrays just replaced describe the old ones
        for cache in (self._arrays, self._writers):
            cache.pop(key, None)
            cache.pop(f"done/{key}", None)
        self._dirs.clear()
        return arr

    def feature_names(self, kind: str = "features") -> list[str]:
        if kind not in self.group:
            return []
        return sorted(name for name, _ in self.group[kind].arrays())

    def read_features(self, name: str, kind: str = "features") -> np.ndarray:
        """``features/<name>`` as float32 (N, D); raises :class:`StoreError` when missing or incomplete."""
        key = f"{kind}/{name}"
        if key not in self.group:
            have = ", ".join(self.feature_names(kind)) or "none"
            raise StoreError(f"{self.path}: no {key} (have: {have}); run `slidestream embed --encoder {name}`")
        if not self.is_complete(key):
            raise StoreError(f"{self.path}: {key} is incomplete; rerun the command that writes it to resume")
        return self.read(key).astype(np.float32)

    def write_scores(self, name: str, scores: np.ndarray, attrs: dict | None = None) -> None:
        """Write ``scores/<name>`` (N, K) float32 in one go (small: one value per tile and class)."""
        scores = np.asarray(scores, np.float32)
        if scores.ndim == 1:
            scores = scores[:, None]
        key = f"scores/{name}"
        self.create_feature_array(name, scores.shape[1], dtype="float32", attrs=attrs, kind="scores", overwrite=True)
        self._writer(key)[...] = scores
        for i in range(len(self.chunk_slices(key))):
            self.mark_done(key, i)

    def read_scores(self, name: str) -> np.ndarray:
        return self.read_features(name, kind="scores")

    def summary(self) -> dict[str, Any]:
        """JSON-able overview for status tables."""
        return {
            "slide_id": self.slide_id,
            "path": str(self.path),
            "tiles": self.n_tiles,
            "patches": self.has_patches and self.is_complete("patches"),
            "features": self.feature_names("features"),
            "scores": self.feature_names("scores"),
            "status": self.status,
        }


def _rows(arr: zarr.Array) -> int:
    """Tiles per write unit of an array: its shard when sharded, else its chunk."""
    return (arr.shards or arr.chunks)[0]


def _is_raw_1d(arr: zarr.Array) -> bool:
    """1-D and stored as plain little-endian bytes, with or without a final crc32c (write_raw_chunk's layout)."""
    codecs = arr.metadata.codecs
    return (arr.metadata.zarr_format == 3 and arr.ndim == 1 and isinstance(codecs[0], BytesCodec)
            and (codecs[0].endian is None or codecs[0].endian.value == "little")
            and (len(codecs) == 1 or (len(codecs) == 2 and isinstance(codecs[1], Crc32cCodec))))


def _blosc_of(arr: zarr.Array):
    """numcodecs' Blosc with the settings of an uncompressed-bytes + Blosc uint8 array, else None.

    Any Blosc frame decodes with Zarr's BloscCodec (the frame header carries its settings), so chunks compressed
    here read back through Zarr; using the array's own settings keeps their size what Zarr would have written.
    """
    import numcodecs

    codecs = arr.metadata.codecs
    if codecs and isinstance(codecs[-1], Crc32cCodec):
        codecs = codecs[:-1]  # the checksum of the compressed bytes: write_pixel_chunk appends it
    if not (len(codecs) == 2 and isinstance(codecs[0], BytesCodec) and isinstance(codecs[1], BloscCodec)
            and arr.dtype == np.uint8):
        return None
    c = codecs[1]
    shuffle = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE,
               "bitshuffle": numcodecs.Blosc.BITSHUFFLE}[c.shuffle.value]
    return numcodecs.Blosc(cname=c.cname.value, clevel=c.clevel, shuffle=shuffle, blocksize=c.blocksize)


def _check_jpeg_shards(arr: zarr.Array, path: Path) -> None:
    """Refuse to hand-write shards unless the array's codecs are the layout write_jpeg_shard produces."""
    codecs = arr.metadata.codecs
    ok = (len(codecs) == 1 and isinstance(codecs[0], ShardingCodec)
          and codecs[0].index_location.value == "end"
          and [type(c) for c in codecs[0].codecs] in ([JpegTileCodec], [JpegTileCodec, Crc32cCodec])
          and [type(c) for c in codecs[0].index_codecs] == [BytesCodec, Crc32cCodec]
          and all(c.endian is None or c.endian.value == "little" for c in codecs[0].index_codecs
                  if isinstance(c, BytesCodec))
          and tuple(codecs[0].chunk_shape[:1]) == (1,))
    if not ok:
        raise StoreError(f"{path}: patches are not stored as sharded JPEG tiles; cannot write JPEG shards")


def _n_chunks(n: int, rows: int) -> int:
    return max(1, math.ceil(n / rows)) if n else 0


def identity_of(path: str | os.PathLike, fingerprint: str) -> SlideIdentity:
    st = os.stat(path)
    return SlideIdentity(path=str(Path(path).resolve()), size=st.st_size, mtime=st.st_mtime, fingerprint=fingerprint)


def identity_dict(identity: SlideIdentity) -> dict[str, Any]:
    return asdict(identity)
