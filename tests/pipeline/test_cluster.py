"""A batch on a real external dask cluster (scheduler and worker processes on 127.0.0.1): same stores as a local
run, a worker killed mid-batch, the client killed mid-batch and the batch rerun."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from slidestream.pipeline.inputs import collect_inputs
from slidestream.pipeline import tile_batch
from slidestream.tiling.grid import TilingParams
from slidestream.store import SlideStore
from slidestream.synth import SynthConfig, write_synthetic_slide

N_SLIDES = 12
# 128 px tiles at 0.5 µm/px: a 3072 px slide gives a few chunks of 64 tiles, so resuming is visible chunk by chunk.
PARAMS = TilingParams(mpp=0.5, tile_size=128)
DASK = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A scheduler and ``n`` nanny-less worker processes (so SIGKILL ends a worker for good), all on 127.0.0.1."""

    def __init__(self, n_workers: int, tmp: Path):
        self.address = f"tcp://127.0.0.1:{_free_port()}"
        port = self.address.rsplit(":", 1)[1]
        self.log = tmp / "cluster.log"
        self._log = open(self.log, "w")  # noqa: SIM115 - open while the processes live
        self.scheduler = subprocess.Popen([*DASK, "--host", "127.0.0.1", "--port", port, "--no-dashboard"],
                                          stdout=self._log, stderr=subprocess.STDOUT, env=ENV)
        self.workers = [self._worker(tmp / f"w{i}") for i in range(n_workers)]
        with distributed.Client(self.address, timeout=60) as c:
            c.wait_for_workers(n_workers, timeout=60)

    def _worker(self, space: Path) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--nthreads", "1",
                                 "--no-nanny", "--no-dashboard", "--host", "127.0.0.1",
                                 "--local-directory", str(space)],
                                stdout=self._log, stderr=subprocess.STDOUT, env=ENV)

    def close(self) -> None:
        for p in [*self.workers, self.scheduler]:
            if p.poll() is None:
                p.terminate()
        for p in [*self.workers, self.scheduler]:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._log.close()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(2, tmp_path)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """12 small synthetic slides and their stores tiled locally (the reference)."""
    root = tmp_path_factory.mktemp("scale")
    slides = root / "slides"
    slides.mkdir()
    for i in range(N_SLIDES):
        write_synthetic_slide(slides / f"s{i:02d}.svs", SynthConfig(width=3072, height=3072, mpp=0.5, seed=i))
    ref = root / "ref"
    outcomes = tile_batch(collect_inputs([slides]), ref, PARAMS, workers=1)
    assert [o.status for o in outcomes] == ["ok"] * N_SLIDES
    return slides, ref


def _assert_same_stores(out: Path, ref: Path) -> None:
    refs = sorted(p.name for p in ref.glob("*.zarr"))
    assert sorted(p.name for p in out.glob("*.zarr")) == refs and len(refs) == N_SLIDES
    for name in refs:
        a, b = SlideStore.open(out / name), SlideStore.open(ref / name)
        assert a.status["tiling"] == "complete" and a.is_complete("patches"), name
        assert np.array_equal(a.coords, b.coords), name
        assert np.array_equal(a.tissue, b.tissue), name
        assert np.array_equal(a.patches[...], b.patches[...]), name


def _record(out: Path) -> dict:
    return json.loads((out / "run-tile.json").read_text())


def test_batch_on_two_worker_cluster_gives_the_local_stores(batch, cluster, tmp_path):
    slides, ref = batch
    out = tmp_path / "out"
    outcomes = tile_batch(collect_inputs([slides]), out, PARAMS, scheduler=cluster.address)
    assert [o.status for o in outcomes] == ["ok"] * N_SLIDES, [o.error for o in outcomes]
    _assert_same_stores(out, ref)
    rec = _record(out)
    assert rec["parameters"]["cluster"]["address"] == cluster.address
    assert rec["parameters"]["cluster"]["workers_lost"] == [] and not rec["parameters"]["cluster"]["local"]
    # the slides really went to both workers
    assert len({s["details"]["worker"] for s in rec["slides"]}) == 2
    assert all(s["details"]["attempts"] == 1 for s in rec["slides"])
    assert not list((out / ".locks").glob("*.lock"))


