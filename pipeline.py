"""Batch stages over many slides: tile → embed → (train | predict) → outputs.

Each stage takes a list of inputs, runs slide by slide, records failures instead of stopping, and returns one
:class:`~slidestream.batch.SlideOutcome` per slide. The CLI only parses arguments and shows progress.
"""

from __future__ import annotations

import csv
import errno
import os
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Protocol

import numpy as np

from .batch import SlideInput, SlideOutcome, slide_lock, write_run_record
from .errors import SlidestreamError, StoreError
from .tiling.grid import TilingParams

# The store and the tiler are imported where they are used: they load Zarr and Dask, which the first slide's
# segmentation need not wait for (tile_batch).
if TYPE_CHECKING:
    from .tiling.tiler import TileResult


class Reporter(Protocol):
    """How stages show progress; the CLI passes a rich-based one, library users may pass none."""

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Any]: ...

    def log(self, message: str) -> None: ...


class QuietReporter:
    """A reporter that shows nothing."""

    class _Task:
        def update(self, done: int, total: int | None = None) -> None:
            pass

    @contextmanager
    def task(self, description: str, total: int | None):
        yield self._Task()

    def log(self, message: str) -> None:
        pass


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, SlidestreamError):
        return str(exc)
    if isinstance(exc, PermissionError) or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC):
        from .distributed_run import exc_text

        return exc_text(exc)
    # An unexpected error: keep the last frame so a bug report has a place to look.
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"


def run_per_slide(items: list, stage: str, fn, reporter: Reporter, *, label=lambda it: it.slide_id,
                  path=lambda it: str(it.path)) -> list[SlideOutcome]:
    """Apply ``fn(item, task)`` to every item; exceptions become failed outcomes and the batch goes on."""
    outcomes = []
    with reporter.task(f"{stage}: {len(items)} slide(s)", len(items)) as overall:
        for i, it in enumerate(items):
            t0 = time.perf_counter()
            try:
                details = fn(it) or {}
                status = details.pop("_status", "ok")
                details.pop("_seconds", None)
                outcomes.append(SlideOutcome(label(it), path(it), status, time.perf_counter() - t0, None, details))
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad slide must not end the batch
                msg = _error_text(exc)
                reporter.log(f"[red]failed[/red] {label(it)}: {msg}")
                outcomes.append(SlideOutcome(label(it), path(it), "failed", time.perf_counter() - t0, msg))
            overall.update(i + 1)
    return outcomes


# ---------------------------------------------------------------------------------------------------- tiling
def make_normalizer(method: str | None, reference: str | os.PathLike | None = None):
    """A stain normaliser fitted to ``reference`` (an RGB image file; None or "default": the built-in H&E
    reference), or None when ``method`` is None or "none"."""
    if method is None or method.lower() == "none":
        return None
    from PIL import Image

    from .errors import ConfigError
    from .stain import get_normalizer

    norm = get_normalizer(method)
    if reference not in (None, "default"):
        try:
            with Image.open(reference) as im:
                norm.fit(np.asarray(im.convert("RGB")))
        except OSError as exc:
            raise ConfigError(f"{reference}: cannot read the stain reference image ({exc})") from exc
    return norm


