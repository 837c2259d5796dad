"""The embedding stage over a batch: ``features/<encoder>`` in every store, locally or on a cluster."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, StoreError
from ..models import create_encoder
from ..models.embed import embed_store
from ..store import SlideStore
from ..tiling.reads import patch_reader, stain_sample_index
from ..tiling.grid import ReadPlan
from ..wsi import open_slide
from .cluster import where_am_i
from .records import SlideOutcome, slide_lock
from .reporting import QuietReporter, Reporter
from .runner import run_stage
from .tile import make_normalizer

__all__ = ["RANDOM_INIT_SEED", "create_batch_encoder", "embed_batch", "embed_store_job"]


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
    allow_mpp_mismatch: bool = False,
    precision: str = "auto",
    replace_changed: bool = False,
) -> list[SlideOutcome]:
    """Embed the tiles of every store with one encoder (created once) into ``features/<encoder>``.

    ``stain`` normalises tiles on the encoder's device on the fly, with the source stain estimated once per slide
    from an evenly spread sample of its tiles (for stores whose patches were not normalised at tiling).

    ``scheduler`` (a ``dask.distributed`` address, or "local" for a local cluster) makes each store one task on
    the cluster's workers; every worker process creates the encoder once (:func:`embed_store_job`) and the stores
    (and the slides, for stores without patches) must be at the same paths on the workers.

    A store tiled at a pixel size more than :data:`~slidestream.models.embed.MPP_TOLERANCE` away from the encoder
    preset's fails with a message saying what to do, unless ``allow_mpp_mismatch``: then it is embedded, a warning
    is logged, and the mismatch is recorded in the features' attributes and in the run record (the store's
    ``mpp_mismatch`` detail).

    ``precision`` is the encoder's compute dtype: "auto" (the preset's reduced precision on CUDA, float32 on CPU),
    or "float32", "bfloat16", "float16" on any device. bfloat16 on a CPU with AMX-BF16 (Intel Xeon 4th generation
    and later) runs a ResNet-50 trunk about 2.5 times faster, with features within about 0.3 % of float32 ones. The
    dtype is recorded in the features' attributes; features of another dtype are not mixed in: they are refused
    unless ``overwrite`` (recompute everything) or ``replace_changed`` (recompute features made with other settings,
    resume the rest; what a benchmark, which owns its stores, uses when its settings change).
    """
    reporter = reporter or QuietReporter()
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    options = {"weights": weights, "device": device, "batch_size": batch_size, "overwrite": overwrite,
               "stain": stain, "stain_reference": stain_reference, "allow_mpp_mismatch": allow_mpp_mismatch,
               "precision": precision, "replace_changed": replace_changed}
    params = {"encoder": encoder_name, "weights": weights, "device": device, "stain": stain,
              "stain_reference": stain_reference, "scheduler": scheduler,
              "allow_mpp_mismatch": allow_mpp_mismatch, **({"precision": precision} if precision != "auto" else {})}

    def label(p) -> str:
        return Path(p).name.removesuffix(".zarr")

    record_dir = Path(stores[0]).parent if stores else None
    if scheduler:
        stores = [Path(p).resolve() for p in stores]
        outcomes = run_stage(stores, "embed", lambda p: {}, reporter=reporter, scheduler=scheduler,
                             cluster_job=embed_store_job, cluster_args=lambda p: (str(p), encoder_name, options),
                             record_dir=record_dir, params=params, label=label, path=str)
        if any(o.details.get("random_weights") for o in outcomes):
            reporter.log(f"[yellow]warning[/yellow]: encoder {encoder_name!r} has RANDOM weights; its features are "
                         "not meaningful for diagnosis")
        _warn_mpp_mismatch(outcomes, encoder_name, reporter)
        return outcomes

    if encoder is None:
        # not the per-process cache: a weights file may have changed since an earlier batch of this process
        encoder = create_batch_encoder(encoder_name, weights=weights, device=device)
    if encoder.random_init:
        reporter.log(f"[yellow]warning[/yellow]: encoder {encoder_name!r} has RANDOM weights "
                     f"({encoder.weights_source}); its features are not meaningful for diagnosis")

    def one(path: Path) -> dict:
        with reporter.task(f"embed {label(path)}", None) as t:
            return embed_store_job(path, encoder_name, options, encoder=encoder,
                                   progress=lambda d, n: t.update(d, n))

    outcomes = run_stage(stores, "embed", one, reporter=reporter, record_dir=record_dir,
                         params={**params, "weights": encoder.weights_source}, label=label, path=str)
    _warn_mpp_mismatch(outcomes, encoder_name, reporter)
    return outcomes


def _warn_mpp_mismatch(outcomes: list[SlideOutcome], encoder_name: str, reporter: Reporter) -> None:
    odd = [o for o in outcomes if o.details.get("mpp_mismatch")]
    if odd:
        m = odd[0].details["mpp_mismatch"]
        reporter.log(f"[yellow]warning[/yellow]: {len(odd)} store(s) embedded with {encoder_name!r} at another pixel "
                     f"size than it expects (e.g. {odd[0].slide_id}: tiles {m['tile_mpp']:g} µm/px, encoder "
                     f"{m['encoder_mpp']:g} µm/px); allowed by allow_mpp_mismatch and recorded as mpp_mismatch")


#: Encoder compute precisions of :func:`embed_batch` ("auto": the encoder's own).
PRECISIONS = ("auto", "float32", "bfloat16", "float16")


# One encoder per (name, weights, device) per process: a cluster worker embeds many stores with the model it
# loaded for the first one.
_ENCODERS: dict[tuple, Any] = {}
_ENCODERS_LOCK = threading.Lock()


def _cached_encoder(name: str, weights: str, device: str):
    with _ENCODERS_LOCK:
        key = (name, str(weights), str(device))
        if key not in _ENCODERS:
            _ENCODERS[key] = create_batch_encoder(name, weights=weights, device=device)
        return _ENCODERS[key]


#: Seed of the random weights of ``weights="none"`` in batch embedding.
RANDOM_INIT_SEED = 0


def create_batch_encoder(name: str, weights: str | os.PathLike = "hub", device: str = "cpu"):
    """:func:`slidestream.models.create_encoder` for a batch of slides: random weights (``weights="none"``) are
    drawn from :data:`RANDOM_INIT_SEED`, so every process builds the same random encoder.

    torch seeds its default generator differently in every process; unseeded, the slides of one set embedded in
    two processes (a resumed run, dask workers, a second benchmark run) would get features from different random
    encoders, and two runs of the same benchmark would differ. The caller's random state is left as it was.
    """
    if not (isinstance(weights, str) and weights == "none"):
        return create_encoder(name, weights=weights, device=device)
    import torch

    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(RANDOM_INIT_SEED)
        return create_encoder(name, weights=weights, device=device)


def embed_store_job(path: str | os.PathLike, encoder_name: str, options: dict, *, encoder=None,
                    progress=None) -> dict:
    """Embed one store under its slide lock: the unit of work of :func:`embed_batch`, locally or on a worker.

    Parameters
    ----------
    path : path
        The store, as seen by the process running the job.
    encoder_name : str
    options : dict
        ``weights``, ``device``, ``batch_size``, ``overwrite``, ``stain``, ``stain_reference``,
        ``allow_mpp_mismatch``, and optionally ``precision`` (default "auto") and ``replace_changed`` (default False)
        of :func:`embed_batch`.
    encoder : Encoder, optional
        Default: created once per process and kept for the next stores.

    Returns
    -------
    dict
        ``tiles``, ``patches_per_s``, ``chunks_written``, ``worker``, ``random_weights``, ``mpp_mismatch`` (only
        when the store's tiles are at another pixel size than the encoder's, allowed) and the private
        ``_status``/``_seconds`` keys.
    """
    t0 = time.perf_counter()
    path = Path(path)
    precision = options.get("precision", "auto")
    encoder = encoder or _cached_encoder(encoder_name, options["weights"], options["device"])
    with slide_lock(path.parent, path.name.removesuffix(".zarr")):
        store = SlideStore.open(path, mode="r+")
        if store.status.get("tiling") != "complete":
            raise StoreError(f"{path}: tiling is not complete; rerun `slidestream tile` first")
        norm = make_normalizer(options["stain"], options["stain_reference"])
        if norm is not None and store.n_tiles:
            idx = stain_sample_index(store.n_tiles)
            if store.has_patches and store.is_complete("patches"):
                sample = store.patches.get_orthogonal_selection((idx,))
            else:
                t_ = store.tiling
                plan = ReadPlan(t_["level"], t_["read_size"], t_["tile_size"], t_["extent0"], 0.0)
                with open_slide(store.slide["path"], max_pixels=store.slide.get("max_pixels")) as slide:
                    read = patch_reader(slide, plan, store.coords)
                    sample = np.stack([read(xy) for xy in store.coords[idx]])
            norm.fit_source(sample)
        res = embed_store(store, encoder, batch_size=options["batch_size"], overwrite=options["overwrite"],
                          stain=norm, progress=progress,
                          allow_mpp_mismatch=bool(options.get("allow_mpp_mismatch", False)),
                          amp_dtype=None if precision == "auto" else precision,
                          replace_changed=bool(options.get("replace_changed", False)))
    status = "skipped" if res.chunks_written == 0 else "ok"
    details = {"tiles": res.n_tiles, "patches_per_s": round(res.patches_per_s, 1),
               "chunks_written": res.chunks_written, "worker": where_am_i(),
               "random_weights": bool(encoder.random_init), "_status": status,
               "_seconds": time.perf_counter() - t0}
    if res.mpp_mismatch is not None:
        details["mpp_mismatch"] = res.mpp_mismatch
    return details
