"""What the planted-fault tests share: the real command line run in a child process with its peak memory and time
measured (and its address space capped, so that a regression fails the test instead of exhausting the machine),
and small real slides to put next to the faults."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from slidestream.synth import SynthConfig, write_synthetic_slide

# Address space allowed to a command under test: a bomb that got through would fail here at once.
MEMORY_CAP = 6 << 30

_WRAPPER = """
import json, resource, subprocess, sys, time
cap = int(sys.argv[1])
def limit():
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
t0 = time.perf_counter()
p = subprocess.run(sys.argv[2:], capture_output=True, text=True, preexec_fn=limit)
print(json.dumps({"rc": p.returncode, "out": p.stdout + p.stderr, "seconds": time.perf_counter() - t0,
                  "peak": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))
"""


@dataclass
class Run:
    """A finished command: exit status, stdout and stderr together, wall time (s), peak resident memory (bytes)."""

    rc: int
    out: str
    seconds: float
    peak: int


@pytest.fixture(scope="session")
def slidestream_cli():
    """``slidestream_cli(*args, cwd=None, timeout=300)``: run ``slidestream ARGS`` in a fresh process."""

    def run(*args: str | Path, cwd: Path | None = None, timeout: float = 300) -> Run:
        cmd = [sys.executable, "-c", _WRAPPER, str(MEMORY_CAP), sys.executable, "-m", "slidestream.cli.main",
               *map(str, args)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                              env={**__import__("os").environ, "COLUMNS": "250"})
        assert done.returncode == 0, done.stderr
        return Run(**json.loads(done.stdout))

    return run


@pytest.fixture(scope="session")
def good_slides(tmp_path_factory) -> list[Path]:
    """Two small synthetic SVS slides (2048 x 1536 px at 0.5 µm/px) that tile in a second."""
    folder = tmp_path_factory.mktemp("good")
    paths = [folder / "good_a.svs", folder / "good_b.svs"]
    for seed, path in enumerate(paths):
        write_synthetic_slide(path, SynthConfig(width=2048, height=1536, mpp=0.5, seed=seed))
    return paths


# ---------------------------------------------------------------------------------------------------------------
# A small trained batch (tests/faults/test_configs.py, test_overwrite.py, test_errors.py): four slides, tiled,
# embedded and used to train a checkpoint through the real command line, in this process. Tests copy what they
# change.

TILING = ["--target-mpp", "0.5", "--tile-size", "48", "--min-tissue", "0.5", "--workers", "1"]


def cli(*args, env: dict | None = None):
    """Run ``slidestream ARGS`` in this process; the click result (``exit_code``, ``output``, ``exception``)."""
    from click.testing import CliRunner

    from slidestream.cli.main import main

    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def ok(*args):
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return result


def flat(result) -> str:
    """A command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root`` (hidden ones included): relative path → (SHA-256, mtime in ns)."""
    import hashlib

    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


@dataclass
class Trained:
    slides: Path  # s0.svs … s3.svs (s2, s3 with tumour)
    manifest: Path  # slide,label
    stores: Path  # tiled with TILING, features/handcrafted
    model: Path  # a 2-fold ABMIL checkpoint trained on the stores


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    import csv

    root = tmp_path_factory.mktemp("trained")
    slides = root / "slides"
    slides.mkdir()
    for i in range(4):
        write_synthetic_slide(slides / f"s{i}.svs", SynthConfig(width=1536, height=1536, mpp=0.5, tile_size=64,
                                                                 tumor=i >= 2, seed=i))
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([["slide", "label"], *([f"slides/s{i}.svs", int(i >= 2)] for i in range(4))])
    ok("tile", slides, "--out", root / "stores", *TILING)
    ok("embed", root / "stores", "--encoder", "handcrafted")
    ok("train", manifest, "--stores", root / "stores", "--encoder", "handcrafted", "--out", root / "model",
       "--folds", "2", "--epochs", "2", "--device", "cpu")
    return Trained(slides=slides, manifest=manifest, stores=root / "stores", model=root / "model")


@pytest.fixture
def batch_copy(trained, tmp_path) -> Path:
    """A private copy of the trained batch in ``tmp_path``: ``slides/``, ``manifest.csv``, ``stores/``, ``model/``."""
    import shutil

    shutil.copytree(trained.slides, tmp_path / "slides")
    shutil.copy(trained.manifest, tmp_path / "manifest.csv")
    shutil.copytree(trained.stores, tmp_path / "stores")
    shutil.copytree(trained.model, tmp_path / "model")
    return tmp_path