def tile_batch(
    inputs: list[SlideInput],
    out_dir: str | os.PathLike,
    params: TilingParams,
    *,
    save_patches: bool = True,
    overwrite: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    stain: str | None = None,
    stain_reference: str | None = None,
    roi: str | os.PathLike | None = None,
    export_tissue: bool = False,
    reporter: Reporter | None = None,
) -> list[SlideOutcome]:
    """Tile every slide into ``<out_dir>/<slide_id>.zarr``; writes ``run-tile.json``.

    ``roi`` restricts tiling to annotated regions: one annotation file for every slide, or a folder holding
    ``<slide_id>.geojson``/``.xml``/``.json`` per slide (slides without one are tiled whole). ``export_tissue``
    writes each slide's tissue outline as ``<slide_id>.tissue.geojson`` for QuPath.

    ``stain`` ("macenko", "reinhard", "vahadane" or None) normalises the stored patches, fitted per slide;
    ``scheduler`` (an address, or "local") runs the batch on a ``dask.distributed`` cluster, one task per slide.
    """
    reporter = reporter or QuietReporter()
    out_dir = Path(out_dir)

    def roi_for(it: SlideInput):
        if roi is None:
            return None
        from .tiling.regions import roi_from_file

        path = Path(roi)
        if path.is_dir():
            found = [path / f"{it.slide_id}{ext}" for ext in (".geojson", ".geojson.gz", ".xml", ".json")]
            found = [f for f in found if f.is_file()]
            return roi_from_file(found[0]) if found else None
        return roi_from_file(path)

    options = {"save_patches": save_patches, "overwrite": overwrite, "stain": stain,
               "stain_reference": stain_reference, "export_tissue": export_tissue}
    record_params = {**params.to_dict(), "save_patches": save_patches, "stain": stain,
                     "stain_reference": stain_reference, "scheduler": scheduler, "roi": str(roi) if roi else None}
    if scheduler:
        from .distributed_run import batch_client, run_on_cluster

        out_dir = out_dir.resolve()
        with batch_client(scheduler, log=reporter.log) as client, \
                reporter.task(f"tile: {len(inputs)} slide(s) on {client.scheduler.address}", len(inputs)) as t:
            outcomes, cluster = run_on_cluster(
                client, inputs, tile_slide_job,
                lambda it: (str(Path(it.path).resolve()), str(out_dir), params, it.slide_id, it.mpp, roi_for(it),
                            workers or 1, options),
                stage="tile", label=lambda it: it.slide_id, path=lambda it: str(it.path),
                on_done=lambda d: t.update(d), log=reporter.log)
        write_run_record(out_dir, "tile", outcomes, {**record_params, "cluster": cluster.to_dict()})
        return outcomes

    # The first slide's tissue is segmented by a forked helper while this process imports the store and the tiler
    # (Zarr, Dask): with several workers, that start-up then takes ~0.15 s less.
    early = None
    if inputs and (overwrite or not (out_dir / f"{inputs[0].slide_id}.zarr").exists()):
        from .tiling.overview import start_tissue_mask

        early = start_tissue_mask(inputs[0].path, params, mpp=inputs[0].mpp, workers=workers)

    def one(it: SlideInput) -> dict:
        with reporter.task(f"tile {it.slide_id}", None) as t:
            return tile_slide_job(it.path, out_dir, params, it.slide_id, it.mpp, roi_for(it), workers, options,
                                  progress=lambda d, n: t.update(d, n), tissue=early if it is inputs[0] else None)

    try:
        outcomes = run_per_slide(inputs, "tile", one, reporter)
    finally:
        if early is not None:
            early.close()
    write_run_record(out_dir, "tile", outcomes, record_params)
    return outcomes


