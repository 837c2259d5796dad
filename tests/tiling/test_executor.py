"""The tiling graph: local threads, a real dask.distributed cluster, QC flags, ROI, and resume after SIGKILL."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from shapely.geometry import box
from slidestream.tiling.grid import TilingParams
from slidestream.tiling.qc import FLAG_BLANK, FLAG_BLURRED, tile_qc
from slidestream.store import SlideStore
from slidestream.tiling.executor import dispatch_order, run_graph, task_key
from slidestream.tiling.tiler import tile_slide
from slidestream.wsi.slide import open_slide
from slidestream.synth import SynthConfig, write_synthetic_slide

PARAMS = TilingParams(mpp=0.5, tile_size=224)


@pytest.fixture(scope="module")
def synth_slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth") / "slide.svs"
    write_synthetic_slide(path, SynthConfig(width=6144, height=4096, mpp=0.25, tumor=True, seed=3))
    return path


def _arrays(store_path):
    s = SlideStore.open(store_path)
    return {k: s.group[k][...] for k in ("coords", "tissue", "patches", "qc/white", "qc/sharpness", "qc/flags")}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), f"{k} differs"


def test_qc_flags_blank_and_blurred_tiles():
    rng = np.random.default_rng(0)
    sharp = rng.integers(60, 200, (1, 64, 64, 3), dtype=np.uint8)
    blurred = np.full((1, 64, 64, 3), 150, np.uint8) + (np.arange(64, dtype=np.uint8)[None, :, None, None] // 16)
    blank = np.full((1, 64, 64, 3), 245, np.uint8)
    white, sharpness, flags = tile_qc(np.concatenate([sharp, blurred, blank]))
    assert flags.tolist() == [0, FLAG_BLURRED, FLAG_BLANK]
    assert white[2] == 1.0 and white[0] == 0.0
    assert sharpness[0] > 100 * max(sharpness[1], 1e-3)


def test_processes_threads_and_distributed_cluster_give_identical_stores(synth_slide, tmp_path):
    distributed = pytest.importorskip("distributed")
    local = tile_slide(synth_slide, tmp_path / "local", PARAMS, workers=2, chunk_tiles=16, processes=True)
    assert local.n_tiles > 40  # a graph of several chunks per worker
    threads = tile_slide(synth_slide, tmp_path / "threads", PARAMS, workers=2, chunk_tiles=16, processes=False)
    _assert_same(_arrays(local.store), _arrays(threads.store))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        remote = tile_slide(synth_slide, tmp_path / "cluster", PARAMS, scheduler=cluster.scheduler_address,
                            chunk_tiles=16)
    assert remote.chunks_written == local.chunks_written == -(-local.n_tiles // 16)
    _assert_same(_arrays(local.store), _arrays(remote.store))


def test_roi_restricts_tiles(synth_slide, tmp_path):
    full = SlideStore.open(tile_slide(synth_slide, tmp_path / "a", PARAMS, save_patches=False).store)
    roi = box(0, 0, 3072, 4096)  # left half of the slide
    part = SlideStore.open(tile_slide(synth_slide, tmp_path / "b", PARAMS, save_patches=False, roi=roi).store)
    centres = part.coords + part.tiling["extent0"] / 2
    assert 0 < part.n_tiles < full.n_tiles
    assert (centres[:, 0] < 3072).all()


def _tile_cmd(slide, out):
    code = ("import sys; from slidestream.tiling.tiler import tile_slide; from slidestream.tiling.grid import "
            "TilingParams; tile_slide(sys.argv[1], sys.argv[2], TilingParams(mpp=0.5, tile_size=224), "
            "chunk_tiles=4, workers=1)")
    return [sys.executable, "-c", code, str(slide), str(out)]


@pytest.mark.parametrize("kill_after_chunks", [0, 3, 8])
def test_sigkill_then_resume_equals_uninterrupted(synth_slide, tmp_path, kill_after_chunks):
    reference = tile_slide(synth_slide, tmp_path / "ref", PARAMS, chunk_tiles=4, workers=1)
    out = tmp_path / "killed"
    store_path = out / "slide.zarr"
    proc = subprocess.Popen(_tile_cmd(synth_slide, out))
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if (store_path / "done" / "patches" / "zarr.json").exists():
                done = SlideStore.open(store_path).done_chunks().sum()
                if done >= kill_after_chunks:
                    break
            time.sleep(0.01)
        killed = proc.poll() is None
        if killed:
            os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    before = SlideStore.open(store_path).done_chunks().sum() if (store_path / "zarr.json").exists() else -1
    resumed = tile_slide(synth_slide, out, PARAMS, chunk_tiles=4, workers=1)
    print(f"killed={killed} chunks done before resume={before} written on resume={resumed.chunks_written}")
    assert killed, "the tiling process finished before it could be killed: make the slide larger"
    assert resumed.action in ("resumed", "tiled")
    if before >= 0:
        assert resumed.chunks_written == len(SlideStore.open(resumed.store).chunk_slices()) - before
    _assert_same(_arrays(reference.store), _arrays(resumed.store))


def test_stain_normalised_tiling_is_recorded_and_resumable(synth_slide, tmp_path):
    from slidestream.stain import from_dict, get_normalizer

    plain = SlideStore.open(tile_slide(synth_slide, tmp_path / "plain", PARAMS, chunk_tiles=16).store)
    res = tile_slide(synth_slide, tmp_path / "norm", PARAMS, chunk_tiles=16, stain=get_normalizer("macenko"))
    store = SlideStore.open(res.store, mode="r+")
    record = store.attrs["stain"]
    assert record["method"] == "macenko" and record["source"] is not None
    assert store.tiling["stain"]["method"] == "macenko"
    expected = from_dict(record).transform(plain.patches[...])
    got = store.patches[...]
    assert np.abs(got.astype(int) - expected).max() <= 1
    assert np.abs(got.astype(int) - plain.patches[...]).mean() > 1  # normalisation did something
    # resume after a crash: same source stain re-estimated, only the missing chunks rewritten
    store.group["done/patches"][1:] = 0
    again = tile_slide(synth_slide, tmp_path / "norm", PARAMS, chunk_tiles=16, stain=get_normalizer("macenko"))
    assert again.action == "resumed"
    assert np.array_equal(SlideStore.open(res.store).patches[...], got)
    with pytest.raises(Exception, match="other parameters"):
        tile_slide(synth_slide, tmp_path / "norm", PARAMS, chunk_tiles=16, stain=get_normalizer("reinhard"))


class _FailingStain:
    """A stain normaliser whose transform fails, to see a worker's error reach the caller."""

    def fit_source(self, tiles):
        return None

    def transform(self, batch):
        raise ValueError("transform failed on purpose")

    def to_dict(self):
        return {"method": "failing"}


