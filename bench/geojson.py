"""Benchmark: a 100k-tile QuPath heatmap, built and written as .geojson and .geojson.gz.

Target (issue 7): ≤ 10 s to build and write, ≤ 15 MB gzipped. Prints one line per gzip level so the default
level of :func:`slidestream.annotations.write_geojson` can be chosen by measurement.

Measured on the shared 2-core dev box (100k tiles of 256 px, 2 measurements, 2 % NaN; load ~3, so ±50 %):
build 1.4 s; plain 28.7 MB in 0.6–1.1 s; gzip -1 5.71 MB / 0.8–1.4 s, -3 5.63 MB / 0.9 s, -6 4.91 MB / 1.1–1.5 s,
-9 4.89 MB / 1.5–2.8 s. Level 6 is the default: 14 % smaller than -1 for a few tenths of a second, while -9
saves nothing more. ``check_qupath_feature`` on every tile: 2.7 s. Reading the .gz back with
``read_annotations``: 4.5–7.5 s.

Usage::

    OMP_NUM_THREADS=1 python bench/geojson.py [--tiles 100000] [--levels 1,3,6,9] [--check] [--read]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # shared machine: keep numpy/BLAS to one core

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from slidestream.annotations import tile_features, write_geojson


def _grid(n_tiles: int, tile_size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    side = int(np.ceil(np.sqrt(n_tiles)))
    ij = np.stack(np.unravel_index(np.arange(n_tiles), (side, side)), axis=1)
    coords = (ij[:, ::-1] * tile_size).astype(np.int64)
    # Smooth "tumour" blob plus noise, like a real probability map; 2 % background NaN (omitted in output).
    centre = coords.mean(axis=0)
    d = np.linalg.norm(coords - centre, axis=1) / (side * tile_size / 2)
    prob = np.clip(np.exp(-4 * d**2) + rng.normal(0, 0.05, n_tiles), 0, 1)
    prob[rng.random(n_tiles) < 0.02] = np.nan
    attention = rng.random(n_tiles).astype(np.float32)
    return coords, {"tumor_probability": prob, "attention_score": attention}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=100_000)
    ap.add_argument("--tile-size", type=int, default=256)
    ap.add_argument("--levels", default="1,3,6,9", help="gzip levels to try")
    ap.add_argument("--check", action="store_true", help="also time check_qupath_feature on every tile")
    ap.add_argument("--read", action="store_true", help="also time read_annotations on the .gz file")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    coords, meas = _grid(args.tiles, args.tile_size, rng)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        feats = tile_features(coords, args.tile_size, meas)
        t_build = time.perf_counter() - t0
        print(f"tiles={len(feats)} build={t_build:.2f}s")

        plain = os.path.join(tmp, "heatmap.geojson")
        t0 = time.perf_counter()
        write_geojson(plain, feats)
        t_plain = time.perf_counter() - t0
        print(f"plain    write={t_plain:.2f}s total={t_build + t_plain:.2f}s "
              f"size={os.path.getsize(plain) / 1e6:.2f} MB")

        for level in (int(v) for v in args.levels.split(",")):
            gz = os.path.join(tmp, f"heatmap-{level}.geojson.gz")
            t0 = time.perf_counter()
            write_geojson(gz, feats, compresslevel=level)
            t_gz = time.perf_counter() - t0
            print(f"gzip -{level}  write={t_gz:.2f}s total={t_build + t_gz:.2f}s "
                  f"size={os.path.getsize(gz) / 1e6:.2f} MB")

        if args.check:
            from slidestream.annotations import check_qupath_feature

            t0 = time.perf_counter()
            bad = sum(1 for f in feats if check_qupath_feature(f))
            print(f"check_qupath_feature on all tiles: {time.perf_counter() - t0:.2f}s, {bad} with violations")

        if args.read:
            from slidestream.annotations import read_annotations

            t0 = time.perf_counter()
            anns = read_annotations(gz)
            print(f"read {len(anns)} tiles back in {time.perf_counter() - t0:.2f}s")


if __name__ == "__main__":
    main()
