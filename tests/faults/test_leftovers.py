"""Planted interruptions: what a killed run leaves behind must not outlive it, and the next run cleans it up.

The tissue helper of ``slidestream tile`` (a forked process) used to survive a SIGKILL of its parent, blocked for
minutes on a pipe it held both ends of; hidden temporary files of interrupted writes stayed in output folders.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from slidestream.fileio import is_temp_name
from slidestream.pipeline.outputs import heatmap_batch

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the tissue helper is forked on Linux")

# The parent: starts the helper for a slide and never reads its result, so the helper (whose mask, at 0.5 µm/px,
# does not fit in a pipe's buffer) stays alive, blocked on sending it; prints the helper's pid and waits.
_PARENT = """
import signal, sys
from slidestream.tiling import overview
from slidestream.tiling.grid import TilingParams
from slidestream.tiling.tissue import TissueConfig
if sys.argv[2] == "pipe-only":  # without the kernel's parent-death signal: the closed pipe end alone must do
    overview._die_with_parent = lambda parent: None
helper = overview.EarlyTissue(sys.argv[1], TilingParams(thumbnail_size=2048), None, TissueConfig(working_mpp=0.5))
print(helper.pid, flush=True)
signal.pause()
"""


def _blocked_on_the_pipe(proc: psutil.Process, timeout: float) -> bool:
    """Wait until the helper has segmented the slide and is blocked writing its mask (the state it used to be
    left in), as /proc/<pid>/wchan shows; where the kernel hides wchan, until it sleeps."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            wchan = open(f"/proc/{proc.pid}/wchan").read()
        except OSError:
            wchan = "0"
        if "pipe" in wchan or (wchan == "0" and proc.status() == psutil.STATUS_SLEEPING):
            return True
    return False


def _gone(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` has exited (or is a zombie waiting for init) within ``timeout`` seconds."""
    try:
        proc = psutil.Process(pid)
        proc.wait(timeout=timeout)
        return True
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return proc.status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("mode", ["full", "pipe-only"])
def test_the_tissue_helper_dies_with_its_killed_parent(good_slides, mode):
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(good_slides[0]), mode], stdout=subprocess.PIPE,
                              text=True)
    try:
        helper = int(parent.stdout.readline())
        proc = psutil.Process(helper)
        assert proc.ppid() == parent.pid
        assert _blocked_on_the_pipe(proc, timeout=60)  # alive, and stuck where the old helper stayed for minutes
        if mode == "full":  # it names itself (for ps / psutil) as it starts
            deadline = time.monotonic() + 10
            while proc.name() != "ss-tissue" and time.monotonic() < deadline:
                pass
            assert proc.name() == "ss-tissue"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        assert _gone(helper, timeout=10), f"helper {helper} still running after its parent was killed"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_a_killed_tile_run_leaves_no_helper(good_slides, tmp_path):
    """The real command, killed while its helper runs: the helper goes too."""
    cmd = [sys.executable, "-m", "slidestream.cli.main", "tile", str(good_slides[0]), "--out", str(tmp_path / "o"),
           "--workers", "2", "--target-mpp", "0.5"]
    run = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        me = psutil.Process(run.pid)
        helper = None
        deadline = time.monotonic() + 60
        while helper is None and run.poll() is None and time.monotonic() < deadline:
            helper = next((c for c in me.children() if c.name() == "ss-tissue"), None)
        if helper is None:
            pytest.skip("the helper finished before it could be seen (a machine too fast or too busy to race)")
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=30)
        assert _gone(helper.pid, timeout=10)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()


def _plant_temp(folder, name: str, pid: int, age_s: float):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".{name}.{pid}-0123abcd.tmp"
    assert is_temp_name(path.name)
    path.write_bytes(b"half a file")
    old = time.time() - age_s
    os.utime(path, (old, old))
    return path


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_the_next_run_removes_temporaries_of_an_interrupted_one(good_slides, slidestream_cli, tmp_path):
    out = tmp_path / "stores"
    dead = _dead_pid()
    stale = [_plant_temp(out, "run-tile.json", dead, 3600), _plant_temp(out, "good_a.tissue.geojson", dead, 120)]
    live = _plant_temp(out, "other.json", os.getpid(), 3600)  # a writer still running: left alone
    fresh = _plant_temp(out, "recent.json", dead, 0)  # too recent to judge
    unrelated = out / ".keep"
    unrelated.write_text("not ours")
    run = slidestream_cli("tile", good_slides[0], "--out", out, "--no-save-patches")
    assert run.rc == 0, run.out
    assert not any(p.exists() for p in stale)
    assert live.exists() and fresh.exists() and unrelated.exists()
    assert (out / "good_a.zarr").is_dir() and (out / "run-tile.json").is_file()


def test_heatmap_output_folders_are_cleaned(tmp_path):
    dead = _dead_pid()
    stale = _plant_temp(tmp_path / "maps", "s1.heatmap.png", dead, 3600)
    heatmap_batch([], tmp_path / "maps", model_name="any")
    assert not stale.exists()
