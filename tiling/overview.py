"""The tissue stage of tiling: a low-resolution overview of the slide and its tissue mask.

Kept free of Zarr and Dask, so that ``slidestream tile`` can segment a slide in a forked helper process while the
main process is still importing those (:func:`start_tissue_mask`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ..wsi.slide import Slide, open_slide
from .grid import TilingParams
from .local import local_processes_available, local_workers
from .jpeg_fastpath import dct_reduced_level
from .tissue import TissueConfig, segment_tissue

# Largest pyramid level read whole for the tissue overview (pixels); beyond it Slide.thumbnail reads in bands.
_OVERVIEW_MAX_PIXELS = 64_000_000


def overview(slide: Slide, max_size: int) -> np.ndarray:
    """Whole-slide image no larger than ``max_size`` on its longer side, for tissue segmentation.

    Where the coarsest pyramid level at least that large is stored as YCbCr JPEG, the decoder reduces it by
    ``M/8`` (:func:`~slidestream.tiling.jpeg_fastpath.dct_reduced_level`): the result is then between two thirds of
    ``max_size`` and ``max_size``, in a tenth of the time of the exact path. Otherwise that level is read in one
    piece and area-averaged with PIL to exactly ``max_size`` (a few tens of ms where :meth:`Slide.thumbnail`'s
    banded numpy averaging takes most of a second); levels above :data:`_OVERVIEW_MAX_PIXELS` (slides without
    a usable pyramid) go through :meth:`Slide.thumbnail`.

    Returns
    -------
    (h, w, 3) uint8 array, aspect ratio kept; ``max(h, w) == min(max_size, max(level-0 w, h))`` on the exact
    path. Callers take the downsample from its shape.

    Raises
    ------
    SlideTooLargeError
        When that level has more pixels than the slide's pixel budget (:attr:`Slide.max_pixels`): a slide without a
        pyramid would be decoded whole.
    """
    level, (out_w, out_h) = slide.overview_level(max_size)
    slide.check_level_budget(level, f"read for the {out_w} x {out_h} tissue overview")
    lw, lh = slide.level_dimensions[level]
    if (lw, lh) != (out_w, out_h):
        small = dct_reduced_level(slide, level, max_size)
        if small is not None:
            return small
    if lw * lh > _OVERVIEW_MAX_PIXELS:
        return slide.thumbnail(max_size)
    region = slide.read_region((0, 0), level, (lw, lh))
    if (lw, lh) == (out_w, out_h):
        return region
    return np.asarray(Image.fromarray(region).resize((out_w, out_h), Image.Resampling.BOX))


def tissue_mask(slide: Slide, params: TilingParams, config: TissueConfig | None = None):
    """Tissue mask on an overview of the slide at about ``config.working_mpp`` (at most
    ``params.thumbnail_size`` px on the longer side).

    Returns
    -------
    mask : (h, w) bool array
    downsample : (float, float)
        Level-0 pixels per mask pixel along x and y.
    """
    config = config or TissueConfig()
    w0, h0 = slide.dimensions
    size = int(np.ceil(max(w0, h0) * slide.mpp / config.working_mpp))
    thumb = overview(slide, int(np.clip(size, 64, params.thumbnail_size)))
    ds = (w0 / thumb.shape[1], h0 / thumb.shape[0])
    mask = segment_tissue(thumb, mpp=slide.mpp * (ds[0] + ds[1]) / 2, config=config)
    return mask, ds


#: How long :meth:`EarlyTissue.result` waits for the helper before segmenting in this process instead (seconds).
RESULT_TIMEOUT_S = 60.0


class EarlyTissue:
    """The tissue mask of one slide, computed by a forked helper process while this process goes on.

    ``slidestream tile`` starts one for its first slide before it imports the store and the tiler (Zarr and Dask
    imports), so that with several workers the segmentation overlaps them on another core. Made by
    :func:`start_tissue_mask`; :func:`slidestream.tiling.tiler.tile_slide` takes it as ``tissue=``.
    """

    def __init__(self, slide_path, params: TilingParams, mpp: float | None, config: TissueConfig | None,
                 max_pixels: int | None = None):
        import multiprocessing

        self.key = (str(Path(slide_path).resolve()), params.thumbnail_size, mpp, config or TissueConfig(), max_pixels)
        ctx = multiprocessing.get_context("fork")
        self._recv, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_segment_in_helper, name=HELPER_NAME, daemon=True,
                                 args=(send, self._recv, os.getpid(), self.key[0], params, mpp, config, max_pixels))
        self._proc.start()
        send.close()

    @property
    def pid(self) -> int | None:
        """Process id of the helper."""
        return self._proc.pid

    def matches(self, slide_path, params: TilingParams, mpp: float | None, config: TissueConfig | None,
                max_pixels: int | None = None) -> bool:
        """Whether this is the mask that ``tissue_mask`` would compute for these arguments."""
        return self.key == (str(Path(slide_path).resolve()), params.thumbnail_size, mpp, config or TissueConfig(),
                            max_pixels)

    def result(self) -> tuple[np.ndarray, tuple[float, float]] | None:
        """``(mask, downsample)`` as :func:`tissue_mask` returns them, or None when the helper failed: the caller
        then segments the slide itself, and reports what is wrong with it."""
        try:
            # a bound on the wait: a helper forked from a process with other threads could in principle hang on
            # a lock one of them held (segmenting takes well under a second)
            out = self._recv.recv() if self._recv.poll(RESULT_TIMEOUT_S) else None
        except (EOFError, OSError):
            out = None
        self.close()
        return out

    def close(self) -> None:
        """Stop the helper if its result is not wanted (a store resumed, an error before segmentation)."""
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join()
        self._recv.close()


def _segment_in_helper(send, recv, parent: int, slide_path: str, params: TilingParams, mpp: float | None, config,
                       max_pixels: int | None) -> None:
    # The helper must die with its parent. Forked, it holds both ends of the pipe: with the reading end closed
    # here, a send to a dead parent fails (EPIPE) instead of blocking forever on a full pipe; the kernel kills
    # it when the parent dies (Linux); and a parent already gone before that was armed is noticed at once.
    recv.close()
    _die_with_parent(parent)
    try:
        with open_slide(slide_path, mpp=mpp, max_pixels=max_pixels) as slide:
            result = tissue_mask(slide, params, config)
        if os.getppid() == parent:
            send.send(result)
    except Exception:  # noqa: BLE001 - the parent segments again and reports the error itself
        pass
    finally:
        send.close()


#: Name of the helper process (``ps -o comm``, ``psutil.Process.name()`` on Linux).
HELPER_NAME = "ss-tissue"

_PR_SET_NAME, _PR_SET_PDEATHSIG = 15, 1


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``) and name it
    :data:`HELPER_NAME`; exit now if the parent is already gone. Elsewhere only the check is made."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            libc.prctl(_PR_SET_NAME, HELPER_NAME.encode(), 0, 0, 0)
        except (OSError, AttributeError):  # no prctl in this libc: the pipe and the check below still hold
            pass
    if os.getppid() != parent:
        os._exit(0)


def start_tissue_mask(slide_path, params: TilingParams, *, mpp: float | None = None,
                      config: TissueConfig | None = None, workers: int | None = None,
                      max_pixels: int | None = None) -> EarlyTissue | None:
    """Start segmenting a slide in a forked helper (:class:`EarlyTissue`), or None where that would not gain
    time: fewer than two usable cores or workers, or no ``fork`` (only Linux forks here)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores < 2 or local_workers(workers) < 2 or not local_processes_available():
        return None
    return EarlyTissue(slide_path, params, mpp, config, max_pixels)