@pytest.mark.parametrize("processes", [True, False])
def test_an_error_in_a_worker_reaches_the_caller_and_nothing_is_marked_done(synth_slide, tmp_path, processes):
    with pytest.raises(ValueError, match="transform failed on purpose"):
        tile_slide(synth_slide, tmp_path, PARAMS, workers=2, chunk_tiles=16, stain=_FailingStain(),
                   processes=processes)
    store = SlideStore.open(tmp_path / "slide.zarr")
    assert not store.done_chunks("patches").any()


def test_dispatch_order_interleaves_contiguous_bands():
    assert dispatch_order(list(range(7)), 1) == list(range(7))
    assert dispatch_order(list(range(7)), 2) == [0, 4, 1, 5, 2, 6, 3]
    assert dispatch_order([3, 5, 8], 4) == [3, 5, 8]
    assert sorted(dispatch_order(list(range(100)), 3)) == list(range(100))
    assert dispatch_order([], 2) == []


def test_band_claims_hand_out_every_chunk_once_band_by_band():

    from slidestream.tiling.executor import BandClaims

    # one process: its own band in order, then the other band from its end
    claims = BandClaims(list(range(10, 17)), 2)
    assert [claims.claim() for _ in range(8)] == [10, 11, 12, 13, 16, 15, 14, None]
    # three forked processes claiming at once
    claims = BandClaims(list(range(30)), 3)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.SimpleQueue()
    started = ctx.Barrier(3, timeout=60)  # every process holds its first chunk before any takes a second

    def worker():
        got = [claims.claim()]
        started.wait()
        while (chunk := claims.claim()) is not None:
            got.append(chunk)
        queue.put(got)

    procs = [ctx.Process(target=worker) for _ in range(3)]
    for p in procs:
        p.start()
    runs = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    assert sorted(c for run in runs for c in run) == list(range(30))  # each chunk once
    # each process starts on a band of its own and works through it in order
    assert sorted(run[0] for run in runs) == [0, 10, 20]
    for run in runs:
        own = [c for c in run if run[0] <= c < run[0] + 10]
        assert own == list(range(run[0], run[0] + len(own)))