def _wait_until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_worker_killed_mid_batch_the_batch_completes_with_the_same_stores(batch, cluster, tmp_path):
    slides, ref = batch
    out = tmp_path / "out"
    result: dict = {}
    run = threading.Thread(target=lambda: result.update(
        outcomes=tile_batch(collect_inputs([slides]), out, PARAMS, scheduler=cluster.address)))
    run.start()
    victim = cluster.workers[0]
    with distributed.Client(cluster.address, timeout=30) as watch:
        # kill it while it is running a slide of this batch
        _wait_until(lambda: all(len(v) for v in watch.processing().values()) and len(watch.processing()) == 2,
                    60, "both workers busy")
        victim.send_signal(signal.SIGKILL)
    run.join(180)
    assert not run.is_alive()
    outcomes = result["outcomes"]
    assert [o.status for o in outcomes] == ["ok"] * N_SLIDES, [o.error for o in outcomes]
    _assert_same_stores(out, ref)
    cluster_rec = _record(out)["parameters"]["cluster"]
    assert len(cluster_rec["workers_lost"]) == 1
    assert cluster_rec["retried_slides"], "the killed worker's slide was not recorded as re-run"
    assert any(o.details["attempts"] > 1 for o in outcomes)
    assert len({o.details["worker"] for o in outcomes}) <= 2


CLIENT = """
import sys
from slidestream.pipeline.inputs import collect_inputs
from slidestream.pipeline import tile_batch
from slidestream.tiling.grid import TilingParams
tile_batch(collect_inputs([sys.argv[1]]), sys.argv[2], TilingParams(mpp=0.5, tile_size=128), scheduler=sys.argv[3])
"""


def test_client_killed_mid_batch_rerun_redoes_only_unfinished_work(batch, cluster, tmp_path):
    slides, ref = batch
    total = sum(len(SlideStore.open(p).done_chunks("patches")) for p in ref.glob("*.zarr"))
    out = tmp_path / "out"
    client = subprocess.Popen([sys.executable, "-c", CLIENT, str(slides), str(out), cluster.address], env=ENV)
    try:
        _wait_until(lambda: len(list(out.glob("*.zarr"))) >= 3 or client.poll() is not None, 120, "first stores")
        client.send_signal(signal.SIGKILL)
        client.wait(10)
    finally:
        if client.poll() is None:
            client.kill()
    assert not (out / "run-tile.json").exists(), "the batch finished before it could be interrupted"
    # Slides already running when the client died finish on the workers (a running task cannot be stopped); the
    # scheduler forgets them at once, so wait for their slide locks to go before counting what is done.
    with distributed.Client(cluster.address, timeout=30) as watch:
        _wait_until(lambda: not any(watch.processing().values()), 60, "the scheduler to forget the batch")
        _wait_until(lambda: not list((out / ".locks").glob("*.lock")), 60, "the running slides to finish")
    done_before = sum(int(np.sum(SlideStore.open(p).done_chunks("patches"))) for p in out.glob("*.zarr"))
    assert 0 < done_before < total
    outcomes = tile_batch(collect_inputs([slides]), out, PARAMS, scheduler=cluster.address)
    assert all(o.status in ("ok", "skipped") for o in outcomes), [o.error for o in outcomes]
    redone = sum(o.details["chunks_written"] for o in outcomes)
    assert redone == total - done_before
    assert any(o.status == "skipped" for o in outcomes)
    _assert_same_stores(out, ref)


def test_slide_that_keeps_failing_is_reported_and_skipped(batch, cluster, tmp_path):
    slides, _ = batch
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"not a slide at all" * 100)
    inputs = collect_inputs([slides / "s00.svs", bad, slides / "s01.svs"])
    out = tmp_path / "out"
    outcomes = tile_batch(inputs, out, PARAMS, scheduler=cluster.address)
    assert [o.status for o in outcomes] == ["ok", "failed", "ok"]
    failed = outcomes[1]
    assert failed.slide_id == "bad" and failed.error
    assert failed.details["attempts"] == 3  # the first run and two retries
    rec = _record(out)
    assert rec["counts"] == {"ok": 2, "skipped": 0, "failed": 1}


