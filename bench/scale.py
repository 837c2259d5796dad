"""Scale-out of a tiling batch: the same batch on a 1-worker and on an N-worker ``dask.distributed`` cluster.

The cluster is real: a ``dask scheduler`` process and nanny-less ``dask worker`` processes (one thread each,
``OMP_NUM_THREADS=1``), all bound to 127.0.0.1. The batch (``--slides`` synthetic slides of ``--size`` px at
0.5 µm/px, 224 px tiles at 0.5 µm/px) is written once into ``--cache-dir``. Each configuration tiles the whole
batch into a fresh folder through :func:`slidestream.pipeline.tile_batch` with ``scheduler=<address>``; the time
is the wall time of that call (cluster start-up excluded, connection included), best of ``--repeat``. The stores of
every configuration are checked identical to those of the 1-worker run.

Target of issue 9: 2 workers >= 1.7x faster than 1 on the same batch. The ratio needs at least as many idle CPU
cores as workers; the 1-minute load average and the core count are printed next to it.

    OMP_NUM_THREADS=1 .venv/bin/python bench/scale.py                     # 1 vs 2 workers, 16 slides of 4096 px
    .venv/bin/python bench/scale.py --workers 1 2 4 --slides 24 --json scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

import numpy as np

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """``dask scheduler`` + ``n`` ``dask worker`` processes on 127.0.0.1; a context manager that always cleans up."""

    def __init__(self, n_workers: int, space: Path):
        self.n, self.space = n_workers, space
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> Self:
        import distributed

        port = self.address.rsplit(":", 1)[1]
        self.log = log = open(self.space / f"cluster-{self.n}.log", "w")
        self.procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host",
                                            "127.0.0.1", "--port", port, "--no-dashboard"],
                                           stdout=log, stderr=subprocess.STDOUT, env=ENV))
        for i in range(self.n):
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--nthreads", "1", "--no-nanny",
                 "--no-dashboard", "--host", "127.0.0.1", "--local-directory", str(self.space / f"w{self.n}-{i}")],
                stdout=log, stderr=subprocess.STDOUT, env=ENV))
        with distributed.Client(self.address, timeout=60) as c:
            c.wait_for_workers(self.n, timeout=120)
        return self

    def __exit__(self, *exc) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.log.close()


def make_batch(cache: Path, n: int, size: int) -> Path:
    from slidestream.synth import SynthConfig, write_synthetic_slide

    folder = cache / f"scale-{n}x{size}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = folder / f"s{i:02d}.svs"
        if not path.exists():
            write_synthetic_slide(path, SynthConfig(width=size, height=size, mpp=0.5, seed=100 + i))
    return folder


def same_stores(a: Path, b: Path) -> bool:
    from slidestream.store import SlideStore

    names = sorted(p.name for p in a.glob("*.zarr"))
    if names != sorted(p.name for p in b.glob("*.zarr")):
        return False
    for name in names:
        x, y = SlideStore.open(a / name), SlideStore.open(b / name)
        if not (np.array_equal(x.coords, y.coords) and np.array_equal(x.patches[...], y.patches[...])):
            return False
    return True


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--slides", type=int, default=16)
    ap.add_argument("--size", type=int, default=4096, help="slide side, level-0 px at 0.5 µm/px")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "slidestream-bench")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from slidestream.pipeline.inputs import collect_inputs
    from slidestream.pipeline import tile_batch
    from slidestream.tiling.grid import TilingParams

    slides = make_batch(args.cache_dir, args.slides, args.size)
    inputs = collect_inputs([slides])
    params = TilingParams(mpp=0.5, tile_size=224)
    work = Path(tempfile.mkdtemp(prefix="scale-", dir=args.cache_dir))
    results: dict = {"slides": len(inputs), "size": args.size, "cpu_count": os.cpu_count(), "runs": {}}
    try:
        first = None
        for n in args.workers:
            with Cluster(n, work) as cluster:
                times = []
                for r in range(args.repeat):
                    out = work / f"out-{n}-{r}"
                    t0 = time.perf_counter()
                    outcomes = tile_batch(inputs, out, params, scheduler=cluster.address)
                    times.append(time.perf_counter() - t0)
                    assert all(o.status == "ok" for o in outcomes), [o.error for o in outcomes]
                tiles = sum(o.details["tiles"] for o in outcomes)
                workers_used = len({o.details["worker"] for o in outcomes})
            first = first or out
            results["runs"][n] = {"seconds": round(min(times), 3), "tiles": tiles, "workers_used": workers_used,
                                  "tiles_per_s": round(tiles / min(times), 1),
                                  "identical_to_first": same_stores(out, first),
                                  "load_1min": round(os.getloadavg()[0], 2)}
            print(f"{n} worker(s): {min(times):.2f} s for {len(inputs)} slides, {tiles} tiles "
                  f"({tiles / min(times):.0f} tiles/s), {workers_used} worker(s) used, "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
        base = results["runs"][args.workers[0]]["seconds"]
        for n in args.workers[1:]:
            results["runs"][n]["speedup"] = round(base / results["runs"][n]["seconds"], 2)
            print(f"speed-up {n} vs {args.workers[0]} worker(s): {results['runs'][n]['speedup']:.2f}x "
                  f"(target >= 1.7x for 2; {os.cpu_count()} cores)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
