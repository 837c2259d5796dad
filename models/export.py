"""Feature export for other toolkits: HDF5 and ``.pt`` bags that CLAM and TRIDENT read the way they read their own.

Both tools re-read tile pixels from the slide with the attributes of a ``coords`` dataset, and they give
``patch_size`` different meanings, so each layout writes the attributes of its tool (``<slide_id>`` is the store's
name without ``.zarr``; every file is written under a temporary name and renamed, so a reader never sees half a
file):

``layout="flat"`` (default): ``<out>/<slide_id>.h5`` and ``<out>/<slide_id>.pt``, TRIDENT's attributes.
``layout="trident"``: TRIDENT's job folder, ``<out>`` playing its ``<job_dir>/<coords_dir>``:
    ``<out>/patches/<slide_id>_patches.h5`` (coordinates) and ``<out>/features_<encoder>/<slide_id>.h5|.pt``.
``layout="clam"``: CLAM's folders: ``<out>/h5_files/<slide_id>.h5``, ``<out>/pt_files/<slide_id>.pt`` (what CLAM's
    ``extract_features_fp.py`` writes and its MIL datasets read) and ``<out>/patches/<slide_id>.h5`` (coordinates,
    what ``create_patches_fp.py`` writes and ``extract_features_fp.py`` reads).

The feature file holds ``features`` float32 ``(N, D)`` and ``coords`` int64 ``(N, 2)`` (level-0 x, y of each tile's
top-left corner, the rows of ``features``); ``.pt`` is the same ``(N, D)`` float32 tensor saved with ``torch.save``
(loads with ``torch.load(path, weights_only=True)``).

Attributes of ``coords``, TRIDENT (``flat``, ``trident``; as ``trident/IO.py:coords_to_h5`` writes them):
    ``patch_size`` (tile side in target pixels), ``patch_size_level0`` (its side in level-0 pixels),
    ``level0_magnification``, ``target_magnification``, ``overlap`` (target pixels), ``name``, ``savetodir``,
    ``level0_width``, ``level0_height``. TRIDENT reads ``round(patch_size * level0_magnification /
    target_magnification)`` level-0 pixels (at the pyramid level closest below, ``int()`` of its downsample) and
    resizes them to ``patch_size``. The magnifications written are the real ones, ``10 / µm/px`` of level 0 and
    of the stored tiles (tile side in level-0 pixels / tile side in pixels), not TRIDENT's nominal buckets: a
    0.2527 µm/px slide tiled 224 px at 0.5 µm/px gets 39.57x and 20.01x, so TRIDENT reads the same 443 level-0
    pixels slidestream did (its own nominal 40x→20x would read 448).
    The features dataset also gets TRIDENT's ``name``, ``savetodir`` and ``encoder`` (the encoder preset's name).

Attributes of ``coords``, CLAM (``clam``; ``Whole_Slide_Bag_FP`` reads ``patch_level`` and ``patch_size`` and calls
``read_region(coord, patch_level, (patch_size, patch_size))``):
    ``patch_level`` (the pyramid level slidestream read), ``patch_size`` (pixels *at that level*: the tiler's read
    size, 448 for 224 px at 0.5 µm/px read from a 0.25 µm/px level 0), ``target_patch_size`` (the stored tile
    side, for CLAM's ``--target_patch_size``, which resizes before the encoder; CLAM itself does not read this
    attribute), ``downsample`` (the level's, x and y), ``name``, ``save_path``. To re-extract the very tiles with
    CLAM::

        python extract_features_fp.py --data_h5_dir OUT --data_slide_dir SLIDES --slide_ext .svs \\
            --csv_path OUT/slide_ids.csv --feat_dir FEATS --target_patch_size 224 --model_name resnet50_trunc

    (``OUT/slide_ids.csv`` is written by :func:`slidestream.pipeline.export.export_batch`; the slide file must be
    ``SLIDES/<slide_id><slide_ext>``, one extension per run.)

Both tools resize with their own filter (PIL bicubic in TRIDENT, bilinear in CLAM's torchvision transform) where
slidestream averages pixel blocks, so re-read tiles differ from the stored ones by a grey level or two, not by
which tissue they show; stain normalisation applied at tiling is not reproduced by either.

Every layout also writes slidestream's provenance on the features dataset and the file: the encoder's attributes
as stored (``weights``, ``random_init``, ``dtype`` ...), ``feature_key``, ``slide_id``, ``slide_path``, ``mpp``
(target µm/px), ``level0_mpp``, ``tile_size``, ``read_level``, ``read_size``, ``extent0``,
``slidestream_version``. Non-scalar values are JSON strings.
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
from ..fileio import atomic_path
from ..store import SlideStore

__all__ = ["FORMATS", "LAYOUTS", "clam_coord_attrs", "export_features", "export_paths", "trident_coord_attrs"]

FORMATS = ("h5", "pt")
LAYOUTS = ("flat", "clam", "trident")


def _attr(value: Any) -> Any:
    """HDF5 attributes hold scalars and strings; None and containers become JSON text."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, str, np.integer, np.floating)):
        return value
    return json.dumps(value)


