"""Tiling throughput and memory: ``slidestream tile`` as a whole process against the limits of reading.

Every figure comes from one run of this script, measured side by side on the same slide and the same CPUs, so
the ratios hold where absolute rates drift on shared machines. ``slidestream tile`` runs as a child process
(start-up, tissue segmentation, reading, QC, writing patches, run record); its CPU time comes from the kernel's
accounting of the child (``os.wait4``) and its peak memory from ``ru_maxrss``. Rates are given per second of CPU
time (insensitive to other load on the machine) and per second of wall time.

Slide: ``--slide PATH``, or a synthetic Aperio-style SVS (default 60000x45000 at 0.25 µm/px, 256 px JPEG q70
tiles, 4x pyramid) written once into ``--cache-dir`` by :func:`slidestream.synth.write_synthetic_slide`
(the same file ``bench/read.py`` uses).

What is measured, and the targets of issue 3:

1. ``native``: ``slidestream tile --target-mpp <level-0 mpp> --tile-size 256 --workers 1`` (pinned to one CPU)
   against the raw decode of the same stored tiles (their JPEG bytes in memory, imagecodecs only, one thread):
   tile rate >= 0.6x decode rate.
2. ``20x``: ``slidestream tile --target-mpp 0.5 --tile-size 224 --workers 1`` from the 0.25 µm/px level against a
   CLAM-style OpenSlide loop over the same coordinates (``read_region(xy, 0, (448, 448)).convert("RGB")``, then
   PIL ``resize((224, 224))``): >= 3x.
3. ``workers``: ``--workers 2`` on two CPUs (on different physical cores where the topology says so) against
   ``--workers 1`` on one, wall time, on the default job (224 px @ 0.5 µm/px): >= 1.7x; the native job's figure
   is printed for information. (Meaningless while other processes load the CPUs: the load average is printed.)
4. ``--big``: peak RSS of ``slidestream tile`` (native 256 and 224 @ 0.5, 2 workers) on a 100000x100000 slide,
   summed over the tiling process and its worker processes: < 2 GB. Writing that slide takes several minutes the first time.
5. ``--codecs``: lossless compressors for decoded patches (what the pixel path stores) on real H&E and on the
   synthetic slide: size ratio and CPU per tile.

    .venv/bin/python bench/tile.py                 # native, 20x, workers; writes the 60k x 45k slide on first use
    .venv/bin/python bench/tile.py --big --codecs  # and the 100k x 100k RSS check, and the codec table

Exits non-zero when a target is missed; ``--no-check`` only reports.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
             "BLOSC_NTHREADS"):
    os.environ[_var] = "1"

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
import openslide
import tifffile
from slidestream.tiling.grid import TilingParams, plan_reads
from slidestream.store import SlideStore
from slidestream.tiling.jpeg_fastpath import ReducedTileReader, reduced_read
from slidestream.tiling.reads import read_tile
from slidestream.tiling.tiler import tile_slide
from slidestream.wsi.direct import DirectTiffReader, merge_jpeg_tables
from slidestream.wsi import open_slide, slide_id_from_path
from _slides import synthetic_slide  # noqa: E402  (bench/ is on sys.path when run as a script)
from tifffile.tifffile import jpeg_decode_colorspace

CHILD_ENV = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                              "BLOSC_NTHREADS")}


@dataclass
class Run:
    """One ``slidestream tile`` process."""

    tiles: int
    cpu_s: float
    wall_s: float
    max_rss_mb: float  # the tiling process's own peak
    tree_rss_mb: float  # peak of the summed RSS of the process and its worker processes
    store_mb: float
    encoding: str
    coords: np.ndarray  # level-0 x, y of the stored tiles

    @property
    def cpu_rate(self) -> float:
        return self.tiles / self.cpu_s

    @property
    def wall_rate(self) -> float:
        return self.tiles / self.wall_s


def slidestream_command() -> list[str]:
    exe = Path(sys.executable).with_name("slidestream")
    if exe.is_file():
        return [str(exe)]
    return [sys.executable, "-c", "from slidestream.cli.main import console; console()"]


def run_tile(slide: Path, work: Path, *, mpp: float, tile_size: int, workers: int, cpus: set[int]) -> Run:
    """``slidestream tile`` in a child process pinned to ``cpus``, into a fresh folder under ``work``."""
    out = Path(tempfile.mkdtemp(dir=work, prefix="tile-"))
    cmd = [*slidestream_command(), "tile", str(slide), "--out", str(out), "--target-mpp", f"{mpp:g}",
           "--tile-size", str(tile_size), "--workers", str(workers)]
    # The child inherits this process's CPU affinity at spawn (no preexec_fn: unsafe with threads running here).
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    wall0 = time.perf_counter()
    try:
        proc = subprocess.Popen(cmd, env={**os.environ, **CHILD_ENV}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
    finally:
        os.sched_setaffinity(0, own)
    peak = PeakRSS(proc.pid)
    output = proc.stdout.read().decode(errors="replace")
    peak.stop()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - wall0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-3000:]}")
    store = SlideStore.open(out / f"{slide_id_from_path(slide)}.zarr")
    size = sum(f.stat().st_size for f in store.path.rglob("*") if f.is_file())
    run = Run(tiles=store.n_tiles, cpu_s=usage.ru_utime + usage.ru_stime, wall_s=wall,
              max_rss_mb=peak.mib if peak.mib else usage.ru_maxrss / 1024,
              tree_rss_mb=max(peak.tree_mib, peak.mib), store_mb=size / 2**20, encoding=store.patch_encoding["name"],
              coords=store.coords)
    shutil.rmtree(out)
    return run


class PeakRSS:
    """Peak resident memory of a running process and its worker processes, sampled until :meth:`stop`.

    Not ``ru_maxrss`` of the child: on Linux that includes the memory of the parent (this script) at fork time.
    Two figures: the process's own high-water mark (VmHWM from /proc, exact) and the peak of the summed RSS of the
    process and all its descendants (the tiler's forked workers), sampled every ``interval`` seconds. The sum
    counts pages the workers share with their parent once per process, so it overstates the true total: a
    conservative figure for a memory bound.
    """

    def __init__(self, pid: int, interval: float = 0.02):
        import threading

        import psutil

        self.mib = 0.0  # VmHWM of the process itself
        self.tree_mib = 0.0  # peak of the summed RSS of the process tree
        self._proc = psutil.Process(pid)
        self._path = Path(f"/proc/{pid}/status")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                for line in self._path.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.mib = max(self.mib, int(line.split()[1]) / 1024)
                total = self._proc.memory_info().rss
                for child in self._proc.children(recursive=True):
                    try:
                        total += child.memory_info().rss
                    except psutil.Error:
                        pass
                self.tree_mib = max(self.tree_mib, total / 2**20)
            except (OSError, ValueError, IndexError, psutil.Error):
                pass
            self._stop.wait(interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def stored_jpeg_tiles(path: Path, coords: np.ndarray, level: int = 0) -> tuple[list[bytes], dict]:
    """Complete JPEG streams of the stored tiles under tile-aligned level-``level`` ``coords``, and decode kwargs."""
    with open_slide(path) as slide:
        dims = slide.level_dimensions
        ds = slide.level_downsamples[level]
    with DirectTiffReader(path, dims, cache_bytes=0) as reader:
        lv = reader.levels[level]
        step = lv.tile_size[0] * ds
        data = [merge_jpeg_tables(reader.raw_tile(level, int(x // step), int(y // step)), lv.jpegtables)
                for x, y in coords]
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[lv.page]
        cs, out_cs = jpeg_decode_colorspace(page.photometric, page.planarconfig, page.extrasamples, page.is_jfif)
    return data, {"colorspace": cs, "outcolorspace": out_cs}


def timed(fn, *args) -> tuple[float, float]:
    """CPU and wall seconds of ``fn(*args)``."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    fn(*args)
    return time.process_time() - cpu0, time.perf_counter() - wall0


def decode_all(tiles: list[bytes], kwargs: dict) -> None:
    for t in tiles:
        imagecodecs.jpeg8_decode(t, **kwargs)


def clam_loop(slide: Path, coords: np.ndarray) -> None:
    """CLAM's patch reading: 448 px at level 0, RGBA to RGB, PIL's default (bicubic) resize to 224."""
    with openslide.OpenSlide(str(slide)) as osr:
        for x, y in coords:
            np.asarray(osr.read_region((int(x), int(y)), 0, (448, 448)).convert("RGB").resize((224, 224)))


def tiler_reads(slide: Path, coords: np.ndarray) -> None:
    """The tiler's reading of 224 px @ 0.5 patches, nothing stored (its reduced-tile path where the grid allows)."""
    with open_slide(slide) as s:
        plan = plan_reads(TilingParams(mpp=0.5, tile_size=224), s.mpp, tuple(s.level_downsamples))
        spec = reduced_read(s, plan, coords)
        if spec is None:
            for xy in coords:
                read_tile(s, xy, plan)
            return
        dims = s.level_dimensions
    reader = ReducedTileReader(slide, dims, spec)
    try:
        for xy in coords:
            reader.read(xy)
    finally:
        reader.close()


def load() -> str:
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"


def report(name: str, values: list[float], target: float | None, larger: bool = True) -> bool:
    med = statistics.median(values)
    spread = f"({min(values):.2f}-{max(values):.2f})" if len(values) > 1 else ""
    met = True if target is None else (med >= target if larger else med < target)
    goal = "" if target is None else f"target {'>=' if larger else '<'} {target:g}: " + ("met" if met else "NOT met")
    print(f"  {name:52s} {med:8.2f} {spread:>13s}  {goal}", flush=True)
    return met


def bench_native(slide: Path, work: Path, rounds: int, cpu: int) -> bool:
    with open_slide(slide) as s:
        mpp = s.mpp
    print(f"\n[native] slidestream tile --target-mpp {mpp:g} --tile-size 256 --workers 1, pinned to CPU {cpu}; "
          f"{load()}", flush=True)
    ratios_cpu, ratios_wall = [], []
    first = run_tile(slide, work, mpp=mpp, tile_size=256, workers=1, cpus={cpu})
    tiles, kwargs = stored_jpeg_tiles(slide, first.coords)
    for r in range(rounds):
        # Decode passes right before and right after the tile run, averaged: the speed of these shared CPUs
        # drifts by up to 2x within seconds (a busy sibling hyperthread), and decoding feels it most.
        before = timed(decode_all, tiles, kwargs)
        run = run_tile(slide, work, mpp=mpp, tile_size=256, workers=1, cpus={cpu})
        after = timed(decode_all, tiles, kwargs)
        dec_cpu = 2 * len(tiles) / (before[0] + after[0])
        dec_wall = 2 * len(tiles) / (before[1] + after[1])
        ratios_cpu.append(run.cpu_rate / dec_cpu)
        ratios_wall.append(run.wall_rate / dec_wall)
        print(f"  round {r + 1}: {run.tiles} tiles ({run.encoding}), tile {run.cpu_s:.2f} s CPU / {run.wall_s:.2f} s "
              f"wall = {run.cpu_rate:.0f} tiles/CPU-s; raw decode {dec_cpu:.0f} tiles/CPU-s (before/after "
              f"{len(tiles) / before[0]:.0f}/{len(tiles) / after[0]:.0f}); store {run.store_mb:.0f} MiB, "
              f"peak RSS {run.max_rss_mb:.0f} MiB", flush=True)
    ok = report("slidestream tile / raw decode (per CPU-s)", ratios_cpu, 0.6)
    report("slidestream tile / raw decode (per wall-s, info)", ratios_wall, None)
    return ok


def bench_20x(slide: Path, work: Path, rounds: int, cpu: int, limit: int) -> bool:
    print(f"\n[20x] slidestream tile --target-mpp 0.5 --tile-size 224 --workers 1 vs a CLAM-style OpenSlide loop "
          f"(read 448 + resize), pinned to CPU {cpu}; {load()}", flush=True)
    ratios_cpu, ratios_wall, ratios_read = [], [], []
    for r in range(rounds):
        run = run_tile(slide, work, mpp=0.5, tile_size=224, workers=1, cpus={cpu})
        coords = run.coords
        if limit and len(coords) > limit:  # a contiguous run from the middle: the order a tiler reads in
            start = (len(coords) - limit) // 2
            coords = coords[start:start + limit]

        cpu_s, wall_s = timed(clam_loop, slide, coords)
        clam_cpu, clam_wall = len(coords) / cpu_s, len(coords) / wall_s
        read_cpu_s, _ = timed(tiler_reads, slide, coords)
        ratios_cpu.append(run.cpu_rate / clam_cpu)
        ratios_wall.append(run.wall_rate / clam_wall)
        ratios_read.append(len(coords) / read_cpu_s / clam_cpu)
        print(f"  round {r + 1}: slidestream tile {run.tiles} patches ({run.encoding}) in {run.cpu_s:.2f} s CPU / "
              f"{run.wall_s:.2f} s wall = {run.cpu_rate:.0f} patches/CPU-s; CLAM loop over {len(coords)} of them "
              f"{clam_cpu:.0f} patches/CPU-s ({clam_wall:.0f}/wall-s); the tiler's reads alone "
              f"{len(coords) / read_cpu_s:.0f} patches/CPU-s", flush=True)
    ok = report("slidestream tile 224@0.5 / CLAM loop (per CPU-s)", ratios_cpu, 3.0)
    report("slidestream tile 224@0.5 / CLAM loop (per wall-s, info)", ratios_wall, None)
    report("tiler reads 224@0.5 (no store) / CLAM loop (per CPU-s, info)", ratios_read, None)
    return ok


def distinct_core_cpus(cpus: list[int]) -> list[int]:
    """``cpus`` reordered so that the last two sit on different physical cores where the topology says so.

    Two hyperthreads of one core share its execution units: a 2-worker run on them measures the core, not the
    tiler's scaling.
    """
    def core(c: int) -> tuple[str, str]:
        base = Path(f"/sys/devices/system/cpu/cpu{c}/topology")
        try:
            return (base / "physical_package_id").read_text().strip(), (base / "core_id").read_text().strip()
        except OSError:
            return ("?", str(c))

    last = cpus[-1]
    for other in reversed(cpus[:-1]):
        if core(other) != core(last):
            return [c for c in cpus if c not in (other, last)] + [other, last]
    return cpus


def bench_workers(slide: Path, work: Path, rounds: int, cpus: list[int]) -> bool:
    """2 workers vs 1 on the same job, wall time: the default job (224 px @ 0.5 µm/px, the target) and the native
    256 px pass-through job (for information: its serial start-up and segmentation are a large share of a job
    that short)."""
    with open_slide(slide) as s:
        native = s.mpp
    pair = distinct_core_cpus(cpus)[-2:]
    ok = True
    for name, mpp, size, target in (("default job (224 px @ 0.5 µm/px)", 0.5, 224, 1.7),
                                    (f"native job (256 px @ {native:g} µm/px, info)", native, 256, None)):
        print(f"\n[workers] {name}: --workers 2 on CPUs {pair} vs --workers 1 on CPU {pair[-1]} (wall); {load()}",
              flush=True)
        ratios = []
        for r in range(rounds):
            one = run_tile(slide, work, mpp=mpp, tile_size=size, workers=1, cpus={pair[-1]})
            two = run_tile(slide, work, mpp=mpp, tile_size=size, workers=2, cpus=set(pair))
            ratios.append(one.wall_s / two.wall_s)
            print(f"  round {r + 1}: {one.tiles} tiles; 1 worker {one.wall_s:.2f} s, 2 workers {two.wall_s:.2f} s "
                  f"wall (CPU {one.cpu_s:.2f} / {two.cpu_s:.2f} s); {load()}", flush=True)
        ok &= report("2 workers / 1 worker (wall)", ratios, target)
    return ok


def bench_big(cache: Path, work: Path, cpus: list[int]) -> bool:
    slide = synthetic_slide(cache, 100_000, 100_000)
    print(f"\n[big] peak RSS of slidestream tile on {slide.name}, 2 workers; {load()}", flush=True)
    ok = True
    with open_slide(slide) as s:
        native = s.mpp
    for mpp, size in ((native, 256), (0.5, 224)):
        run = run_tile(slide, work, mpp=mpp, tile_size=size, workers=2, cpus=set(cpus[-2:]))
        print(f"  {size} px @ {mpp:g}: {run.tiles} tiles ({run.encoding}) in {run.wall_s:.1f} s wall, "
              f"{run.cpu_s:.1f} s CPU, store {run.store_mb:.0f} MiB", flush=True)
        print(f"  peak RSS of the tiling process alone: {run.max_rss_mb:.0f} MiB", flush=True)
        ok &= report(f"peak RSS, process + workers, {size} px @ {mpp:g} (MiB)", [run.tree_rss_mb], 2000,
                     larger=False)
    return ok


def bench_codecs(slide: Path, work: Path, shared: Path, cpu: int) -> None:
    import numcodecs

    numcodecs.blosc.set_nthreads(1)
    sources = []
    cmu = shared / "slides" / "CMU-1-Small-Region.svs"
    if cmu.is_file():
        sources.append(("real H&E (CMU-1-Small-Region) 224 @ 0.5", cmu))
    else:
        print(f"\n[codecs] {cmu} not found: real H&E row skipped (set SLIDESTREAM_SHARED_DATA)")
    sources.append((f"synthetic ({slide.name}) 224 @ 0.5", slide))
    print(f"\n[codecs] lossless compressors for decoded 224 px patches (the pixel path), 1 thread, CPU {cpu}")
    codecs = {
        "none": None,
        "blosc lz4-1": numcodecs.Blosc("lz4", 1, numcodecs.Blosc.NOSHUFFLE),
        "blosc zstd-1": numcodecs.Blosc("zstd", 1, numcodecs.Blosc.NOSHUFFLE),
        "blosc zstd-1 bitshuffle": numcodecs.Blosc("zstd", 1, numcodecs.Blosc.BITSHUFFLE),
    }
    for label, path in sources:
        out = Path(tempfile.mkdtemp(dir=work, prefix="codecs-"))
        store = SlideStore.open(tile_slide(path, out, TilingParams(mpp=0.5, tile_size=224, min_tissue=0.25),
                                           workers=1).store)
        patches = store.patches[: min(store.n_tiles, 512)]
        shutil.rmtree(out)
        chunks = [np.ascontiguousarray(patches[i:i + 64]) for i in range(0, len(patches), 64)]
        raw = sum(c.nbytes for c in chunks)
        print(f"  {label}: {len(patches)} patches")
        for name, codec in codecs.items():
            encoded: list = []
            encode = (lambda c: c.tobytes()) if codec is None else codec.encode
            cpu_s, _ = timed(lambda out, f, cs: out.extend(f(c) for c in cs), encoded, encode, chunks)
            ratio = raw / sum(len(e) for e in encoded)
            print(f"    {name:26s} {ratio:5.2f}x smaller  {cpu_s / len(patches) * 1e3:6.3f} ms/tile to encode")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slide", help="slide to tile (default: a synthetic 40x SVS in --cache-dir)")
    parser.add_argument("--size", default="60000x45000", help="synthetic slide size WxH (default %(default)s)")
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "slidestream-bench"))
    parser.add_argument("--rounds", type=int, default=3, help="repeats per measurement, median kept (%(default)s)")
    parser.add_argument("--clam-limit", type=int, default=1500,
                        help="coordinates timed in the OpenSlide loop (0: all; default %(default)s)")
    parser.add_argument("--only", choices=["native", "20x", "workers", "big", "codecs"], action="append",
                        help="run only these measurements (repeatable)")
    parser.add_argument("--big", action="store_true", help="also the 100k x 100k peak RSS check (slow)")
    parser.add_argument("--codecs", action="store_true", help="also the patch compressor table")
    parser.add_argument("--no-check", action="store_true", help="report only; exit 0 whatever the ratios")
    args = parser.parse_args(argv)

    cpus = sorted(os.sched_getaffinity(0))
    cpu = cpus[-1]
    os.sched_setaffinity(0, {cpu})
    cache = Path(args.cache_dir)
    if args.slide:
        slide = Path(args.slide)
    else:
        width, height = (int(v) for v in args.size.lower().split("x"))
        slide = synthetic_slide(cache, width, height)
    work = Path(tempfile.mkdtemp(dir=cache if cache.is_dir() else None, prefix="bench-tile-"))
    only = set(args.only or ["native", "20x", "workers"])
    only |= {name for name, flag in (("big", args.big), ("codecs", args.codecs)) if flag}
    ok = True
    try:
        with open_slide(slide) as s:
            print(f"slide: {slide.name} {s.dimensions[0]}x{s.dimensions[1]}, {s.mpp:g} µm/px, levels "
                  f"{s.level_count}, direct levels {s.direct_levels}; command: {' '.join(slidestream_command())}")
        if "native" in only:
            ok &= bench_native(slide, work, args.rounds, cpu)
        if "20x" in only:
            ok &= bench_20x(slide, work, args.rounds, cpu, args.clam_limit)
        if "workers" in only:
            if len(cpus) < 2:
                print("\n[workers] skipped: this process may use only one CPU")
            else:
                ok &= bench_workers(slide, work, args.rounds, cpus)
        if "big" in only:
            ok &= bench_big(cache, work, cpus)
        if "codecs" in only:
            shared = Path(os.environ.get("SLIDESTREAM_SHARED_DATA",
                                         Path(__file__).resolve().parents[1].parent / "shared" / "data"))
            bench_codecs(slide, work, shared, cpu)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok or args.no_check else 1


if __name__ == "__main__":
    sys.exit(main())
