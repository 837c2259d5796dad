"""What the stores' checksums cost: tiling, reading patches, writing and reading features, and ``status --verify``.

Runs in this process (``tile_slide`` with one worker), on a synthetic 40x SVS cached in ``--cache-dir``, so it can
be run as is against two checkouts (``PYTHONPATH`` pointing at each) to compare a store layout with and without
checksums; ``--verify`` is skipped where the checkout has no verification. Figures are medians of ``--rounds``
runs, in tiles per second of CPU time of this process (less sensitive to other load than wall time) and of wall
time.

Jobs: ``native`` (256 px at the slide's 0.25 µm/px: its own JPEG tiles, kept as they are) and ``20x`` (224 px at
0.5 µm/px: decoded, reduced and stored as lossless pixels); features are float16 ``(N, 1024)``.

    PYTHONPATH=... .venv/bin/python bench/checksums.py --size 16384x12288 --rounds 5
    .venv/bin/python bench/checksums.py --only 20x --ab --rounds 9   # with and without crc32c, one process
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


def _codec_ab(store_path: Path, work: Path, rounds: int) -> dict[str, tuple[float, float]]:
    """The same data through Zarr with and without the ``crc32c`` codec, alternately in this process: ms per
    chunk to write and to read, (without, with), for the store's pixel patches and for float16 features."""
    import zarr
    from zarr.codecs import Crc32cCodec

    store = SlideStore.open(store_path)
    src = store.group["patches"]
    patches = store.patches[...]
    feats = np.random.default_rng(0).standard_normal((len(patches), FEATURE_DIM)).astype(np.float16)
    out: dict[str, tuple[float, float]] = {}
    for name, data, chunks, compressors in (
            ("patches", patches, src.chunks, [c for c in src.compressors if not isinstance(c, Crc32cCodec)]),
            ("features", feats, (src.chunks[0], FEATURE_DIM), "auto")):
        times: dict[tuple[str, bool], list[float]] = {}
        for _ in range(rounds):
            for crc in (False, True):
                comp = compressors if compressors != "auto" else [zarr.codecs.ZstdCodec(level=0)]
                arr = zarr.create_array(work / f"ab-{name}-{crc}.zarr", shape=data.shape, dtype=data.dtype,
                                        chunks=chunks, compressors=[*comp, *([Crc32cCodec()] if crc else [])],
                                        overwrite=True, config={"write_empty_chunks": True})
                n = arr.nchunks
                t0 = time.perf_counter()
                arr[...] = data
                times.setdefault(("write", crc), []).append((time.perf_counter() - t0) / n * 1e3)
                t0 = time.perf_counter()
                arr[...]
                times.setdefault(("read", crc), []).append((time.perf_counter() - t0) / n * 1e3)
        for step in ("write", "read"):
            out[f"{name} {step}"] = (statistics.median(times[(step, False)]), statistics.median(times[(step, True)]))
    return out


def _hand_path(store_path: Path, rounds: int) -> tuple[float, float]:
    """What the tiler's own pixel-chunk write does per chunk, CPU ms: Blosc (the array's settings), and the CRC32C
    of the compressed bytes that schema 3 appends."""
    import numcodecs

    from slidestream.store.integrity import crc32c_bytes

    store = SlideStore.open(store_path)
    blosc = numcodecs.Blosc(cname="lz4", clevel=1, shuffle=numcodecs.Blosc.NOSHUFFLE)
    chunks = [np.ascontiguousarray(store.patches[s]) for s in store.chunk_slices("patches")]
    enc, crc = [], []
    for _ in range(rounds):
        for chunk in chunks:
            c0 = time.process_time()
            data = blosc.encode(chunk)
            c1 = time.process_time()
            crc32c_bytes(data)
            c2 = time.process_time()
            enc.append(c1 - c0)
            crc.append(c2 - c1)
    return statistics.mean(enc) * 1e3, statistics.mean(crc) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="16384x12288", help="synthetic slide size WxH (default %(default)s)")
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "slidestream-bench"))
    parser.add_argument("--rounds", type=int, default=5, help="repeats, median kept (%(default)s)")
    parser.add_argument("--only", choices=list(JOBS), action="append", help="run only these jobs")
    parser.add_argument("--ab", action="store_true",
                        help="also: the 20x job's patches and features through Zarr with and without crc32c, "
                             "alternately in this process (ms per chunk)")
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
        if args.ab:
            res = tile_slide(slide, work / "ab", JOBS["20x"], workers=1)
            print(f"crc32c codec on {res.n_tiles} tiles of the 20x job (ms per chunk of 64 tiles, wall, median of "
                  f"{args.rounds}): without | with")
            for step, (without, with_) in _codec_ab(res.store, work, args.rounds).items():
                print(f"  {step:<16} {without:8.2f} | {with_:8.2f}  ({with_ / without - 1:+.1%})")
            enc, crc = _hand_path(res.store, args.rounds)
            print(f"  the tiler's pixel chunk (CPU ms per chunk, mean): Blosc {enc:.2f}, CRC32C {crc:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
