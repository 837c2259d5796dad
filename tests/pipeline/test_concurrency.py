"""Two runs on one output folder at once, stale locks, and lock timeouts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from slidestream.pipeline.records import SlideLockedError, slide_lock
from slidestream.store import SlideStore
from slidestream.synth import SynthConfig, write_synthetic_slide


def test_two_concurrent_tile_runs_end_cleanly_with_valid_stores(tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    for i in range(3):
        write_synthetic_slide(slides / f"s{i}.svs", SynthConfig(width=3072, height=3072, mpp=0.5, seed=i))
    cmd = [sys.executable, "-m", "slidestream.cli.main", "tile", str(slides), "--out", str(tmp_path / "out"),
           "--workers", "1"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    ref = tmp_path / "ref"
    subprocess.run([*cmd[:5], "--out", str(ref), "--workers", "1"], check=True, capture_output=True)
    for i in range(3):
        a, b = SlideStore.open(tmp_path / "out" / f"s{i}.zarr"), SlideStore.open(ref / f"s{i}.zarr")
        assert a.is_complete("patches") and a.status["tiling"] == "complete"
        assert np.array_equal(a.coords, b.coords) and np.array_equal(a.patches[...], b.patches[...])
    assert not list((tmp_path / "out" / ".locks").glob("*.lock"))


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".locks").mkdir()
    lock = tmp_path / ".locks" / "s.lock"
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": time.time()}))
    t0 = time.monotonic()
    with slide_lock(tmp_path, "s", wait=5) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert time.monotonic() - t0 < 2 and not lock.exists()


def test_live_lock_times_out_with_a_clear_message(tmp_path):
    with slide_lock(tmp_path, "s"):
        with pytest.raises(SlideLockedError, match="delete the lock file"):
            with slide_lock(tmp_path, "s", wait=0.3):
                pass