def _tiling(store: SlideStore) -> tuple[int, int, int, float, int]:
    t = store.tiling
    return int(t["tile_size"]), int(t["level"]), int(t["read_size"]), float(t["extent0"]), int(t.get("overlap", 0))


def trident_coord_attrs(store: SlideStore, savetodir: str | os.PathLike) -> dict[str, Any]:
    """Attributes of ``coords`` with which TRIDENT reads the pixels of the store's tiles (see the module notes).

    Parameters
    ----------
    store : SlideStore
    savetodir : path
        The coordinates folder, recorded as TRIDENT does.

    Returns
    -------
    dict
        ``patch_size``, ``patch_size_level0``, ``level0_magnification``, ``target_magnification``, ``overlap``,
        ``name``, ``savetodir``, ``level0_width``, ``level0_height``; magnifications are -1 when the slide has no
        pixel size.
    """
    tile_size, _, _, extent0, overlap = _tiling(store)
    level0_mpp = store.slide.get("mpp")
    w, h = (store.slide.get("dimensions") or [-1, -1])[:2]
    level0_mag = 10.0 / float(level0_mpp) if level0_mpp else -1.0
    # the tiles' own magnification: TRIDENT reads round(patch_size * level0_mag / target_mag) = round(extent0)
    target_mag = level0_mag * tile_size / extent0 if level0_mpp else -1.0
    return {
        "patch_size": tile_size,
        "patch_size_level0": int(round(extent0)),
        "level0_magnification": level0_mag,
        "target_magnification": target_mag,
        "overlap": overlap,
        "name": store.slide_id,
        "savetodir": str(savetodir),
        "level0_width": int(w),
        "level0_height": int(h),
    }


def clam_coord_attrs(store: SlideStore, save_path: str | os.PathLike) -> dict[str, Any]:
    """Attributes of ``coords`` with which CLAM's ``Whole_Slide_Bag_FP`` reads the pixels of the store's tiles.

    Parameters
    ----------
    store : SlideStore
    save_path : path
        The coordinates folder, recorded as CLAM does.

    Returns
    -------
    dict
        ``patch_level``, ``patch_size`` (pixels at ``patch_level``), ``target_patch_size`` (the stored tile side),
        ``downsample`` ((x, y) of ``patch_level``), ``name``, ``save_path``.
    """
    tile_size, level, read_size, extent0, _ = _tiling(store)
    ds = extent0 / read_size
    return {
        "patch_level": level,
        "patch_size": read_size,
        "target_patch_size": tile_size,
        "downsample": [ds, ds],
        "name": store.slide_id,
        "save_path": str(save_path),
    }


def _provenance(store: SlideStore, encoder_name: str) -> dict[str, Any]:
    tile_size, level, read_size, extent0, _ = _tiling(store)
    return {
        **dict(store.group[f"features/{encoder_name}"].attrs),
        "feature_key": f"features/{encoder_name}",
        "slide_id": store.slide_id,
        "slide_path": store.slide.get("path", ""),
        "mpp": store.tiling.get("mpp"),
        "level0_mpp": store.slide.get("mpp"),
        "tile_size": tile_size,
        "read_level": level,
        "read_size": read_size,
        "extent0": extent0,
        "slidestream_version": __version__,
    }