def test_unreachable_scheduler_is_a_clear_config_error(batch, tmp_path):
    import dask
    from slidestream.errors import ConfigError

    slides, _ = batch
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}), \
            pytest.raises(ConfigError, match="cannot reach the dask scheduler"):
        tile_batch(collect_inputs([slides / "s00.svs"]), tmp_path / "out", PARAMS,
                   scheduler=f"tcp://127.0.0.1:{_free_port()}")


def test_embed_batch_on_the_cluster_gives_the_local_features(batch, cluster, tmp_path):
    import shutil

    from slidestream.pipeline import embed_batch, store_paths

    _, ref = batch
    local, remote = tmp_path / "local", tmp_path / "remote"
    for d in (local, remote):
        for name in ("s00.zarr", "s01.zarr", "s02.zarr"):
            shutil.copytree(ref / name, d / name)
    a = embed_batch(store_paths(local), "handcrafted", weights="none")
    b = embed_batch(store_paths(remote), "handcrafted", weights="none", scheduler=cluster.address)
    assert [o.status for o in a] == [o.status for o in b] == ["ok"] * 3, [o.error for o in b]
    for name in ("s00.zarr", "s01.zarr", "s02.zarr"):
        fa = SlideStore.open(local / name).read_features("handcrafted")
        fb = SlideStore.open(remote / name).read_features("handcrafted")
        assert fa.shape[0] == SlideStore.open(ref / name).n_tiles and np.array_equal(fa, fb)
    assert json.loads((remote / "run-embed.json").read_text())["parameters"]["cluster"]["workers_lost"] == []


class _Log:
    """A reporter that keeps what it is told to log."""

    def __init__(self):
        from slidestream.pipeline import QuietReporter

        self._quiet = QuietReporter()
        self.lines: list[str] = []

    def task(self, description, total):
        return self._quiet.task(description, total)

    def log(self, message: str) -> None:
        self.lines.append(message)


def test_local_cluster_binds_loopback_and_prints_the_dashboard(batch, tmp_path):
    slides, ref = batch
    log = _Log()
    out = tmp_path / "out"
    outcomes = tile_batch(collect_inputs([slides / "s03.svs", slides / "s04.svs"]), out, PARAMS, scheduler="local",
                          reporter=log)
    assert [o.status for o in outcomes] == ["ok", "ok"]
    assert any("dashboard http://127.0.0.1:" in line for line in log.lines), log.lines
    cluster = _record(out)["parameters"]["cluster"]
    assert cluster["address"].startswith("tcp://127.0.0.1:") and cluster["local"]
    for name in ("s03.zarr", "s04.zarr"):
        assert np.array_equal(SlideStore.open(out / name).patches[...], SlideStore.open(ref / name).patches[...])


def test_disk_full_and_permission_errors_say_what_to_do():
    import errno

    from slidestream.pipeline.records import error_text

    full = OSError(errno.ENOSPC, "No space left on device", "/data/out/s.zarr/c/0")
    for text in (error_text,):
        assert "no space left" in text(full) and "rerun resumes" in text(full) and "/data/out/s.zarr" in text(full)
        denied = text(PermissionError(errno.EACCES, "Permission denied", "/data/out"))
        assert "writable" in denied and "/data/out" in denied


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_output_folder_is_reported(batch, tmp_path):
    slides, _ = batch
    out = tmp_path / "readonly"
    out.mkdir()
    out.chmod(0o555)
    try:
        outcomes = tile_batch(collect_inputs([slides / "s00.svs"]), out / "stores", PARAMS)
    except PermissionError as exc:  # the run record itself cannot be written: the error still names the folder
        assert "readonly" in str(exc)
    else:
        assert outcomes[0].status == "failed" and "writable" in outcomes[0].error
    finally:
        out.chmod(0o755)
