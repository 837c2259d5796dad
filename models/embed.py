"""The embedding runner: patches from a slide store (or straight from the slide) → ``features/<encoder>``.

Work goes chunk by chunk of the store so every write is a whole Zarr chunk (partial-chunk writes are many times slower;
``bench/embed.py`` measures it) and every finished chunk is marked done, which makes the run resumable: a rerun
embeds only the chunks not marked done and, because a chunk is always embedded as the same batches, gives the
same numbers as an uninterrupted run.

Three stages overlap so the encoder never waits on I/O:

* loader threads read and decode the next chunks (Zarr patches, or tiles read from the slide) and, for CUDA,
  copy them into pinned memory;
* the calling thread moves uint8 tiles to the device (non-blocking), applies the optional stain transform and
  runs the encoder, whose normalisation, channels_last layout and autocast all happen on the device;
* a writer thread waits for the device-to-host copy of the features and writes the chunk and its done marker.

Precision: ``amp_dtype=None`` keeps the encoder's own compute dtype (the preset's bf16/fp16 recommendation on
CUDA, float32 on CPU, where results must match the fp32 reference). An explicit ``amp_dtype`` is honoured on
every device, CPU included (bf16 on CPUs with AMX runs ViTs several times faster). The dtype used is recorded in the
feature attributes, so features of different precision are never mixed in one array.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..tiling.grid import ReadPlan
from ..store import SlideStore
from ..tiling.reads import patch_reader
from ..wsi.slide import open_slide

__all__ = ["MPP_TOLERANCE", "EmbedResult", "MppMismatchWarning", "check_tile_mpp", "embed_store", "feature_attrs"]

#: Relative difference between the tiles' µm/px and the encoder's beyond which embedding needs an explicit yes
#: (``allow_mpp_mismatch``). 10 % lets through the usual scanner spread around a nominal magnification
#: (0.2527 vs 0.25 µm/px, a 20x level at 0.5054) while refusing another magnification (0.25 or 1.0 for a 0.5
#: encoder), which changes what a tile shows: cells twice or half the size the model learned from.
MPP_TOLERANCE = 0.10


class MppMismatchWarning(UserWarning):
    """Tiles were embedded at another pixel size than the encoder expects (allowed explicitly)."""


def check_tile_mpp(preset, tile_mpp: float | None, *, allow: bool = False, tolerance: float = MPP_TOLERANCE,
                   where: str = "") -> dict | None:
    """Compare the tiles' pixel size with the encoder preset's and refuse (or, when allowed, record) a mismatch.

    Checked: every registered preset, the weight-free ``handcrafted`` encoder included (its nuclei-density and
    texture statistics are scaled for its ``mpp``, 0.5 µm/px). Not checked: ad-hoc presets made from a plain timm
    name (ImageNet models declare no pixel size), and stores that record none.

    Parameters
    ----------
    preset : EncoderPreset
        The encoder's preset; ``preset.mpp`` is the pixel size it expects, µm/px.
    tile_mpp : float or None
        Pixel size the tiles were cut at (the store's ``tiling["mpp"]``), µm/px.
    allow : bool
        Embed a mismatched store anyway (warns with :class:`MppMismatchWarning`).
    tolerance : float
        Largest accepted relative difference ``|tile_mpp / preset.mpp - 1|``.
    where : str
        What the tiles come from, for the messages (a store path).

    Returns
    -------
    dict or None
        None when the pixel sizes agree or are not checked; otherwise ``{"tile_mpp", "encoder_mpp",
        "relative_difference", "tolerance"}``, for the feature attributes and the run record.

    Raises
    ------
    ConfigError
        The pixel sizes differ by more than ``tolerance`` and ``allow`` is False.
    """
    from .registry import list_encoders

    if tile_mpp is None or preset.name not in list_encoders():
        return None
    tile_mpp, want = float(tile_mpp), float(preset.mpp)
    rel = abs(tile_mpp / want - 1.0)
    if not math.isfinite(rel) or rel <= tolerance:
        return None
    record = {"tile_mpp": tile_mpp, "encoder_mpp": want, "relative_difference": round(rel, 4),
              "tolerance": tolerance}
    prefix = f"{where}: " if where else ""
    what = (f"{prefix}tiles were cut at {tile_mpp:g} µm/px but encoder {preset.name!r} expects {want:g} µm/px "
            f"({rel:.0%} apart, more than the {tolerance:.0%} tolerated)")
    if not allow:
        raise ConfigError(f"{what}: its features would describe tissue at another scale than the model learned. "
                          f"Retile with --target-mpp {want:g}, or pass --allow-mpp-mismatch (allow_mpp_mismatch=True) "
                          "to embed anyway; the mismatch is then recorded with the features")
    warnings.warn(f"{what}; embedding anyway (allowed), recorded in the features' attributes as mpp_mismatch",
                  MppMismatchWarning, stacklevel=3)
    return record

Progress = Callable[[int, int], None]

_AMP_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
               "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}
_OUT_DTYPES = {"float16": torch.float16, "float32": torch.float32}


@dataclass
class EmbedResult:
    """What :func:`embed_store` did for one store.

    Attributes
    ----------
    n_tiles : int
        Tiles in the store.
    n_embedded : int
        Tiles embedded by this call (fewer than ``n_tiles`` when resuming, 0 when already complete).
    chunks_written : int
        Chunks written by this call.
    seconds : float
        Wall-clock time of the call, set-up included.
    source : str
        ``"patches"`` (stored patches) or ``"slide"`` (tiles read from the slide file).
    dtype : str
        Compute dtype of the encoder during the run.
    """

    slide_id: str
    feature_key: str
    n_tiles: int
    chunks_written: int
    seconds: float
    n_embedded: int = 0
    source: str = ""
    device: str = ""
    dtype: str = ""
    mpp_mismatch: dict | None = None

    @property
    def patches_per_s(self) -> float:
        """Tiles embedded per second by this call (0 when there was nothing left to embed)."""
        return self.n_embedded / self.seconds if self.seconds > 0 and self.n_embedded else 0.0


def feature_attrs(encoder, *, dtype: torch.dtype | None = None, stain: dict | None = None) -> dict:
    """Provenance written beside the features: preset, weights, preprocessing, compute dtype, stain transform.

    Two runs whose attributes differ would give different numbers, so an existing ``features/<name>`` with other
    attributes is never resumed (:meth:`SlideStore.create_feature_array` raises unless ``overwrite``).
    """
    p = encoder.preset
    if dtype is None:
        dtype = getattr(encoder, "compute_dtype", torch.float32)
    if p.traits.raw_input:
        dtype = torch.float32  # raw-input encoders (the handcrafted statistics) never autocast
    return {
        "encoder": p.name,
        "timm_name": p.timm_name,
        "hub_id": p.hub_id,
        "weights": encoder.weights_source,
        "random_init": bool(encoder.random_init),
        "input_size": p.input_size,
        "mean": list(p.mean),
        "std": list(p.std),
        "pooling": p.pooling,
        "embed_dim": int(encoder.embed_dim),
        "dtype": str(dtype).removeprefix("torch."),
        "stain": stain,
    }


def _encoder_device(encoder) -> torch.device:
    dev = getattr(encoder, "device", None)
    if isinstance(dev, torch.device):
        return dev
    return next(encoder.parameters(), torch.empty(0)).device


def _resolve_amp(amp_dtype: str | torch.dtype | None) -> torch.dtype | None:
    if amp_dtype is None or isinstance(amp_dtype, torch.dtype):
        if amp_dtype not in (None, torch.bfloat16, torch.float16, torch.float32):
            raise ConfigError(f"amp_dtype {amp_dtype} is not supported; use bfloat16, float16 or float32")
        return amp_dtype
    try:
        return _AMP_DTYPES[str(amp_dtype).lower()]
    except KeyError:
        raise ConfigError(f"amp_dtype {amp_dtype!r} is not one of bfloat16, float16, float32 (or None for the "
                          "encoder's own)") from None


def _default_workers(device: torch.device, from_slide: bool) -> int:
    cores = os.cpu_count() or 1
    if device.type == "cpu":
        # The encoder's intra-op threads already use every core; one loader thread keeps the next chunk ready
        # without oversubscribing (decoding a Zarr chunk costs <1 % of a CPU forward pass).
        return 1
    # A GPU eats thousands of tiles per second: decode several chunks at once. Slide reads (openslide releases
    # the GIL) scale with cores; Zarr decoding is partly GIL-bound, so a few threads are enough.
    return max(1, min(cores - 1, 16 if from_slide else 4))


def embed_store(
    store: SlideStore,
    encoder,
    *,
    name: str | None = None,
    batch_size: int | None = None,
    out_dtype: str = "float16",
    amp_dtype: str | torch.dtype | None = None,
    stain: Any = None,
    workers: int | None = None,
    overwrite: bool = False,
    replace_changed: bool = False,
    slide_path: str | os.PathLike | None = None,
    progress: Progress | None = None,
    allow_mpp_mismatch: bool = False,
) -> EmbedResult:
    """Embed every tile of ``store`` with ``encoder`` into ``features/<name>``, resuming where a run stopped.

    Parameters
    ----------
    store : SlideStore
        Opened with mode ``"r+"``. Tiles come from its ``patches`` when they are complete, else they are read
        from the slide file (the same pixels: :func:`slidestream.tiling.tiler.patch_reader` reads them as the
        tiler does).
    encoder : slidestream.models.Encoder
        Takes uint8 ``(B, H, W, 3)`` on its device and returns float32 ``(B, D)`` features.
    name : str, optional
        Feature key (default: the encoder preset's name).
    batch_size : int, optional
        Forward-pass batch; default one store chunk (``store.chunk_tiles`` tiles), at most 64 (stores of kept
        JPEG tiles have chunks of 256).
    out_dtype : {"float16", "float32"}
        Stored feature dtype.
    amp_dtype : {"bfloat16", "float16", "float32"}, torch.dtype or None
        Compute dtype for this run, on any device. None keeps the encoder's own (``create_encoder(dtype=...)``:
        the preset's recommendation on CUDA, float32 on CPU).
    stain : StainNormalizer, optional
        Applied on the device to each uint8 batch before the encoder (e.g. a normaliser after
        ``fit_source``); needs ``transform(tensor)`` and ``to_dict()`` (recorded in the feature attributes).
    workers : int, optional
        Loader threads reading chunks ahead (default: 1 on CPU, several on a GPU); 0 reads and writes each
        chunk in the calling thread (no overlap, no extra threads).
    overwrite : bool
        Recompute the features, even ones that exist with the same settings.
    replace_changed : bool
        Recompute features that exist with other settings (encoder, weights, dtype, stain) and resume ones with
        the same settings; without it or ``overwrite`` other settings raise :class:`~slidestream.errors.StoreError`.
        For folders the tool owns, such as a benchmark's stores.
    slide_path : path, optional
        Read tiles from this slide when the store holds no patches (default: the path recorded in the store).
    progress : callable(done_tiles, total_tiles), optional
        Called from the calling thread after each written chunk.
    allow_mpp_mismatch : bool
        Embed a store tiled at a pixel size more than :data:`MPP_TOLERANCE` away from the encoder preset's
        (see :func:`check_tile_mpp`); the mismatch is recorded as ``mpp_mismatch`` in the feature attributes and
        in :attr:`EmbedResult.mpp_mismatch`. Refused otherwise.

    Returns
    -------
    EmbedResult

    Raises
    ------
    StoreError
        Features exist with another encoder, weights, dtype or stain transform and ``overwrite`` is False.
    ConfigError
        Bad ``out_dtype``/``amp_dtype``, a stain transform on patches that were stain-normalised already, or tiles
        at another pixel size than the encoder's without ``allow_mpp_mismatch``.
    SlideError
        The store holds no patches and the slide cannot be opened.
    """
    t0 = time.perf_counter()
    if out_dtype not in _OUT_DTYPES:
        raise ConfigError(f"out_dtype {out_dtype!r} is not one of {', '.join(_OUT_DTYPES)}")
    amp = _resolve_amp(amp_dtype)
    mismatch = check_tile_mpp(encoder.preset, store.tiling.get("mpp"), allow=allow_mpp_mismatch,
                              where=str(store.path))
    name = name or encoder.preset.name
    key = f"features/{name}"
    device = _encoder_device(encoder)
    compute_dtype = amp if amp is not None else getattr(encoder, "compute_dtype", torch.float32)
    from_patches = store.has_patches and store.is_complete("patches")
    stain_record = None
    if stain is not None:
        applied = store.attrs.get("stain")
        if from_patches and applied:
            method = applied.get("method", "see the store's attrs") if isinstance(applied, dict) else applied
            raise ConfigError(f"{store.path}: the stored patches are stain-normalised already ({method}); "
                              "drop the stain transform")
        if not (hasattr(stain, "transform") and hasattr(stain, "to_dict")):
            raise ConfigError("stain must be a stain normaliser (with transform() and to_dict()), "
                              "e.g. slidestream.stain.get_normalizer('macenko')")
        stain_record = stain.to_dict()
    attrs = feature_attrs(encoder, dtype=compute_dtype, stain=stain_record)
    if mismatch is not None:
        # only when there is one: features of matching stores keep the attributes earlier versions wrote (resumable)
        attrs["mpp_mismatch"] = mismatch
    arr = store.create_feature_array(name, int(encoder.embed_dim), dtype=out_dtype, attrs=attrs,
                                     overwrite=overwrite, replace_changed=replace_changed)
    slices = store.chunk_slices(key)
    done = store.done_chunks(key)
    todo = [i for i, d in enumerate(done) if not d]
    total = store.n_tiles
    finished = total - sum(slices[i].stop - slices[i].start for i in todo)
    if progress:
        progress(finished, total)
    batch_size = int(batch_size or min(arr.chunks[0], 64))
    workers = _default_workers(device, not from_patches) if workers is None else int(workers)
    if workers < 0:
        raise ConfigError(f"workers must be >= 0, got {workers}")
    pin = device.type == "cuda"

    slide = None
    if todo and from_patches:
        patches = store.patches

        def read(ci: int) -> np.ndarray:
            return patches[slices[ci]]
    elif todo:
        path = slide_path or store.slide["path"]
        t = store.tiling
        plan = ReadPlan(level=t["level"], read_size=t["read_size"], tile_size=t["tile_size"], extent0=t["extent0"],
                        stride0=0.0)
        # The store holds no patches: read them from the slide (a missing slide raises a SlideError naming it),
        # exactly as the tiler would have stored them.
        slide = open_slide(path, mpp=store.slide.get("mpp") if store.slide.get("mpp_source") == "override" else None,
                           max_pixels=store.slide.get("max_pixels"))  # a budget raised at tiling time
        coords = store.coords
        read_patch = patch_reader(slide, plan, coords)

        def read(ci: int) -> np.ndarray:
            return np.stack([read_patch(xy) for xy in coords[slices[ci]]])

    def load(ci: int) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(read(ci)))
        # pinning here, off the main thread, makes the host-to-device copy asynchronous
        return x.pin_memory() if pin else x

    def write(ci: int, feats: torch.Tensor, ready: torch.cuda.Event | None) -> int:
        if ready is not None:
            ready.synchronize()
        store.write_chunk(key, ci, feats.numpy())
        return slices[ci].stop - slices[ci].start

    written = 0
    saved_dtype = getattr(encoder, "compute_dtype", None)
    loaders = ThreadPoolExecutor(max_workers=max(workers, 1), thread_name_prefix="embed-load")
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-write")
    loads: deque[tuple[int, Future | None]] = deque()
    writes: deque[Future] = deque()

    def finish_write() -> None:
        nonlocal finished, written
        finished += writes.popleft().result()
        written += 1
        if progress:
            progress(finished, total)

    try:
        if amp is not None and saved_dtype is not None:
            encoder.compute_dtype = amp
        encoder.eval()
        queue = iter(todo)
        if workers:
            # workers + 1 chunks in flight: every loader busy while the encoder works on the oldest one
            for ci in queue:
                loads.append((ci, loaders.submit(load, ci)))
                if len(loads) > workers:
                    break
        else:
            loads.extend((ci, None) for ci in queue)
        with torch.inference_mode():
            while loads:
                ci, fut = loads.popleft()
                x = fut.result() if fut is not None else load(ci)
                nxt = next(queue, None) if workers else None
                if nxt is not None:
                    loads.append((nxt, loaders.submit(load, nxt)))
                x = x.to(device, non_blocking=True)
                if stain is not None:
                    x = stain.transform(x)
                outs = [encoder(x[j:j + batch_size]) for j in range(0, len(x), batch_size)]
                feats = (outs[0] if len(outs) == 1 else torch.cat(outs)).to(_OUT_DTYPES[out_dtype])
                ready = None
                if pin:
                    host = torch.empty(feats.shape, dtype=feats.dtype, pin_memory=True)
                    host.copy_(feats, non_blocking=True)
                    ready = torch.cuda.Event()
                    ready.record()
                    feats = host
                if workers:
                    writes.append(writer.submit(write, ci, feats, ready))
                else:  # fully in the calling thread: nothing competes with the encoder's threads
                    done_write: Future = Future()
                    done_write.set_result(write(ci, feats, ready))
                    writes.append(done_write)
                # at most two chunks in the writer's hands: the device never waits on a write, memory stays bounded
                while len(writes) > 1:
                    finish_write()
            while writes:
                finish_write()
    finally:
        if saved_dtype is not None:
            encoder.compute_dtype = saved_dtype
        loaders.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True)
        if slide is not None:
            slide.close()
    store.set_status(key, "complete")
    n_embedded = sum(slices[i].stop - slices[i].start for i in todo)
    return EmbedResult(slide_id=store.slide_id, feature_key=key, n_tiles=total, chunks_written=written,
                       seconds=time.perf_counter() - t0, n_embedded=n_embedded,
                       source="patches" if from_patches else "slide", device=str(device),
                       dtype=attrs["dtype"], mpp_mismatch=mismatch)
