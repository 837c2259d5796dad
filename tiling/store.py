"""The per-slide Zarr v3 store: the one data contract between stages.

Layout of ``<out>/<slide_id>.zarr`` (a Zarr v3 group)::

    attrs["slidestream"]   software version, store schema version
    attrs["slide"]         identity of the source slide (path, size, mtime, fingerprint), vendor, mpp, size, bounds
    attrs["tiling"]        the parameters the grid was made with
    attrs["stain"]         stain normalisation parameters applied to ``patches`` (or absent)
    attrs["status"]        per-stage status: {"tiling": "complete", "features/handcrafted": "complete", ...}
    coords                 int64 (N, 2)   level-0 x, y of each tile's top-left corner
    tissue                 float32 (N,)   fraction of the tile covered by tissue
    patches                uint8 (N, S, S, 3), chunked by tiles (optional)
    features/<encoder>     float16/float32 (N, D), attrs: preset, weights, normalisation
    scores/<model>         float32 (N, K) per-tile attention / instance scores
    done/<array path>      uint8 (n_chunks,): 1 where a chunk of that array is completely written

Chunks are written whole and marked done only afterwards, so an interrupted run resumes from the first chunk not
marked and never trusts a half-written one. Zarr's local store writes each chunk file atomically (temp + rename).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from .. import __version__
from ..errors import StoreError

SCHEMA_VERSION = 1
DEFAULT_CHUNK_TILES = 64
# lz4 at a low level: patches of H&E compress poorly (~1.2x with zstd, shared/docs/perf-baselines.md), so spend as
# little CPU as possible on it while still shrinking the white background.
PATCH_COMPRESSOR = {"name": "blosc", "cname": "lz4", "clevel": 1, "shuffle": "noshuffle"}


def _patch_codec() -> BloscCodec:
    return BloscCodec(cname=PATCH_COMPRESSOR["cname"], clevel=PATCH_COMPRESSOR["clevel"],
                      shuffle=PATCH_COMPRESSOR["shuffle"])


@dataclass(frozen=True)
class SlideIdentity:
    """What identifies the source slide of a store; a change in any field means the store is stale."""

    path: str
    size: int
    mtime: float
    fingerprint: str

    def same_content(self, other: "SlideIdentity") -> bool:
        """True when both describe the same bytes (path and mtime may differ after a copy)."""
        return self.size == other.size and self.fingerprint == other.fingerprint


class SlideStore:
    """A per-slide Zarr v3 store. Open with :meth:`create` or :meth:`open`."""

    def __init__(self, path: Path, group: zarr.Group):
        self.path = Path(path)
        self.group = group

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
    ) -> "SlideStore":
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
            Tiles per chunk of ``patches`` (and of features).
        overwrite : bool
            Replace an existing store; otherwise an existing store raises :class:`StoreError`.
        extra : callable(group), optional
            Adds more arrays or attributes before the store gets its final name, so they are part of the
            all-or-nothing creation.
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
        root.create_array("coords", data=coords, chunks=(max(n, 1), 2))
        root.create_array("tissue", data=tissue, chunks=(max(n, 1),))
        if tile_size is not None:
            root.create_array(
                "patches", shape=(n, tile_size, tile_size, 3), dtype="uint8",
                chunks=(rows, tile_size, tile_size, 3), compressors=_patch_codec(), fill_value=255,
                attributes={"compressor": PATCH_COMPRESSOR},
                # Chunks are never all background (they hold tissue tiles): skip zarr's all-fill-value scan.
                config={"write_empty_chunks": True},
            )
            root.create_array("done/patches", shape=(_n_chunks(n, rows),), dtype="uint8", chunks=(1,), fill_value=0)
        if extra is not None:
            extra(root)
        # Only a complete skeleton gets the final name: a crash above leaves a ".partial" that the next run removes.
        os.replace(tmp, path)
        return cls.open(path, mode="r+")

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> "SlideStore":
        """Open an existing store (``mode`` "r" or "r+")."""
        path = Path(path)
        if not (path / "zarr.json").is_file():
            raise StoreError(f"{path}: not a slidestream store (no zarr.json); run `slidestream tile` first")
        group = zarr.open_group(path, mode=mode, zarr_format=3)
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
        return self.group["coords"][...]

    @property
    def tissue(self) -> np.ndarray:
        return self.group["tissue"][...]

    @property
    def has_patches(self) -> bool:
        return "patches" in self.group

    @property
    def patches(self) -> zarr.Array:
        if not self.has_patches:
            raise StoreError(f"{self.path}: this store holds no patches (it was tiled without --save-patches)")
        return self.group["patches"]

    # ------------------------------------------------------------------ chunk bookkeeping
    def chunk_slices(self, array: str = "patches") -> list[slice]:
        """Row slices of the chunks of ``array`` (all arrays share the tile chunking)."""
        rows = self.group[array].chunks[0]
        n = self.group[array].shape[0]
        return [slice(i, min(i + rows, n)) for i in range(0, n, rows)]

    def done_chunks(self, array: str = "patches") -> np.ndarray:
        """Bool mask over chunks of ``array``: True where the chunk is completely written."""
        key = f"done/{array}"
        if key not in self.group:
            return np.zeros(len(self.chunk_slices(array)), bool)
        return self.group[key][...].astype(bool)

    def mark_done(self, array: str, chunk_index: int) -> None:
        self.group[f"done/{array}"][chunk_index] = 1

    def is_complete(self, array: str) -> bool:
        return array in self.group and bool(self.done_chunks(array).all())

    def write_chunk(self, array: str, chunk_index: int, data: np.ndarray) -> None:
        """Write one whole chunk of ``array`` and mark it done (data first, marker second)."""
        sl = self.chunk_slices(array)[chunk_index]
        self.group[array][sl] = data
        self.mark_done(array, chunk_index)

    # ------------------------------------------------------------------ features and scores
    def create_feature_array(self, name: str, dim: int, *, dtype: str = "float16", attrs: dict | None = None,
                             kind: str = "features", overwrite: bool = False) -> zarr.Array:
        """Create ``features/<name>`` (or ``scores/<name>``) chunked like the tiles, with a done marker array.

        An existing array with the same dim, dtype and attrs is returned as is (resume); a different one raises
        :class:`StoreError` unless ``overwrite``.
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
            raise StoreError(
                f"{self.path}: {key} exists with different settings ({arr.shape}, {arr.dtype}); "
                "pass --overwrite to recompute it"
            )
        arr = self.group.create_array(key, shape=(n, dim), dtype=dtype, chunks=(rows, dim), fill_value=0,
                                      attributes=attrs, overwrite=True)
        self.group.create_array(f"done/{key}", shape=(_n_chunks(n, rows),), dtype="uint8", chunks=(1,),
                                fill_value=0, overwrite=True)
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
        return self.group[key][...].astype(np.float32)

    def write_scores(self, name: str, scores: np.ndarray, attrs: dict | None = None) -> None:
        """Write ``scores/<name>`` (N, K) float32 in one go (small: one value per tile and class)."""
        scores = np.asarray(scores, np.float32)
        if scores.ndim == 1:
            scores = scores[:, None]
        arr = self.create_feature_array(name, scores.shape[1], dtype="float32", attrs=attrs, kind="scores",
                                        overwrite=True)
        arr[...] = scores
        done = self.group[f"done/scores/{name}"]
        done[...] = np.ones(done.shape, np.uint8)

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


def _n_chunks(n: int, rows: int) -> int:
    return max(1, math.ceil(n / rows)) if n else 0


def identity_of(path: str | os.PathLike, fingerprint: str) -> SlideIdentity:
    st = os.stat(path)
    return SlideIdentity(path=str(Path(path).resolve()), size=st.st_size, mtime=st.st_mtime, fingerprint=fingerprint)


def identity_dict(identity: SlideIdentity) -> dict[str, Any]:
    return asdict(identity)