def tile_slide_job(slide_path: str | os.PathLike, out_dir: str | os.PathLike, params: TilingParams, slide_id: str,
                   mpp: float | None, roi, workers: int | None, options: dict, progress=None, tissue=None) -> dict:
    """Tile one slide under its lock: the unit of work of :func:`tile_batch`, locally or on a cluster worker.

    Parameters
    ----------
    slide_path, out_dir : path
        As seen by the process running the job (on a cluster: the worker's file system).
    params : TilingParams
    slide_id : str
    mpp : float or None
        Level-0 µm/px override.
    roi : shapely geometry or None
        Region of interest in level-0 pixels.
    workers : int or None
        Local workers inside this job (processes on Linux, else threads).
    options : dict
        ``save_patches``, ``overwrite``, ``stain``, ``stain_reference``, ``export_tissue`` of :func:`tile_batch`.
    tissue : EarlyTissue, optional
        The slide's tissue mask being computed by a helper process (see :func:`tile_slide`).

    Returns
    -------
    dict
        Outcome details: ``tiles``, ``tissue_mm2``, ``action``, ``chunks_written``, ``store``, ``worker`` and the
        private ``_status``/``_seconds`` keys read by the batch runners.
    """
    from .distributed_run import where_am_i
    from .tiling.tiler import tile_slide

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    with slide_lock(out_dir, slide_id):
        res: TileResult = tile_slide(slide_path, out_dir, params, mpp=mpp, save_patches=options["save_patches"],
                                     overwrite=options["overwrite"], workers=workers,
                                     stain=make_normalizer(options["stain"], options["stain_reference"]), roi=roi,
                                     slide_id=slide_id, progress=progress, tissue=tissue)
        if options["export_tissue"]:
            from .tiling.regions import write_tissue_geojson

            write_tissue_geojson(res.store, out_dir / f"{slide_id}.tissue.geojson")
    return {"tiles": res.n_tiles, "tissue_mm2": round(res.tissue_area_mm2, 3), "action": res.action,
            "chunks_written": res.chunks_written, "store": str(res.store), "worker": where_am_i(),
            "_status": "skipped" if res.action == "up-to-date" else "ok", "_seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------------- embedding
def store_paths(out_dir: str | os.PathLike, slide_ids: list[str] | None = None) -> list[Path]:
    """Stores in ``out_dir`` (all, or those of ``slide_ids`` in that order)."""
    out_dir = Path(out_dir)
    if slide_ids is not None:
        return [out_dir / f"{s}.zarr" for s in slide_ids]
    return sorted(p for p in out_dir.glob("*.zarr") if (p / "zarr.json").is_file())


def embed_batch(
    stores: list[Path],
    encoder_name: str,
    *,
    weights: str = "hub",
    device: str = "cpu",
    batch_size: int | None = None,
    overwrite: bool = False,
    stain: str | None = None,
    stain_reference: str | None = None,
    scheduler: str | None = None,
    reporter: Reporter | None = None,
    encoder=None,
) -> list[SlideOutcome]:
    """Embed the tiles of every store with one encoder (created once) into ``features/<encoder>``.

    ``stain`` normalises tiles on the encoder's device on the fly, with the source stain estimated once per slide
    from an evenly spread sample of its tiles (for stores whose patches were not normalised at tiling).

    ``scheduler`` (a ``dask.distributed`` address, or "local" for a local cluster) makes each store one task on
    the cluster's workers; every worker process creates the encoder once (:func:`embed_store_job`) and the stores
    (and the slides, for stores without patches) must be at the same paths on the workers.
    """
    reporter = reporter or QuietReporter()
    options = {"weights": weights, "device": device, "batch_size": batch_size, "overwrite": overwrite,
               "stain": stain, "stain_reference": stain_reference}
    params = {"encoder": encoder_name, "weights": weights, "device": device, "stain": stain,
              "stain_reference": stain_reference, "scheduler": scheduler}

    def label(p) -> str:
        return Path(p).name.removesuffix(".zarr")

    if scheduler:
        from .distributed_run import batch_client, run_on_cluster

        stores = [Path(p).resolve() for p in stores]
        with batch_client(scheduler, log=reporter.log) as client, \
                reporter.task(f"embed: {len(stores)} store(s) on {client.scheduler.address}", len(stores)) as t:
            outcomes, cluster = run_on_cluster(client, stores, embed_store_job,
                                               lambda p: (str(p), encoder_name, options), stage="embed",
                                               label=label, path=str, on_done=lambda d: t.update(d),
                                               log=reporter.log)
        if any(o.details.get("random_weights") for o in outcomes):
            reporter.log(f"[yellow]warning[/yellow]: encoder {encoder_name!r} has RANDOM weights; its features are "
                         "not meaningful for diagnosis")
        if stores:
            write_run_record(stores[0].parent, "embed", outcomes, {**params, "cluster": cluster.to_dict()})
        return outcomes

    if encoder is None:
        from .models import create_encoder

        # not the per-process cache: a weights file may have changed since an earlier batch of this process
        encoder = create_encoder(encoder_name, weights=weights, device=device)
    if encoder.random_init:
        reporter.log(f"[yellow]warning[/yellow]: encoder {encoder_name!r} has RANDOM weights "
                     f"({encoder.weights_source}); its features are not meaningful for diagnosis")

    def one(path: Path) -> dict:
        with reporter.task(f"embed {label(path)}", None) as t:
            return embed_store_job(path, encoder_name, options, encoder=encoder,
                                   progress=lambda d, n: t.update(d, n))

    outcomes = run_per_slide(stores, "embed", one, reporter, label=label, path=str)
    if stores:
        write_run_record(stores[0].parent, "embed", outcomes, {**params, "weights": encoder.weights_source})
    return outcomes


# One encoder per (name, weights, device) per process: a cluster worker embeds many stores with the model it
# loaded for the first one.
_ENCODERS: dict[tuple, Any] = {}
_ENCODERS_LOCK = threading.Lock()


def _cached_encoder(name: str, weights: str, device: str):
    from .models import create_encoder

    with _ENCODERS_LOCK:
        key = (name, str(weights), str(device))
        if key not in _ENCODERS:
            _ENCODERS[key] = create_encoder(name, weights=weights, device=device)
        return _ENCODERS[key]


def embed_store_job(path: str | os.PathLike, encoder_name: str, options: dict, *, encoder=None,
                    progress=None) -> dict:
    """Embed one store under its slide lock: the unit of work of :func:`embed_batch`, locally or on a worker.

    Parameters
    ----------
    path : path
        The store, as seen by the process running the job.
    encoder_name : str
    options : dict
        ``weights``, ``device``, ``batch_size``, ``overwrite``, ``stain``, ``stain_reference`` of
        :func:`embed_batch`.
    encoder : Encoder, optional
        Default: created once per process and kept for the next stores.

    Returns
    -------
    dict
        ``tiles``, ``patches_per_s``, ``chunks_written``, ``worker``, ``random_weights`` and the private
        ``_status``/``_seconds`` keys.
    """
    from .distributed_run import where_am_i
    from .models.embed import embed_store
    from .tiling.store import SlideStore

    t0 = time.perf_counter()
    path = Path(path)
    encoder = encoder or _cached_encoder(encoder_name, options["weights"], options["device"])
    with slide_lock(path.parent, path.name.removesuffix(".zarr")):
        store = SlideStore.open(path, mode="r+")
        if store.status.get("tiling") != "complete":
            raise StoreError(f"{path}: tiling is not complete; rerun `slidestream tile` first")
        norm = make_normalizer(options["stain"], options["stain_reference"])
        if norm is not None and store.n_tiles:
            idx = np.unique(np.linspace(0, store.n_tiles - 1, min(store.n_tiles, 64)).round().astype(int))
            if store.has_patches and store.is_complete("patches"):
                sample = store.patches.get_orthogonal_selection((idx,))
            else:
                from .tiling.grid import ReadPlan
                from .tiling.tiler import read_tile
                from .wsi.slide import open_slide

                t_ = store.tiling
                plan = ReadPlan(t_["level"], t_["read_size"], t_["tile_size"], t_["extent0"], 0.0)
                with open_slide(store.slide["path"]) as slide:
                    sample = np.stack([read_tile(slide, xy, plan) for xy in store.coords[idx]])
            norm.fit_source(sample)
        res = embed_store(store, encoder, batch_size=options["batch_size"], overwrite=options["overwrite"],
                          stain=norm, progress=progress)
    status = "skipped" if res.chunks_written == 0 else "ok"
    return {"tiles": res.n_tiles, "patches_per_s": round(res.patches_per_s, 1), "chunks_written": res.chunks_written,
            "worker": where_am_i(), "random_weights": bool(encoder.random_init), "_status": status,
            "_seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------------- bags
@dataclass
class Bag:
    """Features and tile coordinates of one slide."""

    slide_id: str
    store: Path
    features: np.ndarray  # (N, D) float32
    coords: np.ndarray  # (N, 2) int64
    extent0: float
    label: int | None = None
    meta: dict = field(default_factory=dict)


def load_bag(store_path: Path, encoder_name: str, label: int | None = None) -> Bag:
    from .tiling.store import SlideStore

    store = SlideStore.open(store_path)
    return Bag(slide_id=store.slide_id, store=Path(store_path), features=store.read_features(encoder_name),
               coords=store.coords, extent0=float(store.tiling["extent0"]), label=label)


@dataclass
class FeatureNorm:
    """Per-dimension standardisation of features: ``(x - mean) / std``."""

    mean: np.ndarray
    std: np.ndarray

    def apply(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureNorm":
        return cls(np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32))


def feature_standardizer(bags: list[Bag]) -> FeatureNorm:
    """Mean and standard deviation over all instances of ``bags`` (each slide weighted by its tile count)."""
    x = np.concatenate([b.features for b in bags]).astype(np.float64)
    std = x.std(axis=0)
    # Constant dimensions (e.g. a statistic that is always 0) keep scale 1 instead of dividing by zero.
    return FeatureNorm(x.mean(axis=0).astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32))


def write_predictions_csv(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Predictions table (one row per slide), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------------- training
@dataclass
class TrainSummary:
    checkpoint: Path
    n_slides: int
    folds: int
    cv_metrics: dict
    temperature: float
    seconds: float


def labelled_bags(inputs: list[SlideInput], stores_dir: Path, encoder_name: str, reporter: Reporter,
                  ) -> tuple[list[Bag], list[SlideOutcome]]:
    """Bags of every input whose store holds complete ``features/<encoder_name>``; failures are reported."""
    bags: list[Bag] = []

    def one(it: SlideInput) -> dict:
        bag = load_bag(stores_dir / f"{it.slide_id}.zarr", encoder_name, it.label)
        bag.meta = dict(it.meta, split=it.split or "")
        bags.append(bag)
        return {"tiles": len(bag.features)}

    outcomes = run_per_slide(inputs, "load features", one, reporter)
    return bags, outcomes


def train_from_stores(
    inputs: list[SlideInput],
    stores_dir: str | os.PathLike,
    encoder_name: str,
    checkpoint: str | os.PathLike,
    config,
    *,
    folds: int = 5,
    meta: dict | None = None,
    reporter: Reporter | None = None,
) -> TrainSummary:
    """Cross-validate a MIL head on the labelled slides, calibrate on out-of-fold logits, save the fold ensemble.

    Slides whose manifest ``split`` is "test" are left out. The checkpoint's meta records the encoder and the
    tiling parameters, so :func:`run_inference` can process new slides the same way.
    """
    from .errors import ConfigError
    from .mil import cross_validate, fit_temperature, save_checkpoint
    from .tiling.store import SlideStore

    reporter = reporter or QuietReporter()
    t0 = time.perf_counter()
    stores_dir = Path(stores_dir)
    train = [it for it in inputs if it.label is not None and (it.split or "train").lower() != "test"]
    if not train:
        raise ConfigError("no labelled training slides: the manifest needs a 'label' column (0/1)")
    bags, outcomes = labelled_bags(train, stores_dir, encoder_name, reporter)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        reporter.log(f"[yellow]{len(failed)} slide(s) left out of training (no features)[/yellow]")
    labels = np.array([b.label for b in bags])
    if len(set(labels.tolist())) < 2:
        raise ConfigError("training needs slides of both classes (labels 0 and 1)")
    k = int(min(folds, np.bincount(labels).min()))
    if k < 2:
        raise ConfigError("too few slides of the minority class for cross-validation (need at least 2)")
    # Encoders' feature scales differ by orders of magnitude (handcrafted statistics especially); standardising
    # with the training instances' statistics, saved in the checkpoint, makes one learning rate fit all.
    norm = feature_standardizer(bags)
    with reporter.task(f"train {config.head} ({k}-fold CV, folds done)", k) as t:
        cv = cross_validate([norm.apply(b.features) for b in bags], labels, config, k=k,
                            progress=lambda done, total, info: t.update(done, total))
    temperature = float(fit_temperature(cv.oof_logits, labels))
    store0 = SlideStore.open(bags[0].store)
    meta = {
        "encoder": encoder_name,
        "tiling": {k_: store0.tiling[k_] for k_ in ("mpp", "tile_size", "overlap", "min_tissue")},
        "feature_attrs": dict(store0.group[f"features/{encoder_name}"].attrs),
        "cv_metrics": cv.metrics,
        "train_slides": [b.slide_id for b in bags],
        "folds": k,
        "feature_norm": norm.to_dict(),
        **(meta or {}),
    }
    path = save_checkpoint(checkpoint, cv.models, config, meta, temperature=temperature)
    return TrainSummary(checkpoint=Path(path), n_slides=len(bags), folds=k, cv_metrics=cv.metrics,
                        temperature=temperature, seconds=time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------------- prediction
def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(x)), float(np.max(x))
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def predict_stores(stores: list[Path], checkpoint: str | os.PathLike, *, model_name: str | None = None,
                   reporter: Reporter | None = None) -> tuple[list[dict], list[SlideOutcome]]:
    """Slide probabilities and per-tile scores for stores already embedded with the checkpoint's encoder.

    Writes ``scores/<model_name>`` (columns: attention, normalised attention) into every store and returns one
    prediction row per slide: probability, calibrated probability, fold-ensemble spread.
    """
    from .mil import load_checkpoint, predict_ensemble
    from .tiling.store import SlideStore

    reporter = reporter or QuietReporter()
    model, _config, meta = load_checkpoint(checkpoint)
    encoder_name = meta["encoder"]
    model_name = model_name or Path(checkpoint).name
    temperature = float(getattr(model, "temperature", 1.0))
    rows: list[dict] = []

    norm = FeatureNorm.from_dict(meta["feature_norm"]) if "feature_norm" in meta else None

    def one(path: Path) -> dict:
        bag = load_bag(path, encoder_name)
        x = norm.apply(bag.features) if norm else bag.features
        # One thread: small MIL forwards are ~50x slower with torch's default two on this class of machine.
        raw, _, _ = predict_ensemble(model, [x], temperature=1.0, num_threads=1)
        cal, spread, scores = predict_ensemble(model, [x], temperature=temperature, num_threads=1)
        att = np.asarray(scores[0], np.float32)
        store = SlideStore.open(path, mode="r+")
        store.write_scores(model_name, np.column_stack([att, _minmax(att)]),
                           attrs={"columns": ["attention", "attention_normalized"], "checkpoint": str(checkpoint)})
        row = {"slide_id": bag.slide_id, "probability": float(raw[0]), "calibrated_probability": float(cal[0]),
               "uncertainty": float(spread[0]), "tiles": len(bag.features)}
        rows.append(row)
        return {k: v for k, v in row.items() if k != "slide_id"}

    outcomes = run_per_slide(stores, "predict", one, reporter, label=lambda p: p.name.removesuffix(".zarr"),
                             path=str)
    return rows, outcomes


# ---------------------------------------------------------------------------------------------------- outputs
TISSUE_COLOR = (80, 200, 120)


def write_slide_outputs(store_path: Path, model_name: str, out_dir: str | os.PathLike, *,
                        slide_path: str | os.PathLike | None = None, probability: float | None = None,
                        threshold: float | None = None, mpp: float | None = None,
                        formats: tuple[str, ...] = ("geojson", "png"), column: str | None = None) -> dict[str, Path]:
    """QuPath GeoJSON and/or a PNG heatmap of the per-tile scores ``scores/<model_name>`` of one store.

    The GeoJSON holds one ``tile`` per tile with every score column as a measurement, the tissue outline
    (class ``Tissue``) and, with ``threshold``, the merged regions where ``column`` reaches it (class ``Tumor``,
    name "High attention"). Coordinates are level-0 pixels of the slide as QuPath opens it: OpenSlide bounds
    offsets (MRXS) are subtracted and everything is clipped to the slide. The PNG draws ``column`` (default: the
    normalised attention when present, else the first column) over the thumbnail.
    """
    from .tiling.store import SlideStore
    from .errors import ConfigError
    from .mil.heatmap import render_heatmap
    from .tiling.tiler import tissue_polygons
    from .wsi.qupath import region_features, tile_features, tumor_regions, write_geojson
    from .wsi.slide import open_slide

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = SlideStore.open(store_path)
    scores = store.read_scores(model_name)
    names = list(store.group[f"scores/{model_name}"].attrs.get("columns", []))
    if len(names) != scores.shape[1]:
        names = [f"score_{i}" for i in range(scores.shape[1])]
    column = column or ("attention_normalized" if "attention_normalized" in names else names[0])
    if column not in names:
        raise ConfigError(f"{store.path}: scores/{model_name} has no column {column!r} (have: {', '.join(names)})")
    values = scores[:, names.index(column)]
    coords = store.coords
    extent0 = float(store.tiling["extent0"])
    bx, by, bw, bh = store.slide["bounds"]
    tile0 = int(round(extent0))
    tissue = tissue_polygons(store)
    paths: dict[str, Path] = {}
    if "geojson" in formats:
        features = tile_features(coords, tile0, {n: scores[:, i] for i, n in enumerate(names)},
                                 offset=(bx, by), slide_size=(bw, bh))
        features += region_features(tissue, "Tissue", TISSUE_COLOR, name="Tissue", offset=(bx, by),
                                    slide_size=(bw, bh), locked=True)
        if threshold is not None:
            for poly, stats in tumor_regions(coords, tile0, values, threshold, mpp=store.slide["mpp"]):
                features += region_features(poly, "Tumor", (200, 0, 0), name="High attention",
                                            measurements=stats, offset=(bx, by), slide_size=(bw, bh))
        paths["geojson"] = write_geojson(out_dir / f"{store.slide_id}.geojson", features, check=True,
                                         slide_size=(bw, bh))
    if "png" in formats:
        src = slide_path or store.slide["path"]
        override = mpp if mpp is not None else (
            store.slide["mpp"] if store.slide.get("mpp_source") == "override" else None)
        with open_slide(src, mpp=override) as slide:
            thumb = slide.thumbnail(1024)
            w0, h0 = slide.dimensions
        ds = (w0 / thumb.shape[1], h0 / thumb.shape[0])
        title = store.slide_id + (f" — P(tumour) = {probability:.3f}" if probability is not None else "")
        outlines = [np.asarray(r.coords) for p in tissue.geoms for r in [p.exterior, *p.interiors]]
        unit = (0.0, 1.0) if column.endswith("normalized") or column.endswith("probability") else (None, None)
        paths["heatmap"] = render_heatmap(thumb, ds, coords, extent0, values,
                                          out_dir / f"{store.slide_id}.heatmap.png", title=title,
                                          label=column.replace("_", " "), outlines=outlines,
                                          vmin=unit[0], vmax=unit[1])
    return paths


def heatmap_batch(stores: list[Path], out_dir: str | os.PathLike, *, model_name: str | None = None,
                  checkpoint: str | os.PathLike | None = None, formats: tuple[str, ...] = ("geojson", "png"),
                  threshold: float | None = None, column: str | None = None,
                  reporter: Reporter | None = None) -> list[SlideOutcome]:
    """GeoJSON/PNG heatmaps for many stores, from stored ``scores/<model_name>``, or computed first from the
    stores' features with ``checkpoint`` (heatmaps from already-extracted features)."""
    from .errors import ConfigError

    reporter = reporter or QuietReporter()
    probs: dict[str, float] = {}
    if checkpoint is not None:
        model_name = model_name or Path(checkpoint).name
        rows, outcomes = predict_stores(stores, checkpoint, model_name=model_name, reporter=reporter)
        probs = {r["slide_id"]: r["calibrated_probability"] for r in rows}
        stores = [p for p, o in zip(stores, outcomes) if o.status != "failed"]
    if not model_name:
        raise ConfigError("name the scores to draw with --model NAME (see scores/ in the stores), or pass "
                          "--checkpoint to compute them from the stores' features")

    def one(path: Path) -> dict:
        sid = path.name.removesuffix(".zarr")
        paths = write_slide_outputs(path, model_name, out_dir, probability=probs.get(sid), threshold=threshold,
                                    formats=formats, column=column)
        return {k: str(v) for k, v in paths.items()}

    return run_per_slide(stores, "heatmap", one, reporter, label=lambda p: p.name.removesuffix(".zarr"), path=str)


# ---------------------------------------------------------------------------------------------------- whole path
@dataclass
class RunSummary:
    out_dir: Path
    predictions_csv: Path
    rows: list[dict]
    outcomes: dict[str, list[SlideOutcome]]
    outputs: dict[str, dict[str, Path]]

    @property
    def failed(self) -> list[SlideOutcome]:
        seen, out = set(), []
        for stage in self.outcomes.values():
            for o in stage:
                if o.status == "failed" and o.slide_id not in seen:
                    seen.add(o.slide_id)
                    out.append(o)
        return out


def run_inference(
    inputs: list[SlideInput],
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    weights: str = "hub",
    device: str = "cpu",
    threshold: float | None = 0.5,
    save_patches: bool = False,
    scheduler: str | None = None,
    reporter: Reporter | None = None,
) -> RunSummary:
    """The whole inference path for new slides: tile → embed (the checkpoint's encoder) → predict → outputs.

    Writes ``<out>/stores/<slide_id>.zarr``, ``<out>/<slide_id>.geojson``, ``<out>/<slide_id>.heatmap.png`` and
    ``<out>/predictions.csv``. Slides that fail at any stage are reported and skipped. ``scheduler`` runs the
    tiling and embedding on a ``dask.distributed`` cluster (see :func:`tile_batch`).
    """
    from .mil import load_checkpoint

    reporter = reporter or QuietReporter()
    out_dir = Path(out_dir)
    _, _, meta = load_checkpoint(checkpoint)
    tiling = meta.get("tiling", {})
    params = TilingParams(**{k: v for k, v in tiling.items() if k in ("mpp", "tile_size", "overlap", "min_tissue")})
    stores_dir = out_dir / "stores"
    outcomes = {"tile": tile_batch(inputs, stores_dir, params, save_patches=save_patches, scheduler=scheduler,
                                   reporter=reporter)}
    ok = [it for it, o in zip(inputs, outcomes["tile"]) if o.status != "failed"]
    paths = store_paths(stores_dir, [it.slide_id for it in ok])
    outcomes["embed"] = embed_batch(paths, meta["encoder"], weights=weights, device=device, scheduler=scheduler,
                                    reporter=reporter)
    paths = [p for p, o in zip(paths, outcomes["embed"]) if o.status != "failed"]
    model_name = Path(checkpoint).name
    rows, outcomes["predict"] = predict_stores(paths, checkpoint, model_name=model_name, reporter=reporter)
    by_id = {it.slide_id: it for it in inputs}
    outputs: dict[str, dict[str, Path]] = {}

    def one(row: dict) -> dict:
        it = by_id[row["slide_id"]]
        outputs[row["slide_id"]] = write_slide_outputs(stores_dir / f"{row['slide_id']}.zarr", model_name, out_dir,
                                                       slide_path=it.path, probability=row["calibrated_probability"],
                                                       threshold=threshold, mpp=it.mpp)
        return {}

    outcomes["outputs"] = run_per_slide(rows, "write outputs", one, reporter, label=lambda r: r["slide_id"],
                                        path=lambda r: str(by_id[r["slide_id"]].path))
    for r in rows:
        it = by_id[r["slide_id"]]
        r.update({"slide": str(it.path), **({"label": it.label} if it.label is not None else {}), **it.meta})
        r.update({k: str(v) for k, v in outputs.get(r["slide_id"], {}).items()})
    csv_path = write_predictions_csv(out_dir / "predictions.csv", rows)
    all_outcomes = [o for stage in outcomes.values() for o in stage]
    write_run_record(out_dir, "run", all_outcomes, {"checkpoint": str(checkpoint), "encoder": meta["encoder"],
                                                    "tiling": params.to_dict(), "device": device})
    return RunSummary(out_dir=out_dir, predictions_csv=csv_path, rows=rows, outcomes=outcomes, outputs=outputs)


# ---------------------------------------------------------------------------------------------------- status
def folder_status(out_dir: str | os.PathLike) -> dict:
    """What a folder of stores holds and what the last runs recorded, for ``slidestream status``.

    Returns ``{"stores": [store summaries], "runs": {stage: {"finished", "counts", "failed": [...]}}}``.
    """
    from .tiling.store import SlideStore
    import json

    out_dir = Path(out_dir)
    stores = []
    for path in store_paths(out_dir):
        try:
            stores.append(SlideStore.open(path).summary())
        except StoreError as exc:
            stores.append({"slide_id": path.name.removesuffix(".zarr"), "path": str(path), "error": str(exc)})
    runs = {}
    for rec in sorted(out_dir.glob("run-*.json")):
        try:
            data = json.loads(rec.read_text())
        except (OSError, ValueError) as exc:
            runs[rec.stem.removeprefix("run-")] = {"error": f"unreadable run record: {exc}"}
            continue
        runs[data.get("stage", rec.stem)] = {
            "finished": data.get("finished"), "counts": data.get("counts", {}),
            "failed": [{"slide_id": s["slide_id"], "error": s.get("error")} for s in data.get("slides", [])
                       if s.get("status") == "failed"],
        }
    return {"stores": stores, "runs": runs}


# ---------------------------------------------------------------------------------------------------- predict
@dataclass
class PredictSummary:
    predictions_csv: Path
    rows: list[dict]
    metrics: dict | None
    by_group: dict | None
    metrics_json: Path | None
    outcomes: list[SlideOutcome]


def predict_batch(inputs: list[SlideInput], stores_dir: str | os.PathLike, checkpoint: str | os.PathLike,
                  out_dir: str | os.PathLike, *, threshold: float = 0.5, stratify: str | None = None,
                  seed: int = 0, reporter: Reporter | None = None) -> PredictSummary:
    """Predict embedded slides with a checkpoint: predictions CSV, per-tile scores in the stores and, when the
    inputs carry labels, metrics (AUC with bootstrap CI, balanced accuracy, sensitivity/specificity at
    ``threshold``, Brier, ECE) with ROC and reliability plots, optionally per value of a metadata column."""
    from .batch import write_json_atomic
    from .errors import ConfigError
    from .mil import metrics_by_group, plot_reliability, plot_roc
    from .mil.metrics import binary_metrics

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = store_paths(stores_dir, [it.slide_id for it in inputs])
    rows, outcomes = predict_stores(paths, checkpoint, model_name=Path(checkpoint).name, reporter=reporter)
    by_id = {it.slide_id: it for it in inputs}
    for r in rows:
        it = by_id[r["slide_id"]]
        r.update({"slide": str(it.path), "label": it.label, **it.meta})
        r["prediction"] = int(r["calibrated_probability"] >= threshold)
    csv_path = write_predictions_csv(out_dir / "predictions.csv", rows)
    labelled = [r for r in rows if r["label"] is not None]
    metrics = groups = json_path = None
    if labelled:
        y = np.array([r["label"] for r in labelled])
        p = np.array([r["calibrated_probability"] for r in labelled])
        metrics = binary_metrics(y, p, threshold=threshold, seed=seed)
        plot_roc(y, p, out_dir / "roc.png", seed=seed)
        plot_reliability(y, p, out_dir / "reliability.png")
        if stratify:
            if any(stratify not in r for r in labelled):
                raise ConfigError(f"--by {stratify}: not a column of the manifest")
            groups = metrics_by_group(y, p, [r[stratify] for r in labelled], threshold=threshold, seed=seed)
        json_path = write_json_atomic(out_dir / "metrics.json", {"overall": metrics, "by": stratify,
                                                                 "groups": groups})
    return PredictSummary(csv_path, rows, metrics, groups, json_path, outcomes)