# What the rank-order test's tasks share; set before the workers are forked, so they inherit it (a barrier cannot be
# pickled with a task).
_RANK = {"log": None, "first": (), "barrier": None}


def _note_start(chunk):
    with open(_RANK["log"], "a") as f:
        f.write(f"{chunk}\n")
    if _RANK["barrier"] is not None and chunk in _RANK["first"]:
        _RANK["barrier"].wait()  # both first tasks wait for each other, so neither worker takes a second one first
    return 1


@pytest.mark.parametrize("processes", [False, True])
def test_local_workers_start_tasks_in_rank_order(processes, tmp_path):
    """The task keys make dask's local schedulers start chunks in dispatch order (one worker: exactly)."""
    order = dispatch_order(list(range(23)), 2)
    log = tmp_path / "log"
    _RANK.update(log=log, first=tuple(order[:2]), barrier=None)
    keys = [task_key("s", rank, len(order), ci) for rank, ci in enumerate(order)]
    graph = {key: (_note_start, ci) for key, ci in zip(keys, order)}
    assert run_graph(graph, keys, workers=1) == [1] * len(order)
    assert [int(v) for v in log.read_text().split()] == order
    log.unlink()
    _RANK["barrier"] = multiprocessing.get_context("fork").Barrier(2, timeout=60)
    try:
        run_graph(graph, keys, workers=2, processes=processes)
    finally:
        _RANK["barrier"] = None
    started = [int(v) for v in log.read_text().split()]
    assert sorted(started) == sorted(order)
    assert set(started[:2]) == set(order[:2])  # the first two go out first, one to each worker


def test_early_tissue_from_a_helper_process_equals_segmenting_here(synth_slide, tmp_path):
    from slidestream.tiling.overview import EarlyTissue, start_tissue_mask, tissue_mask
    from slidestream.tiling.tissue import TissueConfig

    with open_slide(synth_slide) as slide:
        mask, ds = tissue_mask(slide, PARAMS)
    early = EarlyTissue(synth_slide, PARAMS, None, None)
    assert early.matches(synth_slide, PARAMS, None, TissueConfig())
    assert not early.matches(synth_slide, PARAMS, 0.3, None)
    assert not early.matches(synth_slide, TilingParams(mpp=0.5, tile_size=224, thumbnail_size=512), None, None)
    got_mask, got_ds = early.result()
    assert np.array_equal(got_mask, mask) and got_ds == ds
    early.close()  # after result(): nothing left to stop
    # a slide the helper cannot read: no result, and tile_slide segments (and fails) in this process
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"not a slide")
    early = EarlyTissue(bad, PARAMS, None, None)
    assert early.result() is None
    # one worker, or one core: no helper
    assert start_tissue_mask(synth_slide, PARAMS, workers=1) is None
    # the store is the same with and without the helper's mask
    ref = SlideStore.open(tile_slide(synth_slide, tmp_path / "ref", PARAMS, workers=1).store)
    early = EarlyTissue(synth_slide, PARAMS, None, None)
    got = SlideStore.open(tile_slide(synth_slide, tmp_path / "early", PARAMS, workers=1, tissue=early).store)
    assert early._recv.closed  # its result was taken
    assert np.array_equal(got.coords, ref.coords)
    assert np.array_equal(got.group["tissue_mask"][...], ref.group["tissue_mask"][...])


def test_the_tissue_stage_imports_neither_zarr_nor_dask():
    # what lets `slidestream tile` segment its first slide in a helper while it imports those (tile_batch)
    code = ("import sys, slidestream.cli.main, slidestream.pipeline.tile, slidestream.tiling.overview; "
            "print(sorted(m for m in ('zarr', 'dask', 'distributed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
