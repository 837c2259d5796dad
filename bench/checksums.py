"""What the stores' checksums cost: tiling, reading patches, writing and reading features, and ``status --verify``.

Runs in this process (``tile_slide`` with one worker), on a synthetic 40x SVS cached in ``--cache-dir``, so it can
be run as is against two checkouts (``PYTHONPATH`` pointing at each) to compare a store layout with and without
checksums; ``--verify`` is skipped where the checkout has no verification. Figures are medians of ``--rounds``
runs, in tiles per second of CPU time of this process (less sensitive to other load than wall time) and of wall
time.

Jobs: ``native`` (256 px at the slide's 0.25 µm/px: its own JPEG tiles, kept as they are) and ``20x`` (224 px at
0.5 µm/px: decoded, reduced and stored as lossless pixels); features are float16 ``(N, 1024)``.

    PYTHONPATH=... .venv/bin/python bench/checksums.py --size 16384x12288 --rounds 5
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
             "BLOSC_NTHREADS"):
    os.environ[_var] = "1"

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import slidestream
from slidestream.store import SCHEMA_VERSION, SlideStore
from slidestream.tiling.grid import TilingParams
from slidestream.tiling.tiler import tile_slide
from _slides import synthetic_slide  # noqa: E402  (bench/ is on sys.path when run as a script)

JOBS = {"native": TilingParams(mpp=0.25, tile_size=256, min_tissue=0.25),
        "20x": TilingParams(mpp=0.5, tile_size=224, min_tissue=0.25)}
FEATURE_DIM = 1024


def _timed(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def _job(slide: Path, work: Path, params: TilingParams, rounds: int) -> dict:
    rows: dict[str, list[tuple[float, float]]] = {}
    n = 0
    for _ in range(rounds):
        out = Path(tempfile.mkdtemp(dir=work))
        res, cpu, wall = _timed(lambda: tile_slide(slide, out, params, workers=1, overwrite=True))
        n = res.n_tiles
        rows.setdefault("tile", []).append((cpu, wall))
        store = SlideStore.open(res.store, mode="r+")
        encoding = store.patch_encoding["name"]
        slices = store.chunk_slices("patches")
        patches = store.patches
        _, cpu, wall = _timed(lambda: [patches[s] for s in slices])
        rows.setdefault("read patches", []).append((cpu, wall))
        feats = np.random.default_rng(0).standard_normal((n, FEATURE_DIM)).astype(np.float16)
        store.create_feature_array("bench", FEATURE_DIM, attrs={"bench": True})
        _, cpu, wall = _timed(lambda: [store.write_chunk("features/bench", i, feats[s])
                                       for i, s in enumerate(store.chunk_slices("features/bench"))])
        rows.setdefault("write features", []).append((cpu, wall))
        _, cpu, wall = _timed(lambda: store.read_features("bench"))
        rows.setdefault("read features", []).append((cpu, wall))
        try:
            from slidestream.store import verify_store
        except ImportError:
            verify_store = None
        if verify_store is not None:
            _, cpu, wall = _timed(lambda: verify_store(res.store))
            rows.setdefault("status --verify", []).append((cpu, wall))
        shutil.rmtree(out)
    return {"tiles": n, "encoding": encoding,
            "rates": {k: (n / statistics.median(c for c, _ in v), n / statistics.median(w for _, w in v))
                      for k, v in rows.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="16384x12288", help="synthetic slide size WxH (default %(default)s)")
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "slidestream-bench"))
    parser.add_argument("--rounds", type=int, default=5, help="repeats, median kept (%(default)s)")
    parser.add_argument("--only", choices=list(JOBS), action="append", help="run only these jobs")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    slide = synthetic_slide(Path(args.cache_dir), width, height)
    work = Path(tempfile.mkdtemp(prefix="checksums-"))
    print(f"slidestream at {Path(slidestream.__file__).parent}, store schema {SCHEMA_VERSION}, slide {slide.name}")
    try:
        for name in args.only or list(JOBS):
            r = _job(slide, work, JOBS[name], args.rounds)
            print(f"{name}: {r['tiles']} tiles, {r['encoding']} patches (tiles/s: CPU | wall, median of {args.rounds})")
            for step, (cpu, wall) in r["rates"].items():
                print(f"  {step:<16} {cpu:10,.0f} | {wall:10,.0f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
