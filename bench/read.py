"""Reading throughput: stored-tile decoding vs OpenSlide vs slidestream's direct reader, on one core.

All figures come from one run, measured side by side on the same slide, the same coordinates and the same core
(the process is pinned to one CPU and thread pools to one thread), so their ratios hold even where absolute
rates drift on shared machines. Rates are given per second of CPU time of the process (insensitive to other
load) and per second of wall time.

Slide: ``--slide PATH``, or a synthetic Aperio-style SVS (default 60000x45000 at 0.25 µm/px, 256 px JPEG q70
tiles, 4x pyramid) written once into ``--cache-dir`` by :func:`slidestream.synth.write_synthetic_slide`.

What is timed:

1. ``raw decode``: the JPEG tiles stored in the file under the native-level tissue tiles of the pass (and, for
   the last ratio, under all of them), bytes read into memory beforehand, decoded with imagecodecs only (one
   thread) — the practical limit of reading.
2. ``openslide 256 aligned`` / ``direct 256 aligned``: 256 px regions on the stored tile grid, level 0, with
   openslide-python (``read_region(...).convert("RGB")``) and with ``open_slide(..., direct=True)``.
3. The CAMELYON case, 224 px at 0.5 µm/px from the 0.25 µm/px level, over the tiler's own 0.5 µm/px tissue grid
   in row-major order: ``openslide CLAM`` is CLAM's loop (``read_region(xy, 0, (448, 448)).convert("RGB")``, then
   PIL ``resize((224, 224))`` with its default bicubic filter); ``openslide + resize_patch`` reads the same way
   but resizes like ours; ``direct`` is ``Slide.read_region`` with the direct reader + the tiler's
   ``resize_patch`` (area average). ``direct + Image.reduce(2) (info)`` shows what PIL's integer-factor box
   reduction (within 1 grey level of ``resize_patch``, twice as fast) would give; the tiler does not use it.
4. ``tiler read loop``: the tiler's ``read_tile`` over the native-level tissue grid, one thread, nothing stored —
   the reading part of ``slidestream tile``.
5. ``slidestream tile``: :func:`slidestream.tiling.tiler.tile_slide` (what ``slidestream tile`` runs) at the
   native level, 256 px, one worker, into a fresh store: segmentation, grid, reading, Zarr writing.

    .venv/bin/python bench/read.py          # writes the 60k x 45k synthetic slide on first use (~1 min, 160 MiB)
    .venv/bin/python bench/read.py --slide my.svs --patches 1000 --rounds 5

Exits non-zero when an acceptance ratio is missed (direct 224@0.5 >= 3x OpenSlide CLAM; slidestream tile >= 0.6x
raw decode); ``--no-check`` only reports.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
             "BLOSC_NTHREADS"):
    os.environ[_var] = "1"

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import imagecodecs
import numpy as np
import openslide
import tifffile
from PIL import Image
from slidestream.tiling.grid import (
    ReadPlan,
    TilingParams,
    grid_coords,
    plan_reads,
    tissue_fractions,
)
from slidestream.tiling.overview import tissue_mask
from slidestream.tiling.reads import read_tile, resize_patch
from slidestream.tiling.tiler import tile_slide
from slidestream.wsi.direct import DirectTiffReader
from slidestream.wsi.slide import open_slide
from _slides import synthetic_slide  # noqa: E402  (bench/ is on sys.path when run as a script)

Timing = tuple[float, float]  # (CPU seconds, wall seconds)


def _timed(fn: Callable[[], int]) -> tuple[int, Timing]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    n = fn()
    return n, (time.process_time() - cpu0, time.perf_counter() - wall0)


def bench_slide(args: argparse.Namespace) -> Path:
    if args.slide:
        return Path(args.slide)
    width, height = (int(v) for v in args.size.lower().split("x"))
    return synthetic_slide(Path(args.cache_dir), width, height)


def tissue_coords(path: Path, params: TilingParams) -> tuple[np.ndarray, ReadPlan]:
    """Row-major level-0 coordinates of the tiler's tissue tiles for `params`, and the tiler's read plan."""
    with open_slide(path) as slide:
        plan = plan_reads(params, slide.mpp, tuple(slide.level_downsamples))
        mask, ds = tissue_mask(slide, params)
        coords = grid_coords(slide.dimensions, plan)
        keep = tissue_fractions(coords, plan.extent0, mask, ds) >= params.min_tissue
    return coords[keep], plan


def stored_tiles(path: Path, coords: np.ndarray) -> tuple[list[bytes], Callable[[bytes], np.ndarray]]:
    """Compressed level-0 tiles under 256 px tile-aligned `coords`, and an imagecodecs-only decoder for them."""
    with open_slide(path) as slide:
        dims = slide.level_dimensions
    with DirectTiffReader(path, dims[:1], cache_bytes=0) as reader:
        level = reader.levels[0]
        tile_w, tile_h = level.tile_size
        data = [reader.raw_tile(0, int(x) // tile_w, int(y) // tile_h) for x, y in coords]
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[level.page]
        colorspace, outcolorspace = tifffile.tifffile.jpeg_decode_colorspace(
            page.photometric, page.planarconfig, page.extrasamples, page.is_jfif)
        tables = page.jpegtables

    def decode(raw: bytes) -> np.ndarray:
        return imagecodecs.jpeg8_decode(raw, tables=tables, colorspace=colorspace, outcolorspace=outcolorspace)

    return data, decode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slide", help="slide to read (default: a synthetic 40x SVS in --cache-dir)")
    parser.add_argument("--size", default="60000x45000", help="synthetic slide size WxH (default %(default)s)")
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "slidestream-bench"))
    parser.add_argument("--patches", type=int, default=1500, help="regions per timed pass (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="passes per method, median kept (default %(default)s)")
    parser.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the last one allowed)")
    parser.add_argument("--no-tile", action="store_true", help="skip the slidestream tile measurement")
    parser.add_argument("--no-check", action="store_true", help="report only; exit 0 whatever the ratios")
    args = parser.parse_args(argv)

    allowed = sorted(os.sched_getaffinity(0))
    cpu = args.cpu if args.cpu is not None else allowed[-1]
    os.sched_setaffinity(0, {cpu})
    path = bench_slide(args)
    with open_slide(path) as slide:
        print(f"slide: {path.name} {slide.dimensions[0]}x{slide.dimensions[1]}, {slide.mpp:g} µm/px, "
              f"levels {slide.level_count}, direct levels {slide.direct_levels}; pinned to CPU {cpu}", flush=True)
        if 0 not in slide.direct_levels:
            print("level 0 of this slide is not read directly: nothing to compare")
            return 1

    native = TilingParams(mpp=0.25, tile_size=256, min_tissue=0.5)
    clam = TilingParams(mpp=0.5, tile_size=224, min_tissue=0.5)
    native_xy, native_plan = tissue_coords(path, native)
    clam_xy, clam_plan = tissue_coords(path, clam)
    if (native_plan.level, native_plan.read_size, clam_plan.level, clam_plan.read_size) != (0, 256, 0, 448):
        print(f"this slide is not a 0.25 µm/px slide read as planned here: {native_plan}, {clam_plan}")
        return 1
    # a contiguous run of the row-major grid from the middle of the tissue: the order a tiler reads in
    start_n, start_c = len(native_xy) // 3, len(clam_xy) // 3
    native_run = native_xy[start_n : start_n + args.patches]
    clam_run = clam_xy[start_c : start_c + args.patches]
    print(f"tissue tiles: {len(native_xy)} native 256 px, {len(clam_xy)} 224 px @ 0.5; timing {len(native_run)} / "
          f"{len(clam_run)} per pass, {args.rounds} passes", flush=True)
    raw_run, decode = stored_tiles(path, native_run)

    def raw_decode(tiles: list[bytes]) -> Callable[[], int]:
        def run() -> int:
            for data in tiles:
                decode(data)
            return len(tiles)

        return run

    def openslide_aligned() -> int:
        with openslide.OpenSlide(str(path)) as osr:
            for x, y in native_run:
                np.asarray(osr.read_region((int(x), int(y)), 0, (256, 256)).convert("RGB"))
        return len(native_run)

    def direct_aligned() -> int:
        with open_slide(path, direct=True) as slide:
            for x, y in native_run:
                slide.read_region((int(x), int(y)), 0, (256, 256))
        return len(native_run)

    def tiler_reads() -> int:
        with open_slide(path) as slide:
            for xy in native_run:
                read_tile(slide, xy, native_plan)
        return len(native_run)

    def openslide_clam() -> int:
        with openslide.OpenSlide(str(path)) as osr:
            for x, y in clam_run:
                np.asarray(osr.read_region((int(x), int(y)), 0, (448, 448)).convert("RGB").resize((224, 224)))
        return len(clam_run)

    def openslide_resize_patch() -> int:
        with openslide.OpenSlide(str(path)) as osr:
            for x, y in clam_run:
                resize_patch(np.asarray(osr.read_region((int(x), int(y)), 0, (448, 448)).convert("RGB")), 224)
        return len(clam_run)

    def direct_clam() -> int:
        with open_slide(path, direct=True) as slide:
            for x, y in clam_run:
                resize_patch(slide.read_region((int(x), int(y)), 0, (448, 448)), 224)
        return len(clam_run)

    def direct_reduce() -> int:
        # Not what the tiler does today: PIL's integer-factor box reduction, within 1 grey level of resize_patch.
        with open_slide(path, direct=True) as slide:
            for x, y in clam_run:
                np.asarray(Image.fromarray(slide.read_region((int(x), int(y)), 0, (448, 448))).reduce(2))
        return len(clam_run)

    RAW, OS256, D256, TILER = "raw decode (imagecodecs)", "openslide 256 aligned", "direct 256 aligned", \
        "tiler read loop (no store)"
    CLAM, OSRP, D224 = "openslide CLAM (PIL bicubic)", "openslide + resize_patch", "direct + resize_patch"
    DRED = "direct + Image.reduce(2) (info)"
    methods = {RAW: raw_decode(raw_run), OS256: openslide_aligned, D256: direct_aligned, TILER: tiler_reads,
               CLAM: openslide_clam, OSRP: openslide_resize_patch, D224: direct_clam, DRED: direct_reduce}
    ratios = [  # (name, numerator, denominator, target)
        ("direct 224@0.5 / openslide CLAM", D224, CLAM, 3.0),
        ("direct 224@0.5 / openslide, same resize", D224, OSRP, None),
        ("direct + reduce(2) / openslide CLAM (info)", DRED, CLAM, None),
        ("direct 256 / openslide 256", D256, OS256, None),
        ("direct 256 / raw decode", D256, RAW, None),
        ("tiler read loop / raw decode", TILER, RAW, None),
    ]
    # Rounds interleave the methods so that drifting load hits all alike; ratios are taken within a round and
    # their median reported.
    rounds: list[dict[str, tuple[float, float]]] = []
    for _ in range(args.rounds):
        rates = {}
        for name, fn in methods.items():
            n, (cpu_s, wall_s) = _timed(fn)
            rates[name] = (n / cpu_s, n / wall_s)
        rounds.append(rates)
    if not args.no_tile:
        tile_name, raw_all_name = "slidestream tile (1 worker)", "raw decode, all its tiles"
        raw_all, _ = stored_tiles(path, native_xy)
        for rates in rounds[:1]:  # one slide tiling is long enough to average the load by itself
            n, (cpu_s, wall_s) = _timed(raw_decode(raw_all))
            rates[raw_all_name] = (n / cpu_s, n / wall_s)
            with tempfile.TemporaryDirectory(dir=args.cache_dir) as out:
                n, (cpu_s, wall_s) = _timed(lambda: tile_slide(path, out, native, workers=1).n_tiles)
            rates[tile_name] = (n / cpu_s, n / wall_s)
            print(f"slidestream tile: {n} tiles in {wall_s:.1f} s wall, {cpu_s:.1f} s CPU", flush=True)
        ratios.append(("slidestream tile / raw decode", tile_name, raw_all_name, 0.6))

    def median(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    print(f"\n{'rate (median of passes)':44s} {'per CPU-s':>10s} {'per wall-s':>11s}")
    for name in rounds[0]:
        per_cpu = median([r[name][0] for r in rounds if name in r])
        per_wall = median([r[name][1] for r in rounds if name in r])
        unit = "patches" if name in (CLAM, OSRP, D224, DRED) else "tiles"
        print(f"{name:44s} {per_cpu:10.0f} {per_wall:11.0f}  {unit}/s")
    print(f"\n{'ratio (median of per-pass ratios)':44s} {'CPU':>10s} {'(min-max)':>11s} {'wall':>6s}  target")
    ok = True
    for name, num, den, target in ratios:
        per_cpu = [r[num][0] / r[den][0] for r in rounds if num in r]
        by_cpu, by_wall = median(per_cpu), median([r[num][1] / r[den][1] for r in rounds if num in r])
        spread = f"({min(per_cpu):.2f}-{max(per_cpu):.2f})"
        met = "" if target is None else f">= {target:g} " + ("met" if by_cpu >= target else "NOT met")
        ok = ok and (target is None or by_cpu >= target)
        print(f"{name:44s} {by_cpu:10.2f} {spread:>11s} {by_wall:6.2f}  {met}")
    return 0 if ok or args.no_check else 1


if __name__ == "__main__":
    sys.exit(main())
