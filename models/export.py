"""Feature export for other toolkits: TRIDENT/CLAM-style HDF5 and ``.pt`` bags.

What is written for one store and one encoder (``<slide_id>`` is the store's name without ``.zarr``):

``<slide_id>.h5`` (needs ``h5py``)
    ``features``  float32 ``(N, D)``: the embeddings, one row per tile;
    ``coords``    int64 ``(N, 2)``: level-0 x, y of each tile's top-left corner, the rows of ``features``.
    Attributes of ``coords`` (where CLAM and TRIDENT read them): ``patch_size`` (pixels at the target MPP),
    ``patch_level``, ``patch_size_level0`` (the tile's side in level-0 pixels), ``level0_magnification``,
    ``target_magnification``, ``overlap``, ``name``. Attributes of ``features`` and of the file: the encoder's
    provenance as stored (``encoder``, ``weights``, ``random_init``, ``dtype`` ...), ``mpp`` (target µm/px),
    ``level0_mpp``, ``slide_path``, ``slide_id``, ``slidestream_version``. Non-scalar values are JSON strings.
``<slide_id>.pt``
    A plain float32 tensor ``(N, D)`` saved with ``torch.save`` (CLAM's ``pt_files``); loads with
    ``torch.load(path, weights_only=True)``. Row order is that of ``coords`` in the HDF5 file and the store.

``layout="clam"`` puts them in ``h5_files/`` and ``pt_files/`` under ``out_dir``, where CLAM's dataset classes
look. Every file is written under a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..errors import ConfigError
from ..store import SlideStore

__all__ = ["FORMATS", "export_features"]

FORMATS = ("h5", "pt")
LAYOUTS = ("flat", "clam")


def _attr(value: Any) -> Any:
    """HDF5 attributes hold scalars and strings; None and containers become JSON text."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, str, np.integer, np.floating)):
        return value
    return json.dumps(value)


def _magnification(mpp: float | None) -> float:
    # 10 µm / mpp is the usual microscope convention (0.25 µm/px = 40x); -1 as TRIDENT writes when unknown
    return round(10.0 / mpp, 3) if mpp else -1.0


def _atomic(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def export_features(
    store: SlideStore | str | os.PathLike,
    encoder_name: str,
    out_dir: str | os.PathLike,
    formats: Iterable[str] = FORMATS,
    *,
    layout: str = "flat",
) -> dict[str, Path]:
    """Write ``features/<encoder_name>`` of one store as ``<slide_id>.h5`` and/or ``<slide_id>.pt``.

    Parameters
    ----------
    store : SlideStore or path
        A slide store whose ``features/<encoder_name>`` is complete.
    encoder_name : str
        The feature key (``slidestream embed --encoder`` name).
    out_dir : path
        Output folder (created when missing). Existing files of the same slide are replaced.
    formats : iterable of {"h5", "pt"}
        What to write.
    layout : {"flat", "clam"}
        ``"flat"``: both files in ``out_dir``; ``"clam"``: ``out_dir/h5_files`` and ``out_dir/pt_files``.

    Returns
    -------
    dict
        ``{"h5": path, "pt": path}`` for the formats written.

    Raises
    ------
    StoreError
        The store has no complete ``features/<encoder_name>`` (the message names those it has).
    ConfigError
        Unknown format or layout, or ``h5`` asked for without ``h5py`` installed.
    """
    formats = tuple(dict.fromkeys(formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ConfigError(f"export formats must be among {', '.join(FORMATS)}; got {', '.join(bad) or 'none'}")
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    if "h5" in formats:
        try:
            import h5py
        except ImportError:
            raise ConfigError("HDF5 export needs h5py: pip install h5py (or export only 'pt')") from None
    if not isinstance(store, SlideStore):
        store = SlideStore.open(store)
    features = store.read_features(encoder_name)  # float32 (N, D); raises StoreError when missing or incomplete
    coords = np.asarray(store.coords, dtype=np.int64)
    out_dir = Path(out_dir)
    slide_id = store.slide_id
    written: dict[str, Path] = {}

    if "h5" in formats:
        tiling, slide = store.tiling, store.slide
        level0_mpp = slide.get("mpp")
        objective = slide.get("objective_power")
        coord_attrs = {
            "patch_size": int(tiling["tile_size"]),
            "patch_level": int(tiling["level"]),
            "patch_size_level0": round(float(tiling["extent0"])),
            "level0_magnification": float(objective) if objective else _magnification(level0_mpp),
            "target_magnification": _magnification(tiling.get("mpp")),
            "overlap": int(tiling.get("overlap", 0)),
            "name": slide_id,
        }
        feat_attrs = dict(store.group[f"features/{encoder_name}"].attrs)
        file_attrs = {
            **feat_attrs,
            "feature_key": f"features/{encoder_name}",
            "slide_id": slide_id,
            "slide_path": slide.get("path", ""),
            "mpp": tiling.get("mpp"),
            "level0_mpp": level0_mpp,
            "patch_size": coord_attrs["patch_size"],
            "patch_level": coord_attrs["patch_level"],
            "slidestream_version": __version__,
        }

        def write_h5(tmp: Path) -> None:
            with h5py.File(tmp, "w") as f:
                fd = f.create_dataset("features", data=features)
                cd = f.create_dataset("coords", data=coords)
                for k, v in coord_attrs.items():
                    cd.attrs[k] = _attr(v)
                for k, v in file_attrs.items():
                    fd.attrs[k] = _attr(v)
                    f.attrs[k] = _attr(v)

        sub = out_dir / "h5_files" if layout == "clam" else out_dir
        written["h5"] = _atomic(sub / f"{slide_id}.h5", write_h5)

    if "pt" in formats:
        tensor = torch.from_numpy(np.ascontiguousarray(features))
        sub = out_dir / "pt_files" if layout == "clam" else out_dir
        written["pt"] = _atomic(sub / f"{slide_id}.pt", lambda tmp: torch.save(tensor, tmp))
    return written