def _write_h5(path: Path, datasets: dict[str, np.ndarray], attrs: dict[str, dict[str, Any]]) -> Path:
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for name, data in datasets.items():
                ds = f.create_dataset(name, data=data)
                for k, v in attrs.get(name, {}).items():
                    ds.attrs[k] = _attr(v)
            for k, v in attrs.get("/", {}).items():
                f.attrs[k] = _attr(v)
    return path


def _folders(out_dir: Path, slide_id: str, encoder_name: str, layout: str) -> tuple[Path, Path, Path | None]:
    """(features folder, .pt folder, coordinates file or None) of a layout."""
    if layout == "clam":
        return out_dir / "h5_files", out_dir / "pt_files", out_dir / "patches" / f"{slide_id}.h5"
    if layout == "trident":
        feat_dir = out_dir / f"features_{encoder_name}"
        return feat_dir, feat_dir, out_dir / "patches" / f"{slide_id}_patches.h5"
    return out_dir, out_dir, None


def export_paths(slide_id: str, encoder_name: str, out_dir: str | os.PathLike, formats: Iterable[str] = FORMATS, *,
                 layout: str = "flat") -> dict[str, Path]:
    """The files :func:`export_features` writes for one slide: ``{"h5", "coords", "pt"}`` as the layout and
    formats have them."""
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    feat_dir, pt_dir, coords_path = _folders(Path(out_dir), slide_id, encoder_name, layout)
    formats = tuple(formats)
    out: dict[str, Path] = {}
    if "h5" in formats:
        out["h5"] = feat_dir / f"{slide_id}.h5"
        if coords_path is not None:
            out["coords"] = coords_path
    if "pt" in formats:
        out["pt"] = pt_dir / f"{slide_id}.pt"
    return out


def export_features(
    store: SlideStore | str | os.PathLike,
    encoder_name: str,
    out_dir: str | os.PathLike,
    formats: Iterable[str] = FORMATS,
    *,
    layout: str = "flat",
) -> dict[str, Path]:
    """Write ``features/<encoder_name>`` of one store as HDF5 and/or ``.pt`` in a CLAM, TRIDENT or flat layout.

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
    layout : {"flat", "clam", "trident"}
        Where the files go and which tool's ``coords`` attributes they carry (see the module notes).

    Returns
    -------
    dict
        ``{"h5": path, "pt": path}`` for the formats written, plus ``"coords"`` (the coordinates file) for the
        ``clam`` and ``trident`` layouts when ``h5`` is written.

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
            import h5py  # noqa: F401
        except ImportError:
            raise ConfigError("HDF5 export needs h5py: pip install h5py (or export only 'pt')") from None
    if not isinstance(store, SlideStore):
        store = SlideStore.open(store)
    features = store.read_features(encoder_name)  # float32 (N, D); raises StoreError when missing or incomplete
    coords = np.asarray(store.coords, dtype=np.int64).reshape(-1, 2)
    out_dir = Path(out_dir)
    sid = store.slide_id
    feat_dir, pt_dir, coords_path = _folders(out_dir, sid, encoder_name, layout)
    if layout == "clam":
        coord_attrs = clam_coord_attrs(store, out_dir / "patches")
    else:
        coord_attrs = trident_coord_attrs(store, out_dir)
    written: dict[str, Path] = {}

    if "h5" in formats:
        provenance = _provenance(store, encoder_name)
        feature_attrs = dict(provenance)
        if layout != "clam":  # TRIDENT's features attributes (``encoder``, the preset name, is there already)
            feature_attrs.update(name=sid, savetodir=str(feat_dir))
        written["h5"] = _write_h5(feat_dir / f"{sid}.h5", {"features": features, "coords": coords},
                                  {"features": feature_attrs, "coords": coord_attrs, "/": provenance})
        if coords_path is not None:
            written["coords"] = _write_h5(coords_path, {"coords": coords}, {"coords": coord_attrs})

    if "pt" in formats:
        tensor = torch.from_numpy(np.ascontiguousarray(features))
        with atomic_path(pt_dir / f"{sid}.pt") as tmp:
            torch.save(tensor, tmp)
        written["pt"] = pt_dir / f"{sid}.pt"
    return written
